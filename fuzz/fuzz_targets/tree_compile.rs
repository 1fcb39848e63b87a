//! The native engine's compiler and evaluator on arbitrary bytes: see `fuzz/checks/tree_compile.rs` (the check, which the
//! tests also replay over the seeds and regressions).

#![no_main]

#[path = "../checks/tree_compile.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
