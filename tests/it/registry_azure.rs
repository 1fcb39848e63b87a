//! The registry on Azure Blob Storage (Azurite, started by scripts/test), including
//! multipart writes of large artifacts, and on object storage that is down.

use crate::common;

use std::collections::BTreeMap;

use common::big_model::model_of_10mb;
use common::{model_bytes, sha256_hex, Db, TestServer};

use reqwest::StatusCode;
use serde_json::{json, Value};

/// Azurite's well-known development account key (public, documented by Microsoft).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "lakescore-test";

fn azure_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("azure_storage_account_name", "devstoreaccount1"),
        ("azure_storage_account_key", AZURITE_KEY),
        ("azure_storage_endpoint", endpoint),
        ("azure_allow_http", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn azurite_endpoint() -> String {
    std::env::var("LAKESCORE_TEST_AZURITE_BLOB")
        .expect("LAKESCORE_TEST_AZURITE_BLOB is not set: run the tests with scripts/test, which starts Azurite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn artifacts_round_trip_through_azure_blob() {
    let endpoint = azurite_endpoint();
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let s = TestServer::start_with(Db::Sqlite, |c| {
        c.storage_url = Some(format!("az://{CONTAINER}/{prefix}"));
        c.storage_options = azure_options(&endpoint);
    })
    .await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/readyz", s.base)).send().await.expect("send").status(), StatusCode::OK);
    http.post(s.api("/models")).json(&json!({"name": "m"})).send().await.expect("create");

    // A small artifact (single put) and a 10 MB one (multipart upload).
    let small = model_bytes("rf.onnx");
    let big = model_of_10mb(7);
    for (bytes, version) in [(small.clone(), 1), (big.clone(), 2)] {
        let r = s.upload("m", bytes.clone(), None).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["version"], version);
        assert_eq!(v["sha256"], sha256_hex(&bytes));
        let got = http.get(s.api(&format!("/models/m/versions/{version}/artifact"))).send().await.expect("send");
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(got.bytes().await.expect("body").as_ref(), bytes.as_slice());
    }
    let r =
        http.get(s.api("/models/m/versions/2/artifact")).header("range", "bytes=1000-1999").send().await.expect("send");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &big[1000..2000]);

    let mut shas = s.registry.stored_artifacts().await.expect("list");
    shas.sort();
    let mut want = vec![sha256_hex(&small), sha256_hex(&big)];
    want.sort();
    assert_eq!(shas, want, "artifacts are stored content-addressed in the container");

    let r = http.delete(s.api("/models/m")).query(&[("force", "true")]).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let stored = s.registry.stored_artifacts().await.expect("list");
    assert!(stored.is_empty(), "a forced delete removes the model's artifacts: {stored:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_gives_503_and_leaves_no_row() {
    // Nothing listens on port 1: every storage request fails to connect.
    let s = TestServer::start_with(Db::Sqlite, |c| {
        c.storage_url = Some(format!("az://{CONTAINER}/down"));
        c.storage_options = azure_options("http://127.0.0.1:1/devstoreaccount1");
        c.storage_max_retries = 1;
        c.storage_retry_timeout_secs = 1;
    })
    .await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{}/readyz", s.base)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    http.post(s.api("/models")).json(&json!({"name": "m"})).send().await.expect("create");
    let r = s.upload("m", model_bytes("logreg.onnx"), None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = r.json().await.expect("problem");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("object storage")), "{problem}");
    let versions: Value = http.get(s.api("/models/m/versions")).send().await.expect("send").json().await.expect("json");
    assert_eq!(versions["versions"], json!([]), "no row without its artifact");
    // Metadata keeps being served.
    assert_eq!(http.get(s.api("/models/m")).send().await.expect("send").status(), StatusCode::OK);
    assert_eq!(http.get(format!("{}/healthz", s.base)).send().await.expect("send").status(), StatusCode::OK);
    s.stop().await;
}
