//! Active health probes for failoverd: HTTP(S), TCP and gRPC health checks.
//!
//! The daemon declares what to check ([`ProbeSpec`]), validates it at load time
//! ([`check_kind`]), runs the checks on a spread-out schedule ([`spawn_probes`]) and
//! summarises each probe's recent history ([`ProbeWindow`]) for the failover engine.
//! One-off checks use [`probe_once`]. Every result says which [`Vantage`] produced it
//! and how late against its schedule the attempt started.
//!
//! Direct scrapes of a `/metrics` page live in [`exposition`] (a strict parser for the
//! Prometheus text and OpenMetrics formats) and [`scrape`] (series selection, counter
//! increases with resets, and an error-ratio signal over a window of scrapes).

mod address;
mod attempt;
mod check;
mod error_text;
pub mod exposition;
mod grpc;
mod plain;
mod runtime_headers;
mod schedule;
pub mod scrape;
mod tls;
mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use attempt::{http_client, http_client_for, probe_once, probe_once_via_client};
pub use check::{check_kind, check_spec};
pub use runtime_headers::RuntimeHeaders;
pub use schedule::{
    MAX_IN_FLIGHT, ProbeSet, spawn_probes, spawn_probes_limited, spawn_probes_with_headers,
};
pub use window::ProbeWindow;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// An HTTP(S) request judged by status, and optionally by body.
    Http(HttpProbe),
    /// A TCP connect, optionally followed by a send/expect exchange.
    Tcp(TcpProbe),
    /// A `grpc.health.v1.Health/Check` call.
    Grpc(GrpcProbe),
}

/// An HTTP(S) probe. Build with [`HttpProbe::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Request method (default `GET`).
    pub method: String,
    /// Extra request headers, sent in this order.
    pub headers: Vec<(String, String)>,
    /// Status codes that count as healthy. Redirects are only followed when
    /// `follow_redirects` is set; otherwise a 3xx is healthy only if listed here.
    pub expect_status: Vec<u16>,
    /// Healthy only if the body (first 64 KiB, lossily decoded as UTF-8) contains this.
    pub body_contains: Option<String>,
    /// Healthy only if the body (first 64 KiB) matches this regular expression.
    pub body_matches: Option<String>,
    /// Follow up to 5 redirects (default false: a redirect is the probed server's answer).
    pub follow_redirects: bool,
    /// PEM file of CA certificates; when set, only these CAs are trusted.
    pub ca_file: Option<PathBuf>,
    /// TLS server name (SNI and certificate name) to use instead of the URL's host; the
    /// connection still goes to the URL's host, and `Host` stays the URL's.
    pub server_name: Option<String>,
    /// Accept any server certificate (explicit opt-in; never a default).
    pub insecure_skip_verify: bool,
    /// Time allowed to establish the connection (TCP + TLS); `None`: only the total
    /// timeout applies.
    pub connect_timeout: Option<Duration>,
    /// Open a new connection for every attempt (default true): a pooled connection can
    /// hide a listener that stopped accepting. `false` reuses one between attempts.
    pub fresh_connection: bool,
    /// Speak HTTP/2: prior knowledge (h2c) for `http://`, ALPN for `https://` (a server
    /// that does not negotiate h2 is unhealthy). Default false: HTTP/1.1 only.
    pub http2: bool,
}

impl HttpProbe {
    /// A GET of `url`, healthy on one of `expect_status`, with every option at its default.
    pub fn new(url: impl Into<String>, expect_status: Vec<u16>) -> Self {
        Self {
            url: url.into(),
            method: "GET".to_owned(),
            headers: Vec::new(),
            expect_status,
            body_contains: None,
            body_matches: None,
            follow_redirects: false,
            ca_file: None,
            server_name: None,
            insecure_skip_verify: false,
            connect_timeout: None,
            fresh_connection: true,
            http2: false,
        }
    }

    /// Whether the shared client from [`http_client`] cannot serve this probe (it needs
    /// its own TLS, redirect, pooling, protocol or connect-timeout settings).
    pub fn needs_own_client(&self) -> bool {
        self.follow_redirects
            || self.ca_file.is_some()
            || self.server_name.is_some()
            || self.insecure_skip_verify
            || self.connect_timeout.is_some()
            || !self.fresh_connection
            || self.http2
    }
}

/// A TCP probe: healthy when the connect succeeds and, if `expect` is set, the peer's
/// first bytes (after `send`, if any) contain `expect`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProbe {
    /// `host:port`; IPv6 literals are bracketed (`[::1]:80`).
    pub address: String,
    /// Bytes written right after connecting.
    pub send: Option<Vec<u8>>,
    /// Bytes that must appear in what the peer sends (read up to 64 KiB).
    pub expect: Option<Vec<u8>>,
}

impl TcpProbe {
    /// A plain connect check of `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            send: None,
            expect: None,
        }
    }
}

/// A gRPC health probe: `grpc.health.v1.Health/Check` for `service`, healthy only on
/// `SERVING`. `NOT_SERVING`, `UNKNOWN`, an unknown service (`NOT_FOUND`), a server
/// without the health service and transport errors are unhealthy, with the status in
/// the reason. Every attempt opens a fresh HTTP/2 connection.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcProbe {
    /// `host:port` to connect to; IPv6 literals are bracketed (`[::1]:50051`).
    pub address: String,
    /// Service name sent in the request; empty asks about the server as a whole.
    pub service: String,
    /// `:authority` to send instead of `address` (e.g. the name a mesh routes on).
    pub authority: Option<String>,
    /// Speak TLS (ALPN h2); without it, plaintext HTTP/2 (h2c).
    pub tls: bool,
    /// PEM file of CA certificates; when set, only these CAs are trusted (`tls` only).
    pub ca_file: Option<PathBuf>,
    /// TLS server name (SNI and certificate name) instead of the address's host.
    pub server_name: Option<String>,
    /// Accept any server certificate (explicit opt-in; `tls` only).
    pub insecure_skip_verify: bool,
    /// Time allowed to connect (TCP + TLS); `None`: only the total timeout applies.
    pub connect_timeout: Option<Duration>,
}

impl GrpcProbe {
    /// A plaintext check of `service` at `address`, every option at its default.
    pub fn new(address: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            service: service.into(),
            authority: None,
            tls: false,
            ca_file: None,
            server_name: None,
            insecure_skip_verify: false,
            connect_timeout: None,
        }
    }
}

/// Which vantage point produced a result ("local" for this process). Cheap to clone;
/// meant to let the engine later require k healthy results out of n vantages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vantage(Arc<str>);

impl Vantage {
    /// The vantage of probes run by this process.
    pub fn local() -> Self {
        Self(Arc::from("local"))
    }

    /// A named vantage point.
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Vantage {
    fn default() -> Self {
        Self::local()
    }
}

impl std::fmt::Display for Vantage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One probe to schedule.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Caller's index for this probe; echoed in every result (lets the daemon map
    /// results back without string lookups).
    pub id: usize,
    /// What to check.
    pub kind: ProbeKind,
    /// Time between the starts of two attempts.
    pub interval: Duration,
    /// Total time allowed for one attempt (connect + response); must be < interval
    /// (checked by [`check_spec`]).
    pub timeout: Duration,
    /// The vantage point that runs this probe (echoed in every result).
    pub vantage: Vantage,
}

/// Result of one attempt.
///
/// `Unknown` means "the probe could not run" (e.g. local resource exhaustion, an
/// unusable request) — it must never be read as healthy or unhealthy, because it says
/// nothing about the target. Connection refused, reset, timeout or an unexpected status
/// are `Unhealthy`, with a short human reason such as `"connect: connection refused"`,
/// `"timeout after 500ms"` or `"status 503 not in [200]"`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The target answered as expected.
    Healthy,
    /// The target failed the check; the string says how.
    Unhealthy(String),
    /// The check could not be carried out; the string says why.
    Unknown(String),
}

/// Result of one attempt.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The [`ProbeSpec::id`] of the probe that ran.
    pub id: usize,
    /// What the attempt concluded.
    pub outcome: Outcome,
    /// When the attempt started (monotonic).
    pub started: tokio::time::Instant,
    /// How long the attempt took (for HTTP: until the body was read or judged).
    pub latency: Duration,
    /// How late the attempt started against its schedule (`first + k × interval`);
    /// zero for one-off [`probe_once`] calls.
    pub lateness: Duration,
    /// The vantage point that produced this result.
    pub vantage: Vantage,
}

/// Errors from building the probe client or validating a probe definition.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The shared HTTP client could not be built.
    #[error("cannot build HTTP probe client: {0}")]
    ClientBuild(String),
    /// An HTTP probe URL is unusable.
    #[error("invalid probe URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An HTTP probe's expected status list is unusable.
    #[error("invalid expected status for {url:?}: {reason}")]
    InvalidExpectStatus {
        /// The probe's URL, to locate the probe in the playbook.
        url: String,
        /// What is wrong with the list.
        reason: String,
    },
    /// An HTTP probe option (method, header, regex, CA file, server name) is unusable.
    #[error("invalid {field} for {url:?}: {reason}")]
    InvalidHttpOption {
        /// The probe's URL, to locate the probe.
        url: String,
        /// The option, named as in the playbook (`method`, `bodyMatches`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A scrape selector is unusable (e.g. a bad label regex).
    #[error("invalid selector: {0}")]
    InvalidSelector(String),
    /// The probe's timing is unusable (timeout not shorter than the interval, zero).
    #[error("invalid timing: {0}")]
    InvalidTiming(String),
    /// A gRPC probe option (authority, caFile, serverName, ...) is unusable.
    #[error("invalid {field} for gRPC probe of {address:?}: {reason}")]
    InvalidGrpcOption {
        /// The probe's address, to locate the probe.
        address: String,
        /// The option, named as in the playbook.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A TCP probe address is unusable.
    #[error("invalid probe address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}
