//! Native code for a filter program: the machine's instructions
//! ([`mirror_common::filter`]) translated to eBPF, loaded as one small tc
//! program per selector bank and reached by tail call from the hook (see
//! [`mirror_common::view::NativeRun`]). The interpreter stays the reference
//! and the fallback: the generated code has the machine's exact semantics
//! on the bytes at hand, and defers to the interpreter for a packet whose
//! bytes it does not hold. A program without parsed fields reads the packet
//! itself ([`Source::Packet`]; bytes past its linear part, or a frame whose
//! tag is in metadata, defer); one with them reads the view the hook
//! filled and parsed ([`Source::View`]; bytes past its first
//! [`filter::HEADER_BYTES`] defer).
//!
//! Registers: `r6` the view, `r7` the machine's `A`, `r8` its `X`, `r9`
//! the context, `r4`/`r5` the packet's data and end; `M[]` lives on the
//! stack. Every jump goes forward, as in the machine, so the verifier walks
//! each program once.
use std::collections::BTreeMap;

use mirror_common::{
    FilterInsn, field,
    filter::{self, MEMWORDS, alu, cmp, op},
    view::offsets,
};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl BpfInsn {
    pub fn dst(&self) -> u8 {
        self.regs & 0xf
    }
    pub fn src(&self) -> u8 {
        self.regs >> 4
    }
}

/// Map file descriptors the generated code refers to.
#[derive(Clone, Copy, Debug)]
pub struct Maps {
    /// `VIEW` (per-CPU array).
    pub view: i32,
    /// `NATIVE_FILTERS` (program array).
    pub native: i32,
}

/// eBPF encoding constants (`linux/bpf.h`, `linux/bpf_common.h`).
pub mod code {
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;

    pub const W: u8 = 0x00;
    pub const H: u8 = 0x08;
    pub const B: u8 = 0x10;
    pub const DW: u8 = 0x18;
    pub const IMM: u8 = 0x00;
    pub const MEM: u8 = 0x60;

    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;

    pub const ADD: u8 = 0x00;
    pub const SUB: u8 = 0x10;
    pub const MUL: u8 = 0x20;
    pub const DIV: u8 = 0x30;
    pub const OR: u8 = 0x40;
    pub const AND: u8 = 0x50;
    pub const LSH: u8 = 0x60;
    pub const RSH: u8 = 0x70;
    pub const NEG: u8 = 0x80;
    pub const MOD: u8 = 0x90;
    pub const XOR: u8 = 0xa0;
    pub const MOV: u8 = 0xb0;
    pub const END: u8 = 0xd0;
    /// `BPF_END` source bit: to big-endian.
    pub const TO_BE: u8 = 0x08;

    pub const JA: u8 = 0x00;
    pub const JEQ: u8 = 0x10;
    pub const JGT: u8 = 0x20;
    pub const JGE: u8 = 0x30;
    pub const JSET: u8 = 0x40;
    pub const JNE: u8 = 0x50;
    pub const JLT: u8 = 0xa0;
    pub const CALL: u8 = 0x80;
    pub const EXIT: u8 = 0x90;

    /// `src_reg` of a 64-bit immediate load holding a map's fd.
    pub const PSEUDO_MAP_FD: u8 = 1;

    pub const FN_MAP_LOOKUP_ELEM: i32 = 1;
    pub const FN_TAIL_CALL: i32 = 12;
}

use code as c;

const VIEW: u8 = 6;
const A: u8 = 7;
const X: u8 = 8;
const CTX: u8 = 9;
const FP: u8 = 10;
/// [`Source::Packet`]: the packet's data and its end (no helper is called
/// before the epilogue, which uses them no more).
const DATA: u8 = 4;
const DATA_END: u8 = 5;
/// `struct __sk_buff` offsets.
const SKB_LEN: i16 = 0;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Largest offset into the packet the verifier lets a pointer take.
const MAX_PACKET_OFF: u32 = 0xffff;
/// Where `M[0]` is on the stack (below the lookup key at `fp - 4`).
const MEM_BASE: i16 = -8 - 4 * MEMWORDS as i16;

/// Where a jump goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    Insn(u32),
    Accept,
    Reject,
    /// The bytes are in the frame but not in the view: the interpreter
    /// decides.
    Defer,
    /// Out of line: a load ending at this byte is past the bytes at hand.
    Past(u32),
    /// Out of line: an indirect load ending at `r1` is.
    PastR1,
    Decided,
    Advance,
    Back,
    Out,
}

/// Outcomes in `A` at [`Label::Decided`].
const REJECTED: i32 = 0;
const ACCEPTED: i32 = 1;
const DEFERRED: i32 = 2;

struct Emitter {
    insns: Vec<BpfInsn>,
    labels: BTreeMap<Label, usize>,
    /// (instruction, target) of every jump, patched at the end.
    fixups: Vec<(usize, Label)>,
    past: Vec<u32>,
    source: Source,
}

/// Where a program's loads read the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The packet itself (direct packet access): no copy into the view.
    /// A frame whose outer tag is in metadata (its bytes are not where the
    /// program's offsets say) goes to the interpreter.
    Packet,
    /// The view the hook filled (and parsed): programs that read parsed
    /// fields, which the parse leaves there.
    View,
}

impl Source {
    /// Where `program` reads: the view if it reads parsed fields.
    pub fn of(program: &[FilterInsn]) -> Self {
        if program.iter().any(|i| matches!(i.op, op::LD_FIELD | op::TEST_FIELD)) {
            Self::View
        } else {
            Self::Packet
        }
    }
}

impl Emitter {
    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(BpfInsn { code, regs: dst | src << 4, off, imm });
    }

    fn label(&mut self, label: Label) {
        self.labels.insert(label, self.insns.len());
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(code, dst, src, 0, imm);
    }

    fn goto(&mut self, to: Label) {
        self.jump(c::JMP | c::JA, 0, 0, 0, to);
    }

    fn mov32_imm(&mut self, dst: u8, imm: u32) {
        self.raw(c::ALU | c::MOV | c::K, dst, 0, 0, imm as i32);
    }

    fn mov64_reg(&mut self, dst: u8, src: u8) {
        self.raw(c::ALU64 | c::MOV | c::X, dst, src, 0, 0);
    }

    fn load_u32(&mut self, dst: u8, base: u8, off: i16) {
        self.raw(c::LDX | c::MEM | c::W, dst, base, off, 0);
    }

    fn store_u32(&mut self, base: u8, off: i16, src: u8) {
        self.raw(c::STX | c::MEM | c::W, base, src, off, 0);
    }

    fn map_fd(&mut self, dst: u8, fd: i32) {
        self.raw(c::LD | c::DW | c::IMM, dst, c::PSEUDO_MAP_FD, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }

    fn call(&mut self, helper: i32) {
        self.raw(c::JMP | c::CALL, 0, 0, 0, helper);
    }

    /// `dst = frame[k:size]` (big-endian), or off to `Reject` (past the
    /// frame) or `Defer` (past the bytes at hand).
    fn load_abs(&mut self, dst: u8, k: u32, size: u32) {
        if !matches!(size, 1 | 2 | 4) {
            return self.goto(Label::Reject);
        }
        let end = u64::from(k) + u64::from(size);
        let Ok(end) = u32::try_from(end) else { return self.goto(Label::Reject) };
        if !self.past.contains(&end) {
            self.past.push(end);
        }
        match self.source {
            Source::View => {
                if end > filter::HEADER_BYTES {
                    return self.goto(Label::Past(end));
                }
                self.load_u32(0, VIEW, offsets::HEADER_LEN);
                self.jump(c::JMP32 | c::JLT | c::K, 0, 0, end as i32, Label::Past(end));
                self.load_sized(dst, VIEW, offsets::HEADER + k as i16, size);
            }
            Source::Packet => {
                if end > MAX_PACKET_OFF {
                    return self.goto(Label::Past(end));
                }
                self.mov64_reg(0, DATA);
                self.raw(c::ALU64 | c::ADD | c::K, 0, 0, 0, end as i32);
                self.jump(c::JMP | c::JGT | c::X, 0, DATA_END, 0, Label::Past(end));
                match i16::try_from(k) {
                    Ok(off) => self.load_sized(dst, DATA, off, size),
                    Err(_) => {
                        self.mov64_reg(0, DATA);
                        self.raw(c::ALU64 | c::ADD | c::K, 0, 0, 0, k as i32);
                        self.load_sized(dst, 0, 0, size);
                    }
                }
            }
        }
    }

    /// `dst = frame[X + k:size]`, as [`Self::load_abs`].
    fn load_ind(&mut self, dst: u8, k: u32, size: u32) {
        if !matches!(size, 1 | 2 | 4) {
            return self.goto(Label::Reject);
        }
        // In 64 bits: `X + k` cannot wrap, and past 2^32 it is past the
        // frame. `r1` holds where the load ends, for `PastR1`.
        self.raw(c::ALU | c::MOV | c::X, 0, X, 0, 0);
        self.mov32_imm(1, k);
        self.raw(c::ALU64 | c::ADD | c::X, 0, 1, 0, 0);
        self.mov64_reg(1, 0);
        self.raw(c::ALU64 | c::ADD | c::K, 1, 0, 0, size as i32);
        match self.source {
            Source::View => {
                self.load_u32(2, VIEW, offsets::HEADER_LEN);
                self.jump(c::JMP | c::JGT | c::X, 1, 2, 0, Label::PastR1);
                // Never taken (the view holds at most HEADER_BYTES): bounds
                // the offset for the verifier.
                self.jump(c::JMP | c::JGT | c::K, 0, 0, (filter::HEADER_BYTES - size) as i32, Label::PastR1);
                self.raw(c::ALU64 | c::ADD | c::X, 0, VIEW, 0, 0);
                self.load_sized(dst, 0, offsets::HEADER, size);
            }
            Source::Packet => {
                // Bounds the offset for the verifier (packet offsets are 16-bit).
                self.jump(c::JMP | c::JGT | c::K, 0, 0, (MAX_PACKET_OFF - size) as i32, Label::PastR1);
                self.mov64_reg(2, DATA);
                self.raw(c::ALU64 | c::ADD | c::X, 2, 0, 0, 0);
                self.mov64_reg(3, 2);
                self.raw(c::ALU64 | c::ADD | c::K, 3, 0, 0, size as i32);
                self.jump(c::JMP | c::JGT | c::X, 3, DATA_END, 0, Label::PastR1);
                self.load_sized(dst, 2, 0, size);
            }
        }
    }

    /// `dst` = the frame's length.
    fn load_len(&mut self, dst: u8) {
        match self.source {
            Source::View => self.load_u32(dst, VIEW, offsets::LEN),
            Source::Packet => self.load_u32(dst, CTX, SKB_LEN),
        }
    }

    fn load_sized(&mut self, dst: u8, base: u8, off: i16, size: u32) {
        let width = match size {
            1 => c::B,
            2 => c::H,
            _ => c::W,
        };
        self.raw(c::LDX | c::MEM | width, dst, base, off, 0);
        if size > 1 {
            self.raw(c::ALU | c::END | c::TO_BE, dst, 0, 0, 8 * size as i32);
        }
    }

    fn load_field(&mut self, dst: u8, index: u32) {
        if index < field::COUNT {
            self.load_u32(dst, VIEW, offsets::FIELDS + 4 * index as i16);
        } else {
            self.mov32_imm(dst, 0);
        }
    }

    /// `if A <how> operand goto jt else goto jf` (32-bit, unsigned).
    fn branch(&mut self, how: u8, operand: Operand, jt: Label, jf: Label, next: Label) {
        let test = match how {
            cmp::EQ => c::JEQ,
            cmp::GT => c::JGT,
            cmp::GE => c::JGE,
            _ => c::JSET,
        };
        match operand {
            Operand::K(k) => self.jump(c::JMP32 | test | c::K, A, 0, k as i32, jt),
            Operand::X => self.jump(c::JMP32 | test | c::X, A, X, 0, jt),
        }
        if jf != next {
            self.goto(jf);
        }
    }

    fn alu(&mut self, operation: u8, operand: Operand) {
        let (source, imm, src) = match operand {
            Operand::K(k) => (c::K, k as i32, 0),
            Operand::X => (c::X, 0, X),
        };
        let bpf_op = match operation {
            alu::ADD => c::ADD,
            alu::SUB => c::SUB,
            alu::MUL => c::MUL,
            alu::AND => c::AND,
            alu::OR => c::OR,
            alu::XOR => c::XOR,
            alu::NEG => return self.raw(c::ALU | c::NEG, A, 0, 0, 0),
            alu::DIV | alu::MOD => {
                match operand {
                    Operand::K(0) => return self.goto(Label::Reject),
                    Operand::K(_) => {}
                    Operand::X => self.jump(c::JMP32 | c::JEQ | c::K, X, 0, 0, Label::Reject),
                }
                if operation == alu::DIV { c::DIV } else { c::MOD }
            }
            alu::LSH | alu::RSH => {
                let shift = if operation == alu::LSH { c::LSH } else { c::RSH };
                match operand {
                    Operand::K(k) if k >= 32 => return self.mov32_imm(A, 0),
                    Operand::K(_) => {}
                    Operand::X => {
                        // Shifts by 32 or more give 0, as in the machine.
                        self.raw(c::JMP32 | c::JLT | c::K, X, 0, 2, 32);
                        self.mov32_imm(A, 0);
                        self.raw(c::JMP | c::JA, 0, 0, 1, 0);
                    }
                }
                shift
            }
            _ => return self.goto(Label::Reject),
        };
        self.raw(c::ALU | bpf_op | source, A, src, 0, imm);
    }

    fn finish(mut self) -> Vec<BpfInsn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[&label];
            let off = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).expect("programs are far shorter than 32k instructions");
        }
        self.insns
    }
}

#[derive(Clone, Copy)]
enum Operand {
    K(u32),
    X,
}

fn mem_offset(k: u32) -> i16 {
    MEM_BASE + 4 * (k & (MEMWORDS - 1)) as i16
}

/// The native program of `program`: decides its slot in the hook's chain,
/// then tail-calls the next program of the chain or, at its end, returns
/// the run's number to the hook.
pub fn generate(program: &[FilterInsn], maps: Maps) -> Vec<BpfInsn> {
    let source = Source::of(program);
    let mut e =
        Emitter { insns: Vec::new(), labels: BTreeMap::new(), fixups: Vec::new(), past: Vec::new(), source };
    // The view, from the per-CPU map.
    e.mov64_reg(CTX, 1);
    e.raw(c::ST | c::MEM | c::W, FP, 0, -4, 0);
    e.mov64_reg(2, FP);
    e.raw(c::ALU64 | c::ADD | c::K, 2, 0, 0, -4);
    e.map_fd(1, maps.view);
    e.call(c::FN_MAP_LOOKUP_ELEM);
    e.jump(c::JMP | c::JEQ | c::K, 0, 0, 0, Label::Out);
    e.mov64_reg(VIEW, 0);
    e.mov32_imm(A, 0);
    e.mov32_imm(X, 0);
    if source == Source::Packet {
        e.load_u32(0, CTX, SKB_VLAN_PRESENT);
        e.jump(c::JMP32 | c::JNE | c::K, 0, 0, 0, Label::Defer);
        e.load_u32(DATA, CTX, SKB_DATA);
        e.load_u32(DATA_END, CTX, SKB_DATA_END);
    }
    let uses_mem = program.iter().any(|i| matches!(i.op, op::LD_MEM | op::LDX_MEM | op::ST | op::STX));
    if uses_mem {
        for word in (0..MEMWORDS as i16).step_by(2) {
            e.raw(c::ST | c::MEM | c::DW, FP, 0, MEM_BASE + 4 * word, 0);
        }
    }
    let len = program.len() as u32;
    let at = |pc: u64| if pc < u64::from(len) { Label::Insn(pc as u32) } else { Label::Reject };
    for (pc, insn) in program.iter().enumerate() {
        let pc = pc as u32;
        e.label(Label::Insn(pc));
        let next = u64::from(pc) + 1;
        let jt = at(next + u64::from(insn.jt));
        let jf = at(next + u64::from(insn.jf));
        let fall = at(next);
        let k = insn.k;
        match insn.op {
            op::TEST_ABS | op::TEST_IND | op::TEST_FIELD => {
                let size = u32::from(insn.arg & 0x7);
                match insn.op {
                    op::TEST_ABS => e.load_abs(A, k, size),
                    op::TEST_IND => e.load_ind(A, k, size),
                    _ => e.load_field(A, k),
                }
                if insn.mask != u32::MAX {
                    e.raw(c::ALU | c::AND | c::K, A, 0, 0, insn.mask as i32);
                }
                e.branch(insn.arg >> 4, Operand::K(insn.val), jt, jf, fall);
            }
            op::JMP_K => e.branch(insn.arg, Operand::K(k), jt, jf, fall),
            op::JMP_X => e.branch(insn.arg, Operand::X, jt, jf, fall),
            op::JEQ_ANY => {
                let n = insn.arg;
                if n == 0 || n > 3 {
                    e.goto(Label::Reject);
                    continue;
                }
                for value in [k, insn.mask, insn.val].into_iter().take(usize::from(n)) {
                    e.jump(c::JMP32 | c::JEQ | c::K, A, 0, value as i32, jt);
                }
                if jf != fall {
                    e.goto(jf);
                }
            }
            op::JA => e.goto(at(next + u64::from(k))),
            op::LD_ABS => e.load_abs(A, k, u32::from(insn.arg)),
            op::LD_IND => e.load_ind(A, k, u32::from(insn.arg)),
            op::LD_LEN => e.load_len(A),
            op::LD_IMM => e.mov32_imm(A, k),
            op::LD_MEM => e.load_u32(A, FP, mem_offset(k)),
            op::LD_FIELD => e.load_field(A, k),
            op::LDX_IMM => e.mov32_imm(X, k),
            op::LDX_MEM => e.load_u32(X, FP, mem_offset(k)),
            op::LDX_LEN => e.load_len(X),
            op::LDX_MSH => {
                e.load_abs(X, k, 1);
                e.raw(c::ALU | c::AND | c::K, X, 0, 0, 0xf);
                e.raw(c::ALU | c::LSH | c::K, X, 0, 0, 2);
            }
            op::ST => e.store_u32(FP, mem_offset(k), A),
            op::STX => e.store_u32(FP, mem_offset(k), X),
            op::ALU_K => e.alu(insn.arg, Operand::K(k)),
            op::ALU_X => e.alu(insn.arg, Operand::X),
            op::TAX => e.raw(c::ALU | c::MOV | c::X, X, A, 0, 0),
            op::TXA => e.raw(c::ALU | c::MOV | c::X, A, X, 0, 0),
            op::RET_K => e.goto(if k != 0 { Label::Accept } else { Label::Reject }),
            op::RET_A => {
                e.jump(c::JMP32 | c::JNE | c::K, A, 0, 0, Label::Accept);
                e.goto(Label::Reject);
            }
            _ => e.goto(Label::Reject),
        }
    }
    // Running off the end rejects, as in the machine. Every block below
    // comes after what jumps to it: all jumps go forward.
    e.goto(Label::Reject);
    for end in std::mem::take(&mut e.past) {
        e.label(Label::Past(end));
        e.load_len(0);
        e.jump(c::JMP32 | c::JLT | c::K, 0, 0, end as i32, Label::Reject);
        e.goto(Label::Defer);
    }
    e.label(Label::PastR1);
    e.load_len(2);
    e.jump(c::JMP | c::JGT | c::X, 1, 2, 0, Label::Reject);
    e.goto(Label::Defer);
    e.label(Label::Reject);
    e.mov32_imm(A, REJECTED as u32);
    e.goto(Label::Decided);
    e.label(Label::Accept);
    e.mov32_imm(A, ACCEPTED as u32);
    e.goto(Label::Decided);
    e.label(Label::Defer);
    e.mov32_imm(A, DEFERRED as u32);
    epilogue(&mut e, maps);
    strip_unreachable(&e.finish())
}

/// Whether `insn` is a jump with an offset (not a call or exit).
fn is_jump(insn: &BpfInsn) -> bool {
    let class = insn.code & 0x07;
    let op = insn.code & 0xf0;
    (class == c::JMP || class == c::JMP32) && op != c::CALL && op != c::EXIT
}

/// `insns` without the instructions no path reaches (the verifier refuses
/// them): blocks of exits a program never takes, machine instructions
/// nothing jumps to. Jump offsets are recomputed.
pub fn strip_unreachable(insns: &[BpfInsn]) -> Vec<BpfInsn> {
    let n = insns.len();
    let mut reached = vec![false; n];
    let mut todo = vec![0usize];
    while let Some(at) = todo.pop() {
        if at >= n || reached[at] {
            continue;
        }
        reached[at] = true;
        let insn = &insns[at];
        let wide = insn.code == (c::LD | c::DW | c::IMM);
        if wide && at + 1 < n {
            reached[at + 1] = true;
        }
        let op = insn.code & 0xf0;
        let class = insn.code & 0x07;
        if is_jump(insn) {
            todo.push((at as i64 + 1 + i64::from(insn.off)) as usize);
            if !(class == c::JMP && op == c::JA) {
                todo.push(at + 1);
            }
        } else if !(class == c::JMP && op == c::EXIT) {
            todo.push(at + if wide { 2 } else { 1 });
        }
    }
    // New index of each kept instruction.
    let mut new_at = vec![0usize; n + 1];
    let mut kept = 0;
    for (i, r) in reached.iter().enumerate() {
        new_at[i] = kept;
        if *r {
            kept += 1;
        }
    }
    new_at[n] = kept;
    let mut out = Vec::with_capacity(kept);
    for (i, insn) in insns.iter().enumerate() {
        if !reached[i] {
            continue;
        }
        let mut insn = *insn;
        if is_jump(&insn) {
            let target = (i as i64 + 1 + i64::from(insn.off)) as usize;
            insn.off = (new_at[target] as i64 - new_at[i] as i64 - 1) as i16;
        }
        out.push(insn);
    }
    out
}

/// Records the outcome (in `A`) for this program's slot, then tail-calls
/// the chain's next program, or the hook at its end.
fn epilogue(e: &mut Emitter, maps: Maps) {
    e.label(Label::Decided);
    e.load_u32(3, VIEW, offsets::NATIVE_NEXT);
    e.jump(c::JMP | c::JGT | c::K, 3, 0, (mirror_common::view::NATIVE_CHAIN - 1) as i32, Label::Back);
    chain_entry(e, 4, 3);
    e.raw(c::ALU | c::RSH | c::K, 4, 0, 0, mirror_common::view::native_index::SLOT_SHIFT as i32);
    e.raw(c::ALU | c::AND | c::K, 4, 0, 0, (mirror_common::view::NATIVE_CHAIN - 1) as i32);
    e.mov32_imm(5, 1);
    e.raw(c::ALU | c::LSH | c::X, 5, 4, 0, 0);
    e.jump(c::JMP | c::JEQ | c::K, A, 0, DEFERRED, Label::Advance);
    e.load_u32(0, VIEW, offsets::NATIVE_DECIDED);
    e.raw(c::ALU | c::OR | c::X, 0, 5, 0, 0);
    e.store_u32(VIEW, offsets::NATIVE_DECIDED, 0);
    e.jump(c::JMP | c::JEQ | c::K, A, 0, REJECTED, Label::Advance);
    e.load_u32(0, VIEW, offsets::NATIVE_ACCEPTED);
    e.raw(c::ALU | c::OR | c::X, 0, 5, 0, 0);
    e.store_u32(VIEW, offsets::NATIVE_ACCEPTED, 0);
    e.label(Label::Advance);
    e.raw(c::ALU | c::ADD | c::K, 3, 0, 0, 1);
    e.store_u32(VIEW, offsets::NATIVE_NEXT, 3);
    e.load_u32(0, VIEW, offsets::NATIVE_COUNT);
    e.jump(c::JMP | c::JGE | c::X, 3, 0, 0, Label::Back);
    e.jump(c::JMP | c::JGT | c::K, 3, 0, (mirror_common::view::NATIVE_CHAIN - 1) as i32, Label::Back);
    chain_entry(e, 3, 3);
    e.raw(c::ALU | c::AND | c::K, 3, 0, 0, mirror_common::view::native_index::INDEX_MASK as i32);
    e.mov64_reg(1, CTX);
    e.map_fd(2, maps.native);
    e.call(c::FN_TAIL_CALL);
    // The chain's end, or no next program (being replaced): back to the
    // hook, which called the function that made the first tail call and
    // goes on from there with the run this returns; the interpreter
    // decides the slots no program did.
    e.label(Label::Back);
    e.raw(c::LDX | c::MEM | c::DW, 0, VIEW, offsets::NATIVE_RUN, 0);
    e.raw(c::JMP | c::EXIT, 0, 0, 0, 0);
    // No view: run 0, for which the hook's slots select nothing they
    // cannot judge.
    e.label(Label::Out);
    e.mov32_imm(0, 0);
    e.raw(c::JMP | c::EXIT, 0, 0, 0, 0);
}

/// `dst = chain[index]` (`index` already bounded to the chain).
fn chain_entry(e: &mut Emitter, dst: u8, index: u8) {
    e.mov64_reg(dst, index);
    e.raw(c::ALU64 | c::LSH | c::K, dst, 0, 0, 2);
    e.raw(c::ALU64 | c::ADD | c::X, dst, VIEW, 0, 0);
    e.load_u32(dst, dst, offsets::NATIVE_CHAIN);
}

/// A plain interpreter of the eBPF this module generates, so that property
/// tests hold the generated code to the machine on random programs and
/// packets without a kernel. It knows the instructions [`generate`] emits
/// and the two helpers it calls, no more.
#[cfg(any(test, feature = "emulate"))]
pub mod emulate {
    use mirror_common::view::{View, native_index, offsets};

    use super::{BpfInsn, Maps, c};

    const VIEW_BASE: u64 = 1 << 40;
    const STACK_BASE: u64 = 2 << 40;
    const STACK: usize = 512;
    const CTX: u64 = 3 << 40;
    pub const MAPS: Maps = Maps { view: 100, native: 101 };

    /// How a run ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Exit {
        Returned(u64),
        /// A tail call into `NATIVE_FILTERS[index]` (taken to succeed).
        TailCall(u32),
    }

    const PKT_BASE: u64 = 5 << 40;

    struct Cpu<'a> {
        view: &'a mut [u8],
        stack: [u8; STACK],
        packet: &'a [u8],
        /// Bytes of `packet` in its linear part (`data_end`).
        linear: usize,
        vlan_present: u32,
    }

    impl Cpu<'_> {
        fn mem(&mut self, addr: u64, size: usize) -> &mut [u8] {
            let (region, base): (&mut [u8], u64) = if (STACK_BASE..STACK_BASE + STACK as u64).contains(&addr)
            {
                (&mut self.stack, STACK_BASE)
            } else {
                assert!((VIEW_BASE..VIEW_BASE + (1 << 20)).contains(&addr), "stray address {addr:#x}");
                (&mut *self.view, VIEW_BASE)
            };
            let at = (addr - base) as usize;
            &mut region[at..at + size]
        }

        fn load(&mut self, addr: u64, size: usize) -> u64 {
            if (CTX..CTX + 192).contains(&addr) {
                assert_eq!(size, 4, "context fields are read as 32 bits");
                return match addr - CTX {
                    0 => self.packet.len() as u64,
                    20 => u64::from(self.vlan_present),
                    76 => PKT_BASE,
                    80 => PKT_BASE + self.linear as u64,
                    other => panic!("context field at {other}"),
                };
            }
            if (PKT_BASE..PKT_BASE + (1 << 20)).contains(&addr) {
                let at = (addr - PKT_BASE) as usize;
                assert!(at + size <= self.linear, "a read past data_end at {at}+{size}");
                return self.packet[at..at + size].iter().rev().fold(0, |v, b| v << 8 | u64::from(*b));
            }
            self.mem(addr, size).iter().rev().fold(0, |v, b| v << 8 | u64::from(*b))
        }

        fn store(&mut self, addr: u64, size: usize, value: u64) {
            for (i, b) in self.mem(addr, size).iter_mut().enumerate() {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    /// The packet as the program's context shows it.
    #[derive(Debug)]
    pub struct Skb<'a> {
        pub bytes: &'a [u8],
        pub linear: usize,
        pub vlan_present: u32,
    }

    /// Runs `insns` with `view` as the per-CPU view, on `skb`.
    pub fn run(insns: &[BpfInsn], view: &mut [u8], skb: &Skb<'_>) -> Exit {
        let mut cpu = Cpu {
            view,
            stack: [0; STACK],
            packet: skb.bytes,
            linear: skb.linear,
            vlan_present: skb.vlan_present,
        };
        let mut r = [0u64; 11];
        r[1] = CTX;
        r[10] = STACK_BASE + STACK as u64;
        let mut pc = 0usize;
        for _ in 0..100_000 {
            let i = insns[pc];
            let (dst, src) = (usize::from(i.dst()), usize::from(i.src()));
            let class = i.code & 0x07;
            let op = i.code & 0xf0;
            let imm64 = i64::from(i.imm) as u64;
            pc += 1;
            match class {
                c::ALU | c::ALU64 => {
                    let wide = class == c::ALU64;
                    if op == c::END {
                        assert_eq!(i.code & c::TO_BE, c::TO_BE, "only conversions to big-endian");
                        let v = r[dst];
                        r[dst] = match i.imm {
                            16 => u64::from((v as u16).swap_bytes()),
                            32 => u64::from((v as u32).swap_bytes()),
                            _ => v.swap_bytes(),
                        };
                        continue;
                    }
                    let b = if i.code & c::X != 0 { r[src] } else { imm64 };
                    let a = r[dst];
                    let v = if wide { alu64(op, a, b) } else { u64::from(alu32(op, a as u32, b as u32)) };
                    r[dst] = v;
                }
                c::LDX => {
                    let size = width(i.code);
                    r[dst] = cpu.load(r[src].wrapping_add(i64::from(i.off) as u64), size);
                }
                c::ST => cpu.store(r[dst].wrapping_add(i64::from(i.off) as u64), width(i.code), imm64),
                c::STX => cpu.store(r[dst].wrapping_add(i64::from(i.off) as u64), width(i.code), r[src]),
                c::LD => {
                    assert_eq!(i.code, c::LD | c::DW | c::IMM);
                    assert_eq!(i.src(), c::PSEUDO_MAP_FD);
                    r[dst] = 4 << 40 | u64::from(i.imm as u32);
                    pc += 1;
                }
                c::JMP | c::JMP32 => match op {
                    c::EXIT => return Exit::Returned(r[0]),
                    c::CALL => {
                        match i.imm {
                            c::FN_MAP_LOOKUP_ELEM => {
                                assert_eq!(r[1], 4 << 40 | MAPS.view as u64, "looks up VIEW");
                                assert_eq!(cpu.load(r[2], 4), 0, "key 0");
                                r[0] = VIEW_BASE;
                            }
                            c::FN_TAIL_CALL => {
                                assert_eq!(r[1], CTX, "tail call with the context");
                                assert_eq!(r[2], 4 << 40 | MAPS.native as u64, "into NATIVE_FILTERS");
                                return Exit::TailCall(r[3] as u32);
                            }
                            other => panic!("helper {other}"),
                        }
                        // Helpers clobber r1-r5.
                        for reg in &mut r[1..=5] {
                            *reg = 0xdead_beef_dead_beef;
                        }
                    }
                    _ => {
                        let b = if i.code & c::X != 0 { r[src] } else { imm64 };
                        let a = r[dst];
                        let (a, b) =
                            if class == c::JMP32 { (a & 0xffff_ffff, b & 0xffff_ffff) } else { (a, b) };
                        let taken = match op {
                            c::JA => true,
                            c::JEQ => a == b,
                            c::JNE => a != b,
                            c::JGT => a > b,
                            c::JGE => a >= b,
                            c::JLT => a < b,
                            c::JSET => a & b != 0,
                            other => panic!("jump op {other:#x}"),
                        };
                        if taken {
                            assert!(i.off >= 0, "jumps go forward");
                            pc += i.off as usize;
                        }
                    }
                },
                other => panic!("class {other}"),
            }
        }
        panic!("no exit in 100 000 steps");
    }

    fn width(code: u8) -> usize {
        match code & 0x18 {
            c::B => 1,
            c::H => 2,
            c::W => 4,
            _ => 8,
        }
    }

    fn alu64(op: u8, a: u64, b: u64) -> u64 {
        match op {
            c::MOV => b,
            c::ADD => a.wrapping_add(b),
            c::SUB => a.wrapping_sub(b),
            c::MUL => a.wrapping_mul(b),
            c::AND => a & b,
            c::OR => a | b,
            c::XOR => a ^ b,
            c::LSH => a << (b & 63),
            c::RSH => a >> (b & 63),
            other => panic!("alu64 op {other:#x}"),
        }
    }

    fn alu32(op: u8, a: u32, b: u32) -> u32 {
        match op {
            c::MOV => b,
            c::ADD => a.wrapping_add(b),
            c::SUB => a.wrapping_sub(b),
            c::MUL => a.wrapping_mul(b),
            c::DIV => a.checked_div(b).unwrap_or(0),
            c::MOD => a.checked_rem(b).unwrap_or(a),
            c::AND => a & b,
            c::OR => a | b,
            c::XOR => a ^ b,
            c::LSH => a << (b & 31),
            c::RSH => a >> (b & 31),
            c::NEG => a.wrapping_neg(),
            other => panic!("alu op {other:#x}"),
        }
    }

    /// What the native code of `program` decides on `frame` (its first
    /// `linear` bytes in the packet's linear part): `Some(accept)`, or
    /// `None` if it left the packet to the interpreter, which it may only do
    /// for bytes it does not have. The program runs twice, as a hook's chain
    /// of two (slots 3 and 5): the first tail-calls the second, which
    /// returns; both must decide the same. A program that reads the packet
    /// finds the view's copy poisoned (the hook does not fill it for them).
    pub fn decide(
        program: &[mirror_common::FilterInsn],
        frame: &super::super::Frame<'_>,
        linear: usize,
    ) -> Option<bool> {
        let insns = super::generate(program, MAPS);
        let source = super::Source::of(program);
        let mut view = vec![0u8; size_of::<View>()];
        let put = |view: &mut [u8], off: i16, v: u32| {
            view[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
        };
        let bytes = frame.bytes;
        let head = bytes.len().min(mirror_common::filter::HEADER_BYTES as usize);
        match source {
            super::Source::View => {
                put(&mut view, offsets::LEN, bytes.len() as u32);
                put(&mut view, offsets::HEADER_LEN, head as u32);
                view[offsets::HEADER as usize..offsets::HEADER as usize + head]
                    .copy_from_slice(&bytes[..head]);
                for (i, f) in frame.fields().iter().enumerate() {
                    put(&mut view, offsets::FIELDS + 4 * i as i16, *f);
                }
                // Poison past the frame: the code must never read it.
                for b in &mut view[offsets::HEADER as usize + head..offsets::HEADER as usize + head + 4] {
                    *b = 0xa5;
                }
            }
            super::Source::Packet => {
                // Another packet's view: nothing here may decide.
                put(&mut view, offsets::LEN, 0xa5a5);
                put(&mut view, offsets::HEADER_LEN, 128);
                for b in &mut view[offsets::HEADER as usize..offsets::HEADER as usize + 132] {
                    *b = 0xa5;
                }
            }
        }
        const SELECTORS: [u32; 2] = [77, 78];
        const SLOTS: [u32; 2] = [3, 5];
        put(&mut view, offsets::NATIVE_COUNT, 2);
        for i in 0..2 {
            put(
                &mut view,
                offsets::NATIVE_CHAIN + 4 * i as i16,
                SELECTORS[i] | SLOTS[i] << native_index::SLOT_SHIFT | 0xa5 << 24,
            );
        }
        const RUN: u64 = 0x1234_5678_9abc;
        let at = offsets::NATIVE_RUN as usize;
        view[at..at + 8].copy_from_slice(&RUN.to_le_bytes());
        let skb = Skb { bytes: frame.bytes, linear: linear.min(frame.bytes.len()), vlan_present: 0 };
        // The first program tail-calls the next in the chain (the array
        // holds the same code at both indexes), which returns the run.
        assert_eq!(
            run(&insns, &mut view, &skb),
            Exit::TailCall(SELECTORS[1]),
            "on to the chain's next program"
        );
        assert_eq!(
            run(&insns, &mut view, &skb),
            Exit::Returned(RUN),
            "the chain's end returns the run to the hook"
        );
        let get = |off: i16| u32::from_le_bytes(view[off as usize..off as usize + 4].try_into().unwrap());
        assert_eq!(get(offsets::NATIVE_NEXT), 2);
        let (decided, accepted) = (get(offsets::NATIVE_DECIDED), get(offsets::NATIVE_ACCEPTED));
        let both = 1 << SLOTS[0] | 1 << SLOTS[1];
        assert_eq!(decided & !both, 0, "only the chain's slots");
        assert!(decided == 0 || decided == both, "the two runs disagree: {decided:#x}");
        assert_eq!(accepted & !decided, 0, "accepted only if decided");
        assert!(accepted == 0 || accepted == both, "the two runs disagree: {accepted:#x}");
        let verdict = (decided != 0).then_some(accepted != 0);
        let whole = match source {
            super::Source::View => frame.bytes.len() <= mirror_common::filter::HEADER_BYTES as usize,
            super::Source::Packet => linear >= frame.bytes.len(),
        };
        assert!(verdict.is_some() || !whole, "deferred a frame whose bytes it holds whole");
        verdict
    }
}

#[cfg(test)]
mod tests {
    use mirror_common::{
        FilterInsn,
        filter::{alu, cmp, op, test_arg},
        vm,
    };
    use proptest::prelude::*;

    use super::emulate;
    use crate::filter::Frame;

    fn insn(op: u8, arg: u8, jt: u8, jf: u8, k: u32) -> FilterInsn {
        FilterInsn { op, arg, jt, jf, k, mask: 0, val: 0 }
    }

    /// Random machine programs, not only what the compiler emits: every
    /// opcode, operand and jump the machine defines (forward, in range or
    /// off the end), and some it does not.
    fn program() -> impl Strategy<Value = Vec<FilterInsn>> {
        let k = prop_oneof![0u32..40, 0u32..160, Just(0), Just(31), Just(32), Just(33), any::<u32>()];
        let one = (0usize..24, 0u8..16, 0u8..6, 0u8..6, k, any::<u32>(), 0u32..300).prop_map(
            |(which, arg, jt, jf, k, mask, val)| {
                let ops = [
                    op::LD_ABS,
                    op::LD_IND,
                    op::LD_LEN,
                    op::LD_IMM,
                    op::LD_MEM,
                    op::LD_FIELD,
                    op::LDX_IMM,
                    op::LDX_MEM,
                    op::LDX_LEN,
                    op::LDX_MSH,
                    op::ST,
                    op::STX,
                    op::ALU_K,
                    op::ALU_X,
                    op::TAX,
                    op::TXA,
                    op::JA,
                    op::JMP_K,
                    op::JMP_X,
                    op::TEST_ABS,
                    op::TEST_IND,
                    op::TEST_FIELD,
                    op::JEQ_ANY,
                    op::RET_A,
                ];
                let op = ops[which];
                let arg = match op {
                    op::LD_ABS | op::LD_IND => [1, 2, 4, 3][usize::from(arg & 3)],
                    op::ALU_K | op::ALU_X => arg % 12,
                    op::JMP_K | op::JMP_X => arg & 3,
                    op::TEST_ABS | op::TEST_IND | op::TEST_FIELD => {
                        test_arg([1, 2, 4, 0][usize::from(arg & 3)], arg >> 2)
                    }
                    op::JEQ_ANY => arg % 5,
                    _ => arg,
                };
                let k = if op == op::JA { k % 4 } else { k };
                let (mask, val) = if op == op::JEQ_ANY { (val, mask & 0x1ff) } else { (mask | 0xff, val) };
                FilterInsn { op, arg, jt, jf, k, mask, val }
            },
        );
        (prop::collection::vec(one, 1..24), any::<bool>()).prop_map(|(mut p, accept)| {
            p.push(insn(op::RET_K, 0, 0, 0, u32::from(accept)));
            p
        })
    }

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0x45), any::<u8>()], 100..200),
        ]
    }

    proptest! {
        #![proptest_config(crate::filter::proptests::config())]

        #[test]
        fn native_code_decides_as_the_machine(
            program in program(),
            frames in prop::collection::vec((frame(), 0u32..2, prop_oneof![Just(usize::MAX), 0usize..200]), 8),
        ) {
            for (bytes, direction, linear) in &frames {
                let frame = Frame::new(bytes, *direction);
                let machine = vm::run(&program, &frame);
                if let Some(native) = emulate::decide(&program, &frame, *linear) {
                    prop_assert_eq!(native, machine, "on {:02x?} ({} linear): {:#?}", bytes, linear, program);
                }
            }
        }
    }

    #[test]
    fn corners_decide_as_the_machine() {
        let ret_a = insn(op::RET_A, 0, 0, 0, 0);
        let cases: Vec<Vec<FilterInsn>> = vec![
            // Division and modulo by a zero X reject.
            vec![insn(op::LD_IMM, 0, 0, 0, 7), insn(op::ALU_X, alu::DIV, 0, 0, 0), ret_a],
            vec![insn(op::LD_IMM, 0, 0, 0, 7), insn(op::ALU_X, alu::MOD, 0, 0, 0), ret_a],
            // Shifts by 32 or more give 0.
            vec![
                insn(op::LD_IMM, 0, 0, 0, 7),
                insn(op::LDX_IMM, 0, 0, 0, 32),
                insn(op::ALU_X, alu::LSH, 0, 0, 0),
                ret_a,
            ],
            vec![insn(op::LD_IMM, 0, 0, 0, 7), insn(op::ALU_K, alu::RSH, 0, 0, 40), ret_a],
            // A load past the frame rejects; one past the bytes at hand
            // (the linear part; for a program with fields, the view) defers.
            vec![insn(op::LD_ABS, 4, 0, 0, 150), ret_a],
            vec![insn(op::LD_FIELD, 0, 0, 0, 1), insn(op::LD_ABS, 1, 0, 0, 150), ret_a],
            vec![
                insn(op::LD_FIELD, 0, 0, 0, 1),
                insn(op::LDX_IMM, 0, 0, 0, 100),
                insn(op::LD_IND, 4, 0, 0, 26),
                ret_a,
            ],
            // Offsets past what a packet pointer may take, or an `off` field.
            vec![insn(op::LD_ABS, 1, 0, 0, 0x8000), ret_a],
            vec![insn(op::LD_ABS, 1, 0, 0, 0x1_0000), ret_a],
            vec![insn(op::LDX_IMM, 0, 0, 0, 0xfff0), insn(op::LD_IND, 2, 0, 0, 0x20), ret_a],
            vec![insn(op::LDX_IMM, 0, 0, 0, u32::MAX), insn(op::LD_IND, 1, 0, 0, 2), ret_a],
            vec![
                insn(op::LD_IMM, 0, 0, 0, 9),
                insn(op::ST, 0, 0, 0, 3),
                insn(op::LDX_MEM, 0, 0, 0, 3),
                insn(op::TXA, 0, 0, 0, 0),
                ret_a,
            ],
            vec![
                insn(op::LD_ABS, 1, 0, 0, 0),
                FilterInsn { op: op::JEQ_ANY, arg: 3, jt: 1, jf: 0, k: 1, mask: 2, val: 3 },
                insn(op::RET_K, 0, 0, 0, 0),
                insn(op::RET_K, 0, 0, 0, 1),
            ],
            vec![
                insn(op::LD_ABS, 2, 0, 0, 0),
                insn(op::JMP_K, cmp::SET, 0, 1, 0x100),
                ret_a,
                insn(op::RET_K, 0, 0, 0, 0),
            ],
        ];
        let frames: Vec<Vec<u8>> =
            vec![vec![], vec![3, 1], (0..=255).collect(), (0..140).map(|i| i as u8).collect()];
        for program in &cases {
            for bytes in &frames {
                let frame = Frame::new(bytes, 0);
                let machine = vm::run(program, &frame);
                for linear in [usize::MAX, 20] {
                    if let Some(native) = emulate::decide(program, &frame, linear) {
                        assert_eq!(native, machine, "{program:?} on {} bytes ({linear} linear)", bytes.len());
                    }
                }
            }
        }
    }

    /// A frame whose outer tag the stack moved to metadata is not where a
    /// program reading the packet expects it: the interpreter decides.
    #[test]
    fn a_tag_in_metadata_defers_a_packet_program() {
        use mirror_common::view::{View, offsets};
        let program = [insn(op::LD_ABS, 2, 0, 0, 12), insn(op::RET_A, 0, 0, 0, 0)];
        let code = super::generate(&program, emulate::MAPS);
        let bytes = [0u8; 60];
        let mut view = vec![0u8; size_of::<View>()];
        view[offsets::NATIVE_COUNT as usize] = 1;
        let skb = emulate::Skb { bytes: &bytes, linear: 60, vlan_present: 1 };
        let _ = emulate::run(&code, &mut view, &skb);
        assert_eq!(view[offsets::NATIVE_DECIDED as usize], 0, "decided a tagged frame natively");
        assert_eq!(view[offsets::NATIVE_NEXT as usize], 1, "moved on along the chain");
    }

    /// Programs stay far below what the verifier and the jump offsets take.
    #[test]
    fn the_longest_program_generates_within_bounds() {
        let long: Vec<FilterInsn> = (0..mirror_common::filter::MAX_INSNS - 1)
            .map(|i| FilterInsn {
                op: op::TEST_IND,
                arg: test_arg(4, cmp::EQ),
                jt: 0,
                jf: 0,
                k: i,
                mask: u32::MAX,
                val: i,
            })
            .chain([insn(op::RET_K, 0, 0, 0, 1)])
            .collect();
        let code = super::generate(&long, emulate::MAPS);
        assert!(code.len() < 8192, "{} instructions", code.len());
    }
}
