//! End-to-end: the agent binary, real namespaces, real packets. Run with
//! `cargo xtask test` (root, `--test-threads=1`). Topology: `tests/README.md`.
use std::time::Duration;

use mirror_tests::{
    capture::{Capture, Frame},
    topology::{SERVER_IP, Topology},
    traffic::{ping, tcp_transfer},
    wait_until,
};

const PINGS: u32 = 20;

/// Pings client → server while capturing on collector `i`; returns the copies.
fn ping_and_capture(topo: &Topology, collector: usize, count: u32) -> Vec<Frame> {
    let cap = Capture::start(&topo.collectors[collector], "eth0");
    let r = ping(&topo.client, SERVER_IP, count);
    assert_eq!(r.received, r.transmitted, "production traffic lost: {r:?}");
    cap.stop()
}

fn count(frames: &[Frame], f: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|x| f(x)).count()
}

#[test]
fn ingress_only_copies_what_the_source_receives() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "in", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    let frames = ping_and_capture(&topo, 0, PINGS);
    // vc receives what the client sends: echo requests only.
    assert_eq!(count(&frames, Frame::is_echo_request), PINGS as usize, "{frames:?}");
    assert_eq!(count(&frames, Frame::is_echo_reply), 0);
    assert!(agent.packets("in", "ingress", "mirrored") >= u64::from(PINGS));
    assert_eq!(agent.packets("in", "egress", "matched"), 0);
}

#[test]
fn egress_only_copies_what_the_source_sends() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "out", "--source", "vc", "--dest", "vk0", "--direction", "egress"]);
    let frames = ping_and_capture(&topo, 0, PINGS);
    assert_eq!(count(&frames, Frame::is_echo_reply), PINGS as usize, "{frames:?}");
    assert_eq!(count(&frames, Frame::is_echo_request), 0);
    assert_eq!(agent.packets("out", "ingress", "matched"), 0);
}

#[test]
fn both_directions_by_default() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "both", "--source", "vc", "--dest", "vk0"]);
    let frames = ping_and_capture(&topo, 0, PINGS);
    assert_eq!(count(&frames, Frame::is_echo_request), PINGS as usize);
    assert_eq!(count(&frames, Frame::is_echo_reply), PINGS as usize);
    let stats = agent.stats();
    for dir in ["ingress", "egress"] {
        let matched = mirror_tests::topology::session_counter(&stats, "both", dir, "matched");
        let mirrored = mirror_tests::topology::session_counter(&stats, "both", dir, "mirrored");
        assert_eq!(matched, mirrored, "{dir}: every match copied");
        assert!(mirrored >= u64::from(PINGS));
    }
}

#[test]
fn two_sessions_on_one_source_fan_out_and_detach_independently() {
    let topo = Topology::new(2);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0"]);
    agent.ok(&["attach", "--name", "b", "--source", "vc", "--dest", "vk1"]);
    let cap0 = Capture::start(&topo.collectors[0], "eth0");
    let cap1 = Capture::start(&topo.collectors[1], "eth0");
    ping(&topo.client, SERVER_IP, PINGS);
    let (f0, f1) = (cap0.stop(), cap1.stop());
    assert_eq!(count(&f0, Frame::is_echo_request), PINGS as usize);
    assert_eq!(count(&f1, Frame::is_echo_request), PINGS as usize);

    agent.ok(&["detach", "a"]);
    let cap0 = Capture::start(&topo.collectors[0], "eth0");
    let cap1 = Capture::start(&topo.collectors[1], "eth0");
    ping(&topo.client, SERVER_IP, PINGS);
    let (f0, f1) = (cap0.stop(), cap1.stop());
    assert_eq!(count(&f0, |f| f.icmp_type().is_some()), 0, "detached session still copies");
    assert_eq!(count(&f1, Frame::is_echo_request), PINGS as usize, "other session disturbed");
    assert_eq!(count(&f1, Frame::is_echo_reply), PINGS as usize);
    let list = agent.list();
    let names: Vec<&str> =
        list["sessions"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b"]);
}

#[test]
fn many_sources_feed_one_destination() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    // TaaS: two tap flows (client port, server port) into one tap service.
    agent.ok(&[
        "attach",
        "--name",
        "taas",
        "--source",
        "vc",
        "--source",
        "vs",
        "--dest",
        "vk0",
        "--direction",
        "ingress",
    ]);
    let frames = ping_and_capture(&topo, 0, PINGS);
    // vc ingress carries the requests, vs ingress the replies.
    assert_eq!(count(&frames, Frame::is_echo_request), PINGS as usize);
    assert_eq!(count(&frames, Frame::is_echo_reply), PINGS as usize);
    let list = agent.list();
    assert_eq!(list["sessions"][0]["sources"].as_array().unwrap().len(), 2);
}

#[test]
fn thousand_sources_and_eight_sessions_per_source() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let batch: String = (0..1024)
        .map(|i| format!("link add d{i} type veth peer name d{i}p\nlink set d{i}p up\nlink set d{i} up\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("mirror-dummies-{}", std::process::id()));
    std::fs::write(&path, batch).unwrap();
    topo.host.ip(&["-batch", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();

    let mut args: Vec<String> =
        ["attach", "--name", "wide", "--dest", "vk0", "--direction", "ingress"].map(String::from).to_vec();
    for i in 0..1024 {
        args.extend(["--source".into(), format!("d{i}")]);
    }
    args.extend(["--source".into(), "vc".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agent.ok(&args);
    assert_eq!(agent.list()["sessions"][0]["sources"].as_array().unwrap().len(), 1025);
    let frames = ping_and_capture(&topo, 0, 5);
    assert_eq!(count(&frames, Frame::is_echo_request), 5);

    // Seven more sessions fit on vc, a ninth does not.
    for i in 1..8 {
        agent.ok(&[
            "attach",
            "--name",
            &format!("s{i}"),
            "--source",
            "vc",
            "--dest",
            "vk0",
            "--direction",
            "ingress",
        ]);
    }
    let err =
        agent.fails(&["attach", "--name", "s9", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    assert!(err.contains("\"vc\"") && err.contains("8 sessions"), "{err}");
    let frames = ping_and_capture(&topo, 0, 5);
    assert_eq!(count(&frames, Frame::is_echo_request), 5 * 8, "one copy per session");
    agent.ok(&["detach", "--all"]);
}

/// Ifindexes that share their low 16 bits share a direct cell of the source
/// index; the second hook gets an overflow cell. Each source must still feed
/// its own session only, whichever holds the cell, and after either leaves.
#[test]
fn sources_sharing_an_index_cell_each_feed_their_own_session() {
    const FAR_IP: &str = "198.18.4.254";
    let topo = Topology::new(2);
    let agent = topo.agent();
    // "far" (host) ↔ eth1 (client), with an ifindex in vc's cell.
    let far_index = topo.host.ifindex("vc") + mirror_common::source_index::CELLS_PER_DIRECTION;
    topo.host.ip(&[
        "link",
        "add",
        "far",
        "index",
        &far_index.to_string(),
        "address",
        "02:00:c6:12:04:fe",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "address",
        "02:00:c6:12:04:01",
        "netns",
        &topo.client.name,
    ]);
    topo.host.ip(&["addr", "add", &format!("{FAR_IP}/24"), "dev", "far"]);
    topo.host.ip(&["link", "set", "far", "multicast", "off", "up"]);
    topo.host.ip(&[
        "neigh",
        "add",
        "198.18.4.1",
        "lladdr",
        "02:00:c6:12:04:01",
        "dev",
        "far",
        "nud",
        "permanent",
    ]);
    topo.client.ip(&["addr", "add", "198.18.4.1/24", "dev", "eth1"]);
    topo.client.ip(&["link", "set", "eth1", "multicast", "off", "up"]);
    topo.client.ip(&[
        "neigh",
        "add",
        FAR_IP,
        "lladdr",
        "02:00:c6:12:04:fe",
        "dev",
        "eth1",
        "nud",
        "permanent",
    ]);
    assert_eq!(topo.host.ifindex("far"), far_index);

    let attach = |name: &str, source: &str, dest: &str| {
        agent.ok(&["attach", "--name", name, "--source", source, "--dest", dest, "--direction", "ingress"]);
    };
    // Pings over each path; returns the echo requests each collector got.
    let requests_seen = || {
        let caps = [Capture::start(&topo.collectors[0], "eth0"), Capture::start(&topo.collectors[1], "eth0")];
        for dst in [SERVER_IP, FAR_IP] {
            let r = ping(&topo.client, dst, 5);
            assert_eq!(r.received, r.transmitted, "production traffic to {dst} lost: {r:?}");
        }
        caps.map(|c| count(&c.stop(), Frame::is_echo_request))
    };

    attach("far", "far", "vk1"); // takes the cell
    attach("near", "vc", "vk0"); // goes to an overflow cell
    assert_eq!(requests_seen(), [5, 5], "each source to its own collector");
    // A change to a hook in the overflow: a second session on vc.
    attach("near2", "vc", "vk0");
    assert_eq!(requests_seen(), [10, 5]);
    agent.ok(&["detach", "near2"]);
    agent.ok(&["detach", "far"]); // the cell empties; vc stays in the overflow
    assert_eq!(requests_seen(), [5, 0]);
    attach("far", "far", "vk1");
    assert_eq!(requests_seen(), [5, 5]);
    agent.ok(&["detach", "near"]);
    assert_eq!(requests_seen(), [0, 5]);
    agent.ok(&["detach", "--all"]);
}

#[test]
fn snaplen_cuts_copies_and_leaves_originals_intact() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "snap", "--source", "vc", "--dest", "vk0", "--snaplen", "128"]);
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let (sent, received, len) = tcp_transfer(&topo.client, &topo.server, SERVER_IP, 5001, 4 << 20);
    assert_eq!(len, 4 << 20, "bytes received");
    assert_eq!(sent, received, "originals changed in flight");

    // Compare the counters with exactly the copies they describe: wait until
    // the capture holds as many frames as were mirrored (a delayed ACK may
    // still be on its way), and keep that snapshot.
    let mirrored_total = |stats: &serde_json::Value| -> u64 {
        ["ingress", "egress"]
            .iter()
            .map(|d| mirror_tests::topology::session_counter(stats, "snap", d, "mirrored"))
            .sum()
    };
    let mut stats = agent.stats();
    wait_until(Duration::from_secs(5), "every mirrored copy captured", || {
        stats = agent.stats();
        cap.seen() as u64 == mirrored_total(&stats)
    });
    let mirrored = mirrored_total(&stats);
    let frames = cap.stop();
    let copies = &frames[..mirrored as usize];

    assert!(copies.iter().filter(|f| f.is_tcp()).count() > 50, "too few copies: {}", copies.len());
    // (The bridge's own IGMP reports are copied too: every copy is IPv4.)
    let original_len = |f: &Frame| 14 + f.ip_total_len().expect("an IPv4 copy");
    for f in copies {
        assert_eq!(f.len, original_len(f).min(128), "copy of a {}-byte frame", original_len(f));
    }
    // Every copy of a frame longer than the snap length was cut, and counted
    // as cut exactly once; nothing failed.
    let cut = copies.iter().filter(|f| original_len(f) > 128).count();
    assert!(cut > 30, "data segments were not cut: {cut}");
    let counter = |dir, reason| mirror_tests::topology::session_counter(&stats, "snap", dir, reason);
    assert_eq!(counter("ingress", "truncated") + counter("egress", "truncated"), cut as u64);
    for dir in ["ingress", "egress"] {
        assert_eq!(counter(dir, "snap_failed"), 0);
        assert_eq!(counter(dir, "failed"), 0);
    }
}

#[test]
fn destination_down_loses_no_production_packet_and_recovers() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    topo.host.ip(&["link", "set", "vk0", "down"]);
    let r = ping(&topo.client, SERVER_IP, 50);
    assert_eq!(
        (r.transmitted, r.received),
        (50, 50),
        "production packets lost while the destination is down"
    );
    // A down destination's qdisc is noop_qdisc, which answers NET_XMIT_CN.
    let refused = agent.packets("m", "ingress", "dest_congested");
    assert!(refused >= 50, "dest_congested counted {refused}");
    assert_eq!(agent.packets("m", "ingress", "mirrored"), 0);
    assert!(agent.ok(&["list"]).contains("vk0 (down)"));

    topo.host.ip(&["link", "set", "vk0", "up"]);
    wait_until(Duration::from_secs(5), "copies flowing again", || {
        let cap = Capture::start(&topo.collectors[0], "eth0");
        ping(&topo.client, SERVER_IP, 3);
        count(&cap.stop(), Frame::is_echo_request) == 3
    });
}

#[test]
fn destination_deleted_loses_no_production_packet_and_is_reported() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    topo.host.ip(&["link", "del", "vk0"]);
    let r = ping(&topo.client, SERVER_IP, 50);
    assert_eq!(
        (r.transmitted, r.received),
        (50, 50),
        "production packets lost after the destination was deleted"
    );
    assert!(agent.packets("m", "ingress", "dest_missing") >= 50);
    let list = agent.list();
    assert_eq!(list["sessions"][0]["dest_state"], "missing");
    agent.ok(&["detach", "m"]);
}

#[test]
fn a_cycle_of_sessions_cannot_loop() {
    let topo = Topology::new(0);
    let agent = topo.agent();
    // A: vc → vs, B: vs → vc. Without the copy tag each copy would be copied
    // back and forth until the kernel's recursion limit.
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vs"]);
    agent.ok(&["attach", "--name", "b", "--source", "vs", "--dest", "vc"]);
    // Everything that sends onto the segment: client, server, and the bridge
    // device itself (its delayed IGMP reports flood out of both sources).
    let sent_by_hosts = || {
        topo.client.link_packets("eth0").1
            + topo.server.link_packets("eth0").1
            + topo.host.link_packets("br0").1
    };
    let copies = |stats: &serde_json::Value| -> (u64, u64) {
        let c = |s, d, r| mirror_tests::topology::session_counter(stats, s, d, r);
        let pairs = [("a", "ingress"), ("a", "egress"), ("b", "ingress"), ("b", "egress")];
        (
            pairs.iter().map(|(s, d)| c(s, d, "mirrored")).sum(),
            pairs.iter().map(|(s, d)| c(s, d, "matched")).sum(),
        )
    };
    let (sent0, (copies0, _)) = (sent_by_hosts(), copies(&agent.stats()));

    ping(&topo.client, SERVER_IP, PINGS);
    // Duplicate replies (to copied requests) may still be in flight.
    let mut last = agent.stats();
    wait_until(Duration::from_secs(5), "counters to settle", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = agent.stats();
        std::mem::replace(&mut last, now) == last
    });
    let stats = last;
    let originals = sent_by_hosts() - sent0;
    let (copies_total, matched) = copies(&stats);
    let made = copies_total - copies0;
    // Each session copies each original it sees once; copies are never matched.
    assert_eq!(copies_total, matched, "a copy was matched again: {stats}");
    assert!(made >= u64::from(PINGS) * 2, "too few copies: {made}");
    assert!(made <= originals * 2, "{made} copies for {originals} originals × 2 sessions: {stats}");
    let not_again: u64 = ["ingress", "egress"]
        .iter()
        .map(|d| stats["global"][d]["copy_not_remirrored"]["packets"].as_u64().unwrap())
        .sum();
    assert!(not_again > 0, "copies reached the other session's hook but were not counted: {stats}");
}

#[test]
fn mirroring_outlives_the_attaching_process() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    // `ok` waits for the process to exit: everything after runs without it.
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    assert_eq!(topo.host.pin_dir().join("links").read_dir().unwrap().count(), 2);
    let frames = ping_and_capture(&topo, 0, PINGS);
    assert_eq!(count(&frames, Frame::is_echo_request), PINGS as usize);
}

#[test]
fn remote_collector_over_vxlan() {
    // The tc + VXLAN recipe: the destination is a VXLAN device whose remote
    // is the collector; the collector sees the original frames after decap.
    let topo = Topology::new(0);
    let agent = topo.agent();
    let remote = mirror_tests::topology::Netns::new("remote");
    let (h, r) = (&topo.host, &remote);
    h.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "eth0", "netns", &r.name]);
    h.ip(&["link", "set", "ul0", "address", "02:00:c6:12:01:01"]);
    r.ip(&["link", "set", "eth0", "address", "02:00:c6:12:01:02"]);
    for (ns, dev, local, peer, peer_mac) in [
        (h, "ul0", "198.18.1.1", "198.18.1.2", "02:00:c6:12:01:02"),
        (r, "eth0", "198.18.1.2", "198.18.1.1", "02:00:c6:12:01:01"),
    ] {
        ns.ip(&["addr", "add", &format!("{local}/24"), "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["neigh", "add", peer, "lladdr", peer_mac, "dev", dev, "nud", "permanent"]);
        ns.ip(&[
            "link", "add", "vx0", "type", "vxlan", "id", "100", "local", local, "remote", peer, "dev", dev,
            "dstport", "4789",
        ]);
        ns.ip(&["link", "set", "vx0", "up"]);
    }
    agent.ok(&["attach", "--name", "remote", "--source", "vc", "--dest", "vx0"]);
    let cap = Capture::start(&remote, "vx0");
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, r.transmitted);
    let frames = cap.stop();
    assert_eq!(count(&frames, Frame::is_echo_request), PINGS as usize, "{frames:?}");
    assert_eq!(count(&frames, Frame::is_echo_reply), PINGS as usize);
}
