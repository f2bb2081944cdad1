//! Packet generator: AF_PACKET `sendmmsg` with `PACKET_QDISC_BYPASS`, bursts
//! of 64 (IPIs are expensive in this guest), pinned to one CPU. pktgen is not
//! in this kernel; this reaches ~1.3 Mpps on one core here.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::lab::{self, GEN, GEN_IP, GEN_MAC, SINK_IP};

const PACKET_QDISC_BYPASS: libc::c_int = 20;
pub const BURST: usize = 64;
/// The flood's UDP ports (discard); the selection variants are written for them.
pub const UDP_SRC_PORT: u16 = 1024;
pub const UDP_DST_PORT: u16 = 9;

/// A UDP frame of `len` bytes (L2, without FCS) from the generator to the
/// sink, sent to `dst_mac` (the router's src0, or the sink across a bridge).
pub fn udp_frame(len: usize, dst_mac: [u8; 6]) -> Vec<u8> {
    assert!(len >= 60, "frame too short");
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&GEN_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&GEN_IP);
    ip[16..20].copy_from_slice(&SINK_IP);
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&UDP_SRC_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_DST_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub frame_len: usize,
    pub dst_mac: [u8; 6],
    /// `None` = as fast as possible.
    pub pps: Option<u64>,
    pub duration: Duration,
    pub cpu: usize,
}

fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data, filled by the CPU_* helpers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); ownership taken right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    // SAFETY: valid C string.
    addr.sll_ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
    let one: libc::c_int = 1;
    // SAFETY: sizes match the values passed.
    unsafe {
        if libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as u32) != 0
        {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
        if libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            4,
        ) != 0
        {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
    }
    Ok(sock)
}

/// Sends `load` from the generator namespace on a pinned thread; returns
/// the packets the socket accepted.
pub fn run(load: Load) -> Result<u64> {
    run_until(load, Arc::default())
}

/// [`run`], ending early once `stop` is set.
pub fn run_until(load: Load, stop: Arc<AtomicBool>) -> Result<u64> {
    std::thread::spawn(move || -> Result<u64> {
        pin_to(load.cpu)?;
        lab::enter(GEN)?;
        let sock = socket()?;
        let frame = udp_frame(load.frame_len, load.dst_mac);
        let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() };
        let mut msgs: Vec<libc::mmsghdr> = (0..BURST)
            .map(|_| {
                // SAFETY: mmsghdr is plain old data; every entry points at the one frame.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = &raw mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let start = Instant::now();
        let interval = load.pps.map(|pps| Duration::from_secs_f64(BURST as f64 / pps as f64));
        let mut next = start;
        let mut sent = 0u64;
        while start.elapsed() < load.duration && !stop.load(Ordering::Relaxed) {
            // SAFETY: `msgs` holds BURST valid headers pointing at live buffers.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BURST as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
            if let Some(interval) = interval {
                next += interval;
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        }
        Ok(sent)
    })
    .join()
    .expect("generator thread panicked")
}
