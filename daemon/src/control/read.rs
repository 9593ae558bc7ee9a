//! Reading routes from the store: at start, after a takeover, after a failed write, and
//! settling an intent left without an outcome.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Entry, Record};
use crate::engine::{Routing, State};
use crate::metrics::labels;
use crate::playbook::Playbook;
use crate::routing::{RoutingStore, StoreError};
use crate::shared::{Clock, Shared};

use super::commands::Book;
use super::expiry::end_orphaned_drills;
use super::step::{retry_delay, set_phase_metric, set_status, step};
use super::{Guarded, Job, MAX_BACKOFF, MIN_BACKOFF};

/// Reads the routes at `idxs` (one bulk read), ends drills left by a dead leader whose routes
/// are now known, then steps every playbook that has a route.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_and_step(
    idxs: &[usize],
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    overrides: &mut Book,
    orphaned_drills: &mut Vec<String>,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    read_states(idxs, guarded, store, jobs, shared, clock).await;
    if !orphaned_drills.is_empty() {
        end_orphaned_drills(
            orphaned_drills,
            guarded,
            overrides,
            log,
            jobs,
            shared,
            clock,
        )
        .await;
    }
    for (i, g) in guarded.iter_mut().enumerate() {
        if g.state.is_some() {
            step(i, g, jobs, shared, clock).await;
        }
    }
}

/// Reads the route of every playbook whose last write failed after it may have reached the
/// store, once its retry is due, and adopts what the store holds when it differs from what
/// the controller believed (audited as `found`). Until that read succeeds the playbook
/// decides nothing: acting on a stale routing could leave users on a failover target while
/// the controller thinks them on the primary.
pub(super) async fn reread_after_failed_writes(
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    for (i, g) in guarded.iter_mut().enumerate() {
        if !g.reread || g.pending || g.retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let Ok(view) = store.read(&g.pb).await else {
            // Still unreadable: read again next round; nothing is decided meanwhile.
            continue;
        };
        g.reread = false;
        let believed = g.state.as_ref().map(|s| s.routing);
        if believed == Some(view.routing) {
            continue;
        }
        warn!(playbook = g.pb.name(), store = %view.routing, believed = ?believed.map(|r| r.to_string()), "after a failed write the store holds another route; adopting it");
        let _ = jobs
            .send(Job::Audit(Box::new(Entry {
                actor: "failoverd".into(),
                action: "found".into(),
                playbook: g.pb.name().to_string(),
                reason: format!(
                    "after a failed write the store holds {} where failoverd believed {}: the write landed after all, or someone else moved it; adopted before deciding again",
                    view.routing,
                    believed.map_or_else(|| "nothing".to_string(), |r| r.to_string())
                ),
                after: view.route.clone(),
                outcome: "noted".into(),
                ..Entry::default()
            })))
            .await;
        let mut st = State::resume(view.routing, clock.now());
        st.last_move = view.last_move;
        set_status(shared, i, |s| {
            s.phase = Some(st.phase.clone());
            s.routing = Some(st.routing);
        });
        adopt(g, shared, st);
    }
}

/// Takes a state found by a read (start, takeover, after a failed write) and moves the phase
/// gauge with it: a round only moves the gauge from the state it started with, so a phase
/// left by a read alone would otherwise keep showing 1 beside the new one.
fn adopt(g: &mut Guarded, shared: &Shared, st: State) {
    let new = st.phase.name();
    let old = g.state.as_ref().map_or(new, |s| s.phase.name());
    set_phase_metric(shared, g.pb.name(), old, new);
    g.state = Some(st);
}

/// Reads the routes of the playbooks at `idxs` in one bulk read and settles each.
pub(super) async fn read_states(
    idxs: &[usize],
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    if idxs.is_empty() {
        return;
    }
    let pbs: Vec<Arc<Playbook>> = idxs.iter().map(|&i| guarded[i].pb.clone()).collect();
    let results = store.read_all(&pbs).await;
    for (&i, result) in idxs.iter().zip(results) {
        settle_read(i, &mut guarded[i], result, jobs, shared, clock).await;
    }
}

/// Takes a route read from the store as the playbook's state, or schedules another read.
pub(super) async fn settle_read(
    i: usize,
    g: &mut Guarded,
    result: Result<crate::routing::RouteView, StoreError>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    match result {
        Ok(view) => {
            let mut st = State::resume(view.routing, clock.now());
            // minDwell survives a restart (a crash loop must not turn into a flapping route).
            st.last_move = view.last_move;
            info!(playbook = g.pb.name(), routing = %view.routing, "route read from the store");
            if let Some(intent) = g.open_intent.take() {
                // The last run recorded an intent and stopped before its outcome (a crash
                // between the two, or a kill while the outcome was kept for a full disk): the
                // store says what became of it. Owed, so a full disk now only delays it.
                let entry = resolve_intent(&intent, &view);
                info!(playbook = g.pb.name(), seq = intent.seq, outcome = %entry.outcome, "intent without an outcome resolved from the store");
                let _ = jobs.send(Job::AuditOwed(Box::new(entry))).await;
            } else if view.routing != Routing::Primary {
                // Say in the audit log where failoverd found the route: after a crash between a
                // write and its `written` record, this is the record that closes the gap.
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        actor: "failoverd".into(),
                        action: "resumed".into(),
                        playbook: g.pb.name().to_string(),
                        reason: format!("started and found the route at {}", view.routing),
                        after: view.route.clone(),
                        outcome: "noted".into(),
                        ..Entry::default()
                    })))
                    .await;
            }
            set_status(shared, i, |s| {
                s.phase = Some(st.phase.clone());
                s.routing = Some(st.routing);
                s.error = None;
            });
            adopt(g, shared, st);
            g.retry_at = None;
            g.backoff = MIN_BACKOFF;
        }
        Err(e) => {
            if g.retry_at.is_none() {
                error!(playbook = g.pb.name(), error = %e, "cannot read the playbook's VirtualService; the playbook is inactive until it can");
            }
            shared
                .metrics
                .route_write_errors
                .get_or_create(&labels([
                    ("playbook", g.pb.name()),
                    ("reason", e.metric_label()),
                ]))
                .inc();
            set_status(shared, i, |s| s.error = Some(e.to_string()));
            g.retry_at = Some(Instant::now() + retry_delay(e.metric_label(), g.backoff));
            g.backoff = (g.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The record closing an intent that has no outcome, from what the store holds now. Its
/// outcome is in the usual words (`written`, `failed: ...`) so the chain reads like any move;
/// the reason says it was recovered at start.
pub(super) fn resolve_intent(intent: &Record, view: &crate::routing::RouteView) -> Entry {
    let intended = intent
        .inputs
        .get("to")
        .and_then(|v| serde_json::from_value::<Routing>(v.clone()).ok());
    let why = format!(
        "recovered at start: intent seq {} had no outcome (failoverd stopped between the intent and its record)",
        intent.seq
    );
    let (outcome, reason) = match intended {
        Some(to) if to == view.routing => (
            "written".to_string(),
            format!("{why}; the store holds the intended route {to}"),
        ),
        Some(to) => (
            format!(
                "failed: not written (recovered at start: the store holds {}, not the intended {to})",
                view.routing
            ),
            why,
        ),
        None => (
            format!(
                "failed: unknown (recovered at start: the intent names no route; the store holds {})",
                view.routing
            ),
            why,
        ),
    };
    Entry {
        traceparent: None,
        actor: "failoverd".into(),
        action: intent.action.clone(),
        playbook: intent.playbook.clone(),
        reason,
        inputs: json!({
            "intentSeq": intent.seq,
            "from": intent.inputs.get("from"),
            "to": intent.inputs.get("to"),
        }),
        before: Value::Null,
        after: view.route.clone(),
        outcome,
    }
}
