//! Checks on operator commands before they are accepted.

use jiff::Timestamp;

use crate::playbook::{Playbook, Target};

use super::types::Observation;
use super::verdicts::{describe, fence, first_healthy_target, verdict};

/// Checks an operator failover before it is accepted: the target must exist, be inside
/// its fence (residency and mesh policy) unless a break-glass was approved, and, unless
/// forced, be known healthy. Returns the resolved target index.
pub fn check_operator_failover(
    pb: &Playbook,
    obs: &[Observation],
    target: Option<usize>,
    force: bool,
    break_glass: bool,
    now: Timestamp,
) -> Result<usize, String> {
    let n = pb.spec.failover.value.len();
    match target {
        Some(t) if t >= n => Err(format!("failover[{t}] does not exist ({n} failover targets)")),
        Some(t) if !break_glass => {
            if let Some(rule) = fence(pb, obs, Target::Failover(t)) {
                return Err(format!(
                    "failover[{t}] is refused by {rule}; force cannot override it (a break-glass approved by a second admin can)"
                ));
            }
            check_health(pb, obs, t, force, now)
        }
        // An approved break-glass is a forced move past the fence.
        Some(t) => Ok(t),
        None => first_healthy_target(pb, obs, now, None).ok_or_else(|| {
            "no failover target is known healthy; name one with target and force to route there anyway"
                .to_string()
        }),
    }
}

fn check_health(
    pb: &Playbook,
    obs: &[Observation],
    t: usize,
    force: bool,
    now: Timestamp,
) -> Result<usize, String> {
    let v = verdict(pb, obs, Target::Failover(t), now);
    if v.is_healthy() || force {
        Ok(t)
    } else {
        Err(format!(
            "failover[{t}] is not known healthy ({}); use force to route there anyway",
            describe(&v)
        ))
    }
}
