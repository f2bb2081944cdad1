//! The per-CPU `VIEW`: the packet as filters see it, and the hand-off
//! between a hook and the native filter programs it tail-calls.
//!
//! Shared because the agent generates native filter programs that read it
//! at fixed offsets ([`offsets`]).
use crate::{filter, parse::Fields, vm::Machine};

/// Bytes of [`View::header`]: the frame's head, plus a slack of 4 so that
/// a 4-byte read at any masked offset stays inside.
pub const HEADER_SPACE: usize = filter::HEADER_BYTES as usize + 4;

/// Native filters one hook run can chain: one per slot.
pub const NATIVE_CHAIN: usize = crate::MAX_SESSIONS_PER_SOURCE;

/// `VIEW` value (one element, per CPU).
#[repr(C)]
#[allow(missing_debug_implementations, reason = "kernel scratch; never printed")]
pub struct View {
    /// Bumped by each hook run that selects: the number of the run.
    pub run_counter: u64,
    /// The sampling generator's state (xorshift64*), per CPU; seeded from
    /// the kernel's generator on first use.
    pub prng: u64,
    /// The run whose packet `header` holds (a nested run, the copy of a
    /// copy sent from inside our `bpf_clone_redirect`, takes the view over:
    /// the outer run then finds another number, and fills it again).
    pub filled_run: u64,
    /// The run whose packet `fields` hold.
    pub parsed_run: u64,
    /// The run in which an exclusive slot took the packet.
    pub claimed_run: u64,
    /// Bytes of the frame as on the wire.
    pub len: u32,
    /// Bytes of it in `header`.
    pub header_len: u32,
    /// Whether the outer tag is in metadata, and that tag as on the wire.
    pub has_tag: u32,
    pub tag: u32,
    pub fields: Fields,
    /// The filter machine's registers. In map memory, not on the stack: the
    /// verifier tracks stack values, and would check `step` once per
    /// combination of known and unknown registers and scratch words.
    pub machine: Machine,
    /// The native filters' chain of the run in progress.
    pub native: NativeRun,
    pub header: [u8; HEADER_SPACE],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<View>().is_multiple_of(8));

/// A hook's chain of native filter programs, per CPU.
///
/// The hook fills the view, writes the chain and, from a function it
/// calls, tail-calls the chain's first program. Each program decides its
/// slot, then tail-calls the next; the last one returns the run's number,
/// and (a tail call made from a function replaces only that function) the
/// hook goes on from where it called, with these verdicts. Nothing else
/// runs on the CPU in between: no program of the chain transmits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeRun {
    /// Programs in `chain`.
    pub count: u32,
    /// The one running (index into `chain`).
    pub next: u32,
    /// Slots (bit = slot index) whose program decided; the others run the
    /// interpreter (a program that could not read a byte defers to it).
    pub decided: u32,
    /// Slots whose program accepted.
    pub accepted: u32,
    /// Whether some program of the chain reads parsed fields (while the
    /// chain is written).
    pub fields: u32,
    pub _pad: u32,
    /// The hook's selection run: what the verdicts are for, and what the
    /// chain's last program returns.
    pub run: u64,
    /// Per program: its `NATIVE_FILTERS` index (the selector's) in the low
    /// 16 bits, its slot above.
    pub chain: [u32; NATIVE_CHAIN],
}
const _: () = assert!(size_of::<NativeRun>() == 64);

/// `NATIVE_FILTERS` (a program array): a selector's index holds its native
/// program.
pub mod native_index {
    /// Entries of the array.
    pub const ENTRIES: u32 = crate::SELECTOR_BANKS;
    /// [`super::NativeRun::chain`]: the program index and the slot.
    pub const INDEX_MASK: u32 = 0xffff;
    pub const SLOT_SHIFT: u32 = 16;
}

/// Byte offsets into [`View`], for generated code.
pub mod offsets {
    use super::{NativeRun, View};
    use core::mem::offset_of;

    pub const LEN: i16 = offset_of!(View, len) as i16;
    pub const HEADER_LEN: i16 = offset_of!(View, header_len) as i16;
    pub const FIELDS: i16 = offset_of!(View, fields) as i16;
    pub const HEADER: i16 = offset_of!(View, header) as i16;
    const NATIVE: usize = offset_of!(View, native);
    pub const NATIVE_COUNT: i16 = (NATIVE + offset_of!(NativeRun, count)) as i16;
    pub const NATIVE_NEXT: i16 = (NATIVE + offset_of!(NativeRun, next)) as i16;
    pub const NATIVE_DECIDED: i16 = (NATIVE + offset_of!(NativeRun, decided)) as i16;
    pub const NATIVE_ACCEPTED: i16 = (NATIVE + offset_of!(NativeRun, accepted)) as i16;
    pub const NATIVE_RUN: i16 = (NATIVE + offset_of!(NativeRun, run)) as i16;
    pub const NATIVE_CHAIN: i16 = (NATIVE + offset_of!(NativeRun, chain)) as i16;

    const _: () = assert!(size_of::<View>() < i16::MAX as usize);
}
