//! The whole product as deployed: `lakescore serve` as a real process with OIDC auth
//! against a real issuer, models registered over HTTP, scored over Arrow Flight by the
//! Rust Flight client and by `pyarrow.flight`, predictions checked against onnxruntime.
//! The worker passes each caller's token to the registry, so grants decide who may score.

mod common;

use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use common::issuer::{Issuer, AUDIENCE};
use common::{model_bytes, models_dir, python_json};
use futures::TryStreamExt;
use serde_json::{json, Value};

struct Serve {
    server: common::ServeProcess,
    _data: tempfile::TempDir,
}

/// Starts `lakescore serve` with OIDC settings pointing at `issuer`, on free ports.
fn serve(issuer: &Issuer) -> Serve {
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("lakescore.toml");
    std::fs::write(
        &config,
        format!(
            r#"
# One inference thread: tree sums then add up in the same order as in Python.
[scorer]
intra_op_threads = 1

[auth.oidc]
issuer = "{}"
audiences = ["{AUDIENCE}"]

[auth.roles]
reader = ["role:LakeScore.Read"]
writer = ["role:LakeScore.Write"]
admin = ["role:LakeScore.Admin"]
"#,
            issuer.url
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();
    Serve { server: common::spawn_serve(data.path(), &["--config", &config]), _data: data }
}

async fn register(s: &Serve, token: &str, name: &str, file: &str) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/models", s.server.url))
        .bearer_auth(token)
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{}/api/v1/models/{name}/versions", s.server.url))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(model_bytes(file))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let r = http
        .put(format!("{}/api/v1/models/{name}/aliases/champion", s.server.url))
        .bearer_auth(token)
        .json(&json!({"version": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

fn rows(model: &str) -> Vec<RecordBatch> {
    let file = std::fs::File::open(models_dir().join(format!("{model}.rows.parquet"))).expect("rows parquet");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches")
}

async fn exchange(s: &Serve, token: Option<&str>, cmd: &Value) -> Result<Vec<RecordBatch>, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.server.flight))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the worker");
    let mut client = FlightClient::new(channel);
    if let Some(t) = token {
        client.add_header("authorization", &format!("Bearer {t}")).expect("header");
    }
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter(rows("rf").into_iter().map(Ok)));
    let result = async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await;
    result.map_err(|e| match e {
        FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    })
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
for name, features in [("rf", 20), ("logreg_nozipmap", 4), ("gbr", 8)]:
    table = pq.read_table(f"{models}/{name}.rows.parquet")
    cols = [f"f{i}" for i in range(features)]
    cmd = json.dumps({"model": f"{name}@champion", "feature_columns": cols}).encode()
    client = flight.FlightClient(location)
    opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(cmd), opts)
    writer.begin(table.schema)
    for batch in table.to_batches(max_chunksize=37):
        writer.write_batch(batch)
    writer.done_writing()
    out = reader.read_all()
    writer.close()
    x = np.column_stack([table.column(c).to_numpy() for c in cols]).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # as the worker in this test: same summation order
    sess = ort.InferenceSession(f"{models}/{name}.onnx", so, providers=["CPUExecutionProvider"])
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
