//! The contract between the kernel programs (`mirror-ebpf`) and the agent
//! (`mirror-agent`): map layouts, copy tagging and reason codes.
//!
//! Every struct that crosses the boundary is `#[repr(C)]`, has explicit
//! padding and a size assertion, and holds only fixed-width integers (no
//! `bool`, enum or `Option`: the kernel side reads raw bytes). The numeric
//! values here are a stable contract: pinned maps outlive agent upgrades,
//! and dashboards key on reason codes. Append; never renumber.
#![no_std]

/// Packet direction, from the *source* interface's point of view.
pub mod direction {
    /// Packets the source interface receives (tc ingress hook).
    pub const INGRESS: u32 = 0;
    /// Packets the source interface sends (tc egress hook).
    pub const EGRESS: u32 = 1;
    /// Number of directions; sizes counter indexing.
    pub const COUNT: u32 = 2;

    /// Bit of [`super::SessionConfig::direction_mask`] for ingress.
    pub const INGRESS_BIT: u32 = 1 << INGRESS;
    /// Bit of [`super::SessionConfig::direction_mask`] for egress.
    pub const EGRESS_BIT: u32 = 1 << EGRESS;
}

/// Why a counter moved. Counted per session and direction in `COUNTERS`.
///
/// 0–5 describe selection and delivery; 7 a copy sent without its cut; 6 and
/// 8–13 copies whose delivery the kernel did not confirm, each leaving the
/// original untouched (fail-open);
/// 14–15 are counted on the program-wide pseudo session [`GLOBAL_SESSION_ID`].
/// Every copy attempt is counted once, at the source hook, under exactly one
/// outcome: `mirrored` or a failure (plus `truncated` when cut). `matched` is
/// not written by the kernel, so that a copy costs one counter update: the
/// agent derives it as the sum of [`OUTCOMES`] (bytes: plus `truncated`).
pub mod reason {
    /// The packet was selected by the session. Derived by the agent from the
    /// outcomes; the kernel leaves this slot at zero.
    pub const MATCHED: u32 = 0;
    /// A copy was handed to the destination's transmit path.
    pub const MIRRORED: u32 = 1;
    /// The copy is cut to the session's snap length; bytes = bytes cut.
    pub const TRUNCATED: u32 = 2;
    /// Reserved: not selected by the session's filter.
    pub const FILTERED: u32 = 3;
    /// Reserved: skipped by the session's sampling.
    pub const SAMPLED_OUT: u32 = 4;
    /// Reserved: skipped by the session's rate limit.
    pub const RATE_LIMITED: u32 = 5;
    /// The destination's qdisc answered `NET_XMIT_CN`: it is congested, or
    /// the destination is down / without carrier (such a device's
    /// `noop_qdisc` answers this). `stats` shows the destination's state.
    pub const DEST_CONGESTED: u32 = 6;
    /// The copy was sent *uncut*: its session has a snap length but the
    /// destination hook did not run (detached, or deleted by hand).
    pub const NOT_CUT: u32 = 7;
    /// Destination is down (`-ENETDOWN`).
    pub const DEST_DOWN: u32 = 8;
    /// Destination ifindex does not exist (deleted) (`-EINVAL`).
    pub const DEST_MISSING: u32 = 9;
    /// The kernel could not clone or unclone the packet (`-ENOMEM`).
    pub const CLONE_FAILED: u32 = 10;
    /// The destination's queue dropped the copy (`NET_XMIT_DROP`).
    pub const DEST_QUEUE_DROP: u32 = 11;
    /// The copy could not be cut to the snap length; it was dropped
    /// rather than sent longer than the operator allowed.
    pub const SNAP_FAILED: u32 = 12;
    /// Any other redirect error (e.g. a source without a link-layer header).
    pub const REDIRECT_FAILED: u32 = 13;
    /// A source hook ran but no session is registered for it (map miss).
    pub const NO_SESSION: u32 = 14;
    /// A packet carrying the copy tag reached a source hook and was not
    /// mirrored again (loop prevention).
    pub const COPY_NOT_REMIRRORED: u32 = 15;
    /// Number of reason slots per (session, direction).
    pub const COUNT: u32 = 16;

    /// The outcomes of a copy attempt: each attempt is counted under exactly one.
    pub const OUTCOMES: [u32; 9] = [
        MIRRORED,
        NOT_CUT,
        DEST_CONGESTED,
        DEST_DOWN,
        DEST_MISSING,
        CLONE_FAILED,
        DEST_QUEUE_DROP,
        SNAP_FAILED,
        REDIRECT_FAILED,
    ];

    /// Stable names, indexed by reason code; used in CLI output and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "matched",
        "mirrored",
        "truncated",
        "filtered",
        "sampled_out",
        "rate_limited",
        "dest_congested",
        "not_cut",
        "dest_down",
        "dest_missing",
        "clone_failed",
        "dest_queue_drop",
        "snap_failed",
        "redirect_failed",
        "no_session",
        "copy_not_remirrored",
    ];

    /// True for the codes that count a copy that did not reach the destination.
    pub const fn is_failure(reason: u32) -> bool {
        reason == DEST_CONGESTED || (reason >= DEST_DOWN && reason <= REDIRECT_FAILED)
    }
}

/// Session ids index `SESSIONS` and `COUNTERS`; id 0 is the program-wide
/// pseudo session, so real sessions are `1..MAX_SESSIONS`.
pub const MAX_SESSIONS: u32 = 4096;
/// Counters that belong to no session (map misses, copies not re-mirrored).
pub const GLOBAL_SESSION_ID: u32 = 0;
/// Fan-out limit: sessions one (source, direction) can feed.
pub const MAX_SESSIONS_PER_SOURCE: usize = 8;
/// (source ifindex, direction) hooks one network namespace can hold.
pub const MAX_SOURCE_HOOKS: u32 = 16384;

/// How a source hook finds its sessions: `SOURCE_INDEX` (an array, so the
/// lookup is a few inlined instructions instead of a hash) holds, per
/// direction, one cell per value of the ifindex's low [`source_index::BITS`]
/// bits. A cell holds an [`EntryRef`] into `SOURCE_ENTRIES`, whose entry
/// names the hook it belongs to. A hook whose cell is taken by another
/// ifindex with the same low bits gets a cell of its own past the direct
/// ones, found through the `SOURCE_OVERFLOW` hash (hook → cell number). So
/// every reference a program follows is read from this one array, which the
/// agent only ever changes with single atomic stores.
pub mod source_index {
    use super::{MAX_SOURCE_HOOKS, direction};

    /// Low ifindex bits that select a direct cell.
    pub const BITS: u32 = 16;
    /// Direct cells per direction.
    pub const CELLS_PER_DIRECTION: u32 = 1 << BITS;
    /// First overflow cell; the overflow cells follow the direct ones.
    pub const OVERFLOW_BASE: u32 = CELLS_PER_DIRECTION * direction::COUNT;
    /// `SOURCE_INDEX` entries: direct cells, then one overflow cell per
    /// possible hook.
    pub const CELLS: u32 = OVERFLOW_BASE + MAX_SOURCE_HOOKS;
    /// Map flag `BPF_F_MMAPABLE`: the agent publishes a cell with one atomic
    /// store through a shared mapping, so a program never reads a torn value.
    pub const MAP_FLAGS: u32 = 1 << 10;

    /// The direct cell of `(ifindex, direction)`.
    #[inline(always)]
    pub const fn cell(ifindex: u32, direction: u32) -> u32 {
        (direction << BITS) | (ifindex & (CELLS_PER_DIRECTION - 1))
    }
}

/// `SOURCE_ENTRIES` size: two per hook, so that a hook's entry is replaced by
/// writing a free one and publishing it, never by rewriting the one that
/// programs may be reading.
pub const SOURCE_ENTRY_COUNT: u32 = 2 * MAX_SOURCE_HOOKS;

/// A reference to a `SOURCE_ENTRIES` element as stored in `SOURCE_INDEX` and
/// `SOURCE_OVERFLOW`: entry number + 1, so that 0 (a zeroed cell) is "none".
/// 64 bits wide because an mmapable array's stride is 8 bytes.
pub type EntryRef = u64;
/// No entry.
pub const NO_ENTRY: EntryRef = 0;
/// Session names are stored NUL-padded in the session map.
pub const SESSION_NAME_LEN: usize = 32;
/// `COUNTERS` entries: one per (session, direction), each holding every
/// reason's counter ([`DirectionCounters`]). One element per direction, not
/// per reason, so that reading them all (a scrape) is 8192 elements, not
/// 131 072: the kernel's batch lookup pays per element.
pub const COUNTER_SLOTS: u32 = MAX_SESSIONS * direction::COUNT;

/// Smallest snap length accepted: 64 bytes is the minimum Ethernet frame
/// and still holds Ethernet + 802.1Q + IPv4 + TCP/UDP headers. 0 = no cut.
pub const SNAPLEN_MIN: u32 = 64;
/// Largest snap length accepted (the largest frame tc will hand us).
pub const SNAPLEN_MAX: u32 = 65535;

/// Copies carry a tag in `skb->mark` so that no hook mirrors a copy again
/// and the destination hook knows which session a copy belongs to.
/// Layout: `MAGIC (upper 16 bits) | direction (bit 15) | session id (bits 0..12)`.
/// The original packet's mark is restored after cloning.
pub mod copy_mark {
    /// Upper 16 bits of a copy's mark ("MI").
    pub const MAGIC: u32 = 0x4d49_0000;
    /// Mask selecting the magic.
    pub const MAGIC_MASK: u32 = 0xffff_0000;
    /// Set when the copy was taken on the source's egress.
    pub const EGRESS_BIT: u32 = 1 << 15;
    /// Mask selecting the session id.
    pub const SESSION_MASK: u32 = 0x0fff;

    /// The mark a copy of `session_id`'s `direction` traffic carries.
    pub const fn encode(session_id: u32, direction: u32) -> u32 {
        MAGIC | (direction << 15) | (session_id & SESSION_MASK)
    }

    /// True if `mark` is a copy tag.
    pub const fn is_copy(mark: u32) -> bool {
        mark & MAGIC_MASK == MAGIC
    }
}

/// The per-CPU `CUT_VERDICT` cell: how the source and destination hooks of
/// one copy talk. `bpf_clone_redirect` runs the destination's egress hook
/// synchronously on the same CPU, so the cell is private to the copy in
/// flight.
pub mod cut_verdict {
    /// Nothing asked, or the destination hook did not run.
    pub const NONE: u32 = 0;
    /// The destination hook cut the copy.
    pub const DONE: u32 = 1;
    /// The destination hook could not cut it, and dropped it.
    pub const FAILED: u32 = 2;
    /// Set by the source with the slot's snap length in the low bits: the
    /// destination hook cuts to exactly what the slot that made the copy
    /// says (while a session's configuration changes, `SESSIONS` may
    /// already say otherwise). Without it (a source program of an older
    /// build) the destination hook reads `SESSIONS`.
    pub const REQUEST: u32 = 1 << 31;
    /// The snap length's bits in a request.
    pub const SNAPLEN_MASK: u32 = 0xffff;
}
const _: () = assert!(SNAPLEN_MAX <= cut_verdict::SNAPLEN_MASK);

// The session id must fit the mark's session field.
const _: () = assert!(MAX_SESSIONS - 1 <= copy_mark::SESSION_MASK);

/// Index of a (session, direction)'s counters in `COUNTERS`.
#[inline(always)]
pub const fn counter_index(session_id: u32, direction: u32) -> u32 {
    session_id * direction::COUNT + direction
}

/// One hook of one source interface (also the `SOURCE_OVERFLOW` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    pub ifindex: u32,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u32,
}
const _: () = assert!(size_of::<SourceKey>() == 8);

/// One session fed by a source hook: everything the hot path needs, so a
/// packet costs one index lookup however many sessions it feeds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionSlot {
    pub session_id: u32,
    pub dest_ifindex: u32,
    /// 0 = whole packet.
    pub snaplen: u32,
    /// Reserved for per-slot selection flags (filter present, sampling…).
    pub flags: u32,
}
const _: () = assert!(size_of::<SessionSlot>() == 16);

/// `SOURCE_ENTRIES` element: the sessions one (source, direction) feeds, in
/// order. It names its hook, so a program that reached it through a cell
/// shared by several ifindexes (or a stale reference) can tell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceEntry {
    /// The hook this entry belongs to.
    pub hook: SourceKey,
    /// Valid entries at the front of `slots`.
    pub slot_count: u32,
    pub _pad: u32,
    pub slots: [SessionSlot; MAX_SESSIONS_PER_SOURCE],
}
const _: () = assert!(size_of::<SourceEntry>() == 16 + 16 * MAX_SESSIONS_PER_SOURCE);

/// `SESSIONS` value, indexed by session id. An all-zero entry is free.
///
/// The kernel reads `snaplen` at the destination hook (and, next, the
/// encapsulation fields); the agent keeps the session's identity here too so
/// that bpffs is the single source of truth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// NUL-padded UTF-8 name; empty = free slot.
    pub name: [u8; SESSION_NAME_LEN],
    pub dest_ifindex: u32,
    /// 0 = whole packet.
    pub snaplen: u32,
    /// [`direction::INGRESS_BIT`] | [`direction::EGRESS_BIT`].
    pub direction_mask: u32,
    /// Reserved for session flags (inline mode, …).
    pub flags: u32,
    /// When the session was created (seconds since the Unix epoch).
    pub created_unix_secs: u64,
    /// Reserved: index into a future filter program map (0 = match all).
    pub filter_id: u32,
    /// Reserved: keep one packet in N (0 = all).
    pub sample_every: u32,
    /// Reserved: copies per second budget (0 = unlimited).
    pub rate_limit_pps: u32,
    /// Reserved: 0 = copy the frame as is; later VXLAN/GENEVE/ERSPAN.
    pub encap_kind: u32,
    /// Reserved for the encapsulation parameters (addresses, VNI, ports).
    pub _reserved: [u32; 8],
}
const _: () = assert!(size_of::<SessionConfig>() == 32 + 16 + 8 + 16 + 32);

impl SessionConfig {
    /// A free slot.
    pub const EMPTY: Self = Self {
        name: [0; SESSION_NAME_LEN],
        dest_ifindex: 0,
        snaplen: 0,
        direction_mask: 0,
        flags: 0,
        created_unix_secs: 0,
        filter_id: 0,
        sample_every: 0,
        rate_limit_pps: 0,
        encap_kind: 0,
        _reserved: [0; 8],
    };

    /// True if no session occupies this slot.
    pub fn is_free(&self) -> bool {
        self.name[0] == 0
    }
}

/// Bits of [`SessionConfig::flags`]: facts about the session only the agent
/// reads. Append; never renumber.
pub mod session_flags {
    /// The session belongs to a daemon's config (`mirror-agent run`), not
    /// to the CLI: the daemon changes and removes only these.
    pub const OWNER_CONFIG: u32 = 1 << 0;
}

/// `COUNTERS` value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// `COUNTERS` value (per CPU): one (session, direction)'s counter for every
/// reason, indexed by reason code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    pub reasons: [Counter; reason::COUNT as usize],
}
const _: () = assert!(size_of::<DirectionCounters>() == 16 * reason::COUNT as usize);

/// Names of the pinned maps and programs: the agent finds them by these.
pub mod names {
    pub const SOURCE_INDEX: &str = "SOURCE_INDEX";
    pub const SOURCE_ENTRIES: &str = "SOURCE_ENTRIES";
    pub const SOURCE_OVERFLOW: &str = "SOURCE_OVERFLOW";
    pub const SESSIONS: &str = "SESSIONS";
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU scratch: the destination hook's verdict on the copy in flight.
    pub const CUT_VERDICT: &str = "CUT_VERDICT";
    /// Every map the programs pin (removed with the last session).
    pub const PINNED_MAPS: [&str; 6] =
        [SOURCE_INDEX, SOURCE_ENTRIES, SOURCE_OVERFLOW, SESSIONS, COUNTERS, CUT_VERDICT];
    /// 0.1.0's source map: state of that layout must be detached by that build.
    pub const LEGACY_SOURCES: &str = "SOURCES";
    /// Attached at tc ingress of a source interface.
    pub const PROG_SRC_INGRESS: &str = "mirror_src_ingress";
    /// Attached at tc egress of a source interface.
    pub const PROG_SRC_EGRESS: &str = "mirror_src_egress";
    /// Attached at tc egress of a destination that cuts copies.
    pub const PROG_DST_EGRESS: &str = "mirror_dst_egress";
}

#[cfg(feature = "user")]
mod pod {
    use super::{Counter, DirectionCounters, SessionConfig, SourceEntry, SourceKey};
    // SAFETY: all five are `repr(C)`, made only of integers, with every
    // padding byte an explicit field, so any bit pattern is valid.
    unsafe impl aya::Pod for SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SourceEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SessionConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above (an array of `Counter`).
    unsafe impl aya::Pod for DirectionCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_mark_round_trips_session_and_direction() {
        let m = copy_mark::encode(MAX_SESSIONS - 1, direction::EGRESS);
        assert!(copy_mark::is_copy(m));
        assert_eq!(m & copy_mark::SESSION_MASK, MAX_SESSIONS - 1);
        assert_ne!(m & copy_mark::EGRESS_BIT, 0);
        assert!(!copy_mark::is_copy(0));
        assert!(!copy_mark::is_copy(0x4000));
    }

    #[test]
    fn counter_indexes_are_dense_and_in_range() {
        assert_eq!(counter_index(0, 0), 0);
        assert_eq!(counter_index(0, direction::EGRESS) + 1, counter_index(1, direction::INGRESS));
        assert_eq!(counter_index(MAX_SESSIONS - 1, direction::EGRESS), COUNTER_SLOTS - 1);
    }

    #[test]
    fn source_index_cells_are_per_direction_and_in_range() {
        use source_index::{CELLS, CELLS_PER_DIRECTION, cell};
        assert_eq!(cell(7, direction::INGRESS), 7);
        assert_eq!(cell(7, direction::EGRESS), CELLS_PER_DIRECTION + 7);
        // Ifindexes that share their low bits share a cell.
        assert_eq!(cell(7 + CELLS_PER_DIRECTION, direction::INGRESS), 7);
        assert_eq!(cell(u32::MAX, direction::EGRESS), source_index::OVERFLOW_BASE - 1);
        assert_eq!(CELLS - source_index::OVERFLOW_BASE, MAX_SOURCE_HOOKS);
    }

    #[test]
    fn failure_reasons_are_exactly_the_delivery_errors() {
        let failures: usize = (0..reason::COUNT).filter(|r| reason::is_failure(*r)).count();
        assert_eq!(failures, 7);
        assert!(!reason::is_failure(reason::MIRRORED));
        assert!(!reason::is_failure(reason::NO_SESSION));
    }
}
