//! Compiles `proto/**/*.proto` with `protox` (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) into a file descriptor set, then generates prost messages and tonic
//! client and server code from it with `tonic-prost-build` into `OUT_DIR`.

const PROTOS: &[&str] = &["proto/meshtrace/priorities/v1/priorities.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
