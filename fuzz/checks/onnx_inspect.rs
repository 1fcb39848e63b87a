//! The registry's ONNX inspector on arbitrary bytes: it must answer every upload with a
//! signature or an `InvalidModel` reason, never panic, and agree with itself.

use lakescore_registry::onnx::{inspect, DEFAULT_ALLOWED_OP_DOMAINS};
use lakescore_registry::RegistryError;

pub fn check(data: &[u8]) {
    let allowed: Vec<String> = DEFAULT_ALLOWED_OP_DOMAINS.iter().map(|d| d.to_string()).collect();
    match inspect(data, &allowed, 4 << 30) {
        Ok(signature) => {
            assert!(signature.ir_version > 0, "accepted without an ir_version");
            assert!(!signature.opset_imports.is_empty(), "accepted without opset imports");
            assert!(!signature.outputs.is_empty(), "accepted without outputs");
            // Deterministic: the same bytes give the same signature.
            assert_eq!(inspect(data, &allowed, 4 << 30).ok(), Some(signature.clone()));
            // What the registry stores must serialize.
            serde_json::to_vec(&signature).expect("signature serializes");
        }
        Err(RegistryError::InvalidModel(reason)) => assert!(!reason.is_empty()),
        Err(other) => panic!("inspect returned {other:?}, not InvalidModel"),
    }
}
