//! The evaluator: trees walked over blocks of rows, [`LANES`] rows in lock-step, then each
//! row's sums finalised as ONNX Runtime finalises them.
//!
//! Every node is 16 bytes: the feature (low 28 bits), the comparison (3 bits), whether a
//! missing value goes the true way (top bit), the threshold, and the two next nodes. A leaf
//! points at itself both ways, so a walk of the tree's depth ends on the row's leaf whatever
//! the path length: no branch depends on the data, and the [`LANES`] independent walks keep
//! the core's load units busy while one waits on memory.

use crate::ClassLabels;

/// The mode code of a leaf (comparisons are 0..=5).
pub(crate) const LEAF: u32 = 7;
const FEATURE_MASK: u32 = (1 << 28) - 1;
/// Rows walked together through one tree.
const LANES: usize = 16;
/// Rows per block: the block's features stay in L1 while every tree walks them.
const BLOCK: usize = 256;
/// Below this many rows per thread, more threads cost more than they bring.
const MIN_ROWS_PER_THREAD: usize = 2048;

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Node {
    pub(crate) feature: u32,
    pub(crate) threshold: f32,
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
}

/// The comparisons a forest's splits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Splits {
    /// Every split is `BRANCH_LEQ` and no missing value goes the true way (scikit-learn).
    LeqOnly = 0,
    /// Every split is `BRANCH_LEQ`, some send missing values the true way (LightGBM, XGBoost).
    LeqMissing = 1,
    /// Any comparison.
    Any = 2,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Classifier { labels: ClassLabels, binary_case: bool, weights_all_positive: bool },
    Regressor { aggregate: Aggregate },
}

#[derive(Debug, Clone)]
pub(crate) struct Ensemble {
    pub(crate) nodes: Vec<Node>,
    pub(crate) trees: Vec<Tree>,
    /// Per node: its leaf number, or `u32::MAX` for a split.
    pub(crate) leaf_of: Vec<u32>,
    /// `width` weights per leaf.
    pub(crate) leaf_weights: Vec<f32>,
    /// Per leaf: the scores it has a weight for (ONNX Runtime's `has_score`).
    pub(crate) leaf_mask: Vec<u64>,
    pub(crate) width: usize,
    pub(crate) kind: Kind,
    pub(crate) post: PostTransform,
    pub(crate) base_values: Vec<f32>,
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

/// A feature value type: compared with float32 thresholds as ONNX Runtime compares them.
pub(crate) trait Feature: Copy + PartialOrd + Send + Sync {
    fn threshold(t: f32) -> Self;
    fn nan(self) -> bool;
}

impl Feature for f32 {
    #[inline(always)]
    fn threshold(t: f32) -> Self {
        t
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}

impl Feature for f64 {
    #[inline(always)]
    fn threshold(t: f32) -> Self {
        f64::from(t)
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}

/// One step of a walk: the next node for the row whose features start at `row`.
///
/// # Safety
/// `at` indexes `nodes`, and `row + features` is within `x`. [`crate::NativeModel::compile`]
/// guarantees that every successor indexes `nodes` and every split's feature is below the
/// input's width; [`Ensemble::predict_rows`] passes whole rows only.
#[inline(always)]
unsafe fn step<T: Feature, const SPLITS: u8>(nodes: &[Node], x: &[T], row: usize, at: u32) -> u32 {
    debug_assert!((at as usize) < nodes.len());
    // SAFETY: see above; these two loads are the whole cost of a step, so they are unchecked.
    let node = unsafe { nodes.get_unchecked(at as usize) };
    let f = node.feature;
    debug_assert!(row + ((f & FEATURE_MASK) as usize) < x.len());
    // SAFETY: see above.
    let v = unsafe { *x.get_unchecked(row + (f & FEATURE_MASK) as usize) };
    let t = T::threshold(node.threshold);
    let hit = match SPLITS {
        0 => v <= t,
        1 => (v <= t) | ((f >> 31 != 0) & v.nan()),
        _ => {
            let hit = match (f >> 28) & 7 {
                0 => v <= t,
                1 => v < t,
                2 => v >= t,
                3 => v > t,
                4 => v == t,
                _ => v != t,
            };
            hit | ((f >> 31 != 0) & v.nan())
        }
    };
    node.next[usize::from(!hit)]
}

impl Ensemble {
    pub(crate) fn predict<T: Feature>(&self, x: &[T], features: usize, rows: usize, threads: usize) -> Predictions {
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

    fn predict_rows<T: Feature>(&self, x: &[T], features: usize, scores: &mut [f32], labels: &mut [i64]) {
        let w = self.width;
        let rows = labels.len();
        let mut mask = [0u64; BLOCK];
        for start in (0..rows).step_by(BLOCK) {
            let n = BLOCK.min(rows - start);
            let xb = &x[start * features..(start + n) * features];
            let sb = &mut scores[start * w..(start + n) * w];
            mask[..n].fill(0);
            match self.splits {
                Splits::LeqOnly => self.accumulate::<T, 0>(xb, features, n, sb, &mut mask),
                Splits::LeqMissing => self.accumulate::<T, 1>(xb, features, n, sb, &mut mask),
                Splits::Any => self.accumulate::<T, 2>(xb, features, n, sb, &mut mask),
            }
            for r in 0..n {
                labels[start + r] = self.finalize(&mut sb[r * w..(r + 1) * w], mask[r]);
            }
        }
    }

    /// Every tree over a block of `n` rows: each row's leaf weights added in tree order.
    fn accumulate<T: Feature, const SPLITS: u8>(
        &self,
        x: &[T],
        features: usize,
        n: usize,
        acc: &mut [f32],
        mask: &mut [u64],
    ) {
        let w = self.width;
        let aggregate = match self.kind {
            Kind::Regressor { aggregate } => aggregate,
            Kind::Classifier { .. } => Aggregate::Sum,
        };
        for tree in &self.trees {
            for group in (0..n).step_by(LANES) {
                // A short last group repeats its last row in the spare lanes.
                let offsets: [usize; LANES] = std::array::from_fn(|k| (group + k).min(n - 1) * features);
                let mut at = [tree.root; LANES];
                for _ in 0..tree.depth {
                    for k in 0..LANES {
                        // SAFETY: `at[k]` starts at a root and only follows successors;
                        // `offsets[k]` starts a whole row of `x` (see `step`).
                        at[k] = unsafe { step::<T, SPLITS>(&self.nodes, x, offsets[k], at[k]) };
                    }
                }
                for (k, node) in at.iter().enumerate().take(n - group) {
                    let leaf = self.leaf_of[*node as usize] as usize;
                    let row = group + k;
                    let weights = &self.leaf_weights[leaf * w..(leaf + 1) * w];
                    let sums = &mut acc[row * w..(row + 1) * w];
                    let touched = self.leaf_mask[leaf];
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
                }
            }
        }
    }

    /// One row's sums → its final scores (in place) and label, by ONNX Runtime's rules.
    ///
    /// ONNX Runtime keeps a `has_score` flag per score (set by a leaf weight, and by a base
    /// value only where noted) and writes a score without one as 0, whatever was added to it.
    fn finalize(&self, s: &mut [f32], has: u64) -> i64 {
        let w = s.len();
        let written = |s: &mut [f32], has: u64| {
            for (j, v) in s.iter_mut().enumerate() {
                if has & (1 << j) == 0 {
                    *v = 0.0;
                }
            }
        };
        match &self.kind {
            Kind::Regressor { aggregate } => {
                let trees = self.trees.len() as f32;
                if w == 1 {
                    // The single-target path writes the sum itself, flag or not.
                    let origin = if self.base_values.len() == 1 { self.base_values[0] } else { 0.0 };
                    s[0] = match aggregate {
                        Aggregate::Sum => s[0] + origin,
                        Aggregate::Average => s[0] / trees + origin,
                        Aggregate::Min | Aggregate::Max if has & 1 != 0 => s[0] + origin,
                        Aggregate::Min | Aggregate::Max => origin,
                    };
                } else {
                    let base = |j: usize| if self.base_values.len() == w { self.base_values[j] } else { 0.0 };
                    for (j, v) in s.iter_mut().enumerate() {
                        *v = match aggregate {
                            Aggregate::Sum => *v + base(j),
                            Aggregate::Average => *v / trees + base(j),
                            Aggregate::Min | Aggregate::Max => base(j) + if has & (1 << j) != 0 { *v } else { 0.0 },
                        };
                    }
                    written(s, has);
                }
                0
            }
            Kind::Classifier { labels, binary_case, weights_all_positive } => {
                let label_at = |i: usize| match labels {
                    ClassLabels::Int64(l) => l[i],
                    ClassLabels::String(_) => i as i64,
                };
                if w > 2 {
                    // Base values count as scores here.
                    let mut has = has;
                    for (k, b) in self.base_values.iter().enumerate() {
                        s[k] += *b;
                        has |= 1 << k;
                    }
                    let mut best: Option<usize> = None;
                    for k in 0..w {
                        if has & (1 << k) != 0 && best.is_none_or(|b| s[k] > s[b]) {
                            best = Some(k);
                        }
                    }
                    written(s, has);
                    post_transform(s, self.post);
                    return label_at(best.unwrap_or(0));
                }
                // Two classes.
                let (has0, has1) = (has & 1 != 0, has & 2 != 0);
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
                    0.0
                };
                let label = if *binary_case {
                    // Weights all ≥ 0 are probabilities (positive above 0.5), others margins
                    // (positive above 0); `second` says how the other class's score is made.
                    let wins = if *weights_all_positive { positive > 0.5 } else { positive > 0.0 };
                    second = match (*weights_all_positive, wins) {
                        (true, true) => 0,
                        (true, false) => 1,
                        (false, true) => 2,
                        (false, false) => 3,
                    };
                    label_at(usize::from(wins))
                } else {
                    // Not the class labels: ONNX Runtime's positive and negative defaults.
                    i64::from(positive > 0.0)
                };
                if !one_score {
                    written(s, has);
                    post_transform(s, self.post);
                } else {
                    let v = if has0 { s[0] } else { 0.0 };
                    let (a, b) = match second {
                        0 | 1 => (1.0 - v, v),
                        2 | 3 if self.post == PostTransform::Logistic => (compute_logistic(-v), compute_logistic(v)),
                        2 | 3 => (-v, v),
                        // ONNX Runtime writes one score here and leaves the second alone.
                        _ => (v, 0.0),
                    };
                    s[0] = a;
                    s[1] = b;
                }
                label
            }
        }
    }
}

pub(crate) fn post_transform(s: &mut [f32], post: PostTransform) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = compute_logistic(*v)),
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
