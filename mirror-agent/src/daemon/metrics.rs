//! The Prometheus endpoint: `prometheus-client` encodes, a small HTTP/1.1
//! server on tokio answers. Counters are read from the per-CPU maps on each
//! scrape (never on a timer), so a scrape is as fresh as `stats`.
//!
//! The classic text format (`text/plain; version=0.0.4`) is the default;
//! OpenMetrics is served to a scraper whose `Accept` asks for it.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use mirror_common::{GLOBAL_SESSION_ID, MAX_SESSIONS, MAX_SOURCE_HOOKS, direction, reason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    cli::commands::Context,
    dataplane::{
        bpffs, hooks,
        store::{ReasonCounters, Store, direction_name},
    },
};

/// What the daemon reports about itself.
#[derive(Debug, Default, Clone)]
pub struct DaemonStatus {
    pub reconciles: u64,
    pub reconcile_errors: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_unix_secs: f64,
    pub last_reload_ok: bool,
    pub sessions_refused: u64,
    pub sources_denied: u64,
}

pub type SharedStatus = Arc<Mutex<DaemonStatus>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GlobalLabels {
    direction: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OwnerLabels {
    owner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

fn gauge_family<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge> {
    let f = Family::<L, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// One session's figures, read at the scrape.
#[derive(Debug)]
struct SessionRow {
    name: String,
    owner: &'static str,
    sources: i64,
    /// `None`: the hooks could not be probed.
    missing: Option<i64>,
    directions: Vec<(&'static str, ReasonCounters)>,
}

/// Every session's series, encoded straight from the snapshot: no label
/// hashing, no metric objects (4095 sessions make ~33 000 series).
#[derive(Debug, Default)]
struct SessionRows(Vec<SessionRow>);

impl SessionRows {
    fn counters(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: impl Fn(&ReasonCounters) -> Vec<(&'static str, u64)>,
    ) -> std::fmt::Result {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for row in &self.0 {
            for (dir, c) in &row.directions {
                for (reason, v) in value(c) {
                    if reason.is_empty() {
                        let labels = [("session", row.name.as_str()), ("direction", dir)];
                        ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
                    } else {
                        let labels = [("session", row.name.as_str()), ("direction", dir), ("reason", reason)];
                        ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `mirrored` always; a failure reason once it happened (a series per
/// reason × 4095 sessions would be mostly zeros). Outcomes are disjoint, so
/// summing over `reason` is meaningful: they add up to `matched`.
fn outcomes(c: &ReasonCounters, pick: impl Fn(&mirror_common::Counter) -> u64) -> Vec<(&'static str, u64)> {
    reason::OUTCOMES
        .iter()
        .filter(|&&r| r == reason::MIRRORED || c[r as usize].packets != 0)
        .map(|&r| (reason::NAMES[r as usize], pick(&c[r as usize])))
        .collect()
}

/// Why packets a session saw were not copied (filtered, sampled out, over
/// the rate, dry run, preempted, too deep), once it happened.
fn not_copied(c: &ReasonCounters, pick: impl Fn(&mirror_common::Counter) -> u64) -> Vec<(&'static str, u64)> {
    reason::NOT_SELECTED
        .iter()
        .filter(|&&r| c[r as usize].packets != 0)
        .map(|&r| (reason::NAMES[r as usize], pick(&c[r as usize])))
        .collect()
}

impl Collector for SessionRows {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.counters(
            &mut encoder,
            "mirror_agent_packets",
            "Copy attempts per session, direction and outcome (mirrored or a failure reason; they sum to matched)",
            |c| outcomes(c, |x| x.packets),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_bytes",
            "Bytes of copy attempts per session, direction and outcome",
            |c| outcomes(c, |x| x.bytes),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_not_copied_packets",
            "Packets a session saw and did not copy, per reason (filtered, sampled_out, rate_limited, dry_run, \
             preempted, hop_limit); with matched, every packet a session saw",
            |c| not_copied(c, |x| x.packets),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_not_copied_bytes",
            "Bytes of the packets a session saw and did not copy, per reason",
            |c| not_copied(c, |x| x.bytes),
        )?;
        let at = |r: u32, bytes: bool| {
            move |c: &ReasonCounters| {
                let x = c[r as usize];
                vec![("", if bytes { x.bytes } else { x.packets })]
            }
        };
        self.counters(
            &mut encoder,
            "mirror_agent_matched_packets",
            "Packets selected by a session",
            at(reason::MATCHED, false),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_matched_bytes",
            "Bytes of the packets selected by a session",
            at(reason::MATCHED, true),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_truncated_packets",
            "Copies cut to the session's snap length",
            at(reason::TRUNCATED, false),
        )?;
        self.counters(
            &mut encoder,
            "mirror_agent_truncated_bytes",
            "Bytes cut off copies",
            at(reason::TRUNCATED, true),
        )?;
        let mut sources = encoder.encode_descriptor(
            "mirror_agent_session_sources",
            "Source interfaces per session",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.0 {
            ConstGauge::new(row.sources)
                .encode(sources.encode_family(&[("session", row.name.as_str()), ("owner", row.owner)])?)?;
        }
        let mut missing = encoder.encode_descriptor(
            "mirror_agent_session_hooks_missing",
            "Hooks a session needs that are not attached",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.0 {
            if let Some(m) = row.missing {
                ConstGauge::new(m).encode(
                    missing.encode_family(&[("session", row.name.as_str()), ("owner", row.owner)])?,
                )?;
            }
        }
        Ok(())
    }
}

/// Reads everything and builds the registry for one scrape.
pub fn collect(ctx: &Context, status: Option<&DaemonStatus>) -> Result<Registry> {
    let mut registry = Registry::default();
    let build = gauge_family::<BuildLabels>(
        &mut registry,
        "mirror_agent_build_info",
        "Always 1; labels name the build",
    );
    build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);

    let global = Family::<GlobalLabels, Counter>::default();
    registry.register(
        "mirror_agent_unattributed_packets",
        "Packets no session accounts for (map misses, copies not mirrored again)",
        global.clone(),
    );
    let sessions_g =
        gauge_family::<OwnerLabels>(&mut registry, "mirror_agent_sessions", "Sessions, by owner");
    let used_g = gauge_family::<MapLabels>(&mut registry, "mirror_agent_map_entries", "Entries in use");
    let cap_g =
        gauge_family::<MapLabels>(&mut registry, "mirror_agent_map_capacity", "Entries a map can hold");
    for owner in ["cli", "config"] {
        sessions_g.get_or_create(&OwnerLabels { owner: owner.to_owned() }).set(0);
    }

    let layout = &ctx.layout;
    let opened =
        match bpffs::is_bpffs(&layout.bpffs).then(|| layout.lock(false, false)).transpose()?.flatten() {
            Some(lock) => Store::open(layout)?.map(|s| (s, lock)),
            None => None,
        };
    let (session_count, hook_count) = match &opened {
        Some((store, _)) => {
            let sessions = store.sessions_without_text()?;
            // A hook that cannot be probed leaves the gauge out, not the scrape.
            let missing = match hooks::missing(store, layout) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("probing hooks for the metrics: {e:#}");
                    None
                }
            };
            let all = store.all_counters()?;
            let mut rows = SessionRows::default();
            for s in &sessions {
                let owner = s.owner().as_str();
                sessions_g.get_or_create(&OwnerLabels { owner: owner.to_owned() }).inc();
                let mut row = SessionRow {
                    name: s.name().to_owned(),
                    owner,
                    sources: s.sources.len() as i64,
                    missing: missing.as_ref().map(|m| m.iter().filter(|h| h.serves(s)).count() as i64),
                    directions: Vec::new(),
                };
                for d in [direction::INGRESS, direction::EGRESS] {
                    if s.config.direction_mask & (1 << d) == 0 && !s.taps.iter().any(|t| t.direction == d) {
                        continue;
                    }
                    row.directions.push((direction_name(d), all[s.id as usize][d as usize]));
                }
                rows.0.push(row);
            }
            registry.register_collector(Box::new(rows));
            for d in [direction::INGRESS, direction::EGRESS] {
                let counters = &all[GLOBAL_SESSION_ID as usize][d as usize];
                for r in [reason::NO_SESSION, reason::COPY_NOT_REMIRRORED] {
                    let l = GlobalLabels {
                        direction: direction_name(d).to_owned(),
                        reason: reason::NAMES[r as usize].to_owned(),
                    };
                    global.get_or_create(&l).inc_by(counters[r as usize].packets);
                }
            }
            (sessions.len(), store.hook_count())
        }
        None => (0, 0),
    };
    used_g.get_or_create(&MapLabels { map: "sessions".to_owned() }).set(session_count as i64);
    cap_g.get_or_create(&MapLabels { map: "sessions".to_owned() }).set(i64::from(MAX_SESSIONS - 1));
    used_g.get_or_create(&MapLabels { map: "source_hooks".to_owned() }).set(hook_count as i64);
    cap_g.get_or_create(&MapLabels { map: "source_hooks".to_owned() }).set(i64::from(MAX_SOURCE_HOOKS));

    if let Some(st) = status {
        counter(&mut registry, "mirror_agent_reconciles", "Reconcile passes run", st.reconciles);
        counter(
            &mut registry,
            "mirror_agent_reconcile_errors",
            "Reconcile passes that failed",
            st.reconcile_errors,
        );
        counter(&mut registry, "mirror_agent_config_reloads", "Config reloads applied", st.reloads_ok);
        counter(
            &mut registry,
            "mirror_agent_config_reload_failures",
            "Config reloads rejected",
            st.reloads_failed,
        );
        let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        last.set(st.last_reload_unix_secs);
        registry.register(
            "mirror_agent_config_last_reload_timestamp_seconds",
            "When the config was last (re)loaded, accepted or not",
            last,
        );
        gauge(
            &mut registry,
            "mirror_agent_config_last_reload_success",
            "1 if the last config (re)load was accepted",
            i64::from(st.last_reload_ok),
        );
        gauge(
            &mut registry,
            "mirror_agent_sessions_refused",
            "Config sessions refused (policy, conflicts, capacity)",
            st.sessions_refused as i64,
        );
        gauge(
            &mut registry,
            "mirror_agent_sources_denied",
            "Matched sources the policy keeps out",
            st.sources_denied as i64,
        );
    }
    Ok(registry)
}

/// Encodes `registry` in the format the `Accept` header asks for.
pub fn encode(registry: &Registry, accept: &str) -> Result<(String, &'static str)> {
    let mut body = String::new();
    if accept.contains("application/openmetrics-text") {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
        Ok((body, "application/openmetrics-text; version=1.0.0; charset=utf-8"))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
        Ok((body, prometheus_client::encoding::prometheus_text::CONTENT_TYPE))
    }
}

/// Serves `/metrics` (and `/healthz`) until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, status: SharedStatus) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let ctx = ctx.clone();
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, ctx, status).await {
                tracing::debug!("metrics request: {e:#}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, ctx: Arc<Context>, status: SharedStatus) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (code, ctype, body) = match (method, path.split('?').next().unwrap_or_default()) {
        ("GET", "/metrics") => {
            let st = status.lock().map(|s| s.clone()).unwrap_or_default();
            let result = tokio::task::spawn_blocking(move || -> Result<(String, &'static str)> {
                let registry = collect(&ctx, Some(&st))?;
                let encoded = encode(&registry, &accept);
                drop(registry);
                crate::daemon::run::release_freed_memory();
                encoded
            })
            .await?;
            match result {
                Ok((body, ctype)) => ("200 OK", ctype, body),
                Err(e) => ("500 Internal Server Error", "text/plain; charset=utf-8", format!("{e:#}\n")),
            }
        }
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await.ok();
    Ok(())
}
