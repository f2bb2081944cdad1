//! Network namespaces, entered like `ip -n NAME`: only the network namespace
//! of this thread changes; the mount namespace (and so bpffs) stays the
//! caller's.
//!
//! Self-contained (std, libc, anyhow, thiserror) so that `xtask`, which
//! must build before the eBPF toolchain exists, includes it by path.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

/// A namespace that is not there.
#[derive(Debug, thiserror::Error)]
#[error("network namespace {name:?} not found (looked for {path})")]
pub struct UnknownNetns {
    pub name: String,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into the named network namespace. Call before
/// any other thread exists: `setns` only affects the calling thread.
pub fn enter(name: &str) -> Result<()> {
    let path = path_of(name);
    let file = File::open(&path).map_err(|source| UnknownNetns {
        name: name.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let hint = if err.raw_os_error() == Some(libc::EPERM) { " (needs CAP_SYS_ADMIN)" } else { "" };
        return Err(err).with_context(|| format!("setns into network namespace {}{hint}", path.display()));
    }
    Ok(())
}

/// The namespace file of `name`: an absolute path, or an entry of /run/netns.
pub fn path_of(name: &str) -> PathBuf {
    if name.starts_with('/') { PathBuf::from(name) } else { PathBuf::from(NETNS_RUN_DIR).join(name) }
}

/// Names in /run/netns (the namespaces `ip netns` knows).
pub fn named() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else { return Vec::new() };
    let mut names: Vec<String> = dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
}

/// Runs `f` on a thread inside the named namespace; the caller's thread
/// never changes namespace.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let name = name.to_owned();
    std::thread::spawn(move || -> Result<T> {
        enter(&name)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}

pub const RUN_DIR: &str = NETNS_RUN_DIR;

/// `SO_NETNS_COOKIE` (Linux >= 5.14; not in the libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Identity of the current thread's network namespace: its cookie, which the
/// kernel never reuses while it runs. (Namespace inode numbers *are* reused as
/// soon as a namespace is gone, so a new namespace could inherit a dead one's
/// sessions.) Falls back to the inode on kernels without cookies.
pub fn current_id() -> Result<String> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: fresh, valid fd.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: out pointer and length describe `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            return Ok(format!("cookie-{cookie}"));
        }
    }
    let meta = std::fs::metadata("/proc/thread-self/ns/net").context("reading /proc/thread-self/ns/net")?;
    Ok(format!("ino-{}", meta.ino()))
}
