//! The native engine against ONNX Runtime: every generated test model it compiles (tree
//! ensembles, LightGBM, XGBoost and HistGradientBoosting ones included, and linear models)
//! scores exactly as onnxruntime (Python) scored it over Flight, the others are left to ONNX
//! Runtime; randomly shaped forests (classifiers and regressors, every node mode,
//! missing-value tracking, base values, every post-transform, aggregate functions, double
//! `*_as_tensor` attributes, more than 64 classes or targets), opset-5 `TreeEnsemble`s (set
//! membership, trees of one leaf) and random linear models (every post-transform, the
//! one-score binary case, Normalizers, ZipMaps, double input) give ONNX Runtime's labels and
//! scores on random rows with NaN features; what the engine leaves to ONNX Runtime is refused
//! with a reason and loads there.

use crate::worker as common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use lakescore_proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use lakescore_scorer::engine::{Engine, LoadedModel, OutputValue, Tensor, TensorData};
use lakescore_scorer::{Backend, OrtEngine, OrtOptions, TreesEngine};
use prost::Message;
use serde_json::Value;

/// The ONNX Runtime engine (one thread: sums in tree order, like the native engine).
fn ort() -> Option<Arc<dyn Engine>> {
    match OrtEngine::new(OrtOptions { library: onnxruntime_lib(), intra_op_threads: 1, ..Default::default() }) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            assert!(std::env::var_os("LAKESCORE_TEST_STRICT").is_none(), "ONNX Runtime is required: {e}");
            eprintln!("skipping: no ONNX Runtime ({e})");
            None
        }
    }
}

/// The engine a generated model should compile for: `trees`, `linear`, or none.
fn native_engine_for(model: &str) -> Option<&'static str> {
    let m = manifest();
    let est = m["models"][model]["estimator"].as_str().unwrap_or("").to_string();
    if est.contains("Forest") || est.contains("GradientBoosting") || est.starts_with("LGBM") || est.starts_with("XGB") {
        Some("trees")
    } else if est.starts_with("LogisticRegression") {
        Some("linear")
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tree_model_scores_like_onnxruntime_and_the_rest_is_left_to_it() {
    // Compiled or not, by the engine alone.
    let native = TreesEngine::new(None, 2);
    assert_eq!(native.name(), "trees");
    assert_eq!(TreesEngine::new(ort(), 1).name(), if ort().is_some() { "trees+ort" } else { "trees" });
    let mut compiled = Vec::new();
    for model in core_models() {
        let bytes = Bytes::from(std::fs::read(models_dir().join(format!("{model}.onnx"))).expect("model"));
        match native.load(bytes) {
            Ok(m) => {
                assert_eq!(Some(m.engine()), native_engine_for(&model), "{model}");
                compiled.push(model);
            }
            Err(e) => {
                assert_eq!(native_engine_for(&model), None, "{model} was not compiled: {e}");
                assert!(e.to_string().contains("does not run this model"), "{model}: {e}");
            }
        }
    }
    for m in [
        "rf",
        "rf_nozipmap",
        "gbr",
        "gbc",
        "gbc3",
        "logreg",
        "logreg_nozipmap",
        // LightGBM (its classifiers with a Cast of the label after an Identity and a Mul of
        // the probabilities by one), XGBoost and HistGradientBoosting, trained with NaNs
        "lgbm_binary",
        "lgbm_multi",
        "lgbm_reg",
        "xgb_binary",
        "xgb_multi",
        "xgb_reg",
        "hgb_binary",
        "hgb_reg",
    ] {
        assert!(compiled.contains(&m.to_string()), "{m} not compiled: {compiled:?}");
    }

    // Over Flight with backend trees: onnxruntime's answers, row for row, in batches of
    // every size; and the manifest names the engine.
    let worker = Worker::start_with(|c| {
        c.backend = Backend::Trees;
        c.intra_op_threads = 2;
    })
    .await;
    let mut client = worker.client().await;
    for model in &compiled {
        let got = exchange(&mut client, &command(model), split(&rows(model), &[7, 130, 1, 62])).await.expect(model);
        assert_matches_expected(model, &concat(&got));
    }
    let err = exchange(&mut client, &command("mlp"), split(&rows("mlp"), &[10])).await.expect_err("mlp");
    let s = status(err);
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("MatMul"), "{s:?}");
    let mut cmd = command("rf");
    cmd["output"] = Value::String(worker.url("out/rf/"));
    cmd["output_format"] = Value::String("parquet".into());
    put(&mut client, &cmd, split(&rows("rf"), &[64])).await.expect("DoPut");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(worker.path("out/rf/_lakescore.json")).expect("manifest")).unwrap();
    assert_eq!(manifest["model"]["engine"], "trees", "{manifest}");
    worker.stop().await;
}

// ------------------------------------------------------------------ random forests

/// xorshift64*: reproducible without a dependency (also the fuzz replay's mutator).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
    fn float(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// Values rows and thresholds share, so that rows land exactly on thresholds too.
const GRID: [f32; 7] = [-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0];

fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: v, ..Default::default() }
}

fn attr_floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Floats as i32),
        floats: v,
        ..Default::default()
    }
}

/// A tensor attribute: `[len]` doubles, or floats.
fn attr_tensor(name: &str, v: Vec<f64>, double: bool) -> AttributeProto {
    let mut t = TensorProto { dims: vec![v.len() as i64], ..Default::default() };
    if double {
        t.data_type = Some(DataType::Double as i32);
        t.double_data = v;
    } else {
        t.data_type = Some(DataType::Float as i32);
        t.float_data = v.into_iter().map(|x| x as f32).collect();
    }
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

/// A `[len]` uint8 tensor attribute, as raw bytes (how onnx writes one).
fn attr_u8_tensor(name: &str, v: Vec<u8>) -> AttributeProto {
    let t = TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Uint8 as i32),
        raw_data: Some(Bytes::from(v)),
        ..Default::default()
    };
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_strings(name: &str, v: Vec<String>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Strings as i32),
        strings: v.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    }
}

fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(Bytes::from(v.to_string())),
        ..Default::default()
    }
}

fn tensor_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: d.map(tensor_shape_proto::dimension::Value::DimValue),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// How leaf weights are laid out, as the exporters lay them out.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Every class at every leaf, weights ≥ 0 (random forests).
    AllClasses,
    /// One class per tree, signed weights (multiclass gradient boosting).
    ClassPerTree,
    /// Binary: class 0 only, signed weights (binary gradient boosting).
    BinaryClass0,
    /// Binary: class 1 only, weights in [0, 1] (binary random forests).
    BinaryClass1,
}

/// A random model graph, and what it is, for failure messages.
struct RandomModel {
    bytes: Vec<u8>,
    features: usize,
    double: bool,
    description: String,
}

/// What [`random_ensemble`] varies beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
struct Spec {
    classifier: bool,
    /// Every node mode, not only `BRANCH_LEQ`.
    mixed_modes: bool,
    /// Thresholds, weights and base values as `*_as_tensor` attributes (double tensors on
    /// double input, with thresholds off the float32 grid; float tensors on float input).
    as_tensor: bool,
    /// Every post-transform, `PROBIT` included, on regressors too.
    every_post: bool,
    /// 60 to 79 classes or targets (more than the 64 one mask word holds).
    wide: bool,
}

/// A random tree ensemble graph `X [N, F] → (label, scores)` or `X → values`.
fn random_forest(rng: &mut Rng, classifier: bool, mixed_modes: bool) -> RandomModel {
    random_ensemble(rng, Spec { classifier, mixed_modes, ..Spec::default() })
}

fn random_ensemble(rng: &mut Rng, spec: Spec) -> RandomModel {
    let Spec { classifier, mixed_modes, as_tensor, every_post, wide } = spec;
    let features = 1 + rng.below(8);
    let trees = 1 + rng.below(12);
    let max_depth = 1 + rng.below(7);
    let modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"];
    let (width, layout) = if wide {
        (60 + rng.below(20), if classifier && rng.chance(0.5) { Layout::ClassPerTree } else { Layout::AllClasses })
    } else if classifier {
        match rng.below(4) {
            0 => (2 + rng.below(4), Layout::AllClasses),
            1 => (3 + rng.below(3), Layout::ClassPerTree),
            2 => (2, Layout::BinaryClass0),
            _ => (2, Layout::BinaryClass1),
        }
    } else {
        (1 + rng.below(3), Layout::AllClasses)
    };
    // Double input (decided first: as_tensor attributes take the input's type).
    let double = rng.chance(if as_tensor { 0.6 } else { 0.25 });
    // Thresholds just off the float32 grid, which only a double comparison tells apart.
    let nudge = |rng: &mut Rng| if as_tensor && double { [0.0, 1e-9, -1e-9][rng.below(3)] } else { 0.0 };
    // Half the forests send no missing value the true way (scikit-learn's), half some.
    let tracks = if rng.chance(0.5) { 0.0 } else { 0.3 };
    let mut n = NodeLists::default();
    for t in 0..trees {
        // Depth-first construction with node ids in creation order.
        let mut next_id = 0i64;
        let mut stack = vec![(0usize, next_id)];
        next_id += 1;
        while let Some((depth, id)) = stack.pop() {
            let split = depth < max_depth && (depth == 0 || rng.chance(0.75));
            n.tree.push(t as i64);
            n.id.push(id);
            if split {
                let (yes, no) = (next_id, next_id + 1);
                next_id += 2;
                n.feature.push(rng.below(features) as i64);
                let v = if rng.chance(0.5) { GRID[rng.below(GRID.len())] } else { rng.float(-2.0, 3.0) };
                n.value.push(f64::from(v) + nudge(rng));
                n.mode.push(if mixed_modes { modes[rng.below(modes.len())] } else { "BRANCH_LEQ" }.to_string());
                n.yes.push(yes);
                n.no.push(no);
                n.missing.push(i64::from(rng.chance(tracks)));
                stack.push((depth + 1, no));
                stack.push((depth + 1, yes));
            } else {
                n.feature.push(0);
                n.value.push(0.0);
                n.mode.push("LEAF".into());
                n.yes.push(0);
                n.no.push(0);
                n.missing.push(0);
                let targets: Vec<usize> = match layout {
                    Layout::AllClasses => (0..width).collect(),
                    Layout::ClassPerTree => vec![t % width],
                    Layout::BinaryClass0 => vec![0],
                    Layout::BinaryClass1 => vec![1],
                };
                for class in targets {
                    let w = match layout {
                        Layout::AllClasses if classifier => rng.float(0.0, 1.0) / trees as f32,
                        Layout::BinaryClass1 => rng.float(0.0, 1.0) / trees as f32,
                        _ => rng.float(-1.5, 1.5),
                    };
                    n.w_tree.push(t as i64);
                    n.w_node.push(id);
                    n.w_id.push(class as i64);
                    n.w_value.push(f64::from(w) + nudge(rng));
                }
            }
        }
    }
    // A float list, or its `_as_tensor` form in the input's type.
    let values = |name: &str, v: Vec<f64>| {
        if as_tensor {
            attr_tensor(&format!("{name}_as_tensor"), v, double)
        } else {
            attr_floats(name, v.into_iter().map(|x| x as f32).collect())
        }
    };
    let mut attrs = vec![
        attr_ints("nodes_treeids", n.tree),
        attr_ints("nodes_nodeids", n.id.clone()),
        attr_ints("nodes_featureids", n.feature),
        values("nodes_values", n.value),
        attr_strings("nodes_modes", n.mode),
        attr_ints("nodes_truenodeids", n.yes),
        attr_ints("nodes_falsenodeids", n.no),
        attr_ints("nodes_missing_value_tracks_true", n.missing),
    ];
    let base_len = match layout {
        Layout::BinaryClass0 | Layout::BinaryClass1 => rng.below(3),
        _ if rng.chance(0.5) => width,
        _ => 0,
    };
    if base_len > 0 {
        attrs.push(values("base_values", (0..base_len).map(|_| f64::from(rng.float(-1.0, 1.0))).collect()));
    }
    let posts = ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"];
    let mut post = if every_post { posts[rng.below(5)] } else { "NONE" };
    let string_labels = classifier && rng.chance(0.3);
    let (op, outputs) = if classifier {
        if !every_post {
            post = posts[rng.below(4)];
        } else if post == "PROBIT" && width == 2 && base_len != 2 {
            // ONNX Runtime leaves a one-score row's second column unwritten then (the
            // native engine refuses it: tested below).
            post = "NONE";
        }
        let prefix = if string_labels { "w" } else { "" };
        if string_labels {
            attrs.push(attr_strings("classlabels_strings", (0..width).map(|i| format!("{prefix}{i}")).collect()));
        } else {
            // Labels that are not 0..n: the engine must not confuse them with indices.
            attrs.push(attr_ints("classlabels_int64s", (0..width as i64).map(|i| i * 3 + 5).collect()));
        }
        attrs.push(attr_ints("class_treeids", n.w_tree));
        attrs.push(attr_ints("class_nodeids", n.w_node));
        attrs.push(attr_ints("class_ids", n.w_id));
        attrs.push(values("class_weights", n.w_value));
        let label = tensor_info("label", if string_labels { DataType::String } else { DataType::Int64 }, &[None]);
        ("TreeEnsembleClassifier", vec![label, tensor_info("scores", DataType::Float, &[None, Some(width as i64)])])
    } else {
        attrs.push(AttributeProto {
            name: Some("n_targets".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(width as i64),
            ..Default::default()
        });
        let aggregate = ["SUM", "AVERAGE", "MIN", "MAX"][rng.below(4)];
        attrs.push(attr_string("aggregate_function", aggregate));
        attrs.push(attr_ints("target_treeids", n.w_tree));
        attrs.push(attr_ints("target_nodeids", n.w_node));
        attrs.push(attr_ints("target_ids", n.w_id));
        attrs.push(values("target_weights", n.w_value));
        ("TreeEnsembleRegressor", vec![tensor_info("scores", DataType::Float, &[None, Some(width as i64)])])
    };
    attrs.push(attr_string("post_transform", post));
    let node = NodeProto {
        input: vec!["X".into()],
        output: outputs.iter().map(|o| o.name.clone().unwrap_or_default()).collect(),
        op_type: Some(op.into()),
        domain: Some("ai.onnx.ml".into()),
        attribute: attrs,
        ..Default::default()
    };
    // Now and then a Normalizer on the scores.
    let mut nodes = vec![node];
    let mut outputs = outputs;
    let norm = if rng.chance(0.2) { ["MAX", "L1", "L2"][rng.below(3)] } else { "" };
    if !norm.is_empty() {
        let scores = outputs.last_mut().expect("a scores output");
        nodes.push(NodeProto {
            input: vec!["scores".into()],
            output: vec!["normalized".into()],
            op_type: Some("Normalizer".into()),
            domain: Some("ai.onnx.ml".into()),
            attribute: vec![attr_string("norm", norm)],
            ..Default::default()
        });
        scores.name = Some("normalized".into());
    }
    let description = format!(
        "double {double}, {op} {layout:?} classes/targets {width}, {trees} trees ≤ depth {max_depth}, {features} features, \
         base {base_len}, post {post}, string labels {string_labels}, mixed modes {mixed_modes}, missing {tracks}, \
         normalizer {norm:?}, as_tensor {as_tensor}"
    );
    RandomModel { bytes: model_bytes(nodes, features, double, outputs), features, double, description }
}

/// The model `X [N, features] → nodes → outputs`, encoded.
fn model_bytes(nodes: Vec<NodeProto>, features: usize, double: bool, outputs: Vec<ValueInfoProto>) -> Vec<u8> {
    model_bytes_opset(nodes, features, double, outputs, 3)
}

/// The same with `ai.onnx.ml` at `ml` (5: `TreeEnsemble`, which wants IR version 10).
fn model_bytes_opset(
    nodes: Vec<NodeProto>,
    features: usize,
    double: bool,
    outputs: Vec<ValueInfoProto>,
    ml: i64,
) -> Vec<u8> {
    let model = ModelProto {
        ir_version: Some(if ml >= 5 { 10 } else { 8 }),
        opset_import: vec![
            OperatorSetIdProto { domain: Some(String::new()), version: Some(if ml >= 5 { 21 } else { 17 }) },
            OperatorSetIdProto { domain: Some("ai.onnx.ml".into()), version: Some(ml) },
        ],
        graph: Some(GraphProto {
            name: Some("random".into()),
            node: nodes,
            input: vec![tensor_info(
                "X",
                if double { DataType::Double } else { DataType::Float },
                &[None, Some(features as i64)],
            )],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// An opset-5 `TreeEnsemble`'s lists, built tree by tree.
#[derive(Default)]
struct V5Lists {
    feature: Vec<i64>,
    mode: Vec<u8>,
    split: Vec<f64>,
    yes: Vec<i64>,
    yes_leaf: Vec<i64>,
    no: Vec<i64>,
    no_leaf: Vec<i64>,
    missing: Vec<i64>,
    members: Vec<f64>,
    leaf_target: Vec<i64>,
    leaf_weight: Vec<f64>,
}

impl V5Lists {
    fn leaf(&mut self, rng: &mut Rng, targets: usize) -> i64 {
        self.leaf_target.push(rng.below(targets) as i64);
        self.leaf_weight.push(f64::from(rng.float(-1.5, 1.5)));
        self.leaf_target.len() as i64 - 1
    }

    /// A random subtree of at most `depth` more levels; its node index.
    fn node(&mut self, rng: &mut Rng, depth: usize, features: usize, targets: usize, tracks: bool) -> i64 {
        let i = self.feature.len();
        self.feature.push(rng.below(features) as i64);
        // Every mode, BRANCH_MEMBER (6) included; mostly BRANCH_LEQ.
        let mode = if rng.chance(0.6) { rng.below(7) as u8 } else { 0 };
        self.mode.push(mode);
        self.split.push(f64::from(if rng.chance(0.5) { GRID[rng.below(GRID.len())] } else { rng.float(-2.0, 3.0) }));
        self.missing.push(i64::from(tracks && rng.chance(0.4)));
        // Branches filled in below, once the subtrees have their indices.
        self.yes.push(0);
        self.yes_leaf.push(0);
        self.no.push(0);
        self.no_leaf.push(0);
        if mode == 6 {
            // 1 to 5 members in 0..=30 (ONNX Runtime's small sets), now and then one that is
            // not an integer; NaN ends the node's list.
            let mut set: Vec<f64> = Vec::new();
            while set.len() < 1 + rng.below(5) {
                let m = rng.below(31) as f64;
                if !set.contains(&m) {
                    set.push(m);
                }
            }
            if rng.chance(0.15) {
                set.push(2.5);
            }
            self.members.extend(set);
            self.members.push(f64::NAN);
        }
        for side in [true, false] {
            let (child, is_leaf) = if depth > 1 && rng.chance(0.7) {
                (self.node(rng, depth - 1, features, targets, tracks), 0)
            } else {
                (self.leaf(rng, targets), 1)
            };
            if side {
                (self.yes[i], self.yes_leaf[i]) = (child, is_leaf);
            } else {
                (self.no[i], self.no_leaf[i]) = (child, is_leaf);
            }
        }
        i as i64
    }
}

/// A random opset-5 `TreeEnsemble` graph `X [N, F] float → Y [N, targets]`: every node mode
/// (set membership too), missing-value tracking, trees that are one leaf, every aggregate
/// function and post-transform (in ONNX Runtime's numbering); `wide`: 60 to 79 targets.
fn random_tree_ensemble(rng: &mut Rng, wide: bool) -> RandomModel {
    random_tree_ensemble_typed(rng, wide, false)
}

/// The same, on double input when `double` (double tensors, double scores).
fn random_tree_ensemble_typed(rng: &mut Rng, wide: bool, double: bool) -> RandomModel {
    let features = 1 + rng.below(6);
    let trees = 1 + rng.below(10);
    let max_depth = 1 + rng.below(6);
    let targets = if wide { 60 + rng.below(20) } else { 1 + rng.below(3) };
    let tracks = rng.chance(0.5);
    let mut l = V5Lists::default();
    let mut roots = Vec::new();
    for _ in 0..trees {
        if rng.chance(0.1) {
            // One leaf: a split whose two branches are that leaf.
            let leaf = l.leaf(rng, targets);
            roots.push(l.feature.len() as i64);
            l.feature.push(0);
            l.mode.push(0);
            l.split.push(0.0);
            l.missing.push(0);
            l.yes.push(leaf);
            l.yes_leaf.push(1);
            l.no.push(leaf);
            l.no_leaf.push(1);
        } else {
            roots.push(l.node(rng, max_depth, features, targets, tracks));
        }
    }
    let (post, aggregate) = (rng.below(5) as i64, rng.below(4) as i64);
    let members = l.members.len();
    let mut attrs = vec![
        attr_int("n_targets", targets as i64),
        attr_ints("tree_roots", roots),
        attr_ints("nodes_featureids", l.feature),
        attr_u8_tensor("nodes_modes", l.mode),
        attr_tensor("nodes_splits", l.split, double),
        attr_ints("nodes_truenodeids", l.yes),
        attr_ints("nodes_trueleafs", l.yes_leaf),
        attr_ints("nodes_falsenodeids", l.no),
        attr_ints("nodes_falseleafs", l.no_leaf),
        attr_ints("leaf_targetids", l.leaf_target),
        attr_tensor("leaf_weights", l.leaf_weight, double),
        attr_int("post_transform", post),
        attr_int("aggregate_function", aggregate),
    ];
    if tracks {
        attrs.push(attr_ints("nodes_missing_value_tracks_true", l.missing));
    }
    if members > 0 {
        attrs.push(attr_tensor("membership_values", l.members, double));
    }
    let node = NodeProto {
        input: vec!["X".into()],
        output: vec!["Y".into()],
        op_type: Some("TreeEnsemble".into()),
        domain: Some("ai.onnx.ml".into()),
        attribute: attrs,
        ..Default::default()
    };
    let elem = if double { DataType::Double } else { DataType::Float };
    let outputs = vec![tensor_info("Y", elem, &[None, Some(targets as i64)])];
    let description = format!(
        "TreeEnsemble, {targets} targets, {trees} trees ≤ depth {max_depth}, {features} features, post {post}, \
         aggregate {aggregate}, {members} membership values, missing {tracks}"
    );
    RandomModel { bytes: model_bytes_opset(vec![node], features, double, outputs, 5), features, double, description }
}

/// A random linear model graph: `X → LinearClassifier → (label, scores)`, the scores maybe
/// through a `Normalizer` and a `ZipMap`; or `X → LinearRegressor → values`.
fn random_linear(rng: &mut Rng, classifier: bool, max_features: usize) -> RandomModel {
    let features = 1 + rng.below(max_features);
    let mut attrs = Vec::new();
    let post = ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"][rng.below(4)];
    attrs.push(attr_string("post_transform", post));
    let mut nodes = Vec::new();
    let ml = |op: &str, input: &str, output: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
        input: vec![input.into()],
        output,
        op_type: Some(op.into()),
        domain: Some("ai.onnx.ml".into()),
        attribute,
        ..Default::default()
    };
    let string_labels = classifier && rng.chance(0.3);
    let norm = if classifier { ["", "MAX", "L1", "L2"][rng.below(4)] } else { "" };
    let (sums, labels, outputs, double, extra) = if classifier {
        // One score (the binary case, with two labels), or several.
        let sums = [1, 1, 2, 3, 5][rng.below(5)];
        let n_labels = sums.max(2);
        let labels: Vec<String> = (0..n_labels).map(|i| format!("w{i}")).collect();
        if string_labels {
            attrs.push(attr_strings("classlabels_strings", labels.clone()));
        } else {
            attrs.push(attr_ints("classlabels_ints", (0..n_labels as i64).map(|i| i * 3 + 5).collect()));
        }
        attrs.push(AttributeProto {
            name: Some("multi_class".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(rng.below(2) as i64),
            ..Default::default()
        });
        let width = if sums == 1 && n_labels == 2 { 2 } else { sums };
        let label_type = if string_labels { DataType::String } else { DataType::Int64 };
        let zipmap = n_labels == width && rng.chance(0.3);
        let mut scores = "raw".to_string();
        if !norm.is_empty() {
            nodes.push(ml("Normalizer", &scores, vec!["normalized".into()], vec![attr_string("norm", norm)]));
            scores = "normalized".into();
        }
        let scores_info = if zipmap {
            let key = if string_labels {
                attr_strings("classlabels_strings", labels.clone())
            } else {
                attr_ints("classlabels_int64s", (0..n_labels as i64).map(|i| i * 3 + 5).collect())
            };
            nodes.push(ml("ZipMap", &scores, vec!["zipped".into()], vec![key]));
            zipmap_info("zipped", label_type)
        } else {
            tensor_info(&scores, DataType::Float, &[None, Some(width as i64)])
        };
        let outputs = vec![tensor_info("label", label_type, &[None]), scores_info];
        let double = rng.chance(0.25);
        (sums, n_labels, outputs, double, format!("norm {norm:?}, zipmap {zipmap}"))
    } else {
        let targets = 1 + rng.below(4);
        attrs.push(AttributeProto {
            name: Some("targets".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(targets as i64),
            ..Default::default()
        });
        (targets, 0, vec![tensor_info("raw", DataType::Float, &[None, Some(targets as i64)])], false, String::new())
    };
    // ONNX Runtime's batched LOGISTIC is `p / q + 0.5`, exact only to about 3e-8 in the
    // tails; a Normalizer that divides by a sum of probabilities all near 0 magnifies that
    // last bit past any tolerance (ONNX Runtime's own answer is then off by as much). Under
    // that pair the margins stay within ±3.4 (probabilities ≥ 0.03), as a fitted model's do.
    let tame = post == "LOGISTIC" && !norm.is_empty();
    let (scale, bias) = if tame { (3.0 / (4.0 * features as f32), 0.4) } else { (2.0, 1.0) };
    attrs.push(attr_floats("coefficients", (0..sums * features).map(|_| rng.float(-scale, scale)).collect()));
    // A regressor's intercepts may be missing or not one per target (then unused).
    let intercepts = if classifier { sums } else { [sums, sums, 0, sums + 1][rng.below(4)] };
    attrs.push(attr_floats("intercepts", (0..intercepts).map(|_| rng.float(-bias, bias)).collect()));
    let op = if classifier { "LinearClassifier" } else { "LinearRegressor" };
    let node_outputs = if classifier { vec!["label".into(), "raw".into()] } else { vec!["raw".into()] };
    nodes.insert(0, ml(op, "X", node_outputs, attrs));
    let description = format!(
        "double {double}, {op} with {sums} sums, {labels} labels (strings {string_labels}), {features} features, \
         {intercepts} intercepts, post {post}, {extra}"
    );
    RandomModel { bytes: model_bytes(nodes, features, double, outputs), features, double, description }
}

/// A `seq(map(key, float))` output (ZipMap's).
fn zipmap_info(name: &str, key: DataType) -> ValueInfoProto {
    let float = TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(DataType::Float as i32),
            shape: None,
        })),
        denotation: None,
    };
    let map = TypeProto {
        value: Some(type_proto::Value::MapType(Box::new(type_proto::Map {
            key_type: Some(key as i32),
            value_type: Some(Box::new(float)),
        }))),
        denotation: None,
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::SequenceType(Box::new(type_proto::Sequence {
                elem_type: Some(Box::new(map)),
            }))),
            denotation: None,
        }),
        ..Default::default()
    }
}

#[derive(Default)]
struct NodeLists {
    tree: Vec<i64>,
    id: Vec<i64>,
    feature: Vec<i64>,
    value: Vec<f64>,
    mode: Vec<String>,
    yes: Vec<i64>,
    no: Vec<i64>,
    missing: Vec<i64>,
    w_tree: Vec<i64>,
    w_node: Vec<i64>,
    w_id: Vec<i64>,
    w_value: Vec<f64>,
}

fn random_rows(rng: &mut Rng, rows: usize, features: usize) -> Vec<f32> {
    (0..rows * features)
        .map(|_| match rng.below(10) {
            0 => f32::NAN,
            1..=3 => GRID[rng.below(GRID.len())],
            // Set members (and 31, just past them).
            4 => rng.below(32) as f32,
            _ => rng.float(-3.0, 4.0),
        })
        .collect()
}

/// Runs the model on `x`, as doubles nudged off the float32 grid when the input is double
/// (so that comparing in double precision matters).
fn run(model: &dyn LoadedModel, x: &[f32], rows: usize, features: usize, double: bool) -> Vec<OutputValue> {
    let data = if double {
        TensorData::Float64(x.iter().enumerate().map(|(i, v)| f64::from(*v) + [0.0, 1e-9, -1e-9][i % 3]).collect())
    } else {
        TensorData::Float32(x.to_vec())
    };
    let tensor = Tensor { shape: vec![rows, features], data };
    model.run(vec![("X".into(), tensor)]).expect("run")
}

fn assert_same(ours: &[OutputValue], theirs: &[OutputValue], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: outputs");
    for (a, b) in ours.iter().zip(theirs) {
        match (a, b) {
            (OutputValue::Tensor(a), OutputValue::Tensor(b)) => {
                assert_eq!(a.shape, b.shape, "{what}: shape");
                assert_same_data(&a.data, &b.data, what);
            }
            (
                OutputValue::SeqMap { keys, values, rows },
                OutputValue::SeqMap { keys: their_keys, values: their_values, rows: their_rows },
            ) => {
                assert_eq!((keys, rows), (their_keys, their_rows), "{what}: map keys and rows");
                assert_same_data(values, their_values, what);
            }
            (a, b) => panic!("{what}: ours {a:?}, onnxruntime {b:?}"),
        }
    }
}

/// Labels equal; scores within 1e-5 relative (1e-6 absolute near 0), NaN where theirs is, an
/// infinity where theirs is the same infinity.
fn assert_same_data(ours: &TensorData, theirs: &TensorData, what: &str) {
    match (ours, theirs) {
        (TensorData::Float32(x), TensorData::Float32(y)) => {
            assert_eq!(x.len(), y.len(), "{what}: scores");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                // NaN only where theirs is; an infinity only where theirs is the same one
                // (the relative bound alone would let any infinity pass).
                let ok = if p.is_nan() || q.is_nan() {
                    p.is_nan() && q.is_nan()
                } else if p.is_infinite() || q.is_infinite() {
                    p == q
                } else {
                    (p - q).abs() <= 1e-5 * p.abs().max(q.abs()) + 1e-6
                };
                assert!(ok, "{what}: score {i}: ours {p}, onnxruntime {q}");
            }
        }
        (x, y) => assert_eq!(x, y, "{what}: labels"),
    }
}

/// `cases` random models from `make`, each on random rows on both engines.
fn property(seed: u64, cases: usize, make: impl Fn(&mut Rng) -> RandomModel) {
    // Row counts around the block, lane and thread boundaries.
    property_on(seed, cases, &[1, 9, 300, 5000], make)
}

fn property_on(seed: u64, cases: usize, row_counts: &[usize], make: impl Fn(&mut Rng) -> RandomModel) {
    let Some(ort) = ort() else { return };
    let native = TreesEngine::new(None, 2);
    let mut rng = Rng(seed);
    for case in 0..cases {
        let model = make(&mut rng);
        let what = format!("case {case}: {}", model.description);
        let ours = native.load(Bytes::from(model.bytes.clone())).unwrap_or_else(|e| panic!("{what}: {e}"));
        let theirs = ort.load(Bytes::from(model.bytes)).unwrap_or_else(|e| panic!("{what}: {e}"));
        for &rows in row_counts {
            let x = random_rows(&mut rng, rows, model.features);
            let theirs = run(theirs.as_ref(), &x, rows, model.features, model.double);
            assert_same(
                &run(ours.as_ref(), &x, rows, model.features, model.double),
                &theirs,
                &format!("{what}, {rows} rows"),
            );
            if ours.takes_columns() && !model.double {
                // The same rows as the worker hands them over: one slice per feature column.
                let columns: Vec<Vec<f32>> =
                    (0..model.features).map(|f| x.iter().skip(f).step_by(model.features).copied().collect()).collect();
                let columns: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
                let ours = ours.run_columns(&columns, rows).expect("run_columns");
                assert_same(&ours, &theirs, &format!("{what}, {rows} rows as columns"));
            }
        }
    }
}

#[test]
fn random_classifiers_score_like_onnxruntime() {
    property(0x5eed_0001, 150, |rng| random_forest(rng, true, false));
}

#[test]
fn random_classifiers_with_every_node_mode_score_like_onnxruntime() {
    property(0x5eed_0002, 100, |rng| random_forest(rng, true, true));
}

#[test]
fn random_regressors_score_like_onnxruntime() {
    property(0x5eed_0003, 100, |rng| random_forest(rng, false, false));
    property(0x5eed_0004, 100, |rng| random_forest(rng, false, true));
}

#[test]
fn random_ensembles_with_double_tensors_and_every_post_transform_score_like_onnxruntime() {
    // `*_as_tensor` thresholds, weights and base values (double on double input).
    property(0x5eed_0009, 120, |rng| {
        let (classifier, mixed_modes) = (rng.chance(0.6), rng.chance(0.5));
        random_ensemble(rng, Spec { classifier, mixed_modes, as_tensor: true, every_post: true, wide: false })
    });
    // PROBIT, and the post-transforms of regressors (ONNX Runtime applies only PROBIT to
    // one target, all of them to several).
    property(0x5eed_000a, 120, |rng| {
        let (classifier, mixed_modes) = (rng.chance(0.5), rng.chance(0.5));
        random_ensemble(rng, Spec { classifier, mixed_modes, as_tensor: false, every_post: true, wide: false })
    });
}

#[test]
fn random_ensembles_with_more_than_64_classes_or_targets_score_like_onnxruntime() {
    property_on(0x5eed_000b, 40, &[1, 9, 300, 2100], |rng| {
        let (classifier, mixed_modes, as_tensor) = (rng.chance(0.6), rng.chance(0.5), rng.chance(0.3));
        random_ensemble(rng, Spec { classifier, mixed_modes, as_tensor, every_post: true, wide: true })
    });
}

#[test]
fn random_opset5_tree_ensembles_score_like_onnxruntime() {
    property(0x5eed_000c, 150, |rng| random_tree_ensemble(rng, false));
    property_on(0x5eed_000d, 15, &[1, 300], |rng| random_tree_ensemble(rng, true));
}

#[test]
fn linear_models_take_columns_and_tree_ensembles_rows() {
    let native = TreesEngine::new(None, 1);
    let mut rng = Rng(5);
    let linear = native.load(Bytes::from(random_linear(&mut rng, true, 12).bytes)).expect("linear");
    let forest = native.load(Bytes::from(random_forest(&mut rng, true, false).bytes)).expect("forest");
    assert!(linear.takes_columns() && !forest.takes_columns());
    // Columns of the wrong count or length are refused, not read past.
    let err = linear.run_columns(&[&[0.0; 3]], 4).expect_err("short columns");
    assert!(err.to_string().contains("columns are not"), "{err}");
    assert!(forest.run_columns(&[&[0.0; 3]], 3).is_err());
}

#[test]
fn random_linear_models_score_like_onnxruntime() {
    property(0x5eed_0005, 200, |rng| random_linear(rng, true, 12));
    property(0x5eed_0006, 100, |rng| random_linear(rng, false, 12));
    // Wide models: long sums, which ONNX Runtime's GEMM may split into blocks.
    property_on(0x5eed_0008, 10, &[1, 300], |rng| {
        let classifier = rng.chance(0.7);
        random_linear(rng, classifier, 400)
    });
    // Enough rows for the linear engine to split them across its two threads.
    property_on(0x5eed_0007, 20, &[40_001], |rng| {
        let classifier = rng.chance(0.7);
        random_linear(rng, classifier, 12)
    });
}

#[test]
fn linear_models_onnxruntime_would_misread_are_refused() {
    let native = TreesEngine::new(None, 1);
    let mut rng = Rng(11);
    let model = random_linear(&mut rng, true, 12);
    let original = ModelProto::decode(model.bytes.as_slice()).expect("decode");
    type Breakage = Box<dyn Fn(&mut Vec<AttributeProto>)>;
    let set = |name: &'static str, value: AttributeProto| -> Breakage {
        Box::new(move |a: &mut Vec<AttributeProto>| {
            a.retain(|x| x.name() != name);
            a.push(value.clone());
        })
    };
    let cases: Vec<(&str, Breakage)> = vec![
        // One coefficient short: ONNX Runtime would read past the end.
        (
            "coefficients for",
            Box::new(|a: &mut Vec<AttributeProto>| {
                if let Some(c) = a.iter_mut().find(|x| x.name() == "coefficients") {
                    c.floats.pop();
                }
            }),
        ),
        ("post_transform PROBIT", set("post_transform", attr_string("post_transform", "PROBIT"))),
        ("class labels for", set("intercepts", attr_floats("intercepts", vec![0.5; 7]))),
        ("not covered", set("nodes_treeids", attr_ints("nodes_treeids", vec![0]))),
    ];
    for (want, break_it) in cases {
        let mut model = original.clone();
        let graph = model.graph.as_mut().expect("graph");
        break_it(&mut graph.node[0].attribute);
        let err = native.load(Bytes::from(model.encode_to_vec())).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }

    // Whole graphs: absurd sizes (a few bytes of model asking for a huge batch of scores, or
    // for a huge block to transpose rows into), a regressor on double input (ONNX Runtime's
    // takes float only), an output in a cycle.
    let regressor = random_linear(&mut rng, false, 12);
    let regressor_proto = ModelProto::decode(regressor.bytes.as_slice()).expect("decode");
    type GraphBreakage = Box<dyn Fn(&mut GraphProto)>;
    let graph_cases: Vec<(&str, &ModelProto, GraphBreakage)> = vec![
        (
            "targets 1099511627776",
            &regressor_proto,
            Box::new(|g: &mut GraphProto| {
                let targets = g.node[0].attribute.iter_mut().find(|a| a.name() == "targets").expect("targets");
                targets.i = Some(1 << 40);
            }),
        ),
        (
            "5000 classes",
            &original,
            Box::new(|g: &mut GraphProto| {
                let intercepts = g.node[0].attribute.iter_mut().find(|a| a.name() == "intercepts").expect("intercepts");
                intercepts.floats = vec![0.0; 5000];
            }),
        ),
        (
            "70000 features",
            &original,
            Box::new(|g: &mut GraphProto| g.input[0] = tensor_info("X", DataType::Float, &[None, Some(70_000)])),
        ),
        (
            "double input",
            &regressor_proto,
            Box::new(move |g: &mut GraphProto| {
                g.input[0] = tensor_info("X", DataType::Double, &[None, Some(regressor.features as i64)])
            }),
        ),
        (
            "cycle",
            &original,
            Box::new(|g: &mut GraphProto| {
                let identity = |from: &str, to: &str| NodeProto {
                    input: vec![from.into()],
                    output: vec![to.into()],
                    op_type: Some("Identity".into()),
                    ..Default::default()
                };
                g.node.push(identity("b", "a"));
                g.node.push(identity("a", "b"));
                g.output.push(tensor_info("a", DataType::Float, &[None]));
            }),
        ),
    ];
    for (want, model, break_it) in graph_cases {
        let mut model = model.clone();
        break_it(model.graph.as_mut().expect("graph"));
        let err = native.load(Bytes::from(model.encode_to_vec())).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn hostile_graphs_are_refused_not_run() {
    let native = TreesEngine::new(None, 1);
    let mut rng = Rng(7);
    // On float input (a double tensor is then the wrong type).
    let forest = loop {
        let forest = random_forest(&mut rng, true, false);
        if !forest.double {
            break forest;
        }
    };
    let mut model = ModelProto::decode(forest.bytes.as_slice()).expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    let attrs = &mut graph.node[0].attribute;
    // A node pointing at itself, a feature past the input, an unknown attribute.
    type Breakage = Box<dyn Fn(&mut Vec<AttributeProto>)>;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "a cycle",
            Box::new(|a: &mut Vec<AttributeProto>| {
                if let Some(t) = a.iter_mut().find(|x| x.name() == "nodes_truenodeids") {
                    t.ints[0] = 0;
                }
            }),
        ),
        (
            "feature",
            Box::new(|a: &mut Vec<AttributeProto>| {
                if let Some(t) = a.iter_mut().find(|x| x.name() == "nodes_featureids") {
                    t.ints[0] = 1 << 40;
                }
            }),
        ),
        ("not covered", Box::new(|a: &mut Vec<AttributeProto>| a.push(attr_ints("nodes_categories", vec![1])))),
        // A double tensor on float input: ONNX Runtime refuses it too.
        (
            "holds double",
            Box::new(|a: &mut Vec<AttributeProto>| {
                let values = a.iter().position(|x| x.name() == "nodes_values").expect("nodes_values");
                let v: Vec<f64> = a.remove(values).floats.iter().map(|v| f64::from(*v)).collect();
                a.push(attr_tensor("nodes_values_as_tensor", v, true));
            }),
        ),
        (
            "both nodes_values and nodes_values_as_tensor",
            Box::new(|a: &mut Vec<AttributeProto>| {
                let v: Vec<f64> = a
                    .iter()
                    .find(|x| x.name() == "nodes_values")
                    .expect("values")
                    .floats
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect();
                a.push(attr_tensor("nodes_values_as_tensor", v, false));
            }),
        ),
        (
            "classes",
            Box::new(|a: &mut Vec<AttributeProto>| {
                a.retain(|x| x.name() != "classlabels_int64s" && x.name() != "classlabels_strings");
                a.push(attr_ints("classlabels_int64s", (0..5000).collect()));
            }),
        ),
    ];
    let original = attrs.clone();
    for (want, break_it) in cases {
        let graph = model.graph.as_mut().expect("graph");
        graph.node[0].attribute = original.clone();
        break_it(&mut graph.node[0].attribute);
        let err = native.load(Bytes::from(model.encode_to_vec())).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn tree_ensembles_onnxruntime_would_misread_are_refused_and_run_there() {
    let native = TreesEngine::new(None, 1);
    let fallback = TreesEngine::new(ort(), 1);
    let mut rng = Rng(13);
    // Opset 5, broken in the ways a hostile or careless writer would.
    let v5 = loop {
        let m = random_tree_ensemble(&mut rng, false);
        let proto = ModelProto::decode(m.bytes.as_slice()).expect("decode");
        let modes = &proto.graph.as_ref().expect("graph").node[0].attribute;
        let splits = modes.iter().find(|a| a.name() == "nodes_featureids").map_or(0, |a| a.ints.len());
        if splits >= 3 {
            break proto;
        }
    };
    type Breakage = Box<dyn Fn(&mut Vec<AttributeProto>)>;
    let ints = |name: &'static str, f: fn(&mut Vec<i64>)| -> Breakage {
        Box::new(move |a: &mut Vec<AttributeProto>| {
            if let Some(x) = a.iter_mut().find(|x| x.name() == name) {
                f(&mut x.ints)
            }
        })
    };
    let set = |name: &'static str, value: AttributeProto| -> Breakage {
        Box::new(move |a: &mut Vec<AttributeProto>| {
            a.retain(|x| x.name() != name);
            a.push(value.clone());
        })
    };
    let n = v5.graph.as_ref().expect("graph").node[0]
        .attribute
        .iter()
        .find(|a| a.name() == "nodes_featureids")
        .map_or(0, |a| a.ints.len());
    let cases: Vec<(&str, Breakage)> = vec![
        // Node 0 (the first root) branching to itself: ONNX Runtime's rewrite would not end.
        (
            "node 0 is reached twice",
            Box::new(|a: &mut Vec<AttributeProto>| {
                for name in ["nodes_truenodeids", "nodes_trueleafs"] {
                    if let Some(x) = a.iter_mut().find(|x| x.name() == name) {
                        x.ints[0] = 0;
                    }
                }
            }),
        ),
        ("a tree root at node", ints("tree_roots", |v| v[0] = 1 << 40)),
        (
            "a leaf 1048576 of",
            Box::new(|a: &mut Vec<AttributeProto>| {
                for (name, v) in [("nodes_truenodeids", 1 << 20), ("nodes_trueleafs", 1)] {
                    if let Some(x) = a.iter_mut().find(|x| x.name() == name) {
                        x.ints[0] = v;
                    }
                }
            }),
        ),
        ("node mode 9", set("nodes_modes", attr_u8_tensor("nodes_modes", vec![9; n]))),
        ("nodes_modes has", set("nodes_modes", attr_u8_tensor("nodes_modes", vec![0]))),
        ("holds double", set("leaf_weights", attr_tensor("leaf_weights", vec![0.5; 3], true))),
        ("post_transform 7", set("post_transform", attr_int("post_transform", 7))),
        ("n_targets 1099511627776", set("n_targets", attr_int("n_targets", 1 << 40))),
        ("for target", ints("leaf_targetids", |v| v[0] = 1 << 20)),
    ];
    for (want, break_it) in cases {
        let mut model = v5.clone();
        break_it(&mut model.graph.as_mut().expect("graph").node[0].attribute);
        let err = native.load(Bytes::from(model.encode_to_vec())).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }

    // Well formed, but what ONNX Runtime does there is not covered: a set outside 0..=30
    // (tested by casting the feature to an integer), a TreeEnsemble on double input (double
    // scores), PROBIT on a binary classifier whose rows can have one score (the second
    // column left unwritten), one base value on two classes that both have weights (the
    // same). They load on ONNX Runtime.
    let mut big_set = v5.clone();
    {
        let a = &mut big_set.graph.as_mut().expect("graph").node[0].attribute;
        let n = a.iter().find(|x| x.name() == "nodes_featureids").map_or(0, |x| x.ints.len());
        let mut modes = vec![0u8; n];
        modes[0] = 6;
        a.retain(|x| x.name() != "nodes_modes" && x.name() != "membership_values");
        a.push(attr_u8_tensor("nodes_modes", modes));
        a.push(attr_tensor("membership_values", vec![1.0, 40.0, f64::NAN], false));
    }
    let double =
        ModelProto::decode(random_tree_ensemble_typed(&mut rng, false, true).bytes.as_slice()).expect("decode");
    let probit = loop {
        let m = random_ensemble(&mut rng, Spec { classifier: true, ..Spec::default() });
        let mut proto = ModelProto::decode(m.bytes.as_slice()).expect("decode");
        let a = &mut proto.graph.as_mut().expect("graph").node[0].attribute;
        let classes = a
            .iter()
            .find(|x| x.name() == "class_ids")
            .map(|x| x.ints.iter().collect::<std::collections::BTreeSet<_>>().len());
        let two = a.iter().any(|x| x.name() == "classlabels_int64s" && x.ints.len() == 2);
        if two && classes == Some(1) && !a.iter().any(|x| x.name() == "base_values" && x.floats.len() == 2) {
            a.retain(|x| x.name() != "post_transform");
            a.push(attr_string("post_transform", "PROBIT"));
            break proto;
        }
    };
    // Two classes with weights for both (not a binary case) and one base value: a row with no
    // class-1 weight has one score, and ONNX Runtime leaves the second column unwritten.
    let one_score = loop {
        let m = random_ensemble(&mut rng, Spec { classifier: true, ..Spec::default() });
        let mut proto = ModelProto::decode(m.bytes.as_slice()).expect("decode");
        let a = &mut proto.graph.as_mut().expect("graph").node[0].attribute;
        let class_0_only = a.iter().any(|x| x.name() == "class_ids" && x.ints.iter().all(|c| *c == 0));
        let two = a.iter().any(|x| x.name() == "classlabels_int64s" && x.ints.len() == 2);
        if two && class_0_only {
            // Tree 0's first leaf weighs class 1 instead; its other leaves, and every other
            // tree's, have class 0 only.
            if let Some(x) = a.iter_mut().find(|x| x.name() == "class_ids") {
                x.ints[0] = 1;
            }
            a.retain(|x| x.name() != "base_values");
            a.push(attr_floats("base_values", vec![0.25]));
            break proto;
        }
    };
    for (want, model) in [
        ("BRANCH_MEMBER split on 2 values", big_set),
        ("double scores", double),
        ("PROBIT on a binary classifier", probit),
        ("second score unwritten", one_score),
    ] {
        let bytes = Bytes::from(model.encode_to_vec());
        let err = native.load(bytes.clone()).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
        if ort().is_some() {
            let loaded = fallback.load(bytes).unwrap_or_else(|e| panic!("{want}: ONNX Runtime: {e}"));
            assert_eq!(loaded.engine(), "ort", "{want}");
        }
    }

    // Around the ensemble: a Mul by anything but one, a Cast of the scores.
    let mut rng = Rng(17);
    let forest = random_ensemble(&mut rng, Spec { classifier: true, ..Spec::default() });
    let proto = ModelProto::decode(forest.bytes.as_slice()).expect("decode");
    for (want, factor, cast_scores) in [("other than by one", 2.0f32, false), ("a Cast of the scores", 1.0, true)] {
        let mut model = proto.clone();
        let g = model.graph.as_mut().expect("graph");
        let scores = g.output[1].name().to_string();
        g.initializer.push(TensorProto {
            name: Some("factor".into()),
            dims: vec![1],
            data_type: Some(DataType::Float as i32),
            float_data: vec![factor],
            ..Default::default()
        });
        g.node.push(NodeProto {
            input: vec![scores.clone(), "factor".into()],
            output: vec!["scaled".into()],
            op_type: Some("Mul".into()),
            ..Default::default()
        });
        if cast_scores {
            g.node.push(NodeProto {
                input: vec!["scaled".into()],
                output: vec!["cast".into()],
                op_type: Some("Cast".into()),
                attribute: vec![attr_int("to", DataType::Int64 as i64)],
                ..Default::default()
            });
        }
        g.output[1] = tensor_info(if cast_scores { "cast" } else { "scaled" }, DataType::Float, &[None, None]);
        let err = native.load(Bytes::from(model.encode_to_vec())).err().expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}
