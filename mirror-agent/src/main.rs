//! `mirror-agent`: copy selected packets of any interface to a monitoring
//! destination with eBPF/tc. Sessions are pinned in bpffs and keep running
//! after the command exits.
mod bpffs;
mod commands;
mod error;
mod hooks;
mod iface;
mod netns;
mod rcu;
mod store;
mod tc_netlink;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    bpffs::Layout,
    commands::{AttachArgs, Context},
    hooks::AttachMode,
};

#[derive(Debug, Parser)]
#[command(name = "mirror-agent", version, about)]
struct Cli {
    /// Operate on the network namespace NAME (from /run/netns, like `ip -n`),
    /// or on the namespace file at an absolute path.
    #[arg(short = 'n', long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Where bpffs is (or will be) mounted.
    #[arg(long, global = true, env = "MIRROR_AGENT_BPFFS", default_value_os_t = commands::default_bpffs())]
    bpffs: PathBuf,
    /// How programs are hooked: TCX links, or classic clsact filters.
    #[arg(long, global = true, value_enum, env = "MIRROR_AGENT_ATTACH_MODE", default_value_t = AttachMode::Auto)]
    attach_mode: AttachMode,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything else (and before any thread exists): setns only moves
    // the calling thread.
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    bpffs::refuse_private_mount_namespace(&cli.bpffs)?;
    let ctx = Context {
        netns_label: cli.netns.clone().unwrap_or_else(|| "current".to_owned()),
        layout: Layout::new(&cli.bpffs, &netns::current_id()?),
        mode: cli.attach_mode,
    };
    match &cli.command {
        Command::Attach(args) => commands::attach(&ctx, args),
        Command::Detach { name, all } => commands::detach(&ctx, name.as_deref(), *all),
        Command::List { json } => commands::list(&ctx, *json),
        Command::Stats { name, json } => commands::stats(&ctx, name.as_deref(), *json),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIRROR_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirror-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
