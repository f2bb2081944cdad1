//! The contract between the kernel programs (`mirror-ebpf`) and the agent
//! (`mirror-agent`): map layouts, copy tagging and reason codes.
//!
//! Every struct that crosses the boundary is `#[repr(C)]`, has explicit
//! padding and a size assertion, and holds only fixed-width integers (no
//! `bool`, enum or `Option`: the kernel side reads raw bytes). The numeric
//! values here are a stable contract: pinned maps outlive agent upgrades,
//! and dashboards key on reason codes. Append; never renumber.
#![cfg_attr(not(test), no_std)]

pub mod parse;
pub mod view;
pub mod vm;

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
    /// Not selected by the session's filter (bytes: the packet's length).
    pub const FILTERED: u32 = 3;
    /// Selected by the filter, skipped by the session's sampling.
    pub const SAMPLED_OUT: u32 = 4;
    /// Selected, over the session's rate limit: not copied.
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
    /// Selected by a `--dry-run` session: it would have been copied, and
    /// was not (bytes: the copy's, after the snap length).
    pub const DRY_RUN: u32 = 16;
    /// Accepted by this exclusive session's filter, but an exclusive
    /// session of higher priority on the same source took the packet.
    pub const PREEMPTED: u32 = 17;
    /// A copy reached this `--include-copies` session already
    /// [`super::copy_mark::MAX_DEPTH`] copies deep: not copied again.
    pub const HOP_LIMIT: u32 = 18;
    /// Number of reason slots per (session, direction); 19–23 are free for
    /// the next reasons, so that adding one does not change the layout.
    pub const COUNT: u32 = 24;

    /// Why a packet the session saw was not copied: each packet a session's
    /// hook sees is counted under exactly one of these or one outcome.
    pub const NOT_SELECTED: [u32; 6] = [FILTERED, SAMPLED_OUT, RATE_LIMITED, DRY_RUN, PREEMPTED, HOP_LIMIT];

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
        "dry_run",
        "preempted",
        "hop_limit",
        "reserved_19",
        "reserved_20",
        "reserved_21",
        "reserved_22",
        "reserved_23",
    ];

    /// Reasons that exist (the rest of the `COUNT` slots are reserved).
    pub const DEFINED: u32 = 19;

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
/// Layout: `MAGIC (upper 16 bits) | direction (bit 15) | depth - 1 (bits
/// 12..15) | session id (bits 0..12)`. The original packet's mark is
/// restored after cloning. The depth (1 for a copy of an original) bounds
/// copies of copies (`--include-copies`), so that even a cycle of sessions
/// ends.
pub mod copy_mark {
    /// Upper 16 bits of a copy's mark ("MI").
    pub const MAGIC: u32 = 0x4d49_0000;
    /// Mask selecting the magic.
    pub const MAGIC_MASK: u32 = 0xffff_0000;
    /// Set when the copy was taken on the source's egress.
    pub const EGRESS_BIT: u32 = 1 << 15;
    /// Mask selecting the session id.
    pub const SESSION_MASK: u32 = 0x0fff;
    /// Where the depth is kept (minus one).
    pub const DEPTH_SHIFT: u32 = 12;
    pub const DEPTH_MASK: u32 = 0x7;
    /// The deepest copy: a session that includes copies copies a copy only
    /// if it is less deep than this (a copy of a copy of a copy).
    pub const MAX_DEPTH: u32 = 3;

    /// The mark a copy of `session_id`'s `direction` traffic carries.
    pub const fn encode(session_id: u32, direction: u32) -> u32 {
        encode_at(session_id, direction, 1)
    }

    /// The mark of a copy `depth` copies deep (1..=[`MAX_DEPTH`]).
    pub const fn encode_at(session_id: u32, direction: u32, depth: u32) -> u32 {
        MAGIC | (direction << 15) | ((depth - 1) & DEPTH_MASK) << DEPTH_SHIFT | (session_id & SESSION_MASK)
    }

    /// How many copies deep a copy's mark says it is.
    pub const fn depth(mark: u32) -> u32 {
        ((mark >> DEPTH_SHIFT) & DEPTH_MASK) + 1
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
    /// [`slot_flags`]: what the hook must check before copying. 0 (the
    /// common case) = copy every packet, with no further lookup.
    pub flags: u32,
}
const _: () = assert!(size_of::<SessionSlot>() == 16);

/// Bits of [`SessionSlot::flags`]: which selection steps the hook runs for
/// this slot. 0 (the common case) = copy every packet, with no further
/// lookup. Append; never renumber.
pub mod slot_flags {
    /// Run the filter program named by the slot's [`Selector`](super::Selector).
    pub const FILTER: u32 = 1 << 0;
    /// The slot's selector is the session's second bank. The agent writes a
    /// changed selector (and its program) into the bank no slot uses, then
    /// publishes slots naming it, so a program never reads a half-written one.
    pub const BANK1: u32 = 1 << 1;
    /// Keep one packet in `Selector::sample_every` (random, or per flow
    /// with [`super::selector_flags::SAMPLE_FLOW`]).
    pub const SAMPLE: u32 = 1 << 2;
    /// Charge copies to the session's token buckets (`RATE_STATE`).
    pub const RATE_LIMIT: u32 = 1 << 3;
    /// Count what would be copied under `dry_run`; copy nothing.
    pub const DRY_RUN: u32 = 1 << 4;
    /// Exclusive: the first exclusive slot (in slot order, i.e. priority)
    /// whose filter accepts a packet takes it; later exclusive slots of the
    /// hook skip it (counted `preempted`).
    pub const EXCLUSIVE: u32 = 1 << 5;
    /// Also mirror copies made by other sessions, up to
    /// [`super::copy_mark::MAX_DEPTH`] copies deep.
    pub const INCLUDE_COPIES: u32 = 1 << 6;
    /// With [`SAMPLE`]: the sampling keeps whole flows (it needs the
    /// packet's parse); without it, random sampling is decided in the hook's
    /// own loop, with no further call.
    pub const SAMPLE_FLOW: u32 = 1 << 7;
    /// Steps that need the slot's selector.
    pub const NEEDS_SELECTOR: u32 = FILTER | SAMPLE | RATE_LIMIT;
}

/// Bits of [`SourceEntry::flags`]: the union of what its slots need, so a
/// hook can skip work no slot asks for.
pub mod entry_flags {
    /// Some slot has [`super::slot_flags::INCLUDE_COPIES`].
    pub const INCLUDE_COPIES: u32 = 1 << 0;
    /// Some slot has a selection step (any slot flag but the bank and
    /// `INCLUDE_COPIES`, which matters to copies only).
    pub const SELECTS: u32 = 1 << 1;
    /// Some slot has a filter: the hook reads the packet's prefilter class.
    pub const FILTERS: u32 = 1 << 2;
    /// No slot needs more than the hook's own loop does (only random
    /// sampling): no selection run is started. Clear (an older build's
    /// entry) = start one.
    pub const NO_RUN: u32 = 1 << 3;

    /// The entry flags of `slots`.
    pub fn of(slots: &[super::SessionSlot]) -> u32 {
        use super::slot_flags as s;
        let mut flags = NO_RUN;
        for slot in slots {
            let steps = slot.flags & !s::BANK1;
            if steps & s::INCLUDE_COPIES != 0 {
                flags |= INCLUDE_COPIES;
            }
            if steps & !s::INCLUDE_COPIES != 0 {
                flags |= SELECTS;
            }
            if steps & s::FILTER != 0 {
                flags |= FILTERS;
            }
            if steps & !s::INCLUDE_COPIES != 0 && steps != s::SAMPLE {
                flags &= !NO_RUN;
            }
        }
        flags
    }
}

/// Bits of [`Selector::flags`].
pub mod selector_flags {
    /// The program reads parsed fields (`LD_FIELD`/`TEST_FIELD`): parse the
    /// headers (once per packet) before running it.
    pub const FIELDS: u32 = 1 << 0;
    /// Sampling keeps whole flows: a symmetric hash of the 5-tuple decides,
    /// so both directions of a flow are kept or skipped together.
    pub const SAMPLE_FLOW: u32 = 1 << 1;
    /// The program is also loaded as native code, at this selector's index
    /// of `NATIVE_FILTERS` ([`crate::view::native_index`]): the hook runs
    /// that rather than interpreting it. Set only after the program is in
    /// the array; an unset flag (or a missing program) = the interpreter.
    pub const NATIVE: u32 = 1 << 2;
}

/// `SELECTORS` value: one bank of a session's selection, everything the
/// hook needs beyond the slot. Index: `session_id * 2 + bank`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// First instruction of the filter program in `FILTER_INSNS`.
    pub prog_start: u32,
    /// Instructions in the program (at most [`filter::MAX_INSNS`]).
    pub prog_len: u32,
    /// [`selector_flags`].
    pub flags: u32,
    /// Keep one packet in N (0 or 1 = every packet).
    pub sample_every: u32,
    /// Packet bucket: nanoseconds of budget one copy costs (GCRA emission
    /// interval, 1e9 / rate); 0 = no packet rate limit.
    pub ns_per_packet: u64,
    /// How far ahead of now the packet bucket may run (burst), nanoseconds.
    pub packet_tolerance_ns: u64,
    /// Byte bucket: nanoseconds per copied byte, 16.16 fixed point;
    /// 0 = no byte rate limit.
    pub ns_per_byte_fp16: u64,
    /// How far ahead of now the byte bucket may run (burst), nanoseconds.
    pub byte_tolerance_ns: u64,
    /// [`prefilter`]: bit `class` set if the program accepts no packet of
    /// that class, which is then rejected without running it. 0 (what an
    /// older build left here) = no such knowledge.
    pub reject_classes: u64,
    /// Sampling keeps a draw below this: `2^32 / sample_every`, computed
    /// once here rather than divided per packet (0 = keep every packet).
    pub sample_keep_below: u64,
}
const _: () = assert!(size_of::<Selector>() == 64);

/// A cheap test before a filter program: the packet's class (its EtherType
/// and IP protocol, from two loads), and per program the classes it can
/// accept at all (found by the agent running the program over each class,
/// every other byte unknown). Sound by construction: a set reject bit
/// means no packet of the class is accepted, so the verdict is the
/// program's.
pub mod prefilter {
    /// The packet's class could not be told (a VLAN tag, a frame too short):
    /// run the program.
    pub const UNKNOWN: u32 = 64;
    /// Network classes (EtherType, untagged frame).
    pub const IPV4: u32 = 0;
    pub const IPV6: u32 = 1;
    pub const ARP: u32 = 2;
    pub const OTHER: u32 = 3;
    /// Transport classes (IPv4 protocol byte, IPv6 next header).
    pub const TCP: u32 = 0;
    pub const UDP: u32 = 1;
    /// ICMP over IPv4, ICMPv6 over IPv6.
    pub const ICMP: u32 = 2;
    pub const SCTP: u32 = 3;
    /// IPv6 only: a fragment header follows.
    pub const FRAGMENT: u32 = 4;
    pub const OTHER_L4: u32 = 5;
    /// Frame bytes the class is read from.
    pub const BYTES: u32 = 24;

    /// The class of (network, transport).
    #[inline(always)]
    pub const fn class(network: u32, transport: u32) -> u32 {
        network * 8 + transport
    }

    /// The class of an untagged frame from its EtherType and the byte
    /// that holds the IP protocol (offset 23 for IPv4, 20 for IPv6).
    #[inline(always)]
    pub fn of(ethertype: u32, byte_23: u32, byte_20: u32) -> u32 {
        let transport = |p: u32, v6: bool| match p {
            6 => TCP,
            17 => UDP,
            1 if !v6 => ICMP,
            58 if v6 => ICMP,
            132 => SCTP,
            44 if v6 => FRAGMENT,
            _ => OTHER_L4,
        };
        match ethertype {
            0x0800 => class(IPV4, transport(byte_23, false)),
            0x86dd => class(IPV6, transport(byte_20, true)),
            0x0806 => class(ARP, 0),
            0x8100 | 0x88a8 | 0x9100 => UNKNOWN,
            _ => class(OTHER, 0),
        }
    }

    /// Whether a program whose `reject_classes` these are may accept a
    /// packet of class `class`.
    #[inline(always)]
    pub const fn may_accept(reject_classes: u64, class: u32) -> bool {
        reject_classes & class_bit(class) == 0
    }

    /// `class`'s bit in a `reject_classes` set; 0 for [`UNKNOWN`] (and any
    /// class past the set), which no set rejects.
    #[inline(always)]
    pub const fn class_bit(class: u32) -> u64 {
        if class < 64 { 1 << class } else { 0 }
    }
}

/// `SELECTORS` entries: two banks per session.
pub const SELECTOR_BANKS: u32 = MAX_SESSIONS * 2;

/// The `SELECTORS` index of `session_id`'s bank 0 or 1.
#[inline(always)]
pub const fn selector_index(session_id: u32, bank1: bool) -> u32 {
    session_id * 2 + bank1 as u32
}

/// `RATE_STATE` value, per session (both directions share it): the
/// theoretical arrival times of the two GCRA buckets, in `bpf_ktime_get_ns`
/// time. Shared by every CPU, advanced with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub packets_tat_ns: u64,
    pub bytes_tat_ns: u64,
}
const _: () = assert!(size_of::<RateState>() == 16);

/// Filter programs: a small register machine that pcap-filter expressions
/// and rule sets compile to, run by the datapath's interpreter (one
/// verified program for all sessions; a filter is data, never code the
/// verifier has to see).
///
/// Its semantics are classic BPF's, as libpcap compiles for: an
/// accumulator `A`, an index register `X`, scratch memory `M[16]`, loads
/// from the packet big-endian, forward jumps only. Three fused
/// instructions (`TEST_*`: load, mask, compare and branch in one step)
/// carry most programs. The packet is the frame as it was on the wire: a
/// VLAN tag the stack moved into `skb->vlan_tci` is put back at offset 12
/// and counted in the length, so verdicts equal `tcpdump -r`'s.
///
/// A load past the end of the frame, a division by zero, an unknown
/// opcode, a jump out of the program or running off its end reject the
/// packet, as in classic BPF.
pub mod filter {
    /// Longest program, in instructions.
    pub const MAX_INSNS: u32 = 256;
    /// `FILTER_INSNS` entries, shared by every session's programs.
    pub const POOL_INSNS: u32 = 65536;
    /// Scratch memory words (`M[]`).
    pub const MEMWORDS: u32 = 16;
    /// Bytes of the frame copied once per packet for the program's loads;
    /// loads past them read the packet (slower, same result).
    pub const HEADER_BYTES: u32 = 128;

    /// Opcodes ([`super::FilterInsn::op`]).
    pub mod op {
        /// `A = P[k:size]` (`arg` = size: 1, 2 or 4).
        pub const LD_ABS: u8 = 0x01;
        /// `A = P[X + k:size]`.
        pub const LD_IND: u8 = 0x02;
        /// `A = frame length`.
        pub const LD_LEN: u8 = 0x03;
        /// `A = k`.
        pub const LD_IMM: u8 = 0x04;
        /// `A = M[k]`.
        pub const LD_MEM: u8 = 0x05;
        /// `A = field[k]` (see [`super::field`]).
        pub const LD_FIELD: u8 = 0x06;
        /// `X = k`.
        pub const LDX_IMM: u8 = 0x08;
        /// `X = M[k]`.
        pub const LDX_MEM: u8 = 0x09;
        /// `X = frame length`.
        pub const LDX_LEN: u8 = 0x0a;
        /// `X = 4 * (P[k:1] & 0xf)` (an IPv4 header's length).
        pub const LDX_MSH: u8 = 0x0b;
        /// `M[k] = A`.
        pub const ST: u8 = 0x10;
        /// `M[k] = X`.
        pub const STX: u8 = 0x11;
        /// `A = A <arg> k` (`arg`: an [`super::alu`] operation).
        pub const ALU_K: u8 = 0x18;
        /// `A = A <arg> X`.
        pub const ALU_X: u8 = 0x19;
        /// `X = A`.
        pub const TAX: u8 = 0x20;
        /// `A = X`.
        pub const TXA: u8 = 0x21;
        /// `pc += 1 + k`.
        pub const JA: u8 = 0x28;
        /// `pc += 1 + (A <arg> k ? jt : jf)` (`arg`: a [`super::cmp`]).
        pub const JMP_K: u8 = 0x29;
        /// `pc += 1 + (A <arg> X ? jt : jf)`.
        pub const JMP_X: u8 = 0x2a;
        /// `A = P[k:size] & mask; pc += 1 + (A <cmp> val ? jt : jf)`
        /// (`arg` = size | cmp << 4).
        pub const TEST_ABS: u8 = 0x30;
        /// `A = P[X + k:size] & mask`, then as `TEST_ABS`.
        pub const TEST_IND: u8 = 0x31;
        /// `A = field[k] & mask`, then as `TEST_ABS` (size ignored).
        pub const TEST_FIELD: u8 = 0x32;
        /// `pc += 1 + (A is one of the first `arg` (1..=3) of k, mask, val
        /// ? jt : jf)`. What a chain of equality tests on one load compiles
        /// to after its first test (`port 1 or port 2 or ...`): three tests
        /// a step.
        pub const JEQ_ANY: u8 = 0x2b;
        /// Return: accept if `k != 0`.
        pub const RET_K: u8 = 0x38;
        /// Return: accept if `A != 0`.
        pub const RET_A: u8 = 0x39;
    }

    /// Comparisons of jumps and tests (unsigned).
    pub mod cmp {
        pub const EQ: u8 = 0;
        pub const GT: u8 = 1;
        pub const GE: u8 = 2;
        /// `A & operand != 0`.
        pub const SET: u8 = 3;
    }

    /// ALU operations. Shifts by 32 or more give 0, as libpcap's
    /// `bpf_filter` does; division or modulo by zero rejects the packet.
    pub mod alu {
        pub const ADD: u8 = 0;
        pub const SUB: u8 = 1;
        pub const MUL: u8 = 2;
        pub const DIV: u8 = 3;
        pub const MOD: u8 = 4;
        pub const AND: u8 = 5;
        pub const OR: u8 = 6;
        pub const XOR: u8 = 7;
        pub const LSH: u8 = 8;
        pub const RSH: u8 = 9;
        /// `A = -A` (the operand is ignored).
        pub const NEG: u8 = 10;
    }

    /// `arg` of the `TEST_*` instructions.
    #[inline(always)]
    pub const fn test_arg(size: u8, cmp: u8) -> u8 {
        size | cmp << 4
    }
}

/// Fields of the deep parse, read by `LD_FIELD` / `TEST_FIELD` (the
/// structured rules use them; pcap-filter expressions never do, since
/// libpcap's semantics are byte offsets). The parse follows Ethernet, up to
/// [`field::MAX_VLAN_TAGS`] 802.1Q/802.1ad tags, IPv4 (with options) or
/// IPv6 (through up to [`field::MAX_IPV6_EXT_HEADERS`] extension headers),
/// then TCP, UDP, SCTP, ICMP or ICMPv6. A field that does not apply is 0.
pub mod field {
    /// Which hook saw the packet ([`super::direction`]).
    pub const DIRECTION: u32 = 0;
    /// The EtherType after the VLAN tags.
    pub const ETHERTYPE: u32 = 1;
    /// VLAN tags in the frame (including one the stack moved to metadata).
    pub const VLAN_COUNT: u32 = 2;
    /// VLAN id of the outer tag, and of the second.
    pub const VLAN_OUTER: u32 = 3;
    pub const VLAN_INNER: u32 = 4;
    /// 4 (IPv4), 6 (IPv6) or 0.
    pub const IP_VERSION: u32 = 5;
    /// The upper-layer protocol: IPv4's protocol, or the IPv6 header that
    /// follows the extension headers; [`NO_PROTOCOL`] without IP or when
    /// the extension headers go deeper than the parse.
    pub const L4_PROTO: u32 = 6;
    /// 0 not a fragment, 1 the first fragment, 2 a later one.
    pub const FRAGMENT: u32 = 7;
    /// 1 if the ports / ICMP fields below were read (TCP, UDP or SCTP, or
    /// ICMP/ICMPv6, in an unfragmented packet or a first fragment).
    pub const HAS_L4: u32 = 8;
    pub const SRC_PORT: u32 = 9;
    pub const DST_PORT: u32 = 10;
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub const TCP_FLAGS: u32 = 11;
    pub const ICMP_TYPE: u32 = 12;
    pub const ICMP_CODE: u32 = 13;
    /// IPv4 source and destination.
    pub const SRC4: u32 = 14;
    pub const DST4: u32 = 15;
    /// IPv6 source and destination, four big-endian words each.
    pub const SRC6: u32 = 16;
    pub const DST6: u32 = 20;
    /// Number of fields.
    pub const COUNT: u32 = 24;

    /// [`L4_PROTO`] when there is none.
    pub const NO_PROTOCOL: u32 = 256;
    /// Deepest VLAN stack parsed.
    pub const MAX_VLAN_TAGS: u32 = 2;
    /// Most IPv6 extension headers followed.
    pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
}

/// `FILTER_INSNS` value: one instruction of a filter program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FilterInsn {
    /// [`filter::op`].
    pub op: u8,
    /// Load size, ALU operation or comparison, per opcode.
    pub arg: u8,
    /// Jumps: instructions skipped when the comparison holds / fails.
    pub jt: u8,
    pub jf: u8,
    /// Offset, immediate or field number.
    pub k: u32,
    /// `TEST_*`: the mask applied to the loaded value.
    pub mask: u32,
    /// `TEST_*`: the value it is compared with.
    pub val: u32,
}
const _: () = assert!(size_of::<FilterInsn>() == 16);

/// `FILTER_SPECS` value, per selector bank: the selection as the operator
/// gave it (canonical text), so that `list` shows it and a reconcile can
/// compare it with what is wanted. Only the agent reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    pub len: u32,
    pub text: [u8; FILTER_SPEC_LEN],
}
/// Longest canonical selection text (rules and expression).
pub const FILTER_SPEC_LEN: usize = 4092;
const _: () = assert!(size_of::<FilterSpec>() == 4096);

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
    /// [`entry_flags`]: the union of what the slots need.
    pub flags: u32,
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
    /// The `SELECTORS` bank (0 or 1) the session's slots use.
    pub select_bank: u32,
    /// Keep one packet in N (0 or 1 = all).
    pub sample_every: u32,
    /// Copies per second (0 = unlimited).
    pub rate_limit_pps: u32,
    /// Reserved: 0 = copy the frame as is; later VXLAN/GENEVE/ERSPAN.
    pub encap_kind: u32,
    /// Reserved for the encapsulation parameters (addresses, VNI, ports).
    pub _reserved: [u32; 8],
    /// Copied bytes per second (0 = unlimited).
    pub rate_limit_bps: u64,
    /// Bucket depths: packets and bytes (0 = the default, 0.1 s of the rate).
    pub burst_packets: u32,
    pub burst_bytes: u32,
    /// Order among the sessions of a source: lower first.
    pub priority: u32,
    /// [`select_flags`]: what the operator asked for besides the numbers.
    pub select_flags: u32,
    /// Instructions of the session's compiled filter (0 = none); the text
    /// is in `FILTER_SPECS`.
    pub filter_insns: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SessionConfig>() == 32 + 16 + 8 + 16 + 32 + 32);

impl SessionConfig {
    /// A free slot.
    pub const EMPTY: Self = Self {
        name: [0; SESSION_NAME_LEN],
        dest_ifindex: 0,
        snaplen: 0,
        direction_mask: 0,
        flags: 0,
        created_unix_secs: 0,
        select_bank: 0,
        sample_every: 0,
        rate_limit_pps: 0,
        encap_kind: 0,
        _reserved: [0; 8],
        rate_limit_bps: 0,
        burst_packets: 0,
        burst_bytes: 0,
        priority: 0,
        select_flags: 0,
        filter_insns: 0,
        _pad: 0,
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

/// Bits of [`SessionConfig::select_flags`]. Append; never renumber.
pub mod select_flags {
    /// `--dry-run`: count what would be copied, copy nothing.
    pub const DRY_RUN: u32 = 1 << 0;
    /// `--exclusive`.
    pub const EXCLUSIVE: u32 = 1 << 1;
    /// `--include-copies`.
    pub const INCLUDE_COPIES: u32 = 1 << 2;
    /// `--sample-flow` (with `sample_every`).
    pub const SAMPLE_FLOW: u32 = 1 << 3;
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
    /// Two banks per session of what selects its packets ([`super::Selector`]).
    pub const SELECTORS: &str = "SELECTORS";
    /// Filter programs of every session ([`super::FilterInsn`]).
    pub const FILTER_INSNS: &str = "FILTER_INSNS";
    /// Per selector bank: the selection's text (agent only).
    pub const FILTER_SPECS: &str = "FILTER_SPECS";
    /// Per session: the rate limit's token buckets.
    pub const RATE_STATE: &str = "RATE_STATE";
    /// Per-CPU scratch: the packet as filters see it.
    pub const VIEW: &str = "VIEW";
    /// Program array: native filter programs, then the hooks they return to.
    pub const NATIVE_FILTERS: &str = "NATIVE_FILTERS";
    /// Every map the programs pin (removed with the last session).
    pub const PINNED_MAPS: [&str; 12] = [
        SOURCE_INDEX,
        SOURCE_ENTRIES,
        SOURCE_OVERFLOW,
        SESSIONS,
        COUNTERS,
        CUT_VERDICT,
        SELECTORS,
        FILTER_INSNS,
        FILTER_SPECS,
        RATE_STATE,
        VIEW,
        NATIVE_FILTERS,
    ];
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
    use super::{
        Counter, DirectionCounters, FilterInsn, FilterSpec, RateState, Selector, SessionConfig, SourceEntry,
        SourceKey,
    };
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
    // SAFETY: as above.
    unsafe impl aya::Pod for FilterInsn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FilterSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Selector {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RateState {}
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
    fn copy_mark_carries_the_depth() {
        for depth in 1..=copy_mark::MAX_DEPTH {
            let m = copy_mark::encode_at(5, direction::INGRESS, depth);
            assert!(copy_mark::is_copy(m));
            assert_eq!(copy_mark::depth(m), depth);
            assert_eq!(m & copy_mark::SESSION_MASK, 5);
        }
        assert_eq!(copy_mark::depth(copy_mark::encode(1, 0)), 1);
        // The depth bits sit between the session id and the direction.
        assert_eq!(copy_mark::encode_at(0, 0, copy_mark::DEPTH_MASK + 1) & copy_mark::EGRESS_BIT, 0);
    }

    #[test]
    fn reason_names_are_unique_and_every_reason_is_classified_once() {
        for (i, a) in reason::NAMES.iter().enumerate() {
            assert!(!reason::NAMES[i + 1..].contains(a), "{a}");
        }
        for r in 1..reason::DEFINED {
            let classes = [
                reason::OUTCOMES.contains(&r),
                reason::NOT_SELECTED.contains(&r),
                r == reason::TRUNCATED,
                r == reason::NO_SESSION || r == reason::COPY_NOT_REMIRRORED,
            ];
            assert_eq!(classes.iter().filter(|c| **c).count(), 1, "{}", reason::NAMES[r as usize]);
        }
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
