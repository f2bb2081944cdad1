//! The differential test of pcap-filter expressions against tcpdump: the
//! committed capture `data/filter/filter.pcap` (written by
//! `data/filter/gen_pcap.py`), the corpus `data/filter/corpus.txt`,
//! tcpdump's verdict for every (expression, packet), and a runner that
//! holds any other implementation (the userspace machine, the reference
//! evaluator, the kernel through BPF_PROG_TEST_RUN) to those verdicts and
//! reports every disagreement at once.
//!
//! Packet `i` of the capture has timestamp exactly `i` seconds, so the
//! packets tcpdump keeps are identified by their timestamps. tcpdump runs
//! once per expression per test process (cached).
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail, ensure};

/// Link type of Ethernet captures (DLT_EN10MB).
const LINKTYPE_ETHERNET: u32 = 1;
/// Classic pcap magic, microsecond timestamps, as read little-endian.
const MAGIC_USEC: u32 = 0xa1b2_c3d4;
/// Classic pcap magic, nanosecond timestamps, as read little-endian.
const MAGIC_NSEC: u32 = 0xa1b2_3c4d;
/// tcpdump processes run at once when filling the cache.
const TCPDUMP_WORKERS: usize = 4;

/// `tests/data/filter`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/filter")
}

/// The committed capture.
pub fn pcap_path() -> PathBuf {
    data_dir().join("filter.pcap")
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses a classic little-endian pcap (microsecond or nanosecond magic) of
/// Ethernet frames; returns `(timestamp seconds, frame bytes)` per record.
pub fn read_pcap(path: &Path) -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pcap(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn parse_pcap(bytes: &[u8]) -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
    ensure!(bytes.len() >= 24, "too short for a pcap header ({} bytes)", bytes.len());
    let magic = le32(bytes, 0);
    ensure!(
        magic == MAGIC_USEC || magic == MAGIC_NSEC,
        "not a little-endian classic pcap (magic {magic:#010x})"
    );
    let linktype = le32(bytes, 20) & 0x0fff_ffff;
    ensure!(linktype == LINKTYPE_ETHERNET, "link type {linktype}, want {LINKTYPE_ETHERNET} (Ethernet)");
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        ensure!(bytes.len() - at >= 16, "truncated record header at offset {at}");
        let secs = le32(bytes, at);
        let caplen = usize::try_from(le32(bytes, at + 8))?;
        let wirelen = usize::try_from(le32(bytes, at + 12))?;
        // BPF's `len` is the wire length; our machine only sees the bytes.
        ensure!(caplen == wirelen, "record at offset {at}: caplen {caplen} != wire length {wirelen}");
        at += 16;
        ensure!(bytes.len() - at >= caplen, "truncated record at offset {at}: caplen {caplen}");
        out.push((secs, bytes[at..at + caplen].to_vec()));
        at += caplen;
    }
    Ok(out)
}

/// The packets of the committed capture: `(index, frame)`, the index being
/// the timestamp.
pub fn packets() -> Vec<(u32, Vec<u8>)> {
    static PACKETS: OnceLock<Vec<(u32, Vec<u8>)>> = OnceLock::new();
    PACKETS
        .get_or_init(|| {
            let path = pcap_path();
            let packets = read_pcap(&path).unwrap_or_else(|e| panic!("{e:#}"));
            for (i, (ts, _)) in packets.iter().enumerate() {
                assert_eq!(*ts as usize, i, "{}: packet {i} has timestamp {ts}", path.display());
            }
            packets
        })
        .clone()
}

/// The expressions of `data/filter/corpus.txt`, without blank and `#` lines.
pub fn corpus() -> Vec<String> {
    let path = data_dir().join("corpus.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// Runs `tcpdump -r PCAP -w - -- EXPR` and returns, for each packet of
/// `pcap` (by index, which is its timestamp), whether tcpdump kept it.
///
/// The kept packets are read from standard output rather than a file:
/// tcpdump may drop privileges before opening its `-w` file. `--` lets an
/// expression start with `-`.
pub fn tcpdump_verdicts_for(pcap: &Path, expr: &str) -> anyhow::Result<Vec<bool>> {
    let input = read_pcap(pcap)?;
    let out = Command::new("tcpdump")
        .arg("-r")
        .arg(pcap)
        .args(["-w", "-", "--", expr])
        .output()
        .context("spawning tcpdump (is it installed? `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("tcpdump rejected {expr:?} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let kept = parse_pcap(&out.stdout).with_context(|| format!("tcpdump output for {expr:?}"))?;
    let mut verdicts = vec![false; input.len()];
    for (ts, frame) in kept {
        let i = ts as usize;
        ensure!(i < input.len(), "tcpdump output has timestamp {ts}, beyond the {} inputs", input.len());
        ensure!(!verdicts[i], "tcpdump output has timestamp {ts} twice");
        ensure!(frame == input[i].1, "tcpdump output packet {ts} differs from the input");
        verdicts[i] = true;
    }
    Ok(verdicts)
}

fn cache() -> &'static Mutex<HashMap<String, Vec<bool>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<bool>>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// tcpdump's verdict on every packet of [`packets`] for `expr` (cached);
/// panics if tcpdump rejects it.
pub fn tcpdump_verdicts(expr: &str) -> Vec<bool> {
    if let Some(v) = cache().lock().unwrap().get(expr) {
        return v.clone();
    }
    let v = tcpdump_verdicts_for(&pcap_path(), expr).unwrap_or_else(|e| panic!("{e:#}"));
    cache().lock().unwrap().insert(expr.to_owned(), v.clone());
    v
}

/// [`tcpdump_verdicts`] of every expression, a few tcpdump processes at a
/// time; in the order of `exprs`.
pub fn tcpdump_verdicts_all(exprs: &[String]) -> Vec<Vec<bool>> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..TCPDUMP_WORKERS {
            s.spawn(|| {
                while let Some(expr) = exprs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    tcpdump_verdicts(expr);
                }
            });
        }
    });
    exprs.iter().map(|e| tcpdump_verdicts(e)).collect()
}

/// tcpdump's one-line decoding of each packet (`-nn -e`), for reports.
pub fn describe_packets() -> Vec<String> {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let out = Command::new("tcpdump")
                .arg("-r")
                .arg(pcap_path())
                .args(["-nn", "-e", "-tt", "-q"])
                .output()
                .expect("spawning tcpdump");
            let mut lines = vec![String::from("(no decoding)"); packets().len()];
            // Continuation lines (hex dumps) start with whitespace.
            for line in
                String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with(char::is_whitespace))
            {
                let Some((ts, rest)) = line.split_once(' ') else { continue };
                let Some(i) = ts.strip_suffix(".000000").and_then(|s| s.parse::<usize>().ok()) else {
                    continue;
                };
                if let Some(slot) = lines.get_mut(i) {
                    *slot = rest.chars().take(150).collect();
                }
            }
            lines
        })
        .clone()
}

/// One packet on which an implementation and tcpdump disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub expr: String,
    pub packet: usize,
    pub ours: bool,
    pub tcpdump: bool,
}

/// What [`differential`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Which implementation was held to tcpdump.
    pub label: String,
    pub expressions: usize,
    pub packets: usize,
    pub mismatches: Vec<Mismatch>,
    /// Expressions the implementation could not run (parse or compile
    /// errors), with the error.
    pub errors: Vec<(String, String)>,
}

impl Report {
    /// Panics listing every error and mismatch (mismatches grouped by
    /// expression, each packet with tcpdump's decoding).
    pub fn assert_clean(&self) {
        if self.mismatches.is_empty() && self.errors.is_empty() {
            return;
        }
        panic!("{}", self.render());
    }

    pub fn render(&self) -> String {
        let describe = describe_packets();
        let mut s = String::new();
        let exprs: std::collections::BTreeSet<&str> =
            self.mismatches.iter().map(|m| m.expr.as_str()).collect();
        let _ = writeln!(
            s,
            "{}: {} errors; {} mismatches in {} of {} expressions over {} packets",
            self.label,
            self.errors.len(),
            self.mismatches.len(),
            exprs.len(),
            self.expressions,
            self.packets
        );
        for (expr, err) in &self.errors {
            let _ = writeln!(s, "  error  {expr:?}: {err}");
        }
        let mut current = None;
        for m in &self.mismatches {
            if current != Some(&m.expr) {
                let n = self.mismatches.iter().filter(|o| o.expr == m.expr).count();
                let _ = writeln!(s, "  {:?}: {n} packets", m.expr);
                current = Some(&m.expr);
            }
            let _ = writeln!(
                s,
                "    packet {:3}: ours {:5} tcpdump {:5}  {}",
                m.packet,
                m.ours,
                m.tcpdump,
                describe.get(m.packet).map_or("", String::as_str)
            );
        }
        s
    }
}

/// Holds an implementation to tcpdump over the corpus and the capture.
/// `verdicts(expr, packets)` returns the implementation's verdict for each
/// packet, or an error if it cannot run `expr`. Every disagreement is
/// collected; nothing stops at the first.
pub fn differential(
    label: &str,
    mut verdicts: impl FnMut(&str, &[(u32, Vec<u8>)]) -> Result<Vec<bool>, String>,
) -> Report {
    let exprs = corpus();
    let packets = packets();
    let expected = tcpdump_verdicts_all(&exprs);
    let mut report = Report {
        label: label.to_owned(),
        expressions: exprs.len(),
        packets: packets.len(),
        ..Report::default()
    };
    for (expr, want) in exprs.iter().zip(&expected) {
        match verdicts(expr, &packets) {
            Err(e) => report.errors.push((expr.clone(), e)),
            Ok(got) => {
                assert_eq!(got.len(), packets.len(), "{label}: verdict count for {expr:?}");
                for (packet, (&ours, &tcpdump)) in got.iter().zip(want).enumerate() {
                    if ours != tcpdump {
                        report.mismatches.push(Mismatch { expr: expr.clone(), packet, ours, tcpdump });
                    }
                }
            }
        }
    }
    report
}

/// A Python interpreter that can `import scapy`: `$MIRROR_TESTS_PYTHON`,
/// else the first of `python3`, `/usr/bin/python3` that has it.
fn python_with_scapy() -> anyhow::Result<String> {
    let candidates: Vec<String> = match std::env::var("MIRROR_TESTS_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    for py in &candidates {
        let ok = Command::new(py).args(["-c", "import scapy"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Ok(py.clone());
        }
    }
    bail!("no Python with scapy among {candidates:?} (install python3-scapy, or set MIRROR_TESTS_PYTHON)")
}

/// Writes the filter test capture to `out` by running `data/filter/gen_pcap.py`.
pub fn generate_filter_pcap(out: &Path) -> anyhow::Result<()> {
    let py = python_with_scapy()?;
    let script = data_dir().join("gen_pcap.py");
    let res = Command::new(&py)
        .arg(&script)
        .arg(out)
        .output()
        .with_context(|| format!("spawning {py} {}", script.display()))?;
    if !res.status.success() {
        bail!(
            "{py} {} {} failed ({}):\n{}",
            script.display(),
            out.display(),
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
    }
    Ok(())
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mirror-tests-{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_garbage_and_reads_records() {
        assert!(parse_pcap(&[0; 10]).is_err());
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_NSEC.to_le_bytes());
        b.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        for (ts, data) in [(0_u32, &[1_u8, 2, 3][..]), (1, &[4, 5][..])] {
            b.extend_from_slice(&ts.to_le_bytes());
            b.extend_from_slice(&7_u32.to_le_bytes());
            let len = u32::try_from(data.len()).unwrap().to_le_bytes();
            b.extend_from_slice(&len);
            b.extend_from_slice(&len);
            b.extend_from_slice(data);
        }
        let recs = parse_pcap(&b).unwrap();
        assert_eq!(recs, vec![(0, vec![1, 2, 3]), (1, vec![4, 5])]);
        b[20] = 113; // Linux cooked capture
        assert!(parse_pcap(&b).is_err());
    }

    /// The capture and the corpus are what the differential test needs:
    /// every expression is valid for tcpdump, and most of them keep some
    /// packets but not all (an expression that keeps none tests little).
    #[test]
    fn corpus_is_accepted_by_tcpdump_and_discriminates() {
        let packets = packets();
        assert!((500..=1000).contains(&packets.len()), "{} packets", packets.len());
        assert!(packets.iter().any(|(_, f)| f.len() < 14), "no frame shorter than an Ethernet header");
        assert!(tcpdump_verdicts_for(&pcap_path(), "tcp and (").is_err(), "a syntax error must be an error");

        let exprs = corpus();
        assert!(exprs.len() >= 200, "only {} expressions", exprs.len());
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&String> = exprs.iter().filter(|e| !seen.insert(*e)).collect();
        assert!(dups.is_empty(), "duplicate expressions: {dups:?}");
        let verdicts = tcpdump_verdicts_all(&exprs);
        let discriminating = verdicts
            .iter()
            .filter(|v| {
                let kept = v.iter().filter(|&&k| k).count();
                kept > 0 && kept < v.len()
            })
            .count();
        println!("{discriminating} of {} expressions discriminate on {} packets", exprs.len(), packets.len());
        assert!(
            discriminating * 100 >= exprs.len() * 95,
            "only {discriminating} of {} expressions keep some but not all packets",
            exprs.len()
        );
    }

    /// The committed capture is what the generator writes (needs scapy;
    /// run after changing `gen_pcap.py`:
    /// `cargo test -p mirror-tests --lib -- --ignored committed_pcap`).
    #[test]
    #[ignore = "needs python3-scapy; run after changing gen_pcap.py"]
    fn committed_pcap_is_what_the_generator_writes() {
        let dir = TempDir::new("filter").unwrap();
        let fresh = dir.path().join("filter.pcap");
        generate_filter_pcap(&fresh).unwrap();
        let committed = fs::read(pcap_path()).unwrap();
        assert!(
            fs::read(&fresh).unwrap() == committed,
            "{} differs from what gen_pcap.py writes: regenerate it",
            pcap_path().display()
        );
    }
}
