//! The CLI's verbs. Each validates all input before touching anything, then
//! changes the maps and reconciles the hooks under the namespace lock.
use std::{collections::BTreeMap, fs, path::PathBuf};

use anyhow::{Context as _, Result};
use mirror_common::{
    Counter, GLOBAL_SESSION_ID, SNAPLEN_MAX, SNAPLEN_MIN, SourceKey, direction, names, reason, select_flags,
};
use serde_json::{Value, json};

use crate::{
    dataplane::{
        bpffs::{self, Layout, NsLock},
        hooks::{self, AttachMode},
        selection::{self, SelectOptions},
        sessions::{self, Change, SessionSpec},
        store::{self, Owner, ReasonCounters, Session, Store},
    },
    error::InputError,
    net::iface,
};

/// Where the verbs operate.
#[derive(Debug)]
pub struct Context {
    /// How the namespace was named on the command line (for messages).
    pub netns_label: String,
    pub layout: Layout,
    pub mode: AttachMode,
}

/// Which of a source's directions a session taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
    #[default]
    Both,
}

impl Direction {
    pub fn mask(self) -> u32 {
        match self {
            Self::Ingress => direction::INGRESS_BIT,
            Self::Egress => direction::EGRESS_BIT,
            Self::Both => direction::INGRESS_BIT | direction::EGRESS_BIT,
        }
    }
}

pub fn mask_name(mask: u32) -> &'static str {
    match mask {
        m if m == direction::INGRESS_BIT => "ingress",
        m if m == direction::EGRESS_BIT => "egress",
        _ => "both",
    }
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Session name (letters, digits, '.', '_', '-'; at most 32 bytes).
    #[arg(long)]
    pub name: String,
    /// Interface whose traffic is copied; repeat for many sources.
    #[arg(long = "source", required = true)]
    pub sources: Vec<String>,
    /// Interface the copies are sent out of.
    #[arg(long)]
    pub dest: String,
    /// From the source's point of view: ingress = received, egress = sent.
    #[arg(long, value_enum, default_value_t = Direction::Both)]
    pub direction: Direction,
    /// Cut each copy to this many bytes from the Ethernet header; 0 = whole packet.
    #[arg(long, default_value_t = 0)]
    pub snaplen: u64,
    /// Replace the session of that name in place (sources, destination,
    /// selection): what stays is never interrupted, and a new filter applies
    /// atomically. Without it, an existing name is an error.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub select: SelectArgs,
}

/// What to copy: the same fields as the daemon's config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectArgs {
    /// Copy only packets this pcap-filter expression matches (tcpdump's
    /// syntax and semantics, e.g. 'tcp dst port 443 and src net 198.18.0.0/16').
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// An ordered rule, AWS Traffic Mirroring style; repeat. The first
    /// matching rule (lowest number) decides: 'NUMBER accept|reject [PROTO]
    /// [src CIDR] [dst CIDR] [sport A[-B]] [dport A[-B]] [flags VALUE/MASK]
    /// [dir ingress|egress]'. With --filter: rules first, then the expression.
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,
    /// What packets no rule matches get (default: reject, as AWS).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub default_action: Option<ActionArg>,
    /// Copy one packet in N, at random.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub sample: Option<u64>,
    /// Copy one flow in N: both directions of a flow are kept or skipped
    /// together (a symmetric hash of the 5-tuple decides).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub sample_flow: Option<u64>,
    /// At most this many copies per second (both directions together);
    /// suffixes k, M, G.
    #[arg(long = "rate-limit", value_name = "PPS", value_parser = parse_count)]
    pub rate_pps: Option<u64>,
    /// At most this many copied bytes per second; suffixes k, M, G.
    #[arg(long = "rate-limit-bytes", value_name = "BPS", value_parser = parse_count)]
    pub rate_bps: Option<u64>,
    /// Copies allowed back to back above the rate (default: 0.1 s worth).
    #[arg(long = "burst", value_name = "PACKETS", value_parser = parse_count)]
    pub burst_packets: Option<u64>,
    /// Bytes allowed back to back above the byte rate (default: 0.1 s worth).
    #[arg(long, value_name = "BYTES", value_parser = parse_count)]
    pub burst_bytes: Option<u64>,
    /// Order among a source's sessions, lower first (0..=65535, default 32768).
    #[arg(long, value_name = "N")]
    pub priority: Option<u64>,
    /// Among exclusive sessions of a source, the first (by priority) whose
    /// filter matches takes the packet; the others do not copy it.
    #[arg(long)]
    pub exclusive: bool,
    /// Count what would be copied (`dry_run`), copy nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also copy copies made by other sessions (a tap of a tap), at most
    /// three copies deep.
    #[arg(long)]
    pub include_copies: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionArg {
    Accept,
    Reject,
}

impl From<ActionArg> for crate::filter::ast::Action {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::Accept => Self::Accept,
            ActionArg::Reject => Self::Reject,
        }
    }
}

impl SelectArgs {
    pub fn options(&self) -> SelectOptions {
        SelectOptions {
            filter: self.filter.clone(),
            rules: self.rules.clone(),
            default_action: self.default_action.map(Into::into),
            sample: self.sample,
            sample_flow: self.sample_flow,
            rate_pps: self.rate_pps,
            rate_bps: self.rate_bps,
            burst_packets: self.burst_packets,
            burst_bytes: self.burst_bytes,
            priority: self.priority,
            exclusive: self.exclusive,
            dry_run: self.dry_run,
            include_copies: self.include_copies,
            config_names: false,
        }
    }
}

/// A count with an optional SI suffix: `50k`, `1.5M`, `2G` (exact decimal
/// arithmetic: the result must be a whole number).
pub fn parse_count(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a count (digits, optionally with a fraction and k, M or G)");
    let t = text.trim();
    let (number, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1_000u64),
        Some(b'M') => (&t[..t.len() - 1], 1_000_000),
        Some(b'G') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let too_big = || format!("{text:?} is too large");
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| too_big())? };
    let mut value = int.checked_mul(scale).ok_or_else(too_big)?;
    if !frac.is_empty() {
        let den = u32::try_from(frac.len()).ok().and_then(|n| 10u64.checked_pow(n)).ok_or_else(bad)?;
        let num = frac.parse::<u64>().map_err(|_| bad())?.checked_mul(scale).ok_or_else(too_big)?;
        if num % den != 0 {
            return Err(format!("{text:?} is not a whole count"));
        }
        value = value.checked_add(num / den).ok_or_else(too_big)?;
    }
    Ok(value)
}

fn resolve(ctx: &Context, name: &str) -> Result<u32, InputError> {
    iface::index(name)
        .ok_or_else(|| InputError::UnknownInterface { name: name.to_owned(), netns: ctx.netns_label.clone() })
}

pub fn attach(ctx: &Context, args: &AttachArgs) -> Result<()> {
    // 1. Everything that can be checked without state.
    store::pack_name(&args.name)?;
    let select = args.select.options().build()?;
    if args.snaplen != 0 && !(u64::from(SNAPLEN_MIN)..=u64::from(SNAPLEN_MAX)).contains(&args.snaplen) {
        return Err(InputError::SnaplenOutOfRange(args.snaplen).into());
    }
    let mut sources: Vec<(String, u32)> = Vec::new();
    for name in &args.sources {
        let ifindex = resolve(ctx, name)?;
        if sources.iter().any(|(_, i)| *i == ifindex) {
            return Err(InputError::DuplicateSource(name.clone()).into());
        }
        sources.push((name.clone(), ifindex));
    }
    let dest_ifindex = resolve(ctx, &args.dest)?;
    if sources.iter().any(|(_, i)| *i == dest_ifindex) {
        return Err(InputError::DestinationIsSource(args.dest.clone()).into());
    }
    if iface::is_loopback(&args.dest) {
        return Err(InputError::DestinationIsLoopback(args.dest.clone()).into());
    }

    let mut taps = BTreeMap::new();
    for (name, ifindex) in &sources {
        for d in store::directions(args.direction.mask()) {
            taps.insert(SourceKey { ifindex: *ifindex, direction: d }, name.clone());
        }
    }
    let spec = SessionSpec {
        name: args.name.clone(),
        owner: Owner::Cli,
        dest_ifindex,
        dest_name: args.dest.clone(),
        snaplen: args.snaplen as u32,
        direction_mask: args.direction.mask(),
        taps,
        select,
    };

    // 2. Checks against existing sessions, under the lock.
    bpffs::ensure_mounted(&ctx.layout.bpffs)?;
    let layout = &ctx.layout;
    let _lock = layout.lock(true, true)?;
    let named_taps: Vec<(String, SourceKey)> = spec.taps.iter().map(|(k, n)| (n.clone(), *k)).collect();
    let existing = Store::open(layout)?;
    let mut replacing = false;
    if let Some(existing) = &existing {
        match existing.find(&args.name)? {
            Some(_) if !args.replace => return Err(InputError::DuplicateSession(args.name.clone()).into()),
            Some(s) if s.owner() != Owner::Cli => {
                return Err(InputError::OwnedByConfig(args.name.clone()).into());
            }
            Some(_) => replacing = true,
            // Capacity of a replacement is checked by the plan, which knows
            // what the session already holds.
            None => existing.check_capacity(&named_taps)?,
        }
    } else {
        store::check_hook_count(0, named_taps.len())?;
    }

    // 3. Change, through the reconcile the daemon uses.
    let mut store = match existing {
        Some(store) => store,
        None => Store::open_or_create(layout)?,
    };
    let changes = sessions::plan(Some(&store), std::slice::from_ref(&spec), Owner::Cli, false)?;
    if let Some(Change::Refused { why, .. }) = changes.iter().find(|c| matches!(c, Change::Refused { .. })) {
        anyhow::bail!("attaching session {:?}: {why}", args.name);
    }
    if let Err(err) = sessions::apply(&mut store, layout, ctx.mode, &changes) {
        if replacing {
            return Err(err.context(format!("replacing session {:?}", args.name)));
        }
        // Undo: nothing of this session may stay behind.
        let undo = store.find(&args.name).and_then(|found| match found {
            Some(s) => sessions::apply(
                &mut store,
                layout,
                ctx.mode,
                &[Change::Remove { id: s.id, name: args.name.clone() }],
            )
            .map(drop),
            None => Ok(()),
        });
        let undo = undo.and_then(|()| cleanup_if_unused(store, layout));
        if let Err(undo_err) = undo {
            tracing::error!("rolling back session {}: {undo_err:#}", args.name);
        }
        return Err(err.context(format!("attaching session {:?}", args.name)));
    }
    let verb = if replacing { "update" } else { "attach" };
    crate::daemon::audit::record("cli", verb, &args.name, &format!("{}", changes[0]));
    Ok(())
}

/// Unpins everything once no session is left in the namespace.
pub fn cleanup_if_unused(store: Store, layout: &Layout) -> Result<()> {
    if !store.sessions_without_text()?.is_empty() || hooks::attached_count(layout)? != 0 {
        return Ok(());
    }
    drop(store);
    for name in names::PINNED_MAPS {
        match fs::remove_file(layout.map(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {name}")),
        }
    }
    layout.remove_empty_dirs()
}

pub fn detach(ctx: &Context, name: Option<&str>, all: bool) -> Result<()> {
    let layout = &ctx.layout;
    let unknown =
        || -> anyhow::Error { InputError::UnknownSession(name.unwrap_or_default().to_owned()).into() };
    if !bpffs::is_bpffs(&layout.bpffs) {
        return if all { Ok(()) } else { Err(unknown()) };
    }
    let Some(_lock) = layout.lock(true, false)? else {
        return if all { Ok(()) } else { Err(unknown()) };
    };
    let Some(mut store) = Store::open(layout)? else {
        return if all { layout.remove_empty_dirs() } else { Err(unknown()) };
    };
    let sessions = store.sessions_without_text()?;
    let targets: Vec<&Session> = if all {
        sessions.iter().collect()
    } else {
        let name = name.unwrap_or_default();
        let s = sessions.iter().find(|s| s.name() == name).ok_or_else(unknown)?;
        if s.owner() == Owner::Config {
            return Err(InputError::OwnedByConfig(name.to_owned()).into());
        }
        vec![s]
    };
    let changes: Vec<Change> =
        targets.iter().map(|s| Change::Remove { id: s.id, name: s.name().to_owned() }).collect();
    sessions::apply(&mut store, layout, ctx.mode, &changes)?;
    for c in &changes {
        crate::daemon::audit::record("cli", "detach", c.name(), &c.to_string());
    }
    cleanup_if_unused(store, layout)
}

fn session_json(s: &Session) -> Value {
    let dest = s.config.dest_ifindex;
    json!({
        "id": s.id,
        "name": s.name(),
        "sources": s.sources.iter().map(|i| iface_json(*i)).collect::<Vec<_>>(),
        "dest": iface_json(dest),
        "dest_state": iface::state(dest).as_str(),
        "direction": mask_name(s.config.direction_mask),
        "owner": s.owner().as_str(),
        "snaplen": s.config.snaplen,
        "created_unix_secs": s.config.created_unix_secs,
        "select": select_json(s),
    })
}

/// What the session selects (all defaults: every packet).
fn select_json(s: &Session) -> Value {
    let c = &s.config;
    let flag = |bit| c.select_flags & bit != 0;
    // The canonical text: `rule ...` lines, `default ...`, `filter ...`.
    let line = |prefix: &str| -> Vec<&str> {
        s.select_text.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
    };
    json!({
        "rules": line("rule "),
        "default_action": line("default ").first(),
        "filter": line("filter ").first(),
        "filter_instructions": c.filter_insns,
        "filter_native": s.filter_native,
        "sample": c.sample_every.max(1),
        "sample_flow": flag(select_flags::SAMPLE_FLOW),
        "rate_limit_pps": c.rate_limit_pps,
        "rate_limit_bps": c.rate_limit_bps,
        "burst_packets": c.burst_packets,
        "burst_bytes": c.burst_bytes,
        "priority": c.priority,
        "exclusive": flag(select_flags::EXCLUSIVE),
        "dry_run": flag(select_flags::DRY_RUN),
        "include_copies": flag(select_flags::INCLUDE_COPIES),
    })
}

/// One line on what the session selects, or `None` for every packet.
fn select_summary(s: &Session) -> Option<String> {
    let c = &s.config;
    let mut parts = Vec::new();
    if !s.select_text.is_empty() {
        parts.push(s.select_text.replace('\n', "; "));
    }
    if c.sample_every > 1 {
        let what = if c.select_flags & select_flags::SAMPLE_FLOW != 0 { "flow" } else { "packet" };
        parts.push(format!("1 {what} in {}", c.sample_every));
    }
    if c.rate_limit_pps != 0 {
        parts.push(format!("at most {} copies/s", c.rate_limit_pps));
    }
    if c.rate_limit_bps != 0 {
        parts.push(format!("at most {} bytes/s", c.rate_limit_bps));
    }
    if c.priority != selection::DEFAULT_PRIORITY {
        parts.push(format!("priority {}", c.priority));
    }
    for (bit, word) in [
        (select_flags::EXCLUSIVE, "exclusive"),
        (select_flags::DRY_RUN, "dry run (copies nothing)"),
        (select_flags::INCLUDE_COPIES, "includes copies"),
    ] {
        if c.select_flags & bit != 0 {
            parts.push(word.to_owned());
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn iface_json(ifindex: u32) -> Value {
    json!({ "ifindex": ifindex, "name": iface::name(ifindex) })
}

pub fn iface_label(ifindex: u32) -> String {
    iface::name(ifindex).unwrap_or_else(|| format!("#{ifindex}(gone)"))
}

fn open_read_only(ctx: &Context) -> Result<Option<(Store, NsLock)>> {
    if !bpffs::is_bpffs(&ctx.layout.bpffs) {
        return Ok(None);
    }
    let Some(lock) = ctx.layout.lock(false, false)? else { return Ok(None) };
    Ok(Store::open(&ctx.layout)?.map(|s| (s, lock)))
}

pub fn list(ctx: &Context, as_json: bool) -> Result<()> {
    let (sessions, missing) = match open_read_only(ctx)? {
        Some((store, _lock)) => (store.sessions()?, hooks::missing(&store, &ctx.layout)?),
        None => (Vec::new(), Vec::new()),
    };
    let missing_of = |s: &Session| -> Vec<String> {
        missing.iter().filter(|h| h.serves(s)).map(hooks::Hook::describe).collect()
    };
    if as_json {
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|s| {
                let mut v = session_json(s);
                v["hooks_missing"] = json!(missing_of(s));
                v
            })
            .collect();
        return print_json(&json!({ "netns": ctx.netns_label, "sessions": sessions }));
    }
    if sessions.is_empty() {
        return print_no_sessions(ctx);
    }
    println!(
        "{:<20} {:>4}  {:<6} {:<9} {:>7}  {:<24} SOURCES",
        "NAME", "ID", "OWNER", "DIRECTION", "SNAPLEN", "DEST (STATE)"
    );
    for s in &sessions {
        let dest = s.config.dest_ifindex;
        let sources: Vec<String> = s.sources.iter().map(|i| iface_label(*i)).collect();
        println!(
            "{:<20} {:>4}  {:<6} {:<9} {:>7}  {:<24} {}",
            s.name(),
            s.id,
            s.owner().as_str(),
            mask_name(s.config.direction_mask),
            if s.config.snaplen == 0 { "full".to_owned() } else { s.config.snaplen.to_string() },
            format!("{} ({})", iface_label(dest), iface::state(dest).as_str()),
            sources.join(","),
        );
        if let Some(summary) = select_summary(s) {
            println!("{:<20} selects: {summary}", "");
        }
        let lost = missing_of(s);
        if !lost.is_empty() {
            println!(
                "{:<20} not mirroring: hook {} is not attached (the next attach re-attaches it, while the interface exists)",
                "",
                lost.join(", ")
            );
        }
    }
    Ok(())
}

fn print_json(doc: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(doc)?);
    Ok(())
}

fn print_no_sessions(ctx: &Context) -> Result<()> {
    println!("no sessions (network namespace {})", ctx.netns_label);
    Ok(())
}

fn counter_json(c: Counter) -> Value {
    json!({ "packets": c.packets, "bytes": c.bytes })
}

pub fn failed(counters: &ReasonCounters) -> Counter {
    let mut total = Counter::default();
    for (r, c) in counters.iter().enumerate() {
        if reason::is_failure(r as u32) {
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
    }
    total
}

fn direction_json(counters: &ReasonCounters) -> Value {
    let mut obj = serde_json::Map::new();
    for (r, c) in counters.iter().enumerate().take(reason::DEFINED as usize) {
        obj.insert(reason::NAMES[r].to_owned(), counter_json(*c));
    }
    obj.insert("failed".to_owned(), counter_json(failed(counters)));
    Value::Object(obj)
}

const DIRECTIONS: [u32; 2] = [direction::INGRESS, direction::EGRESS];

pub fn stats(ctx: &Context, name: Option<&str>, as_json: bool) -> Result<()> {
    let opened = open_read_only(ctx)?;
    let (sessions, counters, global) = match &opened {
        Some((store, _)) => {
            let mut sessions = store.sessions()?;
            if let Some(name) = name {
                sessions.retain(|s| s.name() == name);
                if sessions.is_empty() {
                    return Err(InputError::UnknownSession(name.to_owned()).into());
                }
            }
            let counters = sessions
                .iter()
                .map(|s| DIRECTIONS.map(|d| store.counters(s.id, d)).into_iter().collect::<Result<Vec<_>>>())
                .collect::<Result<Vec<_>>>()?;
            let global = DIRECTIONS.map(|d| store.counters(GLOBAL_SESSION_ID, d));
            let global = global.into_iter().collect::<Result<Vec<_>>>()?;
            (sessions, counters, Some(global))
        }
        None if name.is_some() => {
            return Err(InputError::UnknownSession(name.unwrap_or_default().to_owned()).into());
        }
        None => (Vec::new(), Vec::new(), None),
    };

    if as_json {
        let sessions_json: Vec<Value> = sessions
            .iter()
            .zip(&counters)
            .map(|(s, per_dir)| {
                let mut v = session_json(s);
                v["counters"] = json!({
                    "ingress": direction_json(&per_dir[0]),
                    "egress": direction_json(&per_dir[1]),
                });
                v
            })
            .collect();
        // Program-wide counters: what no session accounts for.
        let global_json = global.as_ref().map(|g| {
            let per_direction = |c: &ReasonCounters| {
                json!({
                    "no_session": counter_json(c[reason::NO_SESSION as usize]),
                    "copy_not_remirrored": counter_json(c[reason::COPY_NOT_REMIRRORED as usize]),
                })
            };
            json!({ "ingress": per_direction(&g[0]), "egress": per_direction(&g[1]) })
        });
        return print_json(
            &json!({ "netns": ctx.netns_label, "sessions": sessions_json, "global": global_json }),
        );
    }
    if sessions.is_empty() {
        return print_no_sessions(ctx);
    }
    println!(
        "{:<20} {:<8} {:>10} {:>12} {:>10} {:>12} {:>10} {:>8}  NOT COPIED",
        "SESSION", "DIR", "MATCHED", "BYTES", "MIRRORED", "BYTES", "TRUNCATED", "FAILED"
    );
    for (s, per_dir) in sessions.iter().zip(&counters) {
        for (d, c) in DIRECTIONS.iter().zip(per_dir) {
            // A `netns:` session taps its peer in the other direction.
            if s.config.direction_mask & (1 << d) == 0 && !s.taps.iter().any(|t| t.direction == *d) {
                continue;
            }
            let reasons: Vec<String> = c
                .iter()
                .enumerate()
                .filter(|(r, c)| {
                    let r = *r as u32;
                    (reason::is_failure(r) || reason::NOT_SELECTED.contains(&r)) && c.packets != 0
                })
                .map(|(r, c)| format!("{}={}", reason::NAMES[r], c.packets))
                .collect();
            println!(
                "{:<20} {:<8} {:>10} {:>12} {:>10} {:>12} {:>10} {:>8}  {}",
                s.name(),
                store::direction_name(*d),
                c[reason::MATCHED as usize].packets,
                c[reason::MATCHED as usize].bytes,
                c[reason::MIRRORED as usize].packets,
                c[reason::MIRRORED as usize].bytes,
                c[reason::TRUNCATED as usize].packets,
                failed(c).packets,
                if reasons.is_empty() { "-".to_owned() } else { reasons.join(" ") },
            );
        }
        let state = iface::state(s.config.dest_ifindex);
        if state != iface::LinkState::Up {
            println!("{:<20} destination {} is {}", "", iface_label(s.config.dest_ifindex), state.as_str());
        }
    }
    Ok(())
}

/// Default bpffs mount point.
pub fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf")
}

/// `check`: validates the config and prints the plan; changes nothing.
pub fn check(ctx: &Context, config_path: &std::path::Path) -> Result<()> {
    let config = crate::daemon::config::load(config_path)?;
    let host = crate::daemon::run::read_host_blocking(&config)?;
    let (changes, res) = crate::daemon::run::plan_and_apply(ctx, &config, &host, false)?;
    println!("config {} is valid: {} session(s)", config_path.display(), config.sessions.len());
    for c in &changes {
        println!("  {c}");
    }
    for d in &res.denied {
        println!("  deny {}: source {:?} {}", d.session, d.interface, d.why);
    }
    for (session, note) in &res.notes {
        println!("  note {session}: {note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_take_si_suffixes_and_exact_fractions() {
        for (text, want) in [("50000", 50_000), ("50k", 50_000), ("4.1M", 4_100_000), ("8.2G", 8_200_000_000)]
        {
            assert_eq!(parse_count(text), Ok(want), "{text}");
        }
        assert_eq!(parse_count("16.1k"), Ok(16_100));
        assert_eq!(parse_count("1.0005k").unwrap_err(), "\"1.0005k\" is not a whole count");
        assert_eq!(
            parse_count("fast").unwrap_err(),
            "\"fast\" is not a count (digits, optionally with a fraction and k, M or G)"
        );
        assert!(parse_count("99999999999999999999G").unwrap_err().contains("too large"));
        assert!(parse_count("-5").is_err() && parse_count("").is_err() && parse_count(".").is_err());
    }
}
