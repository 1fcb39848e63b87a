//! Prometheus metrics. One recorder per process (the `metrics` facade is global), installed
//! on first use and shared by every server in the process: in `lakescore serve` the
//! registry's `/metrics` and the worker's show the same numbers. Crates record through the
//! `metrics` macros; names are `lakescore_…`, durations in seconds (`…_seconds`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Installs the recorder; call once at start-up so the first request is counted too.
pub fn init() {
    let _ = handle();
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}
