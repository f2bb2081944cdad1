//! Installs what a fresh host lacks, and nothing it already has.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{ebpf_build, run, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: (a binary it provides, the package).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("tcpdump", "tcpdump"),
    // Capability tests drop one capability at a time.
    ("setpriv", "util-linux"),
    ("nsenter", "util-linux"),
    // The metrics tests: a real Prometheus server and promtool.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("curl", "curl"),
];

pub fn all() -> Result<()> {
    packages()?;
    toolchain()
}

fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

/// What only the benchmark needs.
pub fn bench_packages() -> Result<()> {
    install_missing(&[("iperf3", "iperf3"), ("perf", "linux-perf")])
}

fn packages() -> Result<()> {
    install_missing(PACKAGES)
}

fn install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = packages.iter().filter(|(bin, _)| !have(bin)).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_sysroot() -> Result<std::path::PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: `rustup toolchain install nightly`");
    }
    Ok(String::from_utf8(out.stdout)?.trim().into())
}

/// rust-src for the nightly, and bpf-linker linked against its libLLVM.
pub fn toolchain() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let root = workspace_root();
    let linker = ebpf_build::tools_bin(&root).join("bpf-linker");
    let current = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if current.as_deref().is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    // bpf-linker must use the nightly's own LLVM: point the link at its libLLVM.
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")))
        .context("no libLLVM.so.* in the nightly sysroot")?;
    let link_dir = root.join("target").join("llvm-link");
    std::fs::create_dir_all(&link_dir)?;
    let link = link_dir.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} into .tools (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
            "--root",
        ])
        .arg(root.join(".tools"))
        .env("LLVM_PREFIX", &sysroot)
        .env("RUSTFLAGS", format!("-L native={}", link_dir.display())))
}
