//! Active health probes for failoverd.
//!
//! The daemon declares what to check ([`ProbeSpec`]), validates it at load time
//! ([`check_kind`]), runs the checks on a spread-out schedule ([`spawn_probes`]) and
//! summarises each probe's recent history ([`ProbeWindow`]) for the failover engine.
//! One-off checks use [`probe_once`].

mod attempt;
mod check;
mod schedule;
mod window;

use std::time::Duration;

pub use attempt::{http_client, probe_once};
pub use check::check_kind;
pub use schedule::{ProbeSet, spawn_probes};
pub use window::ProbeWindow;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// HTTP GET; healthy when the status is in `expect_status`.
    Http {
        /// Absolute `http://` or `https://` URL to GET.
        url: String,
        /// Status codes that count as healthy (redirects are not followed, so a 3xx is
        /// only healthy if listed here).
        expect_status: Vec<u16>,
    },
    /// TCP connect to `address` ("host:port"); healthy when the connect succeeds.
    Tcp {
        /// `host:port`; IPv6 literals are bracketed (`[::1]:80`).
        address: String,
    },
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
    /// (the daemon validates that).
    pub timeout: Duration,
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
    /// How long the attempt took.
    pub latency: Duration,
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
    /// A TCP probe address is unusable.
    #[error("invalid probe address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}
