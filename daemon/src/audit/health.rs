//! Whether the audit log takes appends, as readiness, metrics and the controller see it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::Timestamp;

/// Whether the audit log takes appends, shared with readiness and metrics. Updated by every
/// append; read without the log's lock, so `/readyz` never waits behind an fsync.
#[derive(Debug, Default)]
pub struct AuditHealth {
    unavailable: Mutex<Option<Unavailable>>,
    owed: AtomicUsize,
    /// `failoverd_audit_available` (1/0), when the daemon registered it.
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    /// `failoverd_audit_ship_errors_total`: shipped lines lost (queue full, target failing).
    pub(super) ship_errors: prometheus_client::metrics::counter::Counter,
}

/// One episode of a log that refuses appends.
#[derive(Clone, Debug, PartialEq)]
pub struct Unavailable {
    /// The latest error.
    pub error: String,
    /// When the episode started.
    pub since: Timestamp,
}

impl AuditHealth {
    /// Health that also sets `gauge` to 1 (available) or 0.
    pub fn with_gauge(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.set(1);
        Self {
            gauge: Some(gauge),
            ..Self::default()
        }
    }

    /// Counts shipping errors in `counter` (the daemon's `failoverd_audit_ship_errors_total`).
    pub fn with_ship_errors(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.ship_errors = counter;
        self
    }

    /// None while appends succeed; else the episode (latest error, since when).
    pub fn unavailable(&self) -> Option<Unavailable> {
        self.unavailable.lock().ok().and_then(|u| u.clone())
    }

    /// Records owed to the chain and not yet written.
    pub fn owed(&self) -> usize {
        self.owed.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, result: Result<(), &str>, owed: usize) {
        self.owed.store(owed, Ordering::Relaxed);
        if let Ok(mut u) = self.unavailable.lock() {
            match result {
                Ok(()) => *u = None,
                Err(e) => {
                    let since = u.as_ref().map_or_else(Timestamp::now, |u| u.since);
                    *u = Some(Unavailable {
                        error: e.to_string(),
                        since,
                    });
                }
            }
            if let Some(g) = &self.gauge {
                g.set(i64::from(u.is_none()));
            }
        }
    }
}
