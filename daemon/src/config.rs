//! Daemon configuration: `run --config FILE` (YAML) and flags with the same names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::leader::ElectionConfig;
use crate::notify::NotifyConfig;
use crate::playbook::{Problem, yaml_problem};
use crate::routing::kube::{KubeOptions, KubeStore};
use crate::routing::{FileStore, RoutingStore};

/// The config file. Every key can also be given as a flag, which wins.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory (or file) of playbooks.
    pub playbooks: Option<PathBuf>,
    /// `file:DIR` or `kubernetes`.
    pub store: Option<String>,
    /// Kubeconfig for the `kubernetes` store (default: in-cluster config, else
    /// `$KUBECONFIG` / `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for the `kubernetes` store (default: the current context).
    #[serde(rename = "kubeContext")]
    pub kube_context: Option<String>,
    /// Sustained Kubernetes API requests per second, shared by all playbooks (default 50).
    #[serde(rename = "kubeQps")]
    pub kube_qps: Option<u32>,
    /// Kubernetes API requests allowed in a burst above `kubeQps` (default 100).
    #[serde(rename = "kubeBurst")]
    pub kube_burst: Option<u32>,
    /// Address for the HTTP endpoints.
    pub listen: Option<String>,
    /// Audit log path.
    pub audit: Option<PathBuf>,
    /// Token file for the override API (only SHA-256 hashes of tokens).
    pub tokens: Option<PathBuf>,
    /// Where operator overrides persist (default: `overrides.json` beside the audit log).
    pub state: Option<PathBuf>,
    /// Default Prometheus server for SLOs.
    pub prometheus: Option<String>,
    /// Credentials and CAs for Prometheus.
    #[serde(rename = "prometheusClient")]
    pub prometheus_client: Option<crate::slo::ClientConfig>,
    /// Where on-call hears about moves and refusals (Alertmanager, signed webhooks).
    pub notify: Option<NotifyConfig>,
    /// The URL people reach this daemon at (links in notifications); default `http://<listen>`.
    #[serde(rename = "externalUrl")]
    pub external_url: Option<String>,
    /// Fleet blast radius: when more than this many playbooks are breaching or failed over at
    /// once, hold every automatic failover and raise one `blast-radius` event (it looks like
    /// failoverd's own network failing, not that many outages). 0 (the default) turns it off.
    #[serde(rename = "maxConcurrentFailovers")]
    pub max_concurrent_failovers: Option<usize>,
    /// Leader election among replicas (needs `store: kubernetes`): only the Lease holder
    /// writes routing; the others probe, evaluate and serve reads as hot standbys.
    #[serde(rename = "leaderElection")]
    pub leader_election: Option<LeaderElectionConfig>,
    /// Most API connections open at once (default 512; lowered to fit the open-file limit).
    #[serde(rename = "maxConnections")]
    pub max_connections: Option<usize>,
    /// Routing writes in flight at once, each to a different VirtualService (default 16,
    /// 1..=256; see `control::DEFAULT_WRITE_CONCURRENCY`).
    #[serde(rename = "writeConcurrency")]
    pub write_concurrency: Option<usize>,
    /// Serve the API over HTTPS (rustls): `{ certFile, keyFile }`, PEM, re-read on change.
    pub tls: Option<TlsConfig>,
    /// Key file for signed audit checkpoints (a Secret; no key, no checkpoints).
    #[serde(rename = "auditCheckpointKey")]
    pub audit_checkpoint_key: Option<PathBuf>,
    /// A checkpoint after this many records (default 100).
    #[serde(rename = "auditCheckpointEvery")]
    pub audit_checkpoint_every: Option<u64>,
    /// A checkpoint this many minutes after the last one when records were written since
    /// (default 60).
    #[serde(rename = "auditCheckpointMinutes")]
    pub audit_checkpoint_minutes: Option<u64>,
    /// Where every audit record is shipped as one JSON line: `stdout`, `off` (default) or
    /// a file path.
    #[serde(rename = "auditShip")]
    pub audit_ship: Option<String>,
    /// `residency: { allowed: [ID] }`: the jurisdictions every playbook's targets must be in
    /// (a playbook's `spec.residency` may only narrow it). Absent: no residency rule.
    pub residency: Option<ResidencyConfig>,
    /// `policy: { requireStrictMTLS: true }`: the mesh protections a target must keep.
    pub policy: Option<PolicyConfig>,
    /// `auth: { kubernetes: { ... } }`: callers with a cluster identity.
    pub auth: Option<AuthConfig>,
    /// OTLP traces of decisions and moves (off unless an endpoint is set here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub tracing: Option<crate::trace::TracingConfig>,
    /// `console: { enabled: true }`: the on-call web console under `/ui/` (on by default;
    /// `--no-console` turns it off).
    pub console: Option<ConsoleConfig>,
    /// `vantage: { zone, peers, interval, tokenFile, caFile, suspectAfter }`: this replica as
    /// a vantage point and the peers whose verdicts must agree before a failover.
    pub vantage: Option<crate::vantage::VantageConfig>,
}

/// `console:` in the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsoleConfig {
    /// Serve the console (default true); off, `/ui/` answers 404.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// A link to a move's trace in your tracing UI, `{traceId}` replaced by the audit
    /// record's trace id (e.g. `https://jaeger.example/trace/{traceId}`). Absent: the id is
    /// shown as text.
    pub trace_url: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// `auth:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// TokenReview and SubjectAccessReview through the cluster's API server.
    pub kubernetes: Option<KubeAuthFile>,
}

/// `auth.kubernetes:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeAuthFile {
    /// Turn it on (also `--auth-kubernetes`): a bearer token not in the token file is sent to
    /// TokenReview, and each call of such a caller is authorised by SubjectAccessReview.
    #[serde(default)]
    pub enabled: bool,
    /// Namespace of the `playbooks.failoverd.dev` resource the reviews name (default: the
    /// pod's namespace, else `failoverd`).
    pub namespace: Option<String>,
    /// `spec.audiences` of every TokenReview (default: none, the API server's own).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// How long a review's answer is reused (default 10s; at most 10m).
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<crate::playbook::Duration>,
}

/// `residency:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// ISO 3166-1 alpha-2 codes, e.g. `[ID]`.
    pub allowed: Vec<String>,
}

/// `policy:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A target's namespace must be covered by a STRICT PeerAuthentication and no
    /// DestinationRule may disable TLS to it. Default: true when any residency is set.
    #[serde(rename = "requireStrictMTLS")]
    pub require_strict_mtls: Option<bool>,
}

/// Residency and mesh policy, resolved for every playbook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceConfig {
    /// The daemon's allowed jurisdictions (None: no residency rule).
    pub allowed: Option<Vec<String>>,
    /// `policy.requireStrictMTLS` as given (None: not given; it then defaults to on wherever
    /// a residency rule applies, the daemon's or a playbook's own).
    pub require_strict_mtls: Option<bool>,
}

impl FenceConfig {
    /// True when the daemon fences every playbook.
    pub fn is_set(&self) -> bool {
        self.allowed.is_some() || self.require_strict_mtls == Some(true)
    }

    /// Whether strict mTLS is required of `pb`'s targets.
    pub fn strict_mtls_for(&self, pb: &crate::playbook::Playbook) -> bool {
        self.require_strict_mtls
            .unwrap_or(self.allowed.is_some() || pb.spec.residency.is_some())
    }
}

/// `tls:` in the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
    /// CA bundle (PEM) for client certificates: clients may then authenticate with a
    /// certificate signed by one of these CAs (mTLS); others are refused at the handshake.
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

/// `leaderElection:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaderElectionConfig {
    /// Turn election on (also `--leader-elect`).
    #[serde(default)]
    pub enabled: bool,
    /// Namespace of the Lease (default `failoverd`; in a pod, its own namespace).
    pub namespace: Option<String>,
    /// Name of the Lease (default `failoverd-leader`).
    pub name: Option<String>,
    /// Others take over after the holder has not renewed for this long (default 8s).
    pub lease_duration: Option<crate::playbook::Duration>,
    /// The holder stops writing when it has not renewed for this long (default 5s).
    pub renew_deadline: Option<crate::playbook::Duration>,
    /// How often to renew or check (default 1s).
    pub retry_period: Option<crate::playbook::Duration>,
    /// How long sealed segments of the deployment's audit chain stay in the cluster,
    /// counted from their last record (default 90d); every replica's file and the shipped
    /// log keep them after.
    pub audit_retention: Option<crate::playbook::Duration>,
}

impl LeaderElectionConfig {
    /// The election settings, checked; `None` when election is off.
    pub fn resolve(&self, flag: bool) -> Result<Option<ElectionConfig>, String> {
        if !(self.enabled || flag) {
            return Ok(None);
        }
        let d = ElectionConfig::default();
        let namespace = self
            .namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or(d.namespace);
        let c = ElectionConfig {
            namespace,
            name: self.name.clone().unwrap_or(d.name),
            identity: d.identity,
            lease_duration: self.lease_duration.map_or(d.lease_duration, |x| x.get()),
            renew_deadline: self.renew_deadline.map_or(d.renew_deadline, |x| x.get()),
            retry_period: self.retry_period.map_or(d.retry_period, |x| x.get()),
            audit_retention: self.audit_retention.map_or(d.audit_retention, |x| x.get()),
        };
        c.validate()?;
        Ok(Some(c))
    }
}

impl FileConfig {
    /// Reads a config file; errors are located like playbook errors.
    pub fn load(path: &Path) -> Result<Self, Problem> {
        let file = path.display().to_string();
        let text = crate::screen::read_text(path)?;
        serde_saphyr::from_str(&text).map_err(|e| yaml_problem(&file, &e))
    }
}

/// What `main` read before logging started, until the start's checks take it.
static KEPT: std::sync::Mutex<Option<Preloaded>> = std::sync::Mutex::new(None);

/// The config file of a start, read once before logging starts (the OTLP exporter is a layer
/// of the log subscriber, so tracing must be known then), and the tracing settings resolved
/// from it and the environment once; the start's checks use the same reading.
#[derive(Clone, Debug)]
pub struct Preloaded {
    /// The file as read (the default without `--config`).
    pub file: Result<FileConfig, Problem>,
    /// Tracing from `file` and the `OTEL_*` variables (`Ok(None)`: off, or the file is bad).
    pub tracing: Result<Option<crate::trace::Resolved>, crate::trace::ConfigError>,
}

impl Preloaded {
    /// Reads `path` (if any) and resolves tracing from it and the process environment.
    pub fn read(path: Option<&Path>) -> Self {
        let file = path.map_or_else(|| Ok(FileConfig::default()), FileConfig::load);
        let tracing = match &file {
            Ok(f) => f
                .tracing
                .clone()
                .unwrap_or_default()
                .resolve(|k| std::env::var(k).ok()),
            Err(_) => Ok(None),
        };
        Self { file, tracing }
    }

    /// Keeps this reading for the start's checks ([`Preloaded::take_or_read`]).
    pub fn keep(self) {
        if let Ok(mut kept) = KEPT.lock() {
            *kept = Some(self);
        }
    }

    /// The reading `main` kept, once (the start's checks); after that, or without one, a
    /// fresh reading of `path` (a reload, `validate`).
    pub fn take_or_read(path: Option<&Path>) -> Self {
        KEPT.lock()
            .ok()
            .and_then(|mut k| k.take())
            .unwrap_or_else(|| Self::read(path))
    }
}

/// Where routes are stored.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreSpec {
    /// VirtualService manifests under a directory.
    File(PathBuf),
    /// VirtualServices in a Kubernetes cluster, through its API server.
    Kubernetes(KubeOptions),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("file:") {
            if dir.is_empty() {
                return Err(
                    "store `file:` needs a directory, e.g. `file:/var/lib/failoverd/routes`".into(),
                );
            }
            return Ok(StoreSpec::File(PathBuf::from(dir)));
        }
        if s == "kubernetes" {
            return Ok(StoreSpec::Kubernetes(KubeOptions::default()));
        }
        Err(format!(
            "invalid store `{s}`: expected `file:DIR` or `kubernetes`"
        ))
    }
}

impl StoreSpec {
    /// Opens the store (for `kubernetes`: loads the kubeconfig or in-cluster config).
    pub async fn open(&self) -> anyhow::Result<Arc<dyn RoutingStore>> {
        match self {
            StoreSpec::File(dir) => {
                if !dir.is_dir() {
                    anyhow::bail!("store directory {} does not exist", dir.display());
                }
                Ok(Arc::new(FileStore::new(dir)))
            }
            StoreSpec::Kubernetes(options) => Ok(Arc::new(
                KubeStore::connect(options.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("store kubernetes: {e}"))?,
            )),
        }
    }

    /// Applies the `kubernetes` store's connection settings (no-op for `file:`).
    pub fn with_kube(
        mut self,
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        qps: Option<u32>,
        burst: Option<u32>,
    ) -> Self {
        if let StoreSpec::Kubernetes(o) = &mut self {
            o.kubeconfig = kubeconfig.or(o.kubeconfig.take());
            o.context = context.or(o.context.take());
            o.qps = qps.unwrap_or(o.qps);
            o.burst = burst.unwrap_or(o.burst);
        }
        self
    }
}

/// Fully resolved settings for `run`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The config file they were read from (None: flags only); problems with its keys are
    /// located in it.
    pub config: Option<PathBuf>,
    /// Playbook paths.
    pub playbooks: Vec<PathBuf>,
    /// Route store.
    pub store: StoreSpec,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Audit log path.
    pub audit: PathBuf,
    /// Token file (None: the API refuses every call but health, readiness and metrics).
    pub tokens: Option<PathBuf>,
    /// Override state file.
    pub state: PathBuf,
    /// Default Prometheus server for SLOs.
    pub prometheus: Option<String>,
    /// The Prometheus client built from `prometheusClient` (None: a plain client).
    pub prometheus_client: Option<crate::slo::PromClient>,
    /// Notification sinks (checked at load: URLs, durations, templates, secret files).
    pub notify: Option<NotifyConfig>,
    /// Base of the links in notifications (`<externalUrl>/v1/playbooks/<name>`).
    pub external_url: String,
    /// `maxConcurrentFailovers` (0: the blast-radius rule is off).
    pub max_concurrent_failovers: usize,
    /// Leader election (None: this replica is the only writer).
    pub leader_election: Option<ElectionConfig>,
    /// `maxConnections` (None: the default, 512, lowered to fit the open-file limit).
    pub max_connections: Option<usize>,
    /// `writeConcurrency` / `--write-concurrency` (None: the default, 16); bounds checked by
    /// the validation gate.
    pub write_concurrency: Option<usize>,
    /// `tls:` / `--tls-cert` + `--tls-key` (None: plain HTTP).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Signed checkpoints and shipping of the audit trail.
    pub audit_trail: AuditTrail,
    /// `residency:` and `policy:`.
    pub fence: FenceConfig,
    /// `auth.kubernetes` (None: token-file callers only).
    pub kube_auth: Option<crate::api::kube_auth::KubeAuthConfig>,
    /// `tls.clientCAFile` / `--tls-client-ca` (None: no client certificates).
    pub tls_client_ca: Option<PathBuf>,
    /// `console:` / `--no-console`.
    pub console: crate::console::ConsoleOptions,
    /// `vantage:`, resolved (identity, peers, exchange interval).
    pub vantage: crate::vantage::VantageSettings,
}

/// `auditCheckpoint*` and `auditShip`, resolved.
#[derive(Clone, Debug, Default)]
pub struct AuditTrail {
    /// The checkpoint key file (None: no checkpoints are made).
    pub checkpoint_key: Option<PathBuf>,
    /// When checkpoints are due.
    pub policy: failoverd_core::audit::checkpoint::Policy,
    /// Where records are shipped.
    pub ship: crate::audit::ShipTarget,
}
