//! The evaluator: trees walked over blocks of rows, [`LANES`] rows in lock-step, then each
//! row's sums finalised as ONNX Runtime finalises them.
//!
//! Every node is the feature (low 28 bits), the comparison (3 bits), whether a missing value
//! goes the true way (top bit), the threshold, and the two next nodes: 16 bytes for a float
//! ensemble. A leaf points at itself both ways, so a walk of the tree's depth ends on the
//! row's leaf whatever the path length: no branch depends on the data, and the [`LANES`]
//! independent walks keep the core's load units busy while one waits on memory.
//!
//! An ensemble is evaluated in its threshold type, as ONNX Runtime evaluates it: float32
//! (float input, or a `Cast` to float in front) or float64 (double input, whose thresholds,
//! leaf weights, sums and base values ONNX Runtime keeps in double, `*_as_tensor` or not).
//! Scores come out as float32, through ONNX Runtime's post-transforms, which it computes in
//! float32.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::ClassLabels;

/// The mode code of a leaf (comparisons are 0..=5).
pub(crate) const LEAF: u32 = 7;
const FEATURE_MASK: u32 = (1 << 28) - 1;
/// Rows walked together through one tree.
const LANES: usize = 16;
/// Rows per block: the block's features stay in L1 while every tree walks them (fewer for
/// an ensemble with more than 64 scores, so that a block's sums stay small).
const BLOCK: usize = 256;
/// Below this many rows per thread, more threads cost more than they bring.
const MIN_ROWS_PER_THREAD: usize = 2048;
/// Scores (classes or targets) up to which leaf weights are stored densely, one per score
/// and leaf, with the set of scores a leaf touches as one 64-bit mask; wider ensembles keep
/// each leaf's (score, weight) pairs.
pub(crate) const DENSE_SCORES: usize = 64;

/// A threshold type: `f32` or `f64`, the type ONNX Runtime compares, sums and adds base
/// values in.
pub(crate) trait Float:
    Copy
    + PartialOrd
    + Send
    + Sync
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// A tree count as ONNX Runtime divides by it (`size_t` converted).
    fn from_count(n: usize) -> Self;
    fn is_nan(self) -> bool;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn from_count(n: usize) -> Self {
        n as f32
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_count(n: usize) -> Self {
        n as f64
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Node<F> {
    pub(crate) feature: u32,
    pub(crate) threshold: F,
    /// `[true, false]` successors.
    pub(crate) next: [u32; 2],
}

#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub(crate) root: u32,
    pub(crate) depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    /// Tree ensembles only (linear models with it go to ONNX Runtime).
    Probit,
}

/// The comparisons a forest's splits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Splits {
    /// Every split is `BRANCH_LEQ` and no missing value goes the true way (scikit-learn).
    LeqOnly = 0,
    /// Every split is `BRANCH_LEQ`, some send missing values the true way (LightGBM,
    /// scikit-learn's HistGradientBoosting).
    LeqMissing = 1,
    /// Any comparison (XGBoost's `BRANCH_LT`, membership chains of `BRANCH_EQ`).
    Any = 2,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Classifier { labels: ClassLabels, binary_case: bool, weights_all_positive: bool },
    Regressor { aggregate: Aggregate },
}

/// Leaf weights.
#[derive(Debug, Clone)]
pub(crate) enum Leaves<F> {
    /// Up to [`DENSE_SCORES`] scores: `width` weights per leaf (0 where it has none), and
    /// per leaf the scores it has a weight for (ONNX Runtime's `has_score`).
    Dense { weights: Vec<F>, mask: Vec<u64> },
    /// More scores: leaf `l`'s `(score, weight)` pairs are `pairs[start[l]..start[l + 1]]`.
    Sparse { start: Vec<u32>, pairs: Vec<(u32, F)> },
}

#[derive(Debug, Clone)]
pub(crate) struct Ensemble<F> {
    pub(crate) nodes: Vec<Node<F>>,
    pub(crate) trees: Vec<Tree>,
    /// Per node: its leaf number, or `u32::MAX` for a split.
    pub(crate) leaf_of: Vec<u32>,
    pub(crate) leaves: Leaves<F>,
    pub(crate) width: usize,
    pub(crate) kind: Kind,
    pub(crate) post: PostTransform,
    pub(crate) base_values: Vec<F>,
    /// The comparisons the splits need (the walk is compiled for it).
    pub(crate) splits: Splits,
}

/// A model's outputs for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Per row, for a classifier: the label (an int64 label, or the index of a string label).
    pub labels: Vec<i64>,
    /// Row-major `[rows, width]` scores: class scores, or regression values.
    pub scores: Vec<f32>,
    /// Scores per row.
    pub width: usize,
}

/// One step of a walk: the next node for the row whose features start at `row`.
///
/// # Safety
/// `at` indexes `nodes`, and `row + features` is within `x`. [`crate::NativeModel::compile`]
/// guarantees that every successor indexes `nodes` and every split's feature is below the
/// input's width; [`Ensemble::predict_rows`] passes whole rows only.
#[inline(always)]
unsafe fn step<F: Float, const SPLITS: u8>(nodes: &[Node<F>], x: &[F], row: usize, at: u32) -> u32 {
    debug_assert!((at as usize) < nodes.len());
    // SAFETY: see above; these two loads are the whole cost of a step, so they are unchecked.
    let node = unsafe { nodes.get_unchecked(at as usize) };
    let f = node.feature;
    debug_assert!(row + ((f & FEATURE_MASK) as usize) < x.len());
    // SAFETY: see above.
    let v = unsafe { *x.get_unchecked(row + (f & FEATURE_MASK) as usize) };
    let t = node.threshold;
    let hit = match SPLITS {
        0 => v <= t,
        1 => (v <= t) | ((f >> 31 != 0) & v.is_nan()),
        _ => {
            let hit = match (f >> 28) & 7 {
                0 => v <= t,
                1 => v < t,
                2 => v >= t,
                3 => v > t,
                4 => v == t,
                _ => v != t,
            };
            hit | ((f >> 31 != 0) & v.is_nan())
        }
    };
    node.next[usize::from(!hit)]
}

impl<F: Float> Ensemble<F> {
    /// 64-bit words of a row's `has_score` set.
    fn words(&self) -> usize {
        self.width.div_ceil(64)
    }

    pub(crate) fn predict(&self, x: &[F], features: usize, rows: usize, threads: usize) -> Predictions {
        let w = self.width;
        let mut scores = vec![0f32; rows * w];
        let mut labels = vec![0i64; rows];
        let threads = threads.clamp(1, (rows / MIN_ROWS_PER_THREAD).max(1));
        if threads == 1 {
            self.predict_rows(x, features, &mut scores, &mut labels);
        } else {
            let per = rows.div_ceil(threads);
            std::thread::scope(|s| {
                for ((xs, ss), ls) in
                    x.chunks(per * features).zip(scores.chunks_mut(per * w)).zip(labels.chunks_mut(per))
                {
                    s.spawn(move || self.predict_rows(xs, features, ss, ls));
                }
            });
        }
        if matches!(self.kind, Kind::Regressor { .. }) {
            labels = Vec::new();
        }
        Predictions { labels, scores, width: w }
    }

    fn predict_rows(&self, x: &[F], features: usize, scores: &mut [f32], labels: &mut [i64]) {
        let w = self.width;
        let words = self.words();
        let rows = labels.len();
        let block = if w <= DENSE_SCORES { BLOCK } else { (BLOCK * DENSE_SCORES / w).max(LANES) };
        let mut sums = vec![F::ZERO; block * w];
        let mut mask = vec![0u64; block * words];
        for start in (0..rows).step_by(block) {
            let n = block.min(rows - start);
            let xb = &x[start * features..(start + n) * features];
            let sb = &mut sums[..n * w];
            sb.fill(F::ZERO);
            mask[..n * words].fill(0);
            match &self.leaves {
                Leaves::Dense { weights, mask: touched } => match self.splits {
                    Splits::LeqOnly => self.accumulate_dense::<0>(weights, touched, xb, features, n, sb, &mut mask),
                    Splits::LeqMissing => self.accumulate_dense::<1>(weights, touched, xb, features, n, sb, &mut mask),
                    Splits::Any => self.accumulate_dense::<2>(weights, touched, xb, features, n, sb, &mut mask),
                },
                Leaves::Sparse { start, pairs } => match self.splits {
                    Splits::LeqOnly => self.accumulate_sparse::<0>(start, pairs, xb, features, n, sb, &mut mask),
                    Splits::LeqMissing => self.accumulate_sparse::<1>(start, pairs, xb, features, n, sb, &mut mask),
                    Splits::Any => self.accumulate_sparse::<2>(start, pairs, xb, features, n, sb, &mut mask),
                },
            }
            let out = &mut scores[start * w..(start + n) * w];
            for r in 0..n {
                labels[start + r] = self.finalize(
                    &mut sb[r * w..(r + 1) * w],
                    &mask[r * words..(r + 1) * words],
                    &mut out[r * w..(r + 1) * w],
                );
            }
        }
    }

    /// Every tree over a block of `n` rows, in tree order: `visit(row, leaf)` for each row's
    /// leaf.
    #[inline(always)]
    fn for_each_leaf<const SPLITS: u8>(&self, x: &[F], features: usize, n: usize, mut visit: impl FnMut(usize, usize)) {
        for tree in &self.trees {
            for group in (0..n).step_by(LANES) {
                // A short last group repeats its last row in the spare lanes.
                let offsets: [usize; LANES] = std::array::from_fn(|k| (group + k).min(n - 1) * features);
                let mut at = [tree.root; LANES];
                for _ in 0..tree.depth {
                    for k in 0..LANES {
                        // SAFETY: `at[k]` starts at a root and only follows successors;
                        // `offsets[k]` starts a whole row of `x` (see `step`).
                        at[k] = unsafe { step::<F, SPLITS>(&self.nodes, x, offsets[k], at[k]) };
                    }
                }
                for (k, node) in at.iter().enumerate().take(n - group) {
                    visit(group + k, self.leaf_of[*node as usize] as usize);
                }
            }
        }
    }

    fn aggregate(&self) -> Aggregate {
        match self.kind {
            Kind::Regressor { aggregate } => aggregate,
            Kind::Classifier { .. } => Aggregate::Sum,
        }
    }

    /// Each row's leaf weights (dense: `width` per leaf, `touched` the scores each has)
    /// added in tree order over a block of `n` rows.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_dense<const SPLITS: u8>(
        &self,
        weights: &[F],
        touched: &[u64],
        x: &[F],
        features: usize,
        n: usize,
        acc: &mut [F],
        mask: &mut [u64],
    ) {
        let w = self.width;
        let aggregate = self.aggregate();
        self.for_each_leaf::<SPLITS>(x, features, n, |row, leaf| {
            let weights = &weights[leaf * w..(leaf + 1) * w];
            let sums = &mut acc[row * w..(row + 1) * w];
            let touched = touched[leaf];
            match aggregate {
                Aggregate::Sum | Aggregate::Average => {
                    for (s, v) in sums.iter_mut().zip(weights) {
                        *s += *v;
                    }
                }
                Aggregate::Min | Aggregate::Max => {
                    for (j, (s, v)) in sums.iter_mut().zip(weights).enumerate() {
                        let bit = 1u64 << j;
                        if touched & bit == 0 {
                            continue;
                        }
                        let better = if aggregate == Aggregate::Min { *v < *s } else { *v > *s };
                        if mask[row] & bit == 0 || better {
                            *s = *v;
                        }
                    }
                }
            }
            mask[row] |= touched;
        });
    }

    /// Each row's leaf (score, weight) pairs added in tree order over a block of `n` rows
    /// (more than 64 scores: `mask` has several words per row).
    #[allow(clippy::too_many_arguments)]
    fn accumulate_sparse<const SPLITS: u8>(
        &self,
        start: &[u32],
        pairs: &[(u32, F)],
        x: &[F],
        features: usize,
        n: usize,
        acc: &mut [F],
        mask: &mut [u64],
    ) {
        let w = self.width;
        let words = self.words();
        let aggregate = self.aggregate();
        self.for_each_leaf::<SPLITS>(x, features, n, |row, leaf| {
            let sums = &mut acc[row * w..(row + 1) * w];
            let has = &mut mask[row * words..(row + 1) * words];
            for &(j, v) in &pairs[start[leaf] as usize..start[leaf + 1] as usize] {
                let j = j as usize;
                let (word, bit) = (j / 64, 1u64 << (j % 64));
                let s = &mut sums[j];
                match aggregate {
                    Aggregate::Sum | Aggregate::Average => *s += v,
                    Aggregate::Min | Aggregate::Max => {
                        let better = if aggregate == Aggregate::Min { v < *s } else { v > *s };
                        if has[word] & bit == 0 || better {
                            *s = v;
                        }
                    }
                }
                has[word] |= bit;
            }
        });
    }

    /// One row's sums `s` → its final scores `out` and label, by ONNX Runtime's rules.
    ///
    /// ONNX Runtime keeps a `has_score` flag per score (set by a leaf weight, and by a base
    /// value only where noted) and writes a score without one as 0, whatever was added to it.
    fn finalize(&self, s: &mut [F], has: &[u64], out: &mut [f32]) -> i64 {
        let w = s.len();
        let flag = |j: usize| has[j / 64] >> (j % 64) & 1 != 0;
        match &self.kind {
            Kind::Regressor { aggregate } => {
                let trees = F::from_count(self.trees.len());
                if w == 1 {
                    // The single-target path writes the sum itself, flag or not, and applies
                    // PROBIT only (ONNX Runtime ignores the other post-transforms there).
                    let origin = if self.base_values.len() == 1 { self.base_values[0] } else { F::ZERO };
                    let v = match aggregate {
                        Aggregate::Sum => s[0] + origin,
                        Aggregate::Average => s[0] / trees + origin,
                        Aggregate::Min | Aggregate::Max if flag(0) => s[0] + origin,
                        Aggregate::Min | Aggregate::Max => origin,
                    };
                    out[0] = if self.post == PostTransform::Probit { compute_probit(v.to_f32()) } else { v.to_f32() };
                } else {
                    let based = self.base_values.len() == w;
                    for (j, v) in s.iter_mut().enumerate() {
                        let base = if based { self.base_values[j] } else { F::ZERO };
                        *v = if !flag(j) {
                            F::ZERO
                        } else {
                            match aggregate {
                                Aggregate::Sum => *v + base,
                                Aggregate::Average if based => *v / trees + base,
                                Aggregate::Average => *v / trees,
                                Aggregate::Min | Aggregate::Max => base + *v,
                            }
                        };
                    }
                    write_scores(s, self.post, out);
                }
                0
            }
            Kind::Classifier { labels, binary_case, weights_all_positive } => {
                let label_at = |i: usize| match labels {
                    ClassLabels::Int64(l) => l[i],
                    ClassLabels::String(_) => i as i64,
                };
                if w > 2 {
                    // Base values (none or one per class) count as scores here.
                    let based = !self.base_values.is_empty();
                    for (v, b) in s.iter_mut().zip(&self.base_values) {
                        *v += *b;
                    }
                    let mut best: Option<usize> = None;
                    for k in 0..w {
                        if (based || flag(k)) && best.is_none_or(|b| s[k] > s[b]) {
                            best = Some(k);
                        }
                    }
                    if !based {
                        for (k, v) in s.iter_mut().enumerate() {
                            if !flag(k) {
                                *v = F::ZERO;
                            }
                        }
                    }
                    write_scores(s, self.post, out);
                    return label_at(best.unwrap_or(0));
                }
                // Two classes.
                let (has0, has1) = (flag(0), flag(1));
                let mut one_score = false;
                let mut second: i32 = -1;
                match self.base_values.as_slice() {
                    [b0, b1] => {
                        if has1 {
                            // Class 0's sum plus class 1's base, as ONNX Runtime has it.
                            s[1] = *b1 + s[0];
                            s[0] = -s[1];
                        } else {
                            s[1] += *b1;
                            s[0] += *b0;
                        }
                    }
                    [b0] => {
                        s[0] += *b0;
                        one_score = !has1;
                    }
                    _ => {
                        second = 3;
                        one_score = !has1;
                    }
                }
                // The positive class's score: class 1's when it has one, else class 0's.
                let positive = if !one_score && has1 {
                    s[1]
                } else if has0 {
                    s[0]
                } else {
                    F::ZERO
                };
                let label = if *binary_case {
                    // Weights all ≥ 0 are probabilities (positive above 0.5), others margins
                    // (positive above 0); `second` says how the other class's score is made.
                    let wins = if *weights_all_positive { positive > F::HALF } else { positive > F::ZERO };
                    second = match (*weights_all_positive, wins) {
                        (true, true) => 0,
                        (true, false) => 1,
                        (false, true) => 2,
                        (false, false) => 3,
                    };
                    label_at(usize::from(wins))
                } else {
                    // Not the class labels: ONNX Runtime's positive and negative defaults.
                    i64::from(positive > F::ZERO)
                };
                if !one_score {
                    for (k, v) in s.iter_mut().enumerate() {
                        if !flag(k) {
                            *v = F::ZERO;
                        }
                    }
                    write_scores(s, self.post, out);
                } else {
                    let v = if has0 { s[0] } else { F::ZERO };
                    let (a, b) = match second {
                        // The compiler refuses PROBIT where a row can have one score: ONNX
                        // Runtime writes the first and leaves the second unwritten.
                        _ if self.post == PostTransform::Probit => (compute_probit(v.to_f32()), 0.0),
                        // LOGISTIC makes the pair (σ(−v), σ(v)) whether the weights are all
                        // positive or not, as ONNX Runtime 1.31 does (older releases skipped it
                        // for all-positive weights and wrote 1 − v, v: its issue 27533).
                        0..=3 if self.post == PostTransform::Logistic => {
                            (compute_logistic((-v).to_f32()), compute_logistic(v.to_f32()))
                        }
                        0 | 1 => ((F::ONE - v).to_f32(), v.to_f32()),
                        2 | 3 => ((-v).to_f32(), v.to_f32()),
                        // ONNX Runtime writes one score here and leaves the second alone.
                        _ => (v.to_f32(), 0.0),
                    };
                    out[0] = a;
                    out[1] = b;
                }
                label
            }
        }
    }
}

/// Two or more scores (`has_score` already applied) through the post-transform into `out`,
/// as ONNX Runtime's `write_scores` does: in float32, on the scores rounded to float32 (but
/// `SOFTMAX_ZERO`'s near-zero scores, which it scales in the threshold type).
fn write_scores<F: Float>(s: &[F], post: PostTransform, out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(s) {
        *o = v.to_f32();
    }
    if post != PostTransform::SoftmaxZero {
        post_transform(out, post);
        return;
    }
    let max = out.iter().fold(-f32::MAX, |m, v| if *v > m { *v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0f32;
    for o in out.iter_mut() {
        if away_from_zero(*o) {
            *o = (*o - max).exp();
            sum += *o;
        }
    }
    for (o, v) in out.iter_mut().zip(s) {
        if away_from_zero(v.to_f32()) {
            *o /= sum;
        } else {
            *o = (*v * F::from_f32(exp_neg_max) / F::from_f32(sum)).to_f32();
        }
    }
}

/// `SOFTMAX_ZERO`'s test for a score it exponentiates (NaN is not one).
#[allow(clippy::manual_range_contains)]
fn away_from_zero(v: f32) -> bool {
    v > 0.000_000_1 || v < -0.000_000_1
}

pub(crate) fn post_transform(s: &mut [f32], post: PostTransform) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = compute_logistic(*v)),
        PostTransform::Probit => s.iter_mut().for_each(|v| *v = compute_probit(*v)),
        PostTransform::Softmax => {
            let max = s.iter().fold(-f32::MAX, |m, v| if *v > m { *v } else { m });
            let mut sum = 0f32;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::SoftmaxZero => {
            let max = s.iter().fold(-f32::MAX, |m, v| if *v > m { *v } else { m });
            let exp_neg_max = (-max).exp();
            let mut sum = 0f32;
            for v in s.iter_mut() {
                if *v > 0.000_000_1 || *v < -0.000_000_1 {
                    *v = (*v - max).exp();
                    sum += *v;
                } else {
                    *v *= exp_neg_max;
                }
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

pub(crate) fn compute_logistic(v: f32) -> f32 {
    let p = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - p
    } else {
        p
    }
}

/// ONNX Runtime's `ComputeProbit`: `√2 · erfinv(2v − 1)`, with its float32 approximation of
/// `erfinv` (Winitzki's, a = 0.147); NaN outside (0, 1).
pub(crate) fn compute_probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147f32 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}
