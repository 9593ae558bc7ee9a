//! Drift: the route failoverd wrote, changed by someone else while it is failed over.
//!
//! A checker task re-reads every playbook that is off its primary route, every
//! [`CHECK_EVERY`] and at once when the store reports a change (the `kubernetes` store
//! watches its VirtualServices). It only *finds* drift; the controller decides what to do
//! (the playbook's `onDrift`), so the single writer stays the only task that writes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::{Actor, MoveKind, Routing};
use crate::metrics::labels;
use crate::routing::{RouteView, RoutingStore};
use crate::shared::{Clock, Control, ControlKind, Shared};

use super::commands::Book;
use super::traced::handle_control;
use super::{Guarded, Job, WriteJob};

/// How often failed-over routes are re-read when no change notice arrives.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// A route that is not what failoverd wrote.
#[derive(Debug)]
pub struct Found {
    /// Playbook index.
    pub idx: usize,
    /// The routing failoverd held when the check started (the controller ignores the
    /// finding if it has moved on since).
    pub believed: Routing,
    /// What differs.
    pub detail: String,
    /// The route as found.
    pub route: Value,
}

/// What differs between the store and what failoverd holds, if anything.
pub fn drift_of(view: &RouteView, believed: Routing) -> Option<String> {
    if view.routing != believed {
        return Some(format!(
            "the store's state annotation says {}, failoverd holds {believed}",
            view.routing
        ));
    }
    view.drift.clone()
}

/// Starts the checker. It stops when `shutdown` turns true or the controller goes away.
pub fn spawn(
    store: Arc<dyn RoutingStore>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Found>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let objects: Vec<(String, String)> = shared
        .playbooks
        .iter()
        .map(|pb| {
            let vs = &pb.spec.virtual_service;
            (vs.namespace.clone(), vs.name.clone())
        })
        .collect();
    let mut changes = store.watch(objects.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `None`: every off-primary playbook; `Some(object)`: the ones on that object.
            let only: Option<(String, String)> = tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                    continue;
                }
                _ = tick.tick() => None,
                Some(o) = async {
                    match changes.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Some(o),
            };
            let held: Vec<(usize, Routing)> = match shared.status.read() {
                Ok(s) => s
                    .iter()
                    .enumerate()
                    .filter_map(|(i, st)| st.routing.map(|r| (i, r)))
                    .filter(|(_, r)| *r != Routing::Primary)
                    .filter(|(i, _)| only.as_ref().is_none_or(|o| objects.get(*i) == Some(o)))
                    .collect(),
                Err(_) => return,
            };
            for (idx, believed) in held {
                let Some(pb) = shared.playbooks.get(idx) else {
                    continue;
                };
                match store.read(pb).await {
                    Ok(view) => {
                        if let Some(detail) = drift_of(&view, believed) {
                            let found = Found {
                                idx,
                                believed,
                                detail,
                                route: view.route,
                            };
                            if tx.send(found).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Read errors surface through the controller's own reads and writes.
                    Err(e) => debug!(playbook = pb.name(), error = %e, "drift check: cannot read"),
                }
            }
        }
    })
}

/// Acts on a route changed by someone else while failed over: audit and count it, then
/// `onDrift: reassert` writes failoverd's routing again and `respect` freezes the playbook.
pub(super) async fn handle_drift(
    found: Found,
    guarded: &mut [Guarded],
    ov_store: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let Some(g) = guarded.get_mut(found.idx) else {
        return;
    };
    let Some(state) = g.state.clone() else {
        return;
    };
    // A write in flight, or a move since the check started, explains the difference. A
    // standby leaves drift to the leader.
    if g.pending || state.routing != found.believed || !shared.leader.is_leader() {
        return;
    }
    let name = g.pb.name().to_string();
    if g.overrides.freeze.is_some() {
        // Frozen: an operator is in charge; leave their route alone, say so quietly.
        debug!(playbook = %name, "route changed outside failoverd while frozen: {}", found.detail);
        return;
    }
    let on_drift = g.pb.spec.on_drift;
    let action = match on_drift {
        crate::playbook::OnDrift::Reassert => "reassert",
        crate::playbook::OnDrift::Respect => "respect",
    };
    shared
        .metrics
        .drift
        .get_or_create(&labels([("playbook", &name), ("action", action)]))
        .inc();
    warn!(playbook = %name, action, "route changed outside failoverd: {}", found.detail);
    let reason = format!("route changed outside failoverd: {}", found.detail);
    let _ = jobs
        .send(Job::Audit(Box::new(Entry {
            actor: "failoverd".into(),
            action: "drift".into(),
            playbook: name.clone(),
            reason: reason.clone(),
            after: found.route.clone(),
            outcome: format!("onDrift: {action}"),
            ..Entry::default()
        })))
        .await;
    match on_drift {
        crate::playbook::OnDrift::Reassert => {
            let job = WriteJob {
                idx: found.idx,
                pb: g.pb.clone(),
                from: state.routing,
                to: state.routing,
                kind: MoveKind::Reassert,
                reason: format!(
                    "{reason}; writing {} again (onDrift: reassert)",
                    state.routing
                ),
                forced: false,
                actor: None,
                // The same routing again keeps the break-glass mark its hold put there.
                break_glass: g
                    .overrides
                    .hold
                    .as_ref()
                    .filter(|h| state.routing == Routing::Failover { target: h.target })
                    .and_then(|h| h.break_glass.clone()),
                inputs: json!({ "drift": found.detail, "found": found.route }),
                span: tracing::trace_span!(
                    "failoverd.decide",
                    failoverd.playbook = %name,
                    failoverd.kind = "automatic",
                    failoverd.move = MoveKind::Reassert.as_str(),
                    failoverd.from = %state.routing,
                    failoverd.to = %state.routing,
                    failoverd.reason = %reason,
                ),
                next: state,
            };
            g.pending = true;
            if jobs.send(Job::Write(Box::new(job))).await.is_err() {
                g.pending = false;
            }
        }
        crate::playbook::OnDrift::Respect => {
            // A freeze through the operator path: persisted, audited and announced like one.
            let (reply, _) = oneshot::channel();
            let msg = Control {
                playbook: Some(name),
                kind: ControlKind::Freeze {
                    ttl: RESPECT_FREEZE,
                },
                actor: Actor {
                    identity: "failoverd".into(),
                    reason: format!("{reason}; respecting it (onDrift: respect)"),
                },
                reply,
                traceparent: None,
            };
            Box::pin(handle_control(
                msg, guarded, ov_store, log, jobs, shared, clock,
            ))
            .await;
        }
    }
}

/// How long `onDrift: respect` freezes a playbook: long enough for whoever changed the
/// route to finish; an operator resumes it earlier with `failoverd resume`.
pub(super) const RESPECT_FREEZE: Duration = Duration::from_secs(24 * 3600);
