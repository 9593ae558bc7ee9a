//! The `failoverd` binary: parse arguments, start logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use failoverd::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, before any client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The daemon logs its decisions; one-shot commands (and the demo, which prints its own
    // timeline) log only warnings and errors.
    let default = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    cli::init_tracing(cli.log_format, cli.log.as_deref(), default);
    if matches!(cli.command, Command::Run(_)) {
        // Probes, API clients and files share one descriptor table: a soft limit of 1,024
        // under a higher hard limit would starve probes first.
        if let Some(n) = failoverd::server::raise_nofile_limit() {
            tracing::info!(nofile = n, "open-file limit");
        }
    }
    cli::main(cli).await
}
