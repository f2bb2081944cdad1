//! The daemon's loop: resolve the config against the host, reconcile the
//! store through [`crate::dataplane::sessions`] (the CLI's code path), and
//! do it again whenever netlink, inotify or a signal says something changed.
//! Nothing is polled.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use netlink_sys::{AsyncSocket as _, SocketAddr};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::commands::{Context, cleanup_if_unused},
    daemon::{
        audit,
        config::{self, Config},
        metrics::{self, DaemonStatus, SharedStatus},
        resolve::{self, Host, Resolution},
        watch::{self, Watch},
    },
    dataplane::{
        bpffs,
        sessions::{self, Change},
        store::{Owner, Store},
    },
    net::links,
};

/// What `--on-exit` does with the daemon's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Leave mirroring running (the default): a restart adopts it.
    Keep,
    /// Tear down every session of the config.
    Remove,
}

#[derive(Debug)]
pub struct Options {
    pub config: PathBuf,
    pub on_exit: OnExit,
}

/// Groups of rtnetlink multicast the daemon follows.
const RTMGRP_LINK: u32 = 1;
const RTMGRP_NEIGH: u32 = 1 << 2;
/// Events closer together than this are folded into one reconcile.
const SETTLE: Duration = Duration::from_millis(30);
/// A pass gives up reading the host after this long (and retries).
const HOST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed reconcile is retried after this long (a destination being
/// created, a transient error), and on the next event anyway.
const RETRY: Duration = Duration::from_secs(1);

/// The sessions of the config right now, as the last pass left them.
#[derive(Debug, Default)]
struct Memory {
    /// Refusals and denials already audited (audited again only if they change).
    refused: BTreeSet<(String, String)>,
    denied: BTreeSet<resolve::Denied>,
}

/// Resolves `config` against the host and prints or applies the plan.
/// Returns the plan and the resolution.
pub fn plan_and_apply(
    ctx: &Context,
    config: &Config,
    host: &Host,
    apply: bool,
) -> Result<(Vec<Change>, Resolution)> {
    let res = resolve::resolve(config, host);
    let layout = &ctx.layout;
    if apply {
        bpffs::ensure_mounted(&layout.bpffs)?;
    }
    let create = apply && !res.specs.is_empty();
    let lock = if bpffs::is_bpffs(&layout.bpffs) { layout.lock(apply, create)? } else { None };
    let store = match (&lock, create) {
        (None, _) => None,
        (Some(_), true) => Some(Store::open_or_create(layout)?),
        (Some(_), false) => Store::open(layout)?,
    };
    let mut changes = sessions::plan(store.as_ref(), &res.specs, Owner::Config, true)?;
    for (name, why) in &res.refused {
        changes.push(Change::Refused { name: name.clone(), why: why.clone() });
    }
    if apply && let Some(mut store) = store {
        sessions::apply(&mut store, layout, ctx.mode, &changes)?;
        // Hooks detached behind our back come back here too. A plan that
        // creates or updates a session already ended with this; one that
        // only removes (or does nothing) did not.
        if !changes.iter().any(|c| matches!(c, Change::Create(_) | Change::Update { .. })) {
            crate::dataplane::hooks::reconcile(&store, layout, ctx.mode)?;
        }
        cleanup_if_unused(store, layout)?;
    }
    drop(lock);
    Ok((changes, res))
}

/// Reads the host: this namespace over `handle`, and every namespace the
/// config's `netns:` selectors name.
async fn read_host(handle: &rtnetlink::Handle, config: &Config) -> Result<Host> {
    let local = links::snapshot(handle).await?;
    let mut host = Host { local, ..Host::default() };
    for name in Host::netns_wanted(config) {
        let n = name.clone();
        let snap = tokio::task::spawn_blocking(move || links::snapshot_of_netns(&n)).await??;
        if let Some(snap) = snap {
            if let Some(id) = links::nsid_of(handle, &crate::net::netns::path_of(&name)).await? {
                host.netns_ids.insert(name.clone(), id);
            }
            host.netns.insert(name, snap);
        }
    }
    Ok(host)
}

/// Reads the host from synchronous code (`check`).
pub fn read_host_blocking(config: &Config) -> Result<Host> {
    let mut host = Host { local: links::snapshot_blocking()?, ..Host::default() };
    for name in Host::netns_wanted(config) {
        if let Some(snap) = links::snapshot_of_netns(&name)? {
            if let Some(id) = links::nsid_of_blocking(&crate::net::netns::path_of(&name))? {
                host.netns_ids.insert(name.clone(), id);
            }
            host.netns.insert(name, snap);
        }
    }
    Ok(host)
}

fn audit_pass(changes: &[Change], res: &Resolution, memory: &mut Memory) {
    for c in changes {
        match c {
            Change::Create(_) => audit::record("config", "attach", c.name(), &c.to_string()),
            Change::Update { .. } => audit::record("config", "update", c.name(), &c.to_string()),
            Change::Remove { .. } => audit::record("config", "detach", c.name(), &c.to_string()),
            Change::Refused { name, why } => {
                if memory.refused.insert((name.clone(), why.clone())) {
                    audit::refused("config", name, why);
                }
            }
            Change::Unchanged { .. } => {}
        }
    }
    memory.refused.retain(|r| {
        changes.iter().any(|c| matches!(c, Change::Refused { name, why } if (name, why) == (&r.0, &r.1)))
    });
    let denied: BTreeSet<resolve::Denied> = res.denied.iter().cloned().collect();
    for d in denied.difference(&memory.denied) {
        audit::refused("config", &d.session, &format!("source {:?}: {}", d.interface, d.why));
    }
    memory.denied = denied;
}

fn now_unix_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Hands memory freed by a pass (the loaded object, the kernel's BTF, dumps)
/// back to the kernel, so an idle daemon's RSS is what it holds, not its
/// peak. glibc only.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn config_has_mac_selectors(config: &Config) -> bool {
    config
        .sessions
        .iter()
        .flat_map(|s| &s.sources.0)
        .any(|src| matches!(src.selector, config::Selector::Mac(_)))
}

fn force_receive_buffer(sock: &netlink_sys::Socket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt with a pointer to an int we own and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!("SO_RCVBUFFORCE: {}; events may overflow in bursts", std::io::Error::last_os_error());
    }
}

/// One daemon per network namespace: two with different configs would
/// prune each other's sessions on every event. An abstract unix socket is
/// per network namespace and goes away with the process (even `kill -9`).
fn claim_namespace(netns_label: &str) -> Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"mirror-agent-daemon")?;
    std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "another mirror-agent daemon already manages network namespace {netns_label}: \
                 one daemon per namespace (two would undo each other's sessions)"
            )
        } else {
            anyhow::Error::new(e).context("claiming the namespace for this daemon")
        }
    })
}

/// Tells systemd (`Type=notify`) the daemon is ready, if it runs under it.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("sd_notify: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        tracing::warn!("sd_notify READY=1: {e}");
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(ctx: Context, opts: &Options, metrics: Option<std::net::TcpListener>) -> Result<()> {
    // An invalid config at start is fatal; later ones are rejected and the
    // running sessions go on.
    // Until tokio's handler is in place a SIGHUP must not kill the daemon
    // (the config is read at start anyway).
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let config = config::load(&opts.config)?;
    if !Host::netns_wanted(&config).is_empty() {
        // `netns:` selectors read other namespaces (setns).
        crate::caps::require("run", &[crate::caps::Cap::SysAdmin])?;
    }
    let _claim = claim_namespace(&ctx.netns_label)?;
    // A long-running process with two workers and a blocking pool needs no
    // arena per thread: fewer arenas, less memory kept after a pass.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(main_loop(Arc::new(ctx), opts, config, metrics))
}

async fn main_loop(
    ctx: Arc<Context>,
    opts: &Options,
    mut config: Config,
    metrics: Option<std::net::TcpListener>,
) -> Result<()> {
    let status: SharedStatus = Arc::new(Mutex::new(DaemonStatus {
        last_reload_unix_secs: now_unix_secs(),
        last_reload_ok: true,
        reloads_ok: 1,
        ..DaemonStatus::default()
    }));
    let (mut conn, _, mut events) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_NEIGH))
        .context("subscribing to link and neighbour events")?;
    // A burst of 100 new interfaces must not overflow the socket; past
    // rmem_max only SO_RCVBUFFORCE (CAP_NET_ADMIN) raises it.
    force_receive_buffer(conn.socket_mut().socket_mut(), 8 << 20);
    tokio::spawn(conn);
    // Dumps and queries on a connection of their own: a reply never waits
    // behind (or is lost with) a burst of events.
    let (requests, handle) = {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        (tokio::spawn(conn), handle)
    };
    let mut watch = Watch::new(&opts.config).context("watching the config file")?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // An edit between the first read and the watch must not be lost.
    if let Ok(now) = config::load(&opts.config)
        && now != config
    {
        config = now;
    }
    if let Some(listener) = metrics {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(metrics::serve(listener, ctx.clone(), status.clone()));
    }
    tracing::info!(config = %opts.config.display(), sessions = config.sessions.len(), "daemon started");

    let mut memory = Memory::default();
    let mut ready = false;
    let mut dirty_since: Option<Instant> = Some(Instant::now());
    let mut retry_at: Option<Instant> = None;
    loop {
        if let Some(since) = dirty_since
            && since.elapsed() >= SETTLE
        {
            dirty_since = None;
            let started = Instant::now();
            let read = tokio::time::timeout(HOST_READ_TIMEOUT, read_host(&handle, &config)).await;
            let result = match read
                .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the host over rtnetlink timed out")))
            {
                Ok(host) => {
                    let (ctx2, config2) = (ctx.clone(), config.clone());
                    tokio::task::spawn_blocking(move || plan_and_apply(&ctx2, &config2, &host, true)).await?
                }
                Err(e) => Err(e),
            };
            let mut st = status.lock().map_err(|_| anyhow::anyhow!("status lock poisoned"))?;
            st.reconciles += 1;
            match result {
                Ok((changes, res)) => {
                    retry_at = None;
                    // A session whose additions were refused but whose
                    // removals applied is running, not refused.
                    st.sessions_refused = changes
                        .iter()
                        .filter(|c| {
                            matches!(c, Change::Refused { .. })
                                && !changes
                                    .iter()
                                    .any(|u| matches!(u, Change::Update { .. }) && u.name() == c.name())
                        })
                        .count() as u64;
                    st.sources_denied = res.denied.len() as u64;
                    drop(st);
                    audit_pass(&changes, &res, &mut memory);
                    release_freed_memory();
                    if changes.iter().any(Change::is_effective) {
                        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "reconciled");
                    }
                    if !ready {
                        ready = true;
                        notify_ready();
                        tracing::info!("ready");
                    }
                }
                Err(e) => {
                    st.reconcile_errors += 1;
                    drop(st);
                    tracing::error!(
                        "reconcile failed (changed nothing it could not finish; retrying): {e:#}"
                    );
                    retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
        let settle_in = dirty_since.map(|s| SETTLE.saturating_sub(s.elapsed()));
        let retry_in = retry_at.map(|t| t.saturating_duration_since(Instant::now()));
        let wake = match (settle_in, retry_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            msg = events.next() => {
                let Some((msg, _)) = msg else { anyhow::bail!("the rtnetlink event socket closed") };
                let relevant = match &msg.payload {
                    netlink_packet_core::NetlinkPayload::InnerMessage(m) => {
                        links::is_relevant(m, config_has_mac_selectors(&config))
                    }
                    // The socket overflowed: events were lost, so look again.
                    netlink_packet_core::NetlinkPayload::Overrun(_) => {
                        tracing::warn!("rtnetlink events were lost (socket overrun); full pass");
                        true
                    }
                    _ => false,
                };
                if relevant {
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
            ev = watch.next() => {
                let ev = ev.context("reading inotify events")?;
                let mut dirty = false;
                if ev.contains(&watch::Event::Config) {
                    reload(&opts.config, &mut config, &status);
                    dirty = true;
                }
                // Namespaces come and go all day on a container host: only
                // a config with `netns:` selectors cares.
                if ev.contains(&watch::Event::Netns) && !Host::netns_wanted(&config).is_empty() {
                    dirty = true;
                }
                if dirty {
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
            _ = hup.recv() => {
                reload(&opts.config, &mut config, &status);
                dirty_since.get_or_insert_with(Instant::now);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = async { tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600))).await }, if wake.is_some() => {
                if retry_at.is_some_and(|t| t <= Instant::now()) {
                    retry_at = None;
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
        }
    }
    requests.abort();
    tracing::info!(on_exit = ?opts.on_exit, "stopping");
    if opts.on_exit == OnExit::Remove {
        let empty = Config { sessions: Vec::new(), policy: config.policy.clone() };
        let ctx2 = ctx.clone();
        let (changes, res) =
            tokio::task::spawn_blocking(move || plan_and_apply(&ctx2, &empty, &Host::default(), true))
                .await??;
        audit_pass(&changes, &res, &mut memory);
    }
    Ok(())
}

/// Reloads the config: all or nothing.
fn reload(path: &std::path::Path, config: &mut Config, status: &SharedStatus) {
    let result = config::load(path);
    let mut st = match status.lock() {
        Ok(st) => st,
        Err(_) => return,
    };
    st.last_reload_unix_secs = now_unix_secs();
    match result {
        Ok(new) => {
            st.last_reload_ok = true;
            st.reloads_ok += 1;
            if new != *config {
                tracing::info!(sessions = new.sessions.len(), "config reloaded");
                *config = new;
            }
        }
        Err(e) => {
            st.last_reload_ok = false;
            st.reloads_failed += 1;
            tracing::error!("config rejected, the running sessions are left as they are: {e}");
        }
    }
}
