//! Checks on operator commands before they are accepted.

use jiff::Timestamp;

use crate::playbook::{Playbook, Target};

use super::types::Observation;
use super::verdicts::{describe, first_healthy_target, verdict};

/// Checks an operator failover before it is accepted: the target must exist and, unless
/// forced, be known healthy. Returns the resolved target index.
pub fn check_operator_failover(
    pb: &Playbook,
    obs: &[Observation],
    target: Option<usize>,
    force: bool,
    now: Timestamp,
) -> Result<usize, String> {
    let n = pb.spec.failover.value.len();
    match target {
        Some(t) if t >= n => Err(format!("failover[{t}] does not exist ({n} failover targets)")),
        Some(t) => {
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
        None => first_healthy_target(pb, obs, now, None).ok_or_else(|| {
            "no failover target is known healthy; name one with target and force to route there anyway"
                .to_string()
        }),
    }
}
