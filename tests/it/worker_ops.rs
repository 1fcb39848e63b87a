//! What an operator sees of a running worker: Prometheus metrics on its own listener
//! (rows scored by model, Flight calls by method and code, the model cache, bytes in and
//! out), `/healthz` and `/readyz`, and `grpc.health.v1.Health` on the Flight port, as
//! Kubernetes' gRPC probe asks it. `lakescore serve` runs as a real process.

use crate::common;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::FlightDescriptor;
use futures::TryStreamExt;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The value of the sample `name{labels}` in Prometheus text, where every `label="value"`
/// pair given appears among the sample's labels (0 when there is no such sample).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a number"))
        .sum()
}

async fn exchange(flight: &str, model: &str) -> Result<usize, tonic::Status> {
    let mut client = common::flight_client(flight, None).await;
    let rows = common::read_parquet(&common::models_dir().join("logreg_nozipmap.rows.parquet"));
    let cmd = json!({"model": model, "feature_columns": ["f0", "f1", "f2", "f3"]});
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(futures::stream::iter([Ok(rows)]));
    let out = async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await.map_err(|e| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    })?;
    Ok(out.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test]
async fn worker_metrics_readiness_and_grpc_health() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let ops = format!("127.0.0.1:{port}");
    let data = tempfile::tempdir().expect("tempdir");
    let serve = common::spawn_serve(data.path(), &["--metrics-listen", &ops, "--intra-op-threads", "1"]);
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{ops}{path}")).send();

    // grpc.health.v1 on the Flight port: serving once the registry has answered.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", serve.flight))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let mut status = ServingStatus::Unknown;
    for _ in 0..100 {
        let check = |service: &str| HealthCheckRequest { service: service.to_string() };
        status = health.check(check("")).await.expect("health check").into_inner().status();
        if status == ServingStatus::Serving {
            let flight = health.check(check("arrow.flight.protocol.FlightService")).await.expect("check");
            assert_eq!(flight.into_inner().status(), ServingStatus::Serving);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, ServingStatus::Serving, "the worker never reported serving");
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);

    // Two calls that score, one that cannot: counted by model, method and code.
    common::register_champion(&serve.url, None, "opsmodel", "logreg_nozipmap.onnx").await;
    let rows = exchange(&serve.flight, "opsmodel@champion").await.expect("score");
    assert_eq!(exchange(&serve.flight, "opsmodel@champion").await.expect("score again"), rows);
    let missing = exchange(&serve.flight, "nosuchmodel@champion").await.expect_err("unknown model");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let response = get("/metrics").await.expect("metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert_eq!(sample(&text, "lakescore_rows_scored_total", &[("model", "opsmodel")]), 2.0 * rows as f64, "{text}");
    assert!(sample(&text, "lakescore_inference_calls_total", &[("model", "opsmodel")]) >= 2.0);
    assert!(sample(&text, "lakescore_inference_duration_seconds_count", &[("model", "opsmodel")]) >= 2.0);
    assert_eq!(sample(&text, "lakescore_flight_calls_total", &[("method", "DoExchange"), ("code", "Ok")]), 2.0);
    assert_eq!(sample(&text, "lakescore_flight_calls_total", &[("method", "DoExchange"), ("code", "NotFound")]), 1.0);
    assert_eq!(sample(&text, "lakescore_flight_call_duration_seconds_count", &[("method", "DoExchange")]), 3.0);
    assert!(sample(&text, "lakescore_flight_received_bytes_total", &[("method", "DoExchange")]) > 0.0);
    assert!(sample(&text, "lakescore_flight_sent_bytes_total", &[("method", "DoExchange")]) > 0.0);
    // The model was loaded once, then found in the cache.
    assert_eq!(sample(&text, "lakescore_model_loads_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(sample(&text, "lakescore_model_cache_misses_total", &[]), 1.0);
    assert_eq!(sample(&text, "lakescore_model_cache_hits_total", &[]), 1.0);
    assert_eq!(sample(&text, "lakescore_model_cache_models", &[]), 1.0);
    assert!(sample(&text, "lakescore_model_cache_bytes", &[]) > 0.0);
    // No label carries a caller or a version.
    assert!(!text.contains("champion") && !text.contains("principal"), "{text}");
}
