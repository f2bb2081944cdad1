use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_clone_redirect, bpf_skb_change_tail},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use mirror_common::{
    COUNTER_SLOTS, DirectionCounters, EntryRef, GLOBAL_SESSION_ID, MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE,
    MAX_SOURCE_HOOKS, NO_ENTRY, SOURCE_ENTRY_COUNT, SessionConfig, SourceEntry, SourceKey, copy_mark,
    counter_index, cut_verdict, direction, reason, source_index,
};

/// (ifindex low bits, direction) → the hook's entry, then overflow cells;
/// the hot path's only lookup of its own, an array access the verifier inlines.
#[map]
static SOURCE_INDEX: Array<EntryRef> = Array::pinned(source_index::CELLS, source_index::MAP_FLAGS);

/// Hook → its overflow cell in `SOURCE_INDEX`, for hooks whose direct cell
/// another ifindex holds: looked up only then. A value never changes while
/// its hook lives.
#[map]
static SOURCE_OVERFLOW: HashMap<SourceKey, u32> = HashMap::pinned(MAX_SOURCE_HOOKS, 0);

/// The sessions each hook feeds. Never rewritten while referenced: the agent
/// writes a free entry, then publishes it.
#[map]
static SOURCE_ENTRIES: Array<SourceEntry> = Array::pinned(SOURCE_ENTRY_COUNT, 0);

/// Session id → configuration; read here for the snap length of copies.
#[map]
static SESSIONS: Array<SessionConfig> = Array::pinned(MAX_SESSIONS, 0);

/// (session, direction, reason) → packets and bytes, per CPU so that no two
/// CPUs ever write the same cache line.
#[map]
static COUNTERS: PerCpuArray<DirectionCounters> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// What the destination hook did to the copy being sent, for the source hook
/// that sent it. `bpf_clone_redirect` runs the destination's tc egress
/// synchronously on this CPU, so the source reads the verdict right after the
/// call returns and counts each copy exactly once, under the right reason.
#[map]
static CUT_VERDICT: PerCpuArray<u32> = PerCpuArray::pinned(1, 0);

// errno values returned by `bpf_clone_redirect` (negated).
const ENOMEM: i64 = 12;
const EINVAL: i64 = 22;
const ENETDOWN: i64 = 100;
// Positive returns are the destination qdisc's verdict. A destination that is
// down or has lost carrier has its qdisc swapped for `noop_qdisc`, which
// answers NET_XMIT_CN (not -ENETDOWN); congested qdiscs answer it too.
const NET_XMIT_DROP: i64 = 1;
const NET_XMIT_CN: i64 = 2;

/// Attached at tcx/ingress of every source with an ingress session.
#[classifier]
pub fn mirror_src_ingress(ctx: TcContext) -> i32 {
    mirror_from_source(&ctx, direction::INGRESS);
    TC_ACT_UNSPEC
}

/// Attached at tcx/egress of every source with an egress session.
#[classifier]
pub fn mirror_src_egress(ctx: TcContext) -> i32 {
    mirror_from_source(&ctx, direction::EGRESS);
    TC_ACT_UNSPEC
}

/// Attached at tcx/egress of a destination that receives cut copies. Lets
/// everything that is not one of our copies pass untouched.
#[classifier]
pub fn mirror_dst_egress(ctx: TcContext) -> i32 {
    prepare_copy(&ctx)
}

#[inline(always)]
fn count(session_id: u32, direction: u32, reason: u32, bytes: u32) {
    if let Some(counters) = COUNTERS.get_ptr_mut(counter_index(session_id, direction)) {
        // SAFETY: a per-CPU slot is only written by this CPU, with preemption
        // off for the program's run; the pointer comes from a successful
        // lookup, and `get_mut` bounds the reason.
        unsafe {
            if let Some(counter) = (*counters).reasons.get_mut(reason as usize) {
                counter.packets += 1;
                counter.bytes += u64::from(bytes);
            }
        }
    }
}

/// Maps a `bpf_clone_redirect` result to the reason it is counted under.
#[inline(always)]
fn redirect_outcome(ret: i64) -> u32 {
    match ret {
        0 => reason::MIRRORED,
        r if r == -ENETDOWN => reason::DEST_DOWN,
        NET_XMIT_CN => reason::DEST_CONGESTED,
        r if r == -EINVAL => reason::DEST_MISSING,
        r if r == -ENOMEM => reason::CLONE_FAILED,
        NET_XMIT_DROP => reason::DEST_QUEUE_DROP,
        _ => reason::REDIRECT_FAILED,
    }
}

#[inline(always)]
fn mirror_from_source(ctx: &TcContext, direction: u32) {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel handed this program;
    // `mark`, `ifindex` and `len` are readable context fields.
    let (mark, ifindex, len) = unsafe { ((*skb).mark, (*skb).ifindex, (*skb).len) };

    if copy_mark::is_copy(mark) {
        count(GLOBAL_SESSION_ID, direction, reason::COPY_NOT_REMIRRORED, len);
        return;
    }
    let Some(entry) = source_entry(ifindex, direction) else {
        count(GLOBAL_SESSION_ID, direction, reason::NO_SESSION, len);
        return;
    };
    // SAFETY: array elements live as long as the map; the agent rewrites an
    // entry only after an RCU grace period since it was unpublished.
    let slot_count = unsafe { (*entry).slot_count };

    for i in 0..MAX_SESSIONS_PER_SOURCE {
        if i as u32 >= slot_count {
            break;
        }
        // SAFETY: as above; `i` is bounded by the array length.
        let slot = unsafe { (*entry).slots[i] };

        let cuts = slot.snaplen != 0 && len > slot.snaplen;
        // Tell the destination hook what this slot allows (it runs inside
        // the clone call, on this CPU).
        if slot.snaplen != 0 {
            set_cut_verdict(cut_verdict::REQUEST | slot.snaplen);
        }
        // Tag the original so that the clone carries the tag, then restore.
        ctx.set_mark(copy_mark::encode(slot.session_id, direction));
        // SAFETY: helper call with the program's own context.
        let ret = unsafe { bpf_clone_redirect(skb, slot.dest_ifindex, 0) };
        let outcome = redirect_outcome(ret);
        let verdict = if slot.snaplen != 0 {
            let v = read_cut_verdict();
            // No later copy on this CPU may find this request.
            set_cut_verdict(cut_verdict::NONE);
            v
        } else {
            cut_verdict::NONE
        };
        if !cuts {
            count(slot.session_id, direction, outcome, len);
            continue;
        }
        match verdict {
            cut_verdict::DONE if outcome == reason::MIRRORED => {
                count(slot.session_id, direction, reason::TRUNCATED, len - slot.snaplen);
                count(slot.session_id, direction, reason::MIRRORED, slot.snaplen);
            }
            // The destination hook dropped it (the call reports NET_XMIT_DROP).
            cut_verdict::FAILED => count(slot.session_id, direction, reason::SNAP_FAILED, len),
            // Sent, but the destination hook never saw it (the request is
            // still there): it left uncut.
            v if v != cut_verdict::DONE && outcome == reason::MIRRORED => {
                count(slot.session_id, direction, reason::NOT_CUT, len)
            }
            _ => count(slot.session_id, direction, outcome, len),
        }
    }
    ctx.set_mark(mark);
}

/// The entry of hook `(ifindex, direction)`: through its direct cell if the
/// cell is its own, else through its overflow cell.
#[inline(always)]
fn source_entry(ifindex: u32, direction: u32) -> Option<*const SourceEntry> {
    let hook = SourceKey { ifindex, direction };
    if let Some(entry) = entry_in(source_index::cell(ifindex, direction), hook) {
        return Some(entry);
    }
    // SAFETY: a preallocated hash value may be recycled for another key
    // while we read it; whatever cell we get, the ownership check in
    // `entry_in` rejects an entry that is not this hook's.
    let cell = unsafe { SOURCE_OVERFLOW.get(hook) }.copied()?;
    entry_in(cell, hook)
}

/// The entry published in `cell`, if it belongs to `hook`.
#[inline(always)]
fn entry_in(cell: u32, hook: SourceKey) -> Option<*const SourceEntry> {
    // An 8-byte aligned load: the agent publishes cells with one atomic store.
    let r = SOURCE_INDEX.get(cell).copied().unwrap_or(NO_ENTRY);
    entry_of(r, hook)
}

/// The entry `r` refers to, if it belongs to `hook`.
#[inline(always)]
fn entry_of(r: EntryRef, hook: SourceKey) -> Option<*const SourceEntry> {
    if r == NO_ENTRY {
        return None;
    }
    let entry = SOURCE_ENTRIES.get_ptr((r - 1) as u32)?;
    // SAFETY: pointer from a successful array lookup.
    let owner = unsafe { (*entry).hook };
    (owner == hook).then_some(entry)
}

#[inline(always)]
fn set_cut_verdict(verdict: u32) {
    if let Some(v) = CUT_VERDICT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU; pointer from a successful lookup.
        unsafe { *v = verdict };
    }
}

#[inline(always)]
fn read_cut_verdict() -> u32 {
    CUT_VERDICT.get(0).copied().unwrap_or(cut_verdict::NONE)
}

#[inline(always)]
fn prepare_copy(ctx: &TcContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: readable context fields of the program's own context.
    let (mark, len) = unsafe { ((*skb).mark, (*skb).len) };
    if !copy_mark::is_copy(mark) {
        return TC_ACT_UNSPEC;
    }
    // What the slot that made this copy allows; from SESSIONS only for a
    // source program that does not say (an older build's).
    let request = read_cut_verdict();
    let snaplen = if request & cut_verdict::REQUEST != 0 {
        request & cut_verdict::SNAPLEN_MASK
    } else {
        match SESSIONS.get(mark & copy_mark::SESSION_MASK) {
            Some(session) => session.snaplen,
            None => return TC_ACT_UNSPEC,
        }
    };
    if snaplen != 0 && len > snaplen {
        // SAFETY: helper call with the program's own context; the skb is our
        // clone, so cutting it never touches the original's data.
        if unsafe { bpf_skb_change_tail(skb, snaplen, 0) } != 0 {
            // Never send more than the operator allowed: drop this copy only.
            set_cut_verdict(cut_verdict::FAILED);
            return TC_ACT_SHOT;
        }
        set_cut_verdict(cut_verdict::DONE);
    }
    TC_ACT_UNSPEC
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
