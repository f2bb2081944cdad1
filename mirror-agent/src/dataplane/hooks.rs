//! Attachments, reconciled from the maps: the hooks that should exist are
//! derived from the source index (source hooks) and `SESSIONS` (destinations that
//! cut copies); the hooks that do exist are the pins under `links/`. Every
//! change of sessions ends with [`reconcile`], which attaches what is
//! missing and detaches what is no longer needed — so an interrupted or
//! failed change is repaired by the next one.
use std::{collections::BTreeSet, fs, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        Link as _, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};
use mirror_common::{direction, names};

use crate::{
    dataplane::{bpffs::Layout, store::Store},
    net::{iface, tc_netlink},
};

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

    /// The source hook of a direction.
    fn source(direction: u32) -> Self {
        if direction == direction::INGRESS { Self::SrcIngress } else { Self::SrcEgress }
    }

    /// The direction a source hook taps; `None` for the destination hook.
    fn source_direction(self) -> Option<u32> {
        match self {
            Self::SrcIngress => Some(direction::INGRESS),
            Self::SrcEgress => Some(direction::EGRESS),
            Self::DstEgress => None,
        }
    }

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

/// How a hook is attached, as recorded in its pin's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// A pinned TCX link: `<kind>-<ifindex>`.
    Tcx,
    /// A cls_bpf filter: `tc-<kind>-<ifindex>-<prio>-<handle>[+qdisc]`, the
    /// pin being the program. The filter is deleted by exactly this
    /// (prio, handle); the clsact only if the agent created it.
    Netlink { priority: u16, handle: u32, created_qdisc: bool },
}

/// One pinned attachment.
#[derive(Debug)]
struct Attached {
    hook: Hook,
    pin: PathBuf,
    record: Record,
}

fn pin_name(hook: Hook, record: Record) -> String {
    let base = format!("{}-{}", hook.kind.pin_prefix(), hook.ifindex);
    match record {
        Record::Tcx => base,
        Record::Netlink { priority, handle, created_qdisc } => format!(
            "{NETLINK_PIN_PREFIX}{base}-{priority}-{handle}{}",
            if created_qdisc { QDISC_CREATED_SUFFIX } else { "" }
        ),
    }
}

fn parse_pin(name: &str) -> Option<(Hook, Record)> {
    let (rest, netlink) = match name.strip_prefix(NETLINK_PIN_PREFIX) {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let (rest, created_qdisc) = match rest.strip_suffix(QDISC_CREATED_SUFFIX) {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    HookKind::ALL.into_iter().find_map(|kind| {
        let numbers = rest.strip_prefix(kind.pin_prefix())?.strip_prefix('-')?;
        let mut parts = numbers.split('-');
        let ifindex = parts.next()?.parse().ok()?;
        let record = if netlink {
            let priority = parts.next()?.parse().ok()?;
            let handle = parts.next()?.parse().ok()?;
            Record::Netlink { priority, handle, created_qdisc }
        } else if created_qdisc {
            return None;
        } else {
            Record::Tcx
        };
        parts.next().is_none().then_some((Hook { kind, ifindex }, record))
    })
}

fn attached(layout: &Layout) -> Result<Vec<Attached>> {
    attached_in(&layout.links_dir())
}

fn attached_in(dir: &std::path::Path) -> Result<Vec<Attached>> {
    let entries = match fs::read_dir(dir) {
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
            Some((hook, record)) => out.push(Attached { hook, pin: entry.path(), record }),
            None => tracing::warn!(pin = %name, "ignoring unknown pin"),
        }
    }
    Ok(out)
}

/// The hooks the current sessions need.
fn desired(store: &Store) -> Result<BTreeSet<Hook>> {
    let mut hooks = BTreeSet::new();
    for (key, entry) in store.source_hooks() {
        hooks.insert(Hook { kind: HookKind::source(key.direction), ifindex: key.ifindex });
        // A slot still sending cut copies somewhere needs the hook that cuts
        // them there, whatever SESSIONS says now (an update in progress).
        for slot in &entry.slots[..entry.slot_count as usize] {
            hooks.extend(cut_hook(slot.dest_ifindex, slot.snaplen));
        }
    }
    for session in store.sessions_without_text()? {
        // A destination that does not exist (ifindex 0: a daemon session
        // waiting for it) has no hook to need.
        hooks.extend(cut_hook(session.config.dest_ifindex, session.config.snaplen));
    }
    Ok(hooks)
}

/// Number of hooks currently pinned.
pub fn attached_count(layout: &Layout) -> Result<usize> {
    Ok(attached(layout)?.len())
}

/// Whether a pinned attachment is still in its hook. A TCX link is live
/// while the kernel says it is attached to this hook's interface and
/// direction: someone may have detached it (`bpftool link detach`), or the
/// interface may be gone (the kernel then reports ifindex 0). Two syscalls
/// on the pin, no netlink: cheap enough for every reconcile and scrape.
/// clsact filters are taken as live (their identity is the (priority,
/// handle) record).
///
/// `Err` means *could not check* (no CAP_BPF to open the pin, an LSM said
/// no): never "gone". A caller that took it for "gone" would unpin a
/// working session's link.
fn is_live(a: &Attached) -> Result<bool> {
    if a.record != Record::Tcx {
        return Ok(true);
    }
    let could_not_check = || format!("could not check hook {}", a.hook.describe());
    let Some(link) = tcx_link::state(&a.pin).with_context(could_not_check)? else {
        return Ok(false);
    };
    let want = match a.hook.kind.attach_type() {
        TcAttachType::Ingress => tcx_link::BPF_TCX_INGRESS,
        _ => tcx_link::BPF_TCX_EGRESS,
    };
    if link.link_type != tcx_link::BPF_LINK_TYPE_TCX {
        anyhow::bail!(
            "{}: pin {} is not a TCX link (type {})",
            could_not_check(),
            a.pin.display(),
            link.link_type
        );
    }
    Ok(link.ifindex == a.hook.ifindex && link.attach_type == want)
}

/// True if the TCX link pinned at `pin` is attached to an interface.
pub fn tcx_link_attached(pin: &std::path::Path) -> Result<bool> {
    let state = tcx_link::state(pin).with_context(|| format!("reading {}", pin.display()))?;
    Ok(state.is_some_and(|s| s.ifindex != 0))
}

/// What the kernel says of a pinned TCX link (`BPF_OBJ_GET` +
/// `BPF_OBJ_GET_INFO_BY_FD`; aya 0.14 exposes neither the fd nor the
/// link's interface).
mod tcx_link {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    use crate::dataplane::sys::{BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, bpf};

    pub const BPF_LINK_TYPE_TCX: u32 = 11;
    pub const BPF_TCX_INGRESS: u32 = 46;
    pub const BPF_TCX_EGRESS: u32 = 47;

    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }

    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// The head of `struct bpf_link_info` and its `tcx` member (the union
    /// starts at offset 16: it is 8-byte aligned).
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        attach_type: u32,
        _rest: [u64; 4],
    }

    #[derive(Debug)]
    pub struct State {
        pub link_type: u32,
        /// 0 once detached (by hand, or with its interface).
        pub ifindex: u32,
        pub attach_type: u32,
    }

    /// `Ok(None)`: there is no such pin.
    pub fn state(pin: &Path) -> io::Result<Option<State>> {
        let path = CString::new(pin.as_os_str().as_bytes())?;
        let fd = match bpf(
            BPF_OBJ_GET,
            &mut ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 },
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut info = LinkInfo::default();
        bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            &mut InfoAttr {
                bpf_fd: fd.as_raw_fd() as u32,
                info_len: size_of::<LinkInfo>() as u32,
                info: std::ptr::from_mut(&mut info) as u64,
            },
        )?;
        Ok(Some(State { link_type: info.link_type, ifindex: info.ifindex, attach_type: info.attach_type }))
    }
}

/// Hooks the sessions need that are not live in the kernel right now. Fails
/// (changing nothing) if any hook could not be checked.
pub fn missing(store: &Store, layout: &Layout) -> Result<Vec<Hook>> {
    let mut live = BTreeSet::new();
    for a in attached(layout)? {
        if is_live(&a)? {
            live.insert(a.hook);
        }
    }
    Ok(desired(store)?.into_iter().filter(|h| !live.contains(h)).collect())
}

impl Hook {
    /// `"<kind> on <interface>"` for messages.
    pub fn describe(&self) -> String {
        let name = iface::name(self.ifindex).unwrap_or_else(|| format!("#{}", self.ifindex));
        format!("{} on {name}", self.kind.pin_prefix())
    }

    /// Whether this hook serves `session`.
    pub fn serves(&self, session: &crate::dataplane::store::Session) -> bool {
        match self.kind.source_direction() {
            None => session.config.snaplen != 0 && session.config.dest_ifindex == self.ifindex,
            Some(dir) => {
                session.taps.contains(&mirror_common::SourceKey { ifindex: self.ifindex, direction: dir })
            }
        }
    }
}

/// Detaches every hook the maps no longer need except `keep` (hooks the
/// rest of a plan is about to need again, so a session replaced by another
/// on the same source never loses its hook in between), and attaches
/// nothing: removing a session never depends on hooking others.
pub fn detach_unneeded_keeping(store: &Store, layout: &Layout, keep: &BTreeSet<Hook>) -> Result<()> {
    let mut want = desired(store)?;
    want.extend(keep.iter().copied());
    detach_all_but(&want, layout, false)
}

/// The hooks a session of this shape needs.
pub fn needed_by(
    taps: impl Iterator<Item = mirror_common::SourceKey>,
    dest_ifindex: u32,
    snaplen: u32,
) -> BTreeSet<Hook> {
    let mut hooks: BTreeSet<Hook> =
        taps.map(|k| Hook { kind: HookKind::source(k.direction), ifindex: k.ifindex }).collect();
    hooks.extend(cut_hook(dest_ifindex, snaplen));
    hooks
}

/// Detaches every pinned hook not in `want`; with `repair`, also unpins the
/// wanted ones that are no longer in their hook (so they get attached again).
///
/// Every wanted hook is probed before anything is detached: one that could
/// not be checked aborts the whole call with nothing changed.
fn detach_all_but(want: &BTreeSet<Hook>, layout: &Layout, repair: bool) -> Result<()> {
    let all = attached(layout)?;
    let mut dead = BTreeSet::new();
    if repair {
        for a in all.iter().filter(|a| want.contains(&a.hook)) {
            if !is_live(a).context("nothing was changed")? {
                dead.insert(a.pin.clone());
            }
        }
    }
    for a in &all {
        if !want.contains(&a.hook) {
            detach(a, want)?;
        } else if dead.contains(&a.pin) {
            if iface::name(a.hook.ifindex).is_some() {
                tracing::warn!(hook = %a.hook.describe(), "hook was detached behind our back; re-attaching");
            } else {
                tracing::debug!(hook = %a.hook.describe(), "interface gone; releasing its hook");
            }
            detach(a, want)?;
        }
    }
    Ok(())
}

/// Brings the attachments in line with the maps. Detaches first, so that a
/// removed session stops costing anything even if a later attach fails.
pub fn reconcile(store: &Store, layout: &Layout, mode: AttachMode) -> Result<()> {
    match reconcile_keeping(store, layout, mode, &BTreeSet::new())?.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// As [`reconcile`], and `extra` hooks are kept and attached too even if
/// no session needs them yet (a plan about to need them). Every missing
/// hook is tried: those that could not be attached are returned. `Err` is
/// for what stops the whole pass: a probe that could not look, no object.
pub fn reconcile_keeping(
    store: &Store,
    layout: &Layout,
    mode: AttachMode,
    extra: &BTreeSet<Hook>,
) -> Result<Vec<(Hook, anyhow::Error)>> {
    let mut want = desired(store)?;
    want.extend(extra.iter().copied());
    detach_all_but(&want, layout, true)?;
    let have = attached(layout)?;
    let present: BTreeSet<Hook> = have.iter().map(|a| a.hook).collect();
    let missing: Vec<Hook> = want
        .into_iter()
        .filter(|h| !present.contains(h))
        // An interface deleted under a live session cannot be hooked again.
        .filter(|h| iface::name(h.ifindex).is_some())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(layout.links_dir())?;
    let mut ebpf = crate::dataplane::store::load_object(layout)?;
    let use_tcx = mode.use_tcx();
    let mut failures = Vec::new();
    for hook in missing {
        if let Err(e) = attach(&mut ebpf, layout, hook, use_tcx) {
            // Deleted while we were attaching: nothing to hook, not an error
            // (the next pass releases what it leaves behind).
            if iface::name(hook.ifindex).is_none() {
                tracing::debug!("interface {} vanished while attaching: {e:#}", hook.ifindex);
                continue;
            }
            tracing::warn!(hook = %hook.describe(), "cannot attach: {e:#}");
            failures.push((hook, e));
        }
    }
    Ok(failures)
}

/// The destination hook a session of this shape needs, if any.
pub fn cut_hook(dest_ifindex: u32, snaplen: u32) -> Option<Hook> {
    (snaplen != 0 && dest_ifindex != 0).then_some(Hook { kind: HookKind::DstEgress, ifindex: dest_ifindex })
}

fn pin_path(layout: &Layout, hook: Hook, record: Record) -> PathBuf {
    layout.links_dir().join(pin_name(hook, record))
}

fn attach(ebpf: &mut aya::Ebpf, layout: &Layout, hook: Hook, use_tcx: bool) -> Result<()> {
    let ifname = iface::name(hook.ifindex).with_context(|| format!("interface {} vanished", hook.ifindex))?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(hook.kind.program())
        .with_context(|| format!("program {} missing from the object", hook.kind.program()))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("loading {} (verifier)", hook.kind.program()))?;
    }
    let ctx = || format!("attaching {} to {ifname}", hook.kind.program());
    if use_tcx {
        let id = prog
            .attach_with_options(
                &ifname,
                hook.kind.attach_type(),
                TcAttachOptions::TcxOrder(hook.kind.tcx_order()),
            )
            .with_context(ctx)?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(pin_path(layout, hook, Record::Tcx)).with_context(ctx)?;
    } else {
        let created = match tc::qdisc_add_clsact(&ifname) {
            Ok(()) => true,
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e).with_context(|| format!("adding clsact qdisc to {ifname}")),
        };
        // Whatever fails from here on, leave no filter or qdisc behind.
        let undo_qdisc = |created: bool| {
            if created && tc_netlink::clsact_is_empty(hook.ifindex).unwrap_or(false) {
                let _ = tc_netlink::delete_clsact(hook.ifindex);
            }
        };
        let options = NlOptions { priority: NETLINK_PRIORITY, ..Default::default() };
        let id = match prog.attach_with_options(
            &ifname,
            hook.kind.attach_type(),
            TcAttachOptions::Netlink(options),
        ) {
            Ok(id) => id,
            Err(e) => {
                undo_qdisc(created);
                return Err(e).with_context(ctx);
            }
        };
        let link = prog.take_link(id)?;
        let record = Record::Netlink {
            priority: link.priority()?,
            handle: link.handle()?.into(),
            created_qdisc: created,
        };
        match prog.pin(pin_path(layout, hook, record)) {
            // The filter lives on in the qdisc (dropping the link would
            // delete it); the pinned program records it as ours.
            Ok(()) => std::mem::forget(link),
            Err(e) => {
                drop(link);
                undo_qdisc(created);
                return Err(e).with_context(ctx);
            }
        }
    }
    tracing::info!(hook = ?hook.kind, ifname, tcx = use_tcx, "attached");
    Ok(())
}

/// The clsact the agent created outlives the hook that recorded it when
/// other agent filters remain on the interface: pass the record on to one of
/// them that stays (is in `keep`), so that the last one out removes the qdisc.
fn hand_over_qdisc(from: &Attached, keep: &BTreeSet<Hook>) -> Result<()> {
    let Some(parent) = from.pin.parent() else { return Ok(()) };
    for a in attached_in(parent)? {
        if let Record::Netlink { priority, handle, created_qdisc: false } = a.record
            && a.hook.ifindex == from.hook.ifindex
            && a.pin != from.pin
            && keep.contains(&a.hook)
        {
            let record = Record::Netlink { priority, handle, created_qdisc: true };
            fs::rename(&a.pin, parent.join(pin_name(a.hook, record)))
                .with_context(|| format!("recording clsact ownership on {}", a.pin.display()))?;
            return Ok(());
        }
    }
    Ok(())
}

/// Detaches one attachment; `keep` are the hooks that stay (for the clsact
/// ownership hand-over).
fn detach(a: &Attached, keep: &BTreeSet<Hook>) -> Result<()> {
    let ctx = || format!("detaching {}", a.pin.display());
    match a.record {
        Record::Tcx => {
            // Dropping the unpinned link's last fd detaches it (a link whose
            // interface was deleted is already detached; unpinning frees it).
            let link = PinnedLink::from_pin(&a.pin).with_context(ctx)?;
            drop(link.unpin().with_context(ctx)?);
        }
        Record::Netlink { priority, handle, created_qdisc } => {
            if let Some(ifname) = iface::name(a.hook.ifindex) {
                let link = SchedClassifierLink::attached(
                    &ifname,
                    a.hook.kind.attach_type(),
                    priority,
                    TcHandle::from(handle),
                    None,
                )?;
                match link.detach() {
                    Ok(()) => {}
                    // Already gone (deleted by hand): nothing left to remove.
                    Err(aya::programs::ProgramError::TcError(TcError::NetlinkError(e)))
                        if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e).with_context(ctx),
                }
                if created_qdisc {
                    if tc_netlink::clsact_is_empty(a.hook.ifindex)? {
                        tc_netlink::delete_clsact(a.hook.ifindex).with_context(ctx)?;
                    } else {
                        hand_over_qdisc(a, keep)?;
                    }
                }
            }
            match fs::remove_file(&a.pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(ctx),
            }
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
        let records = [
            Record::Tcx,
            Record::Netlink { priority: 1, handle: 7, created_qdisc: false },
            Record::Netlink { priority: 49152, handle: 0x8000_0001, created_qdisc: true },
        ];
        for kind in HookKind::ALL {
            for record in records {
                let hook = Hook { kind, ifindex: 42 };
                let name = pin_name(hook, record);
                assert_eq!(parse_pin(&name), Some((hook, record)), "{name}");
            }
        }
        for bad in ["src-ingress-x", "other", "src-ingress-1+qdisc", "tc-src-ingress-1", "src-ingress-1-2"] {
            assert_eq!(parse_pin(bad), None, "{bad}");
        }
    }
}
