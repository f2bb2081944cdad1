//! `cargo xtask demo`: a client, a server and a collector in namespaces, the
//! client's bridge port mirrored to the collector, live counters, a few
//! copies as the collector sees them, then everything torn down.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::Result;

use crate::run as run_cmd;

const HOST: &str = "mirror-demo-host";
const CLIENT: &str = "mirror-demo-client";
const SERVER: &str = "mirror-demo-server";
const COLLECTOR: &str = "mirror-demo-collector";

fn ip(args: &[&str]) -> Result<()> {
    run_cmd(Command::new("ip").args(args))
}

fn ns_exec(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Deletes the demo namespaces (and with them every interface) on drop.
struct Teardown<'a> {
    agent: &'a Path,
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.agent).args(["-n", HOST, "detach", "--all"]).status();
        for ns in [HOST, CLIENT, SERVER, COLLECTOR] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

fn topology() -> Result<()> {
    for ns in [HOST, CLIENT, SERVER, COLLECTOR] {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        ip(&["netns", "add", ns])?;
        run_cmd(&mut ns_exec(
            ns,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        ))?;
    }
    ip(&["-n", HOST, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", HOST, "link", "set", "br0", "up"])?;
    for (port, ns, addr) in [("vc", CLIENT, "198.18.0.1/24"), ("vs", SERVER, "198.18.0.2/24")] {
        ip(&["-n", HOST, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", HOST, "link", "set", port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    ip(&["-n", HOST, "link", "add", "vk", "type", "veth", "peer", "name", "eth0", "netns", COLLECTOR])?;
    ip(&["-n", HOST, "link", "set", "vk", "up"])?;
    ip(&["-n", COLLECTOR, "link", "set", "eth0", "up"])
}

pub fn run(agent: &Path) -> Result<()> {
    let _teardown = Teardown { agent };
    println!(
        "== topology: client (198.18.0.1) -- vc [bridge br0 in {HOST}] vs -- server (198.18.0.2); vk -> collector"
    );
    topology()?;
    let agent_cmd =
        |args: &[&str]| -> Result<()> { run_cmd(Command::new(agent).args(["-n", HOST]).args(args)) };

    println!("\n== mirror-agent -n {HOST} attach --name demo --source vc --dest vk --direction both");
    agent_cmd(&["attach", "--name", "demo", "--source", "vc", "--dest", "vk", "--direction", "both"])?;
    agent_cmd(&["list"])?;

    println!("\n== collector: tcpdump -i eth0 (the copies)");
    let tcpdump = ns_exec(COLLECTOR, &["tcpdump", "-nn", "-e", "-l", "-c", "8", "-i", "eth0"])
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    sleep(Duration::from_millis(500));

    let mut ping = ns_exec(CLIENT, &["ping", "-q", "-c", "30", "-i", "0.1", "198.18.0.2"])
        .stdout(Stdio::null())
        .spawn()?;
    for second in 1..=3 {
        sleep(Duration::from_secs(1));
        println!("\n== live counters, t={second}s: mirror-agent -n {HOST} stats");
        agent_cmd(&["stats"])?;
    }
    ping.wait()?;
    let captured = tcpdump.wait_with_output()?;
    println!("\n== first copies seen by the collector:");
    print!("{}", String::from_utf8_lossy(&captured.stdout));

    println!("\n== mirror-agent -n {HOST} detach --all; tearing down");
    agent_cmd(&["detach", "--all"])?;
    Ok(())
}

/// The example config of `demo --daemon`: every port of br0 (the VMs of
/// "network blue"), copies to the monitor port `vk`.
const DAEMON_CONFIG: &str = r#"# cargo xtask demo --daemon
sessions:
  - name: blue
    sources:
      - bridge: br0
    dest: vk
    direction: both
policy:
  sources: ["bridge:br0"]
  destinations: ["vk"]
"#;

/// Kills the daemon on drop (before the namespaces go).
struct DaemonGuard(std::process::Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn scrape(addr: &str, session: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| {
            (l.starts_with("mirror_agent_packets_total")
                && l.contains(&format!("session=\"{session}\""))
                && l.contains("reason=\"mirrored\""))
                || l.starts_with("mirror_agent_session_sources")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `cargo xtask demo --daemon`: the daemon from an example config follows
/// a "VM" tap hot-plugged into the bridge, and the metrics count its copies.
pub fn run_daemon(agent: &Path) -> Result<()> {
    let _teardown = Teardown { agent };
    topology()?;
    let dir = std::env::temp_dir().join("mirror-demo-daemon");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, DAEMON_CONFIG)?;
    println!("== config ({}):\n{DAEMON_CONFIG}", config.display());
    println!("== mirror-agent -n {HOST} check --config {}", config.display());
    run_cmd(Command::new(agent).args(["-n", HOST, "check", "--config"]).arg(&config))?;
    let metrics = "127.0.0.1:9464";
    println!("\n== mirror-agent -n {HOST} run --config {} --metrics {metrics}", config.display());
    let _daemon = DaemonGuard(
        Command::new(agent)
            .args(["-n", HOST, "run", "--config"])
            .arg(&config)
            .args(["--metrics", metrics])
            .env("MIRROR_AGENT_LOG", "info,mirror_agent::dataplane=warn")
            .spawn()?,
    );
    sleep(Duration::from_secs(1));
    run_cmd(Command::new(agent).args(["-n", HOST, "list"]))?;

    println!("\n== hot-plug: a new VM ({VM}, 198.18.0.3) plugged into br0 as tap vm3");
    let _ = Command::new("ip").args(["netns", "del", VM]).stderr(Stdio::null()).status();
    ip(&["netns", "add", VM])?;
    ip(&["-n", HOST, "link", "add", "vm3", "type", "veth", "peer", "name", "eth0", "netns", VM])?;
    ip(&["-n", HOST, "link", "set", "vm3", "master", "br0", "up"])?;
    ip(&["-n", VM, "addr", "add", "198.18.0.3/24", "dev", "eth0"])?;
    ip(&["-n", VM, "link", "set", "eth0", "up"])?;
    sleep(Duration::from_millis(500));
    run_cmd(Command::new(agent).args(["-n", HOST, "list"]))?;
    let status = ns_exec(VM, &["ping", "-q", "-c", "20", "-i", "0.05", "198.18.0.2"])
        .stdout(Stdio::null())
        .status()?;
    println!("\n== 20 pings from the new VM ({status}); the metrics (curl http://{metrics}/metrics):");
    println!("{}", scrape(metrics, "blue")?);
    println!("\n== unplug vm3: the daemon releases it");
    ip(&["-n", HOST, "link", "del", "vm3"])?;
    sleep(Duration::from_millis(500));
    run_cmd(Command::new(agent).args(["-n", HOST, "list"]))?;
    let _ = Command::new("ip").args(["netns", "del", VM]).status();
    println!("\n== stopping the daemon (--on-exit keep: mirroring stays); then detach --all and tear down");
    Ok(())
}

const VM: &str = "mirror-demo-vm3";
