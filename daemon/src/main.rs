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
    // The config file is read here, once, before logging starts: the OTLP exporter is one
    // layer of the subscriber. `run` checks the same reading and locates its problems.
    let otlp = match &cli.command {
        Command::Run(args) => {
            let pre = failoverd::config::Preloaded::read(args.config.as_deref());
            let otlp = pre.tracing.clone().ok().flatten();
            pre.keep();
            otlp
        }
        _ => None,
    };
    let provider = cli::init_tracing(cli.log_format, cli.log.as_deref(), default, otlp.as_ref());
    if matches!(cli.command, Command::Run(_)) {
        // Probes, API clients and files share one descriptor table: a soft limit of 1,024
        // under a higher hard limit would starve probes first.
        if let Some(n) = failoverd::server::raise_nofile_limit() {
            tracing::info!(nofile = n, "open-file limit");
        }
    }
    let code = cli::main(cli).await;
    if let Some(p) = provider {
        // Spans of the last moments reach the collector, within a bound: a collector that
        // hangs must not hold the exit.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = p.force_flush();
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
    }
    code
}
