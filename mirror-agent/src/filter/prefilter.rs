//! Which packet classes ([`mirror_common::prefilter`]) a program may accept
//! at all: the program is run over each class with only what the class
//! fixes known (the EtherType, the IP protocol byte) and every other byte
//! unknown, following both ways wherever a test depends on the unknown.
//! A class from which no path reaches an accepting return gets a clear bit,
//! and the datapath rejects its packets without running the program. Sound:
//! a clear bit is a proof, never a guess; anything this analysis cannot
//! follow counts as "may accept".
use std::collections::HashSet;

use mirror_common::{
    FilterInsn, field,
    filter::{cmp, op},
    prefilter::{self, ARP, FRAGMENT, ICMP, IPV4, IPV6, OTHER, OTHER_L4, SCTP, TCP, UDP},
    vm::{arith, compare},
};

/// States followed per class before giving up (then: "may accept").
const MAX_STATES: usize = 20_000;

/// Bit `class` set for every class `insns` may accept.
pub fn accept_classes(insns: &[FilterInsn]) -> u64 {
    let mut bits = 0u64;
    for (network, transports) in [
        (IPV4, &[TCP, UDP, ICMP, SCTP, OTHER_L4][..]),
        (IPV6, &[TCP, UDP, ICMP, SCTP, FRAGMENT, OTHER_L4][..]),
        (ARP, &[0][..]),
        (OTHER, &[0][..]),
    ] {
        for &transport in transports {
            if may_accept(insns, &Known::of(network, transport)) {
                bits |= 1 << prefilter::class(network, transport);
            }
        }
    }
    bits
}

/// What a class fixes of a packet.
struct Known {
    bytes: [Option<u8>; prefilter::BYTES as usize],
    fields: [Option<u32>; field::COUNT as usize],
    /// Loads `(offset, size)` whose value is unknown but none of these (the
    /// EtherType of class `OTHER`, the protocol of `OTHER_L4`).
    not: Vec<(u32, u32, &'static [u32])>,
}

/// The EtherTypes that make a class of their own, or no class.
const CLASSED_ETHERTYPES: [u32; 6] = [0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x9100];
/// The protocols that make a transport class of their own.
const CLASSED_V4: [u32; 4] = [6, 17, 1, 132];
const CLASSED_V6: [u32; 5] = [6, 17, 58, 132, 44];

impl Known {
    fn of(network: u32, transport: u32) -> Self {
        let mut k = Self {
            bytes: [None; prefilter::BYTES as usize],
            fields: [None; field::COUNT as usize],
            not: Vec::new(),
        };
        match (network, transport) {
            (OTHER, _) => k.not.push((12, 2, &CLASSED_ETHERTYPES)),
            (IPV4, OTHER_L4) => k.not.push((23, 1, &CLASSED_V4)),
            (IPV6, OTHER_L4) => k.not.push((20, 1, &CLASSED_V6)),
            _ => {}
        }
        let ethertype: Option<u16> = match network {
            IPV4 => Some(0x0800),
            IPV6 => Some(0x86dd),
            ARP => Some(0x0806),
            _ => None,
        };
        if let Some(et) = ethertype {
            k.bytes[12] = Some((et >> 8) as u8);
            k.bytes[13] = Some(et as u8);
            k.fields[field::ETHERTYPE as usize] = Some(u32::from(et));
        }
        // The class is only ever taken of an untagged frame.
        k.fields[field::VLAN_COUNT as usize] = Some(0);
        let proto = match (network, transport) {
            (IPV4 | IPV6, TCP) => Some(6),
            (IPV4 | IPV6, UDP) => Some(17),
            (IPV4, ICMP) => Some(1),
            (IPV6, ICMP) => Some(58),
            (IPV4 | IPV6, SCTP) => Some(132),
            (IPV6, FRAGMENT) => Some(44),
            _ => None,
        };
        match network {
            IPV4 => k.bytes[23] = proto,
            IPV6 => k.bytes[20] = proto,
            // Not IP: the parse finds no IP header and no transport.
            _ => {
                k.fields[field::IP_VERSION as usize] = Some(0);
                k.fields[field::L4_PROTO as usize] = Some(field::NO_PROTOCOL);
                k.fields[field::HAS_L4 as usize] = Some(0);
                k.fields[field::FRAGMENT as usize] = Some(0);
            }
        }
        k
    }

    fn load(&self, off: u32, size: u32) -> Option<u32> {
        if !matches!(size, 1 | 2 | 4) {
            return None;
        }
        let mut v = 0u32;
        for i in 0..size {
            let b = self.bytes.get(usize::try_from(off.checked_add(i)?).ok()?).copied().flatten()?;
            v = v << 8 | u32::from(b);
        }
        Some(v)
    }

    /// The outcome of a `TEST_ABS` equality on a load whose excluded values
    /// are all that is known of it.
    fn excluded(&self, insn: &FilterInsn) -> Option<bool> {
        let size = u32::from(insn.arg & 0x7);
        let full = (1u64 << (8 * size)) - 1;
        let hit = insn.op == op::TEST_ABS
            && insn.arg >> 4 == cmp::EQ
            && u64::from(insn.mask) & full == full
            && self
                .not
                .iter()
                .any(|(off, sz, values)| *off == insn.k && *sz == size && values.contains(&insn.val));
        hit.then_some(false)
    }

    fn field(&self, index: u32) -> Option<u32> {
        self.fields.get(index as usize).copied().flatten()
    }
}

/// Whether some path of `insns` over a packet of class `known` accepts.
fn may_accept(insns: &[FilterInsn], known: &Known) -> bool {
    type State = (u32, Option<u32>, Option<u32>);
    let mut seen: HashSet<State> = HashSet::new();
    let mut todo: Vec<State> = vec![(0, Some(0), Some(0))];
    while let Some(state) = todo.pop() {
        if !seen.insert(state) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return true;
        }
        let (pc, a, x) = state;
        // Off the end, or jumped out: the machine rejects.
        let Some(insn) = insns.get(pc as usize) else { continue };
        let next = pc + 1;
        let branch = |outcome: Option<bool>, a: Option<u32>, todo: &mut Vec<State>| {
            if outcome != Some(false) {
                todo.push((next + u32::from(insn.jt), a, x));
            }
            if outcome != Some(true) {
                todo.push((next + u32::from(insn.jf), a, x));
            }
        };
        let k = insn.k;
        match insn.op {
            op::TEST_ABS | op::TEST_IND | op::TEST_FIELD => {
                let value = match insn.op {
                    op::TEST_ABS => known.load(k, u32::from(insn.arg & 0x7)),
                    op::TEST_FIELD => known.field(k),
                    _ => None,
                };
                let a = value.map(|v| v & insn.mask);
                let outcome = a.map(|a| compare(insn.arg >> 4, a, insn.val)).or_else(|| known.excluded(insn));
                branch(outcome, a, &mut todo);
            }
            op::JMP_K | op::JMP_X => {
                let operand = if insn.op == op::JMP_K { Some(k) } else { x };
                let outcome = a.zip(operand).map(|(a, b)| compare(insn.arg, a, b));
                branch(outcome, a, &mut todo);
            }
            // 1..=3 values; any other count faults (rejects).
            op::JEQ_ANY if (1..=3).contains(&insn.arg) => {
                let values = [k, insn.mask, insn.val];
                let outcome = a.map(|a| values[..usize::from(insn.arg)].contains(&a));
                branch(outcome, a, &mut todo);
            }
            op::JA => todo.push((next.saturating_add(k), a, x)),
            op::LD_ABS => todo.push((next, known.load(k, u32::from(insn.arg)), x)),
            op::LD_IMM => todo.push((next, Some(k), x)),
            op::LD_FIELD => todo.push((next, known.field(k), x)),
            op::LD_IND | op::LD_LEN | op::LD_MEM => todo.push((next, None, x)),
            op::LDX_IMM => todo.push((next, a, Some(k))),
            op::LDX_MEM | op::LDX_LEN | op::LDX_MSH => todo.push((next, a, None)),
            op::ST | op::STX => todo.push((next, a, x)),
            op::ALU_K | op::ALU_X => {
                let operand = if insn.op == op::ALU_K { Some(k) } else { x };
                match a.zip(operand).map(|(a, b)| arith(insn.arg, a, b)) {
                    // A fault rejects.
                    Some(None) => {}
                    Some(Some(v)) => todo.push((next, Some(v), x)),
                    // A division by an unknown may fault or not; either way
                    // the result is unknown.
                    None => todo.push((next, None, x)),
                }
            }
            op::TAX => todo.push((next, a, a)),
            op::TXA => todo.push((next, x, x)),
            op::RET_K if k != 0 => return true,
            op::RET_A if a != Some(0) => return true,
            // An unknown opcode rejects.
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Selection, compile_selection, parse_expr};

    fn classes(expr: &str) -> u64 {
        let e = parse_expr(expr).unwrap();
        !compile_selection(&Selection { rules: None, expr: Some(e) }).unwrap().unwrap().reject_classes
    }

    fn bit(network: u32, transport: u32) -> u64 {
        1 << prefilter::class(network, transport)
    }

    #[test]
    fn a_tcp_filter_rules_out_every_other_class() {
        let c = classes("tcp port 443");
        assert_ne!(c & bit(IPV4, TCP), 0);
        assert_ne!(c & bit(IPV6, TCP), 0);
        // `tcp` alone looks past one IPv6 fragment header; `port` does not
        // (libpcap's semantics, which the analysis follows from the code).
        assert_ne!(classes("tcp") & bit(IPV6, FRAGMENT), 0);
        for (n, t) in
            [(IPV4, UDP), (IPV4, ICMP), (IPV6, UDP), (IPV6, FRAGMENT), (ARP, 0), (OTHER, 0), (IPV4, OTHER_L4)]
        {
            assert_eq!(c & bit(n, t), 0, "({n}, {t})");
        }
    }

    #[test]
    fn what_the_analysis_cannot_follow_may_accept() {
        // A byte it does not know decides: every class may pass.
        let all = classes("ether[0] = 2");
        for (n, t) in [(IPV4, TCP), (IPV6, UDP), (ARP, 0), (OTHER, 0)] {
            assert_ne!(all & bit(n, t), 0, "({n}, {t})");
        }
        assert_ne!(classes("not tcp") & bit(OTHER, 0), 0);
        assert_eq!(classes("arp") & bit(IPV4, TCP), 0);
        assert_ne!(classes("arp") & bit(ARP, 0), 0);
    }
}
