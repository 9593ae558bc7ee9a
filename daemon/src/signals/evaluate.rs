//! SLO arithmetic: the PromQL each SLO asks, and its threshold or multiwindow burn-rate rule
//! applied to the answers (pure: samples in, verdict out).

use std::collections::HashMap;
use std::time::Duration;

use failover_probes::Outcome;

use crate::playbook::{SloSpec, WINDOW_PLACEHOLDER};

use super::*;

/// Formats a window the way PromQL writes durations (`30s`, `5m`, `1h30m`).
pub fn promql_duration(d: Duration) -> String {
    let mut secs = d.as_secs().max(1);
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    out
}

/// The query for one window of a ratio SLO expression.
pub fn windowed(expr: &str, window: Duration) -> String {
    expr.replace(WINDOW_PLACEHOLDER, &promql_duration(window))
}

/// Every query an SLO needs: (expression, empty-is-zero).
pub fn queries(slo: &SloSpec) -> Vec<(String, bool)> {
    if let Some(p) = &slo.prometheus {
        return vec![(p.query.value.clone(), false)];
    }
    let Some(r) = &slo.ratio else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in &r.burn_rates {
        for w in [b.long.get(), b.short.get()] {
            // No error series at all is zero errors; no *total* series is no data.
            let e = (windowed(&r.errors.value, w), true);
            let t = (windowed(&r.total.value, w), false);
            for q in [e, t] {
                if !out.contains(&q) {
                    out.push(q);
                }
            }
        }
    }
    out
}

/// The verdict of one evaluation, with the values that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Healthy, Unhealthy(explanation) or Unknown(reason).
    pub outcome: Outcome,
    /// The values seen, e.g. "error ratio 0.31 over 5m and 0.22 over 1h (limit 14.4 × 0.001)".
    pub detail: String,
    /// Bounded reason label when Unknown.
    pub unknown_label: Option<&'static str>,
}

pub(super) fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.01 && x.abs() < 1e6 {
        format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.3e}")
    }
}

/// Judges an SLO from query results (pure).
pub fn evaluate(
    slo: &SloSpec,
    results: &HashMap<String, Result<Sample, QueryError>>,
) -> Evaluation {
    let get = |q: &str| {
        results
            .get(q)
            .cloned()
            .unwrap_or(Err(QueryError::Malformed("not queried".into())))
    };
    if let Some(p) = &slo.prometheus {
        return match get(&p.query.value) {
            Err(e) => unknown(&e, "query"),
            // ±Inf would compare as a breach or as healthy depending on its sign and the
            // threshold's direction: neither is a measurement.
            Ok(s) if !s.value.is_finite() => unknown(&QueryError::NotFinite(s.value), "query"),
            Ok(s) => {
                let (breach, cmp, limit) = match (p.above, p.below) {
                    (Some(a), _) => (s.value > a, "above", a),
                    (_, Some(b)) => (s.value < b, "below", b),
                    _ => (false, "?", f64::NAN),
                };
                let detail = format!(
                    "value {} ({} {cmp} {})",
                    fmt_num(s.value),
                    if breach { "is" } else { "not" },
                    fmt_num(limit)
                );
                Evaluation {
                    outcome: if breach {
                        Outcome::Unhealthy(detail.clone())
                    } else {
                        Outcome::Healthy
                    },
                    detail,
                    unknown_label: None,
                }
            }
        };
    }
    let Some(r) = &slo.ratio else {
        return Evaluation {
            outcome: Outcome::Unknown("no SLO form".into()),
            detail: String::new(),
            unknown_label: Some("malformed"),
        };
    };
    evaluate_ratio(r, &get)
}
