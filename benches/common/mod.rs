//! What the Rust benchmarks share (`mod common;` in each, by path from `engine/benches` and
//! `lake/benches`): reproducible input values and the best-of-3 timer.

use std::time::Instant;

/// `n` roughly standard-normal float32 values (the sum of four uniforms, scaled), the same
/// for the same `seed`: random floats, which Snappy cannot shrink and models were trained on.
pub fn normal_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| (0..4).map(|_| uniform()).sum::<f32>() * 1.7 - 3.4).collect()
}

/// The fastest of three runs of `run`, in seconds, and what the last run returned.
pub fn best_of_3<T>(mut run: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let start = Instant::now();
        out = Some(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out.expect("three runs"))
}
