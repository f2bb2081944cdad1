//! Network namespaces, entered like `ip -n NAME`: only the network namespace
//! of this thread changes; the mount namespace (and so bpffs) stays the
//! caller's.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use crate::error::InputError;

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into the named network namespace. Call before
/// any other thread exists: `setns` only affects the calling thread.
pub fn enter(name: &str) -> Result<()> {
    let path = if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(name)
    };
    let file = File::open(&path).map_err(|source| InputError::UnknownNetns {
        name: name.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into network namespace {}", path.display()));
    }
    Ok(())
}

/// Identity of the current thread's network namespace (its nsfs inode).
pub fn current_id() -> Result<u64> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading /proc/thread-self/ns/net")?;
    Ok(meta.ino())
}
