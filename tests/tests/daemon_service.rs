//! The agent as a service: `run` restarted under traffic (state adopted, no
//! gap, no duplicate), a reboot simulated with a private bpffs, the
//! Prometheus endpoint scraped by promtool and by a real Prometheus server,
//! `gc` of dead namespaces' state, and `check` (plan, no change).
//! Topology: `tests/README.md`.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use mirror_tests::{
    agent_bin,
    capture::{Capture, Frame},
    daemon::Daemon,
    run_command,
    topology::{Agent, Netns, SERVER_IP, Topology, session_counter},
    traffic::ping,
    wait_until,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The config every test starts from: session `x`, vc → vk0, both directions.
const CONFIG_X: &str = "sessions:\n  - name: x\n    sources: [{name: vc}]\n    dest: vk0\n";

/// The standard topology, with the bridge's link-local IGMP reports
/// silenced. `multicast off` does not stop br0 from joining the
/// all-snoopers group 224.0.0.106 (multicast snooping is on by default),
/// and its IGMPv3 state-change report, repeated for a second or two after
/// the ports' addresses changed br0's, is flooded out of vc: a copy the
/// test did not send. The sysctl is read when a report is built.
fn quiet_topology(collectors: usize) -> Topology {
    let topo = Topology::new(collectors);
    topo.host.sh(&["sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0"]);
    topo
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(role: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mirror-svc-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).expect("writing a temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn count(frames: &[Frame], f: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|x| f(x)).count()
}

/// Every pin under `dir` (maps and links), by relative path → inode.
fn pins(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for sub in ["maps", "links"] {
        if let Ok(entries) = fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                let m = e.metadata().expect("pin metadata");
                out.insert(format!("{sub}/{}", e.file_name().to_string_lossy()), m.ino());
            }
        }
    }
    out
}

/// (revision, program ids) of `dev`'s TCX hook. The kernel bumps the
/// revision on every attach and detach on that hook.
fn tcx_hook(ns: &Netns, dev: &str, hook: TcAttachType) -> (u64, Vec<u32>) {
    ns.run(|| {
        let (revision, progs) = SchedClassifier::query_tcx(dev, hook).expect("query tcx");
        (revision, progs.iter().map(aya::programs::ProgramInfo::id).collect())
    })
}

/// Names of the programs on `dev`'s TCX hook.
fn tcx_names(ns: &Netns, dev: &str, hook: TcAttachType) -> Vec<String> {
    ns.run(|| {
        let (_, progs) = SchedClassifier::query_tcx(dev, hook).expect("query tcx");
        progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect()
    })
}

fn mirror_hooked(ns: &Netns, dev: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .any(|h| tcx_names(ns, dev, h).iter().any(|p| p.starts_with("mirror_")))
}

fn session_names(list: &serde_json::Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// `ping` output → (transmitted, received).
fn parse_ping(stdout: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("unexpected ping output:\n{text}"));
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    (nums[0], nums[1])
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind :0").local_addr().expect("local addr").port()
}

/// A plain HTTP/1.1 GET; returns (head, body).
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    (head.to_owned(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Runs `mirror-agent ARGS…` with no `-n` (global flags, `gc`).
fn agent_global(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin()).args(args).output().expect("spawning mirror-agent")
}

/// Ten restarts (SIGTERM and SIGKILL alternating) during a 1500-ping
/// stream: every request and reply is copied exactly once, the restarted
/// daemons adopt the pinned state without touching a hook.
#[test]
fn restarts_under_traffic_lose_and_duplicate_no_copy() {
    const PINGS: u64 = 1500;
    const RESTARTS: usize = 10;
    let started = Instant::now();
    let topo = quiet_topology(1);
    let mut daemon = Daemon::start(&topo.host, CONFIG_X, &[]);
    let agent = topo.agent();
    assert_eq!(session_names(&agent.list()), ["x"]);
    let first_log = daemon.log_text();
    assert_eq!(first_log.matches("action=\"attach\"").count(), 1, "first start:\n{first_log}");

    let pin_dir = topo.host.pin_dir();
    let pins_before = pins(&pin_dir);
    assert!(
        pins_before.contains_key(&format!("links/src-ingress-{}", topo.host.ifindex("vc")))
            && pins_before.contains_key(&format!("links/src-egress-{}", topo.host.ifindex("vc"))),
        "{pins_before:?}"
    );
    let hooks_before = [TcAttachType::Ingress, TcAttachType::Egress].map(|h| tcx_hook(&topo.host, "vc", h));

    let vk0_tx_before = topo.host.link_packets("vk0").1;
    let copies_sent = || topo.host.link_packets("vk0").1 - vk0_tx_before;
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let mut pinger = topo
        .client
        .command(&["ping", "-q", "-c", &PINGS.to_string(), "-i", "0.005", "-W", "1", SERVER_IP])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ping");
    let mut at = Vec::new();
    for i in 0..RESTARTS {
        // Paced by the copies sent out of vk0 (the kernel's counter: the
        // capture only tallies when the wire pauses): restart i once
        // 250·(i+1) of the 3000 have gone.
        let threshold = 250 * (i as u64 + 1);
        wait_until(Duration::from_secs(20), &format!("{threshold} copies before restart {i}"), || {
            copies_sent() >= threshold
        });
        let signal = if i % 2 == 0 { libc::SIGTERM } else { libc::SIGKILL };
        let status = daemon.stop(signal);
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM: the daemon exited with {status}");
        } else {
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        }
        let t = Instant::now();
        respawn(&mut daemon);
        at.push((copies_sent(), t.elapsed().as_millis()));
    }
    assert!(
        pinger.try_wait().expect("try_wait").is_none(),
        "the ping stream ended before the last restart: restarts were not under traffic ({at:?})"
    );
    let out = pinger.wait_with_output().expect("ping");
    let (transmitted, received) = parse_ping(&out.stdout);
    let frames = cap.stop();
    let requests = count(&frames, Frame::is_echo_request);
    let replies = count(&frames, Frame::is_echo_reply);
    eprintln!(
        "restarts (copies seen, ms to ready): {at:?}; ping {transmitted}/{received}; copies: {requests} requests, {replies} replies, {} frames",
        frames.len()
    );
    assert_eq!((transmitted, received), (PINGS, PINGS), "production traffic lost");
    assert_eq!(requests as u64, PINGS, "echo-request copies: gap or duplicate");
    assert_eq!(replies as u64, PINGS, "echo-reply copies: gap or duplicate");
    assert_eq!(
        frames.len() as u64,
        2 * PINGS,
        "stray frames at the collector:\n{}\n{}",
        stray(&frames).join("\n"),
        interfaces(&topo)
    );

    let stats = agent.stats();
    for dir in ["ingress", "egress"] {
        assert_eq!(session_counter(&stats, "x", dir, "matched"), PINGS, "{dir}: {stats}");
        assert_eq!(session_counter(&stats, "x", dir, "mirrored"), PINGS, "{dir}: {stats}");
    }

    // Adopted, not re-made: no audit, no hook touched, the same pins.
    let log = daemon.log_text();
    let later = &log[first_log.len()..];
    assert_eq!(later.matches(" ready").count(), RESTARTS, "{later}");
    assert_eq!(later.matches("stopping on_exit=Keep").count(), RESTARTS / 2, "{later}");
    for needle in [
        "action=\"attach\"",
        "action=\"detach\"",
        "action=\"update\"",
        "hooks: attached",
        "hooks: detached",
        "re-attaching",
    ] {
        assert!(!later.contains(needle), "a restarted daemon logged {needle:?}:\n{later}");
    }
    assert_eq!(pins(&pin_dir), pins_before, "pins were replaced");
    let hooks_after = [TcAttachType::Ingress, TcAttachType::Egress].map(|h| tcx_hook(&topo.host, "vc", h));
    assert_eq!(hooks_after, hooks_before, "vc's TCX hooks (revision, programs) changed");
    assert_eq!(session_names(&agent.list()), ["x"]);
    drop(daemon);
    eprintln!("restarts_under_traffic: {:?}", started.elapsed());
}

/// A bpffs mounted for one test, unmounted (lazily) on drop.
#[derive(Debug)]
struct PrivateBpffs {
    dir: PathBuf,
    netns: String,
}

impl PrivateBpffs {
    fn mount(ns: &Netns) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mirror-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("mount point");
        let b = Self { dir, netns: ns.name.clone() };
        b.remount();
        b
    }

    fn remount(&self) {
        run_command(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&self.dir));
    }

    fn umount(&self) {
        run_command(Command::new("umount").arg("-l").arg(&self.dir));
    }

    fn path(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    fn is_mounted(&self) -> bool {
        fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(self.path()))
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = Command::new(agent_bin())
                .args(["--bpffs", self.path(), "-n", &self.netns, "detach", "--all"])
                .output();
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Where `pid`'s threads wait, and who holds flocks: for a daemon that
/// does not get ready.
fn blocked_on(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let read = |f: &str| fs::read_to_string(t.path().join(f)).unwrap_or_default();
            out += &format!(
                "task {}: {} wchan {}\n{}",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan"),
                read("stack")
            );
        }
    }
    let root = fs::metadata("/sys/fs/bpf").map(|m| m.ino()).unwrap_or_default();
    out += &format!("/sys/fs/bpf is inode {root}; /proc/locks:\n");
    for l in fs::read_to_string("/proc/locks").unwrap_or_default().lines().filter(|l| l.contains("FLOCK")) {
        let holder = l.split_whitespace().nth(4).unwrap_or_default();
        let cmd =
            fs::read_to_string(format!("/proc/{holder}/cmdline")).unwrap_or_default().replace('\0', " ");
        out += &format!("{l}   [{cmd}]\n");
    }
    out
}

/// [`Daemon::spawn`], with the daemon's log in the panic message.
fn respawn(daemon: &mut Daemon) {
    let log_before = daemon.log_text().len();
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| daemon.spawn())) {
        eprintln!("the daemon's log since this start:\n{}", &daemon.log_text()[log_before..]);
        eprintln!("{}", blocked_on(daemon.pid()));
        std::panic::resume_unwind(e);
    }
}

/// The frames that are no echo request or reply, described.
fn stray(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| !f.is_echo_request() && !f.is_echo_reply())
        .map(|f| format!("{} bytes: {:02x?}", f.len, &f.head[..f.head.len().min(64)]))
        .collect()
}

/// `ip -br link` of every namespace of `topo`, for failure messages.
fn interfaces(topo: &Topology) -> String {
    [&topo.host, &topo.client, &topo.server]
        .into_iter()
        .chain(&topo.collectors)
        .map(|ns| format!("{}:\n{}", ns.name, ns.ip(&["-br", "link"])))
        .collect()
}

/// Pings while capturing on collector 0: (copies, production pings received).
fn ping_copies(topo: &Topology, bpffs: &str, n: u32) -> (usize, u64) {
    let cap = Capture::start(&topo.collectors[0], "eth0");
    let r = ping(&topo.client, SERVER_IP, n);
    assert_eq!(r.received, r.transmitted, "production traffic lost: {r:?}");
    let frames = cap.stop();
    let stray = stray(&frames);
    assert!(
        stray.is_empty(),
        "frames at the collector that are no echo copy:\n{}\nthe topology's interfaces:\n{}\n{}",
        stray.join("\n"),
        interfaces(topo),
        topo.agent().ok(&["--bpffs", bpffs, "stats", "--json"]),
    );
    (frames.len(), r.received)
}

/// A reboot, simulated: the daemon dies (kill -9), its bpffs goes away,
/// so mirroring stops; on a fresh, empty bpffs a new daemon brings the
/// sessions back.
#[test]
fn reboot_with_an_empty_bpffs_brings_the_sessions_back() {
    const N: u32 = 20;
    let topo = quiet_topology(1);
    let bpffs = PrivateBpffs::mount(&topo.host);
    // `--bpffs` is global: clap takes it after `run --config FILE` too.
    let mut daemon = Daemon::start(&topo.host, CONFIG_X, &["--bpffs", bpffs.path()]);
    let agent = topo.agent();
    let list = |agent: &Agent<'_>| -> serde_json::Value {
        serde_json::from_str(&agent.ok(&["--bpffs", bpffs.path(), "list", "--json"])).expect("list --json")
    };
    assert_eq!(session_names(&list(&agent)), ["x"]);
    let private_dir = bpffs.dir.join(format!("mirror-agent/netns-cookie-{}", topo.host.cookie()));
    assert!(!pins(&private_dir).is_empty(), "no pins under {}", private_dir.display());
    assert!(!topo.host.pin_dir().exists(), "state went to the host's bpffs");
    assert_eq!(ping_copies(&topo, bpffs.path(), N), (2 * N as usize, u64::from(N)));

    // kill -9: mirroring goes on (pins).
    let status = daemon.stop(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(ping_copies(&topo, bpffs.path(), N), (2 * N as usize, u64::from(N)), "after kill -9");

    // The "reboot": the bpffs goes, and the links with their last pin.
    bpffs.umount();
    wait_until(Duration::from_secs(10), "vc's hooks to go with the bpffs", || {
        !mirror_hooked(&topo.host, "vc")
    });
    assert_eq!(ping_copies(&topo, bpffs.path(), N), (0, u64::from(N)), "copies without a bpffs");

    bpffs.remount();
    // Empty as after a boot (the kernel's own maps.debug/progs.debug aside).
    assert!(!bpffs.dir.join("mirror-agent").exists(), "the new bpffs holds agent state");
    respawn(&mut daemon);
    assert_eq!(session_names(&list(&agent)), ["x"]);
    assert!(mirror_hooked(&topo.host, "vc"));
    assert!(!pins(&private_dir).is_empty());
    assert_eq!(ping_copies(&topo, bpffs.path(), N), (2 * N as usize, u64::from(N)), "after the restart");
    let stats: serde_json::Value =
        serde_json::from_str(&agent.ok(&["--bpffs", bpffs.path(), "stats", "--json"])).expect("stats");
    // Counters start again from zero with the new maps.
    assert_eq!(session_counter(&stats, "x", "ingress", "mirrored"), u64::from(N), "{stats}");
    assert!(!topo.host.pin_dir().exists(), "state went to the host's bpffs");
    let log = daemon.log_text();
    assert_eq!(log.matches("action=\"attach\"").count(), 2, "{log}");
    drop(daemon);
}

/// A Prometheus server, killed on drop.
#[derive(Debug)]
struct Prometheus {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: mirror-agent\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let log = fs::File::create(dir.0.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning prometheus (installed by `cargo xtask setup`)");
        let mut p = Self { child, addr, dir };
        wait_until(Duration::from_secs(30), "prometheus to be ready", || {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            Command::new("curl")
                .args(["-sf", &format!("http://{}/-/ready", p.addr)])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// The scrape target's health as Prometheus sees it, and its log's tail.
    fn diagnosis(&self) -> String {
        let targets = Command::new("curl")
            .args(["-s", &format!("http://{}/api/v1/targets", self.addr)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        format!("targets: {targets}\nlog (last lines, newest first):\n{}", tail.join("\n"))
    }

    /// Waits until `cond`; panics naming `what`, with [`Self::diagnosis`].
    fn wait(&self, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.diagnosis()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first sample of an instant query, as Prometheus formats it.
    fn query(&self, q: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "-G", "--data-urlencode", &format!("query={q}")])
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .expect("curl");
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"][0]["value"][1].as_str().map(str::to_owned)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/metrics`: the classic format passes `promtool check metrics`,
/// OpenMetrics is served on request, and a real Prometheus scraping every
/// second ends up with exactly the figure `stats --json` reports.
#[test]
fn prometheus_scrapes_exactly_what_stats_reports() {
    const N: u32 = 100;
    let topo = quiet_topology(1);
    let metrics = format!("127.0.0.1:{}", free_port());
    // y sees the same echo requests and filters them all out.
    let config = format!(
        "{CONFIG_X}  - name: y\n    sources: [{{name: vc}}]\n    dest: vk0\n    direction: ingress\n    filter: \"icmp[icmptype] = icmp-echoreply\"\n"
    );
    let daemon = Daemon::start(&topo.host, &config, &["--metrics", &metrics]);
    let prom = Prometheus::start(&metrics);
    prom.wait(Duration::from_secs(15), "prometheus to scrape the agent (up == 1)", || {
        prom.query("up{job=\"mirror-agent\"}").as_deref() == Some("1")
    });

    let r = ping(&topo.client, SERVER_IP, N);
    assert_eq!(r.received, r.transmitted, "{r:?}");
    // Counters settled: the traffic is over and two readings agree.
    let agent = topo.agent();
    let mut figure = agent.packets("x", "ingress", "mirrored");
    wait_until(Duration::from_secs(5), "counters to settle", || {
        let now = agent.packets("x", "ingress", "mirrored");
        std::mem::replace(&mut figure, now) == now
    });
    assert_eq!(figure, u64::from(N), "every echo request mirrored once");
    let series = r#"mirror_agent_packets_total{session="x",direction="ingress",reason="mirrored"}"#;

    // (a) Classic text format: promtool accepts it.
    let (head, classic) = http_get(&metrics, "/metrics", None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("text/plain; version=0.0.4; charset=utf-8"), "{head}");
    assert!(classic.contains(&format!("{series} {figure}\n")), "{classic}");
    let filtered =
        r#"mirror_agent_not_copied_packets_total{session="y",direction="ingress",reason="filtered"}"#;
    assert_eq!(agent.packets("y", "ingress", "filtered"), figure);
    assert!(classic.contains(&format!("{filtered} {figure}\n")), "{classic}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    promtool.stdin.take().expect("stdin").write_all(classic.as_bytes()).expect("feeding promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics, when asked for.
    let (head, om) = http_get(&metrics, "/metrics", Some("application/openmetrics-text; version=1.0.0"));
    let ctype = header(&head, "content-type").unwrap_or_default();
    assert!(ctype.starts_with("application/openmetrics-text"), "{head}");
    assert!(om.ends_with("# EOF\n"), "OpenMetrics must end with # EOF:\n{om}");
    assert!(om.contains(&format!("{series} {figure}\n")), "{om}");

    // (b) What Prometheus stored equals what stats reports, exactly.
    let mut last = None;
    let waited = Instant::now();
    prom.wait(Duration::from_secs(20), &format!("prometheus to hold {series} = {figure}"), || {
        last = prom.query(series);
        last.as_deref() == Some(figure.to_string().as_str())
    });
    assert_eq!(last, Some(figure.to_string()));
    assert_eq!(agent.packets("x", "ingress", "mirrored"), figure, "the counter moved after traffic stopped");
    eprintln!("prometheus: {series} = {figure} after {:?}", waited.elapsed());
    drop(prom);
    drop(daemon);
}

/// `detach --all` on drop, for namespaces outside a [`Topology`].
#[derive(Debug)]
struct Sessions<'a>(&'a Netns);

impl Drop for Sessions<'_> {
    fn drop(&mut self) {
        let _ = Command::new(agent_bin()).args(["-n", &self.0.name, "detach", "--all"]).output();
    }
}

/// A namespace with a source `s0` and a destination `d0` (veth pairs, up).
fn small_netns(role: &str) -> Netns {
    let ns = Netns::new(role);
    for dev in ["s0", "d0"] {
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &format!("{dev}p")]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", &format!("{dev}p"), "up"]);
    }
    ns
}

/// `gc` removes (and reports) the state of a deleted namespace, and
/// leaves a live namespace's alone.
#[test]
fn gc_removes_the_state_of_deleted_namespaces_only() {
    let live = small_netns("gclive");
    let _live_sessions = Sessions(&live);
    let dead = small_netns("gcdead");
    for ns in [&live, &dead] {
        Agent { netns: ns }.ok(&["attach", "--name", "g", "--source", "s0", "--dest", "d0"]);
    }
    let (live_dir, dead_dir) = (live.pin_dir(), dead.pin_dir());
    assert!(live_dir.is_dir() && dead_dir.is_dir());
    assert!(!pins(&dead_dir).is_empty());
    let live_pins = pins(&live_dir);
    let dead_name = dead.name.clone();
    drop(dead); // ip netns del
    assert!(!Path::new("/run/netns").join(&dead_name).exists());
    assert!(dead_dir.is_dir(), "the state outlives the namespace until gc");

    // The kernel tears a deleted namespace down asynchronously; until its
    // interfaces are gone, its links are still attached and gc (rightly)
    // leaves its state alone. Run gc until it collects.
    let mut out = agent_global(&["gc"]);
    wait_until(Duration::from_secs(10), "gc to collect the deleted namespace", || {
        out = agent_global(&["gc"]);
        String::from_utf8_lossy(&out.stdout).contains("removed ")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gc failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("gc said:\n{stdout}");
    assert!(
        stdout.contains(&format!("removed {} (its network namespace no longer exists)", dead_dir.display())),
        "{stdout}"
    );
    assert!(!dead_dir.exists(), "{} still there", dead_dir.display());
    assert!(!stdout.contains(&live_dir.display().to_string()), "gc named the live namespace:\n{stdout}");
    assert_eq!(pins(&live_dir), live_pins, "the live namespace's pins changed");
    let agent = Agent { netns: &live };
    let list = agent.list();
    assert_eq!(session_names(&list), ["g"]);
    assert_eq!(list["sessions"][0]["hooks_missing"], serde_json::json!([]), "{list}");
    assert!(mirror_hooked(&live, "s0"));

    // Idempotent: a second pass has nothing of ours to remove.
    let again = run_command(Command::new(agent_bin()).arg("gc"));
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(
        !again.contains(&dead_dir.display().to_string()) && !again.contains(&live_dir.display().to_string())
    );
    assert!(live_dir.is_dir());
}

/// What `check` must not change: sessions (`list --json`), pins (inodes),
/// and the TCX hooks (revision, programs) of every port.
type State = (String, BTreeMap<String, u64>, Vec<(u64, Vec<u32>)>);

fn snapshot(topo: &Topology) -> State {
    let list = topo.agent().ok(&["list", "--json"]);
    let hooks = ["vc", "vs", "vk0", "vk1"]
        .iter()
        .flat_map(|d| [TcAttachType::Ingress, TcAttachType::Egress].map(|h| tcx_hook(&topo.host, d, h)))
        .collect();
    (list, pins(&topo.host.pin_dir()), hooks)
}

/// `check --config` prints the plan (attach, update, detach, unchanged,
/// refuse) and changes nothing.
#[test]
fn check_prints_the_plan_and_changes_nothing() {
    let topo = quiet_topology(2);
    let agent = topo.agent();
    let dir = TempDir::new("check");
    let vk0 = topo.host.ifindex("vk0");
    let check = |yaml: &str| -> String {
        let path = dir.write("check.yaml", yaml);
        let before = snapshot(&topo);
        let out = agent.ok(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(snapshot(&topo), before, "check changed something; it said:\n{out}");
        out
    };
    let lo = "  - name: lo\n    sources: [{name: vs}]\n    dest: lo\n";

    // Empty state: the plan attaches x and refuses lo; nothing is created.
    assert!(session_names(&agent.list()).is_empty());
    let out = check(&format!("{CONFIG_X}{lo}"));
    assert!(out.contains("is valid: 2 session(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "  attach x: dest vk0 (#{vk0}), snaplen 0, sources [vc (ingress), vc (egress)]\n"
        )),
        "{out}"
    );
    assert!(out.contains("  refuse lo: destination \"lo\" is a loopback device"), "{out}");
    assert!(!topo.host.pin_dir().exists(), "check created {}", topo.host.pin_dir().display());
    assert!(session_names(&agent.list()).is_empty());

    // An invalid file: refused with its location, nothing changes.
    let bad = dir.write(
        "bad.yaml",
        "sessions:\n  - name: x\n    sources: [{name: vc}]\n    dest: vk0\n    snaplen: 10\n",
    );
    let err = agent.fails(&["check", "--config", bad.to_str().expect("utf-8")]);
    assert!(err.contains("bad.yaml:5:14: sessions[0].snaplen: invalid snaplen 10"), "{err}");
    assert!(!topo.host.pin_dir().exists());

    // With state: x made by a daemon (stopped, kept), c by the CLI.
    let mut daemon = Daemon::start(&topo.host, CONFIG_X, &[]);
    assert!(daemon.stop(libc::SIGTERM).success());
    agent.ok(&["attach", "--name", "c", "--source", "vs", "--dest", "vk1"]);
    assert_eq!(session_names(&agent.list()), ["x", "c"]);
    let c = "  - name: c\n    sources: [{name: vs}]\n    dest: vk1\n";
    let d = "  - name: d\n    sources: [{name: vs}]\n    dest: vk0\n    direction: egress\n";
    let out = check(&format!("{CONFIG_X}{c}{d}{lo}"));
    assert!(out.contains("  unchanged x\n"), "{out}");
    assert!(
        out.contains("  refuse c: a session of that name was made by the cli; it is left alone\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("  attach d: dest vk0 (#{vk0}), snaplen 0, sources [vs (egress)]\n")),
        "{out}"
    );
    assert!(out.contains("  refuse lo: "), "{out}");
    assert_eq!(out.lines().count(), 5, "{out}");
    let out = check(&format!("{CONFIG_X}    snaplen: 128\n"));
    assert!(out.contains(&format!("  update x: dest vk0 (#{vk0}), snaplen 128;")), "{out}");
    // Only the config's own session would go; the CLI's is never planned for.
    let out = check("sessions: []\n");
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["  detach x"], "{out}");
    assert_eq!(session_names(&agent.list()), ["x", "c"]);
    let (copies, _) = ping_copies(&topo, "/sys/fs/bpf", 10);
    assert_eq!(copies, 20, "x stopped mirroring");
}
