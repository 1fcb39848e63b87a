//! Failpoints for the crash tests. In debug builds, `LAKESCORE_FAILPOINTS=name[,name…]`
//! makes the named point log a line and then wait forever, so that a test can kill the
//! process exactly there (SIGKILL between two writes, say); `name=SECONDS` makes it wait that
//! long instead (a slow step, to act on a job while it runs). Release builds compile the
//! check away.

/// Stops here (for good, or for the configured seconds) when the failpoint `name` is armed
/// (debug builds only).
pub async fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        let armed = std::env::var("LAKESCORE_FAILPOINTS").unwrap_or_default();
        for point in armed.split(',').map(str::trim) {
            let (point, secs) = point.split_once('=').map_or((point, None), |(p, s)| (p, s.parse::<f64>().ok()));
            if point != name {
                continue;
            }
            match secs {
                Some(secs) => tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await,
                None => {
                    // stderr, not the log: the crash tests watch for this line.
                    eprintln!("failpoint reached: {name}: waiting here until the process is killed");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
