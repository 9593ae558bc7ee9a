//! The command line: one binary for the daemon, its checks and its demo.
//!
//! `mod.rs` holds the arguments and the dispatch; `run` starts the daemon from them,
//! `commands` the one-shot checks (`validate`, `audit verify`, `plan`), `client` the
//! override API's client commands and `demo` the self-contained demo. The daemon itself
//! is wired in [`crate::app`], below both `run` and the demo.

mod auth_flags;
pub mod client;
mod commands;
pub mod credentials;
pub mod demo;
mod plan_drill;
mod run;
mod run_audit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use run::RunArgs;

use crate::config::StoreSpec;
use crate::playbook;
use client::Conn;
use commands::{export, plan, validate, verify, verify_cluster};
use run::run;

/// failoverd: emergency failover control for services on an Istio mesh.
#[derive(Debug, Parser)]
#[command(name = "failoverd", version, about)]
pub struct Cli {
    /// Log format: `text` (human; colours on a terminal) or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `failoverd=debug`.
    #[arg(long, global = true, env = "FAILOVERD_LOG")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (boxed: its flags dwarf every other command's).
    Run(Box<RunArgs>),
    /// Validate playbook files or directories, or (`--config FILE`) the whole configuration
    /// set exactly as `run --config FILE` checks it; prints `file:line:col: message` per
    /// problem and exits 1 when there is one.
    Validate {
        /// Files or directories (playbooks and drills).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        paths: Vec<PathBuf>,
        /// The daemon's config file: check everything `run --config FILE` would (playbooks,
        /// drills, SLO and drill servers, store directory, token file, notification sinks,
        /// config keys).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also run every SLO query against this live Prometheus (and each SLO's own server);
        /// with --config it is also the default server, as `run --prometheus`.
        #[arg(long)]
        prometheus: Option<String>,
    },
    /// Show the exact routing change a failover (or failback) would write; writes nothing.
    Plan {
        /// The playbook file.
        playbook: PathBuf,
        /// Where the VirtualService lives: `file:DIR` or `kubernetes`.
        #[arg(long)]
        store: StoreSpec,
        /// Kubeconfig for `--store kubernetes`.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context for `--store kubernetes`.
        #[arg(long)]
        context: Option<String>,
        /// Plan the failback instead of the failover.
        #[arg(long)]
        failback: bool,
        /// Failover target index (default 0; at run time the first *healthy* target wins).
        #[arg(long)]
        target: Option<usize>,
        /// Show the VirtualService this fault drill's fault would write instead; PLAYBOOK is
        /// then the playbooks directory holding the drill and its playbooks.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["failback", "target"])]
        drill: Option<String>,
    },
    /// A self-contained run: stand-in services on loopback, a temporary file store, a fault
    /// and a recovery, shown as a live timeline.
    Demo,
    /// Audit log tools.
    Audit {
        /// Audit subcommand.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the playbook JSON Schema.
    Schema,
    /// Show every playbook's state (or one playbook's, in detail).
    Status {
        /// One playbook.
        name: Option<String>,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Explain one playbook: state, signals, overrides, recent moves, audit trail.
    Why {
        /// The playbook.
        name: String,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Force a failover and hold it for a TTL (operator role).
    Failover {
        /// The playbook.
        name: String,
        /// Why (goes into the audit log).
        #[arg(long)]
        reason: String,
        /// How long to hold (default 1h, at most 7d).
        #[arg(long)]
        ttl: Option<String>,
        /// `failover[N]` or N (default: the first healthy target).
        #[arg(long)]
        target: Option<String>,
        /// Route there even if failoverd believes it unhealthy.
        #[arg(long)]
        force: bool,
        /// Ask for a two-person break-glass past residency and mesh policy (admin role;
        /// needs --target; a different admin runs `failoverd approve ID`).
        #[arg(long, requires = "target")]
        break_glass: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve another admin's break-glass request: the move is made at once (admin role).
    Approve {
        /// The request's id (`bg-...`), as `failover --break-glass` printed it.
        id: String,
        /// Why you agree (goes into the audit log).
        #[arg(long)]
        reason: String,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Return to the original route now (operator role).
    Failback {
        /// The playbook.
        name: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Even if the primary is not known healthy.
        #[arg(long)]
        force: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop automatic moves for a while, like a silence (operator role).
    Freeze {
        /// The playbook.
        name: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// How long (default 1h, at most 7d).
        #[arg(long)]
        ttl: Option<String>,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Chaos drills (client of the override API).
    Drill {
        /// Drill subcommand.
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// Release freezes and holds: automation back in control (operator role).
    Resume {
        /// The playbook.
        name: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `drill` subcommands.
#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Start a drill now (operator role); with --wait, follow it and print its report.
    Run {
        /// The drill (`metadata.name`).
        name: String,
        /// Why (goes into the audit log and the report).
        #[arg(long)]
        reason: Option<String>,
        /// Run on a blocked date or outside the allowed windows (never past a safety rule).
        #[arg(long)]
        force: bool,
        /// Wait for the verdict and print the report; exit 0 only when it passed.
        #[arg(long)]
        wait: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the drill JSON Schema.
    Schema,
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 0 when whole, 1 naming the first broken record. Several
    /// files (replicas' logs, exports, shipped lines) are proved to be one chain: each whole,
    /// no two holding different records at one seq, each a contiguous part of the longest.
    Verify {
        /// The audit logs (or exports, or files of shipped lines).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check every signed checkpoint with this key file and report how far the
        /// records are proved complete.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also read the deployment's chain from the cluster (leader election: the head
        /// object `<lease>-audit` and its sealed segments), check it as one chain and check
        /// that the (first) file is a prefix of it.
        #[arg(long)]
        cluster: bool,
        /// With `--cluster`: kubeconfig (default: in-cluster config, else `$KUBECONFIG`).
        #[arg(long, requires = "cluster")]
        kubeconfig: Option<PathBuf>,
        /// With `--cluster`: kubeconfig context.
        #[arg(long, requires = "cluster")]
        context: Option<String>,
        /// With `--cluster`: failoverd's namespace (where its Lease is).
        #[arg(long, requires = "cluster", default_value = "failoverd")]
        namespace: String,
        /// With `--cluster`: the election Lease's name (`leaderElection.name`).
        #[arg(long, requires = "cluster", default_value = "failoverd-leader")]
        lease: String,
    },
    /// Write the exact lines (so their hashes hold) of the records from the first one written
    /// at or after TIME to the end, for an auditor; the log's chain is checked first.
    Export {
        /// An RFC 3339 time (`2027-01-01T00:00:00Z`) or a span back from now (`30d`, `12h`).
        #[arg(long)]
        since: String,
        /// The audit log.
        #[arg(long, default_value = "/var/lib/failoverd/audit.jsonl")]
        audit: PathBuf,
        /// Write here (replaced whole, never half-written) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Validate {
            paths,
            config,
            prometheus,
        } => {
            return validate(&paths, config, prometheus.as_deref()).await;
        }
        Command::Plan {
            playbook,
            store,
            kubeconfig,
            context,
            failback,
            target,
            drill,
        } => {
            let store = store.with_kube(kubeconfig, context, None, None);
            match drill {
                Some(drill) => plan_drill::plan_drill(&playbook, &store, &drill).await,
                None => plan(&playbook, &store, failback, target).await,
            }
        }
        Command::Demo => demo::run().await,
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    key,
                    cluster,
                    kubeconfig,
                    context,
                    namespace,
                    lease,
                },
        } => {
            let local = verify(&files, key.as_deref());
            if !cluster || local != ExitCode::SUCCESS {
                return local;
            }
            return verify_cluster(&files[0], kubeconfig, context, &namespace, &lease).await;
        }
        Command::Audit {
            command: AuditCommand::Export { since, audit, out },
        } => return export(&since, &audit, out.as_deref()),
        Command::Status { name, conn } => return client::status(&conn, name.as_deref()).await,
        Command::Why { name, conn } => return client::why(&conn, &name).await,
        Command::Failover {
            name,
            reason,
            ttl,
            target,
            force,
            break_glass,
            conn,
        } => {
            let mut body = client::body(&reason, ttl.as_deref(), target.as_deref(), force);
            if break_glass {
                body["breakGlass"] = serde_json::json!(true);
            }
            return client::act(&conn, "failover", &name, body).await;
        }
        Command::Approve { id, reason, conn } => {
            return client::approve(&conn, &id, &reason).await;
        }
        Command::Failback {
            name,
            reason,
            force,
            conn,
        } => {
            return client::act(
                &conn,
                "failback",
                &name,
                client::body(&reason, None, None, force),
            )
            .await;
        }
        Command::Freeze {
            name,
            reason,
            ttl,
            conn,
        } => {
            return client::act(
                &conn,
                "freeze",
                &name,
                client::body(&reason, ttl.as_deref(), None, false),
            )
            .await;
        }
        Command::Drill {
            command:
                DrillCommand::Run {
                    name,
                    reason,
                    force,
                    wait,
                    conn,
                },
        } => return client::drill_run(&conn, &name, reason.as_deref(), force, wait).await,
        Command::Drill {
            command: DrillCommand::Schema,
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::drill::spec::json_schema())
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Resume { name, reason, conn } => {
            return client::act(
                &conn,
                "resume",
                &name,
                client::body(&reason, None, None, false),
            )
            .await;
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&playbook::json_schema()).unwrap_or_default()
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failoverd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts logging to stderr, and OTLP tracing when `otlp` is given (see [`crate::trace`]).
/// Returns the tracer provider, to be kept for the life of the process (and flushed at exit).
pub fn init_tracing(
    format: LogFormat,
    filter: Option<&str>,
    default: &str,
    otlp: Option<&crate::trace::Resolved>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The log filter applies to the log output only: spans for traces are chosen by name
    // (`failoverd.*`), whatever the log level.
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => {
            // Control characters in fields (a `reason` with a newline) are escaped, so no
            // caller can forge a log line.
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(crate::log_escape::Escaping { ansi })
                .with_filter(filter)
                .boxed()
        }
    };
    let (otel, provider) = match otlp.map(crate::trace::layer) {
        Some(Ok((layer, provider))) => (
            Some(layer.with_filter(tracing_subscriber::filter::filter_fn(crate::trace::is_ours))),
            Some(provider),
        ),
        Some(Err(e)) => {
            eprintln!("failoverd: cannot start the OTLP export thread: {e}; tracing is off");
            (None, None)
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(otel).with(fmt).init();
    provider
}
