//! File-system events the daemon follows with inotify: a change of its
//! config file (editors replace it; so the directory is watched, not the
//! file), and namespaces appearing in or leaving /run/netns.
use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Config,
    Netns,
}

#[derive(Debug)]
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
    config_wd: i32,
    config_name: OsString,
    netns_wd: Option<i32>,
}

fn add_watch(fd: &OwnedFd, dir: &Path, mask: u32) -> io::Result<i32> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: valid fd and NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 { Err(io::Error::last_os_error()) } else { Ok(wd) }
}

impl Watch {
    pub fn new(config: &Path) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right away.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let dir = match config.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        // Not IN_CREATE: a file is complete only once closed or renamed in.
        let config_wd = add_watch(&fd, &dir, libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO)?;
        let netns_wd =
            add_watch(&fd, Path::new(crate::net::netns::RUN_DIR), libc::IN_CREATE | libc::IN_DELETE).ok();
        let config_name = config.file_name().map(OsStr::to_owned).unwrap_or_default();
        // SAFETY: the fd is owned by the `AsyncFd` and never closed or
        // replaced while registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd, config_wd, config_name, netns_wd })
    }

    /// Waits for the next relevant events (several may be folded into one
    /// answer of each kind).
    pub async fn next(&mut self) -> io::Result<Vec<Event>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer we own, bounded by its length.
            let n = unsafe { libc::read(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(err);
            }
            let events = self.parse(&buf[..n as usize]);
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn parse(&self, mut buf: &[u8]) -> Vec<Event> {
        const HEADER: usize = size_of::<libc::inotify_event>();
        let mut out = Vec::new();
        while buf.len() >= HEADER {
            // SAFETY: at least a header's bytes; read_unaligned copes with alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            let end = (HEADER + ev.len as usize).min(buf.len());
            let name = &buf[HEADER..end];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            // `..data`: a Kubernetes ConfigMap volume swaps this symlink.
            let event = if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were lost: assume everything changed.
                out.extend([Event::Config, Event::Netns]);
                None
            } else if ev.wd == self.config_wd
                && (OsStr::from_bytes(name) == self.config_name || name == b"..data")
            {
                Some(Event::Config)
            } else if Some(ev.wd) == self.netns_wd {
                Some(Event::Netns)
            } else {
                None
            };
            if let Some(e) = event
                && !out.contains(&e)
            {
                out.push(e);
            }
            buf = &buf[end..];
        }
        out
    }
}
