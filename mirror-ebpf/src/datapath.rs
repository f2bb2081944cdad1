use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::{bpf_clone_redirect, bpf_skb_change_tail},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use mirror_common::{
    COUNTER_SLOTS, DirectionCounters, EntryRef, GLOBAL_SESSION_ID, MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE,
    MAX_SOURCE_HOOKS, NO_ENTRY, SOURCE_ENTRY_COUNT, SessionConfig, SessionSlot, SourceEntry, SourceKey,
    copy_mark, counter_index, cut_verdict, direction, entry_flags, prefilter, reason, selector_flags,
    selector_index, slot_flags, source_index,
};

use crate::select::{self, Lens, SELECTORS};

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

/// Session id → configuration; read here for the snap length of copies
/// sent by an older build's source programs.
#[map]
static SESSIONS: Array<SessionConfig> = Array::pinned(MAX_SESSIONS, 0);

/// (session, direction) → packets and bytes per reason, per CPU so that no
/// two CPUs ever write the same cache line.
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
pub(crate) fn count(session_id: u32, direction: u32, reason: u32, bytes: u32) {
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

    let is_copy = copy_mark::is_copy(mark);
    let Some((entry, number)) = source_entry(ifindex, direction) else {
        let why = if is_copy { reason::COPY_NOT_REMIRRORED } else { reason::NO_SESSION };
        count(GLOBAL_SESSION_ID, direction, why, len);
        return;
    };
    // SAFETY: array elements live as long as the map; the agent rewrites an
    // entry only after an RCU grace period since it was unpublished.
    let (slot_count, entry_flags) = unsafe { ((*entry).slot_count, (*entry).flags) };
    if !is_copy && entry_flags & entry_flags::SELECTS == 0 {
        // The common case: every slot copies every packet.
        for i in 0..MAX_SESSIONS_PER_SOURCE {
            if i as u32 >= slot_count {
                break;
            }
            // SAFETY: as above; `i` is bounded by the array length.
            let slot = unsafe { (*entry).slots[i] };
            copy(skb, &slot, direction, len, 1);
        }
        ctx.set_mark(mark);
        return;
    }
    // A copy is mirrored again only by sessions that include copies, and
    // only so deep: even a cycle of such sessions ends.
    if is_copy && entry_flags & entry_flags::INCLUDE_COPIES == 0 {
        count(GLOBAL_SESSION_ID, direction, reason::COPY_NOT_REMIRRORED, len);
        return;
    }
    // A copy being mirrored again is itself inside the clone call of the hook
    // that made it, which reads the cut verdict and its exclusive claim once
    // we return; our own copies must not find its cut request.
    let outer_verdict = if is_copy { read_cut_verdict() } else { cut_verdict::NONE };
    if is_copy {
        set_cut_verdict(cut_verdict::NONE);
    }
    // The exclusive claim of the run a copy's run interrupts.
    let outer_claim = if is_copy { select::current_claim() } else { 0 };
    // What the filters' cheap test reads, once for all slots.
    let class = if !is_copy && entry_flags & entry_flags::FILTERS != 0 {
        packet_class(ctx)
    } else {
        prefilter::UNKNOWN
    };
    // The selection run, after the chain of native filters if any: one
    // unknown number for the verifier, whichever way it went.
    let run = select::run_start(skb, number, direction | u32::from(is_copy) << 1 | entry_flags << 8, class);
    for i in 0..MAX_SESSIONS_PER_SOURCE {
        if i as u32 >= slot_count {
            break;
        }
        // SAFETY: as above.
        let flags = unsafe { (*entry).slots[i].flags };
        if flags & slot_flags::FILTER != 0 && class != prefilter::UNKNOWN {
            // SAFETY: as above.
            let slot = unsafe { (*entry).slots[i] };
            let index = selector_index(slot.session_id, flags & slot_flags::BANK1 != 0);
            let classes = SELECTORS.get(index).map_or(0, |s| s.reject_classes);
            if !prefilter::may_accept(classes, class) {
                count(slot.session_id, direction, reason::FILTERED, len);
                continue;
            }
        }
        let steps = flags & !slot_flags::BANK1;
        // A filter alone that its native code accepted: nothing more to ask.
        let accepted = !is_copy && steps == slot_flags::FILTER && select::native_accepted(run, i as u32);
        if !is_copy && (steps == 0 || steps == slot_flags::SAMPLE || accepted) {
            // SAFETY: as above.
            let slot = unsafe { (*entry).slots[i] };
            // Random sampling alone: decided here, the cheapest way to skip
            // 99 packets in 100.
            if steps == slot_flags::SAMPLE && !select::sampled_at_random(&slot, direction, len) {
                continue;
            }
            copy(skb, &slot, direction, len, 1);
        } else {
            mirror_slot(skb, direction << 8 | i as u32, number, mark, run);
        }
    }
    ctx.set_mark(mark);
    if is_copy {
        set_cut_verdict(outer_verdict);
        select::end_nested_run(outer_claim);
    }
}

/// The packet's [`prefilter`] class: its EtherType and IP protocol, read
/// straight from the packet (`UNKNOWN` for a tagged or short frame).
#[inline(always)]
fn packet_class(ctx: &TcContext) -> u32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: a readable context field.
    if unsafe { (*skb).vlan_present } != 0 {
        return prefilter::UNKNOWN;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + prefilter::BYTES as usize > end {
        return prefilter::UNKNOWN;
    }
    // SAFETY: the 24 bytes at `data` are inside the packet (checked above).
    let b = |i: usize| u32::from(unsafe { *((data + i) as *const u8) });
    prefilter::of(b(12) << 8 | b(13), b(23), b(20))
}

/// Slot `where_ & 0xff` (of direction `where_ >> 8`) of entry `number`,
/// for a packet whose own mark is `mark`, in selection run `run`: admits it
/// (counting why not), then copies it.
///
/// A global function: the verifier checks it once, on its own, whatever
/// the paths that call it (eight unrolled slots would otherwise multiply its
/// states); it re-reads what it needs from the maps, from the one entry the
/// caller saw.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mirror_slot(skb: *mut __sk_buff, where_: u32, number: u32, mark: u32, run: u64) -> u32 {
    let direction = (where_ >> 8) & 1;
    let index = where_ as usize & (MAX_SESSIONS_PER_SOURCE - 1);
    let Some(entry) = SOURCE_ENTRIES.get_ptr(number) else { return 0 };
    // SAFETY: an array element, alive for the program's run (see
    // `mirror_from_source`); `index` is masked into the slots.
    let slot = unsafe { (*entry).slots[index] };
    if skb.is_null() {
        return 0;
    }
    // SAFETY: the program's own context (the verifier types it so).
    let len = unsafe { (*skb).len };
    let depth = if copy_mark::is_copy(mark) { copy_mark::depth(mark) } else { 0 };
    if depth != 0 {
        if slot.flags & slot_flags::INCLUDE_COPIES == 0 {
            return 0;
        }
        if depth >= copy_mark::MAX_DEPTH {
            count(slot.session_id, direction, reason::HOP_LIMIT, len);
            return 0;
        }
    }
    if slot.flags & !(slot_flags::BANK1 | slot_flags::INCLUDE_COPIES) != 0 {
        let Some(lens) = Lens::resume(skb, direction, run) else {
            count(slot.session_id, direction, reason::FILTERED, len);
            return 0;
        };
        if !selects(&lens, &slot, index as u32, direction, len) {
            return 0;
        }
    }
    copy(skb, &slot, direction, len, depth + 1);
    1
}

/// Sends one copy for `slot` and counts how it went.
#[inline(always)]
fn copy(skb: *mut __sk_buff, slot: &SessionSlot, direction: u32, len: u32, depth: u32) {
    let cuts = slot.snaplen != 0 && len > slot.snaplen;
    // Tell the destination hook what this slot allows (it runs inside the
    // clone call, on this CPU).
    if slot.snaplen != 0 {
        set_cut_verdict(cut_verdict::REQUEST | slot.snaplen);
    }
    // Tag the original so that the clone carries the tag; the caller restores.
    // SAFETY: `mark` is a writable field of the program's own context.
    unsafe { (*skb).mark = copy_mark::encode_at(slot.session_id, direction, depth) };
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
        return;
    }
    match verdict {
        cut_verdict::DONE if outcome == reason::MIRRORED => {
            count(slot.session_id, direction, reason::TRUNCATED, len - slot.snaplen);
            count(slot.session_id, direction, reason::MIRRORED, slot.snaplen);
        }
        // The destination hook dropped it (the call reports NET_XMIT_DROP).
        cut_verdict::FAILED => count(slot.session_id, direction, reason::SNAP_FAILED, len),
        // Sent, but the destination hook never saw it (the request is still
        // there): it left uncut.
        v if v != cut_verdict::DONE && outcome == reason::MIRRORED => {
            count(slot.session_id, direction, reason::NOT_CUT, len)
        }
        _ => count(slot.session_id, direction, outcome, len),
    }
}

/// Whether slot `index`, which has selection flags, takes this packet;
/// counts why not.
/// In order: the filter (`filtered`), exclusivity (`preempted`), sampling
/// (`sampled_out`), the rate limit (`rate_limited`), then a dry run counts
/// what would have been copied (`dry_run`). So a dry run's counters are
/// exactly the copies the session would make.
#[inline(always)]
fn selects(lens: &Lens, slot: &SessionSlot, index: u32, direction: u32, len: u32) -> bool {
    let id = slot.session_id;
    let flags = slot.flags;
    let selector = if flags & slot_flags::NEEDS_SELECTOR != 0 {
        match SELECTORS.get(selector_index(id, flags & slot_flags::BANK1 != 0)) {
            Some(s) => Some(s),
            // Unreadable: copy nothing we cannot judge.
            None => {
                count(id, direction, reason::FILTERED, len);
                return false;
            }
        }
    } else {
        None
    };
    if let Some(selector) = selector {
        // The slot's native filter, if it ran, else the interpreter (on the
        // view, filled for it).
        if flags & slot_flags::FILTER != 0 && !lens.native_or_filter(selector, index) {
            count(id, direction, reason::FILTERED, len);
            return false;
        }
        // Flow sampling hashes the parsed fields; random sampling needs
        // nothing of the packet.
        if selector.flags & selector_flags::SAMPLE_FLOW != 0 {
            lens.prepare(selector);
        }
    }
    if flags & slot_flags::EXCLUSIVE != 0 {
        if lens.claimed() {
            count(id, direction, reason::PREEMPTED, len);
            return false;
        }
        // A dry run takes nothing from the sessions after it.
        if flags & slot_flags::DRY_RUN == 0 {
            lens.claim();
        }
    }
    // What the copy would be: after the filter, so that the interpreter is
    // reached from one state.
    let copy_len = if slot.snaplen != 0 && len > slot.snaplen { slot.snaplen } else { len };
    if let Some(selector) = selector {
        if flags & slot_flags::SAMPLE != 0 && !lens.sampled(selector) {
            count(id, direction, reason::SAMPLED_OUT, len);
            return false;
        }
        if flags & slot_flags::RATE_LIMIT != 0 && !select::within_rate(id, selector, copy_len) {
            count(id, direction, reason::RATE_LIMITED, len);
            return false;
        }
    }
    if flags & slot_flags::DRY_RUN != 0 {
        count(id, direction, reason::DRY_RUN, copy_len);
        return false;
    }
    true
}

/// The entry of hook `(ifindex, direction)`: through its direct cell if the
/// cell is its own, else through its overflow cell.
#[inline(always)]
fn source_entry(ifindex: u32, direction: u32) -> Option<(*const SourceEntry, u32)> {
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

/// Entry `number` of `SOURCE_ENTRIES`.
#[inline(always)]
pub(crate) fn entry_at(number: u32) -> Option<*const SourceEntry> {
    SOURCE_ENTRIES.get_ptr(number)
}

/// The entry published in `cell`, if it belongs to `hook`.
#[inline(always)]
fn entry_in(cell: u32, hook: SourceKey) -> Option<(*const SourceEntry, u32)> {
    // An 8-byte aligned load: the agent publishes cells with one atomic store.
    let r = SOURCE_INDEX.get(cell).copied().unwrap_or(NO_ENTRY);
    entry_of(r, hook)
}

/// The entry `r` refers to, if it belongs to `hook`.
#[inline(always)]
fn entry_of(r: EntryRef, hook: SourceKey) -> Option<(*const SourceEntry, u32)> {
    if r == NO_ENTRY {
        return None;
    }
    let number = (r - 1) as u32;
    let entry = SOURCE_ENTRIES.get_ptr(number)?;
    // SAFETY: pointer from a successful array lookup.
    let owner = unsafe { (*entry).hook };
    (owner == hook).then_some((entry, number))
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
