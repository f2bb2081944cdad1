//! The host's interfaces and bridge FDB, read over rtnetlink (`rtnetlink`
//! and `netlink-packet-route`): what the daemon's selectors are resolved
//! against, and the events that say it changed.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
};
use rtnetlink::Handle;

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// ifindex of the bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    pub kind: LinkKind,
    /// `IFLA_LINK`: for a veth, its peer's ifindex (in the peer's namespace).
    pub peer: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, in this namespace, of the namespace the
    /// peer lives in (absent: the same namespace).
    pub peer_netnsid: Option<i32>,
    pub up: bool,
    pub loopback: bool,
}

impl Link {
    /// An up link as a dump would describe it, with no peer: for tests and
    /// the fuzzer's synthetic hosts.
    pub fn synthetic(index: u32, name: &str, kind: LinkKind, master: Option<u32>, mac: [u8; 6]) -> Self {
        Self {
            index,
            name: name.to_owned(),
            mac: Some(mac),
            master,
            kind,
            peer: None,
            peer_netnsid: None,
            up: true,
            loopback: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Other,
}

/// A MAC a bridge has learned on one of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub port: u32,
}

/// Everything selectors are resolved against, in one namespace.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: BTreeMap<u32, Link>,
    pub fdb: Vec<FdbEntry>,
}

impl Snapshot {
    pub fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        master: None,
        kind: LinkKind::Other,
        peer: None,
        peer_netnsid: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => link.mac = mac_of(a),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(p) => link.peer = Some(*p),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = match kind {
                            InfoKind::Bridge => LinkKind::Bridge,
                            InfoKind::Veth => LinkKind::Veth,
                            _ => LinkKind::Other,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn fdb_of(msg: &NeighbourMessage) -> Option<FdbEntry> {
    // Learned and static entries of a bridge; not the `self` entries of a
    // device's own table, nor a port's own (permanent, local) address.
    if msg.header.family != AddressFamily::Bridge
        || msg.header.flags.contains(NeighbourFlags::Own)
        || msg.header.state == NeighbourState::Permanent
    {
        return None;
    }
    let mac = msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(a) => mac_of(a),
        _ => None,
    })?;
    Some(FdbEntry { mac, port: msg.header.ifindex })
}

/// Reads the interfaces and the bridges' FDB.
pub async fn snapshot(handle: &Handle) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("dumping links over rtnetlink")? {
        if let Some(link) = link_of(&msg) {
            snap.links.insert(link.index, link);
        }
    }
    let mut neigh = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    while let Some(msg) = neigh.try_next().await.context("dumping the bridge FDB over rtnetlink")? {
        if let Some(entry) = fdb_of(&msg) {
            snap.fdb.push(entry);
        }
    }
    Ok(snap)
}

/// The id by which the current namespace knows the namespace at `path`
/// (`RTM_GETNSID`; what `IFLA_LINK_NETNSID` of a veth into it holds), or
/// `None` if it has none (no veth crosses to it).
pub async fn nsid_of(handle: &Handle, path: &Path) -> Result<Option<i32>> {
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        nsid::{NsidAttribute, NsidMessage},
    };
    use std::os::fd::AsRawFd as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Deleted since it was listed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(file.as_raw_fd() as u32));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut responses = handle.clone().request(req).context("asking for a namespace id")?;
    while let Some(m) = futures::StreamExt::next(&mut responses).await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(msg)) => {
                let id = msg.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(*id),
                    _ => None,
                });
                return Ok(id.filter(|id| *id >= 0));
            }
            NetlinkPayload::Error(e) => return Err(e.to_io()).context("RTM_GETNSID"),
            _ => {}
        }
    }
    Ok(None)
}

/// [`snapshot`] of the current thread's namespace, from synchronous code.
pub fn snapshot_blocking() -> Result<Snapshot> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        let task = tokio::spawn(conn);
        let snap = snapshot(&handle).await;
        task.abort();
        snap
    })
}

/// [`nsid_of`] from synchronous code.
pub fn nsid_of_blocking(path: &Path) -> Result<Option<i32>> {
    let path = path.to_owned();
    // A thread of its own: callers may be on a tokio thread.
    std::thread::spawn(move || -> Result<Option<i32>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
            let task = tokio::spawn(conn);
            let id = nsid_of(&handle, &path).await;
            task.abort();
            id
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("nsid reader thread panicked"))?
}

/// [`snapshot`] of another namespace (a `/run/netns` name or a path), on a
/// thread of its own so the caller's namespace never changes. `Ok(None)`:
/// there is no such namespace (yet).
pub fn snapshot_of_netns(name: &str) -> Result<Option<Snapshot>> {
    let path = super::netns::path_of(name);
    if !Path::new(&path).exists() {
        return Ok(None);
    }
    let name = name.to_owned();
    std::thread::spawn(move || -> Result<Option<Snapshot>> {
        match super::netns::enter(&name) {
            Ok(()) => {}
            Err(e) if !Path::new(&super::netns::path_of(&name)).exists() => {
                tracing::debug!("network namespace {name} went away: {e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        snapshot_blocking().map(Some)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace reader thread panicked"))?
}

/// True for the messages that may change what a selector resolves to.
/// Bridge FDB changes matter only to `mac:` selectors (a busy bridge
/// learns all day).
pub fn is_relevant(msg: &netlink_packet_route::RouteNetlinkMessage, fdb_matters: bool) -> bool {
    use netlink_packet_route::RouteNetlinkMessage as M;
    match msg {
        M::NewLink(_) | M::DelLink(_) | M::SetLink(_) => true,
        M::NewNeighbour(n) | M::DelNeighbour(n) => fdb_matters && n.header.family == AddressFamily::Bridge,
        _ => false,
    }
}
