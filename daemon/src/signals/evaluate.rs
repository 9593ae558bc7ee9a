//! SLO arithmetic: the PromQL each SLO asks, and its threshold or multiwindow burn-rate rule
//! applied to the answers (pure: samples in, verdict out).

use std::collections::HashMap;
use std::time::Duration;

use failover_probes::Outcome;

use crate::playbook::{RatioSlo, SloSpec, WINDOW_PLACEHOLDER};

use super::prometheus::{QueryError, Sample};

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

pub(super) fn unknown(e: &QueryError, what: &str) -> Evaluation {
    Evaluation {
        outcome: Outcome::Unknown(format!("{what}: {e}")),
        detail: String::new(),
        unknown_label: Some(e.label()),
    }
}

pub(super) fn evaluate_ratio(
    r: &RatioSlo,
    get: &dyn Fn(&str) -> Result<Sample, QueryError>,
) -> Evaluation {
    let budget = 1.0 - r.objective / 100.0;
    // Rates are finite and non-negative; anything else (±Inf, a negative rate from a foreign
    // expression) is no reading, so Unknown: `errors / +Inf` would read as 0, i.e. healthy.
    let rate = |q: String| -> Result<f64, QueryError> {
        let v = get(&q)?.value;
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(QueryError::NotFinite(v))
        }
    };
    let ratio = |w: Duration| -> Result<f64, QueryError> {
        let errors = rate(windowed(&r.errors.value, w))?;
        let total = rate(windowed(&r.total.value, w))?;
        // No traffic in the window: nothing failed.
        let ratio = if total == 0.0 { 0.0 } else { errors / total };
        if ratio.is_finite() {
            Ok(ratio)
        } else {
            Err(QueryError::NotFinite(ratio))
        }
    };
    let mut parts = Vec::new();
    let mut first_unknown: Option<Evaluation> = None;
    let mut breach: Option<String> = None;
    for b in &r.burn_rates {
        let (long, short) = (ratio(b.long.get()), ratio(b.short.get()));
        let limit = b.factor * budget;
        match (long, short) {
            (Ok(l), Ok(s)) => {
                let text = format!(
                    "error ratio {} over {} and {} over {} (limit {} × {})",
                    fmt_num(s),
                    promql_duration(b.short.get()),
                    fmt_num(l),
                    promql_duration(b.long.get()),
                    fmt_num(b.factor),
                    fmt_num(budget)
                );
                if l > limit && s > limit && breach.is_none() {
                    breach = Some(format!("{text}: both windows above"));
                }
                parts.push(text);
            }
            (Err(e), _) | (_, Err(e)) => {
                first_unknown.get_or_insert_with(|| {
                    unknown(
                        &e,
                        &format!(
                            "burn rate {}/{}",
                            promql_duration(b.long.get()),
                            promql_duration(b.short.get())
                        ),
                    )
                });
            }
        }
    }
    let detail = parts.join("; ");
    match (breach, first_unknown) {
        (Some(b), _) => Evaluation {
            outcome: Outcome::Unhealthy(b),
            detail,
            unknown_label: None,
        },
        (None, Some(mut u)) => {
            u.detail = detail;
            u
        }
        (None, None) => Evaluation {
            outcome: Outcome::Healthy,
            detail,
            unknown_label: None,
        },
    }
}
