//! `cargo xtask bench-daemon`: the daemon's footprint and reaction times.
//!
//! One namespace, `mdb-host`, with a destination `mon0` and 1000 source
//! veths `s0..s999`. The release daemon runs on it, and the figures are
//! taken from outside, the way an operator would see them: the metrics
//! endpoint, /proc, the TCX hooks themselves (`BPF_PROG_QUERY` from a thread
//! inside the namespace), the pins in bpffs and the daemon's audit log.
//!
//! 1. first full reconcile of one session matching `s*` (1000 sources);
//! 2. idle CPU and RSS over 10 s;
//! 3. hot-plug latency: one interface, 20 trials; then 100 in one batch;
//! 4. scrape time with 4095 sessions;
//! 5. a reload that changes one session of 1000, and whether it left the
//!    other sessions' hooks alone.
//!
//! Missed targets are marked, not fatal: only a failed setup exits non-zero.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Barrier,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TcAttachType};

use super::lab::{enter, in_ns, ip, ns_exec, sh};

const NS: &str = "mdb-host";
const DEST: &str = "mon0";
const SOURCES: usize = 1000;
const TRIALS: usize = 20;
const BURST: usize = 100;
const SCRAPES: usize = 20;
const MAX_SESSIONS: usize = 4095;
const RELOAD_SESSIONS: usize = 1000;
/// The session whose snaplen the reload changes.
const CHANGED: usize = 500;
const IDLE: Duration = Duration::from_secs(10);
/// BPF program names are cut to 15 characters: `mirror_src_ingress`.
const INGRESS_PROG: &str = "mirror_src_ingr";

/// One line of the result table.
struct Row {
    measure: String,
    value: String,
    target: String,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    /// A figure with a target; `ok` says whether it was met.
    fn push(&mut self, measure: impl Into<String>, value: impl Into<String>, target: &str, ok: bool) {
        let target = if ok { target.to_owned() } else { format!("{target}  MISSED") };
        self.0.push(Row { measure: measure.into(), value: value.into(), target });
    }

    /// A figure for information only.
    fn info(&mut self, measure: impl Into<String>, value: impl Into<String>) {
        self.0.push(Row { measure: measure.into(), value: value.into(), target: "-".to_owned() });
    }

    fn print(&self) {
        let w = |f: fn(&Row) -> &str, head: &str| {
            self.0.iter().map(|r| f(r).chars().count()).chain([head.len()]).max().unwrap_or(0)
        };
        let (wm, wv, wt) =
            (w(|r| &r.measure, "measure"), w(|r| &r.value, "value"), w(|r| &r.target, "target"));
        println!("| {:wm$} | {:wv$} | {:wt$} |", "measure", "value", "target");
        println!("|{}|{}|{}|", "-".repeat(wm + 2), "-".repeat(wv + 2), "-".repeat(wt + 2));
        for r in &self.0 {
            println!("| {:wm$} | {:wv$} | {:wt$} |", r.measure, r.value, r.target);
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
fn percentile(v: &[Duration], q: f64) -> Duration {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A running daemon: its process and its stderr log.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM, then SIGKILL if it takes more than 20 s.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The log from byte `offset` on.
    fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if the daemon has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status}); its log ends with:\n{}", self.log_tail());
        }
        Ok(())
    }
}

/// The benchmark's state; everything is torn down on drop.
struct Bench<'a> {
    agent: &'a Path,
    dir: PathBuf,
    config: PathBuf,
    metrics: String,
    daemon: Option<Daemon>,
    started: usize,
}

impl Drop for Bench<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        teardown(self.agent);
    }
}

fn teardown(agent: &Path) {
    if Path::new(crate::netns::RUN_DIR).join(NS).exists() {
        let _ = Command::new(agent)
            .args(["-n", NS, "detach", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
    }
}

/// Runs `ip -n NS -batch -` on `commands`, one a line.
fn ip_batch(commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", NS, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    child.stdin.take().context("ip stdin")?.write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {NS} -batch - failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// GET /metrics: the body, after a full round trip.
fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header in the answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The value of the series `name` whose labels include every `labels` pair.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (series, value) = rest.rsplit_once(' ')?;
        labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

fn config_sessions(metrics: &str) -> f64 {
    metric(metrics, "mirror_agent_sessions", &[("owner", "config")]).unwrap_or(-1.0)
}

/// One session of a config file.
fn session_yaml(name: &str, source: &str, direction: &str, snaplen: u32) -> String {
    format!(
        "  - name: {name}\n    sources:\n      - name: \"{source}\"\n    dest: {DEST}\n    direction: {direction}\n    snaplen: {snaplen}\n"
    )
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> { Ok(fields.get(n - 3).context("/proc/PID/stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// Counts the namespaces created or deleted on the host (by anyone) while it
/// lives: the daemon follows /run/netns and reconciles on each.
struct NetnsEvents(std::os::fd::OwnedFd);

impl NetnsEvents {
    fn new() -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain syscall; the fd is owned right away.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: fresh, valid fd.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let dir = std::ffi::CString::new(crate::netns::RUN_DIR)?;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(raw, dir.as_ptr(), libc::IN_CREATE | libc::IN_DELETE) } < 0 {
            return Err(std::io::Error::last_os_error()).context("watching /run/netns");
        }
        Ok(Self(fd))
    }

    /// Events since the last call.
    fn take(&self) -> usize {
        use std::os::fd::AsRawFd as _;
        const HEADER: usize = size_of::<libc::inotify_event>();
        let mut count = 0;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own, bounded by its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return count;
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= HEADER {
                // SAFETY: at least a header's bytes; read_unaligned copes with alignment.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
                count += 1;
                rest = &rest[(HEADER + ev.len as usize).min(rest.len())..];
            }
        }
    }
}

/// Hooks the daemon attached and detached, by its info lines in `log`.
fn hook_changes(log: &str) -> (usize, usize) {
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    (count(" attached hook="), count(" detached hook="))
}

/// True once a mirror-agent program sits at tcx/ingress of `ifname`.
fn hooked(ifname: &str) -> bool {
    SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).is_ok_and(|(_, progs)| {
        progs.iter().any(|p| p.name_as_str().is_some_and(|n| n.starts_with(INGRESS_PROG)))
    })
}

/// From inside the namespace, polls every 1 ms until each of `names` has the
/// ingress hook (or `timeout`); returns when each was first seen.
fn watch_hooks(names: &[String], ready: &Barrier, timeout: Duration) -> Result<Vec<Option<Instant>>> {
    let entered = enter(NS);
    ready.wait();
    entered?;
    let deadline = Instant::now() + timeout;
    let mut seen = vec![None; names.len()];
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        for (name, seen) in names.iter().zip(&mut seen) {
            if seen.is_none() && hooked(name) {
                *seen = Some(Instant::now());
            }
        }
        sleep(Duration::from_millis(1));
    }
    Ok(seen)
}

/// Creates `names` (peers: `q` + the number) with one `ip -batch` and
/// returns, per interface, how long after the batch returned its ingress
/// hook appeared (`None`: not within 10 s).
fn plug(names: &[String]) -> Result<Vec<Option<Duration>>> {
    let mut batch = String::new();
    for n in names {
        let peer = format!("q{}", &n[1..]);
        batch += &format!("link add {n} type veth peer name {peer}\n");
    }
    let ups: String = names.iter().map(|n| format!("link set {n} up\n")).collect();
    let ready = Barrier::new(2);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_hooks(names, &ready, Duration::from_secs(10)));
        ready.wait();
        let created = if names.len() == 1 {
            // The single-interface trial, as an operator types it.
            ip(
                NS,
                &["link", "add", &names[0], "type", "veth", "peer", "name", &format!("q{}", &names[0][1..])],
            )
            .map(drop)
        } else {
            ip_batch(&format!("{batch}{ups}"))
        };
        // The kernel has sent RTM_NEWLINK by the time the command returns.
        let t0 = Instant::now();
        let upped =
            if names.len() == 1 { ip(NS, &["link", "set", &names[0], "up"]).map(drop) } else { Ok(()) };
        let seen = watcher.join().expect("hook watcher panicked");
        created?;
        upped?;
        Ok(seen?.into_iter().map(|t| t.map(|t| t.saturating_duration_since(t0))).collect())
    })
}

impl Bench<'_> {
    /// Writes the config atomically (the daemon also follows the file with
    /// inotify, and must never read half of it).
    fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    fn start_daemon(&mut self) -> Result<()> {
        self.started += 1;
        let log = self.dir.join(format!("daemon-{}.log", self.started));
        let child = Command::new(self.agent)
            .args(["-n", NS, "run", "--config"])
            .arg(&self.config)
            .args(["--metrics", &self.metrics])
            .env("MIRROR_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting the daemon")?;
        self.daemon = Some(Daemon { child, log });
        Ok(())
    }

    fn daemon(&mut self) -> Result<&mut Daemon> {
        self.daemon.as_mut().context("no daemon running")
    }

    /// Polls the metrics every `every` until `done` holds; fails after
    /// `timeout` or if the daemon dies.
    fn wait_metrics(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            self.daemon()?.alive()?;
            match scrape(&self.metrics) {
                Ok(body) if done(&body) => return Ok(body),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                let err = last_err.map(|e| format!(" (last scrape: {e:#})")).unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{err}; the daemon's log ends with:\n{}",
                    self.daemon()?.log_tail()
                );
            }
            sleep(every);
        }
    }

    /// Stops the daemon and removes what it left (`--on-exit keep`).
    fn stop_daemon(&mut self) -> Result<Duration> {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        let t = Instant::now();
        sh(Command::new(self.agent).args(["-n", NS, "detach", "--all"]))?;
        Ok(t.elapsed())
    }

    fn setup(&self, table: &mut Table) -> Result<()> {
        let t = Instant::now();
        sh(Command::new("ip").args(["netns", "add", NS]))?;
        // Like the packet benchmark's lab: no IPv6 (no DAD, router
        // solicitations or MLD on 1000 interfaces while the daemon idles).
        sh(&mut ns_exec(NS, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))?;
        sh(&mut ns_exec(NS, &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]))?;
        let mut batch = format!("link set lo up\nlink add {DEST} type veth peer name {DEST}p\n");
        for i in 0..SOURCES {
            batch += &format!("link add s{i} type veth peer name p{i}\n");
        }
        batch += &format!("link set {DEST} up\nlink set {DEST}p up\n");
        for i in 0..SOURCES {
            batch += &format!("link set s{i} up\nlink set p{i} up\n");
        }
        ip_batch(&batch)?;
        table.info(format!("setup: {} veth pairs (ip -batch)", SOURCES + 1), ms(t.elapsed()));
        Ok(())
    }

    /// 1000 sources: first reconcile, idle footprint, hot-plug.
    fn thousand_sources(&mut self, table: &mut Table) -> Result<()> {
        self.write_config(&format!("sessions:\n{}", session_yaml("all", "s*", "both", 0)))?;
        let t = Instant::now();
        self.start_daemon()?;
        let full = |m: &str| {
            metric(m, "mirror_agent_session_sources", &[("session", "all")]) == Some(SOURCES as f64)
                && metric(m, "mirror_agent_session_hooks_missing", &[("session", "all")]) == Some(0.0)
        };
        self.wait_metrics(
            "1000 sources with their hooks",
            Duration::from_secs(60),
            Duration::from_millis(25),
            full,
        )?;
        let first = t.elapsed();
        table.info("first full reconcile, 1000 sources × both (start → metrics)", ms(first));
        let log = self.daemon()?.log_text();
        if let Some(e) = log
            .lines()
            .find(|l| l.contains("reconciled"))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("elapsed_ms=")).map(str::to_owned))
        {
            table.info("  of which the reconcile pass itself (daemon's log)", format!("{e} ms"));
        }

        // Idle: nothing happens in the namespace, nobody scrapes.
        sleep(Duration::from_millis(500));
        let before = scrape(&self.metrics)?;
        let netns_events = NetnsEvents::new()?;
        let pid = self.daemon()?.pid();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let (c0, t0) = (cpu_ticks(pid)?, Instant::now());
        sleep(IDLE);
        let (c1, dt) = (cpu_ticks(pid)?, t0.elapsed());
        let rss = rss_kib(pid)? as f64 / 1024.0;
        let after = scrape(&self.metrics)?;
        let cpu = (c1 - c0) as f64 / hz / dt.as_secs_f64() * 100.0;
        table.push(
            format!("idle CPU over {} s, 1000 sources", IDLE.as_secs()),
            format!("{cpu:.2} %"),
            "≈ 0 % (≤ 1 %)",
            cpu <= 1.0,
        );
        table.push("idle RSS (VmRSS)", format!("{rss:.1} MiB"), "≤ 30 MiB", rss <= 30.0);
        let reconciles = |m: &str| metric(m, "mirror_agent_reconciles_total", &[]).unwrap_or(0.0);
        table.info(
            "  reconcile passes while idle / namespaces added+deleted on the host",
            format!("{} / {}", reconciles(&after) - reconciles(&before), netns_events.take()),
        );

        // Hot-plug: a second session for h*.
        self.write_config(&format!(
            "sessions:\n{}{}",
            session_yaml("all", "s*", "both", 0),
            session_yaml("plug", "h*", "both", 0)
        ))?;
        self.daemon()?.signal(libc::SIGHUP);
        self.wait_metrics("session plug", Duration::from_secs(30), Duration::from_millis(20), |m| {
            metric(m, "mirror_agent_session_sources", &[("session", "plug")]) == Some(0.0)
        })?;
        let plugged = |n: usize| {
            move |m: &str| metric(m, "mirror_agent_session_sources", &[("session", "plug")]) == Some(n as f64)
        };
        let mut single = Vec::new();
        let mut lost = 0;
        for k in 0..TRIALS {
            let name = format!("h{k}");
            match plug(std::slice::from_ref(&name))?[0] {
                Some(d) => {
                    single.push(d);
                    // Unplug only once the daemon's pass is over (a scrape
                    // waits for it), not to race its egress attach.
                    self.wait_metrics(
                        "plug to take h*",
                        Duration::from_secs(30),
                        Duration::from_millis(10),
                        plugged(1),
                    )?;
                }
                None => lost += 1,
            }
            ip(NS, &["link", "del", &name])?;
            self.wait_metrics(
                "plug to release h*",
                Duration::from_secs(30),
                Duration::from_millis(10),
                plugged(0),
            )?;
        }
        single.sort();
        let lost_note = if lost > 0 { format!(" ({lost} not hooked within 10 s)") } else { String::new() };
        if single.is_empty() {
            table.push(
                format!("hot-plug 1 interface, {TRIALS} trials"),
                "none hooked within 10 s",
                "≤ 1 s",
                false,
            );
        } else {
            let (p50, p99) = (percentile(&single, 0.5), percentile(&single, 0.99));
            let ok = lost == 0 && p99 <= Duration::from_secs(1);
            table.push(
                format!("hot-plug 1 interface, p50 ({TRIALS} trials)"),
                ms(p50),
                "≤ 1 s",
                lost == 0 && p50 <= Duration::from_secs(1),
            );
            table.push(format!("hot-plug 1 interface, p99 = max{lost_note}"), ms(p99), "≤ 1 s", ok);
        }

        let names: Vec<String> = (BURST..2 * BURST).map(|i| format!("h{i}")).collect();
        let seen = plug(&names)?;
        let mut burst: Vec<Duration> = seen.iter().flatten().copied().collect();
        let missing = names.len() - burst.len();
        burst.sort();
        let label = format!("hot-plug {BURST} at once (one ip -batch)");
        if burst.is_empty() {
            table.push(label, "none hooked within 10 s", "≤ 3 s", false);
        } else {
            let all = *burst.last().expect("not empty");
            let ok = missing == 0 && all <= Duration::from_secs(3);
            table.push(format!("{label}, p50"), ms(percentile(&burst, 0.5)), "≤ 3 s", missing == 0);
            table.push(format!("{label}, p99"), ms(percentile(&burst, 0.99)), "≤ 3 s", ok);
            let all_text =
                if missing == 0 { ms(all) } else { format!("{missing} of {BURST} not hooked within 10 s") };
            table.push(format!("{label}, until all {BURST}"), all_text, "≤ 3 s", ok);
        }
        if missing == 0 {
            self.wait_metrics(
                "plug to take h*",
                Duration::from_secs(30),
                Duration::from_millis(20),
                plugged(BURST),
            )?;
        }
        ip_batch(&names.iter().map(|n| format!("link del {n}\n")).collect::<String>())?;
        self.wait_metrics(
            "plug to release h*",
            Duration::from_secs(30),
            Duration::from_millis(20),
            plugged(0),
        )?;
        Ok(())
    }

    /// 4095 sessions: scrape time.
    fn scrape_4095(&mut self, table: &mut Table) -> Result<()> {
        let detach = self.stop_daemon()?;
        table.info("  detach --all (2 sessions, 1000 sources)", ms(detach));
        let mut text = String::from("sessions:\n");
        for i in 0..MAX_SESSIONS {
            text += &session_yaml(&format!("x{i}"), &format!("s{}", i % SOURCES), "ingress", 0);
        }
        self.write_config(&text)?;
        let t = Instant::now();
        self.start_daemon()?;
        self.wait_metrics("4095 sessions", Duration::from_secs(120), Duration::from_millis(100), |m| {
            config_sessions(m) == MAX_SESSIONS as f64
        })?;
        table.info("daemon start → 4095 sessions applied", ms(t.elapsed()));
        sleep(Duration::from_millis(500));
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..SCRAPES {
            let t = Instant::now();
            size = scrape(&self.metrics)?.len();
            times.push(t.elapsed());
        }
        times.sort();
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        let limit = Duration::from_millis(50);
        table.push(
            format!("scrape, 4095 sessions, p50 ({SCRAPES} scrapes)"),
            ms(p50),
            "≤ 50 ms",
            p50 <= limit,
        );
        table.push("scrape, 4095 sessions, p99 = max", ms(p99), "≤ 50 ms", p99 <= limit);
        table.info("  scrape body", format!("{:.0} KiB", size as f64 / 1024.0));
        Ok(())
    }

    /// A reload that changes one session of 1000.
    fn reload_one(&mut self, table: &mut Table) -> Result<()> {
        let sessions = |changed: Option<usize>| {
            let mut text = String::from("sessions:\n");
            for i in 0..RELOAD_SESSIONS {
                let snaplen = if Some(i) == changed { 128 } else { 0 };
                // Ingress, like the x* sessions: the hooks the reload needs
                // are the ones already there.
                text += &session_yaml(&format!("r{i}"), &format!("s{i}"), "ingress", snaplen);
            }
            text
        };
        self.write_config(&sessions(None))?;
        let offset = self.daemon()?.log_len();
        let t = Instant::now();
        self.daemon()?.signal(libc::SIGHUP);
        self.wait_metrics("1000 sessions r*", Duration::from_secs(120), Duration::from_millis(100), |m| {
            config_sessions(m) == RELOAD_SESSIONS as f64
                && !m.contains("session=\"x")
                && m.lines()
                    .filter(|l| l.starts_with("mirror_agent_session_hooks_missing"))
                    .all(|l| l.ends_with(" 0"))
        })?;
        table.info("reload 4095 sessions → 1000 others", ms(t.elapsed()));
        let (attached, detached) = hook_changes(&self.daemon()?.log_since(offset));
        table.info("  hooks attached / detached by it (daemon's log)", format!("{attached} / {detached}"));
        sleep(Duration::from_millis(500));

        let cookie = in_ns(NS, crate::netns::current_id)?;
        let links = Path::new("/sys/fs/bpf/mirror-agent").join(format!("netns-{cookie}")).join("links");
        let pins = || -> Result<BTreeMap<String, u64>> {
            std::fs::read_dir(&links)
                .with_context(|| format!("reading {}", links.display()))?
                .map(|e| {
                    let e = e?;
                    Ok((e.file_name().to_string_lossy().into_owned(), e.metadata()?.ino()))
                })
                .collect()
        };
        let mon0 = in_ns(NS, || {
            let name = std::ffi::CString::new(DEST)?;
            // SAFETY: a NUL-terminated name we own.
            Ok(unsafe { libc::if_nametoindex(name.as_ptr()) })
        })?;
        let before = pins()?;
        let offset = self.daemon()?.log_len();

        // The daemon follows the file with inotify too: the clock starts
        // before the write, and SIGHUP follows it at once.
        let t0 = Instant::now();
        self.write_config(&sessions(Some(CHANGED)))?;
        self.daemon()?.signal(libc::SIGHUP);
        let wanted = format!("session=\"r{CHANGED}\"");
        let is_update =
            |l: &str| l.contains("audit who=") && l.contains("action=\"update\"") && l.contains(&wanted);
        let deadline = t0 + Duration::from_secs(30);
        let took = loop {
            if self.daemon()?.log_since(offset).lines().any(is_update) {
                break Some(t0.elapsed());
            }
            self.daemon()?.alive()?;
            if Instant::now() >= deadline {
                break None;
            }
            sleep(Duration::from_millis(1));
        };
        // Whatever else this reload does, let it happen before looking.
        sleep(Duration::from_millis(1500));
        let new_log = self.daemon()?.log_since(offset);
        let audits: Vec<&str> = new_log.lines().filter(|l| l.contains("audit who=")).collect();
        let after = pins()?;
        let allowed_new = format!("dst-egress-{mon0}");
        let mut notes = Vec::new();
        for (name, ino) in &before {
            match after.get(name) {
                Some(i) if i == ino => {}
                Some(_) => notes.push(format!("{name} re-pinned")),
                None => notes.push(format!("{name} gone")),
            }
        }
        for name in after.keys().filter(|n| !before.contains_key(*n) && **n != allowed_new) {
            notes.push(format!("new pin {name}"));
        }
        let kept = notes.is_empty();
        let others = audits.iter().filter(|l| !is_update(l)).count();
        let updates = audits.len() - others;
        let exact = updates == 1 && others == 0;
        match took {
            Some(d) => table.push(
                format!("reload touching 1 of {RELOAD_SESSIONS} sessions (write+SIGHUP → audit line)"),
                ms(d),
                "-",
                true,
            ),
            None => table.push(
                format!("reload touching 1 of {RELOAD_SESSIONS} sessions"),
                "no audit line within 30 s",
                "-",
                false,
            ),
        }
        table.push("  audit lines: update r500 / any other", format!("{updates} / {others}"), "1 / 0", exact);
        table.push(
            "  other sessions' hooks untouched",
            format!(
                "{} ({} pins before, {} after)",
                if kept { "yes" } else { "no" },
                before.len(),
                after.len()
            ),
            "yes",
            kept,
        );
        for n in notes.iter().take(5) {
            table.info(format!("    {n}"), "");
        }
        for l in audits.iter().filter(|l| !is_update(l)).take(5) {
            table.info(format!("    other audit: {}", l.trim()), "");
        }
        Ok(())
    }
}

pub fn run(agent: &Path) -> Result<()> {
    teardown(agent);
    let dir = std::env::temp_dir().join("mirror-bench-daemon");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // A free port, given back for the daemon to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut bench = Bench {
        agent,
        config: dir.join("config.yaml"),
        dir,
        metrics: format!("127.0.0.1:{port}"),
        daemon: None,
        started: 0,
    };
    let mut table = Table::default();
    println!(
        "== bench-daemon: {NS} with {SOURCES} source veths; logs and configs in {}",
        bench.dir.display()
    );
    bench.setup(&mut table)?;
    println!("== 1000 sources: first reconcile, {} s idle, hot-plug", IDLE.as_secs());
    bench.thousand_sources(&mut table)?;
    println!("== {MAX_SESSIONS} sessions: scrapes");
    bench.scrape_4095(&mut table)?;
    println!("== reload changing one of {RELOAD_SESSIONS} sessions");
    bench.reload_one(&mut table)?;
    println!();
    table.print();
    println!("\nthe daemons' logs: {}/daemon-*.log", bench.dir.display());
    Ok(())
}
