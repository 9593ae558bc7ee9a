//! `failoverd run`: the flags (merged over the config file and checked), then the start
//! of the daemon from them: store, audit, leadership, reload watcher and notifier, handed
//! to [`crate::app::serve`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::app::{ServeOptions, serve};
use crate::audit::AuditLog;
use crate::config::{AuditTrail, FenceConfig, FileConfig, Settings, StoreSpec};
use crate::control::Runtime;
use crate::overrides::OverrideStore;
use crate::playbook::{self, Problems};
use crate::shared::Shared;

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
    /// Sign audit checkpoints with this key file (a Secret; at least 16 bytes, used byte for
    /// byte). Without a key no checkpoint is made.
    #[arg(long)]
    pub audit_checkpoint_key: Option<PathBuf>,
    /// A signed checkpoint after every N audit records (default 100).
    #[arg(long)]
    pub audit_checkpoint_every: Option<u64>,
    /// A signed checkpoint M minutes after the last one when records were written since
    /// (default 60).
    #[arg(long)]
    pub audit_checkpoint_minutes: Option<u64>,
    /// Ship every audit record, once durable, as one JSON line (`"log.kind":"audit"`, its
    /// `hash`): `stdout`, `off` (default) or a file path (appended to).
    #[arg(long)]
    pub audit_ship: Option<String>,
    /// Allowed jurisdictions of every failover target (ISO 3166-1 alpha-2, comma-separated,
    /// e.g. `ID`); overrides `residency.allowed`.
    #[arg(long, value_delimiter = ',')]
    pub residency_allowed: Option<Vec<String>>,
    /// Require STRICT mTLS and no TLS-disabling DestinationRule for every target (default:
    /// on when any residency is set); overrides `policy.requireStrictMTLS`.
    #[arg(long)]
    pub require_strict_mtls: Option<bool>,
    /// Cluster identities and client certificates.
    #[command(flatten)]
    pub auth: super::auth_flags::AuthArgs,
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
        let pre = crate::config::Preloaded::take_or_read(cfg);
        let file = pre.file.clone().map_err(|p| Problems(vec![p]))?;
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
        problems.extend(crate::validate::tracing_problem(&pre, cfg));
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
        let vantage = crate::validate::vantage(&file, leader_election.as_ref(), cfg, &mut problems);
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
        let audit_trail = self.audit_trail(&file, &at, &mut problems);
        let fence = self.fence(&file, &at, &mut problems);
        let kubeconfig = self.kubeconfig.clone().or(file.kubeconfig.clone());
        let context = self.context.clone().or(file.kube_context.clone());
        let kube_auth = self
            .auth
            .kube_auth(&file, kubeconfig, context, &at, &mut problems);
        let tls_client_ca = self.auth.client_ca(&file);
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
            console: self.auth.console(file.console.as_ref()),
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
            audit_trail,
            fence,
            kube_auth,
            tls_client_ca,
            vantage,
        })
    }

    /// `residency:` and `policy:` (or their flags): codes checked, the mTLS default applied.
    fn fence(
        &self,
        file: &FileConfig,
        at: &dyn Fn(bool, &str, &str, String) -> playbook::Problem,
        problems: &mut Vec<playbook::Problem>,
    ) -> FenceConfig {
        let from_flag = self.residency_allowed.is_some();
        let allowed = self
            .residency_allowed
            .clone()
            .or_else(|| file.residency.as_ref().map(|r| r.allowed.clone()));
        if let Some(codes) = &allowed {
            if codes.is_empty() {
                problems.push(at(
                    from_flag,
                    "residency.allowed",
                    "--residency-allowed",
                    "must name at least one jurisdiction (an empty set would allow no target at all)".into(),
                ));
            }
            for c in codes.iter().filter(|c| !playbook::is_country_code(c)) {
                problems.push(at(
                    from_flag,
                    "residency.allowed",
                    "--residency-allowed",
                    format!(
                        "`{c}` is not an ISO 3166-1 alpha-2 code (two upper-case letters, e.g. ID)"
                    ),
                ));
            }
        }
        let require_strict_mtls = self
            .require_strict_mtls
            .or(file.policy.as_ref().and_then(|p| p.require_strict_mtls));
        FenceConfig {
            allowed,
            require_strict_mtls,
        }
    }

    /// `auditCheckpoint*` and `auditShip` over the config file; the key file is read and
    /// checked now, so a missing or short key refuses the start.
    fn audit_trail(
        &self,
        file: &FileConfig,
        at: &dyn Fn(bool, &str, &str, String) -> playbook::Problem,
        problems: &mut Vec<playbook::Problem>,
    ) -> AuditTrail {
        use failoverd_core::audit::checkpoint;
        let mut trail = AuditTrail::default();
        for (flag, from_flag, key, value, into) in [
            (
                "--audit-checkpoint-every",
                self.audit_checkpoint_every.is_some(),
                "auditCheckpointEvery",
                self.audit_checkpoint_every.or(file.audit_checkpoint_every),
                &mut trail.policy.every,
            ),
            (
                "--audit-checkpoint-minutes",
                self.audit_checkpoint_minutes.is_some(),
                "auditCheckpointMinutes",
                self.audit_checkpoint_minutes
                    .or(file.audit_checkpoint_minutes),
                &mut trail.policy.minutes,
            ),
        ] {
            match value {
                Some(0) => problems.push(at(from_flag, key, flag, "must be at least 1".into())),
                Some(n) if key == "auditCheckpointMinutes" && n > checkpoint::MAX_MINUTES => {
                    problems.push(at(
                        from_flag,
                        key,
                        flag,
                        format!("at most {} (a year)", checkpoint::MAX_MINUTES),
                    ))
                }
                Some(n) => *into = n,
                None => {}
            }
        }
        let from_flag = self.audit_checkpoint_key.is_some();
        trail.checkpoint_key = self
            .audit_checkpoint_key
            .clone()
            .or(file.audit_checkpoint_key.clone());
        if let Some(k) = &trail.checkpoint_key
            && let Err(e) = crate::audit::read_key(k)
        {
            problems.push(at(
                from_flag,
                "auditCheckpointKey",
                "--audit-checkpoint-key",
                e,
            ));
        }
        let from_flag = self.audit_ship.is_some();
        if let Some(s) = self.audit_ship.clone().or(file.audit_ship.clone()) {
            match s.parse::<crate::audit::ShipTarget>() {
                Ok(crate::audit::ShipTarget::File(p))
                    if p.parent()
                        .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir()) =>
                {
                    problems.push(at(
                        from_flag,
                        "auditShip",
                        "--audit-ship",
                        format!("{}: its directory does not exist", p.display()),
                    ));
                }
                Ok(t) => trail.ship = t,
                Err(e) => problems.push(at(from_flag, "auditShip", "--audit-ship", e)),
            }
        }
        trail
    }
}

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
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
    let mut kept_overrides = None;
    let mut chain = None;
    let (store, kube_client): (Arc<dyn crate::routing::RoutingStore>, Option<kube::Client>) =
        match &settings.store {
            StoreSpec::Kubernetes(options) => {
                let mut s = crate::routing::kube::KubeStore::connect(options.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("store kubernetes: {e}"))?;
                if let Some(election) = &settings.leader_election {
                    leadership = Arc::new(crate::leader::Leadership::elected());
                    kept_overrides = Some(crate::overrides::kept::ClusterState::new(
                        s.client().clone(),
                        &election.namespace,
                        &election.name,
                    ));
                    s.set_fence(leadership.clone());
                    // One audit chain for the deployment, held beside the lease.
                    chain = Some(Arc::new(crate::trail::ClusterChain::new(
                        s.client().clone(),
                        &election.namespace,
                        &election.name,
                        &election.identity,
                        leadership.clone(),
                        jiff::SignedDuration::try_from(election.audit_retention)
                            .unwrap_or(crate::trail::DEFAULT_RETENTION),
                    )));
                }
                let client = s.client().clone();
                (Arc::new(s), Some(client))
            }
            other => (other.open().await?, None),
        };
    let fenced = loaded.iter().filter(|l| l.playbook.fenced).count();
    match (&settings.fence.allowed, fenced) {
        (None, 0) => warn!(
            "NO RESIDENCY OR MESH POLICY: failover may route case data to any target, in any jurisdiction, with or without mTLS; set `residency: {{ allowed: [ID] }}` (and `policy:`) in the config to fence every move"
        ),
        (allowed, n) => info!(
            allowed = ?allowed,
            require_strict_mtls = settings.fence.require_strict_mtls,
            fenced_playbooks = n,
            "residency and mesh policy fence every move: a target the cluster does not clear is never routed to, not even by force"
        ),
    }
    for w in crate::validate::unreachable_targets(&settings, &loaded) {
        warn!("{w}");
    }
    let kube_auth = match &settings.kube_auth {
        Some(c) => Some(super::auth_flags::connect(c, kube_client.clone()).await?),
        None => None,
    };
    if settings.tokens.is_none() && kube_auth.is_none() {
        warn!(
            "no --tokens: the override API refuses every call (health, readiness and metrics stay open); create a token file to enable it"
        );
    }
    let mut audit = if chain.is_some() {
        AuditLog::open_copy(&settings.audit)?
    } else {
        AuditLog::open(&settings.audit)?
    };
    if let Some(chain) = &chain {
        audit = super::run_audit::join_chain(chain, audit).await?;
        audit.attach_chain(chain.clone());
    }
    if let Some(k) = &settings.audit_trail.checkpoint_key {
        let key =
            crate::audit::read_key(k).map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        info!(
            key_id = key.id(),
            every = settings.audit_trail.policy.every,
            minutes = settings.audit_trail.policy.minutes,
            "signed audit checkpoints on"
        );
        audit.set_checkpoints(key, settings.audit_trail.policy);
    }
    audit.set_ship_target(settings.audit_trail.ship.clone());
    if chain.is_some() {
        // A standby neither ships nor makes checkpoints; the leader does, from its takeover.
        audit.set_leading(false);
    }
    // A crash (kill -9) can take lines still queued for the target with it; with checkpoints
    // on, the records since the last one (a bounded tail) go again at start, so the shipped
    // stream holds every record at least once (a repeat has the same hash). With election,
    // the leader does this when it takes over.
    // Only from a checkpoint: a log that never had one (the key just turned on) is not
    // shipped whole again.
    if settings.leader_election.is_none()
        && settings.audit_trail.checkpoint_key.is_some()
        && audit.had_checkpoint_at_open()
    {
        match audit.reship_since_last_checkpoint() {
            Ok(0) => {}
            Ok(n) => info!(
                records = n,
                "audit records from the last checkpoint on shipped again"
            ),
            Err(e) => {
                warn!(error = %e, "cannot ship the audit records since the last checkpoint again")
            }
        }
    }
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
    // The residency and mesh-policy facts, read from where the routes live, only when some
    // playbook is fenced.
    let mesh = (fenced > 0).then(|| match (&settings.store, &kube_client) {
        (StoreSpec::Kubernetes(_), Some(client)) => {
            crate::mesh::MeshView::kubernetes(client.clone())
        }
        (StoreSpec::File(dir), _) => crate::mesh::MeshView::file(dir),
        // Unreachable (the kubernetes store always has a client); refuse every target.
        (StoreSpec::Kubernetes(_), None) => {
            crate::mesh::MeshView::fixed(crate::mesh::ClusterView::default())
        }
    });
    let rt = Runtime {
        playbooks: loaded,
        store,
        audit: Arc::new(Mutex::new(audit)),
        overrides,
        prometheus: settings.prometheus.clone(),
        prometheus_client: settings.prometheus_client.clone(),
        fence: settings.fence.clone(),
        mesh,
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
    if let Some(chain) = chain {
        chain.spawn_replicator(
            rt.audit.clone(),
            shared.metrics.audit_replica_lag.clone(),
            rx.clone(),
        );
        super::run_audit::lead_the_audit(rt.audit.clone(), leadership.subscribe());
    }
    shared.kept_overrides = kept_overrides;
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
    shared.vantage = crate::vantage::start(&settings.vantage, &shared.metrics.vantage, rx.clone())
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
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
    let result = serve(
        rt,
        Arc::new(shared),
        Arc::new(tokens),
        settings.audit.clone(),
        listener,
        rx,
        ServeOptions {
            drills: Some((drills, drill_dir)),
            listener: crate::server::ListenerOptions {
                max_connections: settings.max_connections,
                tls: settings.tls.clone(),
                client_ca: settings.tls_client_ca.clone(),
            },
            kube_auth,
            console: settings.console.clone(),
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
