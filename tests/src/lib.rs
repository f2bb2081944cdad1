//! Harness for the privileged end-to-end tests: network namespaces, veth,
//! real packets captured with AF_PACKET. See `tests/README.md`.
//!
//! Every helper panics with the full story (command, stdout, stderr) when
//! something it needs fails: a test that cannot set up must fail loudly,
//! never pass vacuously.
#![allow(clippy::missing_panics_doc)]

pub mod capture;
pub mod daemon;
pub mod datapath;
pub mod inject;
pub mod pcap;
pub mod topology;
pub mod traffic;

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

/// Runs `cmd` and returns its output; panics with stdout and stderr unless it succeeded.
pub fn run_command(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS…`, panicking on failure.
pub fn ip(args: &[&str]) -> String {
    let out = run_command(Command::new("ip").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent binary under test (`cargo xtask test` sets `MIRROR_AGENT_BIN`).
/// The agent binary as a command, without the environment switch that
/// turns native filters off (the suite holds the default to its claims;
/// tests that want the switch set it).
pub fn agent_command() -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.env_remove(mirror_agent::dataplane::native::SWITCH);
    cmd
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("MIRROR_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mirror-agent"),
        PathBuf::from,
    )
}

/// The eBPF object under test (`cargo xtask test` sets `MIRROR_EBPF_OBJECT`).
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("MIRROR_EBPF_OBJECT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/mirror"),
        PathBuf::from,
    )
}

/// FNV-1a, to compare what was sent with what arrived.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
