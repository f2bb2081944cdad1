//! From the config and what the host holds right now to the sessions the
//! store should hold: every selector is resolved to (ifindex, direction)
//! taps, and every source and destination goes through the policy.
use std::collections::{BTreeMap, BTreeSet};

use mirror_common::SourceKey;

use crate::{
    daemon::{
        config::{Config, Glob, Selector, SessionDef},
        policy::{Policy, SourceFacts},
    },
    dataplane::{
        sessions::SessionSpec,
        store::{Owner, directions},
    },
    net::links::{LinkKind, Snapshot},
};
use mirror_common::direction;

/// The host as selectors see it: this namespace, and the namespaces that
/// `netns:` selectors name (absent while they do not exist).
#[derive(Debug, Default)]
pub struct Host {
    pub local: Snapshot,
    pub netns: BTreeMap<String, Snapshot>,
    /// The id by which the local namespace knows each of `netns` (absent:
    /// no veth crosses to it).
    pub netns_ids: BTreeMap<String, i32>,
}

impl Host {
    /// The namespaces the config's `netns:` selectors need read.
    pub fn netns_wanted(config: &Config) -> BTreeSet<String> {
        config
            .sessions
            .iter()
            .flat_map(|s| &s.sources.0)
            .filter_map(|src| match &src.selector {
                Selector::Netns { netns, .. } => Some(netns.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A source the policy kept out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denied {
    pub session: String,
    pub interface: String,
    pub why: String,
}

/// What the config comes to on this host.
#[derive(Debug, Default)]
pub struct Resolution {
    pub specs: Vec<SessionSpec>,
    /// Sessions refused whole, and why.
    pub refused: Vec<(String, String)>,
    pub denied: Vec<Denied>,
    /// Selectors that match nothing they could tap, and why (informational).
    pub notes: Vec<(String, String)>,
}

const EVERYTHING: Policy = Policy { sources: None, destinations: None };

fn swapped(dir: u32) -> u32 {
    if dir == direction::INGRESS { direction::EGRESS } else { direction::INGRESS }
}

/// Resolves every session of `config` against `host`.
pub fn resolve(config: &Config, host: &Host) -> Resolution {
    let policy = config.policy.as_ref().unwrap_or(&EVERYTHING);
    let mut out = Resolution::default();
    for def in &config.sessions {
        match resolve_session(def, policy, host, &mut out) {
            Ok(spec) => out.specs.push(spec),
            Err(why) => out.refused.push((def.name.0.clone(), why)),
        }
    }
    out
}

/// A matched source before the policy: (ifindex, name, bridge, netns, taps
/// seen from the far side of a veth).
struct Candidate {
    ifindex: u32,
    name: String,
    bridge: Option<String>,
    netns: Option<String>,
    far_side: bool,
}

fn excluded(name: &str, exclude: &[Glob]) -> bool {
    exclude.iter().any(|g| g.matches(name))
}

fn resolve_session(
    def: &SessionDef,
    policy: &Policy,
    host: &Host,
    out: &mut Resolution,
) -> Result<SessionSpec, String> {
    let session = def.name.0.clone();
    let local = &host.local;
    let dest_name = &def.dest.0;
    if !policy.allows_destination(dest_name) {
        return Err(format!("destination {dest_name:?} is not allowed by the policy's destinations"));
    }
    let dest = local.by_name(dest_name);
    if dest.is_some_and(|d| d.loopback) {
        return Err(format!(
            "destination {dest_name:?} is a loopback device: copies would be fed back into this host's own stack"
        ));
    }
    let bridge_name = |ifindex: Option<u32>| -> Option<String> {
        let link = local.links.get(&ifindex?)?;
        (link.kind == LinkKind::Bridge).then(|| link.name.clone())
    };
    let mut candidates: Vec<Candidate> = Vec::new();
    let local_candidate = |l: &crate::net::links::Link| Candidate {
        ifindex: l.index,
        name: l.name.clone(),
        bridge: bridge_name(l.master),
        netns: None,
        far_side: false,
    };
    for src in &def.sources.0 {
        match &src.selector {
            Selector::Name(glob) => {
                if glob.is_literal() && glob.0 == *dest_name {
                    return Err(format!(
                        "destination {dest_name:?} is also a source of this session: every copy would be copied again"
                    ));
                }
                for l in local.links.values() {
                    if glob.matches(&l.name) && !excluded(&l.name, &src.exclude) && !l.loopback {
                        candidates.push(local_candidate(l));
                    }
                }
            }
            Selector::Bridge(bridge) => {
                if !policy.allows_bridge(&bridge.0) {
                    return Err(format!("bridge {:?} is not allowed by the policy's sources", bridge.0));
                }
                let Some(br) = local.by_name(&bridge.0) else {
                    out.notes.push((session.clone(), format!("bridge {:?} does not exist (yet)", bridge.0)));
                    continue;
                };
                if br.kind != LinkKind::Bridge {
                    return Err(format!("{:?} is not a bridge", bridge.0));
                }
                for l in local.links.values() {
                    if l.master == Some(br.index) && !excluded(&l.name, &src.exclude) {
                        candidates.push(local_candidate(l));
                    }
                }
            }
            Selector::Mac(mac) => {
                // The interface that owns the address (a guest's NIC seen
                // from inside, or a tap configured with the guest's MAC)…
                for l in local.links.values() {
                    if l.mac == Some(mac.0) && l.kind != LinkKind::Bridge && !l.loopback {
                        candidates.push(local_candidate(l));
                    }
                }
                // …and the bridge port where the address was learned (a
                // libvirt tap carries fe:54:…, the guest 52:54:…).
                // Only a port where this is the one learned address: a port
                // with many (an uplink, a trunk) is not the guest's, and
                // tapping it would mirror everything crossing it.
                for e in local.fdb.iter().filter(|e| e.mac == mac.0) {
                    let learned_here =
                        local.fdb.iter().filter(|o| o.port == e.port && o.mac != mac.0).count();
                    match local.links.get(&e.port) {
                        Some(l) if learned_here == 0 => candidates.push(local_candidate(l)),
                        Some(l) => out.notes.push((
                            session.clone(),
                            format!("{mac} is learned on {}, which carries {learned_here} other addresses (an uplink?): not tapped", l.name),
                        )),
                        None => {}
                    }
                }
            }
            Selector::Netns { netns, interface } => {
                if !policy.allows_netns(netns) {
                    return Err(format!(
                        "network namespace {netns:?} is not allowed by the policy's sources"
                    ));
                }
                let Some(inner) = host.netns.get(netns) else {
                    out.notes
                        .push((session.clone(), format!("network namespace {netns:?} does not exist (yet)")));
                    continue;
                };
                let Some(inside) = inner.by_name(&interface.0) else {
                    out.notes.push((
                        session.clone(),
                        format!("no interface {:?} in network namespace {netns:?} (yet)", interface.0),
                    ));
                    continue;
                };
                // Its veth peer here: a veth whose peer is `inside`, in that
                // very namespace (ifindexes are per namespace: the pair of
                // numbers alone could be another pod's).
                let ns_id = host.netns_ids.get(netns).copied();
                let peer = inside.peer.and_then(|p| local.links.get(&p)).filter(|p| {
                    inside.kind == LinkKind::Veth
                        && p.kind == LinkKind::Veth
                        && p.peer == Some(inside.index)
                        && p.peer_netnsid.is_some()
                        && p.peer_netnsid == ns_id
                });
                match peer {
                    Some(p) => candidates.push(Candidate {
                        ifindex: p.index,
                        name: p.name.clone(),
                        bridge: None,
                        netns: Some(netns.clone()),
                        far_side: true,
                    }),
                    None => out.notes.push((
                        session.clone(),
                        format!(
                            "{:?} in network namespace {netns:?} is not a veth whose peer is in this namespace: nothing here can tap it",
                            interface.0
                        ),
                    )),
                }
            }
        }
    }
    let mut taps = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for c in candidates {
        if c.name == *dest_name || !seen.insert((c.ifindex, c.far_side)) {
            continue;
        }
        let facts = SourceFacts { name: &c.name, bridge: c.bridge.as_deref(), netns: c.netns.as_deref() };
        if !policy.allows_source(facts) {
            out.denied.push(Denied {
                session: session.clone(),
                interface: c.name.clone(),
                why: "not allowed by the policy's sources".to_owned(),
            });
            continue;
        }
        for d in directions(def.direction.mask()) {
            // From inside the namespace: what its interface receives, the
            // peer here sends.
            let d = if c.far_side { swapped(d) } else { d };
            let label = match &c.netns {
                Some(ns) => format!("{} (peer of {ns})", c.name),
                None => c.name.clone(),
            };
            taps.insert(SourceKey { ifindex: c.ifindex, direction: d }, label);
        }
    }
    Ok(SessionSpec {
        name: session,
        owner: Owner::Config,
        dest_ifindex: dest.map_or(0, |d| d.index),
        dest_name: dest_name.clone(),
        snaplen: def.snaplen.0,
        direction_mask: def.direction.mask(),
        taps,
        select: def.select.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        daemon::config,
        net::links::{FdbEntry, Link},
    };

    fn link(index: u32, name: &str, kind: LinkKind, master: Option<u32>, mac: u8) -> Link {
        Link::synthetic(index, name, kind, master, [0x52, 0x54, 0, 0, 0, mac])
    }

    fn host() -> Host {
        let mut local = Snapshot::default();
        for l in [
            link(1, "br0", LinkKind::Bridge, None, 1),
            link(2, "vnet0", LinkKind::Other, Some(1), 2),
            link(3, "vnet1", LinkKind::Other, Some(1), 3),
            link(4, "vnet2", LinkKind::Other, None, 4),
            link(5, "mon0", LinkKind::Veth, None, 5),
            link(6, "eth9", LinkKind::Other, Some(1), 6),
        ] {
            local.links.insert(l.index, l);
        }
        local.fdb.push(FdbEntry { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], port: 3 });
        let mut veth = link(7, "vethpod", LinkKind::Veth, None, 7);
        veth.peer = Some(2);
        veth.peer_netnsid = Some(3);
        local.links.insert(7, veth);
        let mut pod = Snapshot::default();
        let mut eth0 = link(2, "eth0", LinkKind::Veth, None, 8);
        eth0.peer = Some(7);
        eth0.peer_netnsid = Some(0);
        pod.links.insert(2, eth0);
        let mut other = Snapshot::default();
        let mut eth0 = link(2, "eth0", LinkKind::Veth, None, 9);
        eth0.peer = Some(7);
        eth0.peer_netnsid = Some(0);
        other.links.insert(2, eth0);
        Host {
            local,
            netns: BTreeMap::from([("pod-a".to_owned(), pod), ("pod-b".to_owned(), other)]),
            netns_ids: BTreeMap::from([("pod-a".to_owned(), 3), ("pod-b".to_owned(), 4)]),
        }
    }

    fn sources(r: &Resolution) -> Vec<(u32, u32)> {
        r.specs[0].taps.keys().map(|k| (k.ifindex, k.direction)).collect()
    }

    #[test]
    fn every_selector_resolves_and_the_destination_is_never_a_source() {
        let c = config::parse(
            "t",
            "sessions:\n  - name: blue\n    sources:\n      - bridge: br0\n        exclude: [eth9]\n      - name: \"vnet*\"\n      - netns: pod-a\n        interface: eth0\n    dest: vnet0\n    direction: ingress\n",
        )
        .expect("valid");
        let r = resolve(&c, &host());
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        // vnet1 (bridge and glob), vnet2 (glob), vethpod with ingress seen from the pod = egress here.
        assert_eq!(
            sources(&r),
            vec![(3, direction::INGRESS), (4, direction::INGRESS), (7, direction::EGRESS)]
        );
        assert_eq!(r.specs[0].dest_ifindex, 2);
    }

    #[test]
    fn a_netns_peer_is_matched_by_namespace_identity_not_by_numbers() {
        // pod-b's eth0 is also index 2 with peer index 7, but vethpod's peer
        // lives in pod-a (nsid 3), not pod-b (nsid 4).
        let c = config::parse(
            "t",
            "sessions:\n  - name: p\n    sources: [{netns: pod-b, interface: eth0}]\n    dest: mon0\n",
        )
        .expect("valid");
        let r = resolve(&c, &host());
        assert!(r.specs[0].taps.is_empty(), "{:?}", r.specs[0].taps);
        assert!(
            r.notes.iter().any(|(_, n)| n.contains("not a veth whose peer is in this namespace")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn mac_matches_the_owner_and_the_learned_port() {
        let c = config::parse(
            "t",
            "sessions:\n  - name: m\n    sources: [{mac: \"52:54:00:00:00:04\"}, {mac: \"52:54:00:12:34:56\"}]\n    dest: mon0\n    direction: egress\n",
        )
        .expect("valid");
        let r = resolve(&c, &host());
        assert_eq!(sources(&r), vec![(3, direction::EGRESS), (4, direction::EGRESS)]);
    }

    #[test]
    fn the_policy_refuses_sessions_and_denies_sources_a_glob_would_reach() {
        let text = "sessions:\n  - name: g\n    sources: [{name: \"*\"}]\n    dest: mon0\n  - name: d\n    sources: [{name: vnet1}]\n    dest: vnet2\n  - name: b\n    sources: [{bridge: br0}]\n    dest: mon0\npolicy:\n  sources: [\"vnet*\"]\n  destinations: [\"mon*\"]\n";
        let r = resolve(&config::parse("t", text).expect("valid"), &host());
        let refused: Vec<&str> = r.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["d", "b"]);
        assert!(r.refused[0].1.contains("destination \"vnet2\" is not allowed"), "{:?}", r.refused);
        let g = &r.specs[0];
        let names: BTreeSet<&str> = g.taps.values().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from(["vnet0", "vnet1", "vnet2"]));
        let denied: BTreeSet<&str> = r.denied.iter().map(|d| d.interface.as_str()).collect();
        assert_eq!(denied, BTreeSet::from(["br0", "eth9", "vethpod"]));
    }

    #[test]
    fn a_missing_destination_resolves_to_zero_and_sources_still_resolve() {
        let c = config::parse("t", "sessions:\n  - name: x\n    sources: [{name: vnet2}]\n    dest: gone0\n")
            .expect("valid");
        let r = resolve(&c, &host());
        assert_eq!(r.specs[0].dest_ifindex, 0);
        assert_eq!(r.specs[0].taps.len(), 2);
    }
}
