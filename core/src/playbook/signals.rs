//! The signal specs: active probes (HTTP, TCP, gRPC) and SLOs (Prometheus threshold and
//! burn-rate ratio, direct scrapes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::duration::{self, Duration};
use super::target::Target;

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
