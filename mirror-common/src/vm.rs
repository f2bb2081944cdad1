//! The filter machine: one step of a [`crate::filter`] program. The
//! datapath runs it from a `bpf_loop` callback (one instruction per
//! iteration), the agent's tests and fuzzer from a plain loop, so both run
//! the very same semantics.
use crate::{
    FilterInsn,
    filter::{MEMWORDS, alu, cmp, op},
};

/// What a program reads.
#[allow(clippy::len_without_is_empty, reason = "a frame's length, as classic BPF's `len`")]
pub trait Packet {
    /// `size` (1, 2 or 4) bytes at `off` of the frame as it was on the
    /// wire, big-endian; `None` past its end.
    fn load(&self, off: u32, size: u32) -> Option<u32>;
    /// Bytes of the frame.
    fn len(&self) -> u32;
    /// A parsed field ([`crate::field`]); 0 when it does not apply.
    fn field(&self, index: u32) -> u32;
}

/// Registers of a running program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub a: u32,
    pub x: u32,
    /// Next instruction.
    pub pc: u32,
    /// [`verdict`] once the program stopped.
    pub verdict: u32,
    pub mem: [u32; MEMWORDS as usize],
}

/// [`Machine::verdict`] values.
pub mod verdict {
    pub const RUNNING: u32 = 0;
    pub const ACCEPT: u32 = 1;
    pub const REJECT: u32 = 2;
}

/// A jump's or test's comparison (unsigned).
#[inline(always)]
pub fn compare(how: u8, a: u32, b: u32) -> bool {
    match how {
        cmp::EQ => a == b,
        cmp::GT => a > b,
        cmp::GE => a >= b,
        _ => a & b != 0,
    }
}

/// `a <op> b`; `None` for a division or modulo by zero (the packet is
/// rejected, as in classic BPF) and for an unknown operation.
#[inline(always)]
pub fn arith(operation: u8, a: u32, b: u32) -> Option<u32> {
    Some(match operation {
        alu::ADD => a.wrapping_add(b),
        alu::SUB => a.wrapping_sub(b),
        alu::MUL => a.wrapping_mul(b),
        alu::DIV => a.checked_div(b)?,
        alu::MOD => a.checked_rem(b)?,
        alu::AND => a & b,
        alu::OR => a | b,
        alu::XOR => a ^ b,
        alu::LSH => {
            if b < 32 {
                a << b
            } else {
                0
            }
        }
        alu::RSH => {
            if b < 32 {
                a >> b
            } else {
                0
            }
        }
        alu::NEG => a.wrapping_neg(),
        _ => return None,
    })
}

#[inline(always)]
fn mem_index(k: u32) -> usize {
    (k & (MEMWORDS - 1)) as usize
}

/// Executes `insn`, the instruction at `m.pc`. Returns `false` once the
/// program stopped (`m.verdict` says how).
#[inline(always)]
pub fn step<P: Packet>(m: &mut Machine, insn: &FilterInsn, pkt: &P) -> bool {
    match execute(m, insn, pkt) {
        Some(true) => true,
        Some(false) => false,
        None => {
            m.verdict = verdict::REJECT;
            false
        }
    }
}

/// `Some(true)`: go on; `Some(false)`: returned; `None`: a fault.
#[inline(always)]
fn execute<P: Packet>(m: &mut Machine, insn: &FilterInsn, pkt: &P) -> Option<bool> {
    let k = insn.k;
    let next = m.pc.wrapping_add(1);
    m.pc = next;
    match insn.op {
        op::TEST_ABS | op::TEST_IND | op::TEST_FIELD => {
            let value = match insn.op {
                op::TEST_ABS => pkt.load(k, u32::from(insn.arg & 0x7))?,
                op::TEST_IND => pkt.load(m.x.checked_add(k)?, u32::from(insn.arg & 0x7))?,
                _ => pkt.field(k),
            };
            m.a = value & insn.mask;
            let taken = compare(insn.arg >> 4, m.a, insn.val);
            m.pc = next + u32::from(if taken { insn.jt } else { insn.jf });
        }
        op::JMP_K | op::JMP_X => {
            let operand = if insn.op == op::JMP_K { k } else { m.x };
            let taken = compare(insn.arg, m.a, operand);
            m.pc = next + u32::from(if taken { insn.jt } else { insn.jf });
        }
        op::JEQ_ANY => {
            let a = m.a;
            let n = insn.arg;
            if n == 0 || n > 3 {
                return None;
            }
            let taken = a == k || (n >= 2 && a == insn.mask) || (n >= 3 && a == insn.val);
            m.pc = next + u32::from(if taken { insn.jt } else { insn.jf });
        }
        op::JA => m.pc = next.checked_add(k)?,
        op::LD_ABS => m.a = pkt.load(k, u32::from(insn.arg))?,
        op::LD_IND => m.a = pkt.load(m.x.checked_add(k)?, u32::from(insn.arg))?,
        op::LD_LEN => m.a = pkt.len(),
        op::LD_IMM => m.a = k,
        op::LD_MEM => m.a = m.mem[mem_index(k)],
        op::LD_FIELD => m.a = pkt.field(k),
        op::LDX_IMM => m.x = k,
        op::LDX_MEM => m.x = m.mem[mem_index(k)],
        op::LDX_LEN => m.x = pkt.len(),
        op::LDX_MSH => m.x = (pkt.load(k, 1)? & 0xf) << 2,
        op::ST => m.mem[mem_index(k)] = m.a,
        op::STX => m.mem[mem_index(k)] = m.x,
        op::ALU_K => m.a = arith(insn.arg, m.a, k)?,
        op::ALU_X => m.a = arith(insn.arg, m.a, m.x)?,
        op::TAX => m.x = m.a,
        op::TXA => m.a = m.x,
        op::RET_K | op::RET_A => {
            let value = if insn.op == op::RET_K { k } else { m.a };
            m.verdict = if value != 0 { verdict::ACCEPT } else { verdict::REJECT };
            return Some(false);
        }
        _ => return None,
    }
    Some(true)
}

/// Runs `program` on `pkt` to its verdict: `true` if it accepts. The
/// datapath does the same, one [`step`] per `bpf_loop` iteration.
pub fn run<P: Packet>(program: &[FilterInsn], pkt: &P) -> bool {
    let mut m = Machine::default();
    for _ in 0..crate::filter::MAX_INSNS {
        let Some(insn) = program.get(m.pc as usize) else { return false };
        if !step(&mut m, insn, pkt) {
            return m.verdict == verdict::ACCEPT;
        }
    }
    false
}
