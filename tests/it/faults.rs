//! The registry when its database goes away: PostgreSQL (a dedicated throwaway cluster)
//! is taken down during traffic and brought back. While it is down requests fail with 503
//! and the server keeps serving; afterwards they succeed again with no manual step.

use crate::common;

use std::process::Command;

use common::{model_bytes, Db, TestServer};
use reqwest::StatusCode;
use serde_json::json;

struct Cluster {
    dir: String,
    url: String,
}

fn script(args: &[&str]) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-cluster.sh");
    let out = Command::new("bash").arg(path).args(args).output().expect("run scripts/pg-test-cluster.sh");
    assert!(out.status.success(), "pg-test-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn start() -> Self {
        let out = script(&["start"]);
        let find = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {key}=")))
                .unwrap_or_else(|| panic!("no {key} in: {out}"))
                .to_string()
        };
        Self { dir: find("LAKESCORE_TEST_PG_DIR"), url: find("LAKESCORE_TEST_POSTGRES_URL") }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-cluster.sh"))
            .args(["stop", &self.dir])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_gives_503_then_recovers() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.expect("cluster");
    let url = cluster.url.clone();
    let s = TestServer::start_with(Db::Sqlite, |c| c.database_url = Some(url)).await;
    let http = reqwest::Client::new();
    let r = http.post(s.api("/models")).json(&json!({"name": "m"})).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.upload("m", model_bytes("logreg.onnx"), None).await.status(), StatusCode::CREATED);

    let dir = cluster.dir.clone();
    tokio::task::spawn_blocking(move || script(&["down", &dir])).await.expect("down");
    let r = http.get(s.api("/resolve/m")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", r.text().await.unwrap_or_default());
    assert_eq!(s.upload("m", model_bytes("logreg.onnx"), None).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        http.get(format!("{}/readyz", s.base)).send().await.expect("send").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(http.get(format!("{}/healthz", s.base)).send().await.expect("send").status(), StatusCode::OK);

    let dir = cluster.dir.clone();
    tokio::task::spawn_blocking(move || script(&["up", &dir])).await.expect("up");
    // Pooled connections died with the server; new ones are made on the next requests.
    let mut last = String::new();
    for _ in 0..50 {
        let r = http.get(s.api("/resolve/m")).send().await.expect("send");
        if r.status() == StatusCode::OK {
            last.clear();
            break;
        }
        last = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(last.is_empty(), "the registry did not recover after PostgreSQL came back: {last}");
    assert_eq!(s.upload("m", model_bytes("logreg.onnx"), None).await.status(), StatusCode::CREATED);
    let versions: serde_json::Value =
        http.get(s.api("/models/m/versions")).send().await.expect("send").json().await.expect("json");
    let numbers: Vec<i64> =
        versions["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_i64()).collect();
    assert_eq!(numbers, [1, 2], "the failed upload took no version number and left no row");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_stuck_behind_a_lock_times_out_with_503() {
    use sqlx::Connection as _;
    let s = TestServer::start_with(Db::Postgres, |c| c.db_statement_timeout_secs = 1).await;
    let http = reqwest::Client::new();
    let r = http.post(s.api("/models")).json(&json!({"name": "m"})).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);

    // Another session holds the models table: the registry's query waits for the lock,
    // then gives up after the statement timeout with a 503, rather than hanging.
    let url = s.registry.config().database_url.clone().expect("a PostgreSQL URL");
    let mut other = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut tx = other.begin().await.expect("begin");
    sqlx::query("LOCK TABLE models IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.expect("lock");
    let started = std::time::Instant::now();
    let r = http.get(s.api("/models/m")).send().await.expect("send");
    let waited = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.expect("problem");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("timed out")), "{body}");
    assert!(waited < std::time::Duration::from_secs(10), "answered after {waited:?}");
    assert_eq!(http.get(format!("{}/healthz", s.base)).send().await.expect("send").status(), StatusCode::OK);

    tx.rollback().await.expect("rollback");
    let r = http.get(s.api("/models/m")).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "served again once the lock is gone");
    s.stop().await;
}

/// Scores the rf sample rows through the worker at `flight` (no token); the rows back.
async fn score_rf(flight: &str) -> Result<usize, tonic::Status> {
    use futures::TryStreamExt as _;
    let rows = common::read_parquet(&common::models_dir().join("rf.rows.parquet"));
    let mut client = common::flight_client(flight, None).await;
    let cmd = json!({"model": "rf", "feature_columns": (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>()});
    let input = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter([Ok(rows)]));
    let out: Result<Vec<arrow::record_batch::RecordBatch>, _> =
        async { client.do_exchange(input).await?.try_collect().await }.await;
    match out {
        Ok(b) => Ok(b.iter().map(|b| b.num_rows()).sum()),
        Err(arrow_flight::error::FlightError::Tonic(s)) => Err(*s),
        Err(other) => Err(tonic::Status::unknown(other.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_rides_out_a_registry_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let start_registry = || {
        let (data, listen) = (data.path().to_path_buf(), listen.clone());
        tokio::task::spawn_blocking(move || common::spawn_lakescore("registry", &data, &["--listen", &listen], &[]))
    };
    let mut registry = start_registry().await.expect("registry");
    common::register_champion(&registry.url, None, "rf", "rf.onnx").await;

    // A worker of its own, resolving models through the registry's gRPC service.
    let worker_dir = tempfile::tempdir().expect("tempdir");
    let registry_url = format!("grpc://{listen}");
    let worker_path = worker_dir.path().to_path_buf();
    let worker = tokio::task::spawn_blocking(move || {
        common::spawn_lakescore(
            "scorer",
            &worker_path,
            &["--flight-listen", "127.0.0.1:0", "--registry-url", &registry_url, "--intra-op-threads", "1"],
            &[],
        )
    })
    .await
    .expect("worker");
    assert_eq!(score_rf(&worker.flight).await.expect("scores while the registry is up"), 200);

    // The registry restarts (a rolling update): a call made while it is away waits for it.
    assert!(registry.terminate().success());
    let call = tokio::spawn({
        let flight = worker.flight.clone();
        async move { score_rf(&flight).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let _registry = start_registry().await.expect("registry again");
    let rows = call.await.expect("task").expect("the call made during the restart succeeds");
    assert_eq!(rows, 200);
    let logs = worker.log_lines().join("\n");
    assert!(logs.contains("registry unavailable; retrying"), "the worker retried the resolve");
}
