//! Capabilities: a verb run without CAP_NET_ADMIN, CAP_BPF or (for `-n`)
//! CAP_SYS_ADMIN while another session mirrors is refused up front, naming
//! what is missing; and when the kernel refuses past that check (as an LSM
//! would: `MIRROR_AGENT_SKIP_CAPABILITY_CHECK=1` with the capabilities
//! dropped), the command fails and nothing is touched; a probe that cannot
//! read a live session's pin reports "could not check" and unpins nothing.
//! Throughout, a live session keeps copying every packet of a steady ping
//! stream: its pins stay, `list` never reports a missing hook, and the
//! collector gets exactly one copy per echo request and per reply.
//! Topology: `tests/README.md`.
use std::{
    collections::BTreeSet,
    process::{Command, Output},
    time::Duration,
};

use mirror_tests::{
    agent_bin,
    capture::Capture,
    topology::{SERVER_IP, Topology, session_counter},
    traffic::PingResult,
    wait_until,
};

/// Echo requests of the stream, 10 ms apart: enough to outlast every command
/// a test runs (checked: the stream must still be running after the last one).
const PINGS: u32 = 400;
/// ICMP payload: each frame is 14 + 20 + 8 + 200 = 242 bytes, more than the
/// snap length, so a copy the destination hook did not cut is seen as such.
const PAYLOAD: u32 = 200;
const FRAME_LEN: usize = 242;
const SNAPLEN: usize = 128;

/// How the restricted agent gets into the host namespace.
#[derive(Debug, Clone, Copy)]
enum Enter {
    /// `mirror-agent -n <host>` (the agent's setns: needs CAP_SYS_ADMIN).
    Flag,
    /// `nsenter --net=/run/netns/<host>` before dropping capabilities, so
    /// that the agent itself needs no CAP_SYS_ADMIN. nsenter keeps the
    /// caller's mount namespace (the host's bpffs), unlike `ip netns exec`.
    Nsenter,
}

/// What a restricted command must say.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The up-front check: "<verb> needs <CAP> to …; this process does not have it".
    UpFront(&'static str),
    /// The kernel refused past a skipped check: the probe could not look.
    KernelRefusal,
}

/// One command run with capabilities dropped.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// setpriv capability names dropped from the inheritable and bounding
    /// sets (root gets exactly those at exec, so they leave its effective set).
    without: &'static [&'static str],
    enter: Enter,
    skip_check: bool,
    args: &'static [&'static str],
    expect: Expect,
}

impl Case {
    const fn up_front(
        without: &'static [&'static str],
        enter: Enter,
        args: &'static [&'static str],
        cap: &'static str,
    ) -> Self {
        Self { without, enter, skip_check: false, args, expect: Expect::UpFront(cap) }
    }

    const fn past_the_check(without: &'static [&'static str], args: &'static [&'static str]) -> Self {
        Self { without, enter: Enter::Nsenter, skip_check: true, args, expect: Expect::KernelRefusal }
    }

    fn run(&self, topo: &Topology) -> Output {
        let dropped: Vec<String> = self.without.iter().map(|c| format!("-{c}")).collect();
        let dropped = dropped.join(",");
        let mut cmd = match self.enter {
            Enter::Flag => Command::new("setpriv"),
            Enter::Nsenter => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", topo.host.name)).arg("setpriv");
                cmd
            }
        };
        cmd.arg(format!("--inh-caps={dropped}")).arg(format!("--bounding-set={dropped}")).arg(agent_bin());
        if let Enter::Flag = self.enter {
            cmd.args(["-n", &topo.host.name]);
        }
        cmd.args(self.args);
        if self.skip_check {
            cmd.env("MIRROR_AGENT_SKIP_CAPABILITY_CHECK", "1");
        } else {
            cmd.env_remove("MIRROR_AGENT_SKIP_CAPABILITY_CHECK");
        }
        cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
    }

    /// Runs the case and checks that it failed the way it should.
    fn check(&self, topo: &Topology) {
        let out = self.run(topo);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let story = format!("{self:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!out.status.success(), "succeeded without the capabilities it needs: {story}");
        assert!(stdout.is_empty(), "printed a result although it failed: {story}");
        match self.expect {
            Expect::UpFront(cap) => {
                let verb = self.args[0];
                let needs = format!("{verb} needs {cap} to ");
                assert!(
                    stderr.contains(&needs) && stderr.contains("this process does not have it"),
                    "expected the up-front refusal {needs:?}…: {story}"
                );
            }
            Expect::KernelRefusal => {
                assert!(
                    stderr.contains("CAP_") || stderr.contains("Operation not permitted"),
                    "the refusal names neither a capability nor EPERM: {story}"
                );
                // The probe itself reads pins, which root may do without
                // these capabilities; the kernel refuses the program load
                // instead. A probe that cannot look is tested below.
            }
        }
    }
}

/// The names of the pins under the host namespace's `links/`.
fn link_pins(topo: &Topology) -> BTreeSet<String> {
    let dir = topo.host.pin_dir().join("links");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("pin entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// `list --json` as root: "live" is the only session and no hook of it is missing.
fn assert_live_is_whole(topo: &Topology, after: &str) {
    let list = topo.agent().list();
    let sessions = list["sessions"].as_array().expect("sessions array");
    let names: Vec<&str> = sessions.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["live"], "after {after}: sessions other than \"live\" exist (or it is gone): {list}");
    assert_eq!(
        sessions[0]["hooks_missing"],
        serde_json::json!([]),
        "after {after}: \"live\" lost a hook: {list}"
    );
}

/// `ping -c PINGS -s PAYLOAD`, 10 ms apart, client → server.
fn ping_stream(topo: &Topology) -> PingResult {
    let out = topo
        .client
        .command(&[
            "ping",
            "-q",
            "-c",
            &PINGS.to_string(),
            "-s",
            &PAYLOAD.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            SERVER_IP,
        ])
        .output()
        .expect("spawning ping");
    mirror_tests::traffic::ping_result(&out)
}

/// Attaches "live" (vc → vk0, both directions, with `snaplen` if given),
/// then runs every case while the client pings the server through vc, and
/// checks after each one, and at the end, that "live" never stopped.
fn live_session_survives(snaplen: Option<&str>, cases: &[Case]) {
    let topo = Topology::new(1);
    let agent = topo.agent();
    let mut attach = vec!["attach", "--name", "live", "--source", "vc", "--dest", "vk0"];
    if let Some(s) = snaplen {
        attach.extend(["--snaplen", s]);
    }
    agent.ok(&attach);
    let vc = topo.host.ifindex("vc");
    let mut expected_pins: BTreeSet<String> =
        [format!("src-ingress-{vc}"), format!("src-egress-{vc}")].into();
    if snaplen.is_some() {
        expected_pins.insert(format!("dst-egress-{}", topo.host.ifindex("vk0")));
    }
    assert_eq!(link_pins(&topo), expected_pins, "the pins of \"live\" after attach");
    assert_live_is_whole(&topo, "attach");

    let cap = Capture::start(&topo.collectors[0], "eth0");
    let ping = std::thread::scope(|s| {
        let stream = s.spawn(|| ping_stream(&topo));
        // (The capture's own count only moves when the wire is quiet, which a
        // steady stream never is: ask the counters.)
        wait_until(Duration::from_secs(5), "\"live\" to copy the first pings of the stream", || {
            agent.packets("live", "ingress", "mirrored") >= 10
        });
        for case in cases {
            case.check(&topo);
            assert_eq!(link_pins(&topo), expected_pins, "the pins of \"live\" changed after {case:?}");
            assert_live_is_whole(&topo, &format!("{case:?}"));
        }
        assert!(
            !stream.is_finished(),
            "the ping stream ended before the last command did: raise PINGS so it covers them all"
        );
        stream.join().expect("ping thread panicked")
    });
    let frames = cap.stop();

    assert_eq!(ping.transmitted, u64::from(PINGS), "ping did not send the whole stream: {ping:?}");
    assert_eq!(ping.received, ping.transmitted, "production traffic lost: {ping:?}");
    // vc in both directions: one copy of each request, one of each reply.
    let requests = frames.iter().filter(|f| f.is_echo_request()).count() as u64;
    let replies = frames.iter().filter(|f| f.is_echo_reply()).count() as u64;
    assert_eq!(
        (requests, replies),
        (ping.transmitted, ping.received),
        "\"live\" missed copies while the restricted commands ran: {ping:?}"
    );
    let copy_len = if snaplen.is_some() { SNAPLEN } else { FRAME_LEN };
    let wrong: Vec<usize> = frames
        .iter()
        .filter(|f| f.is_echo_request() || f.is_echo_reply())
        .map(|f| f.len)
        .filter(|&len| len != copy_len)
        .collect();
    assert!(wrong.is_empty(), "copies of a length other than {copy_len} (destination hook lost?): {wrong:?}");
    let stats = agent.stats();
    for dir in ["ingress", "egress"] {
        let failed = session_counter(&stats, "live", dir, "failed");
        let not_cut = session_counter(&stats, "live", dir, "not_cut");
        assert_eq!((failed, not_cut), (0, 0), "{dir}: copies of \"live\" failed or went uncut: {stats}");
    }
    assert_eq!(link_pins(&topo), expected_pins, "the pins of \"live\" at the end");
    assert_live_is_whole(&topo, "the stream");
}

const NET_ADMIN: &[&str] = &["net_admin"];
/// CAP_SYS_ADMIN stands in for CAP_BPF: both go.
const BPF: &[&str] = &["bpf", "sys_admin"];
const SYS_ADMIN: &[&str] = &["sys_admin"];
/// CAP_SYS_ADMIN would let the kernel accept what CAP_NET_ADMIN is for.
const NET_ADMIN_AND_SYS_ADMIN: &[&str] = &["net_admin", "sys_admin"];

const ATTACH_NEW: &[&str] = &["attach", "--name", "new", "--source", "vs", "--dest", "vk0"];
const ATTACH_NEW_CUT: &[&str] =
    &["attach", "--name", "new", "--source", "vs", "--dest", "vk0", "--snaplen", "128"];
/// A second session on live's own source: its hook entry would be rewritten.
const ATTACH_NEW_ON_VC: &[&str] = &["attach", "--name", "new", "--source", "vc", "--dest", "vk0"];
const DETACH_LIVE: &[&str] = &["detach", "live"];
const DETACH_ALL: &[&str] = &["detach", "--all"];
const LIST: &[&str] = &["list"];
const LIST_JSON: &[&str] = &["list", "--json"];

#[test]
fn without_cap_net_admin_every_verb_is_refused_up_front_and_the_live_session_keeps_mirroring() {
    use Enter::{Flag, Nsenter};
    let cap = "CAP_NET_ADMIN";
    live_session_survives(
        Some("128"),
        &[
            Case::up_front(NET_ADMIN, Flag, ATTACH_NEW, cap),
            Case::up_front(NET_ADMIN, Flag, ATTACH_NEW_CUT, cap),
            Case::up_front(NET_ADMIN, Flag, ATTACH_NEW_ON_VC, cap),
            Case::up_front(NET_ADMIN, Flag, DETACH_LIVE, cap),
            Case::up_front(NET_ADMIN, Flag, DETACH_ALL, cap),
            Case::up_front(NET_ADMIN, Flag, LIST, cap),
            Case::up_front(NET_ADMIN, Flag, LIST_JSON, cap),
            Case::up_front(NET_ADMIN_AND_SYS_ADMIN, Nsenter, ATTACH_NEW, cap),
            Case::up_front(NET_ADMIN_AND_SYS_ADMIN, Nsenter, DETACH_LIVE, cap),
        ],
    );
}

#[test]
fn without_cap_bpf_or_cap_sys_admin_every_verb_is_refused_up_front_and_the_live_session_keeps_mirroring() {
    use Enter::{Flag, Nsenter};
    let bpf = "CAP_BPF";
    live_session_survives(
        None,
        &[
            Case::up_front(BPF, Nsenter, ATTACH_NEW, bpf),
            Case::up_front(BPF, Nsenter, ATTACH_NEW_CUT, bpf),
            Case::up_front(BPF, Nsenter, ATTACH_NEW_ON_VC, bpf),
            Case::up_front(BPF, Nsenter, DETACH_LIVE, bpf),
            Case::up_front(BPF, Nsenter, DETACH_ALL, bpf),
            Case::up_front(BPF, Nsenter, LIST_JSON, bpf),
            Case::up_front(BPF, Nsenter, &["stats", "--json"], bpf),
            // `-n` needs CAP_SYS_ADMIN for setns, before anything else.
            Case::up_front(SYS_ADMIN, Flag, ATTACH_NEW, "CAP_SYS_ADMIN"),
            Case::up_front(SYS_ADMIN, Flag, DETACH_LIVE, "CAP_SYS_ADMIN"),
            Case::up_front(SYS_ADMIN, Flag, LIST, "CAP_SYS_ADMIN"),
        ],
    );
}

/// As an LSM would: the check says yes, the kernel says no. Detach is not
/// among them: unpinning a link and closing its fd need no capability, so
/// the kernel lets it through (and it does what it was asked).
#[test]
fn a_kernel_refusal_past_the_check_aborts_and_leaves_the_live_session_alone() {
    live_session_survives(
        Some("128"),
        &[
            Case::past_the_check(NET_ADMIN_AND_SYS_ADMIN, ATTACH_NEW),
            Case::past_the_check(NET_ADMIN_AND_SYS_ADMIN, ATTACH_NEW_CUT),
            // Not here: attaching to vc's existing hooks and `list` need only
            // CAP_BPF (map writes, and the pin probe), so the kernel allows them.
            Case::past_the_check(BPF, ATTACH_NEW),
            Case::past_the_check(BPF, ATTACH_NEW_CUT),
        ],
    );
}

/// A probe that cannot read the live session's link pins (mode 000, and no
/// CAP_DAC_OVERRIDE to bypass it) reports "could not check hook" and aborts:
/// it never takes the link for gone, never unpins it, and the new session is
/// rolled back. The live session copies every packet afterwards.
#[test]
fn a_probe_that_cannot_read_a_live_pin_aborts_and_never_unpins_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let topo = Topology::new(1);
    let agent = topo.agent();
    agent.ok(&["attach", "--name", "live", "--source", "vc", "--dest", "vk0"]);
    let links = topo.host.pin_dir().join("links");
    let set_mode = |mode: u32| {
        for e in std::fs::read_dir(&links).expect("links dir") {
            let path = e.expect("pin").path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod pin");
        }
    };
    let before = link_pins(&topo);
    set_mode(0o000);
    let out = Command::new("setpriv")
        .args(["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"])
        .arg(agent_bin())
        .args(["-n", &topo.host.name, "attach", "--name", "new", "--source", "vs", "--dest", "vk0"])
        .output()
        .expect("spawning setpriv");
    set_mode(0o600);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attach succeeded although it could not check the live hooks: {stderr}");
    assert!(stderr.contains("could not check hook"), "the probe's refusal is not reported: {stderr}");
    assert_eq!(link_pins(&topo), before, "a pin of the live session changed: {stderr}");
    assert_live_is_whole(&topo, "an attach whose probe could not look");
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let sent = mirror_tests::traffic::ping(&topo.client, SERVER_IP, 10);
    assert_eq!((sent.transmitted, sent.received), (10, 10));
    cap.settle();
    let frames = cap.stop();
    let copies = (
        frames.iter().filter(|f| f.is_echo_request()).count(),
        frames.iter().filter(|f| f.is_echo_reply()).count(),
    );
    assert_eq!(copies, (10, 10), "the live session stopped copying");
}
