//! The registry's ONNX inspector on arbitrary bytes: see `fuzz/checks/onnx_inspect.rs` (the check, which the
//! tests also replay over the seeds and regressions).

#![no_main]

#[path = "../checks/onnx_inspect.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
