//! Compiles `proto/sketchd/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates the prost messages and tonic services, plus the
//! encoded file descriptor set that server reflection serves.
//!
//! Two passes, because the server and the clients decode with different
//! codecs (see `src/wire.rs`): the first writes the messages and the
//! servers (`OUT_DIR/sketchd.v1.rs`), the second only the clients, which
//! refer to the first pass's messages (`OUT_DIR/client/sketchd.v1.rs`).

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut protos: Vec<PathBuf> = fs::read_dir("proto/sketchd/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("sketchd_descriptor.bin"), fds.encode_to_vec())?;
    // prost over contiguous slices (see src/wire.rs).
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::wire::ServerCodec")
        .compile_fds(fds.clone())?;
    let clients = out_dir.join("client");
    fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .extern_path(".sketchd.v1", "crate::pb")
        .codec_path("crate::wire::ClientCodec")
        .out_dir(&clients)
        .compile_fds(fds)?;
    Ok(())
}
