//! The `failoverd` binary: parse arguments, start logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use failoverd::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, before any client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The demo prints its own timeline; its log shows only the moves and problems.
    let default = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    cli::init_tracing(cli.log_format, cli.log.as_deref(), default);
    cli::main(cli).await
}
