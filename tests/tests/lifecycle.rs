//! Attach/detach lifecycle: what the agent leaves behind, what it never
//! touches, and how it refuses bad input. Topology: `tests/README.md`.
use std::time::Duration;

use aya::programs::{SchedClassifier, TcAttachType};
use mirror_tests::{
    capture::Capture,
    topology::{Netns, SERVER_IP, Topology},
    traffic::ping,
    wait_until,
};

/// Names of the TCX programs on `dev`'s hook.
fn tcx_programs(ns: &Netns, dev: &str, hook: TcAttachType) -> Vec<String> {
    ns.run(|| {
        let (_, progs) = SchedClassifier::query_tcx(dev, hook).expect("query tcx");
        progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect()
    })
}

fn qdiscs(ns: &Netns, dev: &str) -> String {
    ns.sh(&["tc", "qdisc", "show", "dev", dev])
}

fn filters(ns: &Netns, dev: &str, hook: &str) -> String {
    ns.sh(&["tc", "filter", "show", "dev", dev, hook])
}

/// The operator's own classic mirror on `dev`'s ingress, as in the tc
/// port-mirroring guides: u32 + mirred, copying ICMP to a veth `opsN`.
/// Its hits are the veth's transmitted packets.
fn add_classic_mirror(ns: &Netns, dev: &str, sink: &str) {
    let peer = format!("{sink}p");
    ns.ip(&["link", "add", sink, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["link", "set", sink, "up"]);
    ns.sh(&["tc", "qdisc", "add", "dev", dev, "clsact"]);
    ns.sh(&[
        "tc", "filter", "add", "dev", dev, "ingress", "protocol", "ip", "u32", "match", "ip", "protocol",
        "1", "0xff", "action", "mirred", "egress", "mirror", "dev", sink,
    ]);
}

fn classic_hits(ns: &Netns, sink: &str) -> u64 {
    ns.link_packets(sink).1
}

/// Nothing of the agent is left in `topo.host`.
fn assert_no_trace(topo: &Topology) {
    assert!(!topo.host.pin_dir().exists(), "pin directory left behind");
    for dev in ["vc", "vs", "vk0"] {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let progs = tcx_programs(&topo.host, dev, hook);
            assert!(progs.iter().all(|p| !p.starts_with("mirror_")), "{dev} {hook:?}: {progs:?}");
        }
        assert!(!qdiscs(&topo.host, dev).contains("clsact"), "clsact left on {dev}");
    }
}

#[test]
fn detach_all_leaves_no_trace() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0", "--snaplen", "96"]);
    agent.ok(&["attach", "--name", "b", "--source", "vs", "--dest", "vk0", "--direction", "egress"]);
    assert_eq!(tcx_programs(&topo.host, "vc", TcAttachType::Ingress), ["mirror_src_ingr"]);
    assert_eq!(tcx_programs(&topo.host, "vk0", TcAttachType::Egress), ["mirror_dst_egre"]);
    agent.ok(&["detach", "--all"]);
    assert_no_trace(&topo);
    assert!(agent.ok(&["list"]).contains("no sessions"));
    // Idempotent.
    agent.ok(&["detach", "--all"]);
}

#[test]
fn detaching_the_last_session_leaves_no_trace() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0"]);
    agent.ok(&["detach", "a"]);
    assert_no_trace(&topo);
}

#[test]
fn classic_filter_on_the_same_hook_keeps_working() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let h = &topo.host;
    add_classic_mirror(h, "vc", "ops0");

    ping(&topo.client, SERVER_IP, 10);
    let before = classic_hits(h, "ops0");
    assert!(before >= 10, "filter not hit before attach: {before}");

    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    let cap = Capture::start(&topo.collectors[0], "eth0");
    ping(&topo.client, SERVER_IP, 10);
    assert_eq!(cap.stop().iter().filter(|f| f.is_echo_request()).count(), 10);
    let during = classic_hits(h, "ops0");
    assert_eq!(during - before, 10, "filter not hit while mirroring");

    agent.ok(&["detach", "m"]);
    ping(&topo.client, SERVER_IP, 10);
    assert_eq!(classic_hits(h, "ops0") - during, 10, "filter not hit after detach");
    assert!(qdiscs(h, "vc").contains("clsact"), "the operator's qdisc was removed");
    assert!(filters(h, "vc", "ingress").contains("u32"), "the operator's filter was removed");
}

#[test]
fn netlink_fallback_mirrors_and_cleans_up_only_what_it_created() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let h = &topo.host;
    // vs has the operator's own clsact and filter; vc has none.
    add_classic_mirror(h, "vs", "ops1");
    agent.ok(&[
        "--attach-mode",
        "netlink",
        "attach",
        "--name",
        "nl",
        "--source",
        "vc",
        "--source",
        "vs",
        "--dest",
        "vk0",
        "--direction",
        "ingress",
    ]);
    assert!(filters(h, "vc", "ingress").contains("mirror_src_ingress"));
    assert!(tcx_programs(h, "vc", TcAttachType::Ingress).is_empty(), "netlink mode used TCX");

    let cap = Capture::start(&topo.collectors[0], "eth0");
    ping(&topo.client, SERVER_IP, 10);
    let frames = cap.stop();
    assert_eq!(frames.iter().filter(|f| f.is_echo_request()).count(), 10);
    assert_eq!(frames.iter().filter(|f| f.is_echo_reply()).count(), 10);
    let before = classic_hits(h, "ops1");
    assert!(before >= 10, "operator filter behind ours not reached");

    agent.ok(&["--attach-mode", "netlink", "detach", "--all"]);
    assert!(!qdiscs(h, "vc").contains("clsact"), "the clsact the agent created stayed");
    assert!(qdiscs(h, "vs").contains("clsact"), "the operator's clsact was removed");
    let vs_filters = filters(h, "vs", "ingress");
    assert!(vs_filters.contains("u32") && !vs_filters.contains("mirror_"), "{vs_filters}");
    assert!(!h.pin_dir().exists());
}

#[test]
fn netlink_clsact_outlives_the_hook_that_created_it_while_others_use_it() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let h = &topo.host;
    let nl = |args: &[&str]| {
        let mut full = vec!["--attach-mode", "netlink"];
        full.extend_from_slice(args);
        agent.ok(&full)
    };
    // A's ingress hook creates vc's clsact; B's egress hook joins it.
    nl(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    nl(&[
        "attach",
        "--name",
        "b",
        "--source",
        "vc",
        "--dest",
        "vk0",
        "--direction",
        "egress",
        "--snaplen",
        "96",
    ]);
    nl(&["detach", "a"]);
    assert!(qdiscs(h, "vc").contains("clsact"), "clsact removed while b still uses it");
    let cap = Capture::start(&topo.collectors[0], "eth0");
    ping(&topo.client, SERVER_IP, 5);
    let frames = cap.stop();
    assert_eq!(frames.iter().filter(|f| f.is_echo_reply()).count(), 5, "b stopped mirroring");
    nl(&["detach", "b"]);
    assert_no_trace(&topo);
    assert!(!filters(h, "vk0", "egress").contains("mirror_"), "destination filter left behind");
}

/// Detaches a pinned bpf_link the way `bpftool link detach` does:
/// BPF_OBJ_GET on the pin, then BPF_LINK_DETACH.
fn force_detach_link(pin: &std::path::Path) {
    use std::os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    };

    use mirror_agent::dataplane::sys::{BPF_OBJ_GET, bpf};
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).unwrap();
    // Zeroed attrs: the path, then the link's fd, in the first word.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr).unwrap_or_else(|e| panic!("BPF_OBJ_GET {}: {e}", pin.display()));
    // SAFETY: a new fd nothing else owns; closed on drop.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u64; 16];
    attr[0] = fd as u64;
    bpf(BPF_LINK_DETACH, &mut attr).expect("BPF_LINK_DETACH");
    drop(link);
}

#[test]
fn a_hook_detached_behind_our_back_is_reported_and_repaired() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let h = &topo.host;
    agent.ok(&["attach", "--name", "a", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    let pin = h.pin_dir().join("links").join(format!("src-ingress-{}", h.ifindex("vc")));
    force_detach_link(&pin);
    assert!(tcx_programs(h, "vc", TcAttachType::Ingress).is_empty());

    assert_eq!(agent.list()["sessions"][0]["hooks_missing"], serde_json::json!(["src-ingress on vc"]));
    assert!(agent.ok(&["list"]).contains("not mirroring: hook src-ingress on vc"));

    // The next attach (of any session) repairs it.
    agent.ok(&["attach", "--name", "b", "--source", "vs", "--dest", "vk0", "--direction", "ingress"]);
    assert_eq!(tcx_programs(h, "vc", TcAttachType::Ingress), ["mirror_src_ingr"]);
    assert_eq!(agent.list()["sessions"][0]["hooks_missing"], serde_json::json!([]));
    let cap = Capture::start(&topo.collectors[0], "eth0");
    ping(&topo.client, SERVER_IP, 5);
    assert_eq!(cap.stop().iter().filter(|f| f.is_echo_request()).count(), 5, "a is not mirroring again");
}

#[test]
fn foreign_tcx_program_keeps_running_before_during_and_after() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let h = &topo.host;
    // A foreign program: a private copy of our own object, with its own maps
    // in a private bpffs, at vc ingress. It counts every packet it sees as
    // "no session" in its private COUNTERS.
    let bpffs = std::env::temp_dir().join(format!("mirror-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&bpffs).unwrap();
    mirror_tests::run_command(std::process::Command::new("mount").args([
        "-t",
        "bpf",
        "bpf",
        bpffs.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(mirror_tests::ebpf_object()).expect("eBPF object (cargo xtask build-ebpf)");
    let mut foreign = h.run(|| {
        let mut ebpf = aya::EbpfLoader::new().default_map_pin_directory(&bpffs).load(&bytes).expect("load");
        let prog: &mut SchedClassifier = ebpf.program_mut("mirror_src_ingress").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach("vc", TcAttachType::Ingress).unwrap();
        ebpf
    });
    let seen = |ebpf: &mut aya::Ebpf| -> u64 {
        let counters: aya::maps::PerCpuArray<_, mirror_common::DirectionCounters> =
            aya::maps::PerCpuArray::try_from(ebpf.map_mut("COUNTERS").unwrap()).unwrap();
        let idx = mirror_common::counter_index(0, mirror_common::direction::INGRESS);
        let no_session = mirror_common::reason::NO_SESSION as usize;
        counters.get(&idx, 0).unwrap().iter().map(|c| c.reasons[no_session].packets).sum()
    };

    ping(&topo.client, SERVER_IP, 10);
    let s0 = seen(&mut foreign);
    assert!(s0 >= 10);
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    assert_eq!(tcx_programs(h, "vc", TcAttachType::Ingress).len(), 2);
    ping(&topo.client, SERVER_IP, 10);
    let s1 = seen(&mut foreign);
    assert_eq!(s1 - s0, 10, "foreign program starved while we are attached");
    assert!(agent.packets("m", "ingress", "mirrored") >= 10);
    agent.ok(&["detach", "m"]);
    assert_eq!(tcx_programs(h, "vc", TcAttachType::Ingress), ["mirror_src_ingr"], "foreign program removed");
    ping(&topo.client, SERVER_IP, 10);
    assert_eq!(seen(&mut foreign) - s1, 10, "foreign program stopped after our detach");

    h.run(|| drop(foreign));
    let _ = std::process::Command::new("umount").arg(&bpffs).status();
    let _ = std::fs::remove_dir(&bpffs);
}

/// Bad input: non-zero exit, a message naming the problem, nothing changed.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let cases: &[(&[&str], &str)] = &[
        (&["attach", "--name", "x", "--source", "nope0", "--dest", "vk0"], "unknown interface \"nope0\""),
        (&["attach", "--name", "x", "--source", "vc", "--dest", "nope1"], "unknown interface \"nope1\""),
        (&["attach", "--name", "x", "--source", "vc", "--dest", "vc"], "destination \"vc\" is also a source"),
        (
            &["attach", "--name", "x", "--source", "vc", "--source", "vc", "--dest", "vk0"],
            "source \"vc\" is given twice",
        ),
        (&["attach", "--name", "x", "--source", "vc", "--dest", "lo"], "loopback"),
        (
            &["attach", "--name", "x", "--source", "vc", "--dest", "vk0", "--snaplen", "10"],
            "invalid snaplen 10",
        ),
        (
            &["attach", "--name", "x", "--source", "vc", "--dest", "vk0", "--snaplen", "70000"],
            "invalid snaplen 70000",
        ),
        (&["attach", "--name", "x", "--source", "vc", "--dest", "vk0", "--snaplen=-5"], "snaplen"),
        (
            &["attach", "--name", "bad name", "--source", "vc", "--dest", "vk0"],
            "invalid session name \"bad name\"",
        ),
        (
            &["attach", "--name", "x", "--source", "vc", "--dest", "vk0", "--direction", "sideways"],
            "sideways",
        ),
        (&["detach", "ghost"], "no session named \"ghost\""),
        (&["stats", "ghost"], "no session named \"ghost\""),
    ];
    for (args, expected) in cases {
        let err = agent.fails(args);
        assert!(err.contains(expected), "{args:?}: expected {expected:?} in:\n{err}");
        assert_no_trace(&topo);
    }

    // A duplicate name is refused and the existing session is untouched.
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    let before = agent.list();
    let err = agent.fails(&["attach", "--name", "m", "--source", "vs", "--dest", "vk0"]);
    assert!(err.contains("a session named \"m\" already exists"), "{err}");
    assert_eq!(agent.list(), before);
    assert!(tcx_programs(&topo.host, "vs", TcAttachType::Ingress).is_empty());
    agent.ok(&["detach", "m"]);

    // Unknown namespace.
    let out = std::process::Command::new(mirror_tests::agent_bin())
        .args(["-n", "no-such-ns", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("network namespace \"no-such-ns\" not found"));
}

#[test]
fn ip_netns_exec_is_refused_with_an_explanation() {
    let topo = Topology::new(1);
    let bin = mirror_tests::agent_bin();
    let out = topo
        .host
        .command(&[bin.to_str().unwrap(), "attach", "--name", "m", "--source", "vc", "--dest", "vk0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attach under ip netns exec succeeded");
    assert!(err.contains("private mount namespace") && err.contains("--netns"), "{err}");
    assert_no_trace(&topo);
    // The supported way works.
    topo.agent().ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
}

#[test]
fn a_container_without_the_host_bpffs_is_refused() {
    // A container's view: its own PID namespace (the agent is PID 1 there)
    // and a mount namespace of its own, with no bpffs at the pin path.
    let topo = Topology::new(1);
    let not_bpffs = std::env::temp_dir().join(format!("mirror-no-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&not_bpffs).unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--mount"])
        .arg(mirror_tests::agent_bin())
        .args(["-n", &topo.host.name, "--bpffs", not_bpffs.to_str().unwrap()])
        .args(["attach", "--name", "m", "--source", "vc", "--dest", "vk0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attach in a container without bpffs succeeded");
    assert!(err.contains("runs in a container") && err.contains("hostPath"), "{err}");
    assert!(std::fs::read_dir(&not_bpffs).unwrap().next().is_none(), "something was written");
    assert!(tcx_programs(&topo.host, "vc", TcAttachType::Ingress).is_empty());
    std::fs::remove_dir(&not_bpffs).unwrap();
}

#[test]
fn sessions_in_different_namespaces_do_not_collide() {
    let one = Topology::new(1);
    let two = Topology::new(1);
    one.agent().ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0"]);
    two.agent().ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0", "--direction", "egress"]);
    let cap = Capture::start(&two.collectors[0], "eth0");
    ping(&two.client, SERVER_IP, 5);
    let frames = cap.stop();
    assert_eq!(frames.iter().filter(|f| f.is_echo_reply()).count(), 5);
    assert_eq!(frames.iter().filter(|f| f.is_echo_request()).count(), 0);
    one.agent().ok(&["detach", "m"]);
    assert_eq!(two.agent().list()["sessions"].as_array().unwrap().len(), 1);
    wait_until(Duration::from_secs(1), "first namespace clean", || !one.host.pin_dir().exists());
}

/// State in 0.1.0's layout (a pinned `SOURCES` map) is refused by every
/// verb, with a message naming the directory and what to do; the sessions
/// it holds keep mirroring.
#[test]
fn state_of_the_previous_layout_is_refused_and_left_alone() {
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "m", "--source", "vc", "--dest", "vk0", "--direction", "ingress"]);
    // Any bpf object pinned under the old name stands for 0.1.0 state.
    let maps = topo.host.pin_dir().join("maps");
    let sessions = aya::maps::MapData::from_pin(maps.join("SESSIONS")).expect("SESSIONS pinned");
    let legacy = maps.join("SOURCES");
    sessions.pin(&legacy).expect("pinning SOURCES");

    for args in [
        &["list"][..],
        &["stats"],
        &["attach", "--name", "n", "--source", "vs", "--dest", "vk0"],
        &["detach", "m"],
        &["detach", "--all"],
    ] {
        let err = agent.fails(args);
        assert!(err.contains("0.1.0") && err.contains("detach --all"), "{args:?}: {err}");
    }
    let cap = Capture::start(&topo.collectors[0], "eth0");
    ping(&topo.client, SERVER_IP, 5);
    assert_eq!(cap.stop().iter().filter(|f| f.is_echo_request()).count(), 5, "mirroring was disturbed");

    std::fs::remove_file(&legacy).unwrap();
    agent.ok(&["detach", "--all"]);
    assert!(!topo.host.pin_dir().exists());
}

/// `attach --replace`: the CLI's way to change a live session (the daemon's
/// reload path): a filter changed in the middle of a ping stream applies to
/// whole packets, copies never stop, the session keeps its id and creation
/// time; a name that is not there yet is simply attached.
#[test]
fn attach_replace_changes_a_live_session_in_place() {
    use mirror_tests::capture::Frame;
    let topo = Topology::new(1);
    let agent = topo.agent();
    let attach = |filter: &str| {
        agent.ok(&[
            "attach",
            "--replace",
            "--name",
            "r",
            "--source",
            "vc",
            "--dest",
            "vk0",
            "--filter",
            filter,
        ]);
    };
    attach("icmp[icmptype] = icmp-echo");
    let before = agent.list()["sessions"][0].clone();
    let err = agent.fails(&["attach", "--name", "r", "--source", "vc", "--dest", "vk0"]);
    assert!(
        err.contains("a session named \"r\" already exists (attach --replace changes it in place)"),
        "{err}"
    );
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let pings = 200;
    let r = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&topo.client, SERVER_IP, pings));
        wait_until(Duration::from_secs(10), "pings flowing", || {
            agent.packets("r", "ingress", "matched") >= 20
        });
        attach("icmp[icmptype] = icmp-echoreply");
        pinger.join().expect("pinger")
    });
    assert_eq!(r.received, u64::from(pings), "production pings lost");
    let frames = cap.stop();
    let (req, rep) = (
        frames.iter().filter(|f| Frame::is_echo_request(f)).count(),
        frames.iter().filter(|f| Frame::is_echo_reply(f)).count(),
    );
    assert!(req >= 20 && rep > 0, "{req} requests, {rep} replies");
    assert!(
        (pings as usize..=pings as usize + 1).contains(&(req + rep)),
        "{req} + {rep} copies for {pings} pings"
    );
    let after = agent.list()["sessions"][0].clone();
    assert_eq!((&after["id"], &after["created_unix_secs"]), (&before["id"], &before["created_unix_secs"]));
    assert_eq!(after["select"]["filter"], "icmp[0] = 0");
}
