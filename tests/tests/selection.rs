//! What a session selects, in the kernel: the source program alone through
//! BPF_PROG_TEST_RUN (see `src/datapath.rs`), its counters read back. Each
//! selection step, and their order: filter, exclusivity, sampling, rate
//! limit, dry run; and copies of copies.
use mirror_agent::filter::{self, Program, Selection};
use mirror_common::{GLOBAL_SESSION_ID, copy_mark, parse, reason, select_flags};
use mirror_tests::datapath::{Fixture, NEXT, TestSession};

/// Compiles `expr` as `--filter` does.
fn program(expr: &str) -> Program {
    let e = filter::parse_expr(expr).unwrap_or_else(|e| panic!("{}", e.render(expr)));
    filter::compile_selection(&Selection { rules: None, expr: Some(e) }).unwrap().unwrap()
}

/// An Ethernet + IPv4 + TCP/UDP frame of `len` bytes.
fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(60)];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len.max(60) - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f[46] = 0x50;
        f[47] = 0x02;
    }
    f
}

const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];

#[test]
fn a_filter_selects_and_what_it_rejects_is_counted_as_filtered() {
    let fx = Fixture::new("sel-filter");
    fx.ns.run(|| {
        let mut dp = fx.load();
        dp.set_sessions(&[TestSession::new(1).program(program("tcp dst port 443"))]);
        let tx = || fx.ns.link_packets("d1").1;
        let before = tx();
        let hit = ipv4(6, A, B, 40000, 443, 100);
        let miss = ipv4(17, A, B, 40000, 443, 100);
        assert_eq!(dp.run(&hit, 7, 1), (NEXT, 7), "the original is untouched");
        assert_eq!(dp.run(&miss, 7, 1), (NEXT, 7));
        assert_eq!(dp.packets(1, reason::MIRRORED), 1);
        assert_eq!(dp.counter(1, reason::FILTERED).bytes, 100);
        assert_eq!(dp.packets(1, reason::FILTERED), 1);
        assert_eq!(tx(), before + 1, "exactly one copy left d1");
        // A session without a filter on the same hook copies both.
        dp.set_sessions(&[TestSession::new(1).program(program("tcp dst port 443")), TestSession::new(2)]);
        dp.run(&hit, 0, 1);
        dp.run(&miss, 0, 1);
        assert_eq!(dp.packets(1, reason::MIRRORED), 2);
        assert_eq!(dp.packets(2, reason::MIRRORED), 2);
    });
}

#[test]
fn a_dry_run_counts_exactly_what_would_be_copied_and_copies_nothing() {
    let fx = Fixture::new("sel-dry");
    fx.ns.run(|| {
        let mut dp = fx.load();
        dp.set_sessions(&[TestSession::new(1).dry_run().program(program("udp")).with(|c| c.snaplen = 64)]);
        let before = fx.ns.link_packets("d1").1;
        for _ in 0..5 {
            dp.run(&ipv4(17, A, B, 1, 2, 200), 0, 1);
            dp.run(&ipv4(6, A, B, 1, 2, 200), 0, 1);
        }
        assert_eq!(fx.ns.link_packets("d1").1, before, "a dry run sent a copy");
        // Bytes: what the copies would have been (cut to the snap length).
        assert_eq!((dp.packets(1, reason::DRY_RUN), dp.counter(1, reason::DRY_RUN).bytes), (5, 5 * 64));
        assert_eq!(dp.packets(1, reason::FILTERED), 5);
        assert_eq!(dp.packets(1, reason::MIRRORED), 0);
    });
}

#[test]
fn among_exclusive_sessions_the_first_whose_filter_matches_takes_the_packet() {
    let fx = Fixture::new("sel-excl");
    fx.ns.run(|| {
        let mut dp = fx.load();
        let exclusive = |c: &mut mirror_common::SessionConfig| c.select_flags |= select_flags::EXCLUSIVE;
        dp.set_sessions(&[
            TestSession::new(1).dry_run().with(exclusive).program(program("tcp")),
            TestSession::new(2).dry_run().with(exclusive).program(program("ip")),
            TestSession::new(3).dry_run(),
        ]);
        dp.run(&ipv4(6, A, B, 1, 2, 80), 0, 1);
        dp.run(&ipv4(17, A, B, 1, 2, 80), 0, 1);
        // A dry run takes nothing: both exclusive sessions count the TCP packet.
        assert_eq!(dp.packets(1, reason::DRY_RUN), 1);
        assert_eq!(dp.packets(2, reason::DRY_RUN), 2);
        assert_eq!(dp.packets(2, reason::PREEMPTED), 0);
        // For real: session 1 takes TCP, session 2 only what 1's filter
        // rejects; the non-exclusive session 3 sees everything.
        dp.set_sessions(&[
            TestSession::new(4).with(exclusive).program(program("tcp")),
            TestSession::new(5).with(exclusive).program(program("ip")),
            TestSession::new(6).dry_run(),
        ]);
        dp.run(&ipv4(6, A, B, 1, 2, 80), 0, 1);
        dp.run(&ipv4(17, A, B, 1, 2, 80), 0, 1);
        assert_eq!((dp.packets(4, reason::MIRRORED), dp.packets(4, reason::FILTERED)), (1, 1));
        assert_eq!((dp.packets(5, reason::MIRRORED), dp.packets(5, reason::PREEMPTED)), (1, 1));
        assert_eq!(dp.packets(6, reason::DRY_RUN), 2);
    });
}

/// 1 in 100 at random over 200 000 runs: the kept count lies within five
/// standard deviations of 2 000 (a false failure once in ~3.5 million runs).
#[test]
fn sampling_keeps_one_in_n_within_the_statistical_bound() {
    let fx = Fixture::new("sel-sample");
    fx.ns.run(|| {
        let mut dp = fx.load();
        dp.set_sessions(&[TestSession::new(1).dry_run().with(|c| c.sample_every = 100)]);
        let n = 200_000u32;
        dp.run(&ipv4(17, A, B, 1, 2, 60), 0, n);
        let (kept, out) = (dp.packets(1, reason::DRY_RUN), dp.packets(1, reason::SAMPLED_OUT));
        assert_eq!(kept + out, u64::from(n), "every run counted once");
        let (mean, sd) = (f64::from(n) / 100.0, (f64::from(n) * 0.01 * 0.99).sqrt());
        assert!((kept as f64 - mean).abs() <= 5.0 * sd, "kept {kept} of {n}: expected {mean} ± {}", 5.0 * sd);
        println!("sample 100: kept {kept} of {n} (expected {mean} ± {sd:.1})");
    });
}

/// Flow sampling: 3 000 flows, each sent both ways: every flow is kept or
/// skipped whole, in both directions, exactly as the agent's copy of the
/// parse and hash predicts; the kept share within five standard deviations.
#[test]
fn flow_sampling_keeps_whole_flows_in_both_directions() {
    let fx = Fixture::new("sel-flow");
    fx.ns.run(|| {
        let mut dp = fx.load();
        let every = 10;
        dp.set_sessions(&[TestSession::new(1).dry_run().with(|c| {
            c.sample_every = every;
            c.select_flags |= select_flags::SAMPLE_FLOW;
        })]);
        let flows = 3000u32;
        let mut kept_flows = 0;
        for i in 0..flows {
            let a = [198, 18, (i >> 8) as u8, i as u8];
            let b = [198, 19, (i >> 4) as u8, (i * 7) as u8];
            let (sport, dport) = (1024 + (i * 13 % 60000) as u16, [53, 80, 443, 8080][i as usize % 4]);
            let proto = if i % 3 == 0 { 17 } else { 6 };
            let there = ipv4(proto, a, b, sport, dport, 80);
            let back = ipv4(proto, b, a, dport, sport, 80);
            let verdicts = [dp.selects(1, &there), dp.selects(1, &back), dp.selects(1, &there)];
            assert!(verdicts.iter().all(|v| *v == verdicts[0]), "flow {i} half sampled: {verdicts:?}");
            let fields = filter::Frame::new(&there, 0);
            let predicted = parse::keeps(parse::flow_hash(fields.fields()), every);
            assert_eq!(verdicts[0], predicted, "flow {i}: the kernel and the agent's hash disagree");
            kept_flows += u32::from(verdicts[0]);
        }
        let (mean, sd) = (f64::from(flows) / f64::from(every), (f64::from(flows) * 0.1 * 0.9).sqrt());
        assert!((f64::from(kept_flows) - mean).abs() <= 5.0 * sd, "{kept_flows} of {flows} flows kept");
        println!("sample-flow 10: kept {kept_flows} of {flows} flows (expected {mean} ± {sd:.1})");
    });
}

/// The token bucket: a burst of back-to-back runs gets the burst (0.1 s of
/// the rate) plus what the rate refills meanwhile, and no more; the rest is
/// `rate_limited`. Accuracy at line rate is measured by `cargo xtask bench`.
#[test]
fn the_rate_limit_caps_copies_and_counts_the_rest() {
    let fx = Fixture::new("sel-rate");
    fx.ns.run(|| {
        let mut dp = fx.load();
        dp.set_sessions(&[TestSession::new(1).dry_run().with(|c| c.rate_limit_pps = 10_000)]);
        let n = 50_000;
        let start = std::time::Instant::now();
        dp.run(&ipv4(17, A, B, 1, 2, 60), 0, n);
        let elapsed = start.elapsed().as_secs_f64();
        let (passed, limited) = (dp.packets(1, reason::DRY_RUN), dp.packets(1, reason::RATE_LIMITED));
        assert_eq!(passed + limited, u64::from(n));
        let most = 1.0 + 1_000.0 + 10_000.0 * elapsed;
        assert!(
            passed >= 1_000 && passed as f64 <= most,
            "{passed} passed in {elapsed:.3} s (at most {most:.0})"
        );
        // A byte budget: 100 kB/s with a 1 000-byte burst lets 10 + 1
        // 100-byte copies through at once.
        dp.set_sessions(&[TestSession::new(2).dry_run().with(|c| {
            c.rate_limit_bps = 100_000;
            c.burst_bytes = 1_000;
        })]);
        dp.run(&ipv4(17, A, B, 1, 2, 100), 0, 200);
        let passed = dp.packets(2, reason::DRY_RUN);
        assert!((10..=12).contains(&passed), "{passed} 100-byte copies passed a 1000-byte burst");
    });
}

/// A copy reaches a source hook: only sessions that include copies copy it,
/// and not deeper than `MAX_DEPTH`; the others do not count it as theirs.
#[test]
fn copies_are_copied_again_only_by_sessions_that_include_them_and_only_so_deep() {
    let fx = Fixture::new("sel-copies");
    fx.ns.run(|| {
        let mut dp = fx.load();
        let frame = ipv4(17, A, B, 1, 2, 60);
        let copy_at = |depth| copy_mark::encode_at(9, 0, depth);
        // No session includes copies: counted once, program-wide.
        dp.set_sessions(&[TestSession::new(1)]);
        assert_eq!(dp.run(&frame, copy_at(1), 1), (NEXT, copy_at(1)));
        assert_eq!(dp.packets(GLOBAL_SESSION_ID, reason::COPY_NOT_REMIRRORED), 1);
        assert_eq!(dp.packets(1, reason::MIRRORED), 0);
        dp.set_sessions(&[
            TestSession::new(1),
            TestSession::new(2).with(|c| c.select_flags |= select_flags::INCLUDE_COPIES),
        ]);
        for depth in 1..copy_mark::MAX_DEPTH {
            assert_eq!(dp.run(&frame, copy_at(depth), 1), (NEXT, copy_at(depth)), "the copy's tag is kept");
        }
        assert_eq!(dp.packets(2, reason::MIRRORED), u64::from(copy_mark::MAX_DEPTH - 1));
        dp.run(&frame, copy_at(copy_mark::MAX_DEPTH), 1);
        assert_eq!(dp.packets(2, reason::HOP_LIMIT), 1);
        assert_eq!(dp.packets(1, reason::MIRRORED), 0, "a session without --include-copies copied a copy");
        // Originals still go to both.
        dp.run(&frame, 0, 1);
        assert_eq!((dp.packets(1, reason::MIRRORED), dp.packets(2, reason::MIRRORED)), (1, 3));
    });
}

/// A copy sent by an exclusive slot is itself mirrored, inside the clone
/// call, by an exclusive `--include-copies` session on the destination's
/// egress: that nested run claims its own packet, and must not erase the
/// outer run's claim. The outer packet is taken by its first exclusive
/// session only.
#[test]
fn a_nested_run_does_not_erase_the_outer_exclusive_claim() {
    use aya::programs::{SchedClassifier, TcAttachType};
    use mirror_common::{SourceKey, direction};
    let fx = Fixture::new("sel-nest");
    fx.ns.run(|| {
        let mut dp = fx.load();
        let exclusive = |c: &mut mirror_common::SessionConfig| c.select_flags |= select_flags::EXCLUSIVE;
        // d1's egress: an exclusive session that includes copies, to d0.
        let d1_egress = SourceKey { ifindex: dp.dst, direction: direction::EGRESS };
        let inner =
            TestSession::new(3).with(exclusive).with(|c| c.select_flags |= select_flags::INCLUDE_COPIES);
        dp.set_hook(d1_egress, 1, &[inner], dp.src);
        let link = {
            let p: &mut SchedClassifier =
                dp.ebpf.program_mut("mirror_src_egress").unwrap().try_into().unwrap();
            p.attach("d1", TcAttachType::Egress).expect("attach mirror_src_egress to d1")
        };
        dp.set_sessions(&[TestSession::new(1).with(exclusive), TestSession::new(2).with(exclusive)]);
        for _ in 0..5 {
            assert_eq!(dp.run(&ipv4(17, A, B, 1, 2, 80), 0, 1), (NEXT, 0));
        }
        let count_egress = |id: u32, r: u32| {
            let map: aya::maps::PerCpuArray<_, mirror_common::DirectionCounters> =
                aya::maps::PerCpuArray::try_from(dp.ebpf.map("COUNTERS").unwrap()).unwrap();
            map.get(&mirror_common::counter_index(id, direction::EGRESS), 0)
                .unwrap()
                .iter()
                .map(|c| c.reasons[r as usize].packets)
                .sum::<u64>()
        };
        assert_eq!(count_egress(3, reason::MIRRORED), 5, "the nested session copied each copy");
        assert_eq!(dp.packets(1, reason::MIRRORED), 5);
        assert_eq!((dp.packets(2, reason::PREEMPTED), dp.packets(2, reason::MIRRORED)), (5, 0));
        let p: &mut SchedClassifier = dp.ebpf.program_mut("mirror_src_egress").unwrap().try_into().unwrap();
        p.detach(link).unwrap();
    });
}

/// Native filters decide without the interpreter; the interpreter still
/// decides what they cannot: bytes past the view's first 128, and a slot
/// whose program is missing from `NATIVE_FILTERS` (being replaced).
#[test]
fn native_filters_decide_and_the_interpreter_takes_what_they_cannot() {
    let fx = Fixture::new("native");
    fx.ns.run(|| {
        let mut dp = fx.load_native();
        dp.set_sessions(&[TestSession::new(1).dry_run().program(program("tcp dst port 80"))]);
        dp.poison_interpreter();
        assert!(dp.selects(1, &ipv4(6, A, B, 1000, 80, 60)));
        assert!(!dp.selects(1, &ipv4(6, A, B, 1000, 81, 60)));
        assert!(!dp.selects(1, &ipv4(17, A, B, 1000, 80, 60)), "the prefilter, or the native code");
        assert!(!dp.interpreted(), "the interpreter ran a filter native code decides");
        assert_eq!(dp.packets(1, reason::FILTERED), 2);

        // A program without parsed fields reads the packet, past the
        // view's first 128 bytes too.
        dp.set_sessions(&[TestSession::new(1).dry_run().program(program("tcp and ether[150] = 7"))]);
        let mut long = ipv4(6, A, B, 1000, 80, 200);
        long[150] = 7;
        dp.poison_interpreter();
        assert!(dp.selects(1, &long));
        long[150] = 8;
        assert!(!dp.selects(1, &long));
        assert!(!dp.selects(1, &ipv4(6, A, B, 1000, 80, 100)), "past the frame: rejected natively");
        assert!(!dp.interpreted(), "the interpreter ran a filter native code decides");

        // One with rules reads the view (parsed there): a byte past it goes
        // to the interpreter, which reads it from the packet.
        let rules = filter::rules::validate(
            vec![filter::rules::parse_rule("100 accept tcp dport 80").unwrap()],
            filter::ast::Action::Reject,
        )
        .unwrap();
        let both =
            Selection { rules: Some(rules), expr: Some(filter::parse_expr("ether[150] = 7").unwrap()) };
        dp.set_sessions(&[TestSession::new(1)
            .dry_run()
            .program(filter::compile_selection(&both).unwrap().unwrap())]);
        long[150] = 7;
        dp.poison_interpreter();
        assert!(!dp.selects(1, &ipv4(6, A, B, 1000, 81, 200)), "rejected by the rules, natively");
        assert!(!dp.interpreted(), "the rules decided without the byte past the view");
        assert!(dp.selects(1, &long));
        assert!(dp.interpreted(), "native code cannot read past the view: the interpreter decides");
        long[150] = 8;
        assert!(!dp.selects(1, &long));

        // A chain of two: each program decides its own slot, none is
        // interpreted.
        dp.set_sessions(&[
            TestSession::new(1).dry_run().program(program("udp")),
            TestSession::new(2).dry_run().program(program("udp dst port 80")),
        ]);
        dp.poison_interpreter();
        let second = |dp: &mirror_tests::datapath::Datapath| dp.packets(2, reason::DRY_RUN);
        assert!(dp.selects(1, &ipv4(17, A, B, 1000, 80, 60)));
        assert_eq!(second(&dp), 1, "the chain's second program accepted");
        assert!(dp.selects(1, &ipv4(17, A, B, 1000, 81, 60)));
        assert_eq!(second(&dp), 1, "the chain's second program rejected");
        assert_eq!(dp.packets(2, reason::FILTERED), 1);
        assert!(!dp.interpreted(), "the interpreter ran a filter of the chain");

        // The program gone from the array: the hook goes on without it.
        dp.set_sessions(&[TestSession::new(1).dry_run().program(program("tcp dst port 80"))]);
        dp.clear_native(mirror_common::selector_index(1, false));
        dp.poison_interpreter();
        assert!(dp.selects(1, &ipv4(6, A, B, 1000, 80, 60)));
        assert!(dp.interpreted(), "no native program: the interpreter decides");
        assert!(!dp.selects(1, &ipv4(6, A, B, 1000, 81, 60)));
    });
}
