//! Failpoints for the crash tests. `LAKESCORE_FAILPOINTS=name[,name…]` makes the named point
//! log a line and then wait forever, so that a test can kill the process exactly there
//! (SIGKILL between two writes, say); `name=SECONDS` makes it wait that long instead (a slow
//! step, to act on a job while it runs).
//!
//! They are in every build, release too: the tests run against the release binary (one
//! build of the dependency tree instead of two). The variable is read once per process and
//! a point costs one comparison per job unit or upload, never per row.

use std::sync::OnceLock;

/// The armed points: name and how long to wait there (`None`: until killed).
fn armed() -> &'static [(String, Option<f64>)] {
    static ARMED: OnceLock<Vec<(String, Option<f64>)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let points: Vec<_> = std::env::var("LAKESCORE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((name, secs)) => (name.to_string(), secs.parse::<f64>().ok()),
                None => (p.to_string(), None),
            })
            .collect();
        if !points.is_empty() {
            tracing::warn!(?points, "LAKESCORE_FAILPOINTS is set: this process stops where they are (a test hook)");
        }
        points
    })
}

/// Stops here (for good, or for the configured seconds) when the failpoint `name` is armed.
pub async fn hit(name: &str) {
    for (point, secs) in armed() {
        if point != name {
            continue;
        }
        match secs {
            Some(secs) => tokio::time::sleep(std::time::Duration::from_secs_f64(*secs)).await,
            None => {
                // stderr, not the log: the crash tests watch for this line.
                eprintln!("failpoint reached: {name}: waiting here until the process is killed");
                std::future::pending::<()>().await;
            }
        }
    }
}
