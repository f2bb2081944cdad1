//! The pcap-filter parser, the rule parser and the compiler on arbitrary
//! input, and the compiled program on an arbitrary frame.
//!
//! Run (from mirror-agent/): `AYA_BUILD_SKIP=1 cargo +nightly fuzz run filter`.
//! The input is the text, then (after the first NUL byte, if any) the
//! frame. Whatever parses must compile or fail with an error (never
//! panic); whatever compiles must be a program the datapath can run: at
//! most `MAX_INSNS` instructions, every jump inside the program, no way to
//! fall off its end. The program then runs on the frame, and where the
//! unoptimized program would run to its end, it must agree with the
//! reference evaluator, the datapath's prefilter must not reject what it
//! accepts, and the program's native code (run by an eBPF emulator) must
//! decide as the machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_agent::filter::{
    self, Frame, Program, Selection, native,
    ast::{Action, RuleSet},
    reference::{self, Outcome},
    rules::parse_rule,
};
use mirror_common::{
    FilterInsn,
    filter::{MAX_INSNS, op},
    prefilter,
};

/// Panics unless `program` is one the datapath's machine runs to a verdict.
fn check(program: &Program, text: &str) {
    let insns: &[FilterInsn] = &program.insns;
    assert!(
        !insns.is_empty() && insns.len() <= MAX_INSNS as usize,
        "{} instructions for {text:?}",
        insns.len()
    );
    for (pc, insn) in insns.iter().enumerate() {
        let targets: Vec<usize> = match insn.op {
            op::RET_K | op::RET_A => continue,
            op::JA => vec![pc + 1 + insn.k as usize],
            op::JMP_K | op::JMP_X | op::TEST_ABS | op::TEST_IND | op::TEST_FIELD | op::JEQ_ANY => {
                vec![pc + 1 + usize::from(insn.jt), pc + 1 + usize::from(insn.jf)]
            }
            _ => vec![pc + 1],
        };
        for t in targets {
            assert!(t < insns.len(), "instruction {pc} ({insn:?}) goes to {t}, past the end, for {text:?}");
        }
    }
}

fn run(selection: &Selection, program: &Program, frame: &[u8], text: &str) {
    let ours = program.matches(&Frame::new(frame, 0));
    // The datapath's cheap test before the program never rejects what the
    // program accepts.
    if frame.len() >= prefilter::BYTES as usize && ours {
        let b = |i: usize| u32::from(frame[i]);
        let class = prefilter::of(b(12) << 8 | b(13), b(23), b(20));
        let classes = program.reject_classes;
        assert!(
            prefilter::may_accept(classes, class),
            "prefilter rejects what {text:?} accepts: {frame:02x?}"
        );
    }
    let rules =
        selection.rules.as_ref().is_none_or(|r| reference::rules_accept(r, Frame::new(frame, 0).fields()));
    let want = match &selection.expr {
        Some(e) if rules => reference::expr_outcome(e, frame),
        _ => Outcome::Ran(rules),
    };
    if let Outcome::Ran(want) = want {
        assert_eq!(ours, want, "compiled vs reference for {text:?} on {frame:02x?}");
    }
    // The program's native code decides as the machine (or leaves the frame
    // to it where it lacks bytes; `decide` checks when it may), whole and
    // with the frame's linear part cut short.
    for linear in [frame.len(), frame.len() / 2] {
        if let Some(native) = native::emulate::decide(&program.insns, &Frame::new(frame, 0), linear) {
            assert_eq!(native, ours, "native code vs machine for {text:?} on {frame:02x?} ({linear} linear)");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, frame) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // Borrowed when valid UTF-8; otherwise invalid sequences become U+FFFD,
    // which is still text the parsers must handle.
    let text = String::from_utf8_lossy(text);
    match filter::parse_expr(&text) {
        Ok(expr) => {
            let selection = Selection { rules: None, expr: Some(expr) };
            match filter::compile_selection(&selection) {
                Ok(Some(program)) => {
                    check(&program, &text);
                    run(&selection, &program, frame, &text);
                }
                Ok(None) => panic!("{text:?} parsed, but compiled to no program"),
                Err(e) => drop(e.render(&text)),
            }
        }
        Err(e) => drop(e.render(&text)),
    }
    match parse_rule(&text) {
        Ok(rule) => {
            let rules = RuleSet { rules: vec![rule], default_action: Action::Reject };
            let selection = Selection { rules: Some(rules), expr: None };
            match filter::compile_selection(&selection) {
                Ok(Some(program)) => {
                    check(&program, &text);
                    run(&selection, &program, frame, &text);
                }
                Ok(None) => panic!("rule {text:?} compiled to no program"),
                Err(e) => drop(e.render(&text)),
            }
        }
        Err(e) => drop(e.render(&text)),
    }
});
