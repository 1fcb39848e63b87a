//! The registry's HTTP metrics; the recorder and its rendering are the process's one
//! ([`lakescore_core::metrics`]).

use std::time::Duration;

pub use lakescore_core::metrics::{init, render};

pub fn record_http(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
    metrics::counter!("lakescore_http_requests_total", &labels).increment(1);
    metrics::histogram!("lakescore_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}
