//! End to end, what a session selects (issue 8): `--filter`, 802.1Q tags in
//! metadata, `--rate-limit`, `--priority`/`--exclusive`, `--dry-run`,
//! `--include-copies` (a tap of the tap, a cycle of three), and the catalogue
//! of bad input. The agent binary, real namespaces, real packets. Run with
//! `cargo xtask test selection_e2e` (root, `--test-threads=1`). Topology:
//! `tests/README.md`.
use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use mirror_common::copy_mark;
use mirror_tests::{
    agent_command,
    capture::{Capture, Frame},
    inject::{self, Injector, TagCapture, TaggedFrame},
    topology::{Netns, SERVER_IP, Topology, session_counter},
    traffic::{ping, tcp_transfer},
    wait_until,
};
use serde_json::Value;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PINGS: u32 = 10;

// ---------------------------------------------------------------- helpers

/// A UDP socket bound to `ip:port` inside `ns` (0: any port), with a receive
/// buffer large enough that nothing sent in these tests overflows it.
fn udp_socket(ns: &Netns, ip: Ipv4Addr, port: u16) -> UdpSocket {
    ns.run(|| {
        let sock = UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt with a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        sock
    })
}

/// Counts the datagrams a socket receives, on a thread of its own, and
/// remembers when the last one arrived.
#[derive(Debug)]
struct Sink {
    count: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(sock: UdpSocket) -> Self {
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let count = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, l, s) = (count.clone(), last.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                while sock.recv(&mut buf).is_ok() {
                    *l.lock().unwrap() = Some(Instant::now());
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self { count, last, stop, handle: Some(handle) }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` datagrams have arrived; returns when the last came.
    fn wait_for(&self, n: u64) -> Instant {
        wait_until(
            Duration::from_secs(10),
            &format!("{n} datagrams received (have {})", self.count()),
            || self.count() >= n,
        );
        self.last.lock().unwrap().expect("a datagram arrived")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `counters.<dir>.<reason>.packets` of a session in a `stats --json` reading.
fn packets(stats: &Value, session: &str, dir: &str, reason: &str) -> u64 {
    session_counter(stats, session, dir, reason)
}

/// `counters.<dir>.<reason>.bytes` of a session.
fn bytes(stats: &Value, session: &str, dir: &str, reason: &str) -> u64 {
    let s = stats["sessions"].as_array().unwrap().iter().find(|s| s["name"] == session).unwrap();
    s["counters"][dir][reason]["bytes"].as_u64().unwrap_or_else(|| panic!("no {dir}.{reason} in {s}"))
}

/// A global counter (copies not mirrored again, map misses).
fn global(stats: &Value, dir: &str, reason: &str) -> u64 {
    stats["global"][dir][reason]["packets"].as_u64().unwrap_or_else(|| panic!("no global {dir}.{reason}"))
}

/// The IPv4 header fields the predicates below look at, from a frame's data.
#[derive(Debug)]
struct Ip4<'a> {
    proto: u8,
    src: [u8; 4],
    /// The transport header, if this is the first (or only) fragment.
    l4: Option<&'a [u8]>,
}

fn ip4(head: &[u8]) -> Option<Ip4<'_>> {
    if head.len() < 34 || head[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &head[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    Some(Ip4 {
        proto: ip[9],
        src: ip[12..16].try_into().unwrap(),
        l4: (first && ip.len() > ihl).then(|| &ip[ihl..]),
    })
}

/// (source, destination) ports of a `proto` frame (6 or 17).
fn ports(head: &[u8], proto: u8) -> Option<(u16, u16)> {
    let ip = ip4(head).filter(|p| p.proto == proto)?;
    let l4 = ip.l4.filter(|l| l.len() >= 4)?;
    Some((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])))
}

fn tcp_flags(head: &[u8]) -> Option<u8> {
    let ip = ip4(head).filter(|p| p.proto == 6)?;
    ip.l4.and_then(|l| l.get(13).copied())
}

fn is_icmp(head: &[u8]) -> bool {
    ip4(head).is_some_and(|p| p.proto == 1)
}

fn is_udp(head: &[u8]) -> bool {
    ip4(head).is_some_and(|p| p.proto == 17)
}

/// A frame as compared across captures: its length and its first bytes.
fn key(f: &Frame) -> (usize, Vec<u8>) {
    (f.len, f.head.clone())
}

fn sorted_keys<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<(usize, Vec<u8>)> {
    let mut k: Vec<_> = frames.into_iter().map(key).collect();
    k.sort();
    k
}

fn count(frames: &[Frame], f: impl Fn(&[u8]) -> bool) -> usize {
    frames.iter().filter(|x| f(&x.head)).count()
}

/// `n` datagrams of 32 bytes from `from` to `to`.
fn send_udp(from: &UdpSocket, to: (Ipv4Addr, u16), n: usize) {
    for i in 0..n {
        from.send_to(&[i as u8; 32], to).expect("send");
    }
}

// ---------------------------------------------------------------- filters

/// `--filter` end to end: six sessions on vc, each with its own selection
/// and collector, over one run of mixed traffic (pings, UDP both ways to two
/// ports, a TCP transfer). Each collector receives exactly, byte for byte,
/// the frames vc carried (captured where they arrive: the server for vc's
/// ingress, the client for its egress) that the selection picks under
/// tcpdump's semantics, and the counts are those of what the test sent: 2 per
/// ping for `icmp`, the 9 datagrams to or from 5353, 1 SYN + 1 SYN-ACK for the
/// one connection, 1 per ping from the client, everything else for `not
/// icmp`; and for rules (`10 reject udp dport 5353`, `20 accept udp`, `30
/// accept tcp flags S/S`, given out of order) then `dst host 198.18.0.2`: the
/// 4 datagrams to 6000 and the SYN (each rule, the order of the numbers, the
/// default and the expression each change that). Per session and
/// direction, `filtered` + `matched` = the frames vc carried, `mirrored` =
/// `matched`.
#[test]
fn filters_copy_exactly_what_tcpdump_selects() {
    type Select = fn(&[u8]) -> bool;
    const TO_5353: usize = 6;
    const TO_6000: usize = 4;
    const FROM_5353: usize = 3;
    let topo = Topology::new(6);
    let agent = topo.agent();
    let cases: [(&[&str], Select); 6] = [
        (&["--filter", "icmp"], is_icmp),
        (&["--filter", "udp port 5353"], |h| ports(h, 17).is_some_and(|(s, d)| s == 5353 || d == 5353)),
        (&["--filter", "tcp[tcpflags] & tcp-syn != 0"], |h| tcp_flags(h).is_some_and(|f| f & 0x02 != 0)),
        (&["--filter", "src host 198.18.0.1 and icmp"], |h| {
            ip4(h).is_some_and(|p| p.proto == 1 && p.src == CLIENT.octets())
        }),
        (&["--filter", "not icmp"], |h| !is_icmp(h)),
        // Rules (first match by number, default reject), then the expression.
        (
            &[
                "--rule",
                "30 accept tcp flags S/S",
                "--rule",
                "10 reject udp dport 5353",
                "--rule",
                "20 accept udp",
                "--filter",
                "dst host 198.18.0.2",
            ],
            |h| {
                let rules = ports(h, 17).is_some_and(|(_, d)| d != 5353)
                    || tcp_flags(h).is_some_and(|f| f & 0x02 != 0);
                rules && h[30..34] == SERVER.octets()
            },
        ),
    ];
    for (i, (select, _)) in cases.iter().enumerate() {
        let (name, dest) = (format!("f{i}"), format!("vk{i}"));
        let mut args = vec!["attach", "--name", &name, "--source", "vc", "--dest", &dest];
        args.extend_from_slice(select);
        agent.ok(&args);
    }
    let server_5353 = udp_socket(&topo.server, SERVER, 5353);
    let server_6000 = Sink::start(udp_socket(&topo.server, SERVER, 6000));
    let client = udp_socket(&topo.client, CLIENT, 40000);
    let copies: Vec<Capture> = topo.collectors.iter().map(|c| Capture::start(c, "eth0")).collect();
    let into_vc = Capture::start(&topo.server, "eth0"); // what vc received, forwarded to the server
    let out_of_vc = Capture::start(&topo.client, "eth0"); // what vc sent

    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!((r.transmitted, r.received), (u64::from(PINGS), u64::from(PINGS)), "pings lost");
    send_udp(&client, (SERVER, 5353), TO_5353);
    send_udp(&client, (SERVER, 6000), TO_6000);
    send_udp(&server_5353, (CLIENT, 40000), FROM_5353);
    let server_5353 = Sink::start(server_5353);
    let client = Sink::start(client);
    server_5353.wait_for(TO_5353 as u64);
    server_6000.wait_for(TO_6000 as u64);
    client.wait_for(FROM_5353 as u64);
    let (sent, received, len) = tcp_transfer(&topo.client, &topo.server, SERVER_IP, 7000, 256 << 10);
    assert_eq!((sent, len), (received, 256 << 10), "TCP transfer corrupted");

    let ingress = into_vc.stop();
    let egress = out_of_vc.stop();
    let copies: Vec<Vec<Frame>> = copies.into_iter().map(Capture::stop).collect();
    let stats = agent.stats();

    // The traffic is what the test sent, and nothing else.
    let pings = PINGS as usize;
    assert_eq!(count(&ingress, is_icmp), pings);
    assert_eq!(count(&egress, is_icmp), pings);
    assert_eq!(count(&ingress, is_udp), TO_5353 + TO_6000);
    assert_eq!(count(&egress, is_udp), FROM_5353);
    assert!(
        ingress.iter().chain(&egress).all(|f| ip4(&f.head).is_some_and(|p| [1, 6, 17].contains(&p.proto)))
    );

    for (i, (expr, select)) in cases.iter().enumerate() {
        let want = sorted_keys(ingress.iter().chain(&egress).filter(|f| select(&f.head)));
        let got = sorted_keys(&copies[i]);
        assert_eq!(got.len(), want.len(), "{expr:?}: copies at collector {i}");
        assert!(got == want, "{expr:?}: the copies are not the frames it selects");
        let name = format!("f{i}");
        for (dir, seen) in [("ingress", &ingress), ("egress", &egress)] {
            let selected = count(seen, select) as u64;
            let (m, f) = (packets(&stats, &name, dir, "matched"), packets(&stats, &name, dir, "filtered"));
            assert_eq!((m, f), (selected, seen.len() as u64 - selected), "{expr:?} {dir}: matched, filtered");
            assert_eq!(packets(&stats, &name, dir, "mirrored"), m, "{expr:?} {dir}");
        }
    }
    // The exact counts of what was sent.
    let tcp_frames = count(&ingress, |h| tcp_flags(h).is_some()) + count(&egress, |h| tcp_flags(h).is_some());
    assert!(tcp_frames >= 6, "a TCP connection with data has at least 6 frames: {tcp_frames}");
    let expected =
        [2 * pings, TO_5353 + FROM_5353, 2, pings, ingress.len() + egress.len() - 2 * pings, TO_6000 + 1];
    let got: Vec<usize> = copies.iter().map(Vec::len).collect();
    assert_eq!(got, expected, "copies per selection {:?}", cases.map(|c| c.0));
    // SYN and SYN-ACK: one each way.
    assert_eq!(copies[2].iter().filter(|f| tcp_flags(&f.head) == Some(0x02)).count(), 1);
    assert_eq!(copies[2].iter().filter(|f| tcp_flags(&f.head) == Some(0x12)).count(), 1);
}

// ---------------------------------------------------------------- VLAN

/// 802.1Q tags in metadata. Tagged frames (VID 100 and VID 200, PCP 3)
/// injected with AF_PACKET into the client's eth0 reach vc's tc ingress with
/// the tag already moved into skb metadata (the receive path untags before
/// tc). With tcpdump's semantics: `vlan 100 and udp` copies exactly the
/// VID-100 UDP frames, `vlan 200 and udp` the VID-200 ones, `vlan` every
/// tagged frame (UDP and ICMP), and `udp` none of the tagged ones but every
/// untagged one. Each copy keeps the tag: at the collector it shows as the
/// original did at vc (veth keeps a tag in metadata on transmit, and the
/// receive path untags an inline one anyway): the data is the injected frame
/// without its 4 tag bytes, PACKET_AUXDATA gives the same TPID and the whole
/// TCI. The server gets the untagged datagrams only.
#[test]
fn vlan_tags_in_metadata_count_as_tags_and_travel_with_the_copy() {
    const VID_A: u16 = 100;
    const VID_B: u16 = 200;
    let topo = Topology::new(4);
    let agent = topo.agent();
    let sessions = ["vlan 100 and udp", "udp", "vlan", "vlan 200 and udp"];
    for (i, expr) in sessions.iter().enumerate() {
        agent.ok(&[
            "attach",
            "--name",
            &format!("t{i}"),
            "--source",
            "vc",
            "--dest",
            &format!("vk{i}"),
            "--direction",
            "ingress",
            "--filter",
            expr,
        ]);
    }
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 5353));
    let caps: Vec<TagCapture> = topo.collectors.iter().map(|c| TagCapture::start(c, "eth0")).collect();

    // (tag, is UDP, how many): distinct counts, distinct payloads.
    let groups: [(Option<u16>, bool, u16); 4] =
        [(Some(VID_A), true, 7), (Some(VID_B), true, 5), (Some(VID_A), false, 3), (None, true, 4)];
    let mut sent: Vec<(Option<u16>, bool, Vec<u8>)> = Vec::new();
    for (g, &(vid, udp, n)) in groups.iter().enumerate() {
        for seq in 0..n {
            let payload = [g as u8, seq as u8, 0xa5, 0x5a].repeat(8);
            let ip = if udp {
                inject::ipv4(CLIENT, SERVER, 17, seq, &inject::udp(1000 + g as u16, 5353, &payload))
            } else {
                inject::ipv4(CLIENT, SERVER, 1, seq, &inject::icmp_echo(0x4242, seq, &payload))
            };
            // PCP 3 in the TCI too: the whole TCI must travel.
            let tci = vid.map(|v| 3 << 13 | v);
            sent.push((
                tci,
                udp,
                inject::ethernet(inject::SERVER_MAC, inject::CLIENT_MAC, tci, inject::ETH_P_IP, &ip),
            ));
        }
    }
    let injector = Injector::open(&topo.client, "eth0");
    for (_, _, frame) in &sent {
        injector.send(frame);
    }
    let untagged = u64::from(groups[3].2);
    sink.wait_for(untagged);
    let got: Vec<Vec<TaggedFrame>> = caps.into_iter().map(TagCapture::stop).collect();

    // What a copy of each injected frame looks like at a collector.
    let as_received = |(tci, _, frame): &(Option<u16>, bool, Vec<u8>)| match tci {
        Some(tci) => {
            let mut data = frame[..12].to_vec();
            data.extend_from_slice(&frame[16..]);
            TaggedFrame { len: frame.len() - 4, meta_tag: Some((inject::ETH_P_8021Q, *tci)), head: data }
        }
        None => TaggedFrame { len: frame.len(), meta_tag: None, head: frame.clone() },
    };
    type Pick = fn(&(Option<u16>, bool, Vec<u8>)) -> bool;
    let picks: [Pick; 4] = [
        |(t, udp, _)| *udp && t.is_some_and(|t| t & 0xfff == VID_A),
        |(t, udp, _)| *udp && t.is_none(),
        |(t, _, _)| t.is_some(),
        |(t, udp, _)| *udp && t.is_some_and(|t| t & 0xfff == VID_B),
    ];
    let stats = agent.stats();
    for (i, expr) in sessions.iter().enumerate() {
        let want: Vec<TaggedFrame> = sent.iter().filter(|s| picks[i](s)).map(as_received).collect();
        assert_eq!(got[i], want, "`{expr}`: the copies at collector {i}");
        let name = format!("t{i}");
        assert_eq!(packets(&stats, &name, "ingress", "mirrored"), want.len() as u64, "`{expr}`");
        assert_eq!(packets(&stats, &name, "ingress", "matched"), want.len() as u64, "`{expr}`");
        assert_eq!(
            packets(&stats, &name, "ingress", "filtered"),
            (sent.len() - want.len()) as u64,
            "`{expr}`"
        );
    }
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [7, 4, 15, 5]);
    assert!(got[0].iter().all(|f| f.meta_vid() == Some(VID_A)));
    // The stack drops tagged frames at the server (it has no VLAN device).
    assert_eq!(sink.count(), untagged, "the server received a tagged datagram");
}

// ---------------------------------------------------------------- rate limit

/// `--rate-limit 1000 --burst 50` on a UDP flood into vc. After idle, 200
/// datagrams back to back get the burst of 50 plus what the rate adds while
/// they pass (at most 1000/s × the time until the last one reached the
/// server). Then 20 000 datagrams paced at 10 kpps over 2 s get 50 + 1000 × the
/// elapsed time, within 30 % (and never more than that bound taken to the
/// last arrival). Every datagram not copied is counted `rate_limited`
/// (`matched` + `rate_limited` = datagrams sent, exactly), the collector gets
/// exactly `mirrored` copies, and the server receives every datagram.
#[test]
fn the_rate_limit_caps_copies_and_never_touches_originals() {
    const RATE: f64 = 1000.0;
    const BURST: u64 = 50;
    const FIRST: u64 = 200;
    const FLOOD: u64 = 20_000;
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&[
        "attach",
        "--name",
        "rl",
        "--source",
        "vc",
        "--dest",
        "vk0",
        "--direction",
        "ingress",
        "--rate-limit",
        "1000",
        "--burst",
        "50",
    ]);
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 9000));
    let client = udp_socket(&topo.client, CLIENT, 0);
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let payload = [0x55u8; 64];

    // A burst after idle.
    let t0 = Instant::now();
    for _ in 0..FIRST {
        client.send_to(&payload, (SERVER, 9000)).expect("send");
    }
    let span = sink.wait_for(FIRST) - t0;
    let first = agent.packets("rl", "ingress", "mirrored");
    let most = BURST + (RATE * span.as_secs_f64()).ceil() as u64 + 1;
    println!("burst: {first} copies of {FIRST} in {span:?} (expected {BURST}..={most})");
    assert!(
        (BURST..=most).contains(&first),
        "burst: {first} copies of {FIRST} in {span:?}, expected {BURST}..={most}"
    );

    // Let the bucket refill (50 copies at 1 ms each), then a paced flood.
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    let mut sending = Duration::ZERO;
    for batch in 0..FLOOD / 100 {
        for _ in 0..100 {
            client.send_to(&payload, (SERVER, 9000)).expect("send");
        }
        sending = t1.elapsed();
        let next = t1 + Duration::from_millis(10 * (batch + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let span = sink.wait_for(FIRST + FLOOD) - t1;
    let stats = agent.stats();
    let flood = packets(&stats, "rl", "ingress", "mirrored") - first;
    let expected = BURST as f64 + RATE * sending.as_secs_f64();
    let (low, high) = (0.7 * expected, (1.3 * expected).min(BURST as f64 + RATE * span.as_secs_f64() + 2.0));
    println!(
        "flood: {flood} copies of {FLOOD} in {sending:?} (expected {expected:.0}, {low:.0}..={high:.0})"
    );
    assert!(
        (low..=high).contains(&(flood as f64)),
        "flood: {flood} copies of {FLOOD} over {sending:?}: expected {expected:.0} ({low:.0}..={high:.0})"
    );

    let copies = cap.stop();
    let mirrored = first + flood;
    assert_eq!(copies.len() as u64, mirrored, "copies at the collector");
    assert!(copies.iter().all(|f| ports(&f.head, 17).is_some_and(|(_, d)| d == 9000)));
    assert_eq!(packets(&stats, "rl", "ingress", "matched"), mirrored);
    assert_eq!(packets(&stats, "rl", "ingress", "rate_limited"), FIRST + FLOOD - mirrored);
    assert_eq!(
        bytes(&stats, "rl", "ingress", "rate_limited"),
        (FIRST + FLOOD - mirrored) * (14 + 20 + 8 + 64)
    );
    assert_eq!(sink.count(), FIRST + FLOOD, "production datagrams lost");
}

// ---------------------------------------------------------------- priority

/// `--priority` / `--exclusive`: two exclusive sessions on vc, `icmp or udp`
/// at priority 20 (attached first) and `icmp` at priority 10: the lower
/// number takes every ICMP frame (echo requests and replies), the other gets
/// only the UDP datagrams and counts each ICMP frame `preempted`; a plain
/// session on the same source still gets everything.
#[test]
fn exclusive_sessions_take_packets_by_priority_and_plain_ones_still_fan_out() {
    const DATAGRAMS: u64 = 7;
    let topo = Topology::new(3);
    let agent = topo.agent();
    let attach = |name: &str, dest: &str, extra: &[&str]| {
        let mut args = vec!["attach", "--name", name, "--source", "vc", "--dest", dest];
        args.extend_from_slice(extra);
        agent.ok(&args);
    };
    attach("wide", "vk1", &["--exclusive", "--priority", "20", "--filter", "icmp or udp"]);
    attach("narrow", "vk0", &["--exclusive", "--priority", "10", "--filter", "icmp"]);
    attach("all", "vk2", &[]);
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 5353));
    let client = udp_socket(&topo.client, CLIENT, 0);
    let caps: Vec<Capture> = topo.collectors.iter().map(|c| Capture::start(c, "eth0")).collect();
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, u64::from(PINGS), "pings lost");
    send_udp(&client, (SERVER, 5353), DATAGRAMS as usize);
    sink.wait_for(DATAGRAMS);
    let got: Vec<Vec<Frame>> = caps.into_iter().map(Capture::stop).collect();

    let p = PINGS as usize;
    let d = DATAGRAMS as usize;
    let shape = |f: &[Frame]| (count(f, is_icmp), count(f, is_udp), f.len());
    assert_eq!(shape(&got[0]), (2 * p, 0, 2 * p), "narrow (priority 10)");
    assert_eq!(shape(&got[1]), (0, d, d), "wide (priority 20)");
    assert_eq!(shape(&got[2]), (2 * p, d, 2 * p + d), "plain session");

    let s = agent.stats();
    let p = u64::from(PINGS);
    let row = |name: &str, dir: &str| ["matched", "filtered", "preempted"].map(|r| packets(&s, name, dir, r));
    assert_eq!(row("narrow", "ingress"), [p, DATAGRAMS, 0]);
    assert_eq!(row("narrow", "egress"), [p, 0, 0]);
    assert_eq!(row("wide", "ingress"), [DATAGRAMS, 0, p]);
    assert_eq!(row("wide", "egress"), [0, 0, p]);
    assert_eq!(row("all", "ingress"), [p + DATAGRAMS, 0, 0]);
    assert_eq!(row("all", "egress"), [p, 0, 0]);
    let list = agent.list();
    let select = |name: &str| {
        list["sessions"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap()["select"].clone()
    };
    assert_eq!(
        (select("narrow")["priority"].as_u64(), select("narrow")["exclusive"].as_bool()),
        (Some(10), Some(true))
    );
    assert_eq!(
        (select("wide")["priority"].as_u64(), select("wide")["exclusive"].as_bool()),
        (Some(20), Some(true))
    );
    assert_eq!(
        (select("all")["priority"].as_u64(), select("all")["exclusive"].as_bool()),
        (Some(32768), Some(false))
    );

    // Only the priority changes (`--replace`): the slots are reordered, and
    // `wide` (20) now takes what both match, before `narrow` (30).
    agent.ok(&[
        "attach",
        "--replace",
        "--name",
        "narrow",
        "--source",
        "vc",
        "--dest",
        "vk0",
        "--exclusive",
        "--priority",
        "30",
        "--filter",
        "icmp",
    ]);
    let caps: Vec<Capture> = topo.collectors.iter().take(2).map(|c| Capture::start(c, "eth0")).collect();
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, u64::from(PINGS), "pings lost");
    let got: Vec<Vec<Frame>> = caps.into_iter().map(Capture::stop).collect();
    assert_eq!(shape(&got[0]), (0, 0, 0), "narrow, now priority 30");
    assert_eq!(shape(&got[1]), (2 * PINGS as usize, 0, 2 * PINGS as usize), "wide, now first");
}

/// A rate limit replaced by another starts from a full bucket: a low rate
/// with a large burst, used up, leaves the bucket running minutes ahead of
/// now; the new, higher rate must not inherit that debt.
#[test]
fn a_replaced_rate_limit_starts_from_a_full_bucket() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let attach = |rate: &str, burst: &str, replace: bool| {
        let mut args =
            vec!["attach", "--name", "r", "--source", "vc", "--dest", "vk0", "--direction", "ingress"];
        args.extend_from_slice(&["--rate-limit", rate, "--burst", burst]);
        if replace {
            args.push("--replace");
        }
        agent.ok(&args);
    };
    attach("10", "500", false);
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 5353));
    let client = udp_socket(&topo.client, CLIENT, 0);
    send_udp(&client, (SERVER, 5353), 600);
    sink.wait_for(600);
    // 500 burst (+1): the bucket now runs ~50 s ahead.
    let mirrored = |a: &mirror_tests::topology::Agent<'_>| packets(&a.stats(), "r", "ingress", "mirrored");
    assert!((500..=503).contains(&mirrored(&agent)), "{}", mirrored(&agent));
    attach("100k", "1000", true);
    let before = mirrored(&agent);
    send_udp(&client, (SERVER, 5353), 100);
    sink.wait_for(700);
    assert_eq!(mirrored(&agent) - before, 100, "the new rate inherited the old bucket's debt");
}

// ---------------------------------------------------------------- dry run

/// `--dry-run` with `--filter 'icmp[icmptype] = icmp-echo'` on vc: the
/// collector receives nothing; `dry_run` counts exactly what would have been
/// copied, one per echo request, with their bytes; the replies and the UDP
/// datagrams are `filtered`; nothing is `matched` or `mirrored`; `list --json`
/// shows `"dry_run": true` under `select`.
#[test]
fn a_dry_run_counts_what_it_would_copy_and_copies_nothing() {
    const DATAGRAMS: u64 = 5;
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&[
        "attach",
        "--name",
        "dry",
        "--source",
        "vc",
        "--dest",
        "vk0",
        "--dry-run",
        "--filter",
        "icmp[icmptype] = icmp-echo",
    ]);
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 5353));
    let client = udp_socket(&topo.client, CLIENT, 0);
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let into_vc = Capture::start(&topo.server, "eth0");
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, u64::from(PINGS), "pings lost");
    send_udp(&client, (SERVER, 5353), DATAGRAMS as usize);
    sink.wait_for(DATAGRAMS);
    let requests = into_vc.stop();
    let copies = cap.stop();
    assert!(copies.is_empty(), "a dry run sent {} copies", copies.len());

    let s = agent.stats();
    let p = u64::from(PINGS);
    let request_bytes: usize = requests.iter().filter(|f| f.is_echo_request()).map(|f| f.len).sum();
    assert_eq!(requests.iter().filter(|f| f.is_echo_request()).count() as u64, p);
    assert_eq!(packets(&s, "dry", "ingress", "dry_run"), p);
    assert_eq!(bytes(&s, "dry", "ingress", "dry_run"), request_bytes as u64);
    assert_eq!(packets(&s, "dry", "ingress", "filtered"), DATAGRAMS);
    assert_eq!(packets(&s, "dry", "egress", "filtered"), p, "echo replies");
    for dir in ["ingress", "egress"] {
        assert_eq!(packets(&s, "dry", dir, "matched"), 0, "{dir}");
        assert_eq!(packets(&s, "dry", dir, "mirrored"), 0, "{dir}");
    }
    assert_eq!(packets(&s, "dry", "egress", "dry_run"), 0);
    let select = &agent.list()["sessions"][0]["select"];
    assert_eq!(select["dry_run"], Value::Bool(true), "{select}");
    // Shown in canonical form: the named offset and value as numbers.
    assert_eq!(select["filter"].as_str(), Some("icmp[0] = 8"), "{select}");
}

/// Filters run as native code by default; `MIRROR_AGENT_NATIVE_FILTERS=0`
/// on a command that changes sessions turns that off for the sessions
/// already there too (the escape hatch; a read-only command changes
/// nothing), and they go on filtering exactly the same, interpreted.
#[test]
fn native_filters_can_be_turned_off_and_filtering_goes_on() {
    const DATAGRAMS: u64 = 5;
    let topo = Topology::new(2);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "f", "--source", "vc", "--dest", "vk0", "--filter", "udp dst port 5353"]);
    let native = |list: &Value, i: usize| list["sessions"][i]["select"]["filter_native"].clone();
    assert_eq!(native(&agent.list(), 0), Value::Bool(true), "native by default");
    let switched_off = |args: &[&str]| {
        mirror_tests::run_command(
            agent_command()
                .env(mirror_agent::dataplane::native::SWITCH, "0")
                .args(["-n", &topo.host.name])
                .args(args),
        )
    };
    let listed: Value =
        serde_json::from_slice(&switched_off(&["list", "--json"]).stdout).expect("list --json");
    assert_eq!(native(&listed, 0), Value::Bool(true), "a read-only command changes nothing");
    switched_off(&["attach", "--name", "g", "--source", "vs", "--dest", "vk1", "--filter", "icmp"]);
    let list = agent.list();
    assert_eq!(native(&list, 0), Value::Bool(false), "turned off by the next change");
    assert_eq!(native(&list, 1), Value::Bool(false), "and not written for the new filter");
    let sink = Sink::start(udp_socket(&topo.server, SERVER, 5353));
    let other = Sink::start(udp_socket(&topo.server, SERVER, 6000));
    let client = udp_socket(&topo.client, CLIENT, 0);
    send_udp(&client, (SERVER, 5353), DATAGRAMS as usize);
    send_udp(&client, (SERVER, 6000), DATAGRAMS as usize);
    sink.wait_for(DATAGRAMS);
    other.wait_for(DATAGRAMS);
    let s = agent.stats();
    assert_eq!(packets(&s, "f", "ingress", "mirrored"), DATAGRAMS, "interpreted, the same copies");
    assert!(packets(&s, "f", "ingress", "filtered") >= DATAGRAMS, "and ARP");
}

// ---------------------------------------------------------------- copies of copies

/// Tap of the tap (the Tap-as-a-Service seed's TODO): session `a` copies vc
/// to vk0; session `b` taps vk0's egress (what vk0 sends: `a`'s copies) into
/// vk1 with `--include-copies`. Collector 1 receives exactly `a`'s copies, byte
/// for byte the frames collector 0 receives (2 per ping). Without
/// `--include-copies`, a session in its place receives none, and each of
/// `a`'s copies is counted once as `copy_not_remirrored` in the global
/// counters.
#[test]
fn a_tap_of_the_tap_gets_exactly_the_copies_only_with_include_copies() {
    let topo = Topology::new(2);
    let agent = topo.agent();
    let p = PINGS as usize;
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0"]);
    let tap_args = |name: &'static str| {
        ["attach", "--name", name, "--source", "vk0", "--direction", "egress", "--dest", "vk1"]
    };
    let mut args = tap_args("b").to_vec();
    args.push("--include-copies");
    agent.ok(&args);

    let run = || {
        let caps = [Capture::start(&topo.collectors[0], "eth0"), Capture::start(&topo.collectors[1], "eth0")];
        let r = ping(&topo.client, SERVER_IP, PINGS);
        assert_eq!(r.received, u64::from(PINGS), "pings lost");
        caps.map(Capture::stop)
    };
    let before = agent.stats();
    let [c0, c1] = run();
    let after = agent.stats();
    assert_eq!((count(&c0, is_icmp), c0.len()), (2 * p, 2 * p), "a's copies");
    assert!(
        sorted_keys(&c1) == sorted_keys(&c0),
        "the tap of the tap: {} frames, not a's {}",
        c1.len(),
        c0.len()
    );
    assert_eq!(packets(&after, "b", "egress", "mirrored"), 2 * p as u64);
    assert_eq!(packets(&after, "b", "egress", "hop_limit"), 0);
    assert_eq!(packets(&after, "b", "ingress", "matched"), 0);
    for dir in ["ingress", "egress"] {
        assert_eq!(
            global(&after, dir, "copy_not_remirrored"),
            global(&before, dir, "copy_not_remirrored"),
            "{dir}"
        );
    }

    agent.ok(&["detach", "b"]);
    agent.ok(&tap_args("b2"));
    let before = agent.stats();
    let [c0, c1] = run();
    let after = agent.stats();
    assert_eq!(c0.len(), 2 * p, "a's copies");
    assert!(c1.is_empty(), "a tap without --include-copies got {} copies", c1.len());
    assert_eq!(
        global(&after, "egress", "copy_not_remirrored") - global(&before, "egress", "copy_not_remirrored"),
        2 * p as u64
    );
    assert_eq!(
        global(&after, "ingress", "copy_not_remirrored"),
        global(&before, "ingress", "copy_not_remirrored")
    );
    for reason in ["matched", "filtered", "hop_limit"] {
        assert_eq!(packets(&after, "b2", "egress", reason), 0, "{reason}");
    }
}

/// A cycle of three sessions that all include copies: `a` vk0 → vk1, `b` vk1
/// → vk2, `c` vk2 → vk0, each tapping its source's egress. N originals are
/// sent out of vk0 (AF_PACKET in the host namespace): `a` copies each (depth
/// 1), `b` copies that copy (2), `c` copies `b`'s (3), and `a` counts `c`'s
/// copy `hop_limit` rather than copying it a fourth time. So exactly
/// `MAX_DEPTH` = 3 copies per original, each byte for byte the original:
/// collectors 1 and 2 receive N each, collector 0 the N originals and `c`'s N
/// copies. Nothing loops: two readings of every counter 1 s after the
/// traffic are equal.
#[test]
fn a_cycle_of_three_sessions_including_copies_is_bounded_by_the_hop_limit() {
    const N: u16 = 40;
    let topo = Topology::new(3);
    let agent = topo.agent();
    for (name, src, dst) in [("a", "vk0", "vk1"), ("b", "vk1", "vk2"), ("c", "vk2", "vk0")] {
        agent.ok(&[
            "attach",
            "--name",
            name,
            "--source",
            src,
            "--direction",
            "egress",
            "--dest",
            dst,
            "--include-copies",
        ]);
    }
    let caps: Vec<Capture> = topo.collectors.iter().map(|c| Capture::start(c, "eth0")).collect();
    let before = agent.stats();
    let injector = Injector::open(&topo.host, "vk0");
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let ip =
                inject::ipv4(CLIENT, SERVER, 17, i, &inject::udp(1000, 2000, &i.to_be_bytes().repeat(16)));
            inject::ethernet(
                [0x02, 0, 0xc6, 0x12, 0, 0x99],
                [0x02, 0, 0xc6, 0x12, 0, 0x98],
                None,
                inject::ETH_P_IP,
                &ip,
            )
        })
        .collect();
    for f in &frames {
        injector.send(f);
    }
    let got: Vec<Vec<Frame>> = caps.into_iter().map(Capture::stop).collect();

    let originals: Vec<Frame> =
        frames.iter().map(|f| Frame { len: f.len(), head: f[..f.len().min(128)].to_vec() }).collect();
    let twice: Vec<Frame> = originals.iter().chain(&originals).cloned().collect();
    assert!(sorted_keys(&got[1]) == sorted_keys(&originals), "collector 1: {} frames", got[1].len());
    assert!(sorted_keys(&got[2]) == sorted_keys(&originals), "collector 2: {} frames", got[2].len());
    assert!(sorted_keys(&got[0]) == sorted_keys(&twice), "collector 0: {} frames", got[0].len());
    let copies = got[1].len() + got[2].len() + got[0].len() - originals.len();
    assert_eq!(copies, copy_mark::MAX_DEPTH as usize * usize::from(N));

    let s1 = agent.stats();
    let n = u64::from(N);
    let delta = |name: &str, reason: &str| {
        packets(&s1, name, "egress", reason) - packets(&before, name, "egress", reason)
    };
    assert_eq!(["a", "b", "c"].map(|x| delta(x, "mirrored")), [n, n, n], "one copy per session and original");
    assert_eq!(["a", "b", "c"].map(|x| delta(x, "hop_limit")), [n, 0, 0], "c's copies, 3 deep, stop at a");
    assert_eq!(
        global(&s1, "egress", "copy_not_remirrored"),
        global(&before, "egress", "copy_not_remirrored")
    );
    std::thread::sleep(Duration::from_secs(1));
    let s2 = agent.stats();
    assert_eq!(s1["sessions"], s2["sessions"], "counters still moving: a loop");
    assert_eq!(s1["global"], s2["global"], "global counters still moving: a loop");
}

// ---------------------------------------------------------------- bad input

/// `mirror-agent -n <host> attach --name x --source vc --dest vk0 ARGS…` with
/// no log level set: (exit code, stderr).
fn attach_fails(topo: &Topology, args: &[&str]) -> (Option<i32>, String) {
    let out = agent_command()
        .args(["-n", &topo.host.name, "attach", "--name", "x", "--source", "vc", "--dest", "vk0"])
        .args(args)
        .env_remove("MIRROR_AGENT_LOG")
        .output()
        .expect("spawning mirror-agent");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every pin under `dir` with its inode: a pin replaced shows.
fn pins(dir: &std::path::Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path().display().to_string(), md.ino()));
        }
    }
    out.sort();
    out
}

/// The agent's own refusals: (arguments, message after `mirror-agent: error: `).
const REFUSED: &[(&[&str], &str)] = &[
    // Expressions.
    (&["--filter", "foo"], "invalid --filter: column 1: unknown keyword `foo`\n  foo\n  ^^^"),
    (
        &["--filter", "host example.com"],
        "invalid --filter: column 6: host names are not resolved: use a numeric address\n  host example.com\n       ^^^^^^^^^^^",
    ),
    (
        &["--filter", "port http"],
        "invalid --filter: column 6: port names are not resolved: use a number\n  port http\n       ^^^^",
    ),
    (
        &["--filter", "port 70000"],
        "invalid --filter: column 6: port 70000 is out of range (0..=65535)\n  port 70000\n       ^^^^^",
    ),
    (
        &["--filter", "net 198.18.0.0/33"],
        "invalid --filter: column 16: prefix length 33 is out of range (0..=32)\n  net 198.18.0.0/33\n                 ^^",
    ),
    (
        &["--filter", "src net 198.18.0.1/16"],
        "invalid --filter: column 9: `198.18.0.1/16` has host bits set (the network is 198.18.0.0/16)\n  src net 198.18.0.1/16\n          ^^^^^^^^^^^^^",
    ),
    (
        &["--filter", "host 198.18.0.256"],
        "invalid --filter: column 6: `198.18.0.256` is not a valid IPv4 address\n  host 198.18.0.256\n       ^^^^^^^^^^^^",
    ),
    (
        &["--filter", "ip6 and net 2001:db8::/129"],
        "invalid --filter: column 24: prefix length 129 is out of range (0..=128)\n  ip6 and net 2001:db8::/129\n                         ^^^",
    ),
    (&["--filter", "(icmp"], "invalid --filter: column 1: unbalanced `(`: no `)` closes it\n  (icmp\n  ^"),
    (&["--filter", "icmp)"], "invalid --filter: column 5: unbalanced `)`: no `(` to close\n  icmp)\n      ^"),
    (
        &["--filter", "icmp garbage"],
        "invalid --filter: column 6: expected `and` or `or` before `garbage`\n  icmp garbage\n       ^^^^^^^",
    ),
    (
        &["--filter", "udp port 53 or"],
        "invalid --filter: column 15: the expression ends early: expected a primitive\n  udp port 53 or\n                ^",
    ),
    (
        &["--filter", "icmp and and udp"],
        "invalid --filter: column 10: expected a primitive before `and`\n  icmp and and udp\n           ^^^",
    ),
    (&["--filter", ""], "invalid --filter: column 1: the filter is empty\n  \n  ^"),
    (
        &["--filter", "vlan 5000"],
        "invalid --filter: column 6: VLAN ID 5000 is out of range (0..=4095)\n  vlan 5000\n       ^^^^",
    ),
    (
        &["--filter", "tcp[1:3] = 0"],
        "invalid --filter: column 7: load size 3 is not 1, 2 or 4\n  tcp[1:3] = 0\n        ^",
    ),
    (
        &["--filter", "gateway 198.18.0.1"],
        "invalid --filter: column 1: `gateway` is not supported by mirror-agent filters\n  gateway 198.18.0.1\n  ^^^^^^^",
    ),
    (
        &["--filter", "proto 300"],
        "invalid --filter: column 7: protocol 300 is out of range (0..=255)\n  proto 300\n        ^^^",
    ),
    (&["--filter", "less"], "invalid --filter: column 5: expected a number after `less`\n  less\n      ^"),
    (
        &["--filter", "tcp[tcpflags] & tcp-foo != 0"],
        "invalid --filter: column 17: expected a number, `len` or a load such as `ip[0]` before `tcp-foo`\n  tcp[tcpflags] & tcp-foo != 0\n                  ^^^^^^^",
    ),
    (
        &["--filter", "icmptype"],
        "invalid --filter: column 9: expected a comparison (=, !=, <, <=, >, >=) after `icmptype`\n  icmptype\n          ^",
    ),
    (&["--filter", "icmp6 and ip"], "invalid --filter: expression rejects all packets"),
    // Rules.
    (
        &["--rule", "accept tcp"],
        "invalid --rule: column 1: a rule starts with its number (1..=32766), not `accept`\n  accept tcp\n  ^^^^^^",
    ),
    (
        &["--rule", "10 allow tcp"],
        "invalid --rule: column 4: unknown action `allow`: expected `accept` or `reject`\n  10 allow tcp\n     ^^^^^",
    ),
    (
        &["--rule", "10 accept tcp", "--rule", "10 reject udp"],
        "invalid rules: two rules are numbered 10: rule numbers must be unique",
    ),
    (
        &["--rule", "0 accept tcp"],
        "invalid --rule: column 1: rule number 0 is out of range (1..=32766)\n  0 accept tcp\n  ^",
    ),
    (
        &["--rule", "40000 accept tcp"],
        "invalid --rule: column 1: rule number 40000 is out of range (1..=32766)\n  40000 accept tcp\n  ^^^^^",
    ),
    (
        &["--rule", "10 accept src 198.18.0.0/16 dst 2001:db8::/32"],
        "invalid --rule: column 33: source 198.18.0.0 and destination 2001:db8:: are not the same IP version\n  10 accept src 198.18.0.0/16 dst 2001:db8::/32\n                                  ^^^^^^^^^^^^^",
    ),
    (
        &["--rule", "10 accept src 198.18.0.1/16"],
        "invalid --rule: column 15: 198.18.0.1/16 has host bits set (the network is 198.18.0.0/16)\n  10 accept src 198.18.0.1/16\n                ^^^^^^^^^^^^^",
    ),
    (
        &["--rule", "10 accept tcp flags SYN/XYZ"],
        "invalid --rule: column 21: unknown TCP flag `Y` in `SYN/XYZ`: expected letters of FSRPAUEC, as in S/SA\n  10 accept tcp flags SYN/XYZ\n                      ^^^^^^^",
    ),
    (
        &["--rule", "10 accept tcp flags S/A"],
        "invalid --rule: column 21: `S/A`: the value has flags outside the mask\n  10 accept tcp flags S/A\n                      ^^^",
    ),
    (
        &["--rule", "10 accept icmp dport 80"],
        "invalid --rule: column 22: ports need protocol tcp, udp or sctp (or none), not icmp\n  10 accept icmp dport 80\n                       ^^",
    ),
    (
        &["--rule", "10 accept icmp flags S/S"],
        "invalid --rule: column 22: flags need protocol tcp (or none), not icmp\n  10 accept icmp flags S/S\n                       ^^^",
    ),
    (
        &["--rule", "10 accept tcp dport 90-80"],
        "invalid --rule: column 21: port range 90-80 is reversed: write 80-90\n  10 accept tcp dport 90-80\n                      ^^^^^",
    ),
    (
        &["--rule", "10 accept tcp dport 80 dport 81"],
        "invalid --rule: column 24: the destination port (`dport`) is given twice\n  10 accept tcp dport 80 dport 81\n                         ^^^^^",
    ),
    (
        &["--rule", "10 accept foo"],
        "invalid --rule: column 11: unknown rule field `foo`: expected a protocol (tcp, udp, sctp, icmp, icmp6, any, proto N), src, dst, sport, dport, flags or dir\n  10 accept foo\n            ^^^",
    ),
    (&["--rule", ""], "invalid --rule: column 1: the rule is empty: expected `NUMBER ACTION ...`\n  \n  ^"),
    (&["--default-action", "accept"], "--default-action needs at least one --rule"),
    // Sampling, rates, bursts, priority.
    (&["--sample", "0"], "--sample 0 is out of range: use 1..=16777216"),
    (&["--sample", "20000000"], "--sample 20000000 is out of range: use 1..=16777216"),
    (&["--sample-flow", "0"], "--sample-flow 0 is out of range: use 1..=16777216"),
    (&["--sample", "1", "--sample-flow", "2"], "--sample and --sample-flow exclude each other"),
    (&["--rate-limit", "0"], "--rate-limit 0 is out of range: use 1..=100000000"),
    (&["--rate-limit", "1G"], "--rate-limit 1000000000 is out of range: use 1..=100000000"),
    (&["--rate-limit-bytes", "0"], "--rate-limit-bytes 0 is out of range: use 1..=100000000000"),
    (&["--burst", "10"], "--burst needs --rate-limit"),
    (&["--rate-limit", "100", "--burst", "0"], "--burst 0 is out of range: use 1..=4294967295"),
    (&["--burst-bytes", "10"], "--burst-bytes needs --rate-limit-bytes"),
    (
        &["--rate-limit-bytes", "1M", "--burst-bytes", "10"],
        "--burst-bytes 10 is out of range: use 64..=4294967295",
    ),
    (&["--priority", "70000"], "--priority 70000 is out of range: use 0..=65535"),
];

/// Refused by the command line parser (exit 2): (arguments, whole stderr).
const USAGE: &[(&[&str], &str)] = &[
    (
        &["--rate-limit", "1e99"],
        "error: invalid value '1e99' for '--rate-limit <PPS>': \"1e99\" is not a count (digits, optionally with a fraction and k, M or G)\n\nFor more information, try '--help'.\n",
    ),
    (
        &["--rate-limit", "10x"],
        "error: invalid value '10x' for '--rate-limit <PPS>': \"10x\" is not a count (digits, optionally with a fraction and k, M or G)\n\nFor more information, try '--help'.\n",
    ),
    (
        &["--default-action", "drop"],
        "error: invalid value 'drop' for '--default-action <ACTION>'\n  [possible values: accept, reject]\n\nFor more information, try '--help'.\n",
    ),
    (
        &["--filter", "tcp", "--filter", "udp"],
        "error: the argument '--filter <EXPR>' cannot be used multiple times\n\nUsage: mirror-agent attach [OPTIONS] --name <NAME> --source <SOURCES> --dest <DEST>\n\nFor more information, try '--help'.\n",
    ),
];

/// The catalogue of bad selections: each is refused with a non-zero exit and
/// its exact message (the full stderr), first with no session (no pin
/// directory appears, `list --json` stays empty), then next to a live session
/// with a filter (`list --json` and every pin, inode included, unchanged).
#[test]
fn bad_selections_are_refused_with_their_exact_message_and_change_nothing() {
    assert!(REFUSED.len() + USAGE.len() >= 30);
    let topo = Topology::new(1);
    let agent = topo.agent();
    let check_all = |after_each: &dyn Fn(&str)| {
        for (args, message) in REFUSED {
            let (code, stderr) = attach_fails(&topo, args);
            assert_eq!(code, Some(1), "{args:?}: {stderr}");
            assert_eq!(stderr, format!("mirror-agent: error: {message}\n"), "{args:?}");
            after_each(&format!("{args:?}"));
        }
        for (args, message) in USAGE {
            let (code, stderr) = attach_fails(&topo, args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr, *message, "{args:?}");
            after_each(&format!("{args:?}"));
        }
    };

    let empty = agent.list();
    assert_eq!(empty["sessions"], Value::Array(vec![]));
    check_all(&|case| {
        assert!(!topo.host.pin_dir().exists(), "{case}: a pin directory appeared");
        assert_eq!(agent.list(), empty, "{case}");
    });

    agent.ok(&[
        "attach",
        "--name",
        "live",
        "--source",
        "vc",
        "--dest",
        "vk0",
        "--filter",
        "icmp",
        "--rate-limit",
        "1k",
    ]);
    let list = agent.list();
    let pinned = pins(&topo.host.pin_dir());
    assert!(!pinned.is_empty());
    check_all(&|case| {
        assert_eq!(agent.list(), list, "{case}");
        assert_eq!(pins(&topo.host.pin_dir()), pinned, "{case}");
    });
    // The live session still copies what it selects.
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, u64::from(PINGS));
    assert_eq!(count(&cap.stop(), is_icmp), 2 * PINGS as usize);
}
