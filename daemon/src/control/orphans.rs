//! Drills the last leader was running when it died: ended by this replica once their
//! routes are read again (split from `commands.rs`, whose operator path they use).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::audit::AuditLog;
use crate::engine::Actor;
use crate::overrides::{OverrideKind, OverrideRecord};
use crate::shared::{Clock, Control, ControlKind, Shared};

use super::commands::{Book, handle_control_in};
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
