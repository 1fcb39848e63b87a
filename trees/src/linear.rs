//! Linear models: `ai.onnx.ml` `LinearClassifier` and `LinearRegressor`, the graphs
//! skl2onnx writes for `LogisticRegression`, `LinearSVC`, `SGDClassifier`, `Ridge` and the
//! like. ONNX Runtime computes them as one float32 GEMM (`X · Wᵀ + b`) and then applies its
//! label and post-transform rules; this module computes the same sums in float32, in
//! feature order, and applies the same rules (`linearclassifier.cc`, `linearregressor.cc`,
//! `ml_common.h`), including their odd corners:
//!
//! - a classifier with one score (which has two class labels) writes
//!   `[logistic(-s), logistic(s)]` under `LOGISTIC`, and `[1 - s, s]` under any other
//!   post-transform;
//! - a regressor's intercepts are used only when there is one per target, and a
//!   single-target regressor ignores its post-transform.
//!
//! Rows are scored [`LANES`] at a time, feature by feature, so that the inner loop is vector
//! multiply-adds over the lanes: columns are read where they are; row-major input is first
//! transposed a block at a time into a small feature-major buffer.

use crate::eval::{compute_logistic, post_transform, PostTransform, Predictions};
use crate::ClassLabels;

/// Below this many rows per thread, more threads cost more than they bring.
const MIN_ROWS_PER_THREAD: usize = 16_384;
/// Rows scored together: eight vectors of eight, so that eight independent chains of
/// multiply-adds keep both FMA units busy through each one's four-cycle latency (four
/// chains ran at 0.7× the speed, one at a quarter).
const LANES: usize = 64;

/// A batch's features: row-major `[rows, features]`, or one slice per feature (the columns
/// of an Arrow batch, read in place).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Features<'a> {
    Rows(&'a [f32]),
    Columns(&'a [&'a [f32]]),
}

#[derive(Debug, Clone)]
pub(crate) enum LinearKind {
    /// `labels` has one entry per score, or two for the one-score binary case.
    Classifier {
        labels: ClassLabels,
    },
    Regressor,
}

#[derive(Debug, Clone)]
pub(crate) struct Linear {
    /// `[scores, features]`, row-major.
    pub(crate) coefficients: Vec<f32>,
    /// One per score (zeros where the model has none).
    pub(crate) intercepts: Vec<f32>,
    /// Sums per row: classes (or 1) for a classifier, targets for a regressor.
    pub(crate) sums: usize,
    pub(crate) kind: LinearKind,
    pub(crate) post: PostTransform,
}

impl Linear {
    /// Scores per row in the output: the sums, or two for the one-score binary case.
    pub(crate) fn width(&self) -> usize {
        match &self.kind {
            LinearKind::Classifier { .. } if self.sums == 1 => 2,
            _ => self.sums,
        }
    }

    /// Scores `rows` rows (`x` holds them whole: the caller checks) on up to `threads`
    /// threads, each a contiguous share of the rows.
    pub(crate) fn predict(&self, x: Features<'_>, features: usize, rows: usize, threads: usize) -> Predictions {
        let width = self.width();
        let mut scores = vec![0f32; rows * width];
        let mut labels = vec![0i64; rows];
        let threads = threads.clamp(1, (rows / MIN_ROWS_PER_THREAD).max(1));
        if threads == 1 {
            self.predict_into(x, features, 0, &mut scores, &mut labels);
        } else {
            let per = rows.div_ceil(threads);
            std::thread::scope(|s| {
                for (i, (scores, labels)) in scores.chunks_mut(per * width).zip(labels.chunks_mut(per)).enumerate() {
                    s.spawn(move || self.predict_into(x, features, i * per, scores, labels));
                }
            });
        }
        if matches!(self.kind, LinearKind::Regressor) {
            labels = Vec::new();
        }
        Predictions { labels, scores, width }
    }

    /// Scores the `labels.len()` rows from row `first` of `x` into `scores` and `labels`,
    /// with fused multiply-adds where the CPU has them, as ONNX Runtime's MLAS kernels do:
    /// its GEMM sums in feature order, its logistic is a polynomial.
    fn predict_into(&self, x: Features<'_>, features: usize, first: usize, scores: &mut [f32], labels: &mut [i64]) {
        let rows = labels.len();
        let columns: Vec<&[f32]>;
        let x = match x {
            Features::Rows(x) => Features::Rows(&x[first * features..(first + rows) * features]),
            Features::Columns(all) => {
                columns = all.iter().map(|c| &c[first..first + rows]).collect();
                Features::Columns(&columns)
            }
        };
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has FMA and AVX2, checked just above.
            return unsafe { self.predict_fma(x, features, scores, labels) };
        }
        self.predict_with::<{ cfg!(target_arch = "aarch64") }>(x, features, scores, labels)
    }

    /// [`Self::predict_with`] compiled for FMA and AVX2: the lanes are one vector and each
    /// step one fused multiply-add.
    ///
    /// # Safety
    /// The CPU must have FMA and AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn predict_fma(&self, x: Features<'_>, features: usize, scores: &mut [f32], labels: &mut [i64]) {
        self.predict_with::<true>(x, features, scores, labels)
    }

    /// `x` holds `labels.len()` rows; `scores` has room for their outputs.
    ///
    /// Each block of [`LANES`] rows is scored feature-major: the sums of one score for all
    /// lanes stay in vector registers while the features stream past, and the label and
    /// post-transform are computed across the lanes too (vector compares, one vectorized
    /// `exp` per score); only the finished scores are interleaved into row-major output.
    /// Each value goes through the same float operations, in the same order, as a row at a
    /// time would.
    #[inline(always)]
    fn predict_with<const FUSED: bool>(
        &self,
        x: Features<'_>,
        features: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) {
        let k = self.sums;
        let width = self.width();
        let rows = labels.len();
        // The block's features, feature-major (`block[f][lane]`): row-major input and the
        // last, partial block of columns are copied here; whole blocks of columns are read
        // where they are, so for them it is allocated only at that last block.
        let mut block = Vec::new();
        // The block's sums, one vector of lanes per score.
        let mut sums = vec![[0f32; LANES]; k];
        for start in (0..rows).step_by(LANES) {
            let n = LANES.min(rows - start);
            let whole_columns = matches!(x, Features::Columns(_)) && n == LANES;
            if !whole_columns && block.is_empty() {
                block = vec![[0f32; LANES]; features];
            }
            match x {
                Features::Rows(x) => {
                    for lane in 0..n {
                        let row = &x[(start + lane) * features..(start + lane + 1) * features];
                        for (f, v) in row.iter().enumerate() {
                            block[f][lane] = *v;
                        }
                    }
                }
                Features::Columns(columns) if !whole_columns => {
                    for (f, column) in columns.iter().enumerate() {
                        block[f][..n].copy_from_slice(&column[start..start + n]);
                    }
                }
                Features::Columns(_) => {}
            }
            for (j, sum) in sums.iter_mut().enumerate() {
                let w = &self.coefficients[j * features..(j + 1) * features];
                let mut acc = [0f32; LANES];
                // Plain loops, not iterator adaptors: their closures would be compiled apart
                // from this function, without its FMA and AVX2.
                for f in 0..features {
                    // A whole block of columns always has its LANES values in place.
                    let in_place = match x {
                        Features::Columns(columns) if whole_columns => columns[f][start..].first_chunk::<LANES>(),
                        _ => None,
                    };
                    let lanes = match in_place {
                        Some(lanes) => lanes,
                        None => &block[f],
                    };
                    for lane in 0..LANES {
                        acc[lane] = fma::<FUSED>(lanes[lane], w[f], acc[lane]);
                    }
                }
                for lane in 0..LANES {
                    sum[lane] = acc[lane] + self.intercepts[j];
                }
            }
            let labels = &mut labels[start..start + n];
            let scores = &mut scores[start * width..(start + n) * width];
            match &self.kind {
                LinearKind::Regressor => {
                    if k > 1 {
                        self.post_transform::<FUSED>(&mut sums, scores);
                    } else {
                        scores.copy_from_slice(&sums[0][..n]);
                    }
                }
                LinearKind::Classifier { labels: names } if k == 1 => {
                    let (negative, positive) = match names {
                        ClassLabels::Int64(l) => (l[0], l[1]),
                        // A string label is its index.
                        ClassLabels::String(_) => (0, 1),
                    };
                    for (lane, (label, pair)) in labels.iter_mut().zip(scores.chunks_exact_mut(2)).enumerate() {
                        let s = sums[0][lane];
                        *label = if s > 0.0 { positive } else { negative };
                        (pair[0], pair[1]) = match self.post {
                            PostTransform::Logistic => (compute_logistic(-s), compute_logistic(s)),
                            _ => (1.0 - s, s),
                        };
                    }
                }
                LinearKind::Classifier { labels: names } => {
                    // The first of the highest scores, per lane.
                    let mut best = [0usize; LANES];
                    let mut high = sums[0];
                    for (j, sum) in sums.iter().enumerate().skip(1) {
                        for lane in 0..LANES {
                            if sum[lane] > high[lane] {
                                high[lane] = sum[lane];
                                best[lane] = j;
                            }
                        }
                    }
                    for (label, best) in labels.iter_mut().zip(best) {
                        *label = match names {
                            ClassLabels::Int64(l) => l[best],
                            ClassLabels::String(_) => best as i64,
                        };
                    }
                    self.post_transform::<FUSED>(&mut sums, scores);
                }
            }
        }
    }

    /// The post-transform of a block's sums (k > 1), as ONNX Runtime applies it to whole
    /// batches: `LOGISTIC` with MLAS's polynomial, `SOFTMAX` with a vectorized `exp`; then
    /// the sums of the block's rows that `scores` holds into it, row-major (any other
    /// post-transform, `SOFTMAX_ZERO`, row by row there).
    #[inline(always)]
    fn post_transform<const FUSED: bool>(&self, sums: &mut [[f32; LANES]], scores: &mut [f32]) {
        let k = sums.len();
        let by_row = match self.post {
            PostTransform::None => false,
            PostTransform::Logistic => {
                for sum in sums.iter_mut() {
                    for v in sum.iter_mut() {
                        *v = mlas_logistic::<FUSED>(*v);
                    }
                }
                false
            }
            PostTransform::Softmax => {
                softmax_lanes::<FUSED>(sums);
                false
            }
            _ => true,
        };
        for (lane, row) in scores.chunks_exact_mut(k).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = sums[j][lane];
            }
            if by_row {
                post_transform(row, self.post);
            }
        }
    }
}

/// `a · b + c`: fused (one rounding) when `FUSED`, in a function compiled with FMA.
#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `SOFTMAX` over each lane of a block's scores: the lane's maximum subtracted, `exp`,
/// divided by the lane's sum (in score order), as ONNX Runtime computes it for a row. Each
/// step runs across the lanes, so it vectorizes ([`exp`] instead of a libm call per score).
#[inline(always)]
fn softmax_lanes<const FUSED: bool>(sums: &mut [[f32; LANES]]) {
    let mut max = [-f32::MAX; LANES];
    for sum in sums.iter() {
        for lane in 0..LANES {
            if sum[lane] > max[lane] {
                max[lane] = sum[lane];
            }
        }
    }
    let mut total = [0f32; LANES];
    for sum in sums.iter_mut() {
        for lane in 0..LANES {
            sum[lane] = exp::<FUSED>(sum[lane] - max[lane]);
            total[lane] += sum[lane];
        }
    }
    for sum in sums.iter_mut() {
        for lane in 0..LANES {
            sum[lane] /= total[lane];
        }
    }
}

/// `e^x` for float32 within about 2e-7 relative (Cephes' `expf`: `2^n · P(r)`, with `r`
/// the reduced argument split in two parts of ln 2), branch-free so that a loop over it
/// vectorizes. Below about -87.3 (where `expf` goes subnormal) it gives 0, above 88 e^88;
/// NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp<const FUSED: bool>(x: f32) -> f32 {
    const P: [f32; 6] =
        [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
    const LOW: f32 = -87.3365447504;
    let underflow = x < LOW;
    // Comparisons rather than f32::clamp/max, which would turn NaN into a bound.
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if underflow { LOW } else { x };
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = fma::<FUSED>(n, 2.12194440e-4, fma::<FUSED>(n, -0.693359375, x));
    let mut p = P[0];
    for c in &P[1..] {
        p = fma::<FUSED>(p, r, *c);
    }
    let y = fma::<FUSED>(p, r * r, r) + 1.0;
    // 2^n from its exponent bits; n is within [-126, 127] after the clamp (0 for NaN).
    let e = y * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        e
    }
}

/// MLAS's logistic (`MlasComputeLogistic`: Eigen's rational approximation on [-18, 18],
/// clamped to [0, 1]). Its result is `p / q + 0.5`, so in the tails it is exact only to the
/// last bits of 0.5, about 3e-8: a Normalizer that divides tiny probabilities by their tiny
/// sum would magnify any other rounding. NaN stays NaN, as in MLAS's vector kernels.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn mlas_logistic<const FUSED: bool>(v: f32) -> f32 {
    // Eigen's constants as written there, so that they round to the floats MLAS uses.
    const ALPHA: [f32; 5] =
        [4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03, 2.48287947061529e-01];
    const BETA: [f32; 6] = [
        6.10247389755681e-13,
        5.76102136993427e-09,
        6.29106785017040e-06,
        1.70198817374094e-03,
        1.16817656904453e-01,
        9.93151921023180e-01,
    ];
    if v.is_nan() {
        return v;
    }
    let x = v.clamp(-18.0, 18.0);
    let x2 = x * x;
    let (mut p, mut q) = (ALPHA[0], BETA[0]);
    for a in &ALPHA[1..] {
        p = fma::<FUSED>(p, x2, *a);
    }
    for b in &BETA[1..] {
        q = fma::<FUSED>(q, x2, *b);
    }
    let p = p * x;
    (p / q + 0.5).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulps_of_libm_and_keeps_nan() {
        let mut worst = 0f64;
        for i in -873_000..=880_000 {
            let x = i as f32 / 10_000.0;
            for fused in [false, true] {
                let ours = if fused { exp::<true>(x) } else { exp::<false>(x) };
                let libm = x.exp();
                worst = worst.max(((ours - libm) / libm).abs() as f64);
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert!(exp::<true>(f32::NAN).is_nan() && exp::<false>(f32::NAN).is_nan());
        assert_eq!((exp::<true>(f32::NEG_INFINITY), exp::<false>(-100.0)), (0.0, 0.0));
    }
}
