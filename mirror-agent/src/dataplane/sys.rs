//! The `bpf(2)` system call, for the few commands aya 0.14 does not wrap
//! (batch lookups, grace periods, TCX link state, native filter programs).
use std::io;

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr` for the element commands (`BPF_MAP_*_ELEM`).
#[repr(C)]
#[derive(Debug)]
pub struct MapElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
}

/// Runs `bpf(cmd, attr)`; the kernel's return on success.
///
/// `T` must be a `#[repr(C)]` prefix of `union bpf_attr` laid out for
/// `cmd`, whose pointers (if any) are valid for the call.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out prefix of `union bpf_attr`
    // for `cmd` (the caller's contract), and its size is passed along.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
