//! Compiles our own Polaris `.proto` files (package `v1`, and polaris-limiter's
//! `polaris.metric.v2`) with a vendored protoc,
//! so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let dir = PathBuf::from("proto");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.join("v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    // google/protobuf/*.proto (wrappers, duration, any) ship with the vendored protoc.
    let well_known = protoc_bin_vendored::include_path()?;
    prost_build::Config::new().compile_protos(&files, &[dir.join("v1"), well_known.clone()])?;
    // polaris-limiter's v2 API (package `polaris.metric.v2`).
    let limiter = dir.join("limiter").join("ratelimiter.proto");
    println!("cargo:rerun-if-changed={}", limiter.display());
    prost_build::Config::new().compile_protos(&[limiter], &[dir.join("limiter"), well_known])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
