//! `mirror-agent`: the binary. Everything lives in the library.
use std::process::ExitCode;

use clap::Parser as _;
use mirror_agent::cli::{self, Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `list --json | head`: a verb whose reader went away ends quietly,
        // as a shell tool does. The daemon keeps Rust's default (ignored), so
        // that a scraper hanging up never kills it.
        // SAFETY: resetting a signal's disposition, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRROR_AGENT_LOG")
        .unwrap_or_else(|_| cli.command.default_log_level().into());
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirror-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
