//! What a fault drill measures, per playbook: the moments from the fault written to the
//! failback complete, the intervals between them against the playbook's budget, and the
//! error window the drill's own traffic saw.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A fault drill's leg: the fault and what was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultLeg {
    /// The Istio `fault` written (`HTTPFaultInjection`).
    #[schema(value_type = Object)]
    pub fault: Value,
    /// `probes` or `all`.
    pub scope: String,
    /// True from just before the fault is written until its removal is read back: a
    /// restarted failoverd removes a fault whose in-flight record says so.
    pub written: bool,
    /// The fault written and read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub fault_written: Option<Timestamp>,
    /// The first failing result of a signal of the primary after the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_failing: Option<Timestamp>,
    /// The result that met the trigger's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub detected: Option<Timestamp>,
    /// The automatic failover written and read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failover_written: Option<Timestamp>,
    /// The fault removed and read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub fault_removed: Option<Timestamp>,
    /// The first healthy result of the primary's signals after the removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub first_healthy: Option<Timestamp>,
    /// The original route read back after the failback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failback_complete: Option<Timestamp>,
    /// The intervals between those moments, each against its budget.
    #[serde(default)]
    pub intervals: Vec<Interval>,
    /// How long the drill's traffic saw errors: first failing to first healthy result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_window_seconds: Option<f64>,
}

/// One measured interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    /// `from → to`, e.g. `fault-written → detected`.
    pub name: String,
    /// Measured, seconds.
    pub seconds: f64,
    /// The budget it is judged against, seconds (None: reported only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_seconds: Option<f64>,
    /// Where the budget comes from, e.g. `interval × failureThreshold + 1 interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
}

impl Interval {
    /// True unless over its budget.
    pub fn within(&self) -> bool {
        self.budget_seconds.is_none_or(|b| self.seconds <= b)
    }
}

/// Seconds from `a` to `b` (None when either is missing).
pub fn between(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some(b.duration_since(a).as_secs_f64())
}

impl FaultLeg {
    /// Markdown lines for the report.
    pub fn markdown(&self, playbook: &str) -> String {
        let mut s = format!(
            "\n### Fault on `{playbook}` (scope {})\n\n`{}`\n\n| interval | seconds | budget |\n|---|---|---|\n",
            self.scope, self.fault
        );
        for i in &self.intervals {
            let budget = match (&i.budget_seconds, &i.budget) {
                (Some(b), Some(w)) => format!(
                    "{b:.3} s ({w}){}",
                    if i.within() { "" } else { " **over**" }
                ),
                _ => "—".into(),
            };
            s.push_str(&format!("| {} | {:.3} | {budget} |\n", i.name, i.seconds));
        }
        if let Some(w) = self.error_window_seconds {
            s.push_str(&format!("\nError window seen by drill traffic: {w:.3} s\n"));
        }
        s
    }
}
