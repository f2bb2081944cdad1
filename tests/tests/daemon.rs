//! End-to-end: `mirror-agent run --config FILE` as a real process, following
//! real rtnetlink events, inotify and signals; copies counted at the
//! collectors. Run with `cargo xtask test` (root, `--test-threads=1`).
//! Topology: `tests/README.md`.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use mirror_tests::{
    capture::{Capture, Frame},
    daemon::Daemon,
    topology::{Agent, CLIENT_IP, Netns, SERVER_IP, Topology, session_counter},
    traffic::ping,
    wait_until,
};
use serde_json::Value;

const PINGS: u32 = 20;
/// Long enough for any reconcile on a busy host; the latency that matters
/// is asserted separately.
const WAIT: Duration = Duration::from_secs(10);
/// A hot-plugged interface must be hooked within this (the daemon reacts
/// to the netlink event; typical: 0.2-0.5 s).
const HOT_PLUG_BOUND: Duration = Duration::from_secs(3);
const CLIENT_MAC: &str = "02:00:c6:12:00:01";
const SERVER_MAC: &str = "02:00:c6:12:00:02";

// ---------------------------------------------------------------- helpers

/// A config with one session.
fn one_session(name: &str, sources: &str, dest: &str) -> String {
    format!("sessions:\n  - name: {name}\n    sources: {sources}\n    dest: {dest}\n")
}

fn session<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["sessions"].as_array().expect("sessions array").iter().find(|s| s["name"] == name)
}

fn session_names(agent: &Agent<'_>) -> BTreeSet<String> {
    agent.list()["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// (ifindex, name) of a session's sources; empty if there is no such session.
fn sources_of(list: &Value, name: &str) -> BTreeSet<(u32, String)> {
    session(list, name).map_or_else(BTreeSet::new, |s| {
        s["sources"]
            .as_array()
            .expect("sources array")
            .iter()
            .map(|i| {
                let ifindex = i["ifindex"].as_u64().expect("ifindex") as u32;
                (ifindex, i["name"].as_str().map_or_else(|| format!("#{ifindex}(gone)"), str::to_owned))
            })
            .collect()
    })
}

/// Source names of `name`, once every hook it needs is attached (`None`
/// while `list` reports a hook missing).
fn settled_sources(agent: &Agent<'_>, name: &str) -> Option<BTreeSet<String>> {
    let list = agent.list();
    let s = session(&list, name)?;
    if !s["hooks_missing"].as_array().expect("hooks_missing").is_empty() {
        return None;
    }
    Some(sources_of(&list, name).into_iter().map(|(_, n)| n).collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until session `name` mirrors exactly `want` (hooks attached).
fn wait_sources(agent: &Agent<'_>, name: &str, want: &[&str]) {
    let want = set(want);
    let mut last = None;
    let start = Instant::now();
    loop {
        let now = settled_sources(agent, name);
        if now.as_ref() == Some(&want) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "session {name}: want sources {want:?}, still {now:?} (last seen {last:?}) after {WAIT:?}:\n{}",
            agent.list()
        );
        last = now;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` (no sleep between polls beyond 5 ms) and returns how long
/// it took to hold, measured from `since`, with the processes of other
/// tests seen running once it took over 500 ms: other namespaces' agents
/// share the lock on the bpffs root, and builds share the CPUs.
fn time_until(
    since: Instant,
    ours: &Netns,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> (Duration, String) {
    let mut others = String::new();
    while !cond() {
        assert!(since.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        if others.is_empty() && since.elapsed() > Duration::from_millis(500) {
            let ps = std::process::Command::new("ps").args(["-eo", "pid,etimes,args"]).output().expect("ps");
            others = String::from_utf8_lossy(&ps.stdout)
                .lines()
                .filter(|l| l.contains("mirror-agent") && !l.contains(&ours.name))
                .collect::<Vec<_>>()
                .join("\n");
            others.push_str("\n(end of the other processes)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (since.elapsed(), others)
}

/// Interfaces of a namespace: (ifindex, name).
fn live_links(ns: &Netns) -> BTreeSet<(u32, String)> {
    let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show"])).expect("ip -j link");
    v.as_array()
        .expect("array")
        .iter()
        .map(|l| {
            (l["ifindex"].as_u64().expect("ifindex") as u32, l["ifname"].as_str().expect("ifname").to_owned())
        })
        .collect()
}

/// The ifindex a pin under `links/` is for (`src-ingress-7`, `dst-egress-7`,
/// `tc-src-egress-7-1-1+qdisc`).
fn pin_ifindex(pin: &str) -> u32 {
    let rest = pin.strip_prefix("tc-").unwrap_or(pin);
    for prefix in ["src-ingress-", "src-egress-", "dst-egress-"] {
        if let Some(numbers) = rest.strip_prefix(prefix) {
            let first = numbers.split(['-', '+']).next().unwrap_or_default();
            return first.parse().unwrap_or_else(|_| panic!("unexpected pin name {pin:?}"));
        }
    }
    panic!("unexpected pin name {pin:?}")
}

/// Every pin under `<pin_dir>/links`: (name, ifindex).
fn pins(ns: &Netns) -> Vec<(String, u32)> {
    let dir = ns.pin_dir().join("links");
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| {
                let name = e.expect("dir entry").file_name().to_string_lossy().into_owned();
                let ifindex = pin_ifindex(&name);
                (name, ifindex)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    }
}

fn pinned_ifindexes(ns: &Netns) -> BTreeSet<u32> {
    pins(ns).into_iter().map(|(_, i)| i).collect()
}

/// Audit lines of the daemon's log about `session`.
fn audit_lines(d: &Daemon, session: &str) -> Vec<String> {
    let tag = format!("session=\"{session}\"");
    d.log_text()
        .lines()
        .filter(|l| l.contains(" audit: audit ") && l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

fn count(frames: &[Frame], f: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|x| f(x)).count()
}

/// Pings `count` times from `from` to `dst` while capturing on `collector`;
/// no production packet may be lost. Returns the copies.
fn ping_and_capture(from: &Netns, dst: &str, collector: &Netns, count: u32) -> Vec<Frame> {
    let cap = Capture::start(collector, "eth0");
    let r = ping(from, dst, count);
    assert_eq!(r.received, r.transmitted, "production traffic lost: {r:?}");
    assert_eq!(r.transmitted, u64::from(count));
    cap.stop()
}

/// (echo requests, echo replies) among `frames`.
fn icmp(frames: &[Frame]) -> (usize, usize) {
    (count(frames, Frame::is_echo_request), count(frames, Frame::is_echo_reply))
}

/// A veth `host_end` in the host namespace whose peer `inner` is in `ns`;
/// `addresses`: (host end's MAC, inner end's MAC).
fn veth(host: &Netns, host_end: &str, ns: &Netns, inner: &str, addresses: Option<(&str, &str)>) {
    let mut args = vec!["link", "add", host_end];
    if let Some((mac, _)) = addresses {
        args.extend(["address", mac]);
    }
    args.extend(["type", "veth", "peer", "name", inner]);
    if let Some((_, mac)) = addresses {
        args.extend(["address", mac]);
    }
    args.extend(["netns", &ns.name]);
    host.ip(&args);
}

// ---------------------------------------------------------------- tests

/// `name: "tap*"` (`exclude: [tap9]`): interfaces created after the start
/// are mirrored within a second (real copies through one); renaming one
/// away while it carries traffic releases it (no copy), renaming it back
/// mirrors again; delete and recreate (new ifindex) is followed; nothing is
/// left pinned for a dead ifindex, and the sources are exactly the live
/// matching interfaces.
#[test]
fn hot_plugged_interfaces_are_followed_by_name_and_nothing_leaks() {
    let topo = Topology::new(1);
    let guest = Netns::new("guest");
    let agent = topo.agent();
    let d =
        Daemon::start(&topo.host, &one_session("hp", "[{name: \"tap*\", exclude: [\"tap9\"]}]", "vk0"), &[]);
    assert_eq!(settled_sources(&agent, "hp"), Some(set(&[])), "nothing matches yet");

    let mirrored = |name: &str| settled_sources(&agent, "hp").is_some_and(|s| s.contains(name));
    let mut latencies: Vec<(String, Duration)> = Vec::new();
    let mut contention: Vec<String> = Vec::new();
    // How long `ip` took to create (or rename) each: the clock starts once
    // the interface exists.
    let mut creation: Vec<Duration> = Vec::new();
    for i in 0..3 {
        let tap = format!("tap{i}");
        let macs = (format!("02:00:c6:12:05:f{i}"), format!("02:00:c6:12:05:0{i}"));
        let issued = Instant::now();
        veth(&topo.host, &tap, &guest, &format!("g{i}"), Some((&macs.0, &macs.1)));
        let start = Instant::now();
        creation.push(start - issued);
        let (took, others) = time_until(start, &topo.host, &format!("{tap} mirrored"), || mirrored(&tap));
        contention.push(others);
        latencies.push((tap, took));
    }
    wait_sources(&agent, "hp", &["tap0", "tap1", "tap2"]);

    // Real copies through a hot-plugged tap: guest g0 ↔ host tap0.
    topo.host.ip(&["addr", "add", "198.18.5.254/24", "dev", "tap0"]);
    topo.host.ip(&["link", "set", "tap0", "multicast", "off", "up"]);
    topo.host.ip(&[
        "neigh",
        "add",
        "198.18.5.1",
        "lladdr",
        "02:00:c6:12:05:00",
        "dev",
        "tap0",
        "nud",
        "permanent",
    ]);
    guest.ip(&["addr", "add", "198.18.5.1/24", "dev", "g0"]);
    guest.ip(&["link", "set", "g0", "multicast", "off", "up"]);
    guest.ip(&[
        "neigh",
        "add",
        "198.18.5.254",
        "lladdr",
        "02:00:c6:12:05:f0",
        "dev",
        "g0",
        "nud",
        "permanent",
    ]);
    wait_until(WAIT, "g0 ↔ tap0 carrier", || {
        guest.command(&["ping", "-c1", "-W1", "198.18.5.254"]).output().is_ok_and(|o| o.status.success())
    });
    let frames = ping_and_capture(&guest, "198.18.5.254", &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (PINGS as usize, PINGS as usize), "tap0 in and out, once each: {frames:?}");

    // Renamed away (up, carrying traffic): released, its hooks unpinned,
    // no copy; renamed back: mirrored and copying again.
    let tap0 = topo.host.ifindex("tap0");
    topo.host.ip(&["link", "set", "tap0", "name", "xap0"]);
    wait_sources(&agent, "hp", &["tap1", "tap2"]);
    wait_until(WAIT, "tap0's pins gone after the rename", || !pinned_ifindexes(&topo.host).contains(&tap0));
    let frames = ping_and_capture(&guest, "198.18.5.254", &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (0, 0), "xap0 is no longer selected but still copied: {frames:?}");
    let issued = Instant::now();
    topo.host.ip(&["link", "set", "xap0", "name", "tap0"]);
    let start = Instant::now();
    creation.push(start - issued);
    let (took, others) =
        time_until(start, &topo.host, "tap0 mirrored after renaming back", || mirrored("tap0"));
    contention.push(others);
    latencies.push(("tap0 (renamed back)".into(), took));
    assert_eq!(topo.host.ifindex("tap0"), tap0);
    let frames = ping_and_capture(&guest, "198.18.5.254", &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (PINGS as usize, PINGS as usize), "tap0 copies again: {frames:?}");

    // Deleted and recreated: a new ifindex, followed; the old one forgotten.
    let old_tap2 = topo.host.ifindex("tap2");
    topo.host.ip(&["link", "del", "tap2"]);
    // tap9 is excluded: created with the deletion, it is never a source.
    veth(&topo.host, "tap9", &guest, "g9", None);
    wait_sources(&agent, "hp", &["tap0", "tap1"]);
    let issued = Instant::now();
    veth(&topo.host, "tap2", &guest, "g2", None);
    let start = Instant::now();
    creation.push(start - issued);
    let (took, others) = time_until(start, &topo.host, "tap2 mirrored after recreation", || mirrored("tap2"));
    contention.push(others);
    latencies.push(("tap2 (recreated)".into(), took));
    let new_tap2 = topo.host.ifindex("tap2");
    assert_ne!(new_tap2, old_tap2, "the kernel reused the ifindex; the test proves nothing");
    wait_sources(&agent, "hp", &["tap0", "tap1", "tap2"]);

    eprintln!("hot-plug latencies (interface exists → hooked in `list`): {latencies:?}");
    eprintln!("time `ip` took to create or rename each: {creation:?}");
    let passes: Vec<String> =
        d.log_text().lines().filter(|l| l.contains("reconciled elapsed_ms")).map(str::to_owned).collect();
    for (((tap, took), others), made) in latencies.iter().zip(&contention).zip(&creation) {
        // The 1 s target is measured (p50/p99) by `cargo xtask bench-daemon`;
        // here only "followed on the event, not by some slow poll", with
        // headroom for a loaded CI host.
        assert!(
            *took < HOT_PLUG_BOUND,
            "{tap} took {took:?} to be mirrored once it existed (bound {HOT_PLUG_BOUND:?}; `ip` took {made:?}).\n\
             The daemon's passes:\n{}\n\
             Other mirror-agent processes meanwhile (same bpffs lock, same CPUs):\n{others}",
            passes.join("\n")
        );
    }

    // Nothing leaks: every pin is for a live ifindex, and the sources are
    // exactly the live interfaces that match.
    let live = live_links(&topo.host);
    let live_indexes: BTreeSet<u32> = live.iter().map(|(i, _)| *i).collect();
    let matching: BTreeSet<(u32, String)> =
        live.into_iter().filter(|(_, n)| n.starts_with("tap") && n != "tap9").collect();
    let pinned = pins(&topo.host);
    let dead: Vec<&(String, u32)> = pinned.iter().filter(|(_, i)| !live_indexes.contains(i)).collect();
    assert!(dead.is_empty(), "pins for interfaces that no longer exist: {dead:?}");
    for (ifindex, name) in &matching {
        for hook in ["src-ingress", "src-egress"] {
            let pin = format!("{hook}-{ifindex}");
            assert!(pinned.iter().any(|(p, _)| *p == pin), "{name}: no pin {pin} in {pinned:?}");
        }
    }
    let list = agent.list();
    assert_eq!(sources_of(&list, "hp"), matching, "sources = the live matching interfaces: {list}");
    let tap9 = topo.host.ifindex("tap9");
    assert!(!pinned.iter().any(|(_, i)| [old_tap2, tap9, topo.host.ifindex("vc")].contains(i)), "{pinned:?}");
    drop(d);
}

/// `bridge: br0`: every port, including one added later (real copies at
/// the collector); a port removed (`nomaster`) or moved to another bridge
/// is released.
#[test]
fn bridge_selector_follows_the_ports_of_the_bridge() {
    const GUEST_IP: &str = "198.18.0.3";
    const GUEST_MAC: &str = "02:00:c6:12:00:03";
    let topo = Topology::new(1);
    let guest = Netns::new("guest");
    let agent = topo.agent();
    let _d = Daemon::start(&topo.host, &one_session("br", "[{bridge: br0}]", "vk0"), &[]);
    wait_sources(&agent, "br", &["vc", "vs"]);

    // A port added later.
    veth(&topo.host, "vg", &guest, "eth0", None);
    guest.ip(&["link", "set", "eth0", "address", GUEST_MAC]);
    guest.ip(&["addr", "add", &format!("{GUEST_IP}/24"), "dev", "eth0"]);
    guest.ip(&["link", "set", "eth0", "multicast", "off", "up"]);
    guest.ip(&["neigh", "add", CLIENT_IP, "lladdr", CLIENT_MAC, "dev", "eth0", "nud", "permanent"]);
    topo.client.ip(&["neigh", "add", GUEST_IP, "lladdr", GUEST_MAC, "dev", "eth0", "nud", "permanent"]);
    topo.host.ip(&["link", "set", "vg", "master", "br0", "multicast", "off", "up"]);
    wait_sources(&agent, "br", &["vc", "vg", "vs"]);
    // The first request to the guest is flooded (its MAC is not learned
    // yet); afterwards the bridge forwards client ↔ guest only.
    wait_until(WAIT, "client → guest through br0", || {
        topo.client.command(&["ping", "-c1", "-W1", GUEST_IP]).output().is_ok_and(|o| o.status.success())
    });
    let before = agent.stats();
    let frames = ping_and_capture(&topo.client, GUEST_IP, &topo.collectors[0], PINGS);
    // Requests: vc ingress + vg egress; replies: vg ingress + vc egress.
    let n = PINGS as usize;
    assert_eq!(icmp(&frames), (2 * n, 2 * n), "each packet copied at both ports it crosses: {frames:?}");
    let after = agent.stats();
    for dir in ["ingress", "egress"] {
        let delta =
            session_counter(&after, "br", dir, "mirrored") - session_counter(&before, "br", dir, "mirrored");
        assert_eq!(delta, 2 * u64::from(PINGS), "{dir}: mirrored");
    }

    // Removed from the bridge: released.
    let vg = topo.host.ifindex("vg");
    topo.host.ip(&["link", "set", "vg", "nomaster"]);
    wait_sources(&agent, "br", &["vc", "vs"]);
    wait_until(WAIT, "vg's pins gone", || !pinned_ifindexes(&topo.host).contains(&vg));

    // Moved to another bridge: released.
    let vs = topo.host.ifindex("vs");
    topo.host.ip(&["link", "add", "br1", "type", "bridge"]);
    topo.host.ip(&["link", "set", "br1", "multicast", "off", "up"]);
    topo.host.ip(&["link", "set", "vs", "master", "br1"]);
    wait_sources(&agent, "br", &["vc"]);
    wait_until(WAIT, "vs's pins gone", || !pinned_ifindexes(&topo.host).contains(&vs));
    assert_eq!(sources_of(&agent.list(), "br"), BTreeSet::from([(topo.host.ifindex("vc"), "vc".to_owned())]));
}

/// `mac:`: the bridge port where the FDB learned the guest's MAC, following
/// it when it roams to another port and back; and the interface that owns
/// the address, following address changes.
#[test]
fn mac_selector_follows_the_fdb_when_the_guest_roams_and_matches_the_owner() {
    const OWN_MAC: &str = "02:00:c6:12:07:aa";
    let topo = Topology::new(1);
    let agent = topo.agent();
    // The FDB learns the client's MAC at vc.
    let r = ping(&topo.client, SERVER_IP, 1);
    assert_eq!(r.received, 1);
    let config = format!(
        "sessions:\n  - name: guest\n    sources: [{{mac: \"{CLIENT_MAC}\"}}]\n    dest: vk0\n  - name: own\n    sources: [{{mac: \"{OWN_MAC}\"}}]\n    dest: vk0\n"
    );
    let _d = Daemon::start(&topo.host, &config, &[]);
    wait_sources(&agent, "guest", &["vc"]);
    assert_eq!(settled_sources(&agent, "own"), Some(set(&[])));
    let vc = topo.host.ifindex("vc");

    // The same MAC appears behind a new port vr and talks: the bridge
    // learns it there.
    let roam = Netns::new("roam");
    veth(&topo.host, "vr", &roam, "eth0", None);
    roam.ip(&["link", "set", "eth0", "address", CLIENT_MAC]);
    roam.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]);
    roam.ip(&["link", "set", "eth0", "multicast", "off", "up"]);
    roam.ip(&["neigh", "add", SERVER_IP, "lladdr", SERVER_MAC, "dev", "eth0", "nud", "permanent"]);
    topo.host.ip(&["link", "set", "vr", "master", "br0", "multicast", "off", "up"]);
    wait_until(WAIT, "roam → server through br0", || {
        roam.command(&["ping", "-c1", "-W1", SERVER_IP]).output().is_ok_and(|o| o.status.success())
    });
    wait_sources(&agent, "guest", &["vr"]);
    wait_until(WAIT, "vc's pins gone after the roam", || !pinned_ifindexes(&topo.host).contains(&vc));
    let frames = ping_and_capture(&roam, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (PINGS as usize, PINGS as usize), "vr in and out, once each: {frames:?}");

    // Back to vc when the client talks again.
    let r = ping(&topo.client, SERVER_IP, 1);
    assert_eq!(r.received, 1);
    wait_sources(&agent, "guest", &["vc"]);
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (PINGS as usize, PINGS as usize), "vc in and out, once each: {frames:?}");

    // The owner: an interface here whose own address it is.
    veth(&topo.host, "own0", &roam, "eth1", None);
    topo.host.ip(&["link", "set", "own0", "address", OWN_MAC]);
    wait_sources(&agent, "own", &["own0"]);
    topo.host.ip(&["link", "set", "own0", "address", "02:00:c6:12:07:ab"]);
    wait_sources(&agent, "own", &[]);
    wait_sources(&agent, "guest", &["vc"]);
}

/// The destination deleted and recreated under its name (a new ifindex):
/// while it is missing, copies count `dest_missing` and no production ping
/// is lost; then copies resume with no command.
#[test]
fn destination_deleted_and_recreated_resumes_without_a_command() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let _d = Daemon::start(&topo.host, &one_session("d", "[{name: vc}]", "vk0"), &[]);
    wait_sources(&agent, "d", &["vc"]);
    let n = PINGS as usize;
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (n, n));
    let old = topo.host.ifindex("vk0");
    let dest_of = || {
        let list = agent.list();
        let s = session(&list, "d").expect("session d");
        (
            s["dest"]["ifindex"].as_u64().expect("dest ifindex") as u32,
            s["dest_state"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(dest_of(), (old, "up".to_owned()));

    // Deleted in the middle of a steady ping.
    std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&topo.client, SERVER_IP, 100));
        let start = agent.packets("d", "ingress", "matched");
        wait_until(WAIT, "pings flowing", || agent.packets("d", "ingress", "matched") >= start + 10);
        topo.host.ip(&["link", "del", "vk0"]);
        wait_until(WAIT, "the session's destination to read 0 (missing)", || dest_of().0 == 0);
        let r = pinger.join().expect("pinger");
        assert_eq!(r.received, r.transmitted, "production pings lost across the deletion: {r:?}");
        assert_eq!(r.transmitted, 100);
    });
    assert_eq!(dest_of(), (0, "missing".to_owned()));

    // While missing: every copy counted `dest_missing`, none mirrored.
    let before = agent.stats();
    let r = ping(&topo.client, SERVER_IP, PINGS);
    assert_eq!(r.received, r.transmitted, "production pings lost while the destination is missing: {r:?}");
    let after = agent.stats();
    for dir in ["ingress", "egress"] {
        let delta =
            |reason| session_counter(&after, "d", dir, reason) - session_counter(&before, "d", dir, reason);
        assert_eq!(delta("dest_missing"), u64::from(PINGS), "{dir}: dest_missing");
        assert_eq!(delta("matched"), u64::from(PINGS), "{dir}: matched");
        assert_eq!(delta("mirrored"), 0, "{dir}: mirrored while missing");
    }

    // Recreated under the same name: followed, no command.
    topo.host.ip(&[
        "link",
        "add",
        "vk0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &topo.collectors[0].name,
    ]);
    topo.collectors[0].ip(&["link", "set", "eth0", "multicast", "off", "up"]);
    topo.host.ip(&["link", "set", "vk0", "multicast", "off", "up"]);
    let new = topo.host.ifindex("vk0");
    assert_ne!(new, old);
    wait_until(WAIT, "the session to follow the new vk0", || dest_of() == (new, "up".to_owned()));
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (n, n), "copies resumed: {frames:?}");
}

/// Reload: only the changed session is touched (the other's copies never
/// stop, counted exactly across the reload, and it gets no audit line); an
/// invalid file is rejected whole with its file:line:col; SIGHUP reloads.
#[test]
fn reload_applies_only_what_changed_and_rejects_an_invalid_file() {
    let topo = Topology::new(2);
    let agent = topo.agent();
    let config = |b_direction: &str| {
        format!(
            "sessions:\n  - name: a\n    sources: [{{name: vc}}]\n    dest: vk0\n    direction: ingress\n  - name: b\n    sources: [{{name: vs}}]\n    dest: vk1\n    direction: {b_direction}\n"
        )
    };
    let d = Daemon::start(&topo.host, &config("ingress"), &[]);
    wait_sources(&agent, "a", &["vc"]);
    wait_sources(&agent, "b", &["vs"]);
    let a_before = session(&agent.list(), "a").expect("a").clone();
    let direction_of = |name: &str| session(&agent.list(), name).expect("session")["direction"].clone();

    // b changes while a copies a steady ping.
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let r = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&topo.client, SERVER_IP, 200));
        let start = agent.packets("a", "ingress", "matched");
        wait_until(WAIT, "pings flowing", || agent.packets("a", "ingress", "matched") >= start + 20);
        d.write_config(&config("both"));
        wait_until(WAIT, "b's change audited", || {
            audit_lines(&d, "b").iter().any(|l| l.contains("action=\"update\""))
        });
        assert_eq!(direction_of("b"), "both");
        pinger.join().expect("pinger")
    });
    assert_eq!(r.received, r.transmitted, "production pings lost: {r:?}");
    assert_eq!(r.transmitted, 200);
    let frames = cap.stop();
    assert_eq!(icmp(&frames), (200, 0), "a copied every request across the reload, exactly once");
    assert_eq!(session(&agent.list(), "a").expect("a"), &a_before, "a untouched");
    let a_audit = audit_lines(&d, "a");
    assert_eq!(a_audit.len(), 1, "a: only its first attach is audited: {a_audit:?}");
    assert!(a_audit[0].contains("action=\"attach\""), "{a_audit:?}");

    // An invalid file (that would also change b back): rejected whole.
    let listed = agent.list();
    let valid = config("ingress");
    let bad_line = valid.lines().count() + 1;
    d.write_config(&format!("{valid}bogus: 1\n"));
    d.wait_log("config rejected", 1, WAIT);
    let want = format!("{}:{bad_line}:1: unknown field `bogus`", d.config.display());
    let log = d.log_text();
    let rejected = log.lines().find(|l| l.contains("config rejected")).expect("rejected line");
    assert!(rejected.contains(&want), "want {want:?} in {rejected:?}");
    assert_eq!(agent.list(), listed, "an invalid config changed the sessions");
    assert_eq!(audit_lines(&d, "b").len(), 2, "b: attach and the one update only");

    // SIGHUP: the config becomes a symlink into a directory the daemon does
    // not watch; a change there takes effect on SIGHUP only.
    let hidden = d.dir.join("hidden");
    std::fs::create_dir(&hidden).expect("mkdir");
    let real = hidden.join("real.yaml");
    std::fs::write(&real, config("ingress")).expect("write");
    let link = d.dir.join("config.yaml.link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let reloaded = |d: &Daemon| d.log_text().matches("config reloaded").count();
    let before = reloaded(&d);
    // The swap itself is seen (a rename in the watched directory), and
    // b goes back to ingress: once that is applied, the daemon is done
    // reading the file.
    std::fs::rename(&link, &d.config).expect("rename");
    d.wait_log("config reloaded", before + 1, WAIT);
    wait_until(WAIT, "b's change through the symlink audited", || audit_lines(&d, "b").len() == 3);
    assert_eq!(direction_of("b"), "ingress");
    let before = reloaded(&d);
    std::fs::write(&real, config("egress")).expect("write");
    // Absence can only be checked over a window: inotify does not see it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reloaded(&d), before, "the daemon saw a change it was not told of");
    assert_eq!(direction_of("b"), "ingress");
    d.hup();
    d.wait_log("config reloaded", before + 1, WAIT);
    wait_until(WAIT, "b's SIGHUP change audited", || audit_lines(&d, "b").len() == 4);
    assert_eq!(direction_of("b"), "egress");
    wait_sources(&agent, "b", &["vs"]);
    assert_eq!(session(&agent.list(), "a").expect("a"), &a_before, "a untouched by SIGHUP");
    assert_eq!(audit_lines(&d, "a").len(), 1);
}

/// Policy: a session whose destination is not allowed is refused (audited,
/// not listed) while a valid one in the same file applies; a `*` selector
/// mirrors only allowed interfaces, and the forbidden ones (br0, eth9
/// created later) are audited as refused, once, and never become sources.
#[test]
fn policy_refuses_forbidden_destinations_and_sources() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let spare = Netns::new("spare");
    let config = "sessions:\n  - name: bad\n    sources: [{name: vc}]\n    dest: vs\n  - name: good\n    sources: [{name: \"*\"}]\n    dest: vk0\npolicy:\n  sources: [\"v*\"]\n  destinations: [\"vk*\"]\n";
    let d = Daemon::start(&topo.host, config, &[]);
    wait_sources(&agent, "good", &["vc", "vs"]);
    assert_eq!(session_names(&agent), set(&["good"]), "the refused session is not listed");
    let bad = audit_lines(&d, "bad");
    assert!(
        bad.len() == 1
            && bad[0].contains("action=\"refuse\"")
            && bad[0].contains("is not allowed by the policy's destinations"),
        "bad: {bad:?}"
    );
    let refused_source = |name: &str| {
        let needle = format!("source \\\"{name}\\\"");
        audit_lines(&d, "good")
            .into_iter()
            .filter(|l| l.contains("action=\"refuse\"") && l.contains(&needle))
            .count()
    };
    assert_eq!(refused_source("br0"), 1, "br0 refused: {:?}", audit_lines(&d, "good"));

    let n = PINGS as usize;
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (2 * n, 2 * n), "vc and vs, both ways: {frames:?}");

    // Created later: eth9 (forbidden) and v9 (allowed).
    veth(&topo.host, "eth9", &spare, "eth0", None);
    veth(&topo.host, "v9", &spare, "eth1", None);
    wait_sources(&agent, "good", &["v9", "vc", "vs"]);
    wait_until(WAIT, "eth9 refused", || refused_source("eth9") == 1);
    // Another reconcile: the refusals are not repeated, eth9 stays out.
    topo.host.ip(&["link", "del", "v9"]);
    wait_sources(&agent, "good", &["vc", "vs"]);
    assert_eq!((refused_source("eth9"), refused_source("br0")), (1, 1), "{:?}", audit_lines(&d, "good"));
    let eth9 = topo.host.ifindex("eth9");
    assert!(!pinned_ifindexes(&topo.host).contains(&eth9));
    assert!(!pinned_ifindexes(&topo.host).contains(&topo.host.ifindex("br0")));
    assert_eq!(session_names(&agent), set(&["good"]));
}

/// A CLI session and config sessions side by side: the daemon never touches
/// the CLI's (not even when the config names it), and `--on-exit remove`
/// removes only its own.
#[test]
fn cli_and_config_sessions_coexist_and_on_exit_remove_takes_only_its_own() {
    let topo = Topology::new(2);
    let agent = topo.agent();
    let spare = Netns::new("spare");
    agent.ok(&["attach", "--name", "manual", "--source", "vs", "--dest", "vk1"]);
    let config = "sessions:\n  - name: auto\n    sources: [{name: \"vc*\"}]\n    dest: vk0\n  - name: manual\n    sources: [{name: vc}]\n    dest: vk0\n";
    let mut d = Daemon::start(&topo.host, config, &["--on-exit", "remove"]);
    wait_sources(&agent, "auto", &["vc"]);
    let list = agent.list();
    let manual = session(&list, "manual").expect("manual").clone();
    assert_eq!(session(&list, "auto").expect("auto")["owner"], "config");
    assert_eq!(manual["owner"], "cli");
    assert_eq!(sources_of(&list, "manual"), BTreeSet::from([(topo.host.ifindex("vs"), "vs".to_owned())]));
    let refused = audit_lines(&d, "manual");
    assert!(
        refused.len() == 1
            && refused[0].contains("action=\"refuse\"")
            && refused[0].contains("made by the cli"),
        "{refused:?}"
    );
    let text = agent.ok(&["list"]);
    assert!(text.contains("cli") && text.contains("config"), "{text}");

    // Reconciles that change the config's session leave the CLI's alone.
    veth(&topo.host, "vc2", &spare, "eth0", None);
    wait_sources(&agent, "auto", &["vc", "vc2"]);
    assert_eq!(session(&agent.list(), "manual"), Some(&manual));
    topo.host.ip(&["link", "del", "vc2"]);
    wait_sources(&agent, "auto", &["vc"]);
    assert_eq!(session(&agent.list(), "manual"), Some(&manual));
    assert_eq!(audit_lines(&d, "manual").len(), 1, "the refusal is not repeated");

    // Stop with --on-exit remove: auto goes, manual stays and copies.
    let status = d.stop(libc::SIGTERM);
    assert!(status.success(), "daemon exit: {status}\n{}", d.log_text());
    assert!(audit_lines(&d, "auto").iter().any(|l| l.contains("action=\"detach\"")), "{}", d.log_text());
    let list = agent.list();
    assert_eq!(session_names(&agent), set(&["manual"]));
    assert_eq!(session(&list, "manual"), Some(&manual), "manual changed by the stop");
    let vc = topo.host.ifindex("vc");
    assert!(
        !pinned_ifindexes(&topo.host).contains(&vc),
        "auto's hooks on vc left pinned: {:?}",
        pins(&topo.host)
    );
    let n = PINGS as usize;
    let cap0 = Capture::start(&topo.collectors[0], "eth0");
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[1], PINGS);
    assert_eq!(icmp(&frames), (n, n), "manual still copies vs both ways: {frames:?}");
    assert_eq!(icmp(&cap0.stop()), (0, 0), "auto still copies after its removal");
}

/// `netns:` + `interface:`: tapped at the host-side veth peer, directions
/// seen from inside the namespace; a namespace that appears after the start
/// is followed, and released when it goes.
#[test]
fn netns_selector_taps_the_host_side_peer_with_directions_from_inside() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let late_name = format!("mt{}-late-pod", std::process::id());
    let config = format!(
        "sessions:\n  - name: pod\n    sources: [{{netns: {}, interface: eth0}}]\n    dest: vk0\n    direction: ingress\n  - name: late\n    sources: [{{netns: {late_name}, interface: eth0}}]\n    dest: vk0\n    direction: egress\n",
        topo.client.name
    );
    let _d = Daemon::start(&topo.host, &config, &[]);
    wait_sources(&agent, "pod", &["vc"]);
    assert_eq!(settled_sources(&agent, "late"), Some(set(&[])), "its namespace does not exist yet");
    // What the client's eth0 receives (the replies) is what vc sends.
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (0, PINGS as usize), "ingress seen from inside the pod: {frames:?}");
    let vc = topo.host.ifindex("vc");
    let pinned = pins(&topo.host);
    assert!(pinned.iter().any(|(p, _)| *p == format!("src-egress-{vc}")), "{pinned:?}");
    assert!(!pinned.iter().any(|(p, _)| *p == format!("src-ingress-{vc}")), "{pinned:?}");

    // A namespace created after the start, then its veth.
    mirror_tests::ip(&["netns", "add", &late_name]);
    let late = Netns { name: late_name };
    veth(&topo.host, "vl", &late, "eth0", None);
    wait_sources(&agent, "late", &["vl"]);
    let vl = topo.host.ifindex("vl");
    let pinned = pins(&topo.host);
    // What eth0 sends inside is what vl receives here.
    assert!(pinned.iter().any(|(p, _)| *p == format!("src-ingress-{vl}")), "{pinned:?}");
    assert!(!pinned.iter().any(|(p, _)| *p == format!("src-egress-{vl}")), "{pinned:?}");
    drop(late);
    wait_sources(&agent, "late", &[]);
    wait_until(WAIT, "vl's pins gone with its namespace", || !pinned_ifindexes(&topo.host).contains(&vl));
    wait_sources(&agent, "pod", &["vc"]);
}

/// Pings `count` times with 200-byte payloads (242-byte frames, longer than
/// a 128-byte snap length) while capturing on `collectors`.
fn big_pings(topo: &Topology, count: u32) -> Vec<Vec<Frame>> {
    let caps: Vec<Capture> = topo.collectors.iter().map(|c| Capture::start(c, "eth0")).collect();
    let n = count.to_string();
    let out = topo
        .client
        .command(&["ping", "-q", "-c", &n, "-i", "0.01", "-s", "200", "-W", "1", SERVER_IP])
        .output()
        .expect("spawning ping");
    assert!(out.status.success(), "production pings lost: {}", String::from_utf8_lossy(&out.stdout));
    caps.into_iter()
        .map(|c| {
            c.settle();
            c.stop()
        })
        .collect()
}

/// A destination change to an interface whose egress hook cannot take our
/// cut program (its TCX hook already holds as many programs as the kernel
/// allows) leaves the session as it was: copies keep going, cut, to the
/// old destination, and never uncut to the new one. Once the hook has room,
/// the daemon's retry completes the change by itself.
#[test]
fn a_destination_that_cannot_cut_never_gets_uncut_copies() {
    use aya::programs::{SchedClassifier, TcAttachType};
    let topo = Topology::new(2);
    let agent = topo.agent();
    let yaml = |dest: &str| {
        format!("sessions:\n  - name: s\n    sources: [{{name: vc}}]\n    dest: {dest}\n    snaplen: 128\n")
    };
    let d = Daemon::start(&topo.host, &yaml("vk0"), &[]);
    let frames = big_pings(&topo, 10);
    assert_eq!(icmp(&frames[0]), (10, 10), "copies at collector 0");
    assert!(frames[0].iter().all(|f| f.len == 128), "copies are cut to 128 bytes");

    // Fill vk1's egress hook with foreign pass-through programs until the
    // kernel takes no more.
    let bytes = std::fs::read(mirror_tests::ebpf_object().with_file_name("bench")).expect("bench object");
    let foreign: Vec<aya::Ebpf> = topo.host.run(|| {
        let mut held = Vec::new();
        loop {
            let mut ebpf = aya::EbpfLoader::new().load(&bytes).expect("load");
            let prog: &mut SchedClassifier =
                ebpf.program_mut("bench_clone_floor").expect("program").try_into().expect("classifier");
            prog.load().expect("verifier");
            if prog.attach("vk1", TcAttachType::Egress).is_err() {
                break;
            }
            held.push(ebpf);
            assert!(held.len() <= 64, "the hook takes more than 64 programs");
        }
        held
    });
    assert!(foreign.len() >= 60, "only {} foreign programs fit", foreign.len());

    d.write_config(&yaml("vk1"));
    d.wait_log("left unchanged: its destination's cut hook is not attached", 1, WAIT);
    let vk0 = topo.host.ifindex("vk0");
    let list = agent.list();
    let s = session(&list, "s").expect("session s");
    assert_eq!(s["dest"]["ifindex"].as_u64(), Some(u64::from(vk0)), "the session moved anyway: {s}");
    let frames = big_pings(&topo, 10);
    assert_eq!(icmp(&frames[0]), (10, 10), "the old destination stopped getting copies");
    assert!(frames[0].iter().all(|f| f.len == 128), "copies to the old destination are cut");
    assert_eq!(icmp(&frames[1]), (0, 0), "the new destination got copies without its cut hook");
    for dir in ["ingress", "egress"] {
        assert_eq!(agent.packets("s", dir, "not_cut"), 0, "{dir}: a copy was sent uncut");
    }

    // Room on the hook: the retry completes the change with no command.
    drop(foreign);
    let vk1 = topo.host.ifindex("vk1");
    wait_until(WAIT, "the session to move to vk1", || {
        session(&agent.list(), "s").is_some_and(|s| {
            s["dest"]["ifindex"].as_u64() == Some(u64::from(vk1))
                && s["hooks_missing"] == serde_json::json!([])
        })
    });
    let frames = big_pings(&topo, 10);
    assert_eq!((icmp(&frames[0]), icmp(&frames[1])), ((0, 0), (10, 10)), "copies follow the new destination");
    assert!(frames[1].iter().all(|f| f.len == 128), "copies to the new destination are cut");
    for dir in ["ingress", "egress"] {
        assert_eq!(agent.packets("s", dir, "not_cut"), 0, "{dir}: a copy was sent uncut");
    }
}

/// A reload that changes a session's filter: the new program is written
/// into the selector bank no slot uses, then the slots switch to it, so every
/// packet is judged by the old or the new filter, whole (matched + filtered
/// = every packet the source saw, exactly; what was captured = matched). A
/// second change reuses the first bank (after a grace period). The other
/// session's state is not touched.
#[test]
fn a_reload_swaps_a_filter_atomically_and_leaves_other_sessions_alone() {
    let topo = Topology::new(2);
    let agent = topo.agent();
    let config = |a_filter: &str| {
        format!(
            "sessions:\n  - name: a\n    sources: [{{name: vc}}]\n    dest: vk0\n    filter: \"{a_filter}\"\n  - name: b\n    sources: [{{name: vs}}]\n    dest: vk1\n"
        )
    };
    let requests = "icmp[icmptype] = icmp-echo";
    let replies = "icmp[icmptype] = icmp-echoreply";
    let d = Daemon::start(&topo.host, &config(requests), &[]);
    wait_sources(&agent, "a", &["vc"]);
    wait_sources(&agent, "b", &["vs"]);
    let b_before = session(&agent.list(), "b").expect("b").clone();
    // `list` shows the canonical form (names resolved: `icmp[0] = 8`).
    let canonical = |e: &str| mirror_agent::filter::parse_expr(e).expect("valid").to_string();
    let filter_of = |list: &Value| session(list, "a").expect("a")["select"]["filter"].clone();
    assert_eq!(filter_of(&agent.list()), canonical(requests));
    let native = |list: &Value| session(list, "a").expect("a")["select"]["filter_native"].clone();
    assert_eq!(native(&agent.list()), Value::Bool(true), "the daemon's filters run as native code");
    let seen = |dir: &str| ["matched", "filtered"].iter().map(|r| agent.packets("a", dir, r)).sum::<u64>();

    let cap = Capture::start(&topo.collectors[0], "eth0");
    let pings = 300;
    let r = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&topo.client, SERVER_IP, pings));
        wait_until(WAIT, "pings flowing", || agent.packets("a", "ingress", "matched") >= 30);
        d.write_config(&config(replies));
        wait_until(WAIT, "a's new filter", || filter_of(&agent.list()) == canonical(replies));
        pinger.join().expect("pinger")
    });
    assert_eq!(native(&agent.list()), Value::Bool(true), "the new filter's bank has its native code too");
    assert_eq!((r.transmitted, r.received), (u64::from(pings), u64::from(pings)), "production pings lost");
    let frames = cap.stop();
    let (req, rep) = icmp(&frames);
    // Requests enter vc (its ingress), replies leave it (egress): before the
    // swap only requests are copied, after it only replies; a ping whose
    // request passed just before and reply just after has both.
    assert!(req > 0 && rep > 0, "both filters applied: {req} requests, {rep} replies");
    assert!(
        (pings as usize..=pings as usize + 1).contains(&(req + rep)),
        "{req} + {rep} copies for {pings} pings"
    );
    assert_eq!(seen("ingress") + seen("egress"), 2 * u64::from(pings), "a packet judged twice or not at all");
    let matched = agent.packets("a", "ingress", "matched") + agent.packets("a", "egress", "matched");
    assert_eq!(matched, (req + rep) as u64, "matched = what reached the collector");

    // Back to the first filter: its bank is written again.
    d.write_config(&config(requests));
    wait_until(WAIT, "a's filter back", || filter_of(&agent.list()) == canonical(requests));
    let frames = ping_and_capture(&topo.client, SERVER_IP, &topo.collectors[0], PINGS);
    assert_eq!(icmp(&frames), (PINGS as usize, 0));
    assert_eq!(session(&agent.list(), "b").expect("b"), &b_before, "b untouched");
    assert_eq!(audit_lines(&d, "b").len(), 1, "b: only its first attach is audited");
    assert_eq!(audit_lines(&d, "a").iter().filter(|l| l.contains("action=\"update\"")).count(), 2);
}
