//! Operator commands (the override API, drills, `onDrift: respect`) and the override set: validated
//! and audited here, kept in the cluster and the state file before they are acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::{self, Actor, Command, Routing};
use crate::notify::EventKind;
use crate::overrides::{OverrideKind, OverrideRecord, OverrideStore, kept, new_id};
use crate::playbook::Target;
use crate::shared::{
    Clock, Control, ControlError, ControlKind, ControlReply, ControlResult, Shared, refuse,
};

use super::recording::audit;
use super::step::step;
use super::{Guarded, Job};

#[allow(clippy::too_many_arguments)]
/// An operator command, applied (`handle_control` in `traced.rs` wraps it in its span).
pub(super) async fn handle_control_in(
    msg: Control,
    guarded: &mut [Guarded],
    store: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    if store.keeping {
        // One change at a time is kept, in the order the calls came.
        store.deferred.push_back(msg);
        return;
    }
    let Control {
        playbook,
        kind,
        actor,
        reply,
        traceparent: _,
    } = msg;
    let traceparent = crate::trace::traceparent(&tracing::Span::current());
    if !shared.leader.is_leader() {
        let leader = shared
            .leader
            .holder()
            .unwrap_or_else(|| "not known yet".into());
        let _ = reply.send(Err(refuse(
            503,
            format!("this replica is a standby and does not write; the leader is `{leader}`"),
        )));
        return;
    }
    let now = clock.now();
    let action = kind.action();
    let audit_entry = |playbook: &str, outcome: String, inputs: Value| Entry {
        traceparent: traceparent.clone(),
        actor: actor.identity.clone(),
        action: action.into(),
        playbook: playbook.to_string(),
        reason: actor.reason.clone(),
        inputs,
        outcome,
        ..Entry::default()
    };
    // Resolve the playbook (DeleteOverride finds it through the override).
    let name = match (&kind, &playbook) {
        (ControlKind::DeleteOverride { id }, _) => match store.all().iter().find(|r| &r.id == id) {
            Some(r) => r.playbook.clone(),
            None => {
                let _ = reply.send(Err(refuse(404, format!("no override with id `{id}`"))));
                return;
            }
        },
        (_, Some(p)) => p.clone(),
        (_, None) => {
            let _ = reply.send(Err(refuse(404, "no playbook named")));
            return;
        }
    };
    let Some(idx) = guarded.iter().position(|g| g.pb.name() == name) else {
        let _ = reply.send(Err(refuse(404, format!("no playbook named `{name}`"))));
        return;
    };
    let g = &mut guarded[idx];
    if let ControlKind::DrillFault { edit } = kind {
        super::fault::request(edit.0, g, store.all(), now, actor, reply, traceparent, jobs).await;
        return;
    }
    let inputs = json!({ "request": format!("{kind:?}") });
    let Some(state) = g.state.clone() else {
        let _ = reply.send(Err(refuse(
            409,
            format!("playbook `{name}` is inactive: its VirtualService could not be read"),
        )));
        return;
    };
    // A drill's failover is re-checked here, in the one controller, so an incident cannot
    // slip in between the drill's own check and its move.
    if let Some(why) =
        crate::drill::refuse_drill_failover(&actor, &kind, &name, &state, store.all())
    {
        let _ = reply.send(Err(refuse(409, why)));
        return;
    }
    let obs = g.observations(clock);
    let mut records: Vec<OverrideRecord> = store.all().to_vec();
    let mut created = None;
    let mut command = None;
    let checked: Result<String, ControlError> = match &kind {
        ControlKind::Failover {
            target,
            force,
            ttl,
            break_glass,
        } => engine::check_operator_failover(
            &g.pb,
            &obs,
            *target,
            *force,
            break_glass.is_some(),
            now,
        )
        .map_err(|e| refuse(409, e))
        .map(|t| {
            records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Failover));
            let rec = OverrideRecord {
                id: new_id(),
                playbook: name.clone(),
                kind: OverrideKind::Failover,
                actor: actor.identity.clone(),
                reason: actor.reason.clone(),
                created: now,
                until: add(now, *ttl),
                target: Some(t),
                force: *force,
                break_glass: break_glass.clone(),
            };
            let msg = format!("failover to failover[{t}] held until {}", rec.until);
            created = Some(rec.id.clone());
            records.push(rec);
            msg
        }),
        ControlKind::Failback { force } => {
            let primary = engine::verdict(&g.pb, &obs, Target::Primary, now);
            if state.routing == Routing::Primary {
                Err(refuse(409, "already on the primary route"))
            } else if let Some(rule) = engine::fence(&g.pb, &obs, Target::Primary) {
                Err(refuse(
                    409,
                    format!("primary is refused by {rule}; force cannot override it"),
                ))
            } else if !force && !primary.is_healthy() {
                Err(refuse(
                    409,
                    format!(
                        "primary is not known healthy ({}); use force to fail back anyway",
                        engine::describe(&primary)
                    ),
                ))
            } else {
                records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Failover));
                command = Some(Command::Failback {
                    by: actor.clone(),
                    force: *force,
                });
                Ok("failback to the original route".to_string())
            }
        }
        ControlKind::Freeze { ttl } => {
            records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Freeze));
            let rec = OverrideRecord {
                id: new_id(),
                playbook: name.clone(),
                kind: OverrideKind::Freeze,
                actor: actor.identity.clone(),
                reason: actor.reason.clone(),
                created: now,
                until: add(now, *ttl),
                target: None,
                force: false,
                break_glass: None,
            };
            let msg = format!("automation frozen until {}", rec.until);
            created = Some(rec.id.clone());
            records.push(rec);
            Ok(msg)
        }
        ControlKind::Resume => {
            let before = records.len();
            records.retain(|r| r.playbook != name);
            if records.len() == before {
                Err(refuse(
                    409,
                    format!("playbook `{name}` has no freeze or hold to release"),
                ))
            } else {
                Ok("freezes and holds released; automation in control".to_string())
            }
        }
        ControlKind::DeleteOverride { id } => {
            records.retain(|r| &r.id != id);
            Ok(format!("override {id} removed"))
        }
        // Sent to its lane above; never reaches the override book.
        ControlKind::DrillFault { .. } => Err(refuse(500, "a drill fault is not an override")),
    };
    let message = match checked {
        Ok(m) => m,
        Err(e) => {
            // Authenticated refusals are audited too.
            if let Err(err) = audit(
                log,
                audit_entry(&name, format!("refused: {}", e.error), inputs),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(error = %err, "audit append failed");
            }
            shared.event(
                idx,
                EventKind::Refused,
                Some(state.routing),
                None,
                &format!("{action} by {} refused: {}", actor.identity, e.error),
                Value::Null,
                &actor.identity,
            );
            let _ = reply.send(Err(e));
            return;
        }
    };
    // Audit first: a call that cannot be audited is not performed.
    let mut accepted = inputs.clone();
    if let Some(id) = &created {
        accepted["overrideId"] = json!(id);
    }
    if let Err(e) = audit(log, audit_entry(&name, "accepted".into(), accepted)).await {
        shared.metrics.audit_errors.inc();
        let _ = reply.send(Err(refuse(
            500,
            format!("cannot audit the call, so it was not performed: {e}"),
        )));
        return;
    }
    let accepted = Accepted {
        name,
        idx,
        action,
        freeze: matches!(kind, ControlKind::Freeze { .. }),
        actor,
        reply,
        message,
        created,
        command,
        change: kept::Change::between(store.all(), &records, ""),
    };
    let Some(cluster) = shared.kept_overrides.as_ref() else {
        // One replica: the state file, written before the reply.
        if let Err(e) = store.replace(records) {
            refused_after_acceptance(
                accepted,
                refuse(500, format!("cannot persist the override: {e}")),
                log,
            )
            .await;
            return;
        }
        finish_accepted(accepted, guarded, store, jobs, shared, clock).await;
        return;
    };
    // Leader election: the cluster keeps it first (the next leader starts from it). The
    // loop goes on deciding meanwhile; commands wait behind this one (see `Book`).
    let mut accepted = accepted;
    accepted.change.by = accepted.actor.identity.clone();
    let cluster = cluster.clone();
    let leader = shared.leader.clone();
    let tx = store.kept_tx.clone();
    store.keeping = true;
    tokio::spawn(async move {
        let result = cluster
            .keep(&accepted.change, now, || leader.is_leader())
            .await;
        let _ = tx.send(KeptDone::Done(Box::new(accepted), result)).await;
    });
}

/// An operator call accepted (validated and audited) and waiting for its change to the
/// override set to be kept.
pub(super) struct Accepted {
    name: String,
    idx: usize,
    action: &'static str,
    freeze: bool,
    actor: Actor,
    reply: oneshot::Sender<ControlResult>,
    message: String,
    created: Option<String>,
    command: Option<Command>,
    change: kept::Change,
}

/// What the cluster said about an accepted call's change.
pub(super) enum KeptDone {
    /// The keep ended: kept, or why not.
    Done(Box<Accepted>, Result<(), kept::KeepError>),
    /// A change whose call was answered "may or may not" was found out.
    Settled {
        /// The change.
        change: kept::Change,
        /// Its playbook.
        playbook: String,
        /// How it ended.
        how: kept::Settled,
    },
}

/// The override set and the operator calls around it: at most one change is being kept
/// in the cluster at a time, and calls made meanwhile (by drift handling or a drill's end)
/// wait here in order; the API's calls wait in the control channel.
pub(super) struct Book {
    store: OverrideStore,
    /// A change is being kept in the cluster; its outcome arrives on `kept_tx`'s channel.
    pub(super) keeping: bool,
    deferred: VecDeque<Control>,
    kept_tx: mpsc::Sender<KeptDone>,
}

impl Book {
    pub(super) fn new(store: OverrideStore, kept_tx: mpsc::Sender<KeptDone>) -> Self {
        Self {
            store,
            keeping: false,
            deferred: VecDeque::new(),
            kept_tx,
        }
    }

    /// Answers the calls still waiting (leadership lost, shutdown): nothing was done for them.
    pub(super) fn refuse_deferred(&mut self, status: u16, why: &str) {
        for c in self.deferred.drain(..) {
            let _ = c.reply.send(Err(refuse(status, why)));
        }
    }
}

impl std::ops::Deref for Book {
    type Target = OverrideStore;
    fn deref(&self) -> &OverrideStore {
        &self.store
    }
}

impl std::ops::DerefMut for Book {
    fn deref_mut(&mut self) -> &mut OverrideStore {
        &mut self.store
    }
}

/// The cluster answered for an accepted call: applies its change (to the set as it is now,
/// by id) and finishes the call, or answers why not; then runs the calls that waited.
#[allow(clippy::too_many_arguments)]
pub(super) async fn kept_done(
    done: KeptDone,
    guarded: &mut [Guarded],
    book: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let (accepted, result) = match done {
        KeptDone::Done(accepted, result) => (accepted, result),
        KeptDone::Settled {
            change,
            playbook,
            how,
        } => {
            settled(
                change, playbook, how, guarded, book, log, jobs, shared, clock,
            )
            .await;
            return;
        }
    };
    book.keeping = false;
    match result {
        Err(e) => {
            if let (kept::KeepError::Unknown(u), Some(cluster)) =
                (&e, shared.kept_overrides.as_ref())
            {
                // Its update may still land: find out, and audit what became of it.
                let (cluster, u, leader) = (cluster.clone(), u.clone(), shared.leader.clone());
                let (change, playbook) = (accepted.change.clone(), accepted.name.clone());
                let tx = book.kept_tx.clone();
                tokio::spawn(async move {
                    let how = cluster.settle(&change, &u, || leader.is_leader()).await;
                    let _ = tx
                        .send(KeptDone::Settled {
                            change,
                            playbook,
                            how,
                        })
                        .await;
                });
            }
            let status = e.status();
            refused_after_acceptance(*accepted, refuse(status, e.to_string()), log).await;
        }
        Ok(()) => {
            let records = accepted.change.applied_to(book.all());
            if let Err(e) = book.store.replace_kept(records) {
                // The cluster holds it, so it is in force (the next leader would apply it).
                error!(error = %e, "cannot write the override state file; the cluster keeps the change, in force from memory");
            }
            finish_accepted(*accepted, guarded, book, jobs, shared, clock).await;
        }
    }
    while !book.keeping {
        let Some(next) = book.deferred.pop_front() else {
            break;
        };
        Box::pin(handle_control_in(
            next, guarded, book, log, jobs, shared, clock,
        ))
        .await;
    }
}

/// A change answered "may or may not" was found out: when it landed it is in force (the
/// cluster holds it; the next leader would apply it), and either way the audit says so.
#[allow(clippy::too_many_arguments)]
async fn settled(
    change: kept::Change,
    playbook: String,
    how: kept::Settled,
    guarded: &mut [Guarded],
    book: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let outcome = match how {
        kept::Settled::Landed => {
            let records = change.applied_to(book.all());
            if let Err(e) = book.store.replace_kept(records) {
                error!(error = %e, "cannot write the override state file; in force from memory");
            }
            publish_overrides(book, shared);
            "landed in the cluster after all: in force"
        }
        kept::Settled::NotLanded => "did not land in the cluster: nothing changed",
        kept::Settled::Unknown => "still unknown after 90 s: read the state Lease",
    };
    warn!(playbook = %playbook, by = %change.by, "an override change answered 503 (update unanswered) {outcome}");
    let ids = |rs: &[OverrideRecord]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    if let Err(e) = audit(
        log,
        Entry {
            actor: "failoverd".into(),
            action: "found".into(),
            playbook: playbook.clone(),
            reason: format!(
                "the override change by {} was answered 503: its update to the cluster went unanswered",
                change.by
            ),
            inputs: json!({ "created": ids(&change.upsert), "deleted": ids(&change.delete) }),
            outcome: outcome.into(),
            ..Entry::default()
        },
    )
    .await
    {
        shared.metrics.audit_errors.inc();
        error!(error = %e, "audit append failed");
    }
    if how == kept::Settled::Landed
        && let Some(idx) = guarded.iter().position(|g| g.pb.name() == playbook)
    {
        let g = &mut guarded[idx];
        g.overrides = book.for_playbook(&playbook, clock.now());
        step(idx, g, jobs, shared, clock).await;
    }
}

/// An accepted call whose change could not be kept: audited as failed, the caller told why.
async fn refused_after_acceptance(a: Accepted, e: ControlError, log: &Arc<Mutex<AuditLog>>) {
    let _ = audit(
        log,
        Entry {
            actor: a.actor.identity.clone(),
            action: a.action.into(),
            playbook: a.name.clone(),
            reason: a.actor.reason.clone(),
            outcome: format!("failed: {}", e.error),
            ..Entry::default()
        },
    )
    .await;
    let _ = a.reply.send(Err(e));
}

/// The rest of an accepted call once its change is kept: announce it, hand the engine the
/// new overrides (and the queued command), and answer the caller when the call is decided.
async fn finish_accepted(
    a: Accepted,
    guarded: &mut [Guarded],
    store: &OverrideStore,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let Accepted {
        name,
        idx,
        action,
        freeze,
        actor,
        reply,
        message,
        created,
        command,
        change: _,
    } = a;
    publish_overrides(store, shared);
    info!(playbook = %name, actor = %actor.identity, action, "{message}: {}", actor.reason);
    let g = &mut guarded[idx];
    let routing = g.state.as_ref().map(|s| s.routing);
    shared.event(
        idx,
        if freeze {
            EventKind::Freeze
        } else {
            EventKind::Override
        },
        routing,
        None,
        &format!("{message} (by {}: {})", actor.identity, actor.reason),
        Value::Null,
        &actor.identity,
    );
    g.overrides = store.for_playbook(&name, clock.now());
    let queued = command.is_some();
    if let Some(c) = command {
        if let Some((tx, earlier, _)) = g.command_waiter.take() {
            let _ = tx.send(Err(refuse(
                409,
                format!("{earlier}: superseded by a later operator command before it could apply; nothing was written for it"),
            )));
        }
        g.command = Some(c);
        g.command_trace = crate::trace::traceparent(&tracing::Span::current());
    }
    if queued && g.pending {
        // Decided right after the write in flight; the caller hears how it ended then.
        g.command_waiter = Some((reply, message, created));
        return;
    }
    if g.pending {
        // The command stays queued and is decided right after the write in flight.
        let _ = reply.send(Ok(ControlReply {
            message: format!(
                "{message}; a routing write is in flight, the change applies right after it"
            ),
            override_id: created,
            routing,
            written: false,
        }));
        return;
    }
    let out = step(idx, g, jobs, shared, clock).await;
    let g = &mut guarded[idx];
    if g.command.is_some() {
        // Not decided yet (a retry is due later, or the route is being read again): the
        // caller is answered when it is.
        g.command_waiter = Some((reply, message, created));
        return;
    }
    if let Some(r) = out.refused {
        let _ = reply.send(Err(refuse(409, r)));
    } else if out.write_queued {
        g.waiters.push((reply, message, created));
    } else {
        let _ = reply.send(Ok(ControlReply {
            message,
            override_id: created,
            routing: g.state.as_ref().map(|s| s.routing),
            written: false,
        }));
    }
}

pub(super) fn add(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

pub(super) fn publish_overrides(store: &OverrideStore, shared: &Shared) {
    if let Ok(mut o) = shared.overrides.write() {
        *o = store.all().to_vec();
    }
    shared.list_version.fetch_add(1, Ordering::Relaxed);
}
