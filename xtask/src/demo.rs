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
