//! Playbooks: the declarative description of how one service fails over and back.
//!
//! Parsing ([`parse`]) and checking ([`Playbook::validate_with`]) are separate steps: serde
//! refuses what does not fit the types (unknown fields, bad durations, YAML syntax),
//! `validate_with` refuses what fits the types but makes no sense (a probe pointing at a
//! target that does not exist, a timeout longer than its interval). Both report
//! [`Problem`]s that name file, line, column and field. Reading files (and the probe
//! library's option checks, which read CA files) is the daemon's: `failoverd::playbook`.

mod duration;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use duration::Duration;

/// The `apiVersion` every playbook carries.
pub const API_VERSION: &str = "failoverd.dev/v1alpha1";

/// One problem found in a playbook file, located as precisely as the parser allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Dotted path of the field, e.g. `spec.probes[1].target` (empty when not about one field).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A list of problems, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A playbook file: how one guarded service fails over and back.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Playbook {
    /// Must be `failoverd.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `Playbook`.
    pub kind: String,
    /// Identity of the playbook.
    pub metadata: Metadata,
    /// What to watch and where to move traffic.
    pub spec: PlaybookSpec,
}

/// Identity of a playbook.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name across all loaded playbooks (a DNS-1123 label); used in the API and audit.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free-form labels, e.g. `team: intake`; copied into status output.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The body of a playbook.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlaybookSpec {
    /// The VirtualService failoverd rewrites.
    pub virtual_service: ObjectRef,
    /// `http[].name` of the route to rewrite; when absent, the first http route.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub route: Option<Spanned<String>>,
    /// Where traffic goes when all is well (used when no original route was recorded).
    pub primary: Destination,
    /// Failover targets in order of preference: the first *healthy* one wins.
    #[schemars(with = "Vec<Destination>")]
    pub failover: Spanned<Vec<Destination>>,
    /// Active health probes; each watches one target.
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
    /// SLO signals read from Prometheus; each watches one target.
    #[serde(default)]
    pub slos: Vec<SloSpec>,
    /// When failing signals count as a failure.
    #[serde(default)]
    pub trigger: Trigger,
    /// How and when traffic returns to the primary.
    #[serde(default)]
    pub failback: Failback,
    /// No second move within this time of the last one, unless an operator overrides.
    /// Keeps a flapping primary from flapping the routes. At most 7d.
    #[serde(default = "default_min_dwell", deserialize_with = "duration::wait")]
    pub min_dwell: Duration,
    /// What a signal without data (probe could not run, Prometheus down) means.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// What failoverd does when the route it wrote is changed by someone else while it is
    /// failed over (a person with kubectl, a GitOps sync putting the original back).
    #[serde(default)]
    pub on_drift: OnDrift,
}

fn default_min_dwell() -> Duration {
    Duration::from_secs(120)
}

/// A namespaced Kubernetes object.
#[derive(
    Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An Istio route destination.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Service host, e.g. `case-management.child-welfare-dr.svc.cluster.local`.
    #[schemars(with = "String")]
    pub host: Spanned<String>,
    /// DestinationRule subset (a DNS-1123 label), if any.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subset: Option<Spanned<String>>,
    /// Port number on the host, if the service exposes more than one.
    #[serde(default)]
    pub port: Option<u32>,
}

impl Destination {
    /// The destination as an Istio `destination` object (host, subset, port).
    pub fn to_istio(&self) -> serde_json::Value {
        let mut d = serde_json::Map::new();
        d.insert("host".into(), self.host.value.clone().into());
        if let Some(s) = &self.subset {
            d.insert("subset".into(), s.value.clone().into());
        }
        if let Some(p) = self.port {
            d.insert("port".into(), serde_json::json!({ "number": p }));
        }
        serde_json::Value::Object(d)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host.value)?;
        if let Some(s) = &self.subset {
            write!(f, " (subset {})", s.value)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Which destination a signal watches: `primary` or `failover[N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The primary destination.
    Primary,
    /// The N-th failover target (0-based).
    Failover(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Primary => f.write_str("primary"),
            Target::Failover(i) => write!(f, "failover[{i}]"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid target `{s}`: expected `primary` or `failover[N]`");
        if s == "primary" {
            return Ok(Target::Primary);
        }
        let idx = s
            .strip_prefix("failover[")
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(bad)?;
        idx.parse::<usize>()
            .map(Target::Failover)
            .map_err(|_| bad())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Target {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Target".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`primary` or `failover[N]` (0-based index into spec.failover).",
            "pattern": "^(primary|failover\\[[0-9]+\\])$"
        })
    }
}

/// An active health probe.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Unique name within the playbook; appears in status and audit records.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The destination this probe speaks for.
    #[schemars(with = "Target")]
    pub target: Spanned<Target>,
    /// HTTP GET check (exactly one of `http`, `tcp`, `grpc`).
    #[serde(default)]
    pub http: Option<HttpCheck>,
    /// TCP connect check (exactly one of `http`, `tcp`, `grpc`).
    #[serde(default)]
    pub tcp: Option<TcpCheck>,
    /// gRPC health check, `grpc.health.v1.Health/Check` (exactly one of `http`, `tcp`, `grpc`).
    #[serde(default)]
    pub grpc: Option<GrpcCheck>,
    /// Time between attempts. Detection takes about `interval × trigger.failureThreshold`.
    /// At most 1h.
    #[serde(default = "default_interval", deserialize_with = "duration::interval")]
    pub interval: Duration,
    /// Time allowed for one attempt; must be shorter than `interval`. At most 5m.
    #[serde(default = "default_timeout")]
    #[schemars(with = "Duration")]
    pub timeout: Spanned<Duration>,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_timeout() -> Spanned<Duration> {
    Spanned::new(
        Duration::from_millis(500),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// HTTP(S) probe.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCheck {
    /// `http://` or `https://` URL to request.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Request method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Status codes that count as healthy (default `[200]`).
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<u16>,
    /// Healthy only if the body (first 64 KiB) contains this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Healthy only if the body (first 64 KiB) matches this regular expression (Rust `regex` syntax).
    #[serde(default)]
    pub body_matches: Option<String>,
    /// Follow up to 5 redirects (default false: a 3xx is judged against `expectStatus`).
    #[serde(default)]
    pub follow_redirects: bool,
    /// PEM file of CA certificates; when set, only these CAs are trusted (https only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS server name (SNI and certificate name) to use instead of the URL's host (https only).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any server certificate. Must be written out explicitly; default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Time allowed to connect (TCP + TLS); at most `timeout`. Default: only `timeout` applies.
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
    /// Open a new connection for every attempt (default true); false reuses a pooled one.
    #[serde(default = "default_true")]
    pub fresh_connection: bool,
    /// Speak HTTP/2: prior knowledge (h2c) for http://, ALPN h2 for https:// (default false: HTTP/1.1).
    #[serde(default)]
    pub http2: bool,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_expect_status() -> Vec<u16> {
    vec![200]
}

/// TCP connect probe.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// `host:port` to connect to.
    #[schemars(with = "String")]
    pub address: Spanned<String>,
    /// Text written right after connecting.
    #[serde(default)]
    pub send: Option<String>,
    /// Text that must appear in what the peer sends back (first 64 KiB).
    #[serde(default)]
    pub expect: Option<String>,
}

/// gRPC health probe: healthy only while `grpc.health.v1.Health/Check` answers `SERVING`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcCheck {
    /// `host:port` to connect to (IPv6 literals in brackets).
    #[schemars(with = "String")]
    pub address: Spanned<String>,
    /// Service name asked about, e.g. `case-management`; empty (the default) asks about the
    /// server as a whole. An unknown service is unhealthy (`SERVICE_UNKNOWN`).
    #[serde(default)]
    pub service: String,
    /// `:authority` to send instead of `address` (e.g. the host name a mesh routes on).
    #[serde(default)]
    pub authority: Option<String>,
    /// Connect with TLS (default false: plaintext HTTP/2).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of CA certificates; when set, only these CAs are trusted (`tls` only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS server name (SNI and certificate name) instead of the address's host (`tls` only).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any server certificate (`tls` only). Must be written out explicitly; default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Time allowed to connect (TCP + TLS); at most `timeout`. Default: only `timeout` applies.
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
}

/// An SLO signal evaluated from Prometheus.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SloSpec {
    /// Unique name within the playbook (shared namespace with probe names).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The destination this SLO speaks for.
    #[schemars(with = "Target")]
    pub target: Spanned<Target>,
    /// A PromQL threshold (exactly one of `prometheus`, `ratio`, `scrape`).
    #[serde(default)]
    pub prometheus: Option<PromThreshold>,
    /// A ratio SLO judged by multiwindow burn rates (exactly one of `prometheus`, `ratio`,
    /// `scrape`).
    #[serde(default)]
    pub ratio: Option<RatioSlo>,
    /// An error ratio read straight from a `/metrics` page, without Prometheus (exactly one
    /// of `prometheus`, `ratio`, `scrape`). The page is scraped every `evaluationInterval`,
    /// each scrape bounded by `timeout`.
    #[serde(default)]
    pub scrape: Option<ScrapeSlo>,
    /// Prometheus base URL for this SLO (default: the daemon's `--prometheus`; not used by
    /// `scrape`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub server: Option<Spanned<String>>,
    /// Time between evaluations. At most 1h.
    #[serde(
        default = "default_evaluation_interval",
        deserialize_with = "duration::interval"
    )]
    pub evaluation_interval: Duration,
    /// Time allowed for each query (retried once if time remains); shorter than
    /// `evaluationInterval`. At most 5m.
    #[serde(
        default = "default_query_timeout",
        deserialize_with = "duration::timeout"
    )]
    pub timeout: Duration,
}

fn default_evaluation_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_query_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A PromQL expression compared with a threshold (exactly one of `above`, `below`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromThreshold {
    /// Instant-query PromQL expression returning one value.
    #[schemars(with = "String")]
    pub query: Spanned<String>,
    /// Unhealthy while the value is above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Unhealthy while the value is below this.
    #[serde(default)]
    pub below: Option<f64>,
}

/// The placeholder in `errors` and `total` that each burn-rate window replaces (`5m`, `1h`).
pub const WINDOW_PLACEHOLDER: &str = "{{window}}";

/// A ratio SLO (Google SRE workbook, multiwindow multi-burn-rate): unhealthy while, for any
/// pair, both the long and the short window burn the error budget faster than `factor`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RatioSlo {
    /// Objective in percent, e.g. `99.9` (error budget 0.1 %).
    pub objective: f64,
    /// PromQL for the rate of failed requests over `{{window}}`.
    #[schemars(with = "String")]
    pub errors: Spanned<String>,
    /// PromQL for the rate of all requests over `{{window}}`.
    #[schemars(with = "String")]
    pub total: Spanned<String>,
    /// Window pairs and factors; default the workbook's paging pairs (1h/5m × 14.4,
    /// 6h/30m × 6).
    #[serde(default = "default_burn_rates")]
    pub burn_rates: Vec<BurnRate>,
}

/// An error ratio from direct scrapes of a metrics page (an Envoy sidecar's
/// `/stats/prometheus`, an application's `/metrics`): counter increases between scrapes,
/// summed over a sliding `window`. Unknown, never healthy, when the page cannot be read, a
/// counted series vanished, nothing matches, the window saw no requests or holds fewer
/// than two scrape intervals.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrapeSlo {
    /// `http://` or `https://` URL of the page, in the Prometheus text or OpenMetrics format.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Counter sample name, as exposed, e.g. `istio_requests_total`.
    #[schemars(with = "String")]
    pub metric: Spanned<String>,
    /// Label matchers picking the series that count as requests (all must hold). A value
    /// matches exactly; `=~regex` is an anchored regular expression; `!=value` and `!~regex`
    /// negate. An absent label reads as empty, as in PromQL.
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// Further matchers (same syntax) picking the failed requests among those, e.g.
    /// `response_code: "=~5.."`. Must not be empty.
    #[serde(default)]
    pub error_when: BTreeMap<String, String>,
    /// Sliding window the ratio is computed over; at least 2 × `evaluationInterval`, at
    /// most 1d and at most 10,000 × `evaluationInterval`.
    #[serde(deserialize_with = "duration::scrape_window")]
    pub window: Duration,
    /// Unhealthy while failed / all requests over the window is above this ratio (0 ≤ above < 1).
    pub above: f64,
}

/// One multiwindow burn-rate rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BurnRate {
    /// The long window (e.g. `1h`): makes the rule significant. At most 30d.
    #[serde(deserialize_with = "duration::burn_window")]
    pub long: Duration,
    /// The short window (e.g. `5m`): makes it reset quickly once the errors stop. At most
    /// 30d.
    #[serde(deserialize_with = "duration::burn_window")]
    pub short: Duration,
    /// Burn-rate factor: budget spent this many times faster than sustainable.
    pub factor: f64,
}

fn default_burn_rates() -> Vec<BurnRate> {
    vec![
        BurnRate {
            long: Duration::from_secs(3600),
            short: Duration::from_secs(300),
            factor: 14.4,
        },
        BurnRate {
            long: Duration::from_secs(6 * 3600),
            short: Duration::from_secs(1800),
            factor: 6.0,
        },
    ]
}

/// When failing signals count as a failure of their target.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Trigger {
    /// Consecutive unhealthy probe results before a target counts as unhealthy (≥ 1).
    #[serde(default = "default_failure_threshold")]
    #[schemars(with = "u32")]
    pub failure_threshold: Spanned<u32>,
    /// A failure (probe past the threshold, SLO breach) must also last this long. At most 7d.
    #[serde(default, rename = "for", deserialize_with = "duration::wait")]
    pub for_: Duration,
    /// An SLO breach alone does not fail a target over: a probe on it must be failing too,
    /// so a monitoring fault cannot move traffic.
    #[serde(default)]
    pub require_probe_corroboration: bool,
}

fn default_failure_threshold() -> Spanned<u32> {
    Spanned::new(
        3,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

impl Default for Trigger {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            for_: Duration::default(),
            require_probe_corroboration: false,
        }
    }
}

/// How traffic returns to the primary.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failback {
    /// `automatic`: fail back on its own once the primary is stable; `manual`: wait for an operator.
    #[serde(default)]
    pub mode: FailbackMode,
    /// The primary must be healthy this long before failback starts. At most 7d.
    #[serde(
        default = "default_failback_after",
        deserialize_with = "duration::wait"
    )]
    pub after: Duration,
    /// Percent of traffic on the primary at each step; strictly increasing, ending at 100.
    /// A primary that fails during the ramp gets all traffic taken away again at once.
    #[serde(default = "default_steps")]
    #[schemars(with = "Vec<u8>")]
    pub steps: Spanned<Vec<u8>>,
    /// Time between steps. At most 7d.
    #[serde(default = "default_step_interval", deserialize_with = "duration::wait")]
    pub step_interval: Duration,
}

fn default_failback_after() -> Duration {
    Duration::from_secs(300)
}

fn default_steps() -> Spanned<Vec<u8>> {
    Spanned::new(
        vec![100],
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

fn default_step_interval() -> Duration {
    Duration::from_secs(30)
}

impl Default for Failback {
    fn default() -> Self {
        Self {
            mode: FailbackMode::default(),
            after: default_failback_after(),
            steps: default_steps(),
            step_interval: default_step_interval(),
        }
    }
}

/// Failback mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FailbackMode {
    /// Fail back without an operator once the primary has been healthy for `after`.
    #[default]
    Automatic,
    /// Stay failed over until an operator fails back.
    Manual,
}

/// What a signal without data means.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnMissing {
    /// Neither failover nor failback on account of that signal (the safe default).
    #[default]
    Hold,
    /// Missing data on the primary counts as failing (for services where silence means down).
    Failover,
    /// Leave the signal out; the target is judged by its other signals.
    Ignore,
}

/// What to do when the route failoverd wrote was changed by someone else.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnDrift {
    /// Write failoverd's routing again (the default): while the primary is known bad, a sync
    /// that restores the original route would send users back to a dead service. To change
    /// the route by hand, freeze the playbook first; a frozen playbook is never reasserted.
    #[default]
    Reassert,
    /// Leave the change in place and freeze the playbook (audited, on-call alerted): a person
    /// took over; failoverd moves nothing until an operator resumes it.
    Respect,
}

impl Playbook {
    /// The playbook's name.
    pub fn name(&self) -> &str {
        &self.metadata.name.value
    }

    /// The destination a target refers to (None when the index is out of range).
    pub fn destination(&self, target: Target) -> Option<&Destination> {
        match target {
            Target::Primary => Some(&self.spec.primary),
            Target::Failover(i) => self.spec.failover.value.get(i),
        }
    }

    /// The route steps as a slice (percent on the primary).
    pub fn failback_steps(&self) -> &[u8] {
        &self.spec.failback.steps.value
    }

    /// Checks references and sense; returns every problem found (empty when valid).
    ///
    /// The options only the probe library can judge (URL and header syntax, regexes, CA
    /// files, addresses, scrape matchers) are asked of `checks`; the daemon passes the probe
    /// library's own checks, so a playbook is refused for exactly what its probes would fail on.
    pub fn validate_with(&self, file: &str, checks: &dyn ProbeChecks) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |loc: serde_saphyr::Location, field: &str, message: String| {
            out.push(Problem {
                file: file.to_string(),
                line: loc.line(),
                column: loc.column(),
                field: field.to_string(),
                message,
            });
        };
        let unknown = serde_saphyr::Location::UNKNOWN;
        if self.api_version != API_VERSION {
            push(
                unknown,
                "apiVersion",
                format!("expected `{API_VERSION}`, got `{}`", self.api_version),
            );
        }
        if self.kind != "Playbook" {
            push(
                unknown,
                "kind",
                format!("expected `Playbook`, got `{}`", self.kind),
            );
        }
        let name = &self.metadata.name;
        if let Err(e) = check_dns_label(&name.value) {
            push(name.referenced, "metadata.name", e);
        }
        let spec = &self.spec;
        for (field, v) in [
            (
                "spec.virtualService.namespace",
                &spec.virtual_service.namespace,
            ),
            ("spec.virtualService.name", &spec.virtual_service.name),
        ] {
            if let Err(e) = check_dns_subdomain(v) {
                push(unknown, field, e);
            }
        }
        if let Some(r) = &spec.route
            && r.value.trim().is_empty()
        {
            push(r.referenced, "spec.route", "must not be empty".into());
        }
        let check_dest =
            |field: String,
             d: &Destination,
             push: &mut dyn FnMut(serde_saphyr::Location, &str, String)| {
                if let Err(e) = check_host(&d.host.value) {
                    push(d.host.referenced, &format!("{field}.host"), e);
                }
                if let Some(s) = &d.subset
                    && let Err(e) = check_dns_label(&s.value)
                {
                    push(s.referenced, &format!("{field}.subset"), e);
                }
                if let Some(p) = d.port
                    && !(1..=65535).contains(&p)
                {
                    push(
                        d.host.referenced,
                        &format!("{field}.port"),
                        format!("port {p} is not in 1..=65535"),
                    );
                }
            };
        check_dest("spec.primary".into(), &spec.primary, &mut push);
        if spec.failover.value.is_empty() {
            push(
                spec.failover.referenced,
                "spec.failover",
                "must list at least one failover target".into(),
            );
        }
        for (i, d) in spec.failover.value.iter().enumerate() {
            check_dest(format!("spec.failover[{i}]"), d, &mut push);
            if d.host.value == spec.primary.host.value
                && d.subset.as_ref().map(|s| &s.value)
                    == spec.primary.subset.as_ref().map(|s| &s.value)
                && d.port == spec.primary.port
            {
                push(
                    d.host.referenced,
                    &format!("spec.failover[{i}]"),
                    "is the same destination as spec.primary".into(),
                );
            }
        }
        let threshold = &spec.trigger.failure_threshold;
        if threshold.value < 1 {
            push(
                threshold.referenced,
                "spec.trigger.failureThreshold",
                "must be at least 1".into(),
            );
        }
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut watched: Vec<Target> = Vec::new();
        let n_failover = spec.failover.value.len();
        for (i, p) in spec.probes.iter().enumerate() {
            let field = format!("spec.probes[{i}]");
            if p.name.value.trim().is_empty() {
                push(
                    p.name.referenced,
                    &format!("{field}.name"),
                    "must not be empty".into(),
                );
            } else if names.insert(&p.name.value, ()).is_some() {
                push(
                    p.name.referenced,
                    &format!("{field}.name"),
                    format!("duplicate signal name `{}`", p.name.value),
                );
            }
            check_target(p.target.value, n_failover)
                .map(|t| watched.push(t))
                .unwrap_or_else(|e| push(p.target.referenced, &format!("{field}.target"), e));
            match (&p.http, &p.tcp, &p.grpc) {
                (Some(h), None, None) => {
                    if let Err(e) = checks.http(h) {
                        push(
                            h.url.referenced,
                            &format!("{field}.http.{}", e.field),
                            e.message,
                        );
                    }
                    if let Some(c) = h.connect_timeout
                        && (c.get().is_zero() || c > p.timeout.value)
                    {
                        push(
                            h.url.referenced,
                            &format!("{field}.http.connectTimeout"),
                            format!(
                                "connectTimeout {c} must be greater than 0s and at most timeout {}",
                                p.timeout.value
                            ),
                        );
                    }
                }
                (None, None, Some(g)) => {
                    if let Err(e) = checks.grpc(g) {
                        push(
                            g.address.referenced,
                            &format!("{field}.grpc.{}", e.field),
                            e.message,
                        );
                    }
                    if let Some(c) = g.connect_timeout
                        && (c.get().is_zero() || c > p.timeout.value)
                    {
                        push(
                            g.address.referenced,
                            &format!("{field}.grpc.connectTimeout"),
                            format!(
                                "connectTimeout {c} must be greater than 0s and at most timeout {}",
                                p.timeout.value
                            ),
                        );
                    }
                }
                (None, Some(t), None) => {
                    if let Err(e) = checks.tcp(t) {
                        push(
                            t.address.referenced,
                            &format!("{field}.tcp.{}", e.field),
                            e.message,
                        );
                    }
                }
                _ => push(
                    p.name.referenced,
                    &field,
                    "needs exactly one of `http`, `tcp`, `grpc`".into(),
                ),
            }
            if p.interval.get().is_zero() {
                push(
                    p.name.referenced,
                    &format!("{field}.interval"),
                    "must be greater than 0s".into(),
                );
            }
            if p.timeout.value.get().is_zero() || p.timeout.value >= p.interval {
                let loc = if p.timeout.referenced == unknown {
                    p.name.referenced
                } else {
                    p.timeout.referenced
                };
                push(
                    loc,
                    &format!("{field}.timeout"),
                    format!(
                        "timeout {} must be greater than 0s and shorter than interval {}",
                        p.timeout.value, p.interval
                    ),
                );
            } else if let Err(e) = p.timeout.value.at_most(duration::bounds::TIMEOUT) {
                push(p.timeout.referenced, &format!("{field}.timeout"), e);
            }
        }
        for (i, s) in spec.slos.iter().enumerate() {
            let field = format!("spec.slos[{i}]");
            if s.name.value.trim().is_empty() {
                push(
                    s.name.referenced,
                    &format!("{field}.name"),
                    "must not be empty".into(),
                );
            } else if names.insert(&s.name.value, ()).is_some() {
                push(
                    s.name.referenced,
                    &format!("{field}.name"),
                    format!("duplicate signal name `{}`", s.name.value),
                );
            }
            check_target(s.target.value, n_failover)
                .map(|t| watched.push(t))
                .unwrap_or_else(|e| push(s.target.referenced, &format!("{field}.target"), e));
            match (&s.prometheus, &s.ratio, &s.scrape) {
                (None, None, Some(sc)) => {
                    check_scrape(sc, s, &field, checks, &mut push);
                }
                (Some(q), None, None) => {
                    if q.query.value.trim().is_empty() {
                        push(
                            q.query.referenced,
                            &format!("{field}.prometheus.query"),
                            "must not be empty".into(),
                        );
                    }
                    match (q.above, q.below) {
                        (Some(v), None) | (None, Some(v)) if v.is_finite() => {}
                        _ => push(
                            q.query.referenced,
                            &format!("{field}.prometheus"),
                            "needs exactly one finite threshold: `above` or `below`".into(),
                        ),
                    }
                }
                (None, Some(r), None) => {
                    if !(r.objective > 0.0 && r.objective < 100.0) {
                        push(
                            r.errors.referenced,
                            &format!("{field}.ratio.objective"),
                            format!(
                                "must be a percentage strictly between 0 and 100, got {}",
                                r.objective
                            ),
                        );
                    }
                    for (what, q) in [("errors", &r.errors), ("total", &r.total)] {
                        if !q.value.contains(WINDOW_PLACEHOLDER) {
                            push(
                                q.referenced,
                                &format!("{field}.ratio.{what}"),
                                format!(
                                    "must contain `{WINDOW_PLACEHOLDER}` where the window goes, e.g. `[{WINDOW_PLACEHOLDER}]`"
                                ),
                            );
                        }
                    }
                    if r.burn_rates.is_empty() {
                        push(
                            r.errors.referenced,
                            &format!("{field}.ratio.burnRates"),
                            "must not be empty".into(),
                        );
                    }
                    for (j, b) in r.burn_rates.iter().enumerate() {
                        if b.short.get().is_zero()
                            || b.short >= b.long
                            || !(b.factor.is_finite() && b.factor > 0.0)
                        {
                            push(
                                r.errors.referenced,
                                &format!("{field}.ratio.burnRates[{j}]"),
                                "needs 0 < short < long and a positive factor".into(),
                            );
                        }
                    }
                }
                _ => push(
                    s.name.referenced,
                    &field,
                    "needs exactly one of `prometheus`, `ratio`, `scrape`".into(),
                ),
            }
            if let Some(u) = &s.server
                && !(u.value.starts_with("http://") || u.value.starts_with("https://"))
            {
                push(
                    u.referenced,
                    &format!("{field}.server"),
                    format!("`{}` is not an http(s) URL", u.value),
                );
            }
            if s.evaluation_interval.get().is_zero() {
                push(
                    s.name.referenced,
                    &format!("{field}.evaluationInterval"),
                    "must be greater than 0s".into(),
                );
            }
            if s.timeout.get().is_zero() || s.timeout >= s.evaluation_interval {
                push(
                    s.name.referenced,
                    &format!("{field}.timeout"),
                    format!(
                        "query timeout {} must be greater than 0s and shorter than evaluationInterval {}",
                        s.timeout, s.evaluation_interval
                    ),
                );
            }
        }
        if !watched.contains(&Target::Primary) {
            push(
                name.referenced,
                "spec.probes",
                "no probe or SLO watches `primary`: failoverd could never notice it failing".into(),
            );
        }
        for i in 0..n_failover {
            if !watched.contains(&Target::Failover(i)) {
                let loc = spec.failover.value[i].host.referenced;
                push(
                    loc,
                    &format!("spec.failover[{i}]"),
                    format!(
                        "no probe or SLO watches `failover[{i}]`: failoverd never routes to a target it cannot see"
                    ),
                );
            }
        }
        let steps = &spec.failback.steps;
        let ok = !steps.value.is_empty()
            && steps.value.last() == Some(&100)
            && steps.value.windows(2).all(|w| w[0] < w[1])
            && steps.value.first().is_some_and(|s| *s >= 1);
        if !ok {
            push(
                steps.referenced,
                "spec.failback.steps",
                format!(
                    "must be strictly increasing percentages in 1..=100 ending at 100, got {:?}",
                    steps.value
                ),
            );
        }
        if steps.value.len() > 1 && spec.failback.step_interval.get().is_zero() {
            push(
                steps.referenced,
                "spec.failback.stepInterval",
                "must be greater than 0s when there is more than one step".into(),
            );
        }
        out
    }
}

/// Most evaluations one `scrape` window may span (one sample of two counters is kept for each).
pub const MAX_SCRAPE_SAMPLES: u128 = 10_000;

/// Checks a `scrape` SLO: URL, metric name, matchers, window and threshold.
fn check_scrape(
    sc: &ScrapeSlo,
    s: &SloSpec,
    field: &str,
    checks: &dyn ProbeChecks,
    push: &mut dyn FnMut(serde_saphyr::Location, &str, String),
) {
    let at = sc.url.referenced;
    match url::Url::parse(&sc.url.value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        Ok(u) => push(
            at,
            &format!("{field}.scrape.url"),
            format!(
                "`{}` must be an http:// or https:// URL with a host (got scheme {:?})",
                sc.url.value,
                u.scheme()
            ),
        ),
        Err(e) => push(
            at,
            &format!("{field}.scrape.url"),
            format!("`{}` is not a URL: {e}", sc.url.value),
        ),
    }
    let name = &sc.metric.value;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !name_ok {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.metric"),
            format!("`{name}` is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        );
    }
    for (what, map) in [("matchers", &sc.matchers), ("errorWhen", &sc.error_when)] {
        for (label, value) in map {
            if let Err(message) = checks.matcher(label, value) {
                push(
                    sc.metric.referenced,
                    &format!("{field}.scrape.{what}.{label}"),
                    message,
                );
            }
        }
    }
    if sc.error_when.is_empty() {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.errorWhen"),
            "must name at least one label (e.g. `response_code: \"=~5..\"`): without it every request counts as failed".into(),
        );
    }
    if sc.window.get() < s.evaluation_interval.get().saturating_mul(2) {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.window"),
            format!(
                "window {} must be at least 2 × evaluationInterval ({}): a ratio needs two counter increases",
                sc.window, s.evaluation_interval
            ),
        );
    }
    // One sample per evaluation is kept for the whole window: bound how many.
    let per_window = sc
        .window
        .get()
        .as_nanos()
        .checked_div(s.evaluation_interval.get().as_nanos())
        .unwrap_or(u128::MAX);
    if per_window > MAX_SCRAPE_SAMPLES {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.window"),
            format!(
                "window {} holds {per_window} evaluations of {}; at most {MAX_SCRAPE_SAMPLES} (raise evaluationInterval or shorten the window)",
                sc.window, s.evaluation_interval
            ),
        );
    }
    if !(sc.above.is_finite() && (0.0..1.0).contains(&sc.above)) {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.above"),
            format!("must be a ratio with 0 ≤ above < 1, got {}", sc.above),
        );
    }
    if let Some(u) = &s.server {
        push(
            u.referenced,
            &format!("{field}.server"),
            "does not apply to `scrape` (the page is read directly, not through Prometheus)".into(),
        );
    }
}

fn check_target(t: Target, n_failover: usize) -> Result<Target, String> {
    match t {
        Target::Failover(i) if i >= n_failover => Err(format!(
            "target `failover[{i}]` does not exist: spec.failover has {n_failover} entr{}",
            if n_failover == 1 { "y" } else { "ies" }
        )),
        t => Ok(t),
    }
}

/// Checks a DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a DNS-1123 label (lowercase letters, digits and `-`, at most 63, starting and ending alphanumeric)"
        ))
    }
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(format!("`{s}` is not a DNS-1123 subdomain"));
    }
    Ok(())
}

/// Checks a destination host the way Istio's webhook does: a valid domain name, not `*`,
/// not empty (an empty host black-holes traffic), no scheme or port.
pub fn check_host(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("host must not be empty".into());
    }
    if s == "*" || s.contains('*') {
        return Err(format!("host `{s}` must not be a wildcard"));
    }
    if s.contains("://") || s.contains(':') || s.contains('/') {
        return Err(format!(
            "host `{s}` must be a bare host name (no scheme, port or path; put the port in `port`)"
        ));
    }
    let lower = s.to_ascii_lowercase();
    check_dns_subdomain(&lower).map_err(|_| format!("host `{s}` is not a valid domain name"))
}

/// A parsed and validated playbook with the file it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The file it was read from.
    pub file: PathBuf,
    /// The playbook.
    pub playbook: Playbook,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<Spanned<String>>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
}

/// Parses one playbook document; syntax and type errors carry their YAML location.
pub fn parse(file: &str, text: &str) -> Result<Playbook, Problem> {
    // A first, lenient pass reads only `kind` and `apiVersion` so a Drill file (or anything
    // else) gets a clear word, located at the offending value.
    if let Ok(h) = serde_saphyr::from_str::<Header>(text) {
        let refuse = |field: &str, expected: &str, got: &Spanned<String>| Problem {
            file: file.into(),
            line: got.referenced.line(),
            column: got.referenced.column(),
            field: field.into(),
            message: format!("expected `{expected}`, got `{}`", got.value),
        };
        if let Some(kind) = &h.kind
            && kind.value != "Playbook"
        {
            return Err(refuse("kind", "Playbook", kind));
        }
        if let Some(v) = &h.api_version
            && v.value != API_VERSION
        {
            return Err(refuse("apiVersion", API_VERSION, v));
        }
    }
    serde_saphyr::from_str::<Playbook>(text).map_err(|e| yaml_problem(file, &e))
}

/// Converts a serde-saphyr error into a located [`Problem`].
pub fn yaml_problem(file: &str, e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let opts = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let mut message = e.render_with_options(opts);
    // The location goes in front (`file:line:col:`), so drop the parser's own suffix.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    Problem {
        file: file.into(),
        line,
        column,
        field: String::new(),
        message,
    }
}

/// A probe option the probe library refused: the field under the probe's kind (`url`,
/// `caFile`, `address`, ...) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionProblem {
    /// The field under `http`, `grpc` or `tcp`, e.g. `caFile`.
    pub field: String,
    /// Why, in the probe library's words.
    pub message: String,
}

/// The checks of probe and scrape options that belong to the code that runs them (URL and
/// header syntax, regexes, CA files, addresses, label matchers). They need the network
/// crates, so [`Playbook::validate_with`] asks its caller for them instead of depending on
/// those crates: the daemon passes the probe library's checks.
pub trait ProbeChecks {
    /// Checks an `http` probe's options.
    fn http(&self, check: &HttpCheck) -> Result<(), OptionProblem>;
    /// Checks a `grpc` probe's options.
    fn grpc(&self, check: &GrpcCheck) -> Result<(), OptionProblem>;
    /// Checks a `tcp` probe's options.
    fn tcp(&self, check: &TcpCheck) -> Result<(), OptionProblem>;
    /// Checks one `scrape` label matcher (`value`, `=~regex`, `!=value`, `!~regex`).
    fn matcher(&self, label: &str, value: &str) -> Result<(), String>;
}

/// The JSON Schema of the playbook format, generated from these types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Playbook);
    serde_json::to_value(schema).unwrap_or_default()
}

/// For the core's own tests: validation with every probe option accepted. The probe
/// library's checks are the daemon's to run (and to test); here fixtures only need to pass
/// the model's rules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{GrpcCheck, HttpCheck, OptionProblem, Playbook, ProbeChecks, Problem, TcpCheck};

    struct AcceptAll;

    impl ProbeChecks for AcceptAll {
        fn http(&self, _: &HttpCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn grpc(&self, _: &GrpcCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn tcp(&self, _: &TcpCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn matcher(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    /// `validate` under the model's rules only.
    pub(crate) trait Validate {
        fn validate(&self, file: &str) -> Vec<Problem>;
    }

    impl Validate for Playbook {
        fn validate(&self, file: &str) -> Vec<Problem> {
            self.validate_with(file, &AcceptAll)
        }
    }
}
