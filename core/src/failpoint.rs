//! Failpoints for the crash tests. In debug builds, `LAKESCORE_FAILPOINTS=name[,name…]`
//! makes the named point log a warning and then wait forever, so that a test can kill the
//! process exactly there (SIGKILL between two writes, say). Release builds compile the
//! check away.

/// Stops here for good when the failpoint `name` is armed (debug builds only).
pub async fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("LAKESCORE_FAILPOINTS").is_ok_and(|armed| armed.split(',').any(|p| p.trim() == name)) {
        // stderr, not the log: the crash tests watch for this line.
        eprintln!("failpoint reached: {name}: waiting here until the process is killed");
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
