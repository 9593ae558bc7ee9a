//! The exchange's metrics, registered with the daemon's registry (`failoverd_vantage_*`).
//! Labels are bounded: peers come from the config list, reasons and results are constants.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Identity;

type Labels = Vec<(&'static str, String)>;

/// Counters and gauges of the vantage exchange.
#[derive(Clone, Debug, Default)]
pub struct VantageMetrics {
    /// `failoverd_vantage_info{name, zone}` = 1: this replica as a vantage.
    pub info: Family<Labels, Gauge>,
    /// Exchanges with each peer by result (`ok`, `error`).
    pub exchanges: Family<Labels, Counter>,
    /// Automatic failovers made on this replica's view alone although the playbook asks for
    /// agreement, by reason (`no-live-peer`, `fewer-live-than-min`).
    pub fallbacks: Family<Labels, Counter>,
    /// `suspect-observer` episodes, by the vantage that alone saw the failures.
    pub suspect_observer: Family<Labels, Counter>,
}

impl VantageMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "vantage_info",
            "This replica as a vantage point (name, zone)",
            m.info.clone(),
        );
        registry.register(
            "vantage_exchanges",
            "Verdict exchanges with each peer, by result",
            m.exchanges.clone(),
        );
        registry.register(
            "vantage_fallback",
            "Automatic failovers decided on this replica's view alone, by reason",
            m.fallbacks.clone(),
        );
        registry.register(
            "vantage_suspect_observer",
            "Episodes of one vantage alone seeing many primaries failing",
            m.suspect_observer.clone(),
        );
        m
    }

    pub(super) fn info(&self, id: &Identity) {
        self.info
            .get_or_create(&vec![
                ("name", id.name.clone()),
                ("zone", id.zone.clone().unwrap_or_default()),
            ])
            .set(1);
    }

    pub(super) fn exchange(&self, peer: &str, result: &'static str) {
        self.exchanges
            .get_or_create(&vec![("peer", peer.to_string()), ("result", result.into())])
            .inc();
    }

    /// Counts one decision made on this replica's view alone.
    pub fn fallback(&self, reason: &str) {
        self.fallbacks
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts one `suspect-observer` episode.
    pub fn suspect(&self, vantage: &str) {
        self.suspect_observer
            .get_or_create(&vec![("vantage", vantage.to_string())])
            .inc();
    }
}
