//! The config parser, then the resolver, on arbitrary input.
//!
//! Run (from mirror-agent/): `AYA_BUILD_SKIP=1 cargo +nightly fuzz run config`.
//! `parse` must return `Ok` or `Err` for any text, never panic; whatever it
//! accepts must resolve without panicking, against an empty host and against
//! a small fixed one (a bridge with ports, a veth into a namespace, an FDB
//! entry, a loopback) so that the selectors and the policy match something.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use mirror_agent::{
    daemon::{
        config::parse,
        resolve::{Host, resolve},
    },
    net::links::{FdbEntry, Link, LinkKind, Snapshot},
};

fn link(index: u32, name: &str, kind: LinkKind, master: Option<u32>, mac: u8) -> Link {
    Link::synthetic(index, name, kind, master, [0x52, 0x54, 0, 0x12, 0x34, mac])
}

fn populated_host() -> Host {
    let mut local = Snapshot::default();
    let mut lo = link(1, "lo", LinkKind::Other, None, 0);
    lo.mac = None;
    lo.loopback = true;
    let mut vethpod = link(7, "vethpod", LinkKind::Veth, None, 7);
    vethpod.peer = Some(2);
    vethpod.peer_netnsid = Some(1);
    for l in [
        lo,
        link(2, "br0", LinkKind::Bridge, None, 1),
        link(3, "vnet0", LinkKind::Other, Some(2), 2),
        link(4, "vnet1", LinkKind::Other, Some(2), 0x56),
        link(5, "vnet2", LinkKind::Other, None, 4),
        link(6, "mon0", LinkKind::Veth, None, 5),
        vethpod,
    ] {
        local.links.insert(l.index, l);
    }
    local.fdb.push(FdbEntry { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], port: 4 });
    local.fdb.push(FdbEntry { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57], port: 99 });
    let mut pod = Snapshot::default();
    let mut eth0 = link(2, "eth0", LinkKind::Veth, None, 8);
    eth0.peer = Some(7);
    eth0.peer_netnsid = Some(0);
    pod.links.insert(2, eth0);
    pod.links.insert(3, link(3, "eth1", LinkKind::Other, None, 9));
    Host {
        local,
        netns: BTreeMap::from([("pod-a".to_owned(), pod)]),
        netns_ids: BTreeMap::from([("pod-a".to_owned(), 1)]),
    }
}

fuzz_target!(|data: &[u8]| {
    // Borrowed when `data` is valid UTF-8; otherwise invalid sequences
    // become U+FFFD, which is still text the parser must handle.
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = parse("fuzz.yaml", &text) {
        let _ = resolve(&config, &Host::default());
        let _ = Host::netns_wanted(&config);
        let _ = resolve(&config, &populated_host());
    }
});
