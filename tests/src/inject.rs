//! Frames built by hand and sent with `AF_PACKET`, for what no socket sends:
//! 802.1Q-tagged frames (this kernel has no `vlan` link type) and frames out
//! of an interface that has no address. [`TagCapture`] is a capture that also
//! reads the tag the stack keeps in metadata (`PACKET_AUXDATA`), which a
//! plain read of the frame does not show.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::topology::Netns;

/// The topology's client and server MACs, as bytes.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;

/// An Ethernet frame; with `vlan = Some(tci)`, an 802.1Q tag in the frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (no options, DF clear, TTL 64, header checksum set).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).expect("IPv4 packet too long");
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram (checksum 0: none, valid over IPv4).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP datagram too long");
    let mut d = Vec::with_capacity(usize::from(len));
    for v in [sport, dport, len, 0] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d.extend_from_slice(payload);
    d
}

/// An ICMP echo request (checksum set).
pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let sum = inet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// An `AF_PACKET` socket that sends whole frames out of one interface,
/// through its transmit path (qdisc and tc egress hooks included).
#[derive(Debug)]
pub struct Injector {
    sock: OwnedFd,
    dev: String,
}

impl Injector {
    /// Opens the socket inside `ns` (it stays there) on `dev`.
    pub fn open(ns: &Netns, dev: &str) -> Self {
        let name = dev.to_owned();
        let sock = ns.run(move || {
            // Protocol 0: this socket sends and never receives.
            // SAFETY: plain socket(2); ownership taken right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fresh fd.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            crate::capture::bind(&sock, &name, 0);
            sock
        });
        Self { sock, dev: dev.to_owned() }
    }

    /// Sends `frame` as is; panics unless the whole frame was taken.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sending from a buffer we own, with its true size.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send on {}: {}",
            self.dev,
            std::io::Error::last_os_error()
        );
    }
}

/// Bytes of each frame kept.
const KEEP: usize = 256;

/// A frame received, with the 802.1Q tag the stack holds in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedFrame {
    /// Length of the frame's data (a tag in metadata is not counted).
    pub len: usize,
    /// `(TPID, TCI)` of the tag in metadata, if any.
    pub meta_tag: Option<(u16, u16)>,
    /// The first (up to [`KEEP`]) bytes of the data.
    pub head: Vec<u8>,
}

impl TaggedFrame {
    /// The VLAN ID of the tag in metadata.
    pub fn meta_vid(&self) -> Option<u16> {
        self.meta_tag.map(|(_, tci)| tci & 0x0fff)
    }
}

/// Like [`crate::capture::Capture`], with `PACKET_AUXDATA`: each frame's tag
/// in metadata. Frames the interface sends are skipped.
#[derive(Debug)]
pub struct TagCapture {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<TaggedFrame>>>,
}

impl TagCapture {
    /// Starts capturing what `dev` in `ns` receives; returns once bound.
    pub fn start(ns: &Netns, dev: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (flag, counter) = (stop.clone(), seen.clone());
        let dev = dev.to_owned();
        let ns_name = ns.name.clone();
        let handle = std::thread::spawn(move || {
            mirror_agent::net::netns::enter(&ns_name).unwrap_or_else(|e| panic!("entering {ns_name}: {e:#}"));
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); ownership taken right away.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto))
            };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fresh fd.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            set_option(&sock, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32);
            set_option(
                &sock,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &libc::timeval { tv_sec: 0, tv_usec: 20_000 },
            );
            set_option(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(32i32 << 20));
            crate::capture::bind(&sock, &dev, proto);
            ready_tx.send(()).expect("ready");
            let mut frames = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                while let Some(f) = receive(&sock) {
                    frames.extend(f);
                }
                counter.store(frames.len(), Ordering::Relaxed);
            }
            while let Some(f) = receive(&sock) {
                frames.extend(f);
            }
            frames
        });
        ready_rx.recv().expect("capture thread died before binding");
        Self { stop, seen, handle: Some(handle) }
    }

    /// Waits for quiet (no new frame for 50 ms, at most 5 s), stops, and
    /// returns every frame received.
    pub fn stop(mut self) -> Vec<TaggedFrame> {
        let start = Instant::now();
        let mut last = self.seen.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.seen.load(Ordering::Relaxed);
            if now == last || start.elapsed() > Duration::from_secs(5) {
                break;
            }
            last = now;
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("capture thread panicked")
    }
}

impl Drop for TagCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One `recvmsg`: `None` when nothing is pending, `Some(None)` for a frame
/// the interface sent (skipped).
fn receive(sock: &OwnedFd) -> Option<Option<TaggedFrame>> {
    let mut buf = [0u8; KEEP];
    // Room for one cmsg carrying a tpacket_auxdata, 8-byte aligned.
    let mut control = [0u64; 16];
    // SAFETY: sockaddr_ll is plain old data.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        return None;
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Some(None);
    }
    let mut meta_tag = None;
    // SAFETY: walking the control buffer the kernel filled, with its macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        ETH_P_8021Q
                    };
                    meta_tag = Some((tpid, aux.tp_vlan_tci));
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    let len = n as usize;
    Some(Some(TaggedFrame { len, meta_tag, head: buf[..len.min(KEEP)].to_vec() }))
}

fn set_option<T>(sock: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: `value` is a live `T`, and its exact size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
}
