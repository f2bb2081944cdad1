//! The one routine that builds the eBPF object, shared by `mirror-agent`'s
//! build script and `cargo xtask build-ebpf` (included by path from both).
use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Name of the eBPF package, and of the object file it produces.
pub const EBPF_PACKAGE: &str = "mirror-ebpf";
pub const EBPF_OBJECT: &str = "mirror";

/// Where the project installs `bpf-linker` (`cargo xtask setup`).
pub fn tools_bin(workspace_root: &Path) -> PathBuf {
    workspace_root.join(".tools").join("bin")
}

/// Builds `mirror-ebpf` for the BPF target into `$OUT_DIR/mirror`.
pub fn build(workspace_root: &Path) -> Result<PathBuf> {
    let tools = tools_bin(workspace_root);
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools.clone()];
    dirs.extend(env::split_paths(&path));
    if !dirs.iter().any(|d| d.join("bpf-linker").is_file()) {
        bail!("bpf-linker not found in {} or PATH: run `cargo xtask setup` first", tools.display());
    }
    let joined = env::join_paths(dirs).context("PATH with .tools/bin")?;
    // SAFETY: build scripts and xtask are single-threaded at this point.
    unsafe {
        env::set_var("PATH", joined);
        // aya-build forwards the nested cargo's progress lines ("Compiling
        // …") as `cargo:warning`s, which read as ~45 warnings on a first
        // build. Quiet keeps only what matters: diagnostics and failures.
        env::set_var("CARGO_TERM_QUIET", "true");
    }

    let ebpf_dir = workspace_root.join(EBPF_PACKAGE);
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: EBPF_PACKAGE, root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )?;
    let out_dir = env::var_os("OUT_DIR").context("OUT_DIR not set")?;
    Ok(PathBuf::from(out_dir).join(EBPF_OBJECT))
}
