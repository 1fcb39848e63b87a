//! The worker's scoring and model-cache metrics (Prometheus, through the `metrics` facade;
//! the recorder is [`lakescore_core::metrics`]). Labels are bounded: the model's name and
//! the engine, never a version, a job or a caller.

use std::time::Duration;

use metrics::{Counter, Histogram};

/// Where one resolved model's scoring is counted: rows, inference calls and their time,
/// labelled `{model, engine}`. The handles are looked up once per request, not per batch.
#[derive(Clone)]
pub struct ScoreMeter {
    rows: Counter,
    batches: Counter,
    seconds: Histogram,
}

impl std::fmt::Debug for ScoreMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScoreMeter")
    }
}

impl ScoreMeter {
    /// The meter of `model` (its name) run by `engine`.
    pub fn new(model: &str, engine: &str) -> Self {
        let labels = [("model", model.to_string()), ("engine", engine.to_string())];
        Self {
            rows: metrics::counter!("lakescore_rows_scored_total", &labels),
            batches: metrics::counter!("lakescore_inference_calls_total", &labels),
            seconds: metrics::histogram!("lakescore_inference_duration_seconds", &labels),
        }
    }

    /// One inference call over `rows` rows that took `elapsed`.
    pub fn record(&self, rows: usize, elapsed: Duration) {
        self.rows.increment(rows as u64);
        self.batches.increment(1);
        self.seconds.record(elapsed.as_secs_f64());
    }
}

/// A model looked up in the cache: found loaded, or not.
pub(crate) fn cache_lookup(hit: bool) {
    if hit {
        metrics::counter!("lakescore_model_cache_hits_total").increment(1);
    } else {
        metrics::counter!("lakescore_model_cache_misses_total").increment(1);
    }
}

/// A model fetched and loaded (or failing to), and how long it took.
pub(crate) fn model_load(engine: &str, elapsed: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("lakescore_model_loads_total", "engine" => engine.to_string(), "outcome" => outcome).increment(1);
    if ok {
        metrics::histogram!("lakescore_model_load_duration_seconds", "engine" => engine.to_string())
            .record(elapsed.as_secs_f64());
    }
}

/// A loaded model dropped to make room.
pub(crate) fn cache_eviction() {
    metrics::counter!("lakescore_model_cache_evictions_total").increment(1);
}

/// What the cache holds now: loaded models and their ONNX bytes.
pub(crate) fn cache_size(models: usize, bytes: u64) {
    metrics::gauge!("lakescore_model_cache_models").set(models as f64);
    metrics::gauge!("lakescore_model_cache_bytes").set(bytes as f64);
}
