//! What is attached to the source in each trial. Declarative: a new
//! destination kind (e.g. encapsulated copies to a remote collector) or a
//! new selection (filter, sampling) is one more row in [`VARIANTS`] and, if
//! needed, one more [`Kind`].
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::lab::{HOST, Lab, ns_exec, sh};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Nothing attached.
    Base,
    /// The kernel's own: clsact on the source, `u32 … action mirred egress
    /// mirror` on ingress and egress. `matching: false` uses a key no packet has.
    TcMirred { matching: bool },
    /// `bench_clone_floor` on the source: one `bpf_clone_redirect` to a
    /// constant, the least any BPF mirror does; not a product variant, the
    /// yardstick for the agent's own program cost.
    CloneFloor,
    /// `mirror-agent attach` on the source, with `select`: extra arguments
    /// of `attach` (filter, rules, sampling).
    Agent { direction: &'static str, snaplen: u32, select: &'static [&'static str] },
}

/// Copies the collector must get per packet in the one-way UDP modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    None,
    All,
    /// About one in N (sampling).
    OneIn(u32),
}

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub kind: Kind,
    /// Where the copies go (ignored by `base`).
    pub dest: &'static str,
    /// What the collector gets in the UDP modes.
    pub copies: Copies,
    /// Whether the collector gets anything in the TCP mode, where traffic
    /// crosses the source both ways (the sink's ACKs leave through its egress).
    pub tcp_copies: bool,
}

/// A local monitor port: a veth to the collector.
pub const MON: &str = "mon0";
/// A remote collector: VXLAN (kernel device) over `mon0`.
const VXLAN: &str = "vx0";

const fn variant(name: &'static str, kind: Kind, copies: Copies, tcp_copies: bool) -> Variant {
    Variant { name, kind, dest: MON, copies, tcp_copies }
}

const fn agent(select: &'static [&'static str]) -> Kind {
    Kind::Agent { direction: "both", snaplen: 0, select }
}

// The selections below are written for the generator's flood: UDP from
// port 1024 to port 9 ([`super::generator::UDP_DST_PORT`]), IPv4 from
// 198.18.0.1 to 198.18.2.2; the TCP mode is iperf3 on port 5201.

/// Never matches the flood (it is UDP) nor iperf3 (port 5201).
const FILTER_NOMATCH: &[&str] = &["--filter", "tcp port 9"];
/// Ten or-ed terms of the same kind, only the last of which matches: every
/// term's port tests run before the packet is accepted.
const FILTER10: &[&str] = &[
    "--filter",
    "udp port 11 or udp port 12 or udp port 13 or udp port 14 or udp port 15 or udp port 16 or udp port 17 \
     or udp port 18 or udp port 19 or udp dst port 9",
];
/// Ten AWS-style rules, numbers 10..100; nine rejects that do not match,
/// then the accepting one (the default action is reject).
const RULES10: &[&str] = &[
    "--rule",
    "10 reject udp dport 11",
    "--rule",
    "20 reject udp dport 12",
    "--rule",
    "30 reject udp dport 13",
    "--rule",
    "40 reject udp dport 14",
    "--rule",
    "50 reject udp dport 15",
    "--rule",
    "60 reject udp dport 16",
    "--rule",
    "70 reject udp dport 17",
    "--rule",
    "80 reject udp dport 18",
    "--rule",
    "90 reject udp dport 19",
    "--rule",
    "100 accept udp dport 9",
];
pub const SAMPLE: u32 = 100;
const SAMPLE100: &[&str] = &["--sample", "100"];

pub const VARIANTS: &[Variant] = &[
    variant("base", Kind::Base, Copies::None, false),
    variant("tc", Kind::TcMirred { matching: true }, Copies::All, true),
    variant("tc-nomatch", Kind::TcMirred { matching: false }, Copies::None, false),
    variant("clone-floor", Kind::CloneFloor, Copies::All, true),
    variant("agent", agent(&[]), Copies::All, true),
    // Our program is on the source, but the traffic never crosses the
    // direction it taps (the source only receives).
    variant("agent-idle", Kind::Agent { direction: "egress", snaplen: 0, select: &[] }, Copies::None, true),
    variant("agent-snap128", Kind::Agent { direction: "both", snaplen: 128, select: &[] }, Copies::All, true),
    // Copies to a remote collector, encapsulated by the kernel's VXLAN device.
    Variant {
        name: "tc-vxlan",
        kind: Kind::TcMirred { matching: true },
        dest: VXLAN,
        copies: Copies::All,
        tcp_copies: true,
    },
    Variant { name: "agent-vxlan", kind: agent(&[]), dest: VXLAN, copies: Copies::All, tcp_copies: true },
    // Selection (issue 8): what a filter, rules and sampling add.
    variant("agent-filter-nomatch", agent(FILTER_NOMATCH), Copies::None, false),
    variant("agent-filter10", agent(FILTER10), Copies::All, false),
    variant("agent-rules10", agent(RULES10), Copies::All, false),
    variant("agent-sample100", agent(SAMPLE100), Copies::OneIn(SAMPLE), true),
];

pub const SOURCE: &str = "src0";

fn tc(args: &[&str]) -> Result<()> {
    let mut full = vec!["tc"];
    full.extend_from_slice(args);
    sh(&mut ns_exec(HOST, &full)).map(drop)
}

/// `mirror-agent attach` of the session `bench` on the source.
pub fn attach_agent(
    agent: &Path,
    dest: &str,
    direction: &str,
    snaplen: u32,
    select: &[impl AsRef<std::ffi::OsStr>],
) -> Result<()> {
    let snaplen = snaplen.to_string();
    sh(Command::new(agent)
        .args(["-n", HOST, "attach", "--name", "bench", "--source", SOURCE])
        .args(["--dest", dest, "--direction", direction, "--snaplen", &snaplen])
        .args(select))
    .map(drop)
}

/// Packets the bench session's ingress counters say it saw, whatever it
/// did with them (`stats --json`).
pub fn packets_seen(agent: &Path) -> Result<u64> {
    let out = sh(Command::new(agent).args(["-n", HOST, "stats", "--json"]))?;
    let stats: serde_json::Value = serde_json::from_str(&out).context("stats --json")?;
    let session = stats["sessions"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "bench"))
        .context("no bench session in stats")?;
    let reasons = ["matched", "filtered", "sampled_out", "rate_limited", "dry_run", "preempted", "hop_limit"];
    Ok(reasons.iter().filter_map(|r| session["counters"]["ingress"][r]["packets"].as_u64()).sum())
}

pub fn detach_agent(agent: &Path) -> Result<()> {
    sh(Command::new(agent).args(["-n", HOST, "detach", "--all"])).map(drop)
}

impl Variant {
    /// Whether the agent makes the copies, with a program at the source's
    /// ingress.
    pub fn taps_ingress(&self) -> bool {
        matches!(self.kind, Kind::Agent { direction, .. } if direction != "egress")
    }

    pub fn attach(&self, agent: &Path, lab: &mut Lab) -> Result<()> {
        match self.kind {
            Kind::Base => Ok(()),
            Kind::CloneFloor => lab.set_clone_floor(Some((SOURCE, self.dest))),
            Kind::TcMirred { matching } => {
                tc(&["qdisc", "add", "dev", SOURCE, "clsact"])?;
                let key: &[&str] = if matching {
                    &["u32", "0", "0"]
                } else {
                    &["u32", "0x12345678", "0xffffffff", "at", "0"]
                };
                for hook in ["ingress", "egress"] {
                    let mut args =
                        vec!["filter", "add", "dev", SOURCE, hook, "protocol", "all", "u32", "match"];
                    args.extend_from_slice(key);
                    args.extend_from_slice(&["action", "mirred", "egress", "mirror", "dev", self.dest]);
                    tc(&args)?;
                }
                Ok(())
            }
            Kind::Agent { direction, snaplen, select } => {
                attach_agent(agent, self.dest, direction, snaplen, select)
            }
        }
    }

    pub fn detach(&self, agent: &Path, lab: &mut Lab) -> Result<()> {
        match self.kind {
            Kind::Base => Ok(()),
            Kind::CloneFloor => lab.set_clone_floor(None),
            Kind::TcMirred { .. } => tc(&["qdisc", "del", "dev", SOURCE, "clsact"]),
            Kind::Agent { .. } => detach_agent(agent),
        }
    }

    /// Whether `copies` per packet (a UDP mode) is what this variant claims:
    /// one copy per packet (±1%), none, or one in N (±20%: over the ≥ 100k
    /// packets of a trial, 5 standard deviations are under 10%).
    pub fn copies_ok(&self, copies: f64) -> bool {
        match self.copies {
            Copies::None => copies == 0.0,
            Copies::All => (0.99..=1.01).contains(&copies),
            Copies::OneIn(n) => (copies * f64::from(n) - 1.0).abs() <= 0.2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_written_for_the_generators_port() {
        let port = super::super::generator::UDP_DST_PORT;
        assert!(FILTER10[1].ends_with(&format!("udp dst port {port}")));
        assert!(RULES10.last().unwrap().ends_with(&format!("accept udp dport {port}")));
        assert_eq!(RULES10.iter().filter(|a| **a == "--rule").count(), 10);
        assert_eq!(FILTER10[1].matches(" or ").count(), 9);
    }
}
