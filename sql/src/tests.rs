//! SQL writes (`COPY … TO`, `INSERT INTO`) on object_store's in-memory store: committed
//! through the worker's output sink, and a statement that fails midway leaves nothing.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, UInt64Array};
use futures::TryStreamExt;
use lakescore_engine::config::ScorerConfig;
use lakescore_engine::engine::trees::TreesEngine;
use lakescore_engine::source::{Credentials, DirModelSource};
use lakescore_engine::Scorer;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::*;

fn engine() -> SqlEngine {
    let models = tempfile::tempdir().expect("tempdir").keep();
    let config = ScorerConfig { storage_roots: vec!["memory:///".into()], ..ScorerConfig::new("dir:///unused") };
    let source = Arc::new(DirModelSource::new(&models).expect("model dir"));
    let scorer = Scorer::with_parts(config, source, Arc::new(TreesEngine::new(None, 1))).expect("scorer");
    SqlEngine::new(Arc::new(Lake::new(Arc::new(scorer)).expect("lake")))
}

fn store() -> Arc<dyn ObjectStore> {
    let url = url::Url::parse("memory:///").expect("url");
    lakescore_core::store::open_store(&url, &Default::default()).expect("memory store").0
}

/// Plan and fetch `sql`: its batches.
async fn run(engine: &SqlEngine, sql: &str) -> Result<Vec<RecordBatch>> {
    let creds = Credentials::none();
    let planned = engine.plan(sql, None, &creds).await?;
    let (_, batches) = engine.fetch(&planned.handle, &creds)?;
    batches.try_collect().await
}

async fn manifest(prefix: &str) -> serde_json::Value {
    let got = store().get(&Path::from(format!("{prefix}/_lakescore.json"))).await.expect("manifest");
    serde_json::from_slice(&got.bytes().await.expect("bytes")).expect("json")
}

async fn listing(prefix: &str) -> Vec<String> {
    store().list(Some(&Path::from(prefix))).map_ok(|m| m.location.to_string()).try_collect().await.expect("list")
}

#[tokio::test]
async fn copy_and_insert_commit_once_and_a_failed_write_leaves_nothing() {
    let engine = engine();
    let copied =
        run(&engine, "COPY (SELECT * FROM (VALUES (1), (2), (3)) AS v(a)) TO 'memory:///sqlw/t/' STORED AS PARQUET")
            .await
            .expect("COPY");
    let count = copied[0].column(0).as_any().downcast_ref::<UInt64Array>().expect("count").value(0);
    assert_eq!(count, 3);
    assert_eq!(manifest("sqlw/t").await["rows"], 3);

    run(&engine, "CREATE EXTERNAL TABLE t (a BIGINT) STORED AS PARQUET LOCATION 'memory:///sqlw/t/'")
        .await
        .expect("table");
    run(&engine, "INSERT INTO t VALUES (4), (5)").await.expect("INSERT");
    let m = manifest("sqlw/t").await;
    assert_eq!((m["rows"].as_u64(), m["files"].as_array().map(Vec::len)), (Some(5), Some(2)), "{m}");
    let sum = run(&engine, "SELECT sum(a) AS s FROM t").await.expect("SELECT");
    assert_eq!(sum[0].column(0).as_any().downcast_ref::<Int64Array>().expect("sum").value(0), 15);

    // A statement whose rows fail midway (a division by zero on the third row): an error,
    // and neither parts nor a manifest under its target.
    let err = run(&engine, "COPY (SELECT 10 / (a - 3) AS x FROM t) TO 'memory:///sqlw/bad/' STORED AS PARQUET")
        .await
        .expect_err("division by zero");
    assert!(err.to_string().to_lowercase().contains("zero"), "{err}");
    assert_eq!(listing("sqlw/bad/").await, Vec::<String>::new());
    // An INSERT of other columns than the table's: refused, the table's manifest unchanged.
    let before = manifest("sqlw/t").await;
    assert!(run(&engine, "INSERT INTO t SELECT 'text' AS a").await.is_err());
    assert_eq!(manifest("sqlw/t").await, before);
}
