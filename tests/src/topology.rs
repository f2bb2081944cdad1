//! Namespaces and the standard topology:
//!
//! ```text
//!  client ns                 host ns                          server ns
//!  eth0 198.18.0.1 ── vc ─┐                    ┌─ vs ── eth0 198.18.0.2
//!                         └──── br0 (bridge) ──┘
//!                          vk0 ── eth0  collector0 ns   (no address)
//!                          vk1 ── eth0  collector1 ns
//! ```
//! The agent runs with `-n <host>`: sources are `vc`/`vs` (a VM tap on a
//! bridge, as in the oVirt hook), destinations `vkN` (a monitor VM's tap).
use std::{
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{agent_bin, agent_command, ip, run_command};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = format!("mt{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6: no router solicitations or MLD reports on the wires.
        ns.sh(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// `ip -n <ns> ARGS…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a command inside the namespace (`ip netns exec`), panicking on failure.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = run_command(Command::new("ip").args(["netns", "exec", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec <ns> ARGS…` as a command, for callers that expect failure.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Moves the calling thread into this namespace (only the network one),
    /// with the agent's own helper.
    pub fn enter(&self) {
        mirror_agent::net::netns::enter(&self.name)
            .unwrap_or_else(|e| panic!("entering {}: {e:#}", self.name));
    }

    /// `ip [-s] -j link show dev`: the interface's JSON object.
    fn link(&self, dev: &str, stats: bool) -> serde_json::Value {
        let args: &[&str] =
            if stats { &["-s", "-j", "link", "show", dev] } else { &["-j", "link", "show", dev] };
        let mut v: serde_json::Value = serde_json::from_str(&self.ip(args)).expect("ip -j output");
        v[0].take()
    }

    /// ifindex of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        self.link(dev, false)["ifindex"].as_u64().expect("ifindex") as u32
    }

    /// (rx_packets, tx_packets) of `dev`.
    pub fn link_packets(&self, dev: &str) -> (u64, u64) {
        let s = &self.link(dev, true)["stats64"];
        (s["rx"]["packets"].as_u64().expect("rx"), s["tx"]["packets"].as_u64().expect("tx"))
    }

    /// Cookie of the namespace (names the agent's bpffs directory).
    pub fn cookie(&self) -> u64 {
        self.run(|| {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
            let mut cookie: u64 = 0;
            let mut len = size_of::<u64>() as libc::socklen_t;
            // SAFETY: SO_NETNS_COOKIE (71) into a u64 we own.
            let rc = unsafe {
                libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, 71, (&raw mut cookie).cast(), &mut len)
            };
            assert_eq!(rc, 0, "SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
            cookie
        })
    }

    /// The agent's bpffs directory for this namespace.
    pub fn pin_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/sys/fs/bpf/mirror-agent/netns-cookie-{}", self.cookie()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub const CLIENT_IP: &str = "198.18.0.1";
pub const SERVER_IP: &str = "198.18.0.2";
const CLIENT_MAC: &str = "02:00:c6:12:00:01";
const SERVER_MAC: &str = "02:00:c6:12:00:02";

/// The standard topology (see the module docs).
#[derive(Debug)]
pub struct Topology {
    pub host: Netns,
    pub client: Netns,
    pub server: Netns,
    pub collectors: Vec<Netns>,
}

impl Topology {
    pub fn new(collectors: usize) -> Self {
        let host = Netns::new("host");
        let client = Netns::new("client");
        let server = Netns::new("server");
        host.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        // No IGMP reports from the bridge or the hosts: quiet wires, exact counts.
        host.ip(&["link", "set", "br0", "multicast", "off", "up"]);
        for (port, ns, addr, mac) in
            [("vc", &client, CLIENT_IP, CLIENT_MAC), ("vs", &server, SERVER_IP, SERVER_MAC)]
        {
            host.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
            host.ip(&["link", "set", port, "master", "br0", "multicast", "off", "up"]);
            ns.ip(&["link", "set", "eth0", "address", mac]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "multicast", "off", "up"]);
        }
        // Static neighbours: no ARP on the wire, so counts are exact.
        client.ip(&["neigh", "add", SERVER_IP, "lladdr", SERVER_MAC, "dev", "eth0", "nud", "permanent"]);
        server.ip(&["neigh", "add", CLIENT_IP, "lladdr", CLIENT_MAC, "dev", "eth0", "nud", "permanent"]);
        let collectors = (0..collectors)
            .map(|i| {
                let ns = Netns::new(&format!("col{i}"));
                let port = format!("vk{i}");
                host.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
                host.ip(&["link", "set", &port, "multicast", "off", "up"]);
                ns.ip(&["link", "set", "eth0", "multicast", "off", "up"]);
                ns
            })
            .collect();
        let topo = Self { host, client, server, collectors };
        topo.wait_carrier();
        topo
    }

    fn wait_carrier(&self) {
        crate::wait_until(std::time::Duration::from_secs(5), "bridge ports forwarding", || {
            self.client.command(&["ping", "-c1", "-W1", SERVER_IP]).output().is_ok_and(|o| o.status.success())
        });
    }

    /// The agent, operating on the host namespace.
    pub fn agent(&self) -> Agent<'_> {
        Agent { netns: &self.host }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Leave nothing pinned behind a failed test.
        let _ = Command::new(agent_bin()).args(["-n", &self.host.name, "detach", "--all"]).output();
    }
}

/// Runs the agent binary against one namespace.
#[derive(Debug)]
pub struct Agent<'a> {
    pub netns: &'a Netns,
}

impl Agent<'_> {
    /// Runs `mirror-agent -n <ns> ARGS…` and returns its output, whatever the status.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        agent_command().args(["-n", &self.netns.name]).args(args).output().expect("spawning mirror-agent")
    }

    /// Runs the agent and returns stdout; panics unless it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = run_command(agent_command().args(["-n", &self.netns.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the agent expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "mirror-agent {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats --json is JSON")
    }

    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json is JSON")
    }

    /// A counter of a session: `counters.<direction>.<reason>.packets`.
    pub fn packets(&self, session: &str, direction: &str, reason: &str) -> u64 {
        session_counter(&self.stats(), session, direction, reason)
    }
}

/// Reads `counters.<direction>.<reason>.packets` of `session` from `stats --json`.
pub fn session_counter(stats: &serde_json::Value, session: &str, direction: &str, reason: &str) -> u64 {
    let s = stats["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .find(|s| s["name"] == session)
        .unwrap_or_else(|| panic!("session {session} not in stats: {stats}"));
    s["counters"][direction][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {direction}.{reason} in {s}"))
}
