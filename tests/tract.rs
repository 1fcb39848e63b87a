//! The tract-onnx backend over real Arrow Flight: every generated test model is either
//! scored exactly like onnxruntime (Python) scored it, or refused with
//! `FAILED_PRECONDITION`; never scored wrongly.
//!
//! A test binary of its own, beside `tests/it`: it never loads ONNX Runtime (ONNX Runtime
//! is loaded once per process, so one ort worker in the process would hide the `auto`
//! fallback that these tests exercise).

#[path = "it/worker/mod.rs"]
mod common;

use bytes::Bytes;
use common::*;
use lakescore_scorer::engine::{Engine, OutputValue, Tensor, TensorData};
use lakescore_scorer::{Backend, ScoreError, ScorerConfig, TractEngine};
use serde_json::{json, Value};

fn uses_ml(model: &str) -> bool {
    manifest()["models"][model]["signature"]["uses_ai_onnx_ml"].as_bool().expect("uses_ai_onnx_ml")
}

fn tract_flag(model: &str) -> bool {
    manifest()["models"][model]["tract"].as_bool().unwrap_or(false)
}

/// Score every core model through a worker on `backend`; returns (scored, refused).
async fn score_all(worker: &Worker) -> (Vec<String>, Vec<(String, String)>) {
    let mut client = worker.client().await;
    let mut scored = Vec::new();
    let mut refused = Vec::new();
    for model in core_models() {
        let batches = split(&rows(&model), &[7, 130, 1, 62]);
        match exchange(&mut client, &command(&model), batches).await {
            Ok(got) => {
                // Scored: it must be onnxruntime's answer, row for row.
                assert_matches_expected(&model, &concat(&got));
                scored.push(model);
            }
            Err(e) => {
                let s = status(e);
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{model}: {s:?}");
                refused.push((model, s.message().to_string()));
            }
        }
    }
    (scored, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_scores_like_onnxruntime_or_refuses_every_model() {
    let worker = Worker::start_with(|c| c.backend = Backend::Tract).await;
    let (scored, refused) = score_all(&worker).await;
    assert!(scored.len() + refused.len() >= 8, "expected the core test models: {scored:?} {refused:?}");
    // The models the manifest marks as tract-capable are scored, and only models with
    // ai.onnx.ml operators are refused, each refusal naming the domain.
    for model in &scored {
        assert!(!uses_ml(model), "{model} uses ai.onnx.ml but tract scored it");
    }
    for (model, message) in &refused {
        assert!(uses_ml(model), "{model} has no ai.onnx.ml op but tract refused it: {message}");
        assert!(!tract_flag(model), "{model} is marked tract-capable but was refused: {message}");
        assert!(message.contains("ai.onnx.ml"), "{model}: {message}");
        assert!(message.contains("ONNX Runtime"), "{model}: {message}");
    }
    for model in core_models() {
        if tract_flag(&model) {
            assert!(scored.contains(&model), "{model}: tract-capable but not scored");
        }
    }
    assert!(scored.contains(&"linreg".to_string()), "{scored:?}");
    // The binary linear classifier (LinearClassifier + ZipMap) and the tree ensemble are
    // refused, never scored wrongly.
    let refusal = |m: &str| refused.iter().find(|(n, _)| n == m).map(|(_, msg)| msg.clone());
    let logreg = refusal("logreg").expect("logreg must be refused by tract");
    assert!(logreg.contains("LinearClassifier") && logreg.contains("ZipMap"), "{logreg}");
    let rf = refusal("rf").expect("rf must be refused by tract");
    assert!(rf.contains("TreeEnsembleClassifier"), "{rf}");
    for m in ["logreg_nozipmap", "rf_nozipmap", "gbr", "mlp", "pipeline"] {
        assert!(refusal(m).is_some(), "{m} must be refused by tract (ai.onnx.ml)");
    }

    // DoPut with tract: the output manifest names the engine.
    let mut client = worker.client().await;
    let mut cmd = command("linreg");
    cmd["output"] = json!(worker.url("out/linreg/"));
    cmd["output_format"] = json!("parquet");
    let summary = put(&mut client, &cmd, split(&rows("linreg"), &[64])).await.expect("DoPut");
    assert_eq!(summary["rows"], 200, "{summary}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(worker.path("out/linreg/_lakescore.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["engine"], "tract", "{manifest}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_onnxruntime_falls_back_to_tract_and_names_the_missing_engine() {
    let missing = "/nonexistent/lakescore-test/libonnxruntime.so.1.31.1";
    let worker = Worker::start_with(|c| {
        c.backend = Backend::Auto;
        c.onnxruntime_lib = Some(missing.into());
    })
    .await;
    let (scored, refused) = score_all(&worker).await;
    // Plain tensor graphs on tract; tree ensembles and linear models on the native engine.
    for model in ["linreg", "rf", "logreg"] {
        assert!(scored.contains(&model.to_string()), "{model}: {scored:?}");
    }
    let (_, pipeline) = refused.iter().find(|(n, _)| n == "pipeline").expect("pipeline refused");
    assert!(pipeline.contains("needs ONNX Runtime"), "{pipeline}");
    assert!(pipeline.contains(missing), "{pipeline}");
    worker.stop().await;
}

#[test]
fn ort_backend_without_onnxruntime_fails_at_start() {
    let mut config = ScorerConfig::new(format!("dir://{}", models_dir().display()));
    config.backend = Backend::Ort;
    config.onnxruntime_lib = Some("/nonexistent/lakescore-test/libonnxruntime.so".into());
    let err = lakescore_scorer::Scorer::from_config(config).expect_err("no ONNX Runtime: an error");
    assert!(matches!(err, ScoreError::FailedPrecondition(_)), "{err:?}");
}

#[test]
fn backend_config_names() {
    let c: ScorerConfig = serde_json::from_value(json!({})).unwrap();
    assert_eq!(c.backend, Backend::Auto);
    let c: ScorerConfig = serde_json::from_value(json!({"backend": "tract"})).unwrap();
    assert_eq!(c.backend, Backend::Tract);
    let c: ScorerConfig = serde_json::from_value(json!({"backend": "ort"})).unwrap();
    assert_eq!(c.backend, Backend::Ort);
    assert!(serde_json::from_value::<ScorerConfig>(json!({"backend": "tensorflow"})).is_err());
    assert_eq!("TRACT".parse::<Backend>(), Ok(Backend::Tract));
    assert!("cuda".parse::<Backend>().is_err());
    assert_eq!(serde_json::to_value(Backend::Auto).unwrap(), json!("auto"));
}

#[test]
fn the_engine_refuses_ml_models_and_serves_linreg_from_several_threads() {
    let engine = TractEngine::new();
    let load = |m: &str| engine.load(Bytes::from(std::fs::read(models_dir().join(format!("{m}.onnx"))).unwrap()));
    for model in core_models() {
        match load(&model) {
            Ok(_) => assert!(!uses_ml(&model), "{model} uses ai.onnx.ml but tract loaded it"),
            Err(e) => {
                assert!(matches!(e, ScoreError::FailedPrecondition(_)), "{model}: {e:?}");
                assert!(uses_ml(&model), "{model}: {e}");
            }
        }
    }
    let model = load("linreg").expect("tract loads linreg");
    assert_eq!(model.inputs().len(), 1);
    assert_eq!(model.inputs()[0].name, "X");
    // The exact reference outputs from expected.json, for several batch sizes, in parallel.
    let expected: Value =
        serde_json::from_slice(&std::fs::read(models_dir().join("linreg.expected.json")).unwrap()).unwrap();
    let want: Vec<f64> =
        expected["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let input = rows("linreg");
    let features = input.num_columns();
    let mut x = Vec::with_capacity(input.num_rows() * features);
    for r in 0..input.num_rows() {
        for c in 0..features {
            let col = input.column(c).as_any().downcast_ref::<arrow::array::Float32Array>().expect("float32 features");
            x.push(col.value(r));
        }
    }
    std::thread::scope(|s| {
        for chunk in [1usize, 7, 64, 200] {
            let (model, x, want) = (&model, &x, &want);
            s.spawn(move || {
                for start in (0..200).step_by(chunk) {
                    let n = chunk.min(200 - start);
                    let t = Tensor {
                        shape: vec![n, features],
                        data: TensorData::Float32(x[start * features..(start + n) * features].to_vec()),
                    };
                    let out = model.run(vec![("X".into(), t)]).expect("run");
                    let OutputValue::Tensor(Tensor { shape, data: TensorData::Float32(got) }) = &out[0] else {
                        panic!("unexpected output {:?}", out[0]);
                    };
                    assert_eq!(shape, &vec![n, 1]);
                    for (i, g) in got.iter().enumerate() {
                        let w = want[start + i];
                        assert!(close(*g as f64, w), "row {}: tract {g}, onnxruntime {w}", start + i);
                    }
                }
            });
        }
    });
    // A wrong element type or shape is INVALID_ARGUMENT, not a panic.
    let bad =
        model.run(vec![("X".into(), Tensor { shape: vec![2, features], data: TensorData::Float64(vec![0.0; 10]) })]);
    assert!(matches!(bad, Err(ScoreError::InvalidArgument(_))), "{bad:?}");
    let bad =
        model.run(vec![("X".into(), Tensor { shape: vec![3, features], data: TensorData::Float32(vec![0.0; 4]) })]);
    assert!(matches!(bad, Err(ScoreError::InvalidArgument(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_passes_nulls_as_nan_like_onnxruntime() {
    let worker = Worker::start_with(|c| c.backend = Backend::Tract).await;
    let mut client = worker.client().await;
    let at: Vec<(usize, &str)> = (0..200).step_by(5).map(|r| (r, ["f0", "f2", "f4"][r % 3])).collect();
    let (input, want) = rows_with_nulls("linreg", &at);
    // linreg defines no missing value: refused unless asked for NaN.
    let s = status(exchange(&mut client, &command("linreg"), vec![input.clone()]).await.unwrap_err());
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let mut cmd = command("linreg");
    cmd["missing"] = json!("nan");
    let got = exchange(&mut client, &cmd, split(&input, &[33])).await.expect("missing nan on tract");
    assert_matches_outputs("linreg", &concat(&got), &want, &input);
    worker.stop().await;
}
