//! The error-budget floor (`spec.abort.errorBudget`): reading the service's error ratio from
//! Prometheus and judging it with the core's rule ([`judge`], re-exported here).
//!
//! A budget that cannot be read (Prometheus down, an empty result, NaN) is unknown, and an
//! unknown budget stops a live drill just as a spent one does: a drill is optional, so it
//! never runs without knowing it can afford the risk.

use std::time::Duration;

pub use failoverd_core::drill::budget::{judge, remaining_percent};

use super::spec::ErrorBudget;
use crate::slo::PromClient;

/// Time one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a reading may take in all (one retry after a transient failure fits in it).
pub const READ_BUDGET: Duration = Duration::from_secs(7);
/// How often the budget is read during the hold: the other abort conditions are checked
/// every 100 ms from memory, but this one is a Prometheus query over a long range, and an
/// error budget measured over weeks does not move in seconds.
pub const READ_EVERY: Duration = Duration::from_secs(5);

/// Reads the budget from Prometheus (`eb.server`, else `default`) and judges it.
pub async fn check(
    eb: &ErrorBudget,
    client: &PromClient,
    default: Option<&str>,
) -> Result<String, String> {
    let Some(server) = eb.server(default) else {
        return judge(
            eb,
            Err("no Prometheus server: set `server` or pass --prometheus".into()),
        );
    };
    let ratio = client
        .query_with_retry(&server, &eb.query.value, QUERY_TIMEOUT, READ_BUDGET, false)
        .await
        .map(|s| s.value)
        .map_err(|e| format!("{e} (from {server})"));
    judge(eb, ratio)
}
