//! Chains of equality tests on one load become three tests a step.
//!
//! `port 1 or port 2 or ...` compiles (as in libpcap) to a run of tests that
//! each load the same bytes (or parsed field) and compare them with one
//! value, all jumping to
//! the same place when equal and falling through to the next when not. The
//! first test of such a run stays (it loads, masks, compares); the rest
//! become `JEQ_ANY` instructions comparing the value already in `A` with up
//! to three values each. Same verdicts on every packet: the later tests
//! loaded exactly the bytes the first did (so they cannot fail where it did
//! not), and leave `A` as the first does.
use mirror_common::{
    FilterInsn,
    filter::{cmp, op},
};

/// Where instruction `i` can go next: (jump if taken, jump if not or the
/// fall-through), as absolute positions.
fn exits(insns: &[FilterInsn], i: usize) -> (Option<usize>, Option<usize>) {
    let insn = &insns[i];
    let next = i + 1;
    match insn.op {
        op::TEST_ABS | op::TEST_IND | op::TEST_FIELD | op::JMP_K | op::JMP_X | op::JEQ_ANY => {
            (Some(next + usize::from(insn.jt)), Some(next + usize::from(insn.jf)))
        }
        op::JA => (Some(next + insn.k as usize), None),
        op::RET_K | op::RET_A => (None, None),
        _ => (None, Some(next)),
    }
}

fn is_equality_test(insn: &FilterInsn) -> bool {
    matches!(insn.op, op::TEST_ABS | op::TEST_IND | op::TEST_FIELD) && insn.arg >> 4 == cmp::EQ
}

/// Whether `b` tests the same bytes, the same way, as `a`.
fn same_load(a: &FilterInsn, b: &FilterInsn) -> bool {
    a.op == b.op && a.arg == b.arg && a.k == b.k && a.mask == b.mask
}

/// One instruction of the result, with absolute targets (old positions).
#[derive(Clone, Copy)]
struct Out {
    insn: FilterInsn,
    /// Targets of `jt`/`k` and `jf` as positions in the input.
    taken: Option<usize>,
    not_taken: Option<usize>,
}

/// Fuses every run of at least three equality tests on one load.
pub fn equality_chains(insns: &[FilterInsn]) -> Vec<FilterInsn> {
    let n = insns.len();
    let mut incoming = vec![0usize; n + 1];
    for i in 0..n {
        let (t, f) = exits(insns, i);
        for target in [t, f].into_iter().flatten() {
            if target <= n {
                incoming[target] += 1;
            }
        }
    }
    // The instructions out, each with the input position it stands for.
    let mut out: Vec<(usize, Out)> = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let head = insns[i];
        let (taken, not_taken) = exits(insns, i);
        let mut end = i;
        if is_equality_test(&head) {
            // Extend while the previous member falls through to the next,
            // which nothing else reaches, and jumps where the head jumps.
            while end + 1 < n
                && is_equality_test(&insns[end + 1])
                && same_load(&head, &insns[end + 1])
                && insns[end].jf == 0
                && exits(insns, end).0 == taken
                && exits(insns, end + 1).0 == taken
                && incoming[end + 1] == 1
            {
                end += 1;
            }
        }
        if end - i < 2 {
            out.push((i, Out { insn: head, taken, not_taken }));
            i += 1;
            continue;
        }
        let last_not_taken = exits(insns, end).1;
        let values: Vec<u32> = insns[i + 1..=end].iter().map(|t| t.val).collect();
        out.push((i, Out { insn: head, taken, not_taken: None }));
        let chunks: Vec<&[u32]> = values.chunks(3).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let v = |j: usize| chunk.get(j).copied().unwrap_or(0);
            let insn = FilterInsn {
                op: op::JEQ_ANY,
                arg: chunk.len() as u8,
                jt: 0,
                jf: 0,
                k: v(0),
                mask: v(1),
                val: v(2),
            };
            let not_taken = if c + 1 == chunks.len() { last_not_taken } else { None };
            // Inner members stand for no input position (nothing jumps to them).
            out.push((usize::MAX, Out { insn, taken, not_taken }));
        }
        i = end + 1;
    }
    // New positions of the input positions that remain.
    let mut at = vec![usize::MAX; n + 1];
    for (new, (old, _)) in out.iter().enumerate() {
        if *old != usize::MAX {
            at[*old] = new;
        }
    }
    at[n] = out.len();
    let rel = |from: usize, to: Option<usize>| -> u32 {
        // `None`: fall through to the next instruction out.
        let target = to.map_or(from + 1, |t| at[t]);
        assert!(target != usize::MAX && target > from, "a jump into a fused run");
        (target - from - 1) as u32
    };
    let mut result = Vec::with_capacity(out.len());
    for (new, (_, o)) in out.iter().enumerate() {
        let mut insn = o.insn;
        match insn.op {
            op::JA => insn.k = rel(new, o.taken),
            op::RET_K | op::RET_A => {}
            _ if o.taken.is_some() || insn.op == op::JEQ_ANY => {
                insn.jt = u8::try_from(rel(new, o.taken)).expect("jumps only shrink");
                insn.jf = u8::try_from(rel(new, o.not_taken)).expect("jumps only shrink");
            }
            _ => {}
        }
        result.push(insn);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Frame, Selection, compile_selection, parse_expr};

    fn program(expr: &str) -> Vec<FilterInsn> {
        let e = parse_expr(expr).unwrap();
        compile_selection(&Selection { rules: None, expr: Some(e) }).unwrap().unwrap().insns
    }

    #[test]
    fn a_chain_of_ports_takes_three_a_step_with_the_same_verdicts() {
        let expr =
            (11..20).map(|p| format!("udp port {p}")).collect::<Vec<_>>().join(" or ") + " or udp dst port 9";
        let fused = program(&expr);
        assert!(fused.iter().filter(|i| i.op == op::JEQ_ANY).count() >= 6, "{fused:#?}");
        assert!(fused.len() <= 32, "{} instructions", fused.len());
        // An IPv4/UDP frame with each port, and one past its ports.
        for (sport, dport, want) in
            [(1024u16, 9u16, true), (1024, 11, true), (19, 1, true), (1, 2, false), (9, 1, false)]
        {
            let mut f = vec![0u8; 60];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[23] = 17;
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            let p = crate::filter::Program { insns: fused.clone(), uses_fields: false, reject_classes: 0 };
            assert_eq!(p.matches(&Frame::new(&f, 0)), want, "{sport} -> {dport}");
            // Cut after the source port: a source-port match still decides;
            // otherwise the destination port's load is past the end.
            let cut = (11..20).contains(&sport);
            assert_eq!(p.matches(&Frame::new(&f[..36], 0)), cut, "{sport} -> {dport}, cut inside the ports");
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use crate::filter::{Selection, ast::Action, compile_selection, rules};

    #[test]
    fn single_port_rules_fuse_too() {
        let mut set = Vec::new();
        for (i, port) in (11..20).enumerate() {
            set.push(rules::parse_rule(&format!("{} reject udp dport {port}", 10 * (i + 1))).unwrap());
        }
        set.push(rules::parse_rule("100 accept udp dport 9").unwrap());
        let set = rules::validate(set, Action::Reject).unwrap();
        let p = compile_selection(&Selection { rules: Some(set), expr: None }).unwrap().unwrap();
        let steps = p.insns.iter().filter(|i| i.op == op::JEQ_ANY).count();
        assert!(steps >= 2, "{:#?}", p.insns);
    }
}
