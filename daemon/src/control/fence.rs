//! The fence as the engine reads it: one `Policy` observation per target of a fenced
//! playbook, judged from the mesh view (where the target is, and whether the mesh keeps it
//! encrypted), refreshed whenever the view changes.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use crate::config::FenceConfig;
use crate::engine::{Health, Observation, SignalKind};
use crate::mesh::{Fence, Snapshot, judge};
use crate::playbook::{Playbook, Target};
use failoverd_core::residency::qualify;

/// The signal name of the fence's observations (in `why`, the API and the audit `inputs`).
pub const SIGNAL: &str = "residency-policy";

/// The fence in force for `pb`: the daemon's allowed set narrowed by the playbook's own, and
/// the mTLS rule. Inactive for an unfenced playbook.
pub fn fence_of(pb: &Playbook, daemon: &FenceConfig) -> Fence {
    if !pb.fenced {
        return Fence::default();
    }
    Fence {
        allowed: pb
            .allowed_jurisdictions(daemon.allowed.as_deref())
            .map(|v| v.into_iter().collect::<BTreeSet<String>>()),
        require_strict_mtls: daemon.strict_mtls_for(pb),
    }
}

/// One observation per destination (primary, then each failover target) of a fenced
/// playbook; none for an unfenced one. Until the view is read, every target is refused.
pub fn policy_observations(
    pb: &Playbook,
    fence: &Fence,
    snap: &Snapshot,
    now: Timestamp,
) -> Vec<Observation> {
    if !pb.fenced {
        return Vec::new();
    }
    let targets = std::iter::once((Target::Primary, &pb.spec.primary)).chain(
        pb.spec
            .failover
            .value
            .iter()
            .enumerate()
            .map(|(i, d)| (Target::Failover(i), d)),
    );
    targets
        .map(|(target, dest)| {
            let (health, detail) = if !snap.synced {
                let why = snap
                    .error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(": {e}"));
                (
                    Health::Unhealthy(format!(
                        "residency: the cluster's namespaces and mesh policies are not read yet{why}"
                    )),
                    String::new(),
                )
            } else {
                let subset = dest.subset.as_ref().map(|s| s.value.as_str());
                // A short name means a Service in the VirtualService's namespace, as Istio reads it.
                let host = qualify(&dest.host.value, &pb.spec.virtual_service.namespace);
                let v = judge(&snap.view, &host, subset, fence);
                let where_ = v.jurisdiction.as_deref().unwrap_or("unknown");
                let detail = format!("jurisdiction {where_}; {}", v.detail);
                match v.violation {
                    Some(rule) => (Health::Unhealthy(rule), detail),
                    None => (Health::Healthy, detail),
                }
            };
            Observation {
                signal: SIGNAL.into(),
                kind: SignalKind::Policy,
                target,
                health,
                streak: 1,
                streak_since: now,
                at: now,
                // Never stale: the view is pushed, not polled (the engine ignores the age of
                // a Policy observation anyway).
                max_age: Duration::from_secs(24 * 3600),
                detail,
            }
        })
        .collect()
}
