//! What each engine can run, probed once when a version is registered and recorded in its
//! `backends` (`ok`, or `unsupported: <why>`): the registry's view of the engines, from the
//! engines themselves.

use std::collections::BTreeMap;

#[cfg(feature = "tract")]
use lakescore_core::wire::Dim;
use lakescore_core::wire::Signature;

/// The version record's `backends`: `tract` and `trees`.
pub fn backends(bytes: &[u8], signature: &Signature) -> BTreeMap<String, String> {
    #[cfg(feature = "tract")]
    let tract = tract(bytes, signature);
    #[cfg(not(feature = "tract"))]
    let tract = {
        let _ = signature;
        "unsupported: this build has no tract engine".to_string()
    };
    BTreeMap::from([("tract".to_string(), tract), ("trees".to_string(), trees(bytes))])
}

/// Whether tract (the pure-Rust fallback engine) can run this model, as recorded in the
/// version's `backends`: `ok`, or `unsupported: <reason>`. Classic ML operators
/// (`ai.onnx.ml`: trees, linear classifiers, ZipMap, Scaler) are refused outright: tract
/// loads some of them but computes wrong results, and wrong predictions are worse than none.
#[cfg(feature = "tract")]
pub fn tract(bytes: &[u8], signature: &Signature) -> String {
    if signature.uses_ai_onnx_ml {
        return "unsupported: uses ai.onnx.ml operators, which tract does not run correctly".to_string();
    }
    // tract is not hardened against hostile graphs the way the inspector is: a panic in it
    // marks the model as not runnable on tract instead of failing the upload.
    match std::panic::catch_unwind(|| tract_load(bytes, signature)) {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("unsupported: {}", e.root_cause()),
        Err(_) => "unsupported: tract failed while loading the model".to_string(),
    }
}

/// Whether the native engine (tree ensembles, linear models) runs this model, as recorded in the version's
/// `backends`: `ok` (workers on `auto` run it there), or `unsupported: <reason>`.
pub fn trees(bytes: &[u8]) -> String {
    match lakescore_trees::NativeModel::compile(bytes) {
        Ok(_) => "ok".to_string(),
        Err(why) => format!("unsupported: {why}"),
    }
}

/// Loads and optimizes the model with tract, with the input types and shapes of the
/// signature (unnamed or symbolic dimensions become the batch symbol `N`).
#[cfg(feature = "tract")]
fn tract_load(bytes: &[u8], signature: &Signature) -> tract_onnx::prelude::TractResult<()> {
    use tract_onnx::prelude::*;
    let mut model = tract_onnx::onnx().model_for_read(&mut std::io::Cursor::new(bytes))?;
    let batch = model.sym("N");
    for (i, input) in signature.inputs.iter().enumerate() {
        let (Some(elem), Some(shape)) = (&input.elem_type, &input.shape) else { continue };
        let dt = match elem.as_str() {
            "float" => DatumType::F32,
            "double" => DatumType::F64,
            "int64" => DatumType::I64,
            "int32" => DatumType::I32,
            "bool" => DatumType::Bool,
            "string" => DatumType::String,
            _ => continue,
        };
        let dims: TVec<TDim> = shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_dim(),
                _ => batch.to_dim(),
            })
            .collect();
        model.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
    }
    model.into_optimized()?;
    Ok(())
}
