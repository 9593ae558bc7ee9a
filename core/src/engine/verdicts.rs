//! Reading a target from its signals: the verdict, the staleness budget and the first
//! healthy failover target.

use std::time::Duration as StdDuration;

use jiff::Timestamp;

use crate::playbook::{OnMissing, Playbook, Target};

use super::types::{Health, Observation, SignalKind, Verdict};

pub(super) fn elapsed(now: Timestamp, since: Timestamp) -> StdDuration {
    let d = now.duration_since(since);
    if d.is_negative() {
        StdDuration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// How old a signal's latest result may be before it reads as Unknown: three missed
/// intervals plus the attempt's timeout. Saturating: the durations come from a playbook.
pub fn stale_after(interval: StdDuration, timeout: StdDuration) -> StdDuration {
    interval.saturating_mul(3).saturating_add(timeout)
}

/// The residency or mesh-policy rule that keeps traffic off `target`, if any. Only for a
/// fenced playbook (`Playbook::fenced`): every target then needs `Policy` observations, and
/// one without any is refused too (its jurisdiction and policy are unknown, which is outside
/// every fence). Unfenced playbooks ignore `Policy` observations.
pub fn fence(pb: &Playbook, obs: &[Observation], target: Target) -> Option<String> {
    match fence_health(pb, obs, target)? {
        Health::Healthy => None,
        Health::Unhealthy(r) | Health::Unknown(r) => Some(r),
    }
}

/// The fence's word on `target`: None when unfenced; `Unhealthy` for a known breach (a
/// jurisdiction outside the set, a PERMISSIVE namespace); `Unknown` when the facts are
/// missing (not read yet, no label), which refuses the target too.
fn fence_health(pb: &Playbook, obs: &[Observation], target: Target) -> Option<Health> {
    if !pb.fenced {
        return None;
    }
    let mut seen = None;
    for o in obs
        .iter()
        .filter(|o| o.target == target && o.kind == SignalKind::Policy)
    {
        match &o.health {
            Health::Healthy => seen = seen.or(Some(Health::Healthy)),
            h @ Health::Unhealthy(_) => return Some(h.clone()),
            h @ Health::Unknown(_) => seen = Some(h.clone()),
        }
    }
    Some(seen.unwrap_or_else(|| {
        Health::Unknown(format!(
            "residency: the jurisdiction and mesh policy of {target} are not known"
        ))
    }))
}

/// Reads one target from its signals and its fence. A known breach of the fence reads as
/// unhealthy (with the rule as the reason), whatever the probes say: automation moves off it
/// and never onto it. Facts that are missing never read as healthy: a target its signals
/// call healthy reads unknown (never chosen, and no move is made on that alone), while one
/// its signals call failing keeps that verdict (a dead primary is still left).
pub fn verdict(pb: &Playbook, obs: &[Observation], target: Target, now: Timestamp) -> Verdict {
    match fence_health(pb, obs, target) {
        Some(Health::Unhealthy(reason)) => Verdict::Unhealthy { reason },
        Some(Health::Unknown(reason)) => match signals_verdict(pb, obs, target, now) {
            Verdict::Healthy { .. } => Verdict::Unknown { reason },
            v => v,
        },
        _ => signals_verdict(pb, obs, target, now),
    }
}

/// Reads one target from its probes and SLOs.
fn signals_verdict(pb: &Playbook, obs: &[Observation], target: Target, now: Timestamp) -> Verdict {
    let threshold = pb.spec.trigger.failure_threshold.value.max(1);
    let for_ = pb.spec.trigger.for_.get();
    // onMissing=failover reads missing data on the primary as failing; a failover target is
    // never chosen on missing data, whatever the playbook says.
    let missing = match (pb.spec.on_missing, target) {
        (OnMissing::Failover, Target::Failover(_)) => OnMissing::Hold,
        (m, _) => m,
    };
    // An SLO breach alone may need a failing probe on the same target to count.
    let corroborate = pb.spec.trigger.require_probe_corroboration;
    let probe_failing = obs.iter().any(|o| {
        o.target == target
            && o.kind == SignalKind::Probe
            && matches!(o.health, Health::Unhealthy(_))
            && elapsed(now, o.at) <= o.max_age
    });
    let mut healthy_since: Option<Timestamp> = None;
    let mut suspect: Option<String> = None;
    let mut unknown: Option<String> = None;
    let mut seen = 0usize;
    for o in obs.iter().filter(|o| {
        o.target == target && !matches!(o.kind, SignalKind::Policy | SignalKind::Vantage)
    }) {
        let stale = elapsed(now, o.at) > o.max_age;
        let health = if stale {
            Health::Unknown(format!(
                "no result for {}",
                humantime::format_duration(round_ms(elapsed(now, o.at)))
            ))
        } else {
            o.health.clone()
        };
        let (health, streak, streak_since) = match (&health, missing) {
            (Health::Unknown(_), OnMissing::Ignore) => continue,
            (Health::Unknown(r), OnMissing::Failover) => (
                Health::Unhealthy(format!("no data ({r})")),
                if stale { threshold } else { o.streak },
                o.streak_since,
            ),
            _ => (health, o.streak, o.streak_since),
        };
        seen += 1;
        match health {
            Health::Healthy => {
                healthy_since = Some(healthy_since.map_or(streak_since, |h| h.max(streak_since)));
            }
            Health::Unhealthy(r) => {
                let lasted = elapsed(now, streak_since);
                let count_ok = o.kind == SignalKind::Slo || streak >= threshold;
                let corroborated = o.kind == SignalKind::Probe || !corroborate || probe_failing;
                if count_ok && lasted >= for_ && corroborated {
                    return Verdict::Unhealthy {
                        reason: format!("{}: {r}", o.signal),
                    };
                }
                if count_ok && lasted >= for_ {
                    suspect.get_or_insert_with(|| {
                        format!("{}: {r} (not corroborated by a failing probe)", o.signal)
                    });
                    continue;
                }
                suspect.get_or_insert_with(|| match o.kind {
                    SignalKind::Probe => format!("{}: {r} ({streak}/{threshold})", o.signal),
                    // Policy and vantage observations never reach this loop (filtered above).
                    SignalKind::Slo | SignalKind::Policy | SignalKind::Vantage => format!(
                        "{}: {r} (for {})",
                        o.signal,
                        humantime::format_duration(round_ms(lasted))
                    ),
                });
            }
            Health::Unknown(r) => {
                unknown.get_or_insert_with(|| format!("{}: {r}", o.signal));
            }
        }
    }
    if let Some(reason) = suspect {
        Verdict::Suspect { reason }
    } else if let Some(reason) = unknown {
        Verdict::Unknown { reason }
    } else if seen == 0 {
        Verdict::Unknown {
            reason: format!("no signal reports on {target}"),
        }
    } else {
        Verdict::Healthy {
            since: healthy_since.unwrap_or(now),
        }
    }
}

pub(super) fn round_ms(d: StdDuration) -> StdDuration {
    // Saturates rather than truncating `as_millis()` (u128) to u64.
    StdDuration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first failover target, in playbook order, that is positively healthy (skipping `except`).
pub fn first_healthy_target(
    pb: &Playbook,
    obs: &[Observation],
    now: Timestamp,
    except: Option<usize>,
) -> Option<usize> {
    (0..pb.spec.failover.value.len())
        .filter(|i| Some(*i) != except)
        .find(|i| verdict(pb, obs, Target::Failover(*i), now).is_healthy())
}

/// One-line description of a verdict.
pub fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Healthy { since } => format!("healthy since {since}"),
        Verdict::Suspect { reason } => format!("suspect: {reason}"),
        Verdict::Unhealthy { reason } => format!("unhealthy: {reason}"),
        Verdict::Unknown { reason } => format!("unknown: {reason}"),
    }
}
