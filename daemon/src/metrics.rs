//! failoverd's own Prometheus metrics. Every label set is bounded by the loaded playbooks.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A metric family's label set.
pub type Labels = Vec<(&'static str, String)>;

/// All metrics, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Moves away from the primary (failover, switch, operator failover), per playbook.
    pub failovers: Family<Labels, Counter>,
    /// Completed returns to the original route, per playbook.
    pub failbacks: Family<Labels, Counter>,
    /// Probe results by playbook, probe and result (healthy/unhealthy/unknown).
    pub probe_results: Family<Labels, Counter>,
    /// Time spent in one `decide` call; a traced round's trace id is its exemplar.
    pub decision_seconds: HistogramWithExemplars<Labels>,
    /// How late each probe attempt started against its schedule.
    pub probe_lateness_seconds: Histogram,
    /// Time of one routing write including read-back, by result; the move's trace id is
    /// its exemplar (tracing on).
    pub route_write_seconds: Family<Labels, HistogramWithExemplars<Labels>>,
    /// Failed routing writes by playbook and reason.
    pub route_write_errors: Family<Labels, Counter>,
    /// Routes found changed by someone else while failed over, by playbook and what
    /// failoverd did (`reassert`, `respect`, `frozen`).
    pub drift: Family<Labels, Counter>,
    /// 1 while this replica may write routing (the lease holder, or no election at all).
    pub leader: Gauge,
    /// 1 while the playbook is in the labelled phase.
    pub phase: Family<Labels, Gauge>,
    /// 1 while the playbook has no healthy destination to go to.
    pub stuck: Family<Labels, Gauge>,
    /// Audit appends that failed (a move whose intent failed was not made; it is retried).
    pub audit_errors: Counter,
    /// 1 while the audit log takes appends, 0 while it refuses them (no move can be made).
    pub audit_available: Gauge,
    /// Records the cluster's audit chain held that this replica's file lacked at the
    /// replicator's last look (leader election only).
    pub audit_replica_lag: Gauge,
    /// Audit records that could not be shipped (queue full, target failing); they stay in
    /// the local log.
    pub audit_ship_errors: Counter,
    /// SLO evaluations that gave no value, by playbook, signal and bounded reason.
    pub signal_unknown: Family<Labels, Counter>,
    /// Notification deliveries by sink, event and result
    /// (sent, retried, dead-letter, dropped).
    pub notifications: Family<Labels, Counter>,
    /// Notifications waiting or in flight, per sink.
    pub notification_queue_depth: Family<Labels, Gauge>,
    /// Age of the oldest notification waiting or in flight, per sink (0 when empty).
    pub notification_oldest_pending_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Playbook set reloads by result (applied, invalid).
    pub playbook_reload: Family<Labels, Counter>,
    /// 1 while the playbook files on disk are an invalid set.
    pub playbook_reload_failed: Gauge,
    /// Drill runs by drill and result (passed, failed, aborted, skipped).
    pub drill_runs: Family<Labels, Counter>,
    /// Time of a drill's failover (operator-style call to route read back), per drill.
    pub drill_failover_seconds: Family<Labels, Histogram>,
    /// Failed API authentications, by reason (`missing`, `invalid`, `not_configured`).
    pub api_auth_failures: Family<Labels, Counter>,
    /// API calls refused by a rate limit, by key kind (`identity`, `address`).
    pub api_rate_limited: Family<Labels, Counter>,
    /// Refusals of authenticated calls beyond the per-identity audit budget (counted and
    /// logged in aggregate instead of audited one by one).
    pub api_refusals_unaudited: Counter,
    /// The vantage exchange (`failoverd_vantage_*`).
    pub vantage: crate::vantage::VantageMetrics,
}

fn write_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("failoverd");
        let failovers = Family::<Labels, Counter>::default();
        registry.register(
            "failovers",
            "Moves of traffic away from the primary",
            failovers.clone(),
        );
        let failbacks = Family::<Labels, Counter>::default();
        registry.register(
            "failbacks",
            "Completed returns to the original route",
            failbacks.clone(),
        );
        let probe_results = Family::<Labels, Counter>::default();
        registry.register(
            "probe_results",
            "Probe results by result",
            probe_results.clone(),
        );
        // Lateness of a healthy scheduler is well under a millisecond.
        let probe_lateness_seconds =
            Histogram::new([1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0]);
        registry.register(
            "probe_lateness_seconds",
            "How late each probe attempt started against its schedule",
            probe_lateness_seconds.clone(),
        );
        // Decisions take microseconds; the buckets start low so a regression is visible.
        let decision_seconds = HistogramWithExemplars::new(
            [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2].into_iter(),
        );
        registry.register(
            "decision_seconds",
            "Time spent deciding for one playbook",
            decision_seconds.clone(),
        );
        let route_write_seconds =
            Family::<Labels, HistogramWithExemplars<Labels>>::new_with_constructor(|| {
                HistogramWithExemplars::new(write_buckets())
            });
        registry.register(
            "route_write_seconds",
            "Time of one routing write including read-back",
            route_write_seconds.clone(),
        );
        let route_write_errors = Family::<Labels, Counter>::default();
        registry.register(
            "route_write_errors",
            "Failed routing writes",
            route_write_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica may write routing (holds the lease, or runs without election)",
            leader.clone(),
        );
        let drift = Family::<Labels, Counter>::default();
        registry.register(
            "route_drift",
            "Routes found changed by someone else while failed over",
            drift.clone(),
        );
        let phase = Family::<Labels, Gauge>::default();
        registry.register(
            "playbook_phase",
            "1 while the playbook is in the labelled phase",
            phase.clone(),
        );
        let stuck = Family::<Labels, Gauge>::default();
        registry.register(
            "playbook_stuck",
            "1 while no healthy destination is available",
            stuck.clone(),
        );
        let audit_errors = Counter::default();
        registry.register(
            "audit_write_errors",
            "Audit appends that failed",
            audit_errors.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans not exported: the export queue was full or the collector failed (tracing on)",
            crate::trace::DROPPED.clone(),
        );
        registry.register(
            "kube_events_dropped",
            "Kubernetes Events about moves not sent: moves outpaced the event rate limit and the backlog was full",
            crate::routing::kube::EVENTS_DROPPED.clone(),
        );
        let audit_replica_lag = Gauge::default();
        registry.register(
            "audit_replica_lag_records",
            "Records the cluster's audit chain held that this replica's audit file lacked, at the replicator's last look (every second, before it copied them)",
            audit_replica_lag.clone(),
        );
        let audit_available = Gauge::default();
        audit_available.set(1);
        registry.register(
            "audit_available",
            "1 while the audit log takes appends; 0 while it refuses them and no move can be made",
            audit_available.clone(),
        );
        let audit_ship_errors = Counter::default();
        registry.register(
            "audit_ship_errors",
            "Audit records that could not be shipped to the --audit-ship target (they stay in the local log)",
            audit_ship_errors.clone(),
        );
        let signal_unknown = Family::<Labels, Counter>::default();
        registry.register(
            "signal_unknown",
            "Signal evaluations without a usable value (never read as healthy or failing)",
            signal_unknown.clone(),
        );
        let notifications = Family::<Labels, Counter>::default();
        registry.register(
            "notifications",
            "Notification deliveries by sink, event and result",
            notifications.clone(),
        );
        let notification_queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "notification_queue_depth",
            "Notifications waiting or in flight, per sink",
            notification_queue_depth.clone(),
        );
        let notification_oldest_pending_seconds =
            Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "notification_oldest_pending_seconds",
            "Age of the oldest notification waiting or in flight, per sink",
            notification_oldest_pending_seconds.clone(),
        );
        let playbook_reload = Family::<Labels, Counter>::default();
        registry.register(
            "playbook_reload",
            "Playbook set reloads by result (applied, invalid)",
            playbook_reload.clone(),
        );
        let playbook_reload_failed = Gauge::default();
        registry.register(
            "playbook_reload_failed",
            "1 while the playbook files on disk are an invalid set (the running set is kept)",
            playbook_reload_failed.clone(),
        );
        let drill_runs = Family::<Labels, Counter>::default();
        registry.register(
            "drill_runs",
            "Drill runs by drill and result",
            drill_runs.clone(),
        );
        let drill_failover_seconds =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(write_buckets()));
        registry.register(
            "drill_failover_seconds",
            "Time of a drill's failover, from the call to the route read back",
            drill_failover_seconds.clone(),
        );
        let api_auth_failures = Family::<Labels, Counter>::default();
        registry.register(
            "api_auth_failures",
            "Failed API authentications by reason",
            api_auth_failures.clone(),
        );
        let api_rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "api_rate_limited",
            "API calls refused by a rate limit, by what was limited (identity or address)",
            api_rate_limited.clone(),
        );
        let api_refusals_unaudited = Counter::default();
        registry.register(
            "api_refusals_unaudited",
            "Refused API calls not audited because the caller's audit budget was spent",
            api_refusals_unaudited.clone(),
        );
        let vantage = crate::vantage::VantageMetrics::register(&mut registry);
        Self {
            vantage,
            registry,
            api_auth_failures,
            api_rate_limited,
            api_refusals_unaudited,
            playbook_reload,
            playbook_reload_failed,
            drill_runs,
            drill_failover_seconds,
            notifications,
            notification_queue_depth,
            notification_oldest_pending_seconds,
            signal_unknown,
            failovers,
            failbacks,
            probe_results,
            decision_seconds,
            probe_lateness_seconds,
            route_write_seconds,
            route_write_errors,
            drift,
            leader,
            phase,
            stuck,
            audit_errors,
            audit_available,
            audit_replica_lag,
            audit_ship_errors,
        }
    }

    /// The OpenMetrics text exposition of every metric, with exemplars (the trace ids of
    /// moves and decisions, tracing on).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics: the
    /// same samples without exemplars (which that format cannot carry) and without `# EOF`.
    pub fn encode_plain(&self) -> String {
        plain(&self.encode())
    }
}

/// An OpenMetrics exposition as Prometheus text 0.0.4: a sample's exemplar (` # {...} v`
/// after its value) and the `# EOF` line are left out. Label values here are playbook names,
/// results and the like (never `#`), so the first ` # {` of a sample line starts its exemplar.
fn plain(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let line = match line.find(" # {") {
            Some(at) if !line.starts_with('#') => &line[..at],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The exemplar of an observation made in a trace: its trace id (`None`, tracing off or
/// not sampled: no exemplar).
pub fn trace_exemplar(trace_id: Option<String>) -> Option<Labels> {
    trace_id.map(|id| vec![("trace_id", id)])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Label set helper.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text format drops exemplars and `# EOF`, and keeps every sample and comment.
    #[test]
    fn plain_text_has_the_samples_without_exemplars() {
        let m = Metrics::new();
        m.decision_seconds
            .observe(2e-6, trace_exemplar(Some("abc123".into())), None);
        m.route_write_seconds
            .get_or_create(&labels([("result", "written")]))
            .observe(0.004, trace_exemplar(None), None);
        let open = m.encode();
        assert!(
            open.contains(
                r#"failoverd_decision_seconds_bucket{le="0.000005"} 1 # {trace_id="abc123"} 0.000002"#
            ),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"));
        let plain = m.encode_plain();
        assert!(
            !plain.contains(" # {") && !plain.contains("# EOF"),
            "{plain}"
        );
        assert!(plain.contains("failoverd_decision_seconds_bucket{le=\"0.000005\"} 1\n"));
        assert!(plain.contains("failoverd_route_write_seconds_count{result=\"written\"} 1\n"));
        assert_eq!(
            plain.lines().count() + 1,
            open.lines().count(),
            "one line fewer: # EOF"
        );
    }
}
