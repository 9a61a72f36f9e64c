use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a registry crate, so a fresh machine needs no system package.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = ["meterd/v1/metering.proto", "meterd/v1/admin.proto", "meterd/v1/customers.proto"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("meterd_v1_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
