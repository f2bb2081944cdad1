//! The pcap-filter differential in the kernel: every corpus expression,
//! compiled as `--filter` does, run by the real source program through
//! BPF_PROG_TEST_RUN on every packet of `data/filter/filter.pcap`; its
//! verdict (the session's `dry_run` counter moving) must be tcpdump's.
//! The frames carry their tags inline, as the capture does (the program puts
//! a tag the stack moved to metadata back in place: `mirroring.rs` covers
//! that end to end).
use mirror_agent::filter::{self, Selection};
use mirror_tests::{
    datapath::{Fixture, TestSession},
    pcap,
};

/// Native filters: what the agent runs (a frame's bytes past the view's
/// first 128 still go to the interpreter).
#[test]
fn native_filters_equal_tcpdump() {
    differential(true);
}

/// The interpreter alone: every filter's fallback.
#[test]
fn interpreted_filters_equal_tcpdump() {
    differential(false);
}

fn differential(native: bool) {
    let fx = Fixture::new(if native { "fdiffn" } else { "fdiffi" });
    let mut refused = std::collections::BTreeMap::new();
    let mut interpreted = Vec::new();
    let label = if native {
        "datapath, native (BPF_PROG_TEST_RUN)"
    } else {
        "datapath, interpreted (BPF_PROG_TEST_RUN)"
    };
    let report = fx.ns.run(|| {
        let mut dp = if native { fx.load_native() } else { fx.load_interpreted() };
        pcap::differential(label, |expr, packets| {
            let e = filter::parse_expr(expr).map_err(|e| e.render(expr))?;
            let program = filter::compile_selection(&Selection { rules: None, expr: Some(e) })
                .map_err(|e| e.render(expr))?
                .ok_or("no program")?;
            dp.set_sessions(&[TestSession::new(1).dry_run().program(program)]);
            dp.poison_interpreter();
            let tcpdump = pcap::tcpdump_verdicts(expr);
            let verdicts: Vec<bool> = packets
                .iter()
                .zip(tcpdump)
                .enumerate()
                .map(|(i, ((_, frame), theirs))| match dp.try_selects(1, frame) {
                    Ok(v) => v,
                    // The kernel test-runs no frame without a byte past its
                    // Ethernet header, nor an IP frame cut inside its header
                    // (a real interface hands tc neither): those runts are
                    // held to tcpdump by the userspace run only.
                    Err(_) => {
                        refused.insert(i, frame.len());
                        theirs
                    }
                })
                .collect();
            if native && dp.interpreted() {
                interpreted.push(expr.to_owned());
            }
            Ok(verdicts)
        })
    });
    // Test-run frames are linear, their tags inline: native code has every
    // byte, and decides every verdict itself.
    assert!(interpreted.is_empty(), "the interpreter decided for {interpreted:?}");
    println!(
        "{}: {} expressions x {} packets ({} runts the kernel would not test-run: {refused:?}), {} mismatches, {} errors",
        report.label,
        report.expressions,
        report.packets,
        refused.len(),
        report.mismatches.len(),
        report.errors.len()
    );
    assert!(
        refused.values().all(|len| *len < 14 + 40),
        "the kernel refused a frame that is no runt: {refused:?}"
    );
    assert!(refused.len() * 20 < report.packets, "most packets were not test-run: {refused:?}");
    report.assert_clean();
}

/// The largest filters the compiler accepts still load as native code:
/// chains of equalities, of hosts, of nested protocol-and-port pairs, and
/// rule sets, each grown until the compiler refuses it (the datapath's
/// limit), the last accepted one installed (the fixture panics if the
/// verifier refuses it) and run on a packet.
#[test]
fn the_largest_filters_load_as_native_code() {
    /// A shape's name, and its text of `n` terms (rules: rule `n`).
    type Shape = (&'static str, fn(usize) -> String);
    let shapes: [Shape; 5] = [
        // One rule each (rule i).
        ("rules", |i| {
            format!("{i} accept {} dport {i}-{} src 198.18.{}.0/24", ["tcp", "udp"][i % 2], i + 9, i % 250)
        }),
        ("ports", |n| (1..=n).map(|i| format!("port {i}")).collect::<Vec<_>>().join(" or ")),
        ("hosts", |n| {
            (1..=n)
                .map(|i| format!("host 198.18.{}.{}", i / 250, i % 250 + 1))
                .collect::<Vec<_>>()
                .join(" or ")
        }),
        ("pairs", |n| {
            (1..=n)
                .map(|i| {
                    format!(
                        "({} and port {i} and not src net 198.19.{}.0/24)",
                        if i % 2 == 0 { "tcp" } else { "udp" },
                        i % 250
                    )
                })
                .collect::<Vec<_>>()
                .join(" or ")
        }),
        ("bytes", |n| {
            (1..=n)
                .map(|i| format!("(ip[{}:2] & 0x{:x} = {} or tcp[{}] > 3)", i % 20, i, i % 7, i % 40))
                .collect::<Vec<_>>()
                .join(" and ")
        }),
    ];
    let fx = Fixture::new("flarge");
    fx.ns.run(|| {
        let mut dp = fx.load_native();
        for (name, make) in shapes {
            let compiles = |n: usize| {
                let selection = if name == "rules" {
                    let rules = (1..=n)
                        .map(|i| filter::rules::parse_rule(&make(i)))
                        .collect::<Result<Vec<_>, _>>()
                        .ok()?;
                    Selection {
                        rules: Some(filter::rules::validate(rules, filter::ast::Action::Reject).ok()?),
                        expr: None,
                    }
                } else {
                    Selection { rules: None, expr: Some(filter::parse_expr(&make(n)).ok()?) }
                };
                filter::compile_selection(&selection).ok().flatten()
            };
            let mut n = 1;
            while n < 4096 && compiles(n * 2).is_some() {
                n *= 2;
            }
            // Then bisect between n (compiles) and 2n (does not).
            let (mut lo, mut hi) = (n, n * 2);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if compiles(mid).is_some() { lo = mid } else { hi = mid }
            }
            let program = compiles(lo).expect("compiles");
            println!("{name}: {lo} terms, {} instructions", program.insns.len());
            let insns = program.insns.clone();
            dp.set_sessions(&[TestSession::new(1).dry_run().program(program)]);
            for (_, frame) in pcap::packets().iter().take(60) {
                let Ok(ours) = dp.try_selects(1, frame) else { continue };
                assert_eq!(ours, mirror_common::vm::run(&insns, &filter::Frame::new(frame, 0)), "{name}");
            }
        }
    });
}

/// Machine programs the compiler does not emit but the machine defines
/// (every ALU operation by X with its guards, loads at offsets a packet
/// pointer cannot take, scratch words, unknown opcodes) load as native
/// code and decide as the machine does, on every packet of the capture.
#[test]
fn machine_corners_load_as_native_code_and_decide_as_the_machine() {
    use mirror_common::{
        FilterInsn,
        filter::{alu, cmp, op},
        vm,
    };
    let insn = |op, arg, jt, jf, k| FilterInsn { op, arg, jt, jf, k, mask: 0, val: 0 };
    let ret_a = insn(op::RET_A, 0, 0, 0, 0);
    let mut programs: Vec<Vec<FilterInsn>> = Vec::new();
    for operation in [
        alu::ADD,
        alu::SUB,
        alu::MUL,
        alu::DIV,
        alu::MOD,
        alu::AND,
        alu::OR,
        alu::XOR,
        alu::LSH,
        alu::RSH,
        alu::NEG,
        11,
    ] {
        // X from the packet (often 0), A from the packet.
        programs.push(vec![
            insn(op::LDX_MSH, 0, 0, 0, 14),
            insn(op::LD_ABS, 2, 0, 0, 12),
            insn(op::ALU_X, operation, 0, 0, 0),
            insn(op::JMP_K, cmp::GT, 0, 1, 0x8000),
            ret_a,
            insn(op::RET_K, 0, 0, 0, 0),
        ]);
        programs.push(vec![insn(op::LD_ABS, 1, 0, 0, 23), insn(op::ALU_K, operation, 0, 0, 33), ret_a]);
    }
    programs.push(vec![insn(op::LD_ABS, 1, 0, 0, 0x8000), ret_a]);
    programs.push(vec![insn(op::LDX_IMM, 0, 0, 0, 0xfff0), insn(op::LD_IND, 4, 0, 0, 0x20), ret_a]);
    programs.push(vec![
        insn(op::LD_LEN, 0, 0, 0, 0),
        insn(op::ST, 0, 0, 0, 5),
        insn(op::LDX_MEM, 0, 0, 0, 5),
        insn(op::TXA, 0, 0, 0, 0),
        insn(op::JMP_K, cmp::GE, 0, 1, 100),
        insn(op::RET_K, 0, 0, 0, 1),
        insn(op::RET_K, 0, 0, 0, 0),
    ]);
    programs.push(vec![insn(0x7f, 0, 0, 0, 0), insn(op::RET_K, 0, 0, 0, 1)]);
    programs.push(vec![
        insn(op::LD_FIELD, 0, 0, 0, mirror_common::field::DST_PORT),
        insn(op::JMP_K, cmp::GT, 0, 1, 1000),
        insn(op::LD_IND, 1, 0, 0, 140),
        ret_a,
    ]);
    let packets = pcap::packets();
    let fx = Fixture::new("fcorner");
    fx.ns.run(|| {
        let mut dp = fx.load_native();
        for insns in programs {
            let uses_fields = insns.iter().any(|i| matches!(i.op, op::LD_FIELD | op::TEST_FIELD));
            let program = filter::Program { insns: insns.clone(), uses_fields, reject_classes: 0 };
            dp.set_sessions(&[TestSession::new(1).dry_run().program(program)]);
            for (_, frame) in &packets {
                let Ok(ours) = dp.try_selects(1, frame) else { continue };
                let machine = vm::run(&insns, &filter::Frame::new(frame, 0));
                assert_eq!(ours, machine, "{insns:?} on {frame:02x?}");
            }
        }
    });
}
