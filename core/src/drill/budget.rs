//! The error-budget floor (`spec.abort.errorBudget`) as arithmetic: how much of the
//! service's error budget an error ratio leaves, and whether a live drill may start or keep
//! holding. Reading the ratio from Prometheus is the daemon's (`failoverd::drill::budget`).
//!
//! A budget that cannot be read (Prometheus down, an empty result, NaN) is unknown, and an
//! unknown budget stops a live drill just as a spent one does: a drill is optional, so it
//! never runs without knowing it can afford the risk.

use super::spec::ErrorBudget;

/// Percent of the error budget left when the error ratio over the SLO period is `ratio`
/// and the objective is `objective` percent: 100 × (1 − ratio / (1 − objective / 100)).
/// Negative once the budget is overspent; None when either input makes no sense (the
/// objective outside (0, 100), a ratio that is negative or not finite).
pub fn remaining_percent(ratio: f64, objective: f64) -> Option<f64> {
    if !(objective > 0.0 && objective < 100.0 && ratio.is_finite() && ratio >= 0.0) {
        return None;
    }
    let budget = 1.0 - objective / 100.0;
    Some(100.0 * (1.0 - ratio / budget))
}

/// Decides from a reading of `query` (the error ratio, or why there is none): `Ok` with a
/// description when at least `floor` percent remains, else `Err` with the reason to refuse or
/// abort.
pub fn judge(eb: &ErrorBudget, ratio: Result<f64, String>) -> Result<String, String> {
    let objective = eb.objective.value;
    let floor = eb.floor.value;
    let ratio = ratio.map_err(|e| format!("error budget unknown: {e}"))?;
    let Some(left) = remaining_percent(ratio, objective) else {
        return Err(format!(
            "error budget unknown: the query returned {ratio}, not an error ratio"
        ));
    };
    // Shown clamped: "-340 % remaining" says nothing "0 %" does not.
    let shown = left.max(0.0);
    let detail = format!("error ratio {ratio:.6} against objective {objective}%");
    if left < floor {
        Err(format!(
            "error budget {shown:.1}% remaining, below the floor of {floor}% ({detail})"
        ))
    } else {
        Ok(format!(
            "error budget {shown:.1}% remaining, floor {floor}% ({detail})"
        ))
    }
}
