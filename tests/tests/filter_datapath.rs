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

#[test]
fn the_datapath_filters_equal_tcpdump() {
    let fx = Fixture::new("fdiff");
    let mut refused = std::collections::BTreeMap::new();
    let report = fx.ns.run(|| {
        let mut dp = fx.load();
        pcap::differential("datapath (BPF_PROG_TEST_RUN)", |expr, packets| {
            let e = filter::parse_expr(expr).map_err(|e| e.render(expr))?;
            let program = filter::compile_selection(&Selection { rules: None, expr: Some(e) })
                .map_err(|e| e.render(expr))?
                .ok_or("no program")?;
            dp.set_sessions(&[TestSession::new(1).dry_run().program(program)]);
            let tcpdump = pcap::tcpdump_verdicts(expr);
            Ok(packets
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
                .collect())
        })
    });
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
