//! What a session selects, as kept in the pinned maps: the numbers in its
//! `SessionConfig`, the compiled program in `FILTER_INSNS`, the datapath's
//! view of both in a `SELECTORS` bank, and the text in `FILTER_SPECS`.
//!
//! A change is written into the bank no slot uses, then the slots are
//! republished naming it: a program reads a whole old or a whole new
//! selection. A bank (and its program's instructions) is written again only
//! after a grace period since it was last in use.
use std::collections::BTreeMap;

use anyhow::{Result, bail};
use mirror_common::{FILTER_SPEC_LEN, FilterSpec, SessionConfig, select_flags, selector_flags, slot_flags};

use crate::{
    error::InputError,
    filter::{self as expr, FilterError, Program, Selection, ast::Action, rules},
};

/// Nanoseconds per second.
const NS: u64 = 1_000_000_000;
/// The default burst: this much of the rate.
pub const DEFAULT_BURST_NS: u64 = NS / 10;

/// A session's selection as the operator asked for it, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelectSpec {
    /// Canonical text of the rules and the expression ("" = none): what is
    /// stored, shown, and compared to tell a change.
    pub text: String,
    /// The compiled `text`.
    pub program: Option<Program>,
    /// Keep one packet in N (0 or 1 = all).
    pub sample_every: u32,
    /// Sample whole flows.
    pub sample_flow: bool,
    /// Copies per second (0 = unlimited).
    pub rate_pps: u32,
    /// Copied bytes per second (0 = unlimited).
    pub rate_bps: u64,
    /// Bucket depths (0 = 0.1 s of the rate).
    pub burst_packets: u32,
    pub burst_bytes: u32,
    /// Lower first among a source's sessions.
    pub priority: u32,
    pub exclusive: bool,
    pub dry_run: bool,
    pub include_copies: bool,
}

/// Default priority: the middle of the range, so sessions can go either side.
pub const DEFAULT_PRIORITY: u32 = 32768;
/// Priorities accepted.
pub const PRIORITY_MAX: u32 = 65535;

impl SelectSpec {
    /// The numbers as the session's config keeps them (the program's text
    /// and instructions live in their own maps).
    pub fn apply_to(&self, config: &mut SessionConfig) {
        config.sample_every = self.sample_every;
        config.rate_limit_pps = self.rate_pps;
        config.rate_limit_bps = self.rate_bps;
        config.burst_packets = self.burst_packets;
        config.burst_bytes = self.burst_bytes;
        config.priority = self.priority;
        config.filter_insns = self.program.as_ref().map_or(0, |p| p.insns.len() as u32);
        let mut flags = 0;
        for (on, bit) in [
            (self.dry_run, select_flags::DRY_RUN),
            (self.exclusive, select_flags::EXCLUSIVE),
            (self.include_copies, select_flags::INCLUDE_COPIES),
            (self.sample_flow, select_flags::SAMPLE_FLOW),
        ] {
            if on {
                flags |= bit;
            }
        }
        config.select_flags = flags;
    }

    /// Whether `config` (and the stored `text`) already say this.
    pub fn matches(&self, config: &SessionConfig, text: &str) -> bool {
        let mut want = *config;
        self.apply_to(&mut want);
        want == *config && text == self.text
    }
}

/// The slot flags a session's config calls for.
pub fn slot_flags_of(config: &SessionConfig) -> u32 {
    let mut flags = 0;
    if config.filter_insns != 0 {
        flags |= slot_flags::FILTER;
    }
    if config.sample_every > 1 {
        flags |= slot_flags::SAMPLE;
        if config.select_flags & select_flags::SAMPLE_FLOW != 0 {
            flags |= slot_flags::SAMPLE_FLOW;
        }
    }
    if config.rate_limit_pps != 0 || config.rate_limit_bps != 0 {
        flags |= slot_flags::RATE_LIMIT;
    }
    for (bit, slot) in [
        (select_flags::DRY_RUN, slot_flags::DRY_RUN),
        (select_flags::EXCLUSIVE, slot_flags::EXCLUSIVE),
        (select_flags::INCLUDE_COPIES, slot_flags::INCLUDE_COPIES),
    ] {
        if config.select_flags & bit != 0 {
            flags |= slot;
        }
    }
    if flags & slot_flags::NEEDS_SELECTOR != 0 && config.select_bank == 1 {
        flags |= slot_flags::BANK1;
    }
    flags
}

/// The datapath's selector for `config`, whose program starts at `start`.
pub fn selector_of(config: &SessionConfig, program: Option<&Program>, start: u32) -> mirror_common::Selector {
    let mut flags = 0;
    if program.is_some_and(|p| p.uses_fields) {
        flags |= selector_flags::FIELDS;
    }
    if config.select_flags & select_flags::SAMPLE_FLOW != 0 {
        flags |= selector_flags::SAMPLE_FLOW | selector_flags::FIELDS;
    }
    let (ns_per_packet, packet_tolerance_ns) = match u64::from(config.rate_limit_pps) {
        0 => (0, 0),
        pps => {
            let cost = (NS / pps).max(1);
            let burst = u64::from(config.burst_packets);
            (cost, if burst == 0 { DEFAULT_BURST_NS } else { burst.saturating_sub(1) * cost })
        }
    };
    let (ns_per_byte_fp16, byte_tolerance_ns) = match config.rate_limit_bps {
        0 => (0, 0),
        bps => {
            let fp = ((u128::from(NS) << 16) / u128::from(bps)).max(1) as u64;
            let burst = u64::from(config.burst_bytes);
            (
                fp,
                if burst == 0 {
                    DEFAULT_BURST_NS
                } else {
                    ((u128::from(burst) * u128::from(fp)) >> 16) as u64
                },
            )
        }
    };
    mirror_common::Selector {
        prog_start: start,
        prog_len: program.map_or(0, |p| p.insns.len() as u32),
        flags,
        sample_every: config.sample_every,
        ns_per_packet,
        packet_tolerance_ns,
        ns_per_byte_fp16,
        byte_tolerance_ns,
        reject_classes: program.map_or(0, |p| p.reject_classes),
        sample_keep_below: mirror_common::parse::keep_below(config.sample_every),
    }
}

/// The text as `FILTER_SPECS` keeps it.
pub fn pack_text(text: &str) -> Result<FilterSpec> {
    if text.len() > FILTER_SPEC_LEN {
        bail!("the selection is {} bytes long; at most {FILTER_SPEC_LEN} are kept", text.len());
    }
    let mut spec = FilterSpec { len: text.len() as u32, text: [0; FILTER_SPEC_LEN] };
    spec.text[..text.len()].copy_from_slice(text.as_bytes());
    Ok(spec)
}

pub fn unpack_text(spec: &FilterSpec) -> String {
    let len = (spec.len as usize).min(FILTER_SPEC_LEN);
    String::from_utf8_lossy(&spec.text[..len]).into_owned()
}

/// Which `FILTER_INSNS` ranges hold a bank's program: first fit over the
/// pool. Rebuilt at open from every bank's selector.
#[derive(Debug, Default)]
pub struct InsnPool {
    /// start → length of each range in use.
    used: BTreeMap<u32, u32>,
}

impl InsnPool {
    pub fn mark_used(&mut self, start: u32, len: u32) {
        if len != 0 {
            self.used.insert(start, len);
        }
    }

    pub fn release(&mut self, start: u32, len: u32) {
        if len != 0 && self.used.get(&start) == Some(&len) {
            self.used.remove(&start);
        }
    }

    /// A free range of `len` instructions, now in use.
    pub fn take(&mut self, len: u32) -> Result<u32> {
        let mut at = 0;
        for (&start, &used) in &self.used {
            if start >= at && start - at >= len {
                break;
            }
            at = at.max(start + used);
        }
        if at + len > mirror_common::filter::POOL_INSNS {
            bail!(
                "the filters of this namespace would need more than the {} instructions the datapath holds",
                mirror_common::filter::POOL_INSNS
            );
        }
        self.used.insert(at, len);
        Ok(at)
    }
}

/// What the operator asked for, before checks: `attach`'s flags and the
/// config's fields alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectOptions {
    /// A pcap-filter expression.
    pub filter: Option<String>,
    /// Rules in the `--rule` syntax, with the action for packets none matches.
    pub rules: Vec<String>,
    pub default_action: Option<Action>,
    /// `--sample N` or `--sample-flow N`.
    pub sample: Option<u64>,
    pub sample_flow: Option<u64>,
    pub rate_pps: Option<u64>,
    pub rate_bps: Option<u64>,
    pub burst_packets: Option<u64>,
    pub burst_bytes: Option<u64>,
    pub priority: Option<u64>,
    pub exclusive: bool,
    pub dry_run: bool,
    pub include_copies: bool,
    /// Name things as the daemon's config does (`rate_limit`), not as
    /// `attach`'s flags (`--rate-limit`).
    pub config_names: bool,
}

/// Most packets one sample may stand for.
pub const SAMPLE_MAX: u64 = 1 << 24;
/// Largest packet rate accepted (copies per second).
pub const RATE_PPS_MAX: u64 = 100_000_000;
/// Largest byte rate accepted (bytes per second: 800 Gbit/s).
pub const RATE_BPS_MAX: u64 = 100_000_000_000;

fn in_range(flag: &str, value: u64, min: u64, max: u64) -> Result<u64, InputError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(InputError::OutOfRange { what: flag.to_owned(), value, min, max })
    }
}

impl SelectOptions {
    /// How the operator wrote `flag` (`--rate-limit` or `rate_limit`).
    fn name(&self, flag: &str) -> String {
        if self.config_names { flag.trim_start_matches("--").replace('-', "_") } else { flag.to_owned() }
    }

    /// Checks and compiles everything; names the first problem.
    pub fn build(&self) -> Result<SelectSpec, InputError> {
        let in_range = |flag: &str, value, min, max| in_range(&self.name(flag), value, min, max);
        let conflict = |text: &str, flags: &[&str]| {
            let mut t = text.to_owned();
            for f in flags {
                t = t.replace(f, &self.name(f));
            }
            InputError::Conflict(t)
        };
        let invalid = |what: &str, text: &str, e: FilterError| InputError::InvalidFilter {
            what: self.name(what),
            rendered: if self.config_names { e.to_string() } else { e.render(text) },
        };
        let expr = match &self.filter {
            Some(text) => Some(expr::parse_expr(text).map_err(|e| invalid("--filter", text, e))?),
            None => None,
        };
        let rules = if self.rules.is_empty() {
            if self.default_action.is_some() {
                return Err(conflict(
                    "--default-action needs at least one --rule",
                    &["--default-action", "--rule"],
                ));
            }
            None
        } else {
            let mut parsed = Vec::with_capacity(self.rules.len());
            for text in &self.rules {
                parsed.push(rules::parse_rule(text).map_err(|e| invalid("--rule", text, e))?);
            }
            let set = rules::validate(parsed, self.default_action.unwrap_or_default()).map_err(|e| {
                InputError::InvalidFilter { what: "rules".to_owned(), rendered: e.to_string() }
            })?;
            Some(set)
        };
        let selection = Selection { rules, expr };
        let program = expr::compile_selection(&selection)
            .map_err(|e| invalid("--filter", self.filter.as_deref().unwrap_or_default(), e))?;
        let text = canonical_text(&selection);
        pack_text(&text).map_err(|e| InputError::Conflict(format!("{e:#}")))?;
        if self.sample.is_some() && self.sample_flow.is_some() {
            return Err(conflict(
                "--sample and --sample-flow exclude each other",
                &["--sample-flow", "--sample"],
            ));
        }
        let sample_every = match (self.sample, self.sample_flow) {
            (Some(n), _) => in_range("--sample", n, 1, SAMPLE_MAX)?,
            (_, Some(n)) => in_range("--sample-flow", n, 1, SAMPLE_MAX)?,
            _ => 0,
        } as u32;
        let rate_pps = match self.rate_pps {
            Some(v) => in_range("--rate-limit", v, 1, RATE_PPS_MAX)?,
            None => 0,
        } as u32;
        let rate_bps = match self.rate_bps {
            Some(v) => in_range("--rate-limit-bytes", v, 1, RATE_BPS_MAX)?,
            None => 0,
        };
        let burst_packets = match self.burst_packets {
            Some(_) if rate_pps == 0 => {
                return Err(conflict("--burst needs --rate-limit", &["--burst", "--rate-limit"]));
            }
            Some(v) => in_range("--burst", v, 1, u64::from(u32::MAX))?,
            None => 0,
        } as u32;
        let burst_bytes = match self.burst_bytes {
            Some(_) if rate_bps == 0 => {
                return Err(conflict(
                    "--burst-bytes needs --rate-limit-bytes",
                    &["--burst-bytes", "--rate-limit-bytes"],
                ));
            }
            Some(v) => in_range("--burst-bytes", v, 64, u64::from(u32::MAX))?,
            None => 0,
        } as u32;
        let priority = match self.priority {
            Some(v) => in_range("--priority", v, 0, u64::from(PRIORITY_MAX))?,
            None => u64::from(DEFAULT_PRIORITY),
        } as u32;
        Ok(SelectSpec {
            text,
            program,
            sample_every: if sample_every == 1 { 0 } else { sample_every },
            sample_flow: self.sample_flow.is_some_and(|n| n > 1),
            rate_pps,
            rate_bps,
            burst_packets,
            burst_bytes,
            priority,
            exclusive: self.exclusive,
            dry_run: self.dry_run,
            include_copies: self.include_copies,
        })
    }
}

/// The text a selection is stored and compared as: one rule per line, the
/// default action, then the expression, each in canonical form.
pub fn canonical_text(selection: &Selection) -> String {
    let mut lines = Vec::new();
    if let Some(set) = &selection.rules {
        for rule in &set.rules {
            lines.push(format!("rule {rule}"));
        }
        lines.push(format!("default {}", set.default_action));
    }
    if let Some(expr) = &selection.expr {
        lines.push(format!("filter {expr}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_fits_ranges_first_fit_and_reuses_released_ones() {
        let mut pool = InsnPool::default();
        assert_eq!(pool.take(10).unwrap(), 0);
        assert_eq!(pool.take(5).unwrap(), 10);
        pool.release(0, 10);
        assert_eq!(pool.take(4).unwrap(), 0);
        assert_eq!(pool.take(6).unwrap(), 4);
        assert_eq!(pool.take(1).unwrap(), 15);
        let err = pool.take(mirror_common::filter::POOL_INSNS).unwrap_err().to_string();
        assert!(err.contains("65536"), "{err}");
    }

    #[test]
    fn rates_become_gcra_intervals() {
        let config =
            SessionConfig { rate_limit_pps: 50_000, rate_limit_bps: 125_000_000, ..SessionConfig::EMPTY };
        let s = selector_of(&config, None, 0);
        assert_eq!(s.ns_per_packet, 20_000);
        assert_eq!(s.packet_tolerance_ns, DEFAULT_BURST_NS);
        // 8 ns per byte at 1 Gbit/s, in 16.16 fixed point.
        assert_eq!(s.ns_per_byte_fp16, 8 << 16);
        let bursty = SessionConfig { burst_packets: 11, ..config };
        assert_eq!(selector_of(&bursty, None, 0).packet_tolerance_ns, 10 * 20_000);
    }

    #[test]
    fn slot_flags_follow_the_config() {
        let plain = SessionConfig::EMPTY;
        assert_eq!(slot_flags_of(&plain), 0);
        let c = SessionConfig { sample_every: 100, select_bank: 1, ..SessionConfig::EMPTY };
        assert_eq!(slot_flags_of(&c), slot_flags::SAMPLE | slot_flags::BANK1);
        // The bank matters only to steps that read the selector.
        let d = SessionConfig { select_flags: select_flags::DRY_RUN, select_bank: 1, ..SessionConfig::EMPTY };
        assert_eq!(slot_flags_of(&d), slot_flags::DRY_RUN);
    }
}
