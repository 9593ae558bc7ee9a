//! A fault drill's fault through the single writer: the controller checks, at apply time,
//! that the playbook may take a fault (on its primary, in normal operation, no write in
//! flight, no freeze or hold); the writer then writes it in the VirtualService's lane, the
//! same lane as the playbook's moves, with an intent record before and an outcome record
//! (naming the intent) after, reading the object back. Removal is never refused: a fault
//! is always taken out, whatever the playbook's state.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::{Actor, Phase, Routing};
use crate::overrides::OverrideRecord;
use crate::playbook::Playbook;
use crate::routing::RoutingStore;
use crate::routing::fault::FaultEdit;
use crate::shared::{ControlReply, ControlResult, Shared, refuse};

use super::recording::{audit_owed, audit_record};
use super::{Guarded, Job, WRITE_TIMEOUT};

/// A fault edit on its way to its lane; the caller is answered from the lane.
pub(super) struct FaultJob {
    pb: Arc<Playbook>,
    edit: FaultEdit,
    actor: Actor,
    reply: oneshot::Sender<ControlResult>,
    traceparent: Option<String>,
}

impl FaultJob {
    /// The VirtualService whose lane writes it.
    pub(super) fn object(&self) -> String {
        self.pb.spec.virtual_service.to_string()
    }
}

/// Why a fault may not be written to this playbook now (None: it may). Checked in the
/// controller when the command applies, not only by the drill runner before it asks.
pub(super) fn refusal(g: &Guarded, overrides: &[OverrideRecord], now: Timestamp) -> Option<String> {
    refusal_of(g.pb.name(), g.state.as_ref(), g.pending, overrides, now)
}

/// [`refusal`] on plain values.
fn refusal_of(
    name: &str,
    state: Option<&crate::engine::State>,
    pending: bool,
    overrides: &[OverrideRecord],
    now: Timestamp,
) -> Option<String> {
    let Some(state) = state else {
        return Some(format!(
            "playbook `{name}` is inactive: its VirtualService could not be read"
        ));
    };
    if state.routing != Routing::Primary || !matches!(state.phase, Phase::Normal) {
        return Some(format!(
            "playbook `{name}` is not in normal operation on its primary ({}, {}): no fault is written to a playbook failed over or failing",
            state.phase.name(),
            state.routing
        ));
    }
    if pending {
        return Some(format!("playbook `{name}` has a routing write in flight"));
    }
    if let Some(r) = overrides
        .iter()
        .find(|r| r.playbook == name && r.until > now)
    {
        return Some(format!(
            "playbook `{name}` has an operator {:?} override ({}, by {}): no fault is written to a frozen or held playbook",
            r.kind, r.id, r.actor
        ));
    }
    None
}

/// Applies a fault command: refused (409, audited) when a fault may not be written; else
/// handed to the playbook's lane, which answers the caller.
#[allow(clippy::too_many_arguments)]
pub(super) async fn request(
    edit: FaultEdit,
    g: &Guarded,
    overrides: &[OverrideRecord],
    now: Timestamp,
    actor: Actor,
    reply: oneshot::Sender<ControlResult>,
    traceparent: Option<String>,
    jobs: &mpsc::Sender<Job>,
) {
    if matches!(edit, FaultEdit::Add { .. })
        && let Some(why) = refusal(g, overrides, now)
    {
        let entry = Entry {
            traceparent,
            actor: actor.identity.clone(),
            action: edit.action().into(),
            playbook: g.pb.name().to_string(),
            reason: actor.reason.clone(),
            inputs: inputs(&edit),
            outcome: format!("refused: {why}"),
            ..Entry::default()
        };
        let _ = jobs.send(Job::Audit(Box::new(entry))).await;
        let _ = reply.send(Err(refuse(409, why)));
        return;
    }
    let job = FaultJob {
        pb: g.pb.clone(),
        edit,
        actor,
        reply,
        traceparent,
    };
    if let Err(mpsc::error::SendError(Job::Fault(job))) = jobs.send(Job::Fault(Box::new(job))).await
    {
        let _ = job.reply.send(Err(refuse(
            503,
            "failoverd's routing writer is gone; nothing was written",
        )));
    }
}

fn inputs(edit: &FaultEdit) -> Value {
    match edit {
        FaultEdit::Add { run, inject } => json!({
            "run": run,
            "fault": inject.fault(),
            "scope": inject.scope.value,
            "route": crate::routing::fault::drill_route_name(run),
        }),
        FaultEdit::Remove => json!({ "remove": "every failoverd-drill-* route and drill fault" }),
    }
}

/// The writer's side: intent, the store's write awaited to its real end, outcome; the
/// caller is answered with what the store did. A removal that finds no fault writes and
/// records nothing.
pub(super) async fn write_fault(
    job: Box<FaultJob>,
    store: &dyn RoutingStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
) {
    let FaultJob {
        pb,
        edit,
        actor,
        reply,
        traceparent,
    } = *job;
    let name = pb.name().to_string();
    if !shared.leader.is_leader() {
        let _ = reply.send(Err(refuse(
            503,
            "this replica is not the leader: nothing was written",
        )));
        return;
    }
    if matches!(edit, FaultEdit::Remove)
        && let Ok(found) = store.faults(&pb).await
        && found.is_empty()
    {
        let _ = reply.send(Ok(ControlReply {
            message: "no drill fault to remove".into(),
            override_id: None,
            routing: None,
            written: false,
        }));
        return;
    }
    let entry = |outcome: String, before: Value, after: Value, intent: Option<u64>| {
        let mut inputs = inputs(&edit);
        if let Some(seq) = intent {
            inputs["intentSeq"] = json!(seq);
        }
        Entry {
            traceparent: traceparent.clone(),
            actor: actor.identity.clone(),
            action: edit.action().into(),
            playbook: name.clone(),
            reason: actor.reason.clone(),
            inputs,
            before,
            after,
            outcome,
        }
    };
    let intent = match audit_record(log, entry("intent".into(), Value::Null, Value::Null, None))
        .await
    {
        Ok(r) => r.seq,
        Err(e) => {
            shared.metrics.audit_errors.inc();
            // Not an error line per attempt: the drill runner retries every 250 ms and the
            // log's refusal is announced once per episode (`audit_watch`); the caller gets
            // the reason in its answer.
            debug!(playbook = %name, error = %e, "audit append failed; drill fault not written");
            let _ = reply.send(Err(refuse(
                503,
                format!("nothing was written: no write without its audit record, and {e}"),
            )));
            return;
        }
    };
    // Never dropped while it may still land (as for moves): awaited to its real end.
    let result = {
        let write = store.write_fault(&pb, &edit);
        tokio::pin!(write);
        loop {
            match tokio::time::timeout(WRITE_TIMEOUT, &mut write).await {
                Ok(r) => break r,
                Err(_) => {
                    warn!(playbook = %name, action = edit.action(), "drill fault write still in flight; waiting for its real outcome")
                }
            }
        }
    };
    let (outcome, answer) = match result {
        Ok(out) => {
            let word = if out.changed { "written" } else { "unchanged" };
            info!(playbook = %name, action = edit.action(), outcome = word, "drill fault");
            (
                entry(word.into(), out.before, out.after, Some(intent)),
                Ok(ControlReply {
                    message: format!("{}: {word}", edit.action()),
                    override_id: None,
                    routing: None,
                    written: out.changed,
                }),
            )
        }
        Err(e) => {
            error!(playbook = %name, action = edit.action(), error = %e, "drill fault write failed");
            let status = if e.is_retryable() { 503 } else { 409 };
            (
                entry(
                    format!("failed: {e}"),
                    Value::Null,
                    Value::Null,
                    Some(intent),
                ),
                Err(refuse(status, format!("{}: {e}", edit.action()))),
            )
        }
    };
    let answer = match (audit_owed(log, outcome).await, answer) {
        (Ok(()), a) => a,
        (Err(e), Ok(mut r)) => {
            shared.metrics.audit_errors.inc();
            r.message = format!(
                "{}, but NOT yet recorded in the audit log (kept, written first once it takes appends): {e}",
                r.message
            );
            Ok(r)
        }
        (Err(_), a) => a,
    };
    let _ = reply.send(answer);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::State;
    use crate::overrides::OverrideKind;

    fn record(kind: OverrideKind, until: Timestamp) -> OverrideRecord {
        OverrideRecord {
            id: "ov-1".into(),
            playbook: "web".into(),
            kind,
            actor: "alice@oncall".into(),
            reason: "change freeze".into(),
            created: Timestamp::UNIX_EPOCH,
            until,
            target: None,
            force: false,
            break_glass: None,
        }
    }

    /// A fault is written only on a playbook in normal operation on its primary, with no
    /// write in flight and no live freeze or hold; an expired override does not count.
    #[test]
    fn fault_only_on_a_normal_unheld_playbook() {
        let now: Timestamp = "2026-12-05T12:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-12-05T13:00:00Z".parse().unwrap();
        let earlier: Timestamp = "2026-12-05T11:00:00Z".parse().unwrap();
        let normal = State::default();
        assert_eq!(normal.routing, Routing::Primary);
        assert!(matches!(normal.phase, Phase::Normal));
        assert_eq!(refusal_of("web", Some(&normal), false, &[], now), None);
        assert!(
            refusal_of("web", None, false, &[], now)
                .unwrap()
                .contains("inactive")
        );
        assert!(
            refusal_of("web", Some(&normal), true, &[], now)
                .unwrap()
                .contains("in flight")
        );
        let failed_over = State {
            routing: Routing::Failover { target: 0 },
            phase: Phase::FailedOver {
                target: 0,
                since: earlier,
            },
            ..State::default()
        };
        assert!(
            refusal_of("web", Some(&failed_over), false, &[], now)
                .unwrap()
                .contains("not in normal operation")
        );
        let suspect = State {
            phase: Phase::Suspect { since: earlier },
            ..State::default()
        };
        assert!(refusal_of("web", Some(&suspect), false, &[], now).is_some());
        for kind in [OverrideKind::Freeze, OverrideKind::Failover] {
            let live = [record(kind, later)];
            assert!(
                refusal_of("web", Some(&normal), false, &live, now)
                    .unwrap()
                    .contains("frozen or held"),
                "{kind:?}"
            );
            let expired = [record(kind, earlier)];
            assert_eq!(refusal_of("web", Some(&normal), false, &expired, now), None);
            let other = [OverrideRecord {
                playbook: "other".into(),
                ..record(kind, later)
            }];
            assert_eq!(refusal_of("web", Some(&normal), false, &other, now), None);
        }
    }
}
