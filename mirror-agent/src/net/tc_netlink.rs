//! The two rtnetlink requests aya does not offer, for the clsact fallback:
//! "does this clsact still hold any filter?" and "delete this clsact". The
//! agent deletes a clsact qdisc only if it created it and it is empty, so it
//! never removes someone else's filters.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `TC_H_CLSACT` (== `TC_H_INGRESS`) and the two clsact hook parents.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const TC_H_CLSACT_INGRESS: u32 = 0xffff_fff2;
const TC_H_CLSACT_EGRESS: u32 = 0xffff_fff3;

/// `struct tcmsg` from `<linux/rtnetlink.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TcMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: libc::nlmsghdr,
    tc: TcMsg,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); ownership is taken right away.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh, valid fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request and calls `on_message(type)` for every reply message
/// until the kernel signals the end (or an error).
fn transact(ty: u16, flags: u16, tc: TcMsg, mut on_message: impl FnMut(u16)) -> io::Result<()> {
    let sock = socket()?;
    let req = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: ty,
            nlmsg_flags: flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc,
    };
    // SAFETY: sending the bytes of a repr(C) value we own.
    let sent = unsafe { libc::send(sock.as_raw_fd(), (&raw const req).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "netlink socket closed"));
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + size_of::<libc::nlmsghdr>() <= n {
            // SAFETY: bounds checked above; read_unaligned copes with alignment.
            let hdr: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let len = hdr.nlmsg_len as usize;
            if len < size_of::<libc::nlmsghdr>() || off + len > n {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            match i32::from(hdr.nlmsg_type) {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    if len < size_of::<libc::nlmsghdr>() + size_of::<i32>() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink error"));
                    }
                    // SAFETY: checked above: an i32 errno follows the header.
                    let errno: i32 = unsafe {
                        std::ptr::read_unaligned(buf[off + size_of::<libc::nlmsghdr>()..].as_ptr().cast())
                    };
                    return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
                }
                _ => on_message(hdr.nlmsg_type),
            }
            off += (len + 3) & !3;
        }
    }
}

fn filter_count(ifindex: u32, parent: u32) -> io::Result<usize> {
    let mut count = 0;
    let tc = TcMsg { ifindex: ifindex as i32, parent, ..Default::default() };
    let result = transact(libc::RTM_GETTFILTER, libc::NLM_F_DUMP as u16, tc, |ty| {
        if ty == libc::RTM_NEWTFILTER {
            count += 1;
        }
    });
    match result {
        Ok(()) => Ok(count),
        // No clsact (or no such hook): nothing is attached there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// True if neither clsact hook of `ifindex` holds a filter.
pub fn clsact_is_empty(ifindex: u32) -> io::Result<bool> {
    Ok(filter_count(ifindex, TC_H_CLSACT_INGRESS)? == 0 && filter_count(ifindex, TC_H_CLSACT_EGRESS)? == 0)
}

/// Deletes the clsact qdisc of `ifindex`.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let tc =
        TcMsg { ifindex: ifindex as i32, parent: TC_H_CLSACT, handle: 0xffff_0000, ..Default::default() };
    transact(libc::RTM_DELQDISC, 0, tc, |_| {})
}
