//! A static look at the fence before anything runs: a fenced playbook whose every failover
//! target sits, by the file store's `_cluster/` facts, in a jurisdiction outside its allowed
//! set can never fail over until a namespace is relabelled. That is legal (the facts may be
//! about to change, and the fence refusing is its job), so it is a warning for `validate`
//! and the start-up log, never a problem that refuses the set.

use std::collections::BTreeSet;

use crate::config::{Settings, StoreSpec};
use crate::mesh::{ClusterView, Fence, judge_destination, read_file_store};
use crate::playbook::Loaded;

/// One warning line per fenced playbook (with an allowed set and at least one failover
/// target) whose every failover target has a known jurisdiction outside that set, naming the
/// playbook, its file and each target with its jurisdiction. Empty on the `kubernetes`
/// store (the cluster is not contacted here) and when `_cluster/` cannot be read (the
/// running daemon reports that itself).
pub fn unreachable_targets(settings: &Settings, playbooks: &[Loaded]) -> Vec<String> {
    let StoreSpec::File(dir) = &settings.store else {
        return Vec::new();
    };
    let daemon = settings.fence.allowed.as_deref();
    let fenced = |l: &&Loaded| {
        l.playbook.fenced
            && l.playbook.allowed_jurisdictions(daemon).is_some()
            && !l.playbook.spec.failover.value.is_empty()
    };
    if !playbooks.iter().any(|l| fenced(&l)) {
        return Vec::new();
    }
    let Ok(view) = read_file_store(dir) else {
        return Vec::new();
    };
    playbooks
        .iter()
        .filter(fenced)
        .filter_map(|l| outside_everywhere(l, daemon, &view))
        .collect()
}

/// The warning for `l` if every failover target is known to lie outside its allowed set.
fn outside_everywhere(l: &Loaded, daemon: Option<&[String]>, view: &ClusterView) -> Option<String> {
    let pb = &l.playbook;
    let allowed: BTreeSet<String> = pb.allowed_jurisdictions(daemon)?.into_iter().collect();
    // Residency alone: whether mTLS holds is a matter of the moment, not of where data lives.
    let fence = Fence {
        allowed: Some(allowed.clone()),
        require_strict_mtls: false,
    };
    let mut outside = Vec::new();
    for dest in &pb.spec.failover.value {
        let verdict = judge_destination(view, pb, dest, &fence);
        match verdict.jurisdiction {
            // Unknown is not "statically outside": a missing label may be added any time.
            Some(code) if !allowed.contains(&code) => {
                outside.push(format!("{} ({code})", verdict.host))
            }
            _ => return None,
        }
    }
    Some(format!(
        "{}: playbook `{}`: every failover target is outside its allowed jurisdictions [{}]: {}; it can never fail over until the cluster's facts change",
        l.file.display(),
        pb.name(),
        allowed.into_iter().collect::<Vec<_>>().join(", "),
        outside.join(", ")
    ))
}
