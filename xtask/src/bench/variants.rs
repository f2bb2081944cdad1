//! What is attached to the source in each trial. Declarative: a new
//! destination kind (e.g. encapsulated copies to a remote collector) is one
//! more row in [`VARIANTS`] and, if needed, one more [`Kind`].
use std::{path::Path, process::Command};

use anyhow::Result;

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
    /// `mirror-agent attach` on the source.
    Agent { direction: &'static str, snaplen: u32 },
}

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub kind: Kind,
    /// Where the copies go (ignored by `base`).
    pub dest: &'static str,
}

/// A local monitor port: a veth to the collector.
const MON: &str = "mon0";
/// A remote collector: VXLAN (kernel device) over `mon0`.
const VXLAN: &str = "vx0";

const fn variant(name: &'static str, kind: Kind) -> Variant {
    Variant { name, kind, dest: MON }
}

pub const VARIANTS: &[Variant] = &[
    variant("base", Kind::Base),
    variant("tc", Kind::TcMirred { matching: true }),
    variant("tc-nomatch", Kind::TcMirred { matching: false }),
    variant("clone-floor", Kind::CloneFloor),
    variant("agent", Kind::Agent { direction: "both", snaplen: 0 }),
    // Our program is on the source, but the traffic never crosses the
    // direction it taps (the source only receives).
    variant("agent-idle", Kind::Agent { direction: "egress", snaplen: 0 }),
    variant("agent-snap128", Kind::Agent { direction: "both", snaplen: 128 }),
    // Copies to a remote collector, encapsulated by the kernel's VXLAN device.
    Variant { name: "tc-vxlan", kind: Kind::TcMirred { matching: true }, dest: VXLAN },
    Variant { name: "agent-vxlan", kind: Kind::Agent { direction: "both", snaplen: 0 }, dest: VXLAN },
];

const SOURCE: &str = "src0";

fn tc(args: &[&str]) -> Result<()> {
    let mut full = vec!["tc"];
    full.extend_from_slice(args);
    sh(&mut ns_exec(HOST, &full)).map(drop)
}

impl Variant {
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
            Kind::Agent { direction, snaplen } => {
                let snaplen = snaplen.to_string();
                sh(Command::new(agent)
                    .args(["-n", HOST, "attach", "--name", "bench", "--source", SOURCE])
                    .args(["--dest", self.dest, "--direction", direction, "--snaplen", &snaplen]))
                .map(drop)
            }
        }
    }

    pub fn detach(&self, agent: &Path, lab: &mut Lab) -> Result<()> {
        match self.kind {
            Kind::Base => Ok(()),
            Kind::CloneFloor => lab.set_clone_floor(None),
            Kind::TcMirred { .. } => tc(&["qdisc", "del", "dev", SOURCE, "clsact"]),
            Kind::Agent { .. } => sh(Command::new(agent).args(["-n", HOST, "detach", "--all"])).map(drop),
        }
    }

    /// Whether this variant copies every packet of the one-way UDP modes.
    pub fn mirrors(&self) -> bool {
        matches!(
            self.kind,
            Kind::TcMirred { matching: true } | Kind::CloneFloor | Kind::Agent { direction: "both", .. }
        )
    }

    /// Whether this variant copies anything in the TCP mode, where traffic
    /// crosses the source both ways (the sink's ACKs leave through its egress).
    pub fn mirrors_tcp(&self) -> bool {
        matches!(self.kind, Kind::TcMirred { matching: true } | Kind::CloneFloor | Kind::Agent { .. })
    }
}
