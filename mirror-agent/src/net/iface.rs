//! Interface facts in the *current* network namespace. Read through sockets
//! and ioctls, not /sys/class/net: sysfs belongs to the mount namespace and
//! still shows the caller's interfaces after `setns`.
use std::{ffi::CString, io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

/// Index of the interface called `name`, if it exists.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Name of the interface with index `ifindex`, if it exists.
pub fn name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// Link state of a destination, as the session reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    /// Administratively up, no carrier (e.g. the veth peer is down).
    NoCarrier,
    Down,
    Missing,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::NoCarrier => "no-carrier",
            Self::Down => "down",
            Self::Missing => "missing",
        }
    }
}

fn flags(name: &str) -> io::Result<libc::c_int> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IF_NAMESIZE - 1)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// State of the interface with index `ifindex`.
pub fn state(ifindex: u32) -> LinkState {
    let Some(name) = name(ifindex) else {
        return LinkState::Missing;
    };
    match flags(&name) {
        Err(_) => LinkState::Missing,
        Ok(f) if f & libc::IFF_UP == 0 => LinkState::Down,
        Ok(f) if f & libc::IFF_RUNNING == 0 => LinkState::NoCarrier,
        Ok(_) => LinkState::Up,
    }
}

/// True for loopback devices.
pub fn is_loopback(name: &str) -> bool {
    flags(name).is_ok_and(|f| f & libc::IFF_LOOPBACK != 0)
}
