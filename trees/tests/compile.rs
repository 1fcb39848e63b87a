//! The compiler and evaluator without ONNX Runtime: the generated GBDT test models compile
//! (when `tests/models/generated` has them), and small hand-built graphs give the answers
//! ONNX Runtime 1.31 gave for them (`scorer/tests/trees.rs` checks the same against ONNX
//! Runtime itself, on random models).

use bytes::Bytes;
use lakescore_proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use lakescore_trees::NativeModel;
use prost::Message;

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(Bytes::from(v.to_string())),
        ..Default::default()
    }
}

fn strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Strings as i32),
        strings: v.iter().map(|s| Bytes::from(s.to_string())).collect(),
        ..Default::default()
    }
}

fn floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Floats as i32),
        floats: v.to_vec(),
        ..Default::default()
    }
}

fn tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

fn f32s(v: &[f32]) -> TensorProto {
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Float as i32),
        float_data: v.to_vec(),
        ..Default::default()
    }
}

fn info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
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

fn model(nodes: Vec<NodeProto>, outputs: Vec<ValueInfoProto>, initializer: Vec<TensorProto>, ml: i64) -> Vec<u8> {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![
            OperatorSetIdProto { domain: Some(String::new()), version: Some(21) },
            OperatorSetIdProto { domain: Some("ai.onnx.ml".into()), version: Some(ml) },
        ],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: vec![info("X", DataType::Float, &[None, Some(1)])],
            output: outputs,
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn ml(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        op_type: Some(op.into()),
        domain: Some(if op == "Mul" || op == "Cast" || op == "Identity" { "" } else { "ai.onnx.ml" }.into()),
        attribute,
        ..Default::default()
    }
}

/// One `BRANCH_MEMBER` split on {1, 3, 4}: 10 when the feature is a member, else 20.
fn member_stump(tracks: i64) -> Vec<u8> {
    let node = ml(
        "TreeEnsemble",
        &["X"],
        &["Y"],
        vec![
            int("n_targets", 1),
            ints("tree_roots", &[0]),
            ints("nodes_featureids", &[0]),
            tensor(
                "nodes_modes",
                TensorProto {
                    dims: vec![1],
                    data_type: Some(DataType::Uint8 as i32),
                    raw_data: Some(Bytes::from_static(&[6])),
                    ..Default::default()
                },
            ),
            tensor("nodes_splits", f32s(&[0.0])),
            ints("nodes_truenodeids", &[0]),
            ints("nodes_trueleafs", &[1]),
            ints("nodes_falsenodeids", &[1]),
            ints("nodes_falseleafs", &[1]),
            ints("nodes_missing_value_tracks_true", &[tracks]),
            tensor("membership_values", f32s(&[1.0, 3.0, 4.0, f32::NAN])),
            ints("leaf_targetids", &[0, 0]),
            tensor("leaf_weights", f32s(&[10.0, 20.0])),
        ],
    );
    model(vec![node], vec![info("Y", DataType::Float, &[None, Some(1)])], vec![], 5)
}

#[test]
fn set_membership_is_exact_as_onnxruntime_has_it() {
    let x = [1.0, 1.5, 2.0, 3.0, 3.000_000_2, 4.0, 40.0, -1.0, f32::NAN, f32::INFINITY, 31.0, 1e10, -0.0];
    let outside = [20.0, 20.0, 10.0, 20.0, 10.0, 20.0, 20.0];
    for (tracks, nan) in [(0, 20.0), (1, 10.0)] {
        let m = NativeModel::compile(&member_stump(tracks)).expect("compiles");
        let p = m.predict_f32(&x, x.len(), 1).expect("scores");
        let mut want = vec![10.0, 20.0, 20.0, 10.0, 20.0, 10.0];
        want.extend_from_slice(&outside[..2]);
        want.push(nan);
        want.extend_from_slice(&[20.0; 4]);
        assert_eq!(p.scores, want, "tracks {tracks}");
    }
}

/// A regressor stump: 0.3 at or below 0.5, -0.7 above.
fn regressor(targets: i64, post: &str) -> Vec<u8> {
    let (ids, nodes, trees, weights): (Vec<i64>, Vec<i64>, Vec<i64>, Vec<f32>) = if targets == 1 {
        (vec![0, 0], vec![1, 2], vec![0, 0], vec![0.3, -0.7])
    } else {
        (vec![0, 0, 1, 1], vec![1, 2, 1, 2], vec![0; 4], vec![0.3, -0.7, 0.1, 0.2])
    };
    let node = ml(
        "TreeEnsembleRegressor",
        &["X"],
        &["Y"],
        vec![
            ints("nodes_treeids", &[0, 0, 0]),
            ints("nodes_nodeids", &[0, 1, 2]),
            ints("nodes_featureids", &[0, 0, 0]),
            floats("nodes_values", &[0.5, 0.0, 0.0]),
            strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
            ints("nodes_truenodeids", &[1, 0, 0]),
            ints("nodes_falsenodeids", &[2, 0, 0]),
            int("n_targets", targets),
            ints("target_ids", &ids),
            ints("target_nodeids", &nodes),
            ints("target_treeids", &trees),
            floats("target_weights", &weights),
            string("post_transform", post),
        ],
    );
    model(vec![node], vec![info("Y", DataType::Float, &[None, Some(targets)])], vec![], 3)
}

#[test]
fn regressor_post_transforms_are_onnxruntimes() {
    let x = [0.0f32, 1.0];
    // One target: ONNX Runtime applies PROBIT only.
    for post in ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"] {
        let p = NativeModel::compile(&regressor(1, post)).expect(post).predict_f32(&x, 2, 1).expect("scores");
        assert_eq!(p.scores, [0.3, -0.7], "{post}");
    }
    let p = NativeModel::compile(&regressor(1, "PROBIT")).expect("probit").predict_f32(&x, 2, 1).expect("scores");
    assert_eq!(p.scores[0], -0.524_445_9);
    assert!(p.scores[1].is_nan());
    // Two targets: all of them (ONNX Runtime 1.31's values).
    let p = NativeModel::compile(&regressor(2, "LOGISTIC")).expect("logistic").predict_f32(&x, 2, 1).expect("scores");
    assert_eq!(p.scores, [0.574_442_5, 0.524_979_2, 0.331_812_26, 0.549_833_95]);
    let p = NativeModel::compile(&regressor(2, "PROBIT")).expect("probit").predict_f32(&x, 2, 1).expect("scores");
    assert_eq!((p.scores[0], p.scores[1]), (-0.524_445_9, -1.281_712_9));
}

/// A two-class stump: the weight of class `ids[0]` at or below 0.5, of class `ids[1]` above.
fn binary_stump(ids: [i64; 2], weights: [f32; 2], base: &[f32], post: &str) -> Vec<u8> {
    let mut attribute = vec![
        ints("nodes_treeids", &[0, 0, 0]),
        ints("nodes_nodeids", &[0, 1, 2]),
        ints("nodes_featureids", &[0, 0, 0]),
        floats("nodes_values", &[0.5, 0.0, 0.0]),
        strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
        ints("nodes_truenodeids", &[1, 0, 0]),
        ints("nodes_falsenodeids", &[2, 0, 0]),
        ints("class_ids", &ids),
        ints("class_nodeids", &[1, 2]),
        ints("class_treeids", &[0, 0]),
        floats("class_weights", &weights),
        ints("classlabels_int64s", &[0, 1]),
        string("post_transform", post),
    ];
    if !base.is_empty() {
        attribute.push(floats("base_values", base));
    }
    let node = ml("TreeEnsembleClassifier", &["X"], &["label", "scores"], attribute);
    model(
        vec![node],
        vec![info("label", DataType::Int64, &[None]), info("scores", DataType::Float, &[None, Some(2)])],
        vec![],
        3,
    )
}

#[test]
fn binary_classifiers_with_one_score_are_onnxruntimes() {
    let x = [0.0f32, 1.0];
    let run = |ids, weights, post| {
        let p = NativeModel::compile(&binary_stump(ids, weights, &[], post)).expect(post);
        p.predict_f32(&x, 2, 1).expect("scores")
    };
    // Class 0's weights only (one score per row), all positive: probabilities, the second
    // class above 0.5 (ONNX Runtime 1.31's values).
    let p = run([0, 0], [0.3, 0.8], "NONE");
    assert_eq!(
        (p.labels.as_slice(), p.scores.as_slice()),
        ([0, 1].as_slice(), [0.7, 0.3, 0.199_999_99, 0.8].as_slice())
    );
    // LOGISTIC makes them (σ(−v), σ(v)), all-positive weights or not.
    let p = run([0, 0], [0.3, 0.8], "LOGISTIC");
    assert_eq!(p.labels, [0, 1]);
    assert_eq!(p.scores, [0.425_557_5, 0.574_442_5, 0.310_025_5, 0.689_974_5]);
    let p = run([0, 0], [-0.4, 0.3], "LOGISTIC");
    assert_eq!(p.labels, [0, 1]);
    assert_eq!(p.scores, [0.598_687_65, 0.401_312_35, 0.425_557_5, 0.574_442_5]);
    // Weights for both classes and one base value: the row at or below 0.5 has no class-1
    // weight, and ONNX Runtime leaves its second score unwritten. Without the base value
    // both scores are written.
    let err = NativeModel::compile(&binary_stump([0, 1], [0.3, 0.8], &[0.1], "NONE")).expect_err("refused");
    assert!(err.to_string().contains("second score unwritten"), "{err}");
    NativeModel::compile(&binary_stump([0, 1], [0.3, 0.8], &[], "NONE")).expect("compiles");
    NativeModel::compile(&binary_stump([0, 1], [0.3, 0.8], &[0.1, 0.2], "NONE")).expect("compiles");
}

/// onnxmltools' LightGBM classifier graph: Identity nodes, the label cast to int64, the
/// probabilities multiplied by a constant one.
fn lightgbm_like(one: f32) -> Vec<u8> {
    let ensemble = ml(
        "TreeEnsembleClassifier",
        &["X"],
        &["label_tensor", "probability_tensor"],
        vec![
            ints("nodes_treeids", &[0, 0, 0]),
            ints("nodes_nodeids", &[0, 1, 2]),
            ints("nodes_featureids", &[0, 0, 0]),
            floats("nodes_values", &[0.5, 0.0, 0.0]),
            strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
            ints("nodes_truenodeids", &[1, 0, 0]),
            ints("nodes_falsenodeids", &[2, 0, 0]),
            ints("nodes_missing_value_tracks_true", &[1, 0, 0]),
            ints("class_ids", &[0, 0]),
            ints("class_nodeids", &[1, 2]),
            ints("class_treeids", &[0, 0]),
            floats("class_weights", &[-0.4, 0.3]),
            ints("classlabels_int64s", &[0, 1]),
            string("post_transform", "LOGISTIC"),
        ],
    );
    let nodes = vec![
        ensemble,
        ml("Identity", &["label_tensor"], &["lgbmlabel"], vec![]),
        ml("Identity", &["probability_tensor"], &["lgbmprobabilities"], vec![]),
        ml("Cast", &["lgbmlabel"], &["label"], vec![int("to", DataType::Int64 as i64)]),
        ml("Mul", &["lgbmprobabilities", "one"], &["probabilities"], vec![]),
    ];
    let one = TensorProto { name: Some("one".into()), ..f32s(&[one]) };
    let outputs =
        vec![info("label", DataType::Int64, &[None]), info("probabilities", DataType::Float, &[None, Some(2)])];
    model(nodes, outputs, vec![one], 1)
}

#[test]
fn lightgbm_classifier_graphs_compile_and_other_factors_do_not() {
    let m = NativeModel::compile(&lightgbm_like(1.0)).expect("compiles");
    let p = m.predict_f32(&[0.0, 1.0, f32::NAN], 3, 1).expect("scores");
    // Margins -0.4 and 0.3 (NaN goes the true way): the second class above 0.
    assert_eq!(p.labels, [0, 1, 0]);
    assert_eq!(p.scores[..2], [0.598_687_65, 0.401_312_35]);
    let err = NativeModel::compile(&lightgbm_like(2.0)).expect_err("refused");
    assert!(err.to_string().contains("other than by one"), "{err}");
}

#[test]
fn the_generated_gbdt_models_compile() {
    // scripts/test generates the models and sets both variables; `cargo test -p
    // lakescore-trees` alone runs the hand-built graphs and says what it left out.
    let dir = std::env::var_os("LAKESCORE_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/generated"));
    let strict = std::env::var_os("LAKESCORE_TEST_STRICT").is_some();
    let names =
        ["lgbm_binary", "lgbm_multi", "lgbm_reg", "xgb_binary", "xgb_multi", "xgb_reg", "hgb_binary", "hgb_reg"];
    for name in names {
        let Ok(bytes) = std::fs::read(dir.join(format!("{name}.onnx"))) else {
            assert!(!strict, "{name}.onnx is missing from {} (tests/models/generate.py)", dir.display());
            eprintln!("{name}: not generated (tests/models/generate.py), skipped");
            continue;
        };
        let m = NativeModel::compile(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.engine(), "trees", "{name}");
    }
}
