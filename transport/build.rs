//! Generates the gRPC code from `proto/gpve.proto` with a vendored `protoc`, so building
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    // SAFETY: the build script has no other threads that could read the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&["proto/gpve.proto", "proto/watch.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/gpve.proto");
    println!("cargo:rerun-if-changed=proto/watch.proto");
    Ok(())
}
