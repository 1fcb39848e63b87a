//! Tree ensembles, compiled: `ai.onnx.ml` `TreeEnsembleClassifier` and
//! `TreeEnsembleRegressor` (opsets 1 and 3: the node lists, and their double-valued
//! `*_as_tensor` forms) and `TreeEnsemble` (opset 5: `tree_roots`, tensors of splits and
//! modes, true and false leaves, set membership), into one [`Ensemble`] per graph in the
//! threshold type ONNX Runtime evaluates it in.
//!
//! As ONNX Runtime does, an opset-5 ensemble is first rewritten into the opset-3 node lists
//! (a `BRANCH_MEMBER` split becoming a chain of `BRANCH_EQ` splits), so that both take the
//! same path from there, and that path is ONNX Runtime's: the same checks, the same order
//! of trees, and the same `has_score` bookkeeping.

use std::collections::{BTreeSet, HashMap};

use lakescore_proto::onnx::{tensor_proto, NodeProto, TensorProto};

use crate::eval::{self, Aggregate, Ensemble, Float, Kind, Leaves, Node, PostTransform, Splits, Tree, DENSE_SCORES};
use crate::{class_labels, post_transform, read_attributes, unsupported, Attributes, Unsupported};

/// The most classes or targets a tree ensemble may have here: a batch's scores take
/// `rows × scores` floats, and a few bytes of model must not ask for gigabytes per batch.
/// Larger ensembles run on ONNX Runtime.
pub(crate) const MAX_TREE_SCORES: usize = 4096;
/// The deepest tree walked here (ONNX Runtime's own limit is 1,000 levels).
const MAX_DEPTH: u32 = 4096;
/// The most members a `BRANCH_MEMBER` split may have to be rewritten into a chain of
/// `BRANCH_EQ` splits, and the range they must lie in: ONNX Runtime's own rule. Other sets
/// it tests by casting the feature to an integer, which is left to it.
const MAX_MEMBERS: usize = 30;
const MAX_MEMBER: f64 = 30.0;

/// A compiled tree ensemble, in its threshold type.
#[derive(Debug, Clone)]
pub(crate) enum Forest {
    F32(Ensemble<f32>),
    F64(Ensemble<f64>),
}

impl Forest {
    pub(crate) fn kind(&self) -> &Kind {
        match self {
            Forest::F32(e) => &e.kind,
            Forest::F64(e) => &e.kind,
        }
    }
    pub(crate) fn width(&self) -> usize {
        match self {
            Forest::F32(e) => e.width,
            Forest::F64(e) => e.width,
        }
    }
    pub(crate) fn n_trees(&self) -> usize {
        match self {
            Forest::F32(e) => e.trees.len(),
            Forest::F64(e) => e.trees.len(),
        }
    }
}

/// A tensor attribute's values.
#[derive(Debug, Clone)]
pub(crate) enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
}

impl Values {
    fn type_name(&self) -> &'static str {
        match self {
            Values::F32(_) => "float",
            Values::F64(_) => "double",
            Values::U8(_) => "uint8",
        }
    }
}

/// A tensor's values, with its element count checked against its shape. External data,
/// and element types the engine does not read, are [`Unsupported`].
pub(crate) fn tensor_values(t: &TensorProto) -> Result<(Vec<i64>, Values), Unsupported> {
    use tensor_proto::DataType as D;
    if t.data_location() == tensor_proto::DataLocation::External || !t.external_data.is_empty() {
        return unsupported("a tensor with external data");
    }
    let raw = t.raw_data.as_deref();
    let values = match D::try_from(t.data_type()) {
        Ok(D::Float) => Values::F32(match raw {
            Some(b) => little_endian(b, f32::from_le_bytes)?,
            None => t.float_data.clone(),
        }),
        Ok(D::Double) => Values::F64(match raw {
            Some(b) => little_endian(b, f64::from_le_bytes)?,
            None => t.double_data.clone(),
        }),
        Ok(D::Uint8) => Values::U8(match raw {
            Some(b) => b.to_vec(),
            None => t
                .int32_data
                .iter()
                .map(|v| u8::try_from(*v))
                .collect::<Result<_, _>>()
                .or_else(|_| unsupported("a uint8 tensor holding values outside 0..=255"))?,
        }),
        _ => return unsupported(format!("a tensor of element type {}", t.data_type())),
    };
    let len = match &values {
        Values::F32(v) => v.len(),
        Values::F64(v) => v.len(),
        Values::U8(v) => v.len(),
    };
    let count = t.dims.iter().try_fold(1usize, |n, d| usize::try_from(*d).ok().and_then(|d| n.checked_mul(d)));
    if count != Some(len) {
        return unsupported(format!("a tensor of shape {:?} holding {len} values", t.dims));
    }
    Ok((t.dims.clone(), values))
}

fn little_endian<T, const N: usize>(b: &[u8], from: fn([u8; N]) -> T) -> Result<Vec<T>, Unsupported> {
    if !b.len().is_multiple_of(N) {
        return unsupported("a tensor whose raw data is not a whole number of values");
    }
    Ok(b.chunks_exact(N).map(|c| from(c.try_into().unwrap_or([0; N]))).collect())
}

/// What ONNX Runtime reads a threshold type's tensors as: a tensor attribute must hold
/// exactly the type (it refuses the model otherwise).
trait Threshold: Float {
    const NAME: &'static str;
    fn of(values: &Values) -> Option<&[Self]>;
    fn from_member(v: f64) -> Self;
}

impl Threshold for f32 {
    const NAME: &'static str = "float";
    fn of(values: &Values) -> Option<&[f32]> {
        match values {
            Values::F32(v) => Some(v),
            _ => None,
        }
    }
    fn from_member(v: f64) -> Self {
        v as f32
    }
}

impl Threshold for f64 {
    const NAME: &'static str = "double";
    fn of(values: &Values) -> Option<&[f64]> {
        match values {
            Values::F64(v) => Some(v),
            _ => None,
        }
    }
    fn from_member(v: f64) -> Self {
        v
    }
}

/// A tensor attribute in the threshold type `F` (empty when absent).
fn tensor<F: Threshold>(a: &Attributes, name: &str) -> Result<Vec<F>, Unsupported> {
    match a.tensors.get(name) {
        None => Ok(Vec::new()),
        Some(v) => match F::of(v) {
            Some(v) => Ok(v.to_vec()),
            None => unsupported(format!("{name} holds {}, the ensemble computes in {}", v.type_name(), F::NAME)),
        },
    }
}

/// A float list attribute or its `*_as_tensor` form, in the threshold type `F`.
fn floats_or_tensor<F: Threshold>(a: &Attributes, name: &str) -> Result<Vec<F>, Unsupported> {
    let as_tensor = tensor::<F>(a, &format!("{name}_as_tensor"))?;
    let floats = a.floats(name);
    match (floats.is_empty(), as_tensor.is_empty()) {
        (_, true) => Ok(floats.iter().map(|v| F::from_f32(*v)).collect()),
        (true, false) => Ok(as_tensor),
        (false, false) => unsupported(format!("both {name} and {name}_as_tensor")),
    }
}

/// The opset-3 form of an ensemble: per node and per leaf weight, as the attributes hold
/// them (and as ONNX Runtime's opset-5 rewrite makes them).
struct Lists<F> {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    features: Vec<i64>,
    values: Vec<F>,
    /// Mode codes: 0..=5 comparisons, [`eval::LEAF`].
    modes: Vec<u32>,
    trues: Vec<i64>,
    falses: Vec<i64>,
    /// Empty, or one per node.
    missing: Vec<i64>,
    w_trees: Vec<i64>,
    w_nodes: Vec<i64>,
    w_ids: Vec<i64>,
    w_values: Vec<F>,
}

const NODE_ATTRIBUTES: &[&str] = &[
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_values",
    "nodes_values_as_tensor",
    "nodes_hitrates",
    "nodes_hitrates_as_tensor",
    "nodes_modes",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
    "post_transform",
    "base_values",
    "base_values_as_tensor",
];

const V5_ATTRIBUTES: &[&str] = &[
    "aggregate_function",
    "leaf_targetids",
    "leaf_weights",
    "membership_values",
    "n_targets",
    "nodes_falseleafs",
    "nodes_falsenodeids",
    "nodes_featureids",
    "nodes_hitrates",
    "nodes_missing_value_tracks_true",
    "nodes_modes",
    "nodes_splits",
    "nodes_trueleafs",
    "nodes_truenodeids",
    "post_transform",
    "tree_roots",
];

/// Compiles the ensemble node, in double precision where ONNX Runtime computes it so (its
/// input is double, not cast to float).
pub(crate) fn compile(node: &NodeProto, n_features: usize, double: bool) -> Result<Forest, Unsupported> {
    if double {
        if node.op_type() == "TreeEnsemble" {
            // Its scores are then double too; the engine's are float.
            return unsupported("a TreeEnsemble on double input (it outputs double scores)");
        }
        Ok(Forest::F64(compile_typed::<f64>(node, n_features)?))
    } else {
        Ok(Forest::F32(compile_typed::<f32>(node, n_features)?))
    }
}

fn compile_typed<F: Threshold>(node: &NodeProto, n_features: usize) -> Result<Ensemble<F>, Unsupported> {
    let (lists, width, kind, post, base_values) = match node.op_type() {
        "TreeEnsemble" => {
            let a = read_attributes(node, V5_ATTRIBUTES)?;
            let (lists, width, aggregate, post) = v5_lists::<F>(&a, n_features)?;
            (lists, width, Kind::Regressor { aggregate }, post, Vec::new())
        }
        op => v3_lists::<F>(node, op == "TreeEnsembleClassifier")?,
    };
    build(lists, n_features, width, kind, post, base_values)
}

type V3<F> = (Lists<F>, usize, Kind, PostTransform, Vec<F>);

/// `TreeEnsembleClassifier` / `TreeEnsembleRegressor`: the lists as they are.
fn v3_lists<F: Threshold>(node: &NodeProto, classifier: bool) -> Result<V3<F>, Unsupported> {
    let extra: &[&str] = if classifier {
        &[
            "class_treeids",
            "class_nodeids",
            "class_ids",
            "class_weights",
            "class_weights_as_tensor",
            "classlabels_int64s",
            "classlabels_strings",
        ]
    } else {
        &[
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
            "target_weights_as_tensor",
            "n_targets",
            "aggregate_function",
        ]
    };
    let known: Vec<&str> = NODE_ATTRIBUTES.iter().chain(extra).copied().collect();
    let a = read_attributes(node, &known)?;
    let post = post_transform(&a, true, true)?;
    // Hit rates are not used, but ONNX Runtime reads them in the threshold type.
    tensor::<F>(&a, "nodes_hitrates_as_tensor")?;
    let prefix = if classifier { "class" } else { "target" };
    let w_values = floats_or_tensor::<F>(&a, &format!("{prefix}_weights"))?;
    let base_values = floats_or_tensor::<F>(&a, "base_values")?;
    let (kind, width) = if classifier {
        let labels = class_labels(&a, "classlabels_int64s")?;
        let classes = labels.len();
        if !(2..=MAX_TREE_SCORES).contains(&classes) {
            return unsupported(format!("{classes} classes (the native engine covers 2 to {MAX_TREE_SCORES})"));
        }
        let seen: BTreeSet<i64> = a.ints("class_ids").iter().copied().collect();
        let kind = Kind::Classifier {
            labels,
            binary_case: classes == 2 && seen.len() == 1,
            weights_all_positive: !w_values.iter().any(|w| *w < F::ZERO),
        };
        if classes == 2 && post == PostTransform::Probit && base_values.len() != 2 {
            // A row may then have one score, of which ONNX Runtime writes the PROBIT and
            // leaves the second column unwritten (whatever the memory held).
            return unsupported("PROBIT on a binary classifier without two base_values");
        }
        (kind, classes)
    } else {
        let targets = a.ints("n_targets").first().copied().unwrap_or(0);
        if !(1..=MAX_TREE_SCORES as i64).contains(&targets) {
            return unsupported(format!("n_targets {targets} (the native engine covers 1 to {MAX_TREE_SCORES})"));
        }
        let aggregate = match a.string("aggregate_function", "SUM").as_str() {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return unsupported(format!("aggregate_function {other}")),
        };
        (Kind::Regressor { aggregate }, targets as usize)
    };
    let base_ok = match &kind {
        Kind::Classifier { .. } if width == 2 => base_values.len() <= 2,
        _ => base_values.is_empty() || base_values.len() == width,
    };
    if !base_ok {
        return unsupported(format!("{} base_values for {width} scores", base_values.len()));
    }
    let modes = a
        .strings("nodes_modes")
        .iter()
        .map(|m| {
            Ok(match m.as_str() {
                "BRANCH_LEQ" => 0,
                "BRANCH_LT" => 1,
                "BRANCH_GTE" => 2,
                "BRANCH_GT" => 3,
                "BRANCH_EQ" => 4,
                "BRANCH_NEQ" => 5,
                "LEAF" => eval::LEAF,
                other => return unsupported(format!("node mode {other}")),
            })
        })
        .collect::<Result<Vec<u32>, Unsupported>>()?;
    let lists = Lists {
        tree_ids: a.ints("nodes_treeids").to_vec(),
        node_ids: a.ints("nodes_nodeids").to_vec(),
        features: a.ints("nodes_featureids").to_vec(),
        values: floats_or_tensor::<F>(&a, "nodes_values")?,
        modes,
        trues: a.ints("nodes_truenodeids").to_vec(),
        falses: a.ints("nodes_falsenodeids").to_vec(),
        missing: a.ints("nodes_missing_value_tracks_true").to_vec(),
        w_trees: a.ints(&format!("{prefix}_treeids")).to_vec(),
        w_nodes: a.ints(&format!("{prefix}_nodeids")).to_vec(),
        w_ids: a.ints(&format!("{prefix}_ids")).to_vec(),
        w_values,
    };
    Ok((lists, width, kind, post, base_values))
}

/// `TreeEnsemble` (opset 5) → the opset-3 lists, as ONNX Runtime rewrites it: each tree
/// from its root, depth first with the true branch first, node ids in visiting order, a
/// `BRANCH_MEMBER` split as a chain of `BRANCH_EQ` splits (one per member, the false branch
/// of each the next), one leaf node per leaf reached with that leaf's one weight.
fn v5_lists<F: Threshold>(
    a: &Attributes,
    n_features: usize,
) -> Result<(Lists<F>, usize, Aggregate, PostTransform), Unsupported> {
    let int = |name: &str, default: i64| a.ints(name).first().copied().unwrap_or(default);
    let targets = int("n_targets", 0);
    if !(1..=MAX_TREE_SCORES as i64).contains(&targets) {
        return unsupported(format!("n_targets {targets} (the native engine covers 1 to {MAX_TREE_SCORES})"));
    }
    // ONNX Runtime's numbering (its own enums), which it reads these as.
    let aggregate = match int("aggregate_function", 1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => return unsupported(format!("aggregate_function {other}")),
    };
    let post = match int("post_transform", 0) {
        0 => PostTransform::None,
        1 => PostTransform::Logistic,
        2 => PostTransform::Softmax,
        3 => PostTransform::SoftmaxZero,
        4 => PostTransform::Probit,
        other => return unsupported(format!("post_transform {other}")),
    };
    tensor::<F>(a, "nodes_hitrates")?;
    let splits = tensor::<F>(a, "nodes_splits")?;
    let leaf_weights = tensor::<F>(a, "leaf_weights")?;
    let members = tensor::<F>(a, "membership_values")?;
    let modes: Vec<u8> = match a.tensors.get("nodes_modes") {
        Some(Values::U8(m)) => m.clone(),
        Some(other) => return unsupported(format!("nodes_modes holds {}, not uint8", other.type_name())),
        None => Vec::new(),
    };
    let features = a.ints("nodes_featureids");
    let (trues, true_leaf) = (a.ints("nodes_truenodeids"), a.ints("nodes_trueleafs"));
    let (falses, false_leaf) = (a.ints("nodes_falsenodeids"), a.ints("nodes_falseleafs"));
    let missing = a.ints("nodes_missing_value_tracks_true");
    let leaf_targets = a.ints("leaf_targetids");
    let n = features.len();
    for (name, len) in [
        ("nodes_modes", modes.len()),
        ("nodes_splits", splits.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_trueleafs", true_leaf.len()),
        ("nodes_falsenodeids", falses.len()),
        ("nodes_falseleafs", false_leaf.len()),
    ] {
        if len != n {
            return unsupported(format!("{name} has {len} entries, nodes_featureids {n}"));
        }
    }
    if !missing.is_empty() && missing.len() != n {
        return unsupported("nodes_missing_value_tracks_true does not have one entry per node");
    }
    if leaf_weights.len() != leaf_targets.len() {
        return unsupported("leaf_weights and leaf_targetids differ in length");
    }
    if let Some(t) = leaf_targets.iter().find(|t| !(0..targets).contains(*t)) {
        return unsupported(format!("a leaf for target {t} of {targets}"));
    }
    let roots = a.ints("tree_roots");
    if roots.is_empty() {
        return unsupported("the ensemble has no trees");
    }
    // Each BRANCH_MEMBER split's members: the membership values up to the next NaN, in
    // node order.
    let mut sets: HashMap<usize, Vec<F>> = HashMap::new();
    let mut next_member = 0;
    for (i, mode) in modes.iter().enumerate() {
        match mode {
            0..=5 => {}
            6 => {
                let set: Vec<F> =
                    members[next_member.min(members.len())..].iter().take_while(|v| !v.is_nan()).copied().collect();
                next_member += set.len() + 1;
                let in_range = |v: &F| *v >= F::ZERO && *v <= F::from_member(MAX_MEMBER);
                if set.is_empty() || set.len() > MAX_MEMBERS || !set.iter().all(in_range) {
                    return unsupported(format!(
                        "a BRANCH_MEMBER split on {} values, not 1 to {MAX_MEMBERS} values in 0..={MAX_MEMBER} (ONNX Runtime's large-set test)",
                        set.len()
                    ));
                }
                sets.insert(i, set);
            }
            other => return unsupported(format!("node mode {other}")),
        }
    }

    let node_index = |id: i64, what: &str| -> Result<usize, Unsupported> {
        usize::try_from(id).ok().filter(|i| *i < n).ok_or_else(|| Unsupported(format!("{what} {id} of {n} nodes")))
    };
    let mut out = Lists::<F>::new();
    let mut visited = vec![false; n];
    // The rewritten nodes are bounded by the splits (each laid out once), their members and
    // the leaves they reach (two per split).
    let budget = n.saturating_mul(3).saturating_add(members.len()).saturating_add(roots.len());
    for (tree, root) in roots.iter().enumerate() {
        let tree = tree as i64;
        let root = node_index(*root, "a tree root at node")?;
        // Depth first, true branch first: (a node or a leaf, its id; where to write the id
        // it gets into an earlier node's false branch).
        enum Item {
            Split(usize),
            Leaf(usize),
        }
        let mut stack: Vec<(Item, Option<usize>)> = vec![(Item::Split(root), None)];
        let mut next_id = 0i64;
        while let Some((item, patch)) = stack.pop() {
            if out.node_ids.len() > budget {
                return unsupported("the ensemble's trees share nodes");
            }
            let id = next_id;
            if let Some(p) = patch {
                out.falses[p] = id;
            }
            match item {
                Item::Leaf(l) => {
                    let Some(target) = leaf_targets.get(l) else {
                        return unsupported(format!("a leaf {l} of {} leaves", leaf_targets.len()));
                    };
                    out.push_node(tree, id, 0, F::ZERO, eval::LEAF, 0, 0, 0);
                    out.w_trees.push(tree);
                    out.w_nodes.push(id);
                    out.w_ids.push(*target);
                    out.w_values.push(leaf_weights[l]);
                    next_id += 1;
                }
                Item::Split(i) => {
                    if std::mem::replace(&mut visited[i], true) {
                        return unsupported(format!("node {i} is reached twice (a cycle or shared nodes)"));
                    }
                    let feature = features[i];
                    if feature < 0 || feature as usize >= n_features {
                        return unsupported(format!("a node splits on feature {feature} of {n_features}"));
                    }
                    let tracks = missing.get(i).copied().unwrap_or(0);
                    let mut id = id;
                    let (mode, value) = match sets.get(&i) {
                        Some(set) => {
                            // All members but the last: BRANCH_EQ, true to the true branch (the
                            // id after the chain), false to the next.
                            let chain_end = id + set.len() as i64;
                            for member in &set[..set.len() - 1] {
                                out.push_node(tree, id, feature, *member, 4, chain_end, id + 1, tracks);
                                id += 1;
                            }
                            (4, set[set.len() - 1])
                        }
                        None => (u32::from(modes[i]), splits[i]),
                    };
                    let here = out.node_ids.len();
                    // The false id is patched when the false branch is laid out.
                    out.push_node(tree, id, feature, value, mode, id + 1, -1, tracks);
                    next_id = id + 1;
                    let branch = |child: i64, leaf: i64| -> Result<Item, Unsupported> {
                        if leaf != 0 {
                            let l = usize::try_from(child).ok().filter(|l| *l < leaf_targets.len());
                            l.map(Item::Leaf)
                                .ok_or_else(|| Unsupported(format!("a leaf {child} of {}", leaf_targets.len())))
                        } else {
                            Ok(Item::Split(node_index(child, "a branch to node")?))
                        }
                    };
                    stack.push((branch(falses[i], false_leaf[i])?, Some(here)));
                    stack.push((branch(trues[i], true_leaf[i])?, None));
                }
            }
        }
    }
    if !missing.is_empty() && out.missing.is_empty() {
        out.missing = vec![0; out.node_ids.len()];
    }
    Ok((out, targets as usize, aggregate, post))
}

impl<F: Copy> Lists<F> {
    fn new() -> Self {
        Lists {
            tree_ids: Vec::new(),
            node_ids: Vec::new(),
            features: Vec::new(),
            values: Vec::new(),
            modes: Vec::new(),
            trues: Vec::new(),
            falses: Vec::new(),
            missing: Vec::new(),
            w_trees: Vec::new(),
            w_nodes: Vec::new(),
            w_ids: Vec::new(),
            w_values: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_node(&mut self, tree: i64, id: i64, feature: i64, value: F, mode: u32, yes: i64, no: i64, tracks: i64) {
        self.tree_ids.push(tree);
        self.node_ids.push(id);
        self.features.push(feature);
        self.values.push(value);
        self.modes.push(mode);
        self.trues.push(yes);
        self.falses.push(no);
        self.missing.push(tracks);
    }
}

/// The opset-3 lists → the evaluator's layout: nodes grouped by tree, laid out depth-first
/// with the true branch next, every index checked.
fn build<F: Float>(
    l: Lists<F>,
    n_features: usize,
    width: usize,
    kind: Kind,
    post: PostTransform,
    base_values: Vec<F>,
) -> Result<Ensemble<F>, Unsupported> {
    let n = l.tree_ids.len();
    if n == 0 {
        return unsupported("the ensemble has no nodes");
    }
    for (name, len) in [
        ("nodes_nodeids", l.node_ids.len()),
        ("nodes_featureids", l.features.len()),
        ("nodes_values", l.values.len()),
        ("nodes_modes", l.modes.len()),
        ("nodes_truenodeids", l.trues.len()),
        ("nodes_falsenodeids", l.falses.len()),
    ] {
        if len != n {
            return unsupported(format!("{name} has {len} entries, nodes_treeids {n}"));
        }
    }
    if !l.missing.is_empty() && l.missing.len() != n {
        return unsupported("nodes_missing_value_tracks_true does not have one entry per node");
    }
    let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
    let mut tree_order: Vec<i64> = Vec::new();
    for i in 0..n {
        if index.insert((l.tree_ids[i], l.node_ids[i]), i).is_some() {
            return unsupported(format!("node {} of tree {} appears twice", l.node_ids[i], l.tree_ids[i]));
        }
        // ONNX Runtime takes a tree's first listed node as its root, and a tree listed in
        // two runs as two trees: only the usual layout is covered.
        if i == 0 || l.tree_ids[i] != l.tree_ids[i - 1] {
            if tree_order.contains(&l.tree_ids[i]) || l.node_ids[i] != 0 {
                return unsupported(format!(
                    "the nodes of tree {} are not listed together, node 0 first",
                    l.tree_ids[i]
                ));
            }
            tree_order.push(l.tree_ids[i]);
        }
    }

    let mut nodes: Vec<Node<F>> = Vec::with_capacity(n);
    let mut leaf_of: Vec<u32> = Vec::with_capacity(n);
    let mut leaves: HashMap<usize, u32> = HashMap::new(); // original index → leaf number
    let mut trees = Vec::with_capacity(tree_order.len());
    // Per original node: where it is laid out, whether its walk is done (0 no, 1 on the
    // current path, 2 done), the longest path from it to a leaf, and its two successors.
    let mut placed = vec![u32::MAX; n];
    let mut state = vec![0u8; n];
    let mut depth = vec![0u32; n];
    let mut succ: Vec<[usize; 2]> = vec![[0; 2]; n];
    for tree in &tree_order {
        let Some(&root) = index.get(&(*tree, 0)) else {
            return unsupported(format!("tree {tree} has no node 0"));
        };
        let child = |id: i64| {
            index
                .get(&(*tree, id))
                .copied()
                .ok_or_else(|| Unsupported(format!("tree {tree} points at a missing node {id}")))
        };
        // Depth first, the true branch laid out right after its node. A node that several
        // splits lead to (a BRANCH_MEMBER chain's true branch) is laid out once.
        let mut stack: Vec<(usize, bool)> = vec![(root, false)];
        while let Some((i, finished)) = stack.pop() {
            if finished {
                if l.modes[i] != eval::LEAF {
                    let [t, f] = succ[i];
                    depth[i] = 1 + depth[t].max(depth[f]);
                    if depth[i] > MAX_DEPTH {
                        return unsupported(format!("tree {tree} is deeper than {MAX_DEPTH}"));
                    }
                }
                state[i] = 2;
                continue;
            }
            match state[i] {
                2 => continue,
                1 => return unsupported(format!("tree {tree} is not a tree (a cycle)")),
                _ => {}
            }
            state[i] = 1;
            placed[i] = nodes.len() as u32;
            stack.push((i, true));
            let mode = l.modes[i];
            if mode == eval::LEAF {
                leaves.insert(i, leaves.len() as u32);
                nodes.push(Node { feature: 0, threshold: F::ZERO, next: [placed[i]; 2] });
                leaf_of.push(leaves.len() as u32 - 1);
                continue;
            }
            let feature = l.features[i];
            if feature < 0 || feature as usize >= n_features {
                return unsupported(format!("a node splits on feature {feature} of {n_features}"));
            }
            let tracks = l.missing.get(i).copied().unwrap_or(0) == 1;
            nodes.push(Node {
                feature: feature as u32 | (mode << 28) | (u32::from(tracks) << 31),
                threshold: l.values[i],
                next: [u32::MAX; 2],
            });
            leaf_of.push(u32::MAX);
            succ[i] = [child(l.trues[i])?, child(l.falses[i])?];
            // The false branch is pushed first so the true branch is laid out right after.
            stack.push((succ[i][1], false));
            stack.push((succ[i][0], false));
        }
        trees.push(Tree { root: placed[root], depth: depth[root] });
    }
    for (i, at) in placed.iter().enumerate() {
        if *at != u32::MAX && l.modes[i] != eval::LEAF {
            nodes[*at as usize].next = [placed[succ[i][0]], placed[succ[i][1]]];
        }
    }

    // Leaf weights, per leaf.
    let m = l.w_trees.len();
    if l.w_nodes.len() != m || l.w_ids.len() != m || l.w_values.len() != m {
        return unsupported("the leaf weight attributes differ in length");
    }
    let mut per_leaf: Vec<Vec<(u32, F)>> = vec![Vec::new(); leaves.len()];
    for k in 0..m {
        let Some(i) = index.get(&(l.w_trees[k], l.w_nodes[k])) else {
            return unsupported(format!("a weight for missing node {} of tree {}", l.w_nodes[k], l.w_trees[k]));
        };
        let Some(&leaf) = leaves.get(i) else {
            return unsupported("a weight on a node that is not a reachable leaf");
        };
        let id = l.w_ids[k];
        if id < 0 || id as usize >= width {
            return unsupported(format!("a weight for score {id} of {width}"));
        }
        let pairs = &mut per_leaf[leaf as usize];
        if pairs.iter().any(|(j, _)| *j as i64 == id) {
            return unsupported("a leaf with two weights for one score");
        }
        pairs.push((id as u32, l.w_values[k]));
    }
    if let Kind::Regressor { .. } = kind {
        if width == 1 && per_leaf.iter().any(Vec::is_empty) {
            return unsupported("a regression leaf without a weight");
        }
    }
    if let Kind::Classifier { binary_case: false, .. } = kind {
        // Two classes, weights for both, one base value: a row none of whose leaves has a
        // class-1 weight (one in every tree lacks it) gets one score, and ONNX Runtime
        // writes it and leaves the second column unwritten (whatever the memory held).
        if width == 2 && base_values.len() == 1 {
            let starts: Vec<usize> = trees.iter().map(|t| t.root as usize).chain([nodes.len()]).collect();
            let lacks_class_1 = |leaf: u32| leaf != u32::MAX && !per_leaf[leaf as usize].iter().any(|(j, _)| *j == 1);
            if starts.windows(2).all(|w| leaf_of[w[0]..w[1]].iter().any(|l| lacks_class_1(*l))) {
                return unsupported(
                    "one base_value on a two-class classifier with weights for both classes, where a row can have \
                     no class-1 weight (ONNX Runtime then leaves its second score unwritten)",
                );
            }
        }
    }
    let leaves = if width <= DENSE_SCORES {
        let mut weights = vec![F::ZERO; per_leaf.len() * width];
        let mut mask = vec![0u64; per_leaf.len()];
        for (leaf, pairs) in per_leaf.iter().enumerate() {
            for (j, v) in pairs {
                weights[leaf * width + *j as usize] = *v;
                mask[leaf] |= 1 << j;
            }
        }
        Leaves::Dense { weights, mask }
    } else {
        let mut start = Vec::with_capacity(per_leaf.len() + 1);
        let mut pairs = Vec::with_capacity(m);
        start.push(0);
        for leaf in &per_leaf {
            pairs.extend_from_slice(leaf);
            start.push(u32::try_from(pairs.len()).map_err(|_| Unsupported("too many leaf weights".into()))?);
        }
        Leaves::Sparse { start, pairs }
    };
    let split_nodes = || nodes.iter().zip(&leaf_of).filter(|(_, l)| **l == u32::MAX).map(|(n, _)| n.feature);
    let splits = if split_nodes().any(|f| (f >> 28) & 7 != 0) {
        Splits::Any
    } else if split_nodes().any(|f| f >> 31 != 0) {
        Splits::LeqMissing
    } else {
        Splits::LeqOnly
    };
    Ok(Ensemble { nodes, trees, leaf_of, leaves, width, kind, post, base_values, splits })
}
