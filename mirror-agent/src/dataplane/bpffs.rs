//! The agent's bpffs directory: everything that keeps a session alive after
//! the CLI exits lives here, one directory per network namespace:
//!
//! ```text
//! <bpffs>/mirror-agent/netns-cookie-<netns cookie>/
//!     maps/SOURCE_INDEX  maps/SOURCE_ENTRIES  maps/SOURCE_OVERFLOW
//!     maps/SESSIONS  maps/COUNTERS  maps/CUT_VERDICT
//!     links/src-ingress-<ifindex>  links/src-egress-<ifindex>  links/dst-egress-<ifindex>
//!     links/tc-<hook>-<ifindex>-<prio>-<handle>[+qdisc]
//!                  (clsact fallback: the pinned program marks the filter as ours)
//! ```
use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::error::InputError;

/// `statfs.f_type` of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The agent's directory under the bpffs mount.
const AGENT_DIR: &str = "mirror-agent";

/// Paths of one network namespace's state.
#[derive(Debug, Clone)]
pub struct Layout {
    pub bpffs: PathBuf,
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(bpffs: &Path, netns_id: &str) -> Self {
        Self { bpffs: bpffs.to_owned(), dir: bpffs.join(AGENT_DIR).join(format!("netns-{netns_id}")) }
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.bpffs.join(AGENT_DIR)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Removes the namespace's directory once nothing is pinned in it, and
    /// the agent directory if no other namespace uses it.
    pub fn remove_empty_dirs(&self) -> Result<()> {
        for dir in [self.maps_dir(), self.links_dir(), self.dir.clone(), self.agent_dir()] {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTEMPTY)) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        Ok(())
    }
}

fn statfs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `statfs` is plain old data; the kernel fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type)
}

pub fn is_bpffs(path: &Path) -> bool {
    statfs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// True when this process runs in a mount namespace of its own whose mounts
/// vanish with it. Two signs: PID 1's mount namespace differs from ours (when
/// readable), or /sys is the sysfs `ip netns exec` mounts, whose source is
/// the name of the namespace (an entry of /run/netns).
fn in_private_mount_namespace() -> bool {
    if let (Ok(ours), Ok(init)) = (fs::read_link("/proc/self/ns/mnt"), fs::read_link("/proc/1/ns/mnt"))
        && ours != init
    {
        return true;
    }
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(head), Some(tail)) = (halves.next(), halves.next()) else {
            return false;
        };
        let mount_point = head.split(' ').nth(4);
        let mut tail = tail.split(' ');
        let (fstype, source) = (tail.next(), tail.next());
        mount_point == Some("/sys")
            && fstype == Some("sysfs")
            && source
                .is_some_and(|s| s != "sysfs" && !s.contains('/') && Path::new("/run/netns").join(s).exists())
    })
}

/// `PROC_PID_INIT_INO`: the inode of the initial PID namespace.
const INITIAL_PID_NAMESPACE_INODE: u64 = 0xefff_fffc;

/// True in a container (a PID namespace other than the host's): a bpffs
/// mounted here would die with the container, and the sessions with it.
pub fn in_container() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() != INITIAL_PID_NAMESPACE_INODE)
}

/// Refuses to work from a private mount namespace without the host's bpffs:
/// sessions made there vanish with the process, and the host's sessions are
/// invisible (so `list` would say "none" and `detach` would find nothing).
pub fn refuse_private_mount_namespace(bpffs: &Path) -> Result<()> {
    if !is_bpffs(bpffs) && in_private_mount_namespace() {
        return Err(InputError::PrivateMountNamespace { bpffs: bpffs.display().to_string() }.into());
    }
    Ok(())
}

/// Makes sure `bpffs` is a bpffs mount, mounting one if nothing is there.
/// Refuses inside a private mount namespace, where a fresh mount (and every
/// pin in it) would disappear with this process.
pub fn ensure_mounted(bpffs: &Path) -> Result<()> {
    if is_bpffs(bpffs) {
        return Ok(());
    }
    refuse_private_mount_namespace(bpffs)?;
    if in_container() {
        return Err(InputError::NoHostBpffs { bpffs: bpffs.display().to_string() }.into());
    }
    fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    let target = CString::new(bpffs.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {}", bpffs.display()));
    }
    tracing::info!(path = %bpffs.display(), "mounted bpffs");
    Ok(())
}

/// An exclusive or shared `flock` on a directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks the bpffs root: exclusively only by `gc`, which removes other
    /// namespaces' directories; shared by everyone else (see [`NsLock`]).
    pub fn acquire(dir: &Path, exclusive: bool) -> Result<Self> {
        let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("locking {}", dir.display()));
        }
        Ok(Self { _file: file })
    }
}

/// The lock of one namespace's state: the bpffs root shared (so `gc` waits
/// for everyone), then the namespace's own directory, exclusively for a
/// change or shared for a read. Namespaces never wait for each other: a
/// long `attach` in one does not delay another's daemon.
///
/// The last detach of a namespace removes its directory while holding its
/// lock; a waiter then holds a lock on a deleted directory, sees that the
/// path no longer names what it locked, and starts over.
#[derive(Debug)]
pub struct NsLock {
    _ns: DirLock,
    _root: DirLock,
}

impl Layout {
    /// Locks this namespace's state. With `create`, makes the directory
    /// first; without, `None` means there is no state to lock.
    pub fn lock(&self, exclusive: bool, create: bool) -> Result<Option<NsLock>> {
        use std::os::unix::fs::MetadataExt as _;
        let root = DirLock::acquire(&self.bpffs, false)?;
        loop {
            if create {
                fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
            }
            let ns = match DirLock::acquire(&self.dir, exclusive) {
                Ok(l) => l,
                Err(_) if !create && !self.dir.exists() => return Ok(None),
                Err(e) => return Err(e),
            };
            let locked =
                ns._file.metadata().with_context(|| format!("reading {}", self.dir.display()))?.ino();
            match fs::metadata(&self.dir) {
                Ok(m) if m.ino() == locked => return Ok(Some(NsLock { _ns: ns, _root: root })),
                // Removed (or replaced) while we waited.
                _ if create => continue,
                Ok(_) => continue,
                Err(_) => return Ok(None),
            }
        }
    }
}
