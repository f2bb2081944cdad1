//! Attachments, reconciled from the maps: the hooks that should exist are
//! derived from `SOURCES` (source hooks) and `SESSIONS` (destinations that
//! cut copies); the hooks that do exist are the pins under `links/`. Every
//! change of sessions ends with [`reconcile`], which attaches what is
//! missing and detaches what is no longer needed — so an interrupted or
//! failed change is repaired by the next one.
use std::{collections::BTreeSet, fs, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use mirror_common::{direction, names};

use crate::{bpffs::Layout, iface, store::Store, tc_netlink};

/// How programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links on kernels >= 6.6, netlink cls_bpf filters before.
    Auto,
    /// TCX links (bpf_link, multi-program, pinned in bpffs).
    Tcx,
    /// Classic cls_bpf filters in a clsact qdisc, for older kernels.
    Netlink,
}

impl AttachMode {
    fn use_tcx(self) -> bool {
        match self {
            Self::Tcx => true,
            Self::Netlink => false,
            Self::Auto => KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookKind {
    SrcIngress,
    SrcEgress,
    DstEgress,
}

impl HookKind {
    const ALL: [Self; 3] = [Self::SrcIngress, Self::SrcEgress, Self::DstEgress];

    fn pin_prefix(self) -> &'static str {
        match self {
            Self::SrcIngress => "src-ingress",
            Self::SrcEgress => "src-egress",
            Self::DstEgress => "dst-egress",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::SrcIngress => names::PROG_SRC_INGRESS,
            Self::SrcEgress => names::PROG_SRC_EGRESS,
            Self::DstEgress => names::PROG_DST_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::SrcIngress => TcAttachType::Ingress,
            Self::SrcEgress | Self::DstEgress => TcAttachType::Egress,
        }
    }

    /// Source ingress and destination hooks run first (see the packet as it
    /// arrived; cut copies before anyone else sees them); source egress runs
    /// last (see the packet as it leaves).
    fn tcx_order(self) -> LinkOrder {
        match self {
            Self::SrcIngress | Self::DstEgress => LinkOrder::first(),
            Self::SrcEgress => LinkOrder::last(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    pub kind: HookKind,
    pub ifindex: u32,
}

/// Netlink filters are added at this priority (lowest = first) so that a
/// mirror sees packets before classic filters that might drop them.
const NETLINK_PRIORITY: u16 = 1;
const NETLINK_PIN_PREFIX: &str = "tc-";
const QDISC_CREATED_SUFFIX: &str = "+qdisc";

/// One pinned attachment.
#[derive(Debug)]
struct Attached {
    hook: Hook,
    pin: PathBuf,
    /// `None` for TCX; for netlink, whether the agent created the clsact qdisc.
    netlink_created_qdisc: Option<bool>,
}

fn parse_pin(name: &str) -> Option<(Hook, Option<bool>)> {
    let (rest, netlink) = match name.strip_prefix(NETLINK_PIN_PREFIX) {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let (rest, created) = match rest.strip_suffix(QDISC_CREATED_SUFFIX) {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    HookKind::ALL.into_iter().find_map(|kind| {
        let idx = rest.strip_prefix(kind.pin_prefix())?.strip_prefix('-')?.parse().ok()?;
        Some((Hook { kind, ifindex: idx }, netlink.then_some(created)))
    })
}

fn attached(layout: &Layout) -> Result<Vec<Attached>> {
    let dir = layout.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match parse_pin(&name) {
            Some((hook, netlink_created_qdisc)) => out.push(Attached {
                hook,
                pin: entry.path(),
                netlink_created_qdisc,
            }),
            None => tracing::warn!(pin = %name, "ignoring unknown pin"),
        }
    }
    Ok(out)
}

/// The hooks the current sessions need.
fn desired(store: &Store) -> Result<BTreeSet<Hook>> {
    let mut hooks = BTreeSet::new();
    for (key, _) in store.source_hooks()? {
        let kind = if key.direction == direction::INGRESS {
            HookKind::SrcIngress
        } else {
            HookKind::SrcEgress
        };
        hooks.insert(Hook { kind, ifindex: key.ifindex });
    }
    for session in store.sessions()? {
        if session.config.snaplen != 0 {
            hooks.insert(Hook { kind: HookKind::DstEgress, ifindex: session.config.dest_ifindex });
        }
    }
    Ok(hooks)
}

/// Number of hooks currently pinned.
pub fn attached_count(layout: &Layout) -> Result<usize> {
    Ok(attached(layout)?.len())
}

/// Brings the attachments in line with the maps. Detaches first, so that a
/// removed session stops costing anything even if a later attach fails.
pub fn reconcile(store: &Store, layout: &Layout, mode: AttachMode) -> Result<()> {
    let want = desired(store)?;
    let have = attached(layout)?;

    for a in have.iter().filter(|a| !want.contains(&a.hook)) {
        detach(a)?;
    }
    let present: BTreeSet<Hook> = have.iter().map(|a| a.hook).collect();
    let missing: Vec<Hook> = want
        .into_iter()
        .filter(|h| !present.contains(h))
        // An interface deleted under a live session cannot be hooked again.
        .filter(|h| iface::name(h.ifindex).is_some())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(layout.links_dir())?;
    let mut ebpf = crate::store::load_object(layout)?;
    let use_tcx = mode.use_tcx();
    for hook in missing {
        attach(&mut ebpf, layout, hook, use_tcx)?;
    }
    Ok(())
}

fn pin_path(layout: &Layout, hook: Hook, netlink_created_qdisc: Option<bool>) -> PathBuf {
    let mut name = format!("{}-{}", hook.kind.pin_prefix(), hook.ifindex);
    if let Some(created) = netlink_created_qdisc {
        name = format!("{NETLINK_PIN_PREFIX}{name}");
        if created {
            name.push_str(QDISC_CREATED_SUFFIX);
        }
    }
    layout.links_dir().join(name)
}

fn attach(ebpf: &mut aya::Ebpf, layout: &Layout, hook: Hook, use_tcx: bool) -> Result<()> {
    let ifname = iface::name(hook.ifindex)
        .with_context(|| format!("interface {} vanished", hook.ifindex))?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(hook.kind.program())
        .with_context(|| format!("program {} missing from the object", hook.kind.program()))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("loading {} (verifier)", hook.kind.program()))?;
    }
    let ctx = || format!("attaching {} to {ifname}", hook.kind.program());
    if use_tcx {
        let id = prog
            .attach_with_options(&ifname, hook.kind.attach_type(), TcAttachOptions::TcxOrder(hook.kind.tcx_order()))
            .with_context(ctx)?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(pin_path(layout, hook, None)).with_context(ctx)?;
    } else {
        let created = match tc::qdisc_add_clsact(&ifname) {
            Ok(()) => true,
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e).with_context(|| format!("adding clsact qdisc to {ifname}")),
        };
        let options = NlOptions { priority: NETLINK_PRIORITY, ..Default::default() };
        let id = prog
            .attach_with_options(&ifname, hook.kind.attach_type(), TcAttachOptions::Netlink(options))
            .with_context(ctx)?;
        // The filter lives on in the qdisc; the pinned program marks it ours.
        prog.pin(pin_path(layout, hook, Some(created))).with_context(ctx)?;
        std::mem::forget(prog.take_link(id)?);
    }
    tracing::info!(hook = ?hook.kind, ifname, tcx = use_tcx, "attached");
    Ok(())
}

fn detach(a: &Attached) -> Result<()> {
    let ctx = || format!("detaching {}", a.pin.display());
    match a.netlink_created_qdisc {
        None => {
            // Dropping the unpinned link's last fd detaches it (a link whose
            // interface was deleted is already detached; unpinning frees it).
            let link = PinnedLink::from_pin(&a.pin).with_context(ctx)?;
            drop(link.unpin().with_context(ctx)?);
        }
        Some(created_qdisc) => {
            if let Some(ifname) = iface::name(a.hook.ifindex) {
                match tc::qdisc_detach_program(&ifname, a.hook.kind.attach_type(), a.hook.kind.program()) {
                    Ok(()) => {}
                    Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(ctx),
                }
                if created_qdisc && tc_netlink::clsact_is_empty(a.hook.ifindex)? {
                    tc_netlink::delete_clsact(a.hook.ifindex).with_context(ctx)?;
                }
            }
            fs::remove_file(&a.pin).with_context(ctx)?;
        }
    }
    tracing::info!(hook = ?a.hook.kind, ifindex = a.hook.ifindex, "detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        let layout = Layout::new(std::path::Path::new("/x"), 1);
        for kind in HookKind::ALL {
            for nl in [None, Some(false), Some(true)] {
                let hook = Hook { kind, ifindex: 42 };
                let path = pin_path(&layout, hook, nl);
                let name = path.file_name().unwrap().to_str().unwrap();
                assert_eq!(parse_pin(name), Some((hook, nl)), "{name}");
            }
        }
        assert_eq!(parse_pin("src-ingress-x"), None);
        assert_eq!(parse_pin("other"), None);
    }
}
