//! AF_PACKET capture inside a namespace: every frame an interface receives,
//! with its true length (MSG_TRUNC) and the first bytes kept for parsing.
use std::{
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::topology::Netns;

/// Bytes of each frame kept for parsing.
const KEEP: usize = 128;

/// A captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Length on the wire.
    pub len: usize,
    /// The first (up to [`KEEP`]) bytes.
    pub head: Vec<u8>,
}

impl Frame {
    fn ipv4(&self) -> Option<&[u8]> {
        (self.head.len() >= 34 && self.head[12..14] == [0x08, 0x00]).then(|| &self.head[14..])
    }

    /// ICMP type of an IPv4 ICMP frame.
    pub fn icmp_type(&self) -> Option<u8> {
        let ip = self.ipv4()?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        (ip[9] == 1 && ip.len() > ihl).then(|| ip[ihl])
    }

    pub fn is_echo_request(&self) -> bool {
        self.icmp_type() == Some(8)
    }

    pub fn is_echo_reply(&self) -> bool {
        self.icmp_type() == Some(0)
    }

    pub fn is_tcp(&self) -> bool {
        self.ipv4().is_some_and(|ip| ip[9] == 6)
    }

    /// IPv4 total length field: the original packet's size.
    pub fn ip_total_len(&self) -> Option<usize> {
        self.ipv4().map(|ip| usize::from(u16::from_be_bytes([ip[2], ip[3]])))
    }
}

/// A running capture; [`Capture::stop`] returns what it saw.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    /// Frames received so far (for [`Capture::settle`]).
    seen: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Starts capturing what `dev` in `ns` receives; returns once the socket is bound.
    pub fn start(ns: &Netns, dev: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns_name = ns.name.clone();
        let dev = dev.to_owned();
        let flag = stop.clone();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let handle = std::thread::spawn(move || {
            Netns { name: ns_name.clone() }.enter_and_forget();
            let sock = open(&dev);
            ready_tx.send(()).expect("ready");
            let mut frames = Vec::new();
            let mut buf = vec![0u8; KEEP];
            while !flag.load(Ordering::Relaxed) {
                drain(&sock, &mut buf, &mut frames);
                counter.store(frames.len(), Ordering::Relaxed);
            }
            drain(&sock, &mut buf, &mut frames);
            frames
        });
        ready_rx.recv().expect("capture thread died before binding");
        Self { stop, seen, handle: Some(handle) }
    }

    /// Frames received so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }

    /// Waits until the wire is quiet: no new frame for 50 ms (at most 5 s).
    /// Copies are in flight for microseconds; this only absorbs scheduling.
    pub fn settle(&self) {
        let start = Instant::now();
        let mut last = self.seen.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.seen.load(Ordering::Relaxed);
            if now == last || start.elapsed() > Duration::from_secs(5) {
                return;
            }
            last = now;
        }
    }

    /// Waits for quiet, stops, and returns every frame received.
    pub fn stop(mut self) -> Vec<Frame> {
        self.settle();
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("capture thread panicked")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Netns {
    /// Like [`Netns::enter`], for a clone that must not delete the namespace on drop.
    fn enter_and_forget(self) {
        self.enter();
        std::mem::forget(self);
    }
}

/// Binds AF_PACKET socket `sock` to interface `dev` (in the calling
/// thread's namespace), for protocol `proto_be` (network order; 0: send only).
pub(crate) fn bind(sock: &OwnedFd, dev: &str, proto_be: u16) {
    let name = std::ffi::CString::new(dev).expect("name");
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "AF_PACKET: no interface {dev}");
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto_be;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: binding with a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as u32)
    };
    assert_eq!(rc, 0, "bind AF_PACKET to {dev}: {}", std::io::Error::last_os_error());
}

fn open(dev: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); ownership taken right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    bind(&sock, dev, proto);
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
    let rcvbuf: libc::c_int = 32 << 20;
    set_socket_option(&sock, libc::SO_RCVTIMEO, &timeout);
    set_socket_option(&sock, libc::SO_RCVBUFFORCE, &rcvbuf);
    sock
}

/// Reads until the socket has nothing more right now.
fn drain(sock: &OwnedFd, buf: &mut [u8], frames: &mut Vec<Frame>) {
    loop {
        // SAFETY: sockaddr_ll is plain old data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: receiving into buffers we own, with their true sizes.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return; // timeout: nothing pending
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let len = n as usize;
        frames.push(Frame { len, head: buf[..len.min(buf.len())].to_vec() });
    }
}

/// `setsockopt(SOL_SOCKET, name, value)`, best effort (as before: a capture
/// still works with the default timeout and buffer).
fn set_socket_option<T>(sock: &impl AsRawFd, name: libc::c_int, value: &T) {
    // SAFETY: `value` is a live `T`, and its exact size is passed along.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as u32,
        );
    }
}
