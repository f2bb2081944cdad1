//! The command line: one verb per subcommand, each checking the
//! capabilities it needs before it touches anything.
pub mod commands;
pub mod gc;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    caps::{self, Cap},
    daemon::{
        self,
        run::{OnExit, Options},
    },
    dataplane::{
        bpffs::{self, Layout},
        hooks::AttachMode,
    },
    net::netns,
};
use commands::{AttachArgs, Context};

#[derive(Debug, Parser)]
#[command(name = "mirror-agent", version, about)]
pub struct Cli {
    /// Operate on the network namespace NAME (from /run/netns, like `ip -n`),
    /// or on the namespace file at an absolute path.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Where bpffs is (or will be) mounted.
    #[arg(long, global = true, env = "MIRROR_AGENT_BPFFS", default_value_os_t = commands::default_bpffs())]
    pub bpffs: PathBuf,
    /// How programs are hooked: TCX links, or classic clsact filters.
    #[arg(long, global = true, value_enum, env = "MIRROR_AGENT_ATTACH_MODE", default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Log lines as text or as one JSON object each.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start mirroring: create a session and return once it is live.
    Attach(AttachArgs),
    /// Stop a session (or all of them) and remove everything it created.
    Detach {
        /// Session to remove.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Remove every session in the namespace and every trace of the agent.
        #[arg(long)]
        all: bool,
    },
    /// List sessions.
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Per-session, per-direction counters.
    Stats {
        /// Only this session.
        name: Option<String>,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Run as a daemon: keep the config's sessions true as interfaces come and go.
    Run {
        /// The YAML config (see the README's "Running as a service").
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics on ADDR:PORT (in the namespace the
        /// daemon was started in, not the one `-n` names).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
        /// What to do with the config's sessions when the daemon stops.
        #[arg(long, value_enum, default_value_t = OnExit::Keep)]
        on_exit: OnExit,
    },
    /// Validate a config and print what `run` would attach, update, detach
    /// and refuse right now; change nothing.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove the state of network namespaces that no longer exist.
    Gc,
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Self::Attach(_) => "attach",
            Self::Detach { .. } => "detach",
            Self::List { .. } => "list",
            Self::Stats { .. } => "stats",
            Self::Run { .. } => "run",
            Self::Check { .. } => "check",
            Self::Gc => "gc",
        }
    }

    /// What the verb needs, checked before it does anything.
    fn capabilities(&self) -> &'static [Cap] {
        match self {
            Self::Attach(_) | Self::Detach { .. } | Self::Run { .. } => &[Cap::Bpf, Cap::NetAdmin],
            // Reading the maps needs CAP_BPF; telling whether hooks are
            // attached needs CAP_NET_ADMIN.
            Self::List { .. } | Self::Check { .. } => &[Cap::Bpf, Cap::NetAdmin],
            Self::Stats { .. } => &[Cap::Bpf],
            // Entering every namespace to read its identity.
            Self::Gc => &[Cap::Bpf, Cap::SysAdmin],
        }
    }

    /// The default log level: the daemon says what it does.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Run { .. } => "info",
            _ => "warn",
        }
    }
}

/// Runs one invocation.
pub fn run(cli: Cli) -> Result<()> {
    let verb = cli.command.verb();
    // Bound before entering `-n`: the metrics endpoint stays in the
    // namespace the daemon was started in.
    let metrics = match &cli.command {
        Command::Run { metrics: Some(addr), .. } => Some(
            std::net::TcpListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))?,
        ),
        _ => None,
    };
    if cli.netns.is_some() {
        caps::require(verb, &[Cap::SysAdmin])?;
    }
    // Before anything else (and before any thread exists): setns only moves
    // the calling thread.
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    caps::require(verb, cli.command.capabilities())?;
    bpffs::refuse_private_mount_namespace(&cli.bpffs)?;
    let ctx = Context {
        netns_label: cli.netns.clone().unwrap_or_else(|| "current".to_owned()),
        layout: Layout::new(&cli.bpffs, &netns::current_id()?),
        mode: cli.attach_mode,
    };
    let result = match &cli.command {
        Command::Attach(args) => commands::attach(&ctx, args),
        Command::Detach { name, all } => commands::detach(&ctx, name.as_deref(), *all),
        Command::List { json } => commands::list(&ctx, *json),
        Command::Stats { name, json } => commands::stats(&ctx, name.as_deref(), *json),
        Command::Run { config, on_exit, .. } => {
            daemon::run::run(ctx, &Options { config: config.clone(), on_exit: *on_exit }, metrics)
        }
        Command::Check { config } => commands::check(&ctx, config),
        Command::Gc => gc::run(&cli.bpffs),
    };
    result.map_err(|e| {
        if caps::is_permission_error(&e) {
            e.context(format!(
                "the kernel refused an operation: {verb} needs CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN for -n), \
                 and no LSM policy denying what they allow"
            ))
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped unit grants exactly what `run` checks for (plus
    /// CAP_SYS_ADMIN for `netns:` selectors and bpffs), and no more.
    #[test]
    fn the_systemd_unit_grants_what_run_needs_and_nothing_else() {
        let unit = include_str!("../../../deploy/systemd/mirror-agent.service");
        let caps_of = |key: &str| -> std::collections::BTreeSet<String> {
            let line = unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} missing"));
            line[key.len()..].split_whitespace().map(str::to_owned).collect()
        };
        let bounding = caps_of("CapabilityBoundingSet=");
        assert_eq!(bounding, caps_of("AmbientCapabilities="));
        let run = Command::Run { config: PathBuf::new(), metrics: None, on_exit: OnExit::Keep };
        let mut want: std::collections::BTreeSet<String> =
            run.capabilities().iter().map(|c| c.name().to_owned()).collect();
        want.insert(Cap::SysAdmin.name().to_owned());
        assert_eq!(bounding, want);
        for line in ["Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ReadWritePaths=/sys/fs/bpf"]
        {
            assert!(unit.lines().any(|l| l == line), "{line} missing from the unit");
        }
    }
}
