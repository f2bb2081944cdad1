//! `cargo xtask bench`: what a mirrored packet costs, for the agent and for
//! the kernel's own `tc mirred`, against a no-mirror baseline, in one run on
//! one topology, with paired, interleaved and rotated trials.
pub mod daemon;
mod generator;
mod lab;
mod variants;

use std::{collections::BTreeMap, path::Path, thread::sleep, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use self::{
    generator::Load,
    lab::{Forwarding, GEN, Lab, SINK, ns_exec, sh},
    variants::{VARIANTS, Variant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Repeats of every trial (the variant order is shuffled each repeat).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Seconds measured per trial.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Modes to run: max (single-core forwarding rate), fixed (offered load,
    /// NET_RX ns/pkt on the RPS CPU), tcp (iperf3), rate (`--rate-limit`
    /// accuracy: copies per second delivered, for each of --rate-limits).
    #[arg(long, value_delimiter = ',', default_value = "max,fixed,tcp,rate")]
    pub modes: Vec<Mode>,
    /// Frame sizes (bytes, L2 without FCS) for max and fixed modes.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub sizes: Vec<usize>,
    /// Offered load of the fixed mode, packets per second.
    #[arg(long, default_value_t = 200_000)]
    pub pps: u64,
    /// Limits the rate mode sets (`--rate-limit`, copies per second; suffix k, M).
    #[arg(long, value_delimiter = ',', default_value = "10k,50k,100k,500k", value_parser = parse_rate)]
    pub rate_limits: Vec<u64>,
    /// What the rate mode offers, as a multiple of the limit (64-byte
    /// frames at a fixed rate, half from each CPU).
    #[arg(long, default_value_t = 1.5)]
    pub rate_offered: f64,
    /// How the host namespace forwards: routed (the original is written, so
    /// mirred pays its unclone in ip_forward) or bridged (it is not).
    #[arg(long, value_enum, default_value_t = Forwarding::Routed)]
    pub forwarding: Forwarding,
    /// Variants to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// After the measured trials, one unmeasured max-mode pass under `perf
    /// record -e cpu-clock` on the CPU that runs generator and path, per
    /// variant; prints where the time goes.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    Max,
    Fixed,
    Tcp,
    Rate,
    /// The source hook alone, timed by the kernel: BPF_PROG_TEST_RUN of the
    /// program attached to the source, on the generator's frame (agent
    /// variants; `base` is 0, nothing attached). Copies still go out, so
    /// `agent` includes the clone.
    Hook,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Fixed => "fixed",
            Self::Tcp => "tcp",
            Self::Rate => "rate",
            Self::Hook => "hook",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Max => "Mpps",
            Self::Fixed => "ns/pkt",
            Self::Tcp => "Gbit/s",
            Self::Rate => "copies/s",
            Self::Hook => "ns/run",
        }
    }
}

/// Generator on CPU 0; with RPS the path runs on CPU 1.
const GEN_CPU: usize = 0;
const PATH_CPU: usize = 1;
const WARMUP: Duration = Duration::from_millis(300);

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: f64,
    /// Copies the collector received per packet that reached the sink
    /// (TCP mode: copies received in total).
    copies_per_packet: f64,
}

fn measure_max(lab: &Lab, size: usize, secs: f64, perf_out: Option<&Path>) -> Result<Sample> {
    lab.set_rps(0)?;
    let load = Load {
        frame_len: size,
        dst_mac: lab.first_hop,
        pps: None,
        duration: WARMUP * 2 + Duration::from_secs_f64(secs),
        cpu: GEN_CPU,
    };
    std::thread::scope(|s| {
        let gen_thread = s.spawn(move || generator::run(load));
        sleep(WARMUP);
        let (p0, c0, t0) = (lab.sink_packets()?, lab.copies()?, std::time::Instant::now());
        match perf_out {
            // The generator's CPU runs the whole path: profile exactly the window.
            Some(out) => sh(std::process::Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-F", "10000", "-C", &GEN_CPU.to_string(), "-o"])
                .arg(out)
                .args(["--", "sleep", &secs.to_string()]))
            .map(drop)?,
            None => sleep(Duration::from_secs_f64(secs)),
        }
        let (p1, c1, dt) = (lab.sink_packets()?, lab.copies()?, t0.elapsed());
        gen_thread.join().expect("generator")?;
        let packets = (p1 - p0) as f64;
        Ok(Sample {
            value: packets / dt.as_secs_f64() / 1e6,
            copies_per_packet: (c1 - c0) as f64 / packets.max(1.0),
        })
    })
}

/// Runs of the source hook per trial, and trials per sample (the median).
const HOOK_RUNS: u32 = 100_000;
const HOOK_TRIALS: usize = 11;

fn measure_hook(lab: &Lab, agent: &Path, v: &Variant, size: usize) -> Result<Sample> {
    if v.name == "base" {
        return Ok(Sample { value: 0.0, copies_per_packet: 0.0 });
    }
    let frame = generator::udp_frame(size, lab.first_hop);
    let before = variants::packets_seen(agent)?;
    let ns = lab::in_ns(lab::HOST, || {
        let fd = lab::source_program(variants::SOURCE)?;
        let ifindex = lab::ifindex(variants::SOURCE)?;
        let mut runs = (0..HOOK_TRIALS)
            .map(|_| lab::test_run(&fd, &frame, ifindex, HOOK_RUNS))
            .collect::<Result<Vec<_>>>()?;
        runs.sort_by(f64::total_cmp);
        Ok(runs[runs.len() / 2])
    })?;
    // Every run reached the session (not some other path of the program):
    // its counters moved once per run, give or take the live traffic's
    // stray frames.
    let seen = variants::packets_seen(agent)? - before;
    let runs = HOOK_TRIALS as u64 * u64::from(HOOK_RUNS);
    if seen < runs || seen > runs + runs / 100 {
        bail!("{}: the session saw {seen} packets in {runs} runs of its hook", v.name);
    }
    Ok(Sample { value: ns, copies_per_packet: f64::NAN })
}

fn measure_fixed(lab: &Lab, size: usize, secs: f64, pps: u64) -> Result<Sample> {
    lab.set_rps(1 << PATH_CPU)?;
    let load = Load {
        frame_len: size,
        dst_mac: lab.first_hop,
        pps: Some(pps),
        duration: WARMUP * 2 + Duration::from_secs_f64(secs),
        cpu: GEN_CPU,
    };
    std::thread::scope(|s| {
        let gen_thread = s.spawn(move || generator::run(load));
        sleep(WARMUP);
        let (p0, c0, n0) = (lab.sink_packets()?, lab.copies()?, lab.net_rx_ns(PATH_CPU)?);
        sleep(Duration::from_secs_f64(secs));
        let (p1, c1, n1) = (lab.sink_packets()?, lab.copies()?, lab.net_rx_ns(PATH_CPU)?);
        gen_thread.join().expect("generator")?;
        let packets = (p1 - p0) as f64;
        if packets < pps as f64 * secs * 0.5 {
            bail!("fixed load: only {packets} of {} packets reached the sink", pps as f64 * secs);
        }
        Ok(Sample { value: (n1 - n0) as f64 / packets, copies_per_packet: (c1 - c0) as f64 / packets })
    })
}

fn measure_tcp(lab: &Lab, secs: f64) -> Result<Sample> {
    lab.set_rps(0)?;
    let c0 = lab.copies()?;
    let mut server = ns_exec(SINK, &["iperf3", "-s", "-1", "-B", "198.18.2.2"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    sleep(Duration::from_millis(200));
    let out = sh(&mut ns_exec(GEN, &["iperf3", "-c", "198.18.2.2", "-t", &format!("{secs}"), "-J"]));
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out?)?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON")?;
    let copies = (lab.copies()? - c0) as f64;
    Ok(Sample { value: bps / 1e9, copies_per_packet: copies })
}

/// A count with an optional suffix: `50k`, `1M`.
fn parse_rate(text: &str) -> Result<u64, String> {
    let (digits, scale) = match text.trim() {
        t if t.ends_with(['k', 'K']) => (&t[..t.len() - 1], 1_000),
        t if t.ends_with('M') => (&t[..t.len() - 1], 1_000_000),
        t => (t, 1),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n * scale),
        _ => Err(format!("{text:?} is not a positive count (digits, optionally with k or M)")),
    }
}

/// The rate mode's window starts once the session has rate-limited a copy
/// (the bucket, which starts full with the default burst of 0.1 s worth of
/// the limit, is then empty), plus [`WARMUP`]; at most this long after the
/// load starts.
const RATE_DRAIN_MAX: Duration = Duration::from_secs(3);
/// The rate mode samples the load at the hook this often: a trial counts
/// only if every slice offered more than the limit, so that the bucket
/// never had credit to gain (then the window's count is within ±burst of
/// limit × window, ±0.1 s / --seconds).
const RATE_SLICE: Duration = Duration::from_millis(100);

/// One `--rate-limit` trial.
#[derive(Debug, Clone, Copy)]
struct RateSample {
    /// Copies per second the destination took in the window.
    achieved: f64,
    /// Packets per second that reached the source's hooks in the window.
    offered: f64,
    /// The same in the window's slowest [`RATE_SLICE`].
    offered_min: f64,
    /// Whether the limit held back copies throughout the window: the bucket
    /// was emptied before it, and no slice offered less than the limit.
    valid: bool,
    /// Copies the agent counts as handed to the destination that the
    /// destination's counter did not see, over the whole trial (a check of
    /// the count).
    lost: i64,
    /// Copies the agent counts as `rate_limited` in the whole trial.
    limited: u64,
    /// From the start of the load to the first copy rate-limited (None:
    /// not within [`RATE_DRAIN_MAX`]).
    drained: Option<Duration>,
}

/// Packets the kernel's per-CPU backlogs dropped (all CPUs, since boot).
fn backlog_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")?;
    text.lines()
        .map(|l| {
            let col = l.split_whitespace().nth(1).context("softnet_stat")?;
            Ok(u64::from_str_radix(col, 16)?)
        })
        .sum()
}

/// The session's counters for `reason` (both directions), from `stats --json`.
fn agent_counts(agent: &Path, reasons: &[&str]) -> Result<Vec<u64>> {
    let out = sh(std::process::Command::new(agent).args(["-n", lab::HOST, "stats", "--json", "bench"]))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let counters = &v["sessions"][0]["counters"];
    reasons
        .iter()
        .map(|r| {
            ["ingress", "egress"]
                .iter()
                .map(|d| counters[d][r]["packets"].as_u64().with_context(|| format!("stats: {d} {r}")))
                .sum()
        })
        .collect()
}

/// Copies per second that reach the collector from a session with
/// `--rate-limit rate`, offered `rate_offered` times that, steady state.
fn measure_rate(lab: &Lab, agent: &Path, rate: u64, opts: &Options) -> Result<RateSample> {
    // Both CPUs send, and each runs the path of its own packets (no RPS):
    // the session's bucket is shared by CPUs, as on a multi-queue NIC, and
    // one CPU alone cannot both send and copy much more than 400k per second.
    lab.set_rps(0)?;
    let offered = (rate as f64 * opts.rate_offered / 2.0).round() as u64;
    let secs = Duration::from_secs_f64(opts.seconds);
    // The originals are not forwarded (dropped as "other host" right after
    // the hooks), and the copies are counted and dropped at the
    // destination's egress: that leaves room for 500k copies per second and
    // more packets than that at the hook.
    let load = Load {
        frame_len: 64,
        dst_mac: lab::NOBODY_MAC,
        pps: Some(offered),
        duration: RATE_DRAIN_MAX + WARMUP + secs + WARMUP,
        cpu: GEN_CPU,
    };
    let select = ["--rate-limit".to_owned(), rate.to_string()];
    variants::attach_agent(agent, variants::MON, "both", 0, &select)?;
    let trial = || -> Result<RateSample> {
        let (c_start, drops_start) = (lab.dest_copies()?, backlog_drops()?);
        let mut rx = lab.source_rx()?;
        let window = std::thread::scope(|s| -> Result<_> {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let gen_threads = [GEN_CPU, PATH_CPU].map(|cpu| {
                let stop = stop.clone();
                s.spawn(move || generator::run_until(Load { cpu, ..load }, stop))
            });
            let started = std::time::Instant::now();
            let mut drained = None;
            while started.elapsed() <= RATE_DRAIN_MAX {
                if agent_counts(agent, &["rate_limited"])?[0] > 0 {
                    drained = Some(started.elapsed());
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            sleep(WARMUP);
            let mut samples = Vec::new();
            let mut sample = || -> Result<(std::time::Instant, u64, u64)> {
                let (r, c) = (rx.read()?, lab.dest_copies()?);
                Ok((std::time::Instant::now(), r, c))
            };
            samples.push(sample()?);
            let end = samples[0].0 + secs;
            while let Some(left) =
                end.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero())
            {
                sleep(left.min(RATE_SLICE));
                samples.push(sample()?);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in gen_threads {
                t.join().expect("generator")?;
            }
            let per_s = |a: &(std::time::Instant, u64, u64), b: &(std::time::Instant, u64, u64)| {
                let dt = b.0.duration_since(a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / dt, (b.2 - a.2) as f64 / dt)
            };
            let (first, last) = (&samples[0], &samples[samples.len() - 1]);
            let (offered, achieved) = per_s(first, last);
            let offered_min = samples.windows(2).map(|w| per_s(&w[0], &w[1]).0).fold(f64::INFINITY, f64::min);
            Ok((offered, achieved, offered_min, drained))
        })?;
        sleep(Duration::from_millis(50));
        let delivered = lab.dest_copies()? - c_start;
        let drops = backlog_drops()? - drops_start;
        // The sink's drop at the destination's egress reaches the agent as
        // NET_XMIT_DROP: it counts those copies as `dest_queue_drop`.
        let counts = agent_counts(agent, &["mirrored", "dest_queue_drop", "rate_limited"])?;
        if drops > 0 {
            eprintln!("  rate {rate}: the kernel's backlogs dropped {drops} packets in this trial");
        }
        let (offered, achieved, offered_min, drained) = window;
        Ok(RateSample {
            achieved,
            offered,
            offered_min,
            valid: drained.is_some() && offered_min > rate as f64,
            lost: (counts[0] + counts[1]) as i64 - delivered as i64,
            limited: counts[2],
            drained,
        })
    };
    let sample = trial();
    variants::detach_agent(agent)?;
    sample
}

/// The variants in a pseudo-random order fixed by `seed` (splitmix64): unlike a
/// rotation, no variant always follows the same one, so carry-over averages out.
fn shuffled(variants: &[Variant], seed: u64) -> Vec<Variant> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = variants.to_vec();
    for i in (1..out.len()).rev() {
        out.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    out
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    (v[0], median, v[v.len() - 1])
}

type Key = (Mode, usize);

pub fn run(opts: &Options, agent: &Path, bench_object: &Path) -> Result<()> {
    if opts.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let variants: Vec<Variant> = if opts.variants.is_empty() {
        VARIANTS.to_vec()
    } else {
        opts.variants
            .iter()
            .map(|n| {
                VARIANTS
                    .iter()
                    .find(|v| v.name == n)
                    .copied()
                    .with_context(|| format!("unknown variant {n:?}"))
            })
            .collect::<Result<_>>()?
    };
    let paired_modes = opts.modes.iter().any(|&m| m != Mode::Rate);
    if paired_modes && !variants.iter().any(|v| v.name == "base") {
        bail!("the base variant is needed: every figure is relative to it");
    }
    if opts.modes.contains(&Mode::Rate) && !(opts.rate_offered > 1.05 && opts.rate_offered <= 10.0) {
        bail!("--rate-offered must be above 1.05 (the load must exceed the limit) and at most 10");
    }
    if opts.forwarding == Forwarding::Bridged && opts.modes.contains(&Mode::Tcp) {
        bail!("the tcp mode needs the routed path (generator and sink are in different subnets)");
    }
    let mut lab = Lab::create(std::fs::read(bench_object)?, opts.forwarding)?;
    let mut keys: Vec<Key> = Vec::new();
    for &mode in &opts.modes {
        if mode == Mode::Tcp {
            keys.push((mode, 0));
        } else if mode == Mode::Rate {
            // Its own loop below: one session, no variants.
        } else {
            keys.extend(opts.sizes.iter().map(|&s| (mode, s)));
        }
    }
    // results[key][variant] = one sample per repeat
    let mut results: BTreeMap<Key, BTreeMap<&str, Vec<Sample>>> = BTreeMap::new();
    // rate_results[limit] = one sample per repeat
    let mut rate_results: BTreeMap<u64, Vec<RateSample>> = BTreeMap::new();
    for repeat in 0..opts.repeats {
        if opts.modes.contains(&Mode::Rate) {
            lab.set_sink_drop(true)?;
            lab.set_net_rx_accounting(false)?;
            lab.set_dest_sink(Some(variants::MON))?;
            for &rate in &opts.rate_limits {
                let s = measure_rate(&lab, agent, rate, opts).with_context(|| format!("rate {rate}"))?;
                eprintln!(
                    "repeat {}/{} rate  {:>9} pps limit: {:>9.0} copies/s = {:.4}x; at the hook {:.0} pps \
                     (slowest {:.0}), {} rate_limited, first after {}, {} lost{}",
                    repeat + 1,
                    opts.repeats,
                    rate,
                    s.achieved,
                    s.achieved / rate as f64,
                    s.offered,
                    s.offered_min,
                    s.limited,
                    s.drained.map_or("-".to_owned(), |d| format!("{d:.2?}")),
                    s.lost,
                    if s.valid { "" } else { " (not counted: the load fell below the limit)" },
                );
                rate_results.entry(rate).or_default().push(s);
            }
            lab.set_dest_sink(None)?;
        }
        for &key in &keys {
            lab.set_sink_drop(key.0 != Mode::Tcp)?;
            lab.set_net_rx_accounting(key.0 == Mode::Fixed)?;
            for v in shuffled(&variants, repeat as u64 * 1009 + key.1 as u64) {
                // The hook mode times the agent's ingress program.
                if key.0 == Mode::Hook && !v.taps_ingress() && v.name != "base" {
                    continue;
                }
                v.attach(agent, &mut lab).with_context(|| format!("attaching {}", v.name))?;
                let sample = match key.0 {
                    Mode::Max => measure_max(&lab, key.1, opts.seconds, None),
                    Mode::Fixed => measure_fixed(&lab, key.1, opts.seconds, opts.pps),
                    Mode::Tcp => measure_tcp(&lab, opts.seconds),
                    Mode::Hook => measure_hook(&lab, agent, &v, key.1),
                    Mode::Rate => unreachable!("the rate mode has its own loop"),
                };
                v.detach(agent, &mut lab).with_context(|| format!("detaching {}", v.name))?;
                let sample = sample.with_context(|| format!("{} {} {}B", v.name, key.0.name(), key.1))?;
                // A trial only counts if the variant did what it claims: one
                // copy per packet (±1%), or none.
                let copies = sample.copies_per_packet;
                let ok = match key.0 {
                    Mode::Tcp => (copies > 0.0) == v.tcp_copies,
                    // Copies sent back to back overflow the collector's
                    // backlog: `measure_hook` checks the session's counters.
                    Mode::Hook => true,
                    _ => v.copies_ok(copies),
                };
                if !ok {
                    bail!(
                        "{} {} {}B: the collector got {copies:.3} copies per packet",
                        v.name,
                        key.0.name(),
                        key.1
                    );
                }
                eprintln!(
                    "repeat {}/{} {:<5} {:>4}B {:<20} {:>9.3} {}",
                    repeat + 1,
                    opts.repeats,
                    key.0.name(),
                    key.1,
                    v.name,
                    sample.value,
                    key.0.unit()
                );
                results.entry(key).or_default().entry(v.name).or_default().push(sample);
            }
        }
    }
    report(opts, &results, &rate_results)?;
    if opts.profile {
        // A pass of its own: perf's overhead must not touch the figures above.
        lab.set_sink_drop(true)?;
        lab.set_net_rx_accounting(false)?;
        for &(mode, size) in keys.iter().filter(|k| k.0 == Mode::Max) {
            for v in &variants {
                v.attach(agent, &mut lab)?;
                let r = measure_max(&lab, size, opts.seconds, Some(&profile_path(v.name, size)));
                v.detach(agent, &mut lab)?;
                r.with_context(|| format!("profiling {} {} {size}B", v.name, mode.name()))?;
            }
        }
        print_profiles(&variants, &opts.sizes)?;
    }
    Ok(())
}

fn profile_path(variant: &str, size: usize) -> std::path::PathBuf {
    crate::workspace_root().join(format!("target/bench/perf-{variant}-{size}.data"))
}

/// Top symbols of each recorded variant, in percent of the CPU's samples.
fn print_profiles(variants: &[Variant], sizes: &[usize]) -> Result<()> {
    for &size in sizes {
        for v in variants {
            let path = profile_path(v.name, size);
            if !path.exists() {
                continue;
            }
            let out = sh(std::process::Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--sort", "symbol", "-i"])
                .arg(&path)
                .args(["--percent-limit", "1.5"]))?;
            println!("\n== profile: max {size}B {} (CPU {GEN_CPU}, cpu-clock; {})", v.name, path.display());
            for line in out.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
                println!("   {}", line.trim());
            }
        }
    }
    Ok(())
}

fn report(
    opts: &Options,
    results: &BTreeMap<Key, BTreeMap<&str, Vec<Sample>>>,
    rate_results: &BTreeMap<u64, Vec<RateSample>>,
) -> Result<()> {
    let mut json_rows = Vec::new();
    println!(
        "\n{:<6} {:>5} {:<20} {:>10} {:>10} {:>10}  {:<26} {:>8}",
        "mode", "size", "variant", "median", "min", "max", "paired vs base (med [min,max])", "copies/p"
    );
    for (&(mode, size), by_variant) in results {
        let base = &by_variant["base"];
        for (name, samples) in by_variant {
            let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
            let (min, med, max) = stats(&values);
            // Within each repeat: ratio (rates) or difference (ns/pkt) to base.
            let paired: Vec<f64> = samples
                .iter()
                .zip(base)
                .map(|(s, b)| {
                    if matches!(mode, Mode::Fixed | Mode::Hook) {
                        s.value - b.value
                    } else {
                        s.value / b.value
                    }
                })
                .collect();
            let (pmin, pmed, pmax) = stats(&paired);
            let paired_text = if matches!(mode, Mode::Fixed | Mode::Hook) {
                format!("{pmed:+.0} ns [{pmin:+.0},{pmax:+.0}]")
            } else {
                format!("{pmed:.3}x [{pmin:.3},{pmax:.3}]")
            };
            let copies = stats(&samples.iter().map(|s| s.copies_per_packet).collect::<Vec<_>>()).1;
            let size_text = if mode == Mode::Tcp { "-".to_owned() } else { size.to_string() };
            println!(
                "{:<6} {:>5} {:<20} {:>10.3} {:>10.3} {:>10.3}  {:<26} {:>8.3}",
                mode.name(),
                size_text,
                name,
                med,
                min,
                max,
                paired_text,
                copies
            );
            json_rows.push(json!({
                "mode": mode.name(), "size": size, "variant": name, "unit": mode.unit(),
                "values": values, "min": min, "median": med, "max": max,
                "paired_vs_base": paired, "paired_median": pmed,
                "copies_per_packet_median": copies,
            }));
        }
    }
    let mut targets = targets(results);
    let mut rate_rows = Vec::new();
    for (&rate, samples) in rate_results {
        let ratio = |s: &RateSample| s.achieved / rate as f64;
        // Only trials whose load exceeded the limit throughout measure it.
        let valid: Vec<f64> = samples.iter().filter(|s| s.valid).map(ratio).collect();
        let lost: i64 = samples.iter().map(|s| s.lost).sum();
        let (_, offered, _) = stats(&samples.iter().map(|s| s.offered).collect::<Vec<_>>());
        let figure = if valid.is_empty() {
            "no trial offered more than the limit throughout".to_owned()
        } else {
            let (lo, med, hi) = stats(&valid);
            format!("{med:.4} [{lo:.4},{hi:.4}]")
        };
        targets.push(format!(
            "rate {rate} pps: delivered / limit = {figure} (target 0.95..1.05); {} of {} trials valid, \
             {offered:.0} pps at the hook, {lost} copies miscounted",
            valid.len(),
            samples.len()
        ));
        rate_rows.push(json!({
            "limit_pps": rate, "offered_factor": opts.rate_offered,
            "delivered_pps": samples.iter().map(|s| s.achieved).collect::<Vec<_>>(),
            "ratios": samples.iter().map(ratio).collect::<Vec<_>>(),
            "valid": samples.iter().map(|s| s.valid).collect::<Vec<_>>(),
            "hook_pps": samples.iter().map(|s| s.offered).collect::<Vec<_>>(),
            "hook_pps_slowest_slice": samples.iter().map(|s| s.offered_min).collect::<Vec<_>>(),
            "drained_s": samples.iter().map(|s| s.drained.map(|d| d.as_secs_f64())).collect::<Vec<_>>(),
            "lost": samples.iter().map(|s| s.lost).collect::<Vec<_>>(),
            "rate_limited": samples.iter().map(|s| s.limited).collect::<Vec<_>>(),
        }));
    }
    println!("\ntargets (medians of per-repeat ratios):");
    for t in &targets {
        println!("  {t}");
    }
    let doc = json!({
        "options": {
            "repeats": opts.repeats, "seconds": opts.seconds, "pps": opts.pps, "sizes": opts.sizes,
            "rate_limits": opts.rate_limits, "rate_offered": opts.rate_offered,
            "forwarding": format!("{:?}", opts.forwarding).to_lowercase(),
        },
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rows": json_rows,
        "rate_limit": rate_rows,
        "targets": targets,
    });
    let dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("\nJSON: {}", path.display());
    Ok(())
}

/// The targets, each as the median over repeats of a within-repeat ratio.
fn targets(results: &BTreeMap<Key, BTreeMap<&str, Vec<Sample>>>) -> Vec<String> {
    // f(variant, base, reference) per repeat; None if a variant did not run.
    type Paired<'a> = &'a dyn Fn(f64, f64, f64) -> f64;
    let paired_vs = |key: &Key, variant: &str, reference: &str, f: Paired<'_>| -> Option<(f64, f64, f64)> {
        let by = results.get(key)?;
        let (v, base, r) = (by.get(variant)?, by.get("base")?, by.get(reference)?);
        let out: Vec<f64> = (0..v.len()).map(|i| f(v[i].value, base[i].value, r[i].value)).collect();
        Some(stats(&out))
    };
    let paired = |key: &Key, variant: &str, f: Paired<'_>| paired_vs(key, variant, "tc", f);
    let snap_vs_full = |key: &Key| -> Option<(f64, f64, f64)> {
        let by = results.get(key)?;
        let r: Vec<f64> =
            by.get("agent-snap128")?.iter().zip(by.get("agent")?).map(|(s, a)| s.value / a.value).collect();
        Some(stats(&r))
    };
    // Issue 8's rows, with `added(value, base)` the added ns per packet of the mode.
    type Push<'p> = dyn FnMut(String, Option<(f64, f64, f64)>, &dyn Fn(f64) -> String, &str) + 'p;
    let selection = |key: &Key, push: &mut Push<'_>, added: &dyn Fn(f64, f64) -> f64| {
        let ratio = |x: f64| format!("{x:.3}");
        let ns = |x: f64| format!("{x:+.1} ns");
        for v in ["tc-nomatch", "agent-filter-nomatch"] {
            push(format!("{v} added ns per packet"), paired_vs(key, v, v, &|x, b, _| added(x, b)), &ns, "-");
        }
        push(
            "agent-filter-nomatch minus tc-nomatch added ns".into(),
            paired_vs(key, "agent-filter-nomatch", "tc-nomatch", &|f, b, t| added(f, b) - added(t, b)),
            &ns,
            "<= 0",
        );
        push(
            "agent-filter-nomatch / tc-nomatch added ns".into(),
            paired_vs(key, "agent-filter-nomatch", "tc-nomatch", &|f, b, t| added(f, b) / added(t, b)),
            &ratio,
            "<= 1.00",
        );
        for (v, target) in
            [("agent-filter10", "<= 1.10"), ("agent-rules10", "<= 1.10"), ("agent-sample100", "<= 0.10")]
        {
            push(
                format!("{v} / agent added ns"),
                paired_vs(key, v, "agent", &|x, b, a| added(x, b) / added(a, b)),
                &ratio,
                target,
            );
        }
    };
    let mut out = Vec::new();
    for key in results.keys() {
        let (mode, size) = *key;
        let mut push =
            |what: String, r: Option<(f64, f64, f64)>, fmt: &dyn Fn(f64) -> String, target: &str| {
                if let Some((lo, med, hi)) = r {
                    out.push(format!(
                        "{} {size}B: {what} = {} [{},{}] (target {target})",
                        mode.name(),
                        fmt(med),
                        fmt(lo),
                        fmt(hi)
                    ));
                }
            };
        let ratio = |x: f64| format!("{x:.3}");
        let ns = |x: f64| format!("{x:+.1} ns");
        match mode {
            Mode::Fixed => {
                push(
                    "agent added ns / tc added ns".into(),
                    paired(key, "agent", &|a, b, t| (a - b) / (t - b)),
                    &ratio,
                    "<= 0.90",
                );
                push("agent - tc".into(), paired(key, "agent", &|a, _, t| a - t), &ns, "< 0");
                push(
                    "clone-floor added ns / tc added ns".into(),
                    paired(key, "clone-floor", &|f, b, t| (f - b) / (t - b)),
                    &ratio,
                    "-",
                );
                push(
                    "agent-idle over base".into(),
                    paired(key, "agent-idle", &|a, b, _| a - b),
                    &ns,
                    "<= +10 ns",
                );
                if size >= 1500 {
                    push("agent-snap128 / agent ns".into(), snap_vs_full(key), &ratio, "<= 1.00");
                }
                selection(key, &mut push, &|v, b| v - b);
            }
            Mode::Max => {
                push(
                    "agent rate / tc rate".into(),
                    paired(key, "agent", &|a, _, t| a / t),
                    &ratio,
                    ">= 1.05",
                );
                // Per copy, without the generator's share of the CPU: 1/rate - 1/base.
                let added = |r: f64, base: f64| 1e3 / r - 1e3 / base;
                push(
                    "agent added ns per copy".into(),
                    paired(key, "agent", &|a, b, _| added(a, b)),
                    &ns,
                    "-",
                );
                push("tc added ns per copy".into(), paired(key, "tc", &|t, b, _| added(t, b)), &ns, "-");
                push(
                    "agent / tc added ns per copy".into(),
                    paired(key, "agent", &|a, b, t| added(a, b) / added(t, b)),
                    &ratio,
                    "<= 0.90",
                );
                // The yardstick: what a bare `bpf_clone_redirect` costs.
                push(
                    "clone-floor / tc added ns per copy".into(),
                    paired(key, "clone-floor", &|f, b, t| added(f, b) / added(t, b)),
                    &ratio,
                    "-",
                );
                // Remote collector: both through the kernel's VXLAN device.
                push(
                    "agent-vxlan / tc-vxlan added ns per copy".into(),
                    paired_vs(key, "agent-vxlan", "tc-vxlan", &|a, b, t| added(a, b) / added(t, b)),
                    &ratio,
                    "-",
                );
                selection(key, &mut push, &added);
            }
            Mode::Hook => {
                push("agent hook ns".into(), paired_vs(key, "agent", "agent", &|a, _, _| a), &ns, "-");
                selection(key, &mut push, &|v, b| v - b);
            }
            Mode::Tcp | Mode::Rate => {}
        }
    }
    out
}
