use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=lakescore.proto");
    println!("cargo:rerun-if-changed=onnx/onnx-ml.proto");
    println!("cargo:rerun-if-changed=registry.proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // protox: a pure-Rust protobuf compiler, so no `protoc` binary is needed.
    let fds = protox::compile(["lakescore.proto"], ["."])?;
    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out_dir.join("lakescore_descriptor.bin"), &descriptor_bytes)?;
    prost_build::Config::new().out_dir(&out_dir).compile_fds(fds)?;
    pbjson_build::Builder::new()
        .out_dir(&out_dir)
        .register_descriptors(&descriptor_bytes)?
        .build(&[".lakescore.v1"])?;

    // The ONNX model format (onnx-ml.proto, vendored from the onnx 1.19 release,
    // Apache-2.0), for reading and rewriting models. Byte fields as `Bytes` so that
    // decoding from `Bytes` does not copy tensor data.
    let onnx = protox::compile(["onnx/onnx-ml.proto"], ["onnx"])?;
    prost_build::Config::new().out_dir(&out_dir).bytes(["."]).compile_fds(onnx)?;

    // The registry's gRPC service (tonic client and server; the transport is the user's).
    let registry = protox::compile(["registry.proto"], ["."])?;
    tonic_prost_build::configure()
        .out_dir(&out_dir)
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(registry)?;
    Ok(())
}
