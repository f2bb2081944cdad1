//! Traffic generators: ping (iputils) and an in-process TCP transfer.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use crate::{checksum, topology::Netns};

/// Result of a ping run.
#[derive(Debug, Clone, Copy)]
pub struct PingResult {
    pub transmitted: u64,
    pub received: u64,
}

/// `ping -c count` from `ns` to `dst`, 10 ms apart.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> PingResult {
    let out = ns
        .command(&["ping", "-q", "-c", &count.to_string(), "-i", "0.01", "-W", "1", dst])
        .output()
        .expect("spawning ping");
    ping_result(&out)
}

/// What a finished `ping -q` run reports.
pub fn ping_result(out: &std::process::Output) -> PingResult {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| {
        panic!("unexpected ping output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    PingResult { transmitted: nums[0], received: nums[1] }
}

/// Sends `len` bytes of pseudo-random data over TCP from `client` to
/// `server_ip:port` in `server`; returns (checksum sent, checksum received, bytes received).
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    port: u16,
    len: usize,
) -> (u64, u64, usize) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let sent = checksum(&data);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            server.enter();
            let listener = TcpListener::bind((server_ip, port)).expect("bind");
            ready_tx.send(()).expect("ready");
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut got = Vec::with_capacity(len);
            conn.read_to_end(&mut got).expect("read");
            got
        });
        ready_rx.recv().expect("listener ready");
        s.spawn(|| {
            client.enter();
            let mut conn = TcpStream::connect((server_ip, port)).expect("connect");
            conn.write_all(&data).expect("write");
        })
        .join()
        .expect("sender");
        let got = receiver.join().expect("receiver");
        (sent, checksum(&got), got.len())
    })
}
