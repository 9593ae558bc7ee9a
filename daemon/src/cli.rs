//! The command line: one binary for the daemon, its checks and its demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Mutex;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::api::ApiState;
use crate::audit::{self, AuditLog};
use crate::auth::Tokens;
use crate::client::{self, Conn};
use crate::config::{FileConfig, Settings, StoreSpec};
use crate::engine::Routing;
use crate::overrides::OverrideStore;
use crate::playbook::{self, Problems};
use crate::routing::{self, FileStore};
use crate::runtime::{self, Runtime, Shared};

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
    /// Run the daemon.
    Run(RunArgs),
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
    /// Check the hash chain; exit 0 when whole, 1 naming the first broken record.
    Verify {
        /// The audit log.
        file: PathBuf,
    },
}

/// `run` flags; each may also come from `--config`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// YAML config file with the keys below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Playbook directory (or file).
    #[arg(long)]
    pub playbooks: Option<PathBuf>,
    /// Route store: `file:DIR` or `kubernetes`.
    #[arg(long)]
    pub store: Option<String>,
    /// Kubeconfig for `--store kubernetes` (default: in-cluster, else $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for `--store kubernetes` (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubernetes API requests per second, shared by all playbooks (default 50).
    #[arg(long)]
    pub kube_qps: Option<u32>,
    /// Kubernetes API requests allowed in a burst above --kube-qps (default 100).
    #[arg(long)]
    pub kube_burst: Option<u32>,
    /// HTTP listen address (health, readiness, metrics).
    #[arg(long)]
    pub listen: Option<String>,
    /// Audit log file (JSON Lines, hash-chained).
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// Token file for the override API (YAML: `- { identity, role, sha256 }`).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Override state file (default: `overrides.json` beside the audit log).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Default Prometheus server for SLOs (a playbook SLO may name its own `server`).
    #[arg(long)]
    pub prometheus: Option<String>,
    /// Hold every automatic failover when more than this many playbooks are breaching or
    /// failed over at once (blast radius; 0, the default, turns the rule off).
    #[arg(long)]
    pub max_concurrent_failovers: Option<usize>,
    /// Elect a leader among replicas on a Lease (needs `--store kubernetes`); identity from
    /// `POD_NAME`. Timing from `leaderElection:` in the config file.
    #[arg(long)]
    pub leader_elect: bool,
    /// Most API connections open at once (default 512; lowered to fit the open-file limit
    /// after the probes' share).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Routing writes in flight at once, each to a different VirtualService (default 16,
    /// 1 to 256). Writes to one VirtualService are always one at a time, in order.
    #[arg(long)]
    pub write_concurrency: Option<usize>,
    /// Serve the API over HTTPS with this certificate chain (PEM; re-read when it changes).
    /// Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl RunArgs {
    /// Merges flags over the config file; a problem refuses the start
    /// (`refusing to start: invalid config` and the located problems).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.checked_settings()
            .map_err(|p| anyhow::anyhow!("refusing to start: invalid config\n{p}"))
    }

    /// Merges flags over the config file. Each problem names the key and, when the value
    /// came from the config file, the file, line and column; a value from a flag names the
    /// flag. Notification sinks are checked here too (URLs, durations, templates, secret
    /// files), so a bad sink refuses the start instead of failing at 3 a.m.
    pub fn checked_settings(&self) -> Result<Settings, Problems> {
        let cfg = self.config.as_deref();
        let file = match cfg {
            Some(p) => FileConfig::load(p).map_err(|p| Problems(vec![p]))?,
            None => FileConfig::default(),
        };
        let named = crate::validate::screen_named_files(&file, cfg);
        if !named.is_empty() {
            return Err(Problems(named));
        }
        // A key's problem: located in the config file, or naming the flag it came from.
        let at = |from_flag: bool, key: &str, flag: &str, message: String| {
            if from_flag || cfg.is_none() {
                playbook::Problem {
                    file: flag.into(),
                    line: 0,
                    column: 0,
                    field: key.into(),
                    message,
                }
            } else {
                crate::validate::config_problem(cfg, key, message)
            }
        };
        let mut problems = Vec::new();
        let playbooks = self.playbooks.clone().or(file.playbooks.clone());
        if playbooks.is_none() {
            problems.push(at(
                true,
                "playbooks",
                "--playbooks",
                "no playbooks: pass --playbooks DIR or `playbooks:` in --config (or try `failoverd demo`)".into(),
            ));
        }
        let store = match self.store.clone().or(file.store.clone()) {
            None => {
                problems.push(at(
                    true,
                    "store",
                    "--store",
                    "no store: pass --store file:DIR or --store kubernetes".into(),
                ));
                None
            }
            Some(s) => match s.parse::<StoreSpec>() {
                Ok(store) => Some(store.with_kube(
                    self.kubeconfig.clone().or(file.kubeconfig.clone()),
                    self.context.clone().or(file.kube_context.clone()),
                    self.kube_qps.or(file.kube_qps),
                    self.kube_burst.or(file.kube_burst),
                )),
                Err(e) => {
                    problems.push(at(self.store.is_some(), "store", "--store", e));
                    None
                }
            },
        };
        let listen_text = self
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = match listen_text.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(at(
                    self.listen.is_some(),
                    "listen",
                    "--listen",
                    format!("invalid listen address `{listen_text}`: {e}"),
                ));
                None
            }
        };
        let audit = self.audit.clone().or(file.audit.clone());
        if audit.is_none() {
            problems.push(at(
                true,
                "audit",
                "--audit",
                "no audit log: pass --audit FILE".into(),
            ));
        }
        if let Some(n) = &file.notify
            && let Err(e) = n.resolve()
        {
            problems.push(crate::validate::config_problem(cfg, &e.field, e.message));
        }
        let leader_election = match file
            .leader_election
            .clone()
            .unwrap_or_default()
            .resolve(self.leader_elect)
        {
            Ok(l) => l,
            Err(e) => {
                problems.push(at(false, "leaderElection", "--leader-elect", e));
                None
            }
        };
        if leader_election.is_some() && !matches!(store, Some(StoreSpec::Kubernetes(_)) | None) {
            problems.push(at(
                !file.leader_election.as_ref().is_some_and(|l| l.enabled),
                "leaderElection",
                "--leader-elect",
                "leader election needs `--store kubernetes` (the Lease lives in the cluster)"
                    .into(),
            ));
        }
        let external_url = match &file.external_url {
            Some(u) => match reqwest::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    Some(u.trim_end_matches('/').to_string())
                }
                Ok(_) => {
                    problems.push(at(
                        false,
                        "externalUrl",
                        "--config",
                        format!("invalid URL `{u}`: the scheme must be http or https"),
                    ));
                    None
                }
                Err(e) => {
                    problems.push(at(
                        false,
                        "externalUrl",
                        "--config",
                        format!("invalid URL `{u}`: {e}"),
                    ));
                    None
                }
            },
            None => listen.map(|l| format!("http://{l}")),
        };
        let prometheus_client = match file.prometheus_client.as_ref().map(|c| c.build()) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                problems.push(at(false, "prometheusClient", "--config", e.to_string()));
                None
            }
        };
        let (Some(playbooks), Some(store), Some(listen), Some(audit), Some(external_url)) =
            (playbooks, store, listen, audit, external_url)
        else {
            return Err(Problems(problems));
        };
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let state = self
            .state
            .clone()
            .or(file.state)
            .unwrap_or_else(|| audit.with_file_name("overrides.json"));
        Ok(Settings {
            config: self.config.clone(),
            playbooks: vec![playbooks],
            store,
            listen,
            audit,
            tokens: self.tokens.clone().or(file.tokens),
            state,
            prometheus: self.prometheus.clone().or(file.prometheus),
            prometheus_client,
            notify: file.notify,
            external_url,
            max_concurrent_failovers: self
                .max_concurrent_failovers
                .or(file.max_concurrent_failovers)
                .unwrap_or(0),
            leader_election,
            max_connections: self.max_connections.or(file.max_connections),
            write_concurrency: self.write_concurrency.or(file.write_concurrency),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => file.tls.map(|t| crate::tls::TlsFiles {
                    cert: t.cert_file,
                    key: t.key_file,
                }),
            },
        })
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run(args).await,
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
        } => {
            plan(
                &playbook,
                &store.with_kube(kubeconfig, context, None, None),
                failback,
                target,
            )
            .await
        }
        Command::Demo => crate::demo::run().await,
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => return verify(&file),
        Command::Status { name, conn } => return client::status(&conn, name.as_deref()).await,
        Command::Why { name, conn } => return client::why(&conn, &name).await,
        Command::Failover {
            name,
            reason,
            ttl,
            target,
            force,
            conn,
        } => {
            return client::act(
                &conn,
                "failover",
                &name,
                client::body(&reason, ttl.as_deref(), target.as_deref(), force),
            )
            .await;
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

async fn validate(
    paths: &[PathBuf],
    config: Option<PathBuf>,
    prometheus: Option<&str>,
) -> ExitCode {
    let checked = match config {
        // Exactly what `run --config FILE [--prometheus URL]` checks before it starts.
        Some(config) => RunArgs {
            config: Some(config),
            prometheus: prometheus.map(String::from),
            ..RunArgs::default()
        }
        .checked_settings()
        .and_then(|s| crate::validate::check(&s))
        .map(|set| (set.playbooks, set.drills)),
        None => crate::validate::check_paths(paths),
    };
    let (loaded, drills) = match checked {
        Ok(set) => set,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s)", problems.0.len());
            return ExitCode::FAILURE;
        }
    };
    for l in &loaded {
        println!("{}: ok ({})", l.file.display(), l.playbook.name());
    }
    for d in &drills {
        println!("{}: ok (drill {})", d.file.display(), d.name());
    }
    let has_slos = loaded.iter().any(|l| !l.playbook.spec.slos.is_empty());
    if prometheus.is_some() && has_slos {
        let http = match reqwest::Client::builder().build() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot build an HTTP client: {e}");
                return ExitCode::FAILURE;
            }
        };
        let problems =
            crate::slo::check_live(&loaded, prometheus, &crate::slo::PromClient::new(http)).await;
        for (pb, slo, p) in &problems {
            eprintln!("playbook {pb}: slos {slo}: {p}");
        }
        if !problems.is_empty() {
            eprintln!("{} problem(s) against the live Prometheus", problems.len());
            return ExitCode::FAILURE;
        }
        println!("every SLO query runs on the live Prometheus");
    }
    ExitCode::SUCCESS
}

fn verify(file: &std::path::Path) -> ExitCode {
    match audit::verify(file) {
        Ok(v) => {
            println!("{}: {} records, chain intact", file.display(), v.records);
            if let Some(n) = v.torn_tail {
                println!(
                    "{}: torn last line ({n} bytes): a write cut short by a crash; failoverd removes it (and records that) when it next opens the log",
                    file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn plan(
    path: &std::path::Path,
    store: &StoreSpec,
    failback: bool,
    target: Option<usize>,
) -> anyhow::Result<()> {
    let loaded = playbook::load_file(path).map_err(|p| anyhow::anyhow!("{}", Problems(p)))?;
    let pb = &loaded.playbook;
    let (name, mut vs) = match store {
        StoreSpec::File(dir) => {
            let file = FileStore::new(dir).path(pb);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let name = file.display().to_string();
            let vs: serde_json::Value = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}", playbook::yaml_problem(&name, &e)))?;
            (name, vs)
        }
        StoreSpec::Kubernetes(options) => {
            let store = crate::routing::kube::KubeStore::connect(options.clone()).await?;
            let vs = store.object(pb).await?;
            (format!("kubernetes:{}", pb.spec.virtual_service), vs)
        }
    };
    let text = serde_saphyr::to_string(&vs)?;
    let current = routing::view(&vs, pb)?;
    let to = if failback {
        Routing::Primary
    } else {
        let t = target.unwrap_or(0);
        if pb.destination(playbook::Target::Failover(t)).is_none() {
            anyhow::bail!("failover[{t}] does not exist in {}", path.display());
        }
        Routing::Failover { target: t }
    };
    routing::apply(&mut vs, pb, to, None)?;
    let before = serde_saphyr::to_string(&serde_saphyr::from_str::<serde_json::Value>(&text)?)?;
    let after = serde_saphyr::to_string(&vs)?;
    println!("# playbook {}: {} -> {to}", pb.name(), current.routing);
    if !failback {
        println!(
            "# at run time the first failover target known healthy wins; this plans failover[{}]",
            target.unwrap_or(0)
        );
    }
    if before == after {
        println!("# no change: the store already holds this routing");
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(&before, &after);
    print!(
        "{}",
        diff.unified_diff().context_radius(3).header(&name, &name)
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    // The one gate (the same as reload's and `failoverd validate --config`'s).
    let set = crate::validate::check(&settings)
        .map_err(|p| anyhow::anyhow!("refusing to start: the configuration set is invalid\n{p}"))?;
    let crate::validate::ValidSet {
        playbooks: loaded,
        drills,
        tokens,
        notify,
    } = set;
    // With election, the Lease is held through the same client as the routing writes, the
    // store checks the lease before every write it sends, and operator overrides are kept in
    // the cluster for the next leader.
    let mut leadership = Arc::new(crate::leader::Leadership::always());
    let (store, kube_client): (Arc<dyn crate::routing::RoutingStore>, Option<kube::Client>) =
        match &settings.store {
            StoreSpec::Kubernetes(options) => {
                let mut s = crate::routing::kube::KubeStore::connect(options.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("store kubernetes: {e}"))?;
                if let Some(election) = &settings.leader_election {
                    leadership = Arc::new(crate::leader::Leadership::elected(Some(
                        crate::leader::ClusterState::new(s.client().clone(), election),
                    )));
                    s.set_fence(leadership.clone());
                }
                let client = s.client().clone();
                (Arc::new(s), Some(client))
            }
            other => (other.open().await?, None),
        };
    if settings.tokens.is_none() {
        warn!(
            "no --tokens: the override API refuses every call (health, readiness and metrics stay open); create a token file to enable it"
        );
    }
    let audit = AuditLog::open(&settings.audit)?;
    let overrides = OverrideStore::open(&settings.state)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    info!(
        playbooks = loaded.len(),
        store = %store.describe(),
        listen = %listener.local_addr()?,
        audit = %settings.audit.display(),
        "failoverd starting"
    );
    let (tx, rx) = watch::channel(false);
    let reload_stop = tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown signal received");
        let _ = tx.send(true);
        // A second signal aborts at once (the drain is stuck).
        shutdown_signal().await;
        error!("second signal: exiting without draining");
        std::process::exit(130);
    });
    // Status first (it keeps its own shared copy of each playbook), then the playbooks move
    // into the runtime: at a thousand playbooks every extra copy is megabytes.
    let mut shared = Shared::new(&loaded);
    let n_playbooks = loaded.len();
    let rt = Runtime {
        playbooks: loaded,
        store,
        audit: Arc::new(Mutex::new(audit)),
        overrides,
        prometheus: settings.prometheus.clone(),
        prometheus_client: settings.prometheus_client.clone(),
    };
    // The watcher re-reads the config (and so the files it names) from the same arguments
    // and runs the same gate as above, so a reload never re-executes into a refused start.
    let mut watched = settings.playbooks.clone();
    watched.extend(settings.config.clone());
    let gate_args = args.clone();
    let running = settings.clone();
    crate::reload::spawn_watcher(
        watched,
        Arc::new(move || {
            let new = gate_args.checked_settings()?;
            let restart = crate::validate::check_restart(&running, &new);
            match crate::validate::check(&new) {
                Ok(set) if restart.is_empty() => Ok(set.playbooks.len()),
                Ok(_) => Err(Problems(restart)),
                Err(mut p) => {
                    p.0.extend(restart);
                    Err(p)
                }
            }
        }),
        shared.reload.clone(),
        reload_stop,
    );
    shared.leader = leadership.clone();
    leadership.spawn_mirror(rx.clone());
    {
        // failoverd_leader follows the lease (the fence itself is checked at each write).
        let gauge = shared.metrics.leader.clone();
        let mut changes = leadership.subscribe();
        gauge.set(i64::from(*changes.borrow_and_update()));
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                gauge.set(i64::from(*changes.borrow_and_update()));
            }
        });
    }
    if let (Some(election), Some(client)) = (&settings.leader_election, kube_client) {
        info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.name), "leader election on: standby until the lease is won");
        let election = election.clone();
        let stop = rx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::leader::run(client, election, leadership, stop).await {
                // Lost the lease: stop at once and restart clean; the new leader rebuilds
                // state from the cluster. Never write on a stale belief.
                error!("leadership lost: {e}; exiting so the replica restarts as a standby");
                std::process::exit(3);
            }
        });
    }
    if let Some(n) = settings.write_concurrency {
        shared.write_concurrency = n;
    }
    shared.fleet = std::sync::Mutex::new(crate::engine::fleet::FleetGuard::new(
        n_playbooks,
        settings.max_concurrent_failovers,
    ));
    if let Some(n) = notify {
        shared.notifier = crate::notify::Notifier::start_resolved(
            n,
            &settings.external_url,
            Some(&shared.metrics),
        )
        .map_err(|e| anyhow::anyhow!("refusing to start: invalid config: {e}"))?;
        info!(notifier = ?shared.notifier, "notifications enabled");
    }
    // Drill reports and in-flight records live beside the override state.
    let drill_dir = settings
        .state
        .parent()
        .map_or_else(|| PathBuf::from("drills"), |p| p.join("drills"));
    let result = serve_with_limits(
        rt,
        Arc::new(shared),
        Arc::new(tokens),
        settings.audit.clone(),
        listener,
        rx,
        Some((drills, drill_dir)),
        crate::server::ListenerOptions {
            max_connections: settings.max_connections,
            tls: settings.tls.clone(),
        },
    )
    .await;
    // A valid changed playbook set: drained above, now start over with it (same PID).
    if result.is_ok() && crate::reload::restart_requested() {
        info!("restarting with the new playbook set");
        let e = crate::reload::reexec();
        anyhow::bail!("cannot restart with the new playbook set: {e}");
    }
    result
}

/// Runs the daemon with an HTTP listener until `shutdown` turns true.
pub async fn serve(
    rt: Runtime,
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    audit_path: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_with_drills(rt, shared, tokens, audit_path, listener, shutdown, None).await
}

/// [`serve`] with drills: their definitions and the directory for their reports.
pub async fn serve_with_drills(
    rt: Runtime,
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    audit_path: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    drills: Option<(Vec<crate::drill::LoadedDrill>, PathBuf)>,
) -> anyhow::Result<()> {
    serve_with_limits(
        rt,
        shared,
        tokens,
        audit_path,
        listener,
        shutdown,
        drills,
        crate::server::ListenerOptions::default(),
    )
    .await
}

/// [`serve_with_drills`] with listener options: a cap on API connections (default
/// [`crate::server::DEFAULT_MAX_CONNECTIONS`], lowered to fit the open-file limit) and TLS.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_limits(
    rt: Runtime,
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    audit_path: PathBuf,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    drills: Option<(Vec<crate::drill::LoadedDrill>, PathBuf)>,
    options: crate::server::ListenerOptions,
) -> anyhow::Result<()> {
    // A certificate that does not load refuses the start, naming the file.
    let tls = options
        .tls
        .clone()
        .map(crate::tls::server_config)
        .transpose()
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    // Operator calls are rare and each waits for its answer; a small queue is plenty.
    let (control_tx, control_rx) = mpsc::channel(64);
    let mut api = ApiState::new(
        shared.clone(),
        tokens,
        control_tx,
        rt.store.clone(),
        rt.audit.clone(),
        audit_path,
    );
    if let Some((defs, dir)) = drills {
        // Error budgets are read like SLOs: the `prometheusClient` settings, else a plain
        // client.
        let prometheus = match rt.prometheus_client.clone() {
            Some(c) => c,
            None => crate::slo::PromClient::new(
                reqwest::Client::builder()
                    .build()
                    .map_err(|e| anyhow::anyhow!("cannot build the Prometheus client: {e}"))?,
            ),
        };
        let d = crate::drill::Drills::new(
            defs,
            &dir,
            shared.clone(),
            api.control.clone(),
            rt.store.clone(),
            rt.audit.clone(),
            shutdown.clone(),
            prometheus,
            rt.prometheus.clone(),
        );
        d.start();
        api.drills = Some(d);
    }
    {
        // Aggregate refusal lines for windows that ended when a flood stopped.
        let refusals = api.refusals.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => refusals.flush(),
                    _ = stop.wait_for(|v| *v) => break,
                }
            }
        });
    }
    let app = crate::server::router(shared.clone(), api);
    // Connection cap, header-read timeout, per-connection peer address (server.rs).
    let limits = crate::server::ListenerLimits::for_process(options.max_connections);
    let http = tokio::spawn(crate::server::serve(
        listener,
        app,
        limits,
        tls,
        shutdown.clone(),
    ));
    let result = runtime::run(rt, shared, control_rx, shutdown).await;
    http.await??;
    info!("stopped");
    result
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Starts logging to stderr.
pub fn init_tracing(format: LogFormat, filter: Option<&str>, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            // Control characters in fields (a `reason` with a newline) are escaped, so no
            // caller can forge a log line.
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_ansi(ansi)
                .with_writer(crate::log_escape::Escaping { ansi })
                .init()
        }
    }
}
