//! `cargo xtask <task>`: everything a fresh host needs, in the project's own
//! files. `setup` installs what is missing; every other task runs it first.
mod bench;
mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[path = "../../mirror-agent/ebpf_build.rs"]
mod ebpf_build;
/// The agent's namespace helper, by path: xtask builds before the eBPF
/// toolchain that the agent's crate needs exists.
#[path = "../../mirror-agent/src/net/netns.rs"]
#[allow(dead_code, reason = "xtask needs only `enter`")]
mod netns;

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, rust-src, bpf-linker.
    Setup,
    /// Build the eBPF object; print its path, size and whether it has BTF.
    BuildEbpf,
    /// rustfmt check and clippy (warnings are errors) on every crate, the
    /// eBPF one included.
    Lint,
    /// Lint, unit tests, BPF_PROG_TEST_RUN tests and the privileged namespace suite.
    Test {
        /// Only run privileged tests whose name contains this.
        filter: Option<String>,
    },
    /// Mirror client↔server traffic to a collector in throwaway namespaces.
    Demo {
        /// Run the daemon from an example config instead, and hot-plug a VM.
        #[arg(long)]
        daemon: bool,
    },
    /// What a mirrored packet costs: base, tc mirred and the agent, side by side.
    Bench(bench::Options),
    /// The daemon's footprint and reaction times: idle CPU and RSS with
    /// 1000 sources, hot-plug latency, scrape time with 4095 sessions, and a
    /// reload that changes one session of 1000.
    BenchDaemon,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_owned()
}

/// Runs `cmd`, failing with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // Let the agent's build.rs find bpf-linker.
    let tools = ebpf_build::tools_bin(&workspace_root());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    cmd
}

fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`cargo xtask {task}` loads BPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

/// Builds the eBPF objects into `target/ebpf/` with the agent's own routine;
/// returns the agent's object (the benchmark's sits beside it).
fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let out = root.join("target").join("ebpf");
    std::fs::create_dir_all(&out)?;
    // aya-build reads what cargo gives a build script.
    // SAFETY: single-threaded here.
    unsafe {
        std::env::set_var("OUT_DIR", &out);
        std::env::set_var(
            "CARGO_CFG_TARGET_ENDIAN",
            if cfg!(target_endian = "big") { "big" } else { "little" },
        );
        std::env::set_var("CARGO_CFG_TARGET_ARCH", std::env::consts::ARCH);
    }
    ebpf_build::build(&root)
}

/// True if the ELF object has a `.BTF` section.
fn has_btf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return false;
    }
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(section(shstrndx) + 0x18);
    (0..shnum).any(|i| {
        let name = strtab + u32_at(section(i));
        elf.get(name..name + 5) == Some(b".BTF\0")
    })
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    let deny = ["--", "-D", "warnings"];
    run(cargo().args(["clippy", "--workspace", "--exclude", "mirror-ebpf", "--all-targets"]).args(deny))?;
    // The eBPF crate only builds for the BPF target, with the nightly: go
    // through the rustup proxy (`cargo +nightly`), not the resolved stable cargo.
    let mut ebpf = Command::new("cargo");
    ebpf.current_dir(workspace_root().join(ebpf_build::EBPF_PACKAGE))
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "clippy", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--bins"])
        .args(deny);
    run(&mut ebpf)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::all(),
        Task::BuildEbpf => {
            setup::toolchain()?;
            let path = build_ebpf()?;
            let bytes = std::fs::read(&path)?;
            println!("eBPF object: {}", path.display());
            println!("size:        {} bytes", bytes.len());
            println!("BTF:         {}", if has_btf(&bytes) { "yes" } else { "no" });
            Ok(())
        }
        Task::Lint => {
            setup::toolchain()?;
            lint()
        }
        Task::Test { filter } => {
            require_root("test")?;
            setup::all()?;
            let object = build_ebpf()?;
            lint()?;
            run(cargo().args(["build", "--workspace", "--exclude", "mirror-ebpf", "--all-targets"]))?;
            // Unit tests of the default members: no privileges needed.
            run(cargo().args(["test"]))?;
            // Privileged suite: one test at a time (namespaces, bpffs, TCX).
            let mut privileged = cargo();
            privileged
                .args(["test", "--no-fail-fast", "-p", "mirror-tests", "--", "--test-threads=1"])
                .env("MIRROR_AGENT_BIN", workspace_root().join("target/debug/mirror-agent"))
                .env("MIRROR_EBPF_OBJECT", object);
            if let Some(f) = filter {
                privileged.arg(f);
            }
            run(&mut privileged)
        }
        Task::Bench(opts) => {
            require_root("bench")?;
            setup::all()?;
            setup::bench_packages()?;
            let object = build_ebpf()?;
            run(cargo().args(["build", "--release", "-p", "mirror-agent"]))?;
            let agent = workspace_root().join("target/release/mirror-agent");
            bench::run(&opts, &agent, &object.with_file_name("bench"))
        }
        Task::BenchDaemon => {
            require_root("bench-daemon")?;
            setup::all()?;
            run(cargo().args(["build", "--release", "-p", "mirror-agent"]))?;
            bench::daemon::run(&workspace_root().join("target/release/mirror-agent"))
        }
        Task::Demo { daemon } => {
            require_root("demo")?;
            setup::all()?;
            run(cargo().args(["build", "-p", "mirror-agent"]))?;
            let agent = workspace_root().join("target/debug/mirror-agent");
            if daemon { demo::run_daemon(&agent) } else { demo::run(&agent) }
        }
    }
}
