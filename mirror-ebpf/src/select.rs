//! What a slot with selection flags asks of a packet before it is copied:
//! its filter program, sampling, and the session's rate limit.
//!
//! A packet is looked at once however many slots filter it: the first slot
//! that needs it copies the frame's first [`filter::HEADER_BYTES`] bytes
//! (the tag the stack moved to `skb->vlan_tci` put back at offset 12, as on
//! the wire) into the per-CPU [`VIEW`], and the first that needs parsed
//! fields parses them there. Sessions without selection never get here.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use mirror_common::{
    FilterInsn, FilterSpec, MAX_SESSIONS, RateState, SELECTOR_BANKS, Selector, field, filter, parse,
    prefilter, selector_flags, selector_index, slot_flags,
    view::{NATIVE_CHAIN, View, native_index},
    vm,
};

/// Two banks per session of what selects its packets.
#[map]
pub(crate) static SELECTORS: Array<Selector> = Array::pinned(SELECTOR_BANKS, 0);

/// Every session's filter program; a selector names its range.
#[map]
static FILTER_INSNS: Array<FilterInsn> = Array::pinned(filter::POOL_INSNS, 0);

/// Per session: the rate limit's buckets, shared by all CPUs.
#[map]
static RATE_STATE: Array<RateState> = Array::pinned(MAX_SESSIONS, 0);

/// The selection as the operator wrote it, per selector bank. Only the agent
/// reads it; declared here so that it is created and pinned with the rest.
#[map]
static FILTER_SPECS: HashMap<u32, FilterSpec> = HashMap::pinned(SELECTOR_BANKS, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// The packet as filters see it, per CPU.
#[map]
static VIEW: PerCpuArray<View> = PerCpuArray::pinned(1, 0);

/// Native filter programs, by selector index ([`native_index`]). Written
/// by the agent.
#[map]
static NATIVE_FILTERS: ProgramArray = ProgramArray::pinned(native_index::ENTRIES, 0);

/// Where the metadata tag sits in the frame as it was on the wire.
const TAG_OFFSET: u32 = 12;
const TAG_LEN: u32 = 4;
const HEADER: usize = filter::HEADER_BYTES as usize;

/// One packet's view for one hook run.
///
/// Everything a run learns as it goes (filled, parsed, claimed) is kept in
/// the per-CPU map, not in registers: the verifier does not track map
/// memory, so the paths through eight slots stay one state instead of
/// multiplying.
pub(crate) struct Lens {
    skb: *mut __sk_buff,
    view: *mut View,
    run: u64,
    direction: u32,
}

impl Lens {
    /// The view of run `run` (see [`begin_run`]); `None` if the per-CPU map
    /// is unreadable, or the run could not begin (the caller then selects
    /// nothing it cannot judge).
    #[inline(always)]
    pub(crate) fn resume(skb: *mut __sk_buff, direction: u32, run: u64) -> Option<Self> {
        if run == 0 {
            return None;
        }
        let view = VIEW.get_ptr_mut(0)?;
        Some(Self { skb, view, run, direction })
    }

    /// Fills the view for this packet (and parses its fields if the
    /// selector reads them), unless this run already did.
    #[inline(always)]
    pub(crate) fn prepare(&self, selector: &Selector) {
        view_prepare(self.skb, self.direction, self.run, selector.flags & selector_flags::FIELDS);
    }

    /// Runs the selector's program: true if it accepts the packet. After
    /// [`Self::prepare`].
    #[inline(always)]
    fn filter(&self, selector: &Selector) -> bool {
        run(self.view, self.skb, selector.prog_start, selector.prog_len)
    }

    /// What slot `slot`'s native filter decided in this run, else what the
    /// interpreter does (on the view, prepared first): true if the packet
    /// is accepted.
    #[inline(always)]
    pub(crate) fn native_or_filter(&self, selector: &Selector, slot: u32) -> bool {
        match native_verdict(self.run, slot) {
            vm::verdict::ACCEPT => true,
            vm::verdict::REJECT => false,
            _ => {
                self.prepare(selector);
                self.filter(selector)
            }
        }
    }

    /// Whether sampling keeps the packet. After [`Self::prepare`].
    #[inline(always)]
    pub(crate) fn sampled(&self, selector: &Selector) -> bool {
        let draw = if selector.flags & selector_flags::SAMPLE_FLOW != 0 {
            // SAFETY: as in `begin_run`.
            parse::flow_hash(unsafe { &(*self.view).fields })
        } else {
            random()
        };
        parse::keeps_below(draw, selector.sample_keep_below)
    }

    /// Whether an exclusive slot already took the packet in this run.
    #[inline(always)]
    pub(crate) fn claimed(&self) -> bool {
        // SAFETY: as in `begin_run`.
        unsafe { (*self.view).claimed_run == self.run }
    }

    #[inline(always)]
    pub(crate) fn claim(&self) {
        // SAFETY: as in `begin_run`.
        unsafe { (*self.view).claimed_run = self.run };
    }
}

/// Fills the view of run `run` with this packet's head (and, if
/// `fields` is set, parses its fields), unless the run already did.
///
/// A global function: the verifier checks it, and the fill and parse it
/// calls, once on its own, however many places prepare a view.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn view_prepare(skb: *mut __sk_buff, direction: u32, run: u64, fields: u32) -> u32 {
    let Some(view) = VIEW.get_ptr_mut(0) else { return 0 };
    if skb.is_null() {
        return 0;
    }
    // SAFETY: as in `begin_run`.
    if unsafe { (*view).filled_run } != run {
        fill(view, skb, run);
    }
    // SAFETY: as in `begin_run`.
    let parsed = unsafe { (*view).parsed_run } == run;
    if fields != 0 && !parsed {
        parse_view(view, direction & 1, run);
    }
    1
}

/// Whether slot `slot`'s native filter accepted the packet of run `run`.
#[inline(always)]
pub(crate) fn native_accepted(run: u64, slot: u32) -> bool {
    native_verdict(run, slot) == vm::verdict::ACCEPT
}

/// What slot `slot`'s native filter decided in run `run`: `ACCEPT`,
/// `REJECT`, or `RUNNING` (undecided: the interpreter runs). Read from the
/// view, not carried in registers, so that the verifier's paths through the
/// slots stay few (see [`Lens`]).
#[inline(always)]
fn native_verdict(run: u64, slot: u32) -> u32 {
    let Some(view) = VIEW.get_ptr(0) else { return vm::verdict::RUNNING };
    // SAFETY: as in `begin_run`.
    unsafe {
        let n = &raw const (*view).native;
        let bit = 1 << (slot & 31);
        if run == 0 || (*n).run != run || (*n).decided & bit == 0 {
            vm::verdict::RUNNING
        } else if (*n).accepted & bit != 0 {
            vm::verdict::ACCEPT
        } else {
            vm::verdict::REJECT
        }
    }
}

/// Starts the chain of native filters of entry `number`'s slots (those
/// with a native program whose class the prefilter does not reject): fills
/// and parses the view if one of them reads parsed fields, writes the chain, and returns the `NATIVE_FILTERS`
/// index of its first program, or `u32::MAX` if no slot has one. The
/// caller tail-calls it.
#[inline(always)]
fn native_start(
    view: *mut View,
    skb: *mut __sk_buff,
    number: u32,
    direction: u32,
    run: u64,
    class: u32,
) -> u32 {
    const NONE: u32 = u32::MAX;
    let Some(entry) = crate::datapath::entry_at(number) else { return NONE };
    if run == 0 {
        return NONE;
    }
    // SAFETY: an array element, alive for the program's run.
    let slot_count = unsafe { (*entry).slot_count };
    // What the loop learns is kept in the map, not in registers: otherwise
    // each slot would double the verifier's paths through the rest.
    // SAFETY: as in `begin_run`.
    let n = unsafe { &raw mut (*view).native };
    // SAFETY: as in `begin_run`.
    unsafe {
        core::ptr::write_volatile(&raw mut (*n).count, 0);
        core::ptr::write_volatile(&raw mut (*n).fields, 0);
    }
    for i in 0..NATIVE_CHAIN {
        if i as u32 >= slot_count {
            break;
        }
        // SAFETY: as above; `i` is bounded by the array length.
        let slot = unsafe { (*entry).slots[i] };
        if slot.flags & slot_flags::FILTER == 0 {
            continue;
        }
        let index = selector_index(slot.session_id, slot.flags & slot_flags::BANK1 != 0);
        let Some(selector) = SELECTORS.get(index) else { continue };
        if selector.flags & selector_flags::NATIVE == 0
            || (class != prefilter::UNKNOWN && !prefilter::may_accept(selector.reject_classes, class))
        {
            continue;
        }
        // SAFETY: as above; the position is masked into the chain.
        // Volatile: kept in the map, where the verifier does not follow it.
        unsafe {
            let at = core::ptr::read_volatile(&raw const (*n).count);
            (*n).chain[at as usize & (NATIVE_CHAIN - 1)] = index | (i as u32) << native_index::SLOT_SHIFT;
            core::ptr::write_volatile(&raw mut (*n).count, at + 1);
            let fields = core::ptr::read_volatile(&raw const (*n).fields);
            core::ptr::write_volatile(&raw mut (*n).fields, fields | selector.flags & selector_flags::FIELDS);
        }
    }
    // SAFETY: as above.
    let (count, fields) = unsafe { ((*n).count, (*n).fields) };
    if count == 0 {
        return NONE;
    }
    // Programs that read parsed fields read the view; the others, the packet.
    if fields != 0 && view_prepare(skb, direction, run, fields) == 0 {
        return NONE;
    }
    // SAFETY: as above.
    unsafe {
        (*n).next = 0;
        (*n).decided = 0;
        (*n).accepted = 0;
        (*n).run = run;
        (*n).chain[0] & native_index::INDEX_MASK
    }
}

/// The selection run of a source hook's run (0: none is needed). When
/// some slot has a native filter, the chain of them runs first: tail-called
/// from here, so that (a tail call made from a function replaces only that
/// function) its last program returns here to the hook, with the run's
/// number; if the first tail call fails, the chain ended, and the slots run
/// the interpreter. `flags`: the direction, bit 1 for a copy, the entry's
/// flags from bit 8.
///
/// A global function, so that the hook's loop is reached from one state
/// whichever way the run went.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn run_start(skb: *mut __sk_buff, number: u32, flags: u32, class: u32) -> u64 {
    let direction = flags & 1;
    let is_copy = flags & 2 != 0;
    let entry_flags = flags >> 8;
    if !is_copy && entry_flags & mirror_common::entry_flags::NO_RUN != 0 {
        return 0;
    }
    let Some(view) = VIEW.get_ptr_mut(0) else { return 0 };
    let run = begin_run(view);
    if !is_copy && entry_flags & mirror_common::entry_flags::FILTERS != 0 && !skb.is_null() {
        let first = native_start(view, skb, number, direction, run, class);
        if first != u32::MAX {
            // SAFETY: a tail call with the program's own context.
            // Failed: `decided` stays 0, and the interpreter decides.
            unsafe { NATIVE_FILTERS.tail_call(&TcContext::new(skb), first) };
        }
    }
    run
}

/// Random sampling of a slot with no other selection step: whether it
/// keeps the packet (counting `sampled_out` if not).
#[inline(always)]
pub(crate) fn sampled_at_random(slot: &mirror_common::SessionSlot, direction: u32, len: u32) -> bool {
    let bound = SELECTORS
        .get(selector_index(slot.session_id, slot.flags & slot_flags::BANK1 != 0))
        .map_or(0, |s| s.sample_keep_below);
    if parse::keeps_below(random(), bound) {
        return true;
    }
    crate::datapath::count(slot.session_id, direction, mirror_common::reason::SAMPLED_OUT, len);
    false
}

/// A uniform 32-bit draw for random sampling: xorshift64* on a per-CPU
/// state (a few instructions; the kernel's generator, a helper call, costs
/// ~15 ns per packet here, more than the rest of a sampled-out packet).
#[inline(always)]
fn random() -> u32 {
    let Some(view) = VIEW.get_ptr_mut(0) else {
        // SAFETY: helper without arguments.
        return unsafe { bpf_get_prandom_u32() };
    };
    // SAFETY: per-CPU value of this CPU (see `begin_run`).
    unsafe {
        let mut x = (*view).prng;
        if x == 0 {
            x = u64::from(bpf_get_prandom_u32()) << 32 | u64::from(bpf_get_prandom_u32()) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (*view).prng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// Starts a selection run for the packet at hand, in `view` (this CPU's):
/// its number.
#[inline(always)]
fn begin_run(view: *mut View) -> u64 {
    // SAFETY: per-CPU value of this CPU; no other program runs on this CPU
    // while we do, except nested ones inside our own helper calls.
    unsafe {
        let run = (*view).run_counter.wrapping_add(1).max(1);
        (*view).run_counter = run;
        run
    }
}

/// The exclusive claim of the run in progress on this CPU: a copy's run,
/// nested in it, gives it back when it ends (see [`end_nested_run`]).
#[inline(always)]
pub(crate) fn current_claim() -> u64 {
    // SAFETY: as in `begin_run`.
    VIEW.get_ptr(0).map_or(0, |view| unsafe { (*view).claimed_run })
}

/// Ends a run nested in another one (a copy being copied again, from inside
/// the outer run's clone call): gives the outer run its claim back.
#[inline(always)]
pub(crate) fn end_nested_run(outer_claim: u64) {
    if let Some(view) = VIEW.get_ptr_mut(0) {
        // SAFETY: as in `begin_run`.
        unsafe { (*view).claimed_run = outer_claim };
    }
}

/// Parses the view's packet into its fields (out of line: its own stack
/// frame).
#[inline(never)]
fn parse_view(view: *mut View, direction: u32, run: u64) {
    let reader = HeaderReader { view };
    // SAFETY: as in `begin_run`.
    unsafe {
        parse::parse_fields_into(&reader, direction, &mut (*view).fields);
        (*view).parsed_run = run;
    }
}

/// Copies the frame's head into the view.
#[inline(never)]
fn fill(view: *mut View, skb: *mut __sk_buff, run: u64) {
    // SAFETY: readable fields of the program's own context.
    let (len, present, tci, proto) =
        unsafe { ((*skb).len, (*skb).vlan_present, (*skb).vlan_tci, (*skb).vlan_proto) };
    // SAFETY: per-CPU value of this CPU (see `Lens::view`); the helper
    // writes at most `n` bytes at `dst`, and `n` is bounded to what is
    // left of `header` past `dst`.
    unsafe {
        let v = &mut *view;
        v.filled_run = run;
        let base = v.header.as_mut_ptr();
        if present != 0 {
            // `vlan_proto` holds the big-endian TPID in its low 16 bits.
            let tpid = u32::from(u16::from_be(proto as u16));
            let tag = tpid << 16 | (tci & 0xffff);
            v.len = len + TAG_LEN;
            v.has_tag = 1;
            v.tag = tag;
            if len < TAG_OFFSET {
                v.header_len = 0;
                return;
            }
            if bpf_skb_load_bytes(skb.cast(), 0, base.cast(), TAG_OFFSET) != 0 {
                v.header_len = 0;
                return;
            }
            v.header[12] = (tag >> 24) as u8;
            v.header[13] = (tag >> 16) as u8;
            v.header[14] = (tag >> 8) as u8;
            v.header[15] = tag as u8;
            let rest = len - TAG_OFFSET;
            let n = if rest > (HEADER - 16) as u32 { (HEADER - 16) as u32 } else { rest };
            v.header_len = 16;
            if n > 0 && bpf_skb_load_bytes(skb.cast(), TAG_OFFSET, base.add(16).cast(), n) == 0 {
                v.header_len = 16 + n;
            }
        } else {
            v.len = len;
            v.has_tag = 0;
            v.tag = 0;
            let n = if len > HEADER as u32 { HEADER as u32 } else { len };
            v.header_len = 0;
            if n > 0 && bpf_skb_load_bytes(skb.cast(), 0, base.cast(), n) == 0 {
                v.header_len = n;
            }
        }
    }
}

/// Reads the frame as it was on the wire: from the view's copy when it
/// holds the bytes, else from the packet.
struct Reader {
    view: *const View,
    skb: *mut __sk_buff,
}

impl Reader {
    #[inline(always)]
    fn read(&self, off: u32, size: u32) -> Option<u32> {
        if size != 1 && size != 2 && size != 4 {
            return None;
        }
        // SAFETY: per-CPU value of this CPU (see `Lens::view`).
        let v = unsafe { &*self.view };
        let end = off.checked_add(size)?;
        if end > v.len {
            return None;
        }
        if end <= v.header_len {
            return Some(read_header(&v.header, off, size));
        }
        let value = read_packet(self.view, self.skb, off, size);
        if value > u64::from(u32::MAX) { None } else { Some(value as u32) }
    }
}

/// A read past the view's copy (beyond its first [`filter::HEADER_BYTES`]
/// bytes): from the packet, 4 bytes back if the tag is in metadata. The
/// copy always holds offsets 12..16, so no read here straddles the tag.
/// Out of line, and so without `Option` (a BPF function returns one
/// register): `u64::MAX` when the bytes are not there.
#[inline(never)]
fn read_packet(view: *const View, skb: *mut __sk_buff, off: u32, size: u32) -> u64 {
    // SAFETY: as in `Reader::read`.
    let has_tag = unsafe { (*view).has_tag };
    let off = if has_tag == 0 {
        off
    } else if off >= TAG_OFFSET + TAG_LEN {
        off - TAG_LEN
    } else {
        return u64::MAX;
    };
    let size = size & 0x7;
    if size == 0 || size > 4 {
        return u64::MAX;
    }
    let mut buf = [0u8; 4];
    // SAFETY: helper call with the program's own context and a stack buffer
    // of 4 bytes, at least `size`.
    if unsafe { bpf_skb_load_bytes(skb.cast(), off, buf.as_mut_ptr().cast(), size) } != 0 {
        return u64::MAX;
    }
    u64::from(u32::from_be_bytes(buf) >> (8 * (4 - size)))
}

/// The parse reads the view's copy only (the headers it follows fit in
/// it; past it, a field stays 0): no helper call to verify at each of its
/// many reads.
struct HeaderReader {
    view: *const View,
}

impl parse::Bytes for HeaderReader {
    #[inline(always)]
    fn load(&self, off: u32, size: u32) -> Option<u32> {
        // SAFETY: as in `Reader::read`.
        let v = unsafe { &*self.view };
        let end = off.checked_add(size)?;
        if end > v.header_len {
            return None;
        }
        Some(read_header(&v.header, off, size))
    }
}

#[inline(always)]
fn read_header(h: &[u8; HEADER + 4], off: u32, size: u32) -> u32 {
    let i = (off as usize) & (HEADER - 1);
    match size {
        1 => u32::from(h[i]),
        2 => u32::from(h[i]) << 8 | u32::from(h[i + 1]),
        _ => {
            u32::from(h[i]) << 24 | u32::from(h[i + 1]) << 16 | u32::from(h[i + 2]) << 8 | u32::from(h[i + 3])
        }
    }
}

impl vm::Packet for Reader {
    #[inline(always)]
    fn load(&self, off: u32, size: u32) -> Option<u32> {
        self.read(off, size)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: as in `read`.
        unsafe { (*self.view).len }
    }

    #[inline(always)]
    fn field(&self, index: u32) -> u32 {
        if index >= field::COUNT {
            return 0;
        }
        // SAFETY: as in `read`; the index is checked above.
        unsafe { (*self.view).fields[index as usize] }
    }
}

/// What each step needs besides the machine (which is in the view): the
/// same on every iteration.
#[repr(C)]
struct Run {
    reader: Reader,
    start: u32,
    len: u32,
}

/// Out of line: the machine's state lives in this frame, not the hook's.
#[inline(never)]
fn run(view: *mut View, skb: *mut __sk_buff, start: u32, len: u32) -> bool {
    // SAFETY: as in `begin_run`; no nested run can start inside a filter
    // (it calls no helper that transmits).
    // `M[]` cleared too, as the machine's other runs (the agent's, and the
    // native code) start: a program that loads a word before storing it
    // decides the same wherever it runs.
    unsafe {
        let m = &mut (*view).machine;
        m.a = 0;
        m.x = 0;
        m.pc = 0;
        m.verdict = vm::verdict::RUNNING;
        for word in m.mem.iter_mut() {
            core::ptr::write_volatile(word, 0);
        }
    }
    let mut state = Run { reader: Reader { view, skb }, start, len };
    // One instruction per iteration: the verifier checks `step` once, however
    // long programs are. Jumps only go forward, so `MAX_INSNS` iterations
    // reach the end of any program; one that has not returned by then rejects.
    // SAFETY: `step` has the callback signature `bpf_loop` expects and is
    // only handed `state`, which outlives the call.
    unsafe {
        bpf_loop(filter::MAX_INSNS / STEPS_PER_CALL, step as *mut c_void, (&raw mut state).cast(), 0);
        (*view).machine.verdict == vm::verdict::ACCEPT
    }
}

/// Instructions run per `bpf_loop` iteration: fewer callback calls per
/// instruction, at the price of checking the step this many times.
const STEPS_PER_CALL: u32 = 4;

/// Up to [`STEPS_PER_CALL`] instructions; returns 1 to stop the loop.
#[inline(never)]
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `run` passes its `Run`, alive for the whole loop.
    let state = unsafe { &*ctx.cast::<Run>() };
    // SAFETY: the machine is in this CPU's view (see `begin_run`).
    let machine = unsafe { &mut (*state.reader.view.cast_mut()).machine };
    for _ in 0..STEPS_PER_CALL {
        let pc = machine.pc;
        if pc >= state.len || pc >= filter::MAX_INSNS {
            machine.verdict = vm::verdict::REJECT;
            return 1;
        }
        let Some(insn) = FILTER_INSNS.get(state.start.wrapping_add(pc)) else {
            machine.verdict = vm::verdict::REJECT;
            return 1;
        };
        let insn = *insn;
        if !vm::step(machine, &insn, &state.reader) {
            return 1;
        }
    }
    0
}

/// The session's rate limit: true if a copy of `bytes` fits its budget now,
/// which it is then charged. GCRA on each bucket: a bucket's "theoretical
/// arrival time" advances by each copy's cost; a copy conforms while that
/// time is at most the tolerance (the burst) ahead of now.
#[inline(always)]
pub(crate) fn within_rate(session_id: u32, selector: &Selector, bytes: u32) -> bool {
    let Some(state) = RATE_STATE.get_ptr_mut(session_id) else { return true };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let packet_cost = selector.ns_per_packet;
    // Rounded up: at high byte rates a small copy costs less than 1 ns, and
    // must still cost something.
    let byte_cost = (u64::from(bytes) * selector.ns_per_byte_fp16 + 0xffff) >> 16;
    let limits_bytes = selector.ns_per_byte_fp16 != 0;
    // SAFETY: array value pointers stay valid for the program's run; every
    // CPU reads and advances them, with atomic adds.
    unsafe {
        let packets = &raw mut (*state).packets_tat_ns;
        let bytes_tat = &raw mut (*state).bytes_tat_ns;
        if packet_cost != 0 && ahead(packets, now) > selector.packet_tolerance_ns {
            return false;
        }
        if limits_bytes && ahead(bytes_tat, now) > selector.byte_tolerance_ns {
            return false;
        }
        if packet_cost != 0 {
            charge(packets, now, packet_cost);
        }
        if limits_bytes {
            charge(bytes_tat, now, byte_cost);
        }
    }
    true
}

/// How far the bucket's time runs ahead of now.
///
/// # Safety
/// `tat` points into a live map value.
#[inline(always)]
unsafe fn ahead(tat: *mut u64, now: u64) -> u64 {
    // SAFETY: the caller's.
    let t = unsafe { core::ptr::read_volatile(tat) };
    t.saturating_sub(now)
}

/// Advances the bucket by `cost`: from now if it fell behind (idle), else
/// from where it is. Two CPUs restarting an idle bucket at once may lose
/// one charge; an accepted imprecision of one copy.
///
/// # Safety
/// `tat` points into a live map value.
#[inline(always)]
unsafe fn charge(tat: *mut u64, now: u64, cost: u64) {
    // SAFETY: the caller's; 8-byte aligned (a `u64` field of a map value).
    unsafe {
        if core::ptr::read_volatile(tat) < now {
            core::ptr::write_volatile(tat, now + cost);
        } else {
            // An atomic add (BPF_ATOMIC | BPF_ADD): `core`'s atomics have no
            // read-modify-write on the BPF target.
            core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) tat, in(reg) cost);
        }
    }
}
