//! SQL `predict()` over lake files through the worker's Flight SQL, with arrow-flight's Rust
//! Flight SQL client against `lakescore serve` as a real process: external tables and
//! tables by URL inside the storage roots only, predictions equal to onnxruntime's,
//! prepared statements with parameters, `COPY … TO` and `INSERT INTO` through the commit protocol, the
//! catalog commands, and the limits (memory, time, concurrency) ending a query with the
//! right status while the worker keeps serving.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::CommandGetTables;
use common::{models_dir, read_parquet, ServeProcess};
use futures::TryStreamExt;
use tonic::transport::Channel;

async fn client(addr: &str, token: Option<&str>) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(t) = token {
        client.set_header("authorization", format!("Bearer {t}"));
    }
    client
}

fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// Runs `sql` and fetches every endpoint: the rows as one batch.
async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<RecordBatch, tonic::Status> {
    let info = client.execute(sql.to_string(), None).await.map_err(status)?;
    let schema = std::sync::Arc::new(info.clone().try_decode_schema().expect("schema"));
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await.map_err(status)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(status)?);
    }
    Ok(arrow::compute::concat_batches(&schema, &batches).expect("concat"))
}

fn f32s<'a>(b: &'a RecordBatch, c: &str) -> &'a Float32Array {
    b.column_by_name(c).unwrap_or_else(|| panic!("no column {c}")).as_any().downcast_ref().expect("float32")
}

fn i64s<'a>(b: &'a RecordBatch, c: &str) -> &'a Int64Array {
    b.column_by_name(c).unwrap_or_else(|| panic!("no column {c}")).as_any().downcast_ref().expect("int64")
}

/// The rows' first two features, as the key a scored row is matched to its expected row by
/// (SQL gives no row order unless asked).
fn key(b: &RecordBatch, i: usize, a: &str, c: &str) -> (u32, u32) {
    (f32s(b, a).value(i).to_bits(), f32s(b, c).value(i).to_bits())
}

/// onnxruntime's label for each of `model`'s rows, by the row's key (`a`, `b`).
fn expected_labels(model: &str, a: &str, b: &str) -> HashMap<(u32, u32), i64> {
    let rows = read_parquet(&models_dir().join(format!("{model}.rows.parquet")));
    let expected = read_parquet(&models_dir().join(format!("{model}.expected.parquet")));
    (0..rows.num_rows()).map(|i| (key(&rows, i, a, b), i64s(&expected, "output_label").value(i))).collect()
}

/// Asserts that `scored` holds every one of `model`'s rows, each with onnxruntime's label
/// (in its `label` column; rows matched by their `a`, `b` values).
fn assert_labels(scored: &RecordBatch, model: &str, a: &str, b: &str) {
    let want = expected_labels(model, a, b);
    assert_eq!(scored.num_rows(), want.len(), "{model}: every row");
    for i in 0..scored.num_rows() {
        assert_eq!(i64s(scored, "label").value(i), want[&key(scored, i, a, b)], "{model} row {i}");
    }
}

/// onnxruntime's label and probability of class 1 for the logreg rows whose `f0` passes
/// `keep`, by the row's key (`f0`, `f1`).
fn logreg_expected(keep: impl Fn(f32) -> bool) -> HashMap<(u32, u32), (i64, f32)> {
    let rows = read_parquet(&models_dir().join("logreg.rows.parquet"));
    let expected = read_parquet(&models_dir().join("logreg.expected.parquet"));
    let probs = expected.column_by_name("output_probability").expect("probabilities");
    let probs = probs.as_any().downcast_ref::<arrow::array::FixedSizeListArray>().expect("list");
    (0..rows.num_rows())
        .filter(|&i| keep(f32s(&rows, "f0").value(i)))
        .map(|i| {
            let p1 = probs.value(i).as_any().downcast_ref::<Float32Array>().expect("f32").value(1);
            (key(&rows, i, "f0", "f1"), (i64s(&expected, "output_label").value(i), p1))
        })
        .collect()
}

/// Asserts that `scored` holds exactly the rows of `want`, with their labels in `label` and
/// their probabilities (within 1e-5) in `p1`.
fn assert_logreg(scored: &RecordBatch, p1: &str, want: &HashMap<(u32, u32), (i64, f32)>) {
    assert_eq!(scored.num_rows(), want.len(), "the rows");
    for i in 0..scored.num_rows() {
        let (label, prob) = want[&key(scored, i, "f0", "f1")];
        assert_eq!(i64s(scored, "label").value(i), label, "row {i}");
        let got = f32s(scored, p1).value(i);
        assert!((got - prob).abs() <= 1e-5 * prob.abs().max(1.0), "row {i}: {got} vs onnxruntime {prob}");
    }
}

fn lake(root: &Path) -> std::path::PathBuf {
    let lake = root.join("lake");
    for model in ["logreg", "pipeline", "linreg"] {
        let dir = lake.join(model);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::copy(models_dir().join(format!("{model}.rows.parquet")), dir.join("part-0.parquet")).expect("copy");
    }
    std::fs::create_dir_all(root.join("outside")).expect("mkdir");
    std::fs::copy(models_dir().join("logreg.rows.parquet"), root.join("outside/secret.parquet")).expect("copy");
    // A link inside the lake that leads out of it.
    std::os::unix::fs::symlink(root.join("outside"), lake.join("escape")).expect("symlink");
    lake
}

fn serve(root: &Path, lake: &Path, sql: &str) -> ServeProcess {
    let config = root.join("lakescore.toml");
    std::fs::write(
        &config,
        format!(
            "[scorer]\nintra_op_threads = 1\nstorage_roots = [\"file://{}/\"]\n\n[scorer.sql]\n{sql}\n",
            lake.display()
        ),
    )
    .expect("config");
    common::spawn_serve(&root.join("data"), &["--config", config.to_str().expect("utf-8")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_over_lake_files_matches_onnxruntime() {
    let root = tempfile::tempdir().expect("tempdir");
    let lake = lake(root.path());
    let s = serve(root.path(), &lake, "");
    for (name, file) in [("logreg", "logreg.onnx"), ("pipe", "pipeline.onnx"), ("linreg", "linreg.onnx")] {
        common::register_champion(&s.url, None, name, file).await;
    }
    let mut c = client(&s.flight, None).await;
    let lake_url = format!("file://{}", lake.display());

    // An external table for the session, and a single 2-D input fed from four columns.
    let created = query(&mut c, &format!("CREATE EXTERNAL TABLE tx STORED AS PARQUET LOCATION '{lake_url}/logreg/'"))
        .await
        .expect("create external table");
    assert_eq!(created.num_rows(), 0);
    let scored = query(
        &mut c,
        "SELECT f0, f1, p['label'] AS label, p['probability_1'] AS p1 \
         FROM (SELECT f0, f1, predict('logreg@champion', f0, f1, f2, f3) AS p FROM tx)",
    )
    .await
    .expect("predict");
    let all = logreg_expected(|_| true);
    assert_logreg(&scored, "p1", &all);

    // A table by URL, and a model with several inputs of mixed types (floats and a string)
    // fed by column name.
    let piped = query(
        &mut c,
        &format!(
            "SELECT age, income, predict('pipe@champion', age, income, tenure, city)['label'] AS label \
             FROM '{lake_url}/pipeline/part-0.parquet'"
        ),
    )
    .await
    .expect("multi-input predict");
    assert_labels(&piped, "pipeline", "age", "income");

    // A regressor.
    let regressed = query(
        &mut c,
        &format!(
            "SELECT f0, f1, predict('linreg@champion', f0, f1, f2, f3, f4)['variable'] AS y \
             FROM '{lake_url}/linreg/'"
        ),
    )
    .await
    .expect("regressor");
    let rows = read_parquet(&models_dir().join("linreg.rows.parquet"));
    let expected = read_parquet(&models_dir().join("linreg.expected.parquet"));
    let values = expected.column_by_name("variable").expect("variable");
    let values = values.as_any().downcast_ref::<arrow::array::FixedSizeListArray>().expect("list");
    let want: HashMap<(u32, u32), f32> = (0..rows.num_rows())
        .map(|i| {
            (key(&rows, i, "f0", "f1"), values.value(i).as_any().downcast_ref::<Float32Array>().expect("f32").value(0))
        })
        .collect();
    for i in 0..regressed.num_rows() {
        let (got, want) = (f32s(&regressed, "y").value(i), want[&key(&regressed, i, "f0", "f1")]);
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "linreg row {i}: {got} vs {want}");
    }

    // The table form (Synapse's PREDICT): every column of the data, then the outputs as
    // columns. A model with several inputs fed by column name from a session table ...
    query(&mut c, &format!("CREATE EXTERNAL TABLE pipe_rows STORED AS PARQUET LOCATION '{lake_url}/pipeline/'"))
        .await
        .expect("create pipe_rows");
    let table = query(&mut c, "SELECT * FROM predict('pipe@champion', pipe_rows)").await.expect("table form");
    let pipe_rows = read_parquet(&models_dir().join("pipeline.rows.parquet"));
    let names = |schema: &arrow::datatypes::Schema| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let columns = names(&table.schema());
    assert_eq!(columns[..pipe_rows.num_columns()], names(&pipe_rows.schema()), "the data's columns first");
    assert!(columns[pipe_rows.num_columns()..].contains(&"label".to_string()), "then the outputs: {columns:?}");
    assert_labels(&table, "pipeline", "age", "income");
    // ... and a single 2-D input from the feature columns listed after a location, the
    // rows filtered before they are scored.
    let table = query(
        &mut c,
        &format!(
            "SELECT f0, f1, label, probability_1 FROM predict('logreg@champion', '{lake_url}/logreg/', f0, f1, f2, f3) \
             WHERE f0 > 0"
        ),
    )
    .await
    .expect("table form over a location");
    let positive = logreg_expected(|f0| f0 > 0.0);
    assert!(!positive.is_empty() && positive.len() < all.len(), "the filter keeps some rows");
    assert_logreg(&table, "probability_1", &positive);
    // A 2-D input without its feature columns fails the plan, naming the way to feed it.
    let err = query(&mut c, "SELECT * FROM predict('logreg@champion', tx)").await.expect_err("no feature columns");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("feature columns after the data"), "{err}");

    // Columns that do not fit the signature fail the plan, naming what is wrong.
    let err = query(&mut c, "SELECT predict('logreg@champion', f0, f1) FROM tx").await.expect_err("2 of 4 columns");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("4 columns, 2 given"), "{err}");
    let err = query(&mut c, "SELECT predict('nope@champion', f0) FROM tx").await.expect_err("unknown model");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // A prepared statement with a parameter.
    let mut prepared =
        c.prepare("SELECT count(*) AS n FROM tx WHERE f0 > $1".to_string(), None).await.expect("prepare");
    let threshold = 0.25f32;
    let params = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new("$1", DataType::Float32, false)])),
        vec![std::sync::Arc::new(Float32Array::from(vec![threshold]))],
    )
    .expect("params");
    prepared.set_parameters(params).expect("bind");
    let info = prepared.execute().await.expect("execute prepared");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let counted: Vec<RecordBatch> = c.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    let n = counted[0].column(0).as_any().downcast_ref::<Int64Array>().expect("count").value(0);
    let rows = read_parquet(&models_dir().join("logreg.rows.parquet"));
    let want = f32s(&rows, "f0").iter().filter(|v| v.is_some_and(|v| v > threshold)).count();
    assert_eq!(n as usize, want, "rows with f0 > {threshold}");
    prepared.close().await.expect("close");

    // COPY writes Parquet parts, then the manifest naming the model version and sha256.
    let copied = query(
        &mut c,
        &format!(
            "COPY (SELECT f0, f1, predict('logreg@champion', f0, f1, f2, f3)['label'] AS label FROM tx) \
             TO '{lake_url}/scored/' STORED AS PARQUET"
        ),
    )
    .await
    .expect("copy");
    let count = copied.column_by_name("count").expect("count").as_any().downcast_ref::<UInt64Array>().expect("u64");
    assert_eq!(count.value(0) as usize, rows.num_rows());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.join("scored/_lakescore.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["model"]["name"], "logreg", "{manifest}");
    assert_eq!(manifest["model"]["version"], 1, "{manifest}");
    assert_eq!(manifest["model"]["sha256"], common::sha256_hex(&common::model_bytes("logreg.onnx")), "{manifest}");
    assert_eq!(manifest["rows"], rows.num_rows(), "{manifest}");
    let part = manifest["files"][0]["path"].as_str().or(manifest["files"][0]["url"].as_str()).expect("a part");
    let part = lake.join("scored").join(Path::new(part).file_name().expect("file name"));
    let written = read_parquet(&part);
    let want = expected_labels("logreg", "f0", "f1");
    assert_eq!(written.num_rows(), want.len());
    for i in 0..written.num_rows() {
        assert_eq!(i64s(&written, "label").value(i), want[&key(&written, i, "f0", "f1")], "written row {i}");
    }

    // In the table form, an output named like a column of the data fails the plan (the
    // part just written has `label`).
    let err = query(
        &mut c,
        &format!("SELECT * FROM predict('logreg@champion', 'file://{}', f0, f1, f0, f1)", part.display()),
    )
    .await
    .expect_err("output named like a column");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("output 'label' has the name of a column"), "{err}");

    // INSERT INTO an external Parquet table appends a commit: new parts, then the table's
    // manifest extended with them (the COPY above made its first commit).
    let committed = |manifest: &serde_json::Value| -> Vec<String> {
        manifest["files"].as_array().expect("files").iter().map(|f| f["path"].as_str().expect("path").into()).collect()
    };
    let before = committed(&manifest);
    query(
        &mut c,
        &format!(
            "CREATE EXTERNAL TABLE scored (f0 FLOAT, f1 FLOAT, label BIGINT) STORED AS PARQUET \
             LOCATION '{lake_url}/scored/'"
        ),
    )
    .await
    .expect("create scored");
    let inserted = query(
        &mut c,
        "INSERT INTO scored SELECT f0, f1, predict('logreg@champion', f0, f1, f2, f3)['label'] FROM tx WHERE f0 > 0",
    )
    .await
    .expect("insert");
    let positive = f32s(&rows, "f0").iter().filter(|v| v.is_some_and(|v| v > 0.0)).count();
    let count = inserted.column_by_name("count").expect("count").as_any().downcast_ref::<UInt64Array>().expect("u64");
    assert_eq!(count.value(0) as usize, positive);
    let read_manifest = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(lake.join("scored/_lakescore.json")).expect("manifest")).expect("json")
    };
    let appended = read_manifest();
    let after = committed(&appended);
    assert!(after.len() > before.len() && after.starts_with(&before), "{before:?} then {after:?}");
    assert_eq!(appended["rows"], rows.num_rows() + positive, "{appended}");
    let table = query(&mut c, "SELECT f0, f1, label FROM scored").await.expect("read scored");
    assert_eq!(table.num_rows(), rows.num_rows() + positive, "the COPY's rows and the INSERT's");
    for i in 0..table.num_rows() {
        assert_eq!(i64s(&table, "label").value(i), want[&key(&table, i, "f0", "f1")], "table row {i}");
    }
    // A statement that fails leaves the table as it was: no part, the same manifest.
    let parts = |dir: &Path| std::fs::read_dir(dir).expect("read_dir").count();
    let (files_before, manifest_before) = (parts(&lake.join("scored")), read_manifest());
    let err = query(&mut c, "INSERT INTO scored SELECT f0, f1, CAST(f2 AS BIGINT) / (CAST(f3 AS BIGINT) * 0) FROM tx")
        .await
        .expect_err("an insert that fails while it runs");
    assert!(err.message().contains("ivide by zero"), "{err}");
    let err = query(&mut c, "INSERT INTO scored SELECT f0 FROM tx").await.expect_err("too few columns");
    assert!(err.message().to_lowercase().contains("column"), "{err}");
    assert_eq!((parts(&lake.join("scored")), read_manifest()), (files_before, manifest_before));
    // Only appends, and only to Parquet tables over a prefix.
    query(&mut c, &format!("CREATE EXTERNAL TABLE one STORED AS PARQUET LOCATION '{lake_url}/logreg/part-0.parquet'"))
        .await
        .expect("create one");
    for sql in ["INSERT INTO one SELECT * FROM tx", "INSERT OVERWRITE scored SELECT f0, f1, 1 FROM tx"] {
        let err = query(&mut c, sql).await.expect_err(sql);
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{sql}: {err}");
    }

    // The catalog commands see the session's table.
    let info = c.get_tables(CommandGetTables { include_schema: true, ..Default::default() }).await.expect("get tables");
    let tables: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().expect("ticket"))
        .await
        .expect("do_get")
        .try_collect()
        .await
        .expect("rows");
    let names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("table_name").expect("table_name");
            let col = col.as_any().downcast_ref::<StringArray>().expect("utf8");
            col.iter().flatten().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert!(names.contains(&"tx".to_string()), "{names:?}");

    // The registry as tables.
    let models =
        query(&mut c, "SELECT name, latest_version FROM lakescore.models ORDER BY name").await.expect("models");
    let names: Vec<&str> =
        models.column(0).as_any().downcast_ref::<StringArray>().expect("utf8").iter().flatten().collect();
    assert_eq!(names, ["linreg", "logreg", "pipe"]);
    let versions = query(
        &mut c,
        "SELECT v.sha256, a.alias FROM lakescore.versions v JOIN lakescore.aliases a \
         ON a.model = v.model AND a.version = v.version WHERE v.model = 'logreg'",
    )
    .await
    .expect("versions");
    assert_eq!(versions.num_rows(), 1);
    let sha = versions.column(0).as_any().downcast_ref::<StringArray>().expect("utf8").value(0).to_string();
    assert_eq!(sha, common::sha256_hex(&common::model_bytes("logreg.onnx")));
    assert_eq!(versions.column(1).as_any().downcast_ref::<StringArray>().expect("utf8").value(0), "champion");

    // Nothing outside the storage roots is read: other locations, local paths outside
    // them, '..', and a link inside the lake that leads out.
    for sql in [
        "CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '/etc/'".to_string(),
        "SELECT * FROM 'file:///etc/passwd'".to_string(),
        format!("SELECT * FROM '{}/outside/secret.parquet'", root.path().display()),
        format!(
            "SELECT * FROM predict('logreg@champion', 'file://{}/outside/secret.parquet', f0, f1, f2, f3)",
            root.path().display()
        ),
        format!("CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '{lake_url}/escape/'"),
        format!("SELECT count(*) FROM '{lake_url}/escape/secret.parquet'"),
        format!("CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '{lake_url}/../outside/'"),
        format!("COPY (SELECT 1) TO '{}/outside/out/' STORED AS PARQUET", root.path().display()),
    ] {
        let err = query(&mut c, &sql).await.expect_err(&sql);
        assert!(matches!(err.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument), "{sql}: {err}");
        assert!(
            err.message().contains("outside the storage locations") || err.message().contains("'..' is not allowed"),
            "{sql}: {err}"
        );
    }
    assert!(!root.path().join("outside/out").exists(), "nothing written outside the roots");
    // Tables are appended to, never changed in place; no SET (it could lift the limits),
    // views or in-memory tables (they would keep a query's resolved models, or its rows,
    // past the query).
    for sql in [
        "UPDATE tx SET f0 = 0",
        "DELETE FROM tx",
        "SET datafusion.runtime.memory_limit = '100G'",
        "CREATE VIEW v AS SELECT predict('logreg@champion', f0, f1, f2, f3) AS p FROM tx",
        "CREATE TABLE copy AS SELECT * FROM tx",
    ] {
        let err = query(&mut c, sql).await.expect_err(sql);
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{sql}: {err}");
    }

    // The CLI: a table on standard output, or a Parquet file.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lakescore"))
            .args(["sql", "--flight-url", &format!("grpc://{}", s.flight)])
            .args(args)
            .env_remove("LAKESCORE_TOKEN")
            .output()
            .expect("run lakescore sql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let url_table = format!("'{lake_url}/logreg/'");
    let (ok, stdout, stderr) = cli(&["-e", &format!("SELECT count(*) AS n FROM {url_table}")]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| n ") && stdout.contains(&format!("| {} ", rows.num_rows())), "{stdout}");
    let written = root.path().join("labels.parquet");
    let (ok, _, stderr) = cli(&[
        "-e",
        &format!("SELECT predict('logreg@champion', f0, f1, f2, f3)['label'] AS label FROM {url_table}"),
        "--output",
        written.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(read_parquet(&written).num_rows(), rows.num_rows());
    let (ok, _, stderr) = cli(&["-e", "SELECT * FROM 'file:///etc/passwd'"]);
    assert!(!ok && stderr.contains("PERMISSION_DENIED"), "{stderr}");

    // The worker still scores its own Flight commands on the same port.
    let mut flight = common::flight_client(&s.flight, None).await;
    let warm: Vec<bytes::Bytes> = flight
        .do_action(arrow_flight::Action::new("warm", "logreg@champion"))
        .await
        .expect("warm")
        .try_collect()
        .await
        .expect("warm result");
    let warm: serde_json::Value = serde_json::from_slice(&warm[0]).expect("json");
    assert_eq!(warm["model"], "logreg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_over_their_limits_end_with_the_right_status() {
    let root = tempfile::tempdir().expect("tempdir");
    let lake = lake(root.path());
    let s = serve(root.path(), &lake, "max_concurrent_queries = 1\nquery_timeout = 2\nquery_memory_bytes = 65536\n");
    let mut c = client(&s.flight, None).await;

    // Past the deadline.
    let err = query(&mut c, "SELECT sum(v) FROM generate_series(1, 100000000000) AS t(v)").await.expect_err("slow");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");

    // A COPY past the deadline, and one whose client goes away: neither leaves a manifest
    // nor any part behind.
    let files = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let big = format!(
        "COPY (SELECT v FROM generate_series(1, 10000000000) AS t(v)) TO 'file://{}/big/' STORED AS PARQUET",
        lake.display()
    );
    let err = query(&mut c, &big).await.expect_err("a COPY past the deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert_eq!(files(&lake.join("big")), 0, "a timed-out COPY left files");
    let gone = big.replace("/big/", "/gone/");
    let mut leaving = client(&s.flight, None).await;
    let cut = tokio::time::timeout(std::time::Duration::from_millis(700), query(&mut leaving, &gone)).await;
    assert!(cut.is_err(), "the COPY should still be running: {cut:?}");
    drop(leaving);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while files(&lake.join("gone")) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(files(&lake.join("gone")), 0, "a COPY whose client went away left files");

    // Over the memory cap: a sort of rows that cannot fit in 64 KiB.
    let err = query(&mut c, "SELECT v, v * 2 FROM generate_series(1, 5000000) AS t(v) ORDER BY v DESC")
        .await
        .expect_err("sort over the memory cap");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // One query at a time: while one streams, another is refused; once it ends, it runs.
    let info = c.execute("SELECT v FROM generate_series(1, 100000000) AS t(v)".to_string(), None).await.expect("plan");
    let mut running = c.do_get(info.endpoint[0].ticket.clone().expect("ticket")).await.expect("do_get");
    running.try_next().await.expect("first batch").expect("a batch");
    let mut other = client(&s.flight, None).await;
    let err = query(&mut other, "SELECT 1").await.expect_err("over the concurrency cap");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("max_concurrent_queries"), "{err}");
    drop(running);
    // The slot comes back once the server sees the stream go away.
    let mut ok = None;
    for _ in 0..50 {
        match query(&mut other, "SELECT 1 AS one").await {
            Ok(b) => {
                ok = Some(b);
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.expect("the slot came back").num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_reads_and_copies_to_azure_blob_storage() {
    let endpoint = std::env::var("LAKESCORE_TEST_AZURITE_BLOB")
        .expect("LAKESCORE_TEST_AZURITE_BLOB is not set: run the tests with scripts/test, which starts Azurite");
    let root = tempfile::tempdir().expect("tempdir");
    let lake = lake(root.path());
    let config = root.path().join("lakescore.toml");
    std::fs::write(&config, common::azurite_scorer_config(&endpoint)).expect("config");
    let s = common::spawn_serve(&root.path().join("data"), &["--config", config.to_str().expect("utf-8")]);
    common::register_champion(&s.url, None, "logreg", "logreg.onnx").await;
    let mut c = client(&s.flight, None).await;
    let prefix = format!("az://lakescore-test/sql-{}", uuid::Uuid::new_v4().simple());

    // Local rows to Azure Blob, then scored from there back to Azure Blob.
    query(
        &mut c,
        &format!("COPY (SELECT * FROM 'file://{}/logreg/') TO '{prefix}/rows/' STORED AS PARQUET", lake.display()),
    )
    .await
    .expect("copy to azure");
    query(&mut c, &format!("CREATE EXTERNAL TABLE tx STORED AS PARQUET LOCATION '{prefix}/rows/'"))
        .await
        .expect("external table on azure");
    let scored = query(&mut c, "SELECT f0, f1, predict('logreg@champion', f0, f1, f2, f3)['label'] AS label FROM tx")
        .await
        .expect("predict from azure");
    assert_labels(&scored, "logreg", "f0", "f1");
    let copied = query(
        &mut c,
        &format!(
            "COPY (SELECT f0, f1, predict('logreg@champion', f0, f1, f2, f3)['label'] AS label FROM tx) \
             TO '{prefix}/scored/' STORED AS PARQUET"
        ),
    )
    .await
    .expect("copy scored to azure");
    let manifest = copied.column_by_name("manifest").expect("manifest");
    let manifest = manifest.as_any().downcast_ref::<StringArray>().expect("utf8").value(0).to_string();
    assert!(manifest.starts_with(&format!("{prefix}/scored/")) && manifest.ends_with("_lakescore.json"), "{manifest}");
    let back = query(&mut c, &format!("SELECT count(*) AS n, sum(label) AS s FROM '{prefix}/scored/'"))
        .await
        .expect("read back");
    let n = back.column(0).as_any().downcast_ref::<Int64Array>().expect("count").value(0);
    let sum = back.column(1).as_any().downcast_ref::<Int64Array>().expect("sum").value(0);
    let want = expected_labels("logreg", "f0", "f1");
    assert_eq!(n as usize, want.len());
    assert_eq!(sum, want.values().sum::<i64>());
}
