//! The fence as the engine reads it: one `Policy` observation per target of a fenced
//! playbook, judged from the mesh view (where the target is, and whether the mesh keeps it
//! encrypted), refreshed whenever the view changes.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use crate::config::FenceConfig;
use crate::engine::{Health, Observation, SignalKind};
use crate::mesh::{Fence, Snapshot, judge_destination};
use crate::playbook::Playbook;

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
    pb.destinations()
        .map(|(target, dest)| {
            let (health, detail) = if !snap.synced {
                let why = snap
                    .error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(": {e}"));
                (
                    Health::Unknown(format!(
                        "residency: the cluster's namespaces and mesh policies are not read yet{why}"
                    )),
                    String::new(),
                )
            } else {
                let v = judge_destination(&snap.view, pb, dest, fence);
                let where_ = v.jurisdiction.as_deref().unwrap_or("unknown");
                let detail = format!("jurisdiction {where_}; {}", v.detail);
                match v.violation {
                    Some(rule) if missing_facts(&rule) => (Health::Unknown(rule), detail),
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

/// True when a violation says the facts are missing (no label, an object that could not be
/// read) rather than that they break the fence: the target is refused all the same, but the
/// engine never moves traffic *off* a target on missing facts alone.
fn missing_facts(rule: &str) -> bool {
    rule.starts_with("residency: jurisdiction unknown")
        || rule.contains("could not be read")
        || rule.starts_with("policy: no ServiceEntry lists")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use crate::mesh::judge;

    use super::*;

    /// Pins the verdict texts `missing_facts` reads: a wording change in `judge` fails here.
    #[test]
    fn missing_facts_are_told_from_breaches() {
        let fence = Fence {
            allowed: Some(["ID".to_string()].into_iter().collect()),
            require_strict_mtls: true,
        };
        let mut view = crate::mesh::ClusterView::default();
        for o in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sg", "labels": {"failoverd.dev/jurisdiction": "SG"}}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nolabel"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "id", "labels": {"failoverd.dev/jurisdiction": "ID"}}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "default", "namespace": "id"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}}),
        ] {
            view.insert(&o).unwrap();
        }
        let rule = |host: &str| judge(&view, host, None, &fence).violation.unwrap();
        assert!(!missing_facts(&rule("a.sg.svc.cluster.local")));
        assert!(missing_facts(&rule("a.nolabel.svc.cluster.local")));
        assert!(missing_facts(&rule("a.absent.svc.cluster.local")));
        assert!(missing_facts(&rule("external.example.com")));
        assert!(!missing_facts(&rule("a.id.svc.cluster.local")));
    }
}
