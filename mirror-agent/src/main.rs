//! `mirror-agent`: the binary. Everything lives in the library.
use std::process::ExitCode;

use clap::Parser as _;
use mirror_agent::cli::{self, Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
