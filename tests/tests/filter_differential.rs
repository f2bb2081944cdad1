//! pcap-filter expressions against tcpdump itself: for every expression of
//! `data/filter/corpus.txt` and every packet of `data/filter/filter.pcap`,
//! our verdict must be tcpdump's (`tcpdump -r filter.pcap EXPR`, libpcap
//! 1.10.3). Needs tcpdump, not privileges.
use mirror_agent::filter::{
    self, Frame, Selection,
    reference::{self, Outcome},
};
use mirror_common::direction;
use mirror_tests::pcap::{self, Report};

/// Parses and compiles `expr` as `--filter` does.
fn compile(expr: &str) -> Result<(Selection, filter::Program), String> {
    let e = filter::parse_expr(expr).map_err(|e| e.render(expr))?;
    let selection = Selection { rules: None, expr: Some(e) };
    let program = filter::compile_selection(&selection)
        .map_err(|e| e.render(expr))?
        .ok_or_else(|| "an expression compiled to no program".to_owned())?;
    Ok((selection, program))
}

/// The compiled program run by the userspace copy of the datapath's filter
/// machine, and the reference evaluator, each held to tcpdump; every
/// disagreement of either is reported at once.
#[test]
fn compiled_filters_equal_tcpdump_in_userspace() {
    let compiled = pcap::differential("compiled program (userspace machine)", |expr, packets| {
        let (_, program) = compile(expr)?;
        Ok(packets.iter().map(|(_, f)| program.matches(&Frame::new(f, direction::INGRESS))).collect())
    });
    // The reference is libpcap's program before optimization. Where that
    // stops at a load past the end of the frame but the answer does not
    // depend on the missing bytes, tcpdump's optimized program may have
    // dropped the load and decided: either verdict is then the reference's.
    let mut tolerated = 0;
    let packets = pcap::packets();
    let fillers: Vec<&[u8]> = packets.iter().map(|(_, f)| f.as_slice()).collect();
    let reference = pcap::differential("reference evaluator", |expr, packets| {
        let (selection, _) = compile(expr)?;
        let e = selection.expr.as_ref().expect("an expression");
        let tcpdump = pcap::tcpdump_verdicts(expr);
        Ok(packets
            .iter()
            .zip(tcpdump)
            .map(|((_, f), theirs)| match reference::expr_outcome(e, f) {
                Outcome::Ran(v) => v,
                Outcome::Stopped { .. } => {
                    let decided =
                        theirs && reference::answer_without_missing_bytes(e, f, &fillers) == Some(true);
                    tolerated += usize::from(decided);
                    decided
                }
            })
            .collect())
    });
    println!("reference evaluator: {tolerated} verdicts of tcpdump's optimized programs that did not stop");
    println!("{}", summary(&compiled));
    println!("{}", summary(&reference));
    let failed: Vec<&Report> = [&compiled, &reference]
        .into_iter()
        .filter(|r| !r.mismatches.is_empty() || !r.errors.is_empty())
        .collect();
    assert!(failed.is_empty(), "{}", failed.iter().map(|r| r.render()).collect::<Vec<_>>().join("\n"));
}

fn summary(r: &Report) -> String {
    format!(
        "{}: {} expressions x {} packets, {} mismatches, {} errors",
        r.label,
        r.expressions,
        r.packets,
        r.mismatches.len(),
        r.errors.len()
    )
}

/// The datapath's cheap test before a filter (the classes a program may
/// accept, `filter::prefilter`) is sound: for every corpus expression, no
/// packet of a class the analysis rules out is one tcpdump keeps. Prints
/// how many verdicts the test alone decides.
#[test]
fn the_prefilter_never_rejects_what_tcpdump_accepts() {
    use mirror_common::prefilter;
    let packets = pcap::packets();
    let class = |f: &[u8]| {
        if f.len() < prefilter::BYTES as usize {
            return prefilter::UNKNOWN;
        }
        let b = |i: usize| u32::from(f[i]);
        prefilter::of(b(12) << 8 | b(13), b(23), b(20))
    };
    let (mut decided, mut total, mut wrong) = (0, 0, Vec::new());
    for expr in pcap::corpus() {
        let Ok((_, program)) = compile(&expr) else { continue };
        let classes = program.reject_classes;
        for (i, ((_, frame), theirs)) in packets.iter().zip(pcap::tcpdump_verdicts(&expr)).enumerate() {
            total += 1;
            if !prefilter::may_accept(classes, class(frame)) {
                decided += 1;
                if theirs {
                    wrong.push(format!("{expr:?}: packet {i}"));
                }
            }
        }
    }
    println!("prefilter: decided {decided} of {total} verdicts without the program");
    assert!(wrong.is_empty(), "rejected what tcpdump keeps: {wrong:#?}");
    assert!(decided * 4 > total, "the prefilter decides too little to matter: {decided} of {total}");
}
