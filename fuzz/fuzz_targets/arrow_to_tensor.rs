//! The worker's input path on arbitrary bytes: see `fuzz/checks/arrow_to_tensor.rs` (the
//! check, which the tests also replay over the seeds and regressions).

#![no_main]

#[path = "../checks/arrow_to_tensor.rs"]
mod check;

/// libfuzzer-sys aborts on every panic, caught or not. The worker catches panics of the
/// Arrow IPC reader on malformed messages (see `FlightInput`) and answers INVALID_ARGUMENT,
/// so here a panic only counts when nothing catches it: it then unwinds out of the target,
/// and libfuzzer-sys aborts there. The hook notes the first few panics on one line each
/// (the reader panics on thousands of inputs a minute; replaying one input shows its panic).
fn count_only_uncaught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                eprintln!("panic (a crash unless caught): {info}");
            }
        }))
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    count_only_uncaught_panics();
    check::check(data)
});
