//! lakescore protobuf messages, generated at build time with prost (and pbjson for the
//! canonical proto3 JSON mapping) from `lakescore.proto`, compiled by `protox` so that no
//! `protoc` binary is needed. It depends on no other lakescore crate.

/// `lakescore.v1`: Flight command messages.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/lakescore.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/lakescore.v1.serde.rs"));
}

/// `lakescore.registry.v1`: the registry's gRPC service for scoring workers.
pub mod registry {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/lakescore.registry.v1.rs"));
}

/// The ONNX model format (`onnx-ml.proto` of the onnx 1.19 release, Apache-2.0), for
/// reading and rewriting ONNX models.
pub mod onnx {
    #![allow(clippy::all, missing_docs, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use v1::{
    BatchSettings, ColumnList, DescribeRequest, OutputAction, OutputLayout, OutputSpec, ScoreCommand, ScoreTicket,
};

/// The encoded `FileDescriptorSet` of `lakescore.proto` (for reflection / tooling).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lakescore_descriptor.bin"));

/// Error decoding a command from bytes.
#[derive(Debug)]
pub enum DecodeError {
    /// Protobuf bytes that do not decode.
    Protobuf(prost::DecodeError),
    /// JSON text that does not parse as the message's proto3 JSON form.
    Json(serde_json::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Protobuf(e) => write!(f, "invalid protobuf: {e}"),
            DecodeError::Json(e) => write!(f, "invalid JSON: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decode a message from protobuf bytes, or from its proto3 JSON form when the first
/// non-whitespace byte is `{`.
pub fn decode_message<M>(bytes: &[u8]) -> Result<M, DecodeError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(DecodeError::Json)
    } else {
        M::decode(bytes).map_err(DecodeError::Protobuf)
    }
}

impl ScoreCommand {
    /// Decode a score command from protobuf bytes or its proto3 JSON form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_message(bytes)
    }

    /// The canonical proto3 JSON form.
    pub fn to_json(&self) -> String {
        // Serializing a generated message cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn json_and_protobuf_round_trip() {
        let json = br#"{"model": "fraud@champion", "feature_columns": ["a", "b"],
            "columns": {"X": {"names": ["c"]}}, "fillNull": 0.5,
            "outputs": [{"name": "probabilities", "layout": "OUTPUT_LAYOUT_COLUMNS"}]}"#;
        let cmd = ScoreCommand::from_bytes(json).expect("json");
        assert_eq!(cmd.model, "fraud@champion");
        assert_eq!(cmd.feature_columns, vec!["a", "b"]);
        assert_eq!(cmd.columns["X"].names, vec!["c"]);
        assert_eq!(cmd.fill_null, Some(0.5));
        assert_eq!(cmd.outputs[0].layout(), OutputLayout::Columns);
        let bytes = cmd.encode_to_vec();
        assert_eq!(ScoreCommand::from_bytes(&bytes).expect("pb"), cmd);
        let again = ScoreCommand::from_bytes(cmd.to_json().as_bytes()).expect("json again");
        assert_eq!(again, cmd);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ScoreCommand::from_bytes(b"{not json").is_err());
        assert!(ScoreCommand::from_bytes(&[0xff, 0xff, 0xff]).is_err());
        assert!(ScoreCommand::from_bytes(br#"{"model": 5}"#).is_err());
    }
}
