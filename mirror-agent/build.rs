//! Builds the eBPF object with aya-build; the agent embeds it.
//!
//! `AYA_BUILD_SKIP=1` (e.g. for a quick `cargo clippy`) writes an empty
//! object instead; an agent built that way refuses to attach.
use std::{env, fs, path::PathBuf};

#[path = "ebpf_build.rs"]
mod ebpf_build;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace_root = manifest_dir.parent().expect("mirror-agent sits in the workspace");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out.join(ebpf_build::EBPF_OBJECT), [])?;
        return Ok(());
    }
    println!("cargo:rerun-if-changed={}", workspace_root.join("mirror-common").display());
    ebpf_build::build(workspace_root)?;
    Ok(())
}
