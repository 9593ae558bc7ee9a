//! The override set over time: drill holds left by a stopped replica, the set found in the
//! cluster on takeover, publishing it to the status table, and expiry.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::Actor;
use crate::notify::EventKind;
use crate::overrides::{OverrideKind, OverrideRecord, OverrideStore, kept};
use crate::shared::{Clock, Control, ControlKind, Shared};

use super::commands::{Book, handle_control_in, publish_overrides};
use super::recording::audit;
use super::{Guarded, Job};

/// A failover hold placed by a drill (its actor is `drill:<name>`).
pub(super) fn is_drill_hold(r: &OverrideRecord) -> bool {
    r.kind == OverrideKind::Failover && r.actor.starts_with(crate::drill::ACTOR_PREFIX)
}

/// Ends drills the last leader was running (see `orphaned_drills` in [`run`]): a failback as
/// the drill would have made it, once the playbook's route has been read again; when the
/// primary is not healthy enough for that (or the route is already back), the drill's hold
/// is released and the engine decides as after any hold. Names still waiting for their
/// route stay in `names`.
pub(super) async fn end_orphaned_drills(
    names: &mut Vec<String>,
    guarded: &mut [Guarded],
    store: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let mut waiting = Vec::new();
    for name in std::mem::take(names) {
        // Not while another change is being kept: a refusal must be seen at once below.
        let ready = !store.keeping
            && guarded
                .iter()
                .any(|g| g.pb.name() == name && g.state.is_some() && !g.pending);
        if !ready {
            waiting.push(name);
            continue;
        }
        let holds: Vec<OverrideRecord> = store
            .all()
            .iter()
            .filter(|r| r.playbook == name && is_drill_hold(r))
            .cloned()
            .collect();
        let Some(first) = holds.first() else {
            continue;
        };
        let actor = Actor {
            identity: first.actor.clone(),
            reason: "the drill ran on the previous leader, which is gone; ended on takeover".into(),
        };
        warn!(playbook = %name, drill = %first.actor, "a drill from the previous leader holds this playbook; failing back");
        let (tx, mut rx) = oneshot::channel();
        let failback = Control {
            playbook: Some(name.clone()),
            kind: ControlKind::Failback { force: false },
            actor: actor.clone(),
            reply: tx,
            traceparent: crate::trace::traceparent(&tracing::Span::current()),
        };
        handle_control_in(failback, guarded, store, log, jobs, shared, clock).await;
        // A refusal is answered at once; an accepted failback answers after its write.
        if let Ok(Err(refused)) = rx.try_recv() {
            info!(playbook = %name, reason = %refused.error, "no failback now; releasing the drill's hold instead");
            for h in holds {
                let (tx, _rx) = oneshot::channel();
                let release = Control {
                    playbook: None,
                    kind: ControlKind::DeleteOverride { id: h.id },
                    actor: actor.clone(),
                    reply: tx,
                    traceparent: crate::trace::traceparent(&tracing::Span::current()),
                };
                handle_control_in(release, guarded, store, log, jobs, shared, clock).await;
            }
        }
    }
    *names = waiting;
}

/// On takeover: merges this replica's overrides with the ones the cluster keeps, by id (a
/// freeze acknowledged by the old leader holds here; one it deleted does not come back), and
/// audits what was adopted.
pub(super) async fn adopt_cluster_overrides(
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
    clock: &Clock,
) {
    let outcome = match shared.kept_overrides.as_ref() {
        None => format!(
            "no overrides kept in the cluster; this replica's own {} stand",
            store.all().len()
        ),
        Some(cluster) => match cluster.load().await {
            Err(e) => format!("failed: cannot read the cluster's overrides: {e}"),
            Ok(kept) => {
                let now = clock.now();
                let merged = kept::merge(store.all(), &kept, now);
                let n = merged.records.len();
                let mut outcome =
                    format!("adopted {n} override(s) kept in the cluster by the last leader");
                if !merged.dropped.is_empty() {
                    outcome.push_str(&format!(
                        "; dropped {} this replica still had but the cluster had deleted ({})",
                        merged.dropped.len(),
                        merged.dropped.join(", ")
                    ));
                }
                if !kept.problems.is_empty() {
                    error!(problems = ?kept.problems, "kept overrides that cannot be read were ignored");
                    outcome.push_str(&format!(
                        "; ignored {} unreadable: {}",
                        kept.problems.len(),
                        kept.problems.join("; ")
                    ));
                }
                if !merged.write_back.is_empty() {
                    let change = kept::Change {
                        upsert: merged.write_back.clone(),
                        delete: Vec::new(),
                        by: "failoverd".into(),
                    };
                    match cluster
                        .keep(&change, now, || shared.leader.is_leader())
                        .await
                    {
                        Ok(()) => outcome.push_str(&format!(
                            "; kept {} of this replica's own in the cluster",
                            change.upsert.len()
                        )),
                        Err(e) => {
                            error!(error = %e, "cannot keep this replica's own overrides in the cluster");
                            outcome.push_str(&format!(
                                "; {} of this replica's own are not kept in the cluster: {e}",
                                change.upsert.len()
                            ));
                        }
                    }
                }
                if let Err(e) = store.replace_kept(merged.records) {
                    error!(error = %e, "cannot write the adopted overrides to the state file; in force from memory");
                    outcome.push_str(&format!("; state file not written: {e}"));
                }
                outcome
            }
        },
    };
    publish_overrides(store, shared);
    if outcome.starts_with("failed") {
        error!("{outcome}; keeping this replica's own overrides");
    } else {
        info!("{outcome}");
    }
    if let Err(e) = audit(
        log,
        Entry {
            actor: "failoverd".into(),
            action: "takeover".into(),
            reason: "became the leader".into(),
            outcome,
            ..Entry::default()
        },
    )
    .await
    {
        shared.metrics.audit_errors.inc();
        error!(error = %e, "audit append failed");
    }
}

/// Drops overrides whose time is up, auditing each; true when any expired.
pub(super) async fn expire_overrides(
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
    clock: &Clock,
) -> bool {
    let now = clock.now();
    let (expired, keep): (Vec<_>, Vec<_>) =
        store.all().iter().cloned().partition(|r| r.until <= now);
    if expired.is_empty() {
        return false;
    }
    if let Err(e) = store.replace(keep) {
        error!(error = %e, "cannot persist override expiry; will retry");
        return false;
    }
    for r in expired {
        info!(playbook = %r.playbook, id = %r.id, kind = ?r.kind, "override expired; automation takes over");
        if let Some(idx) = shared.index(&r.playbook) {
            let msg = format!(
                "{:?} override {} by {} ended; automation takes over",
                r.kind, r.id, r.actor
            );
            shared.event(
                idx,
                EventKind::OverrideExpired,
                None,
                None,
                &msg,
                Value::Null,
                "failoverd",
            );
        }
        let entry = Entry {
            actor: "failoverd".into(),
            action: "override-expired".into(),
            playbook: r.playbook.clone(),
            reason: format!(
                "{:?} override {} by {} ended ({})",
                r.kind, r.id, r.actor, r.reason
            ),
            inputs: serde_json::to_value(&r).unwrap_or(Value::Null),
            outcome: "noted".into(),
            ..Entry::default()
        };
        if let Err(e) = audit(log, entry).await {
            shared.metrics.audit_errors.inc();
            error!(error = %e, "audit append failed");
        }
    }
    true
}
