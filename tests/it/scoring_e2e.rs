//! The whole product as deployed: `lakescore serve` as a real process with OIDC auth
//! against a real issuer, models registered over HTTP, scored over Arrow Flight by the
//! Rust Flight client and by `pyarrow.flight`, predictions checked against onnxruntime.
//! The worker passes each caller's token to the registry, so grants decide who may score.

use crate::common;

use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::FlightDescriptor;
use common::issuer::{Issuer, AUDIENCE};
use common::{models_dir, python_json, AuthedServe as Serve};
use futures::TryStreamExt;
use serde_json::{json, Value};

/// Starts `lakescore serve` with OIDC settings pointing at `issuer`, on free ports.
fn serve(issuer: &Issuer) -> Serve {
    common::spawn_serve_with_issuer(issuer, &[])
}

/// [`serve`] with extra environment variables for the process.
fn serve_env(issuer: &Issuer, env: &[(&str, &str)]) -> Serve {
    common::spawn_serve_with_issuer(issuer, env)
}

async fn register(s: &Serve, token: &str, name: &str, file: &str) {
    common::register_champion(&s.server.url, Some(token), name, file).await;
}

fn rows(model: &str) -> Vec<RecordBatch> {
    vec![common::read_parquet(&models_dir().join(format!("{model}.rows.parquet")))]
}

async fn exchange(s: &Serve, token: Option<&str>, cmd: &Value) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut client = common::flight_client(&s.server.flight, token).await;
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter(rows("rf").into_iter().map(Ok)));
    let result = async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await;
    result.map_err(|e| match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    })
}

/// The rf command over DoExchange on an existing client (its channel and headers).
async fn exchange_on(client: &mut arrow_flight::FlightClient) -> Result<Vec<RecordBatch>, FlightError> {
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(rf_command().to_string())))
        .build(futures::stream::iter(rows("rf").into_iter().map(Ok)));
    client.do_exchange(input).await?.try_collect::<Vec<_>>().await
}

/// Grants (or, with `grant == false`, revokes) alice's read access to `rf`; the status.
async fn grant_alice(s: &Serve, owner: &str, grant: bool) -> u16 {
    let url = format!("{}/api/v1/models/rf/grants", s.server.url);
    let http = reqwest::Client::new();
    let req = if grant {
        http.put(url).json(&json!({"principal": "user:alice", "permission": "read"}))
    } else {
        http.delete(url).query(&[("principal", "user:alice")])
    };
    req.bearer_auth(owner).send().await.expect("send").status().as_u16()
}

fn rf_command() -> Value {
    json!({"model": "rf@champion", "feature_columns": (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_score_only_models_they_may_read() {
    let issuer = Issuer::start().await;
    let s = serve(&issuer);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    let alice = issuer.token(json!({"oid": "alice"}));
    register(&s, &owner, "rf", "rf.onnx").await;

    let out = exchange(&s, Some(&owner), &rf_command()).await.expect("the owner scores");
    let n: usize = out.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(n, rows("rf").iter().map(RecordBatch::num_rows).sum::<usize>(), "same rows out as in");
    assert!(out[0].schema().field_with_name("label").is_ok());

    // With authentication on and no storage_roots configured, the worker reads and writes
    // only under its data directory's datasets/: not any local file it can open.
    let mut client = common::flight_client(&s.server.flight, Some(&owner)).await;
    let inside = format!("file://{}/datasets/out/", s.data.path().display());
    for (input, output) in [("file:///etc/passwd", inside.as_str()), ("file:///etc/", "file:///tmp/lakescore-out/")] {
        let cmd = json!({"model": "rf@champion", "input": input, "output": output});
        let err = common::score_dataset(&mut client, &cmd).await.expect_err("outside the storage roots");
        let FlightError::Tonic(status) = err else { panic!("expected a status, got {err:?}") };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(status.message().contains("outside the storage locations"), "{status}");
    }

    let err = exchange(&s, None, &rf_command()).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = exchange(&s, Some("garbage"), &rf_command()).await.expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = exchange(&s, Some(&alice), &rf_command()).await.expect_err("alice has no grant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // The owner grants alice read: the same cached model is now served to her.
    assert_eq!(grant_alice(&s, &owner, true).await, 200);
    exchange(&s, Some(&alice), &rf_command()).await.expect("alice scores after the grant");
    // Revoked: refused again at once (every call asks the registry with the caller's token).
    assert_eq!(grant_alice(&s, &owner, false).await, 204);
    let err = exchange(&s, Some(&alice), &rf_command()).await.expect_err("alice's grant was revoked");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert_eq!(grant_alice(&s, &owner, true).await, 200);
    let err = exchange(&s, Some(&alice), &json!({"model": "nope@champion"})).await.expect_err("unknown model");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyarrow_flight_predictions_match_onnxruntime() {
    const SCRIPT: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.flight as flight, pyarrow.parquet as pq
location, token, models = sys.argv[1], sys.argv[2], sys.argv[3]
report = {}
# The last two send compressed IPC bodies (as pyarrow clients across networks do) and ask
# for compressed results.
for name, features, codec in [("rf", 20, None), ("logreg_nozipmap", 4, None), ("gbr", 8, None),
                              ("rf_lz4", 20, "lz4"), ("rf_zstd", 20, "zstd")]:
    model = name.split("_")[0] if codec else name
    table = pq.read_table(f"{models}/{model}.rows.parquet")
    cols = [f"f{i}" for i in range(features)]
    cmd = {"model": f"{model}@champion", "feature_columns": cols}
    if codec:
        cmd["result_compression"] = codec
    client = flight.FlightClient(location)
    opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()), opts)
    writer.begin(table.schema, options=pa.ipc.IpcWriteOptions(compression=codec))
    for batch in table.to_batches(max_chunksize=37):
        writer.write_batch(batch)
    writer.done_writing()
    out = reader.read_all()
    writer.close()
    x = np.column_stack([table.column(c).to_numpy() for c in cols]).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # as the worker in this test: same summation order
    sess = ort.InferenceSession(f"{models}/{model}.onnx", so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})
    entry = {"rows_in": table.num_rows, "rows_out": out.num_rows, "columns": out.column_names}
    if name == "gbr":
        got = out.column("variable").to_numpy()
        want = ref[0].reshape(-1)
        entry["max_rel_diff"] = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-6)))
    else:
        entry["labels_equal"] = bool(np.array_equal(out.column("label").to_numpy(), ref[0]))
        probs = np.array(out.column("probabilities").to_pylist(), dtype=np.float32) if "probabilities" in out.column_names \
            else np.column_stack([out.column(c).to_numpy() for c in out.column_names if c.startswith("probability_")])
        want = ref[1] if isinstance(ref[1], np.ndarray) else np.array([[m[k] for k in sorted(m)] for m in ref[1]], dtype=np.float32)
        entry["max_rel_diff"] = float(np.max(np.abs(probs - want) / np.maximum(np.abs(want), 1e-6)))
    entry["passthrough_equal"] = all(out.column(c).equals(table.column(c)) for c in cols)
    report[name] = entry
print(json.dumps(report))
"#;
    let issuer = Issuer::start().await;
    let s = serve(&issuer);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    for (name, file) in [("rf", "rf.onnx"), ("logreg_nozipmap", "logreg_nozipmap.onnx"), ("gbr", "gbr.onnx")] {
        register(&s, &owner, name, file).await;
    }
    let location = format!("grpc://{}", s.server.flight);
    let models = models_dir();
    let report =
        tokio::task::spawn_blocking(move || python_json(SCRIPT, &[&location, &owner, models.to_str().expect("utf-8")]))
            .await
            .expect("python");
    println!("{report}");
    for (name, entry) in report.as_object().expect("report") {
        assert_eq!(entry["rows_in"], entry["rows_out"], "{name}: {entry}");
        assert_eq!(entry["passthrough_equal"], true, "{name}: {entry}");
        if name != "gbr" {
            assert_eq!(entry["labels_equal"], true, "{name}: labels differ from onnxruntime: {entry}");
        }
        let diff = entry["max_rel_diff"].as_f64().expect("diff");
        assert!(diff <= 1e-5, "{name}: predictions differ from onnxruntime by {diff} (relative)");
    }
}

/// Requests the registry has answered on its gRPC service (what workers call), from its
/// Prometheus counters.
async fn registry_grpc_calls(s: &Serve) -> u64 {
    let text = reqwest::get(format!("{}/metrics", s.server.url)).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.starts_with("lakescore_http_requests_total{") && l.contains("lakescore.registry.v1"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_checks_each_token_itself_and_never_logs_it() {
    let issuer = Issuer::start().await;
    // Everything at debug level, the transport libraries included: no token at any level.
    let s = serve_env(&issuer, &[("LAKESCORE_LOG", "debug")]);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    register(&s, &owner, "rf", "rf.onnx").await;
    exchange(&s, Some(&owner), &rf_command()).await.expect("the owner scores");

    let now = chrono::Utc::now().timestamp();
    let expired = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"], "exp": now - 3600}));
    let other_api = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"], "aud": "api://other"}));
    let forged = {
        use base64::Engine as _;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = json!({"iss": issuer.url, "aud": AUDIENCE, "exp": now + 600, "oid": "owner-1"});
        format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims))
    };
    let before = registry_grpc_calls(&s).await;
    assert!(before > 0, "the worker resolved the model through the registry's gRPC service");
    for (what, token, reason) in
        [("expired", &expired, "expired"), ("another API's", &other_api, "audience"), ("alg none", &forged, "")]
    {
        let err = exchange(&s, Some(token), &rf_command()).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err}");
        assert!(err.message().contains(reason), "{what}: {err}");
    }
    assert_eq!(
        registry_grpc_calls(&s).await,
        before,
        "the worker refused the tokens itself, before asking the registry anything"
    );

    // Each refusal is logged at info with its reason and the caller's address, on both
    // transports; then a flood of bad tokens is rate limited, and what was held back counted.
    let status = reqwest::Client::new()
        .get(format!("{}/api/v1/models", s.server.url))
        .bearer_auth(&expired)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 401);
    for _ in 0..40 {
        exchange(&s, Some("garbage"), &rf_command()).await.expect_err("garbage token");
    }
    let refusals: Vec<Value> = s
        .server
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "refused an unauthenticated call")
        .collect();
    let flight: Vec<&Value> = refusals.iter().filter(|l| l["fields"]["transport"] == "flight").collect();
    assert!(flight.iter().all(|l| l["level"] == "INFO"), "{flight:?}");
    assert!(flight.iter().any(|l| l["fields"]["reason"].as_str().unwrap_or("").contains("expired")), "{flight:?}");
    assert!(flight.iter().all(|l| l["fields"]["peer"].as_str().unwrap_or("").starts_with("127.0.0.1:")), "{flight:?}");
    let rest: Vec<&Value> = refusals.iter().filter(|l| l["fields"]["transport"] == "rest").collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0]["fields"]["peer"].as_str().unwrap_or("").starts_with("127.0.0.1:"), "{rest:?}");
    assert!(refusals.len() <= 20, "at most 20 refusals logged per 10 s, got {}", refusals.len());

    // The process logged at debug level, and no token (nor a token's signature) is in it.
    let logs = s.server.log_lines();
    assert!(logs.iter().any(|l| l.contains("\"DEBUG\"")), "debug logging is on");
    let all = logs.join("\n");
    for (what, token) in [("valid", &owner), ("expired", &expired), ("other API", &other_api), ("forged", &forged)] {
        let payload = token.split('.').nth(1).expect("payload");
        assert!(!all.contains(payload), "the {what} token's payload appears in the log");
        let signature = token.rsplit('.').next().unwrap_or_default();
        if !signature.is_empty() {
            assert!(!all.contains(signature), "the {what} token's signature appears in the log");
        }
    }
}

/// A DoPut whose batches are fed through the returned sender; the call runs in a task.
async fn streaming_put(
    s: &Serve,
    token: &str,
    cmd: &Value,
) -> (
    futures::channel::mpsc::UnboundedSender<Result<RecordBatch, FlightError>>,
    tokio::task::JoinHandle<Result<Vec<arrow_flight::PutResult>, FlightError>>,
) {
    let mut client = common::flight_client(&s.server.flight, Some(token)).await;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(rx);
    let call = tokio::spawn(async move { client.do_put(input).await?.try_collect::<Vec<_>>().await });
    (tx, call)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_streams_and_cancels_the_ones_that_overrun() {
    let issuer = Issuer::start().await;
    let mut s = serve_env(&issuer, &[("LAKESCORE_SHUTDOWN_GRACE_SECS", "5")]);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    register(&s, &owner, "rf", "rf.onnx").await;
    // With authentication on and no storage_roots, the worker writes only under the data
    // directory's datasets/.
    let out = s.data.path().join("datasets/scores");
    let job = |name: &str| {
        let mut cmd = rf_command();
        cmd["output"] = json!(format!("file://{}/{name}/", out.display()));
        cmd
    };
    let batches = rows("rf");
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let first = batches[0].slice(0, 50);
    let rest: Vec<RecordBatch> = std::iter::once(batches[0].slice(50, batches[0].num_rows() - 50))
        .chain(batches.iter().skip(1).cloned())
        .collect();

    // Two uploads in flight: one that finishes after the signal, one that never does.
    let (finishing, finishing_call) = streaming_put(&s, &owner, &job("finishing")).await;
    let (stalled, stalled_call) = streaming_put(&s, &owner, &job("stalled")).await;
    finishing.unbounded_send(Ok(first.clone())).expect("send");
    stalled.unbounded_send(Ok(first)).expect("send");
    // Both calls are under way before the signal (the worker is scoring their first rows).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let pid = s.server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // The in-flight stream goes on after SIGTERM and completes: all rows, manifest written.
    for b in rest {
        finishing.unbounded_send(Ok(b)).expect("send after SIGTERM");
    }
    drop(finishing);
    let results = finishing_call.await.expect("task").expect("the in-flight DoPut completes during the drain");
    let summary: Value = serde_json::from_slice(&results[0].app_metadata).expect("summary");
    assert_eq!(summary["rows"], total, "{summary}");
    assert!(out.join("finishing/_delta_log/00000000000000000000.json").is_file(), "committed to its table");

    // The stalled one is cancelled when the grace period is over: UNAVAILABLE, and nothing
    // of it stays in storage.
    let err = stalled_call.await.expect("task").expect_err("the stalled DoPut is cancelled");
    let status = match err {
        FlightError::Tonic(s) => *s,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("shutting down"), "{status}");
    let left: Vec<String> = std::fs::read_dir(out.join("stalled"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the cancelled job left {left:?}");
    drop(stalled);

    // And the process exits, cleanly, soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = s.server.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not exit after the grace period");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "serve exited with {exit:?}");
    let logs = s.server.log_lines().join("\n");
    assert!(logs.contains("grace period over"), "the cancellation is logged");
}

/// REST and Flight parse model references with one grammar: every entry of the table
/// that drives the parser's own test is accepted or refused alike by both transports
/// (a valid reference to a model that does not exist is 404 / NOT_FOUND, a malformed one
/// 400 / INVALID_ARGUMENT). An archived version stays resolvable over REST as `name:N`,
/// and the worker refuses to score it, reading the registry's typed status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rest_and_flight_share_the_reference_grammar_and_refuse_archived_versions() {
    let issuer = Issuer::start().await;
    let s = serve(&issuer);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    register(&s, &owner, "rf", "rf.onnx").await;
    let http = reqwest::Client::new();
    let resolve = |reference: &str| {
        let encoded: String = url::form_urlencoded::byte_serialize(reference.as_bytes()).collect();
        http.get(format!("{}/api/v1/resolve/{}", s.server.url, encoded.replace('+', "%20"))).bearer_auth(&owner).send()
    };
    let features: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for (reference, parsed) in lakescore_core::reference::GRAMMAR_CASES {
        let flight = exchange(&s, Some(&owner), &json!({"model": reference, "feature_columns": features}))
            .await
            .expect_err("no model of the table exists");
        let (want_http, want_grpc) = match parsed {
            Some(_) => (404, tonic::Code::NotFound),
            None => (400, tonic::Code::InvalidArgument),
        };
        assert_eq!(flight.code(), want_grpc, "Flight, {reference:?}: {flight}");
        // An empty path segment is no reference at all: there is no such route.
        if !reference.is_empty() {
            let rest = resolve(reference).await.expect("send").status().as_u16();
            assert_eq!(rest, want_http, "REST, {reference:?}");
        }
    }

    let r = http
        .delete(format!("{}/api/v1/models/rf/versions/1", s.server.url))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "archive rf:1");
    let record: Value = resolve("rf:1").await.expect("send").json().await.expect("json");
    assert_eq!(record["status"], "archived");
    let err = exchange(&s, Some(&owner), &json!({"model": "rf:1", "feature_columns": features}))
        .await
        .expect_err("an archived version is not scored");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("archived"), "{err}");
}

/// A bearer token of tens of KiB (an Entra token with many groups) reaches the worker's
/// token check and is answered on its own stream, and the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_tokens_are_answered_not_dropped() {
    let issuer = Issuer::start().await;
    let s = serve(&issuer);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    register(&s, &owner, "rf", "rf.onnx").await;
    let groups: Vec<String> = (0..1500).map(|n| format!("{n:08}-0000-0000-0000-000000000000")).collect();
    let big = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"], "groups": groups}));
    assert!(big.len() > 64 << 10, "the token is {} bytes", big.len());
    let out = exchange(&s, Some(&big), &rf_command()).await.expect("a 64 KiB+ token is accepted");
    assert!(out[0].schema().field_with_name("label").is_ok());
    // A forged large token is refused on its own stream; the worker keeps serving.
    let forged = format!("{}x", &big[..big.len() - 1]);
    let err = exchange(&s, Some(&forged), &rf_command()).await.expect_err("bad signature");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    exchange(&s, Some(&owner), &rf_command()).await.expect("still serving");

    // Over the 256 KiB limit: answered on its own stream (RESOURCE_EXHAUSTED, 431 over
    // REST), not by closing the connection; the same client goes on with a normal token.
    let groups: Vec<String> = (0..5500).map(|n| format!("{n:08}-0000-0000-0000-000000000000")).collect();
    let huge = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"], "groups": groups}));
    assert!((260 << 10..390 << 10).contains(&huge.len()), "the token is {} bytes", huge.len());
    let mut client = common::flight_client(&s.server.flight, Some(&huge)).await;
    let err = exchange_on(&mut client).await.expect_err("headers over the limit");
    let FlightError::Tonic(status) = err else { panic!("expected a status, got {err:?}") };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("max_header_list_bytes"), "{status}");
    client.add_header("authorization", &format!("Bearer {owner}")).expect("header");
    exchange_on(&mut client).await.expect("the same channel serves the next call");
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/models", s.server.url))
        .bearer_auth(&huge)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 431);
    let problem: Value = r.json().await.expect("problem+json");
    assert!(problem["detail"].as_str().unwrap_or("").contains("over the registry's limit"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_asks_for_too_much_memory_fails_alone() {
    let issuer = Issuer::start().await;
    // 256 MiB for inference: the registry refuses graphs that need more from constants alone,
    // the worker stops runs that need more from the data.
    let s = serve_env(&issuer, &[("LAKESCORE_MAX_INFERENCE_BYTES", "268435456")]);
    let owner = issuer.token(json!({"oid": "owner-1", "roles": ["LakeScore.Write"]}));
    register(&s, &owner, "rf", "rf.onnx").await;
    register(&s, &owner, "hog", "hog_runtime.onnx").await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/models/rf/versions", s.server.url))
        .bearer_auth(&owner)
        .header("content-type", "application/octet-stream")
        .body(common::model_bytes("bad_constant_oom.onnx"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.expect("problem");
    assert!(problem["detail"].as_str().unwrap_or("").contains("max_inference_bytes"), "{problem}");

    // Y = X + sum(ones([max(X), 1000])): fine for small values, 4 GB for a row holding 1e6.
    let score_hog = |values: Vec<f32>| {
        let s = &s;
        let owner = &owner;
        async move {
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
                "x",
                arrow::datatypes::DataType::Float32,
                false,
            )]));
            let batch =
                RecordBatch::try_new(schema, vec![std::sync::Arc::new(arrow::array::Float32Array::from(values))])
                    .expect("batch");
            let mut client = common::flight_client(&s.server.flight, Some(owner)).await;
            let cmd = json!({"model": "hog@champion", "feature_columns": ["x"]});
            let input = FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
                .build(futures::stream::iter([Ok(batch)]));
            async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await
        }
    };
    let out = score_hog(vec![1.0, 3.0]).await.expect("small values run");
    let y = out[0].column_by_name("Y").expect("Y");
    let y = arrow::compute::cast(y, &arrow::datatypes::DataType::Float32).expect("cast");
    let y = y.as_any().downcast_ref::<arrow::array::Float32Array>().expect("f32");
    assert_eq!(y.values().to_vec(), vec![3001.0, 3003.0]);

    let err = score_hog(vec![1.0, 1.0e6]).await.expect_err("4 GB of ones");
    let FlightError::Tonic(status) = err else { panic!("expected a status, got {err:?}") };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("model hog:1"), "{status}");
    assert!(status.message().contains("max_inference_bytes"), "{status}");

    // The worker kept serving: the same model with small values, and another model.
    score_hog(vec![2.0]).await.expect("the hog again, small");
    exchange(&s, Some(&owner), &rf_command()).await.expect("rf after the refused run");
}
