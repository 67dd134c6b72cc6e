//! Compiles the storywire protos without a `protoc` binary: protox parses them in pure Rust, tonic
//! generates the messages and the service, pbjson generates their proto3 JSON (serde) mapping, and
//! the descriptor set (with comments) is kept for server reflection.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["storywire/v1/story.proto", "storywire/v1/service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    // Source info keeps the comments, so that generated code has rustdoc and grpcurl's `describe`
    // shows them; imports make the descriptor set self-contained for reflection.
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("storywire_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(compiler.file_descriptor_set())?;

    // The server side of StoryService once more, with two differences: Subscribe streams
    // `EncodedResponse`, which carries each event encoded once and shared by every subscriber,
    // and the codec is `ServerCodec`, which hands HTTP/2 smaller chunks. Every other type is the
    // one generated above; the wire format is the same.
    let encoded_dir = out_dir.join("encoded");
    fs::create_dir_all(&encoded_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::encoded::ServerCodec")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(
            ".storywire.v1.SubscribeResponse",
            "crate::encoded::EncodedResponse",
        )
        .extern_path(".storywire.v1", "crate::pb")
        .out_dir(&encoded_dir)
        .compile_fds(compiler.file_descriptor_set())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".storywire.v1"])?;
    Ok(())
}
