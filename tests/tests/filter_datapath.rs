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
    let label = if native {
        "datapath, native (BPF_PROG_TEST_RUN)"
    } else {
        "datapath, interpreted (BPF_PROG_TEST_RUN)"
    };
    let report = fx.ns.run(|| {
        let mut dp = if native { fx.load() } else { fx.load_interpreted() };
        assert_eq!(dp.native(), native, "MIRROR_AGENT_NATIVE_FILTERS=0 turns native filters off");
        pcap::differential(label, |expr, packets| {
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
