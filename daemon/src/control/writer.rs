//! The writer: audit intent, write the VirtualService in its lane, audit the outcome; and the
//! controller's side of a finished write.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, trace_span, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::{MoveKind, Verdict};
use crate::metrics::labels;
use crate::notify::EventKind;
use crate::routing::{RoutingStore, Stamp, StoreError};
use crate::shared::{Clock, ControlReply, Shared, Transition, refuse};

use super::recording::{audit, audit_owed, audit_record};
use super::step::{drop_queued_commands, retry_delay, set_phase_metric, set_status};
use super::{Done, Guarded, HISTORY, Job, MAX_BACKOFF, MIN_BACKOFF, TICK, WRITE_TIMEOUT, WriteJob};

pub(super) fn finish_write(guarded: &mut [Guarded], done: Done, shared: &Shared, clock: &Clock) {
    let job = done.job;
    let Some(g) = guarded.get_mut(job.idx) else {
        return;
    };
    g.pending = false;
    let audit_refused = done.result.is_err() && done.label == "audit";
    g.audit_blocked = audit_refused;
    // Operator calls that caused this write get their answer now.
    for (tx, message, override_id) in g.waiters.drain(..) {
        let reply = match (&done.result, &done.unrecorded) {
            (Ok(()), None) => Ok(ControlReply {
                message: format!("{message}; routing written: {}", job.to),
                override_id,
                routing: Some(job.to),
                written: true,
            }),
            (Ok(()), Some(e)) => Ok(ControlReply {
                message: format!(
                    "{message}; routing written: {}, but NOT yet recorded in the audit log (the record is kept and written first once the log takes appends again): {e}",
                    job.to
                ),
                override_id,
                routing: Some(job.to),
                written: true,
            }),
            (Err(e), _) if audit_refused => Err(refuse(
                500,
                format!(
                    "{message}, but nothing was written: no move without its audit record, and {e} (failoverd retries every round)"
                ),
            )),
            (Err(e), _) => Err(refuse(
                500,
                format!("{message}, but the routing write failed (failoverd keeps retrying): {e}"),
            )),
        };
        let _ = tx.send(reply);
    }
    let name = job.pb.name().to_string();
    shared
        .metrics
        .route_write_seconds
        .get_or_create(&labels([("result", done.label)]))
        .observe(
            done.elapsed.as_secs_f64(),
            crate::metrics::trace_exemplar(crate::trace::trace_id(&job.span)),
            None,
        );
    let actor = job
        .actor
        .as_ref()
        .map_or("engine".to_string(), |a| a.identity.clone());
    let kind = match (&done.result, job.kind) {
        // Announced once per episode by `audit_watch`, not once per round.
        (Err(_), _) if audit_refused => None,
        (Err(_), _) => Some(EventKind::WriteFailed),
        (
            Ok(()),
            MoveKind::Failover
            | MoveKind::Switch
            | MoveKind::OperatorFailover
            | MoveKind::FailbackAborted,
        ) => Some(EventKind::Failover),
        (Ok(()), MoveKind::Failback | MoveKind::OperatorFailback | MoveKind::FailbackStep) => {
            Some(EventKind::Failback)
        }
        // Drift was audited when found; writing the same routing again is no news for on-call.
        (Ok(()), MoveKind::Reassert) => None,
    };
    if let Some(kind) = kind {
        let reason = match &done.result {
            Err(e) => format!("{} — write failed, retrying: {e}", job.reason),
            Ok(()) => job.reason.clone(),
        };
        // Raised in the decision's span: notifications join the move's trace.
        job.span.in_scope(|| {
            shared.event(
                job.idx,
                kind,
                Some(job.from),
                Some(job.to),
                &reason,
                job.inputs.clone(),
                &actor,
            )
        });
    }
    match done.result {
        Ok(()) => {
            let old = g.state.as_ref().map(|s| s.phase.name()).unwrap_or("normal");
            set_phase_metric(shared, &name, old, job.next.phase.name());
            match job.kind {
                MoveKind::Failover | MoveKind::Switch | MoveKind::OperatorFailover => {
                    shared
                        .metrics
                        .failovers
                        .get_or_create(&labels([("playbook", &name)]))
                        .inc();
                }
                MoveKind::Failback | MoveKind::OperatorFailback => {
                    shared
                        .metrics
                        .failbacks
                        .get_or_create(&labels([("playbook", &name)]))
                        .inc();
                }
                _ => {}
            }
            let t = Transition {
                time: clock.now(),
                kind: job.kind,
                from: job.from,
                to: job.to,
                reason: job.reason.clone(),
                actor: job
                    .actor
                    .as_ref()
                    .map_or("engine".to_string(), |a| a.identity.clone()),
            };
            g.unrecorded = done.unrecorded.is_some();
            let error = done.unrecorded.as_ref().map(|e| {
                format!(
                    "routing written ({} → {}) but its audit record is not yet: kept and written first once the audit log takes appends again: {e}",
                    job.from, job.to
                )
            });
            set_status(shared, job.idx, |s| {
                s.phase = Some(job.next.phase.clone());
                s.routing = Some(job.to);
                s.error = error;
                s.transitions.push_back(t);
                while s.transitions.len() > HISTORY {
                    s.transitions.pop_front();
                }
            });
            let mut next = job.next;
            // minDwell limits how often the *route* changes, so the dwell counts from when the
            // write landed, not from the decision: a write slowed by a busy disk or API server
            // must not shorten the time the new route holds.
            let prior = g.state.as_ref().and_then(|s| s.last_move);
            if let Some(decided) = next.last_move.filter(|t| Some(*t) != prior) {
                next.last_move = Some(decided.max(clock.now()));
            }
            g.state = Some(next);
            g.retry_at = None;
            g.backoff = MIN_BACKOFF;
        }
        Err(e) => {
            shared
                .metrics
                .route_write_errors
                .get_or_create(&labels([("playbook", &name), ("reason", done.label)]))
                .inc();
            if audit_refused {
                // Decided again at the next tick: the disk may come back at any moment, and an
                // attempt costs one failed append (cut back at once). No backoff growth.
                set_status(shared, job.idx, |s| {
                    s.error = Some(format!(
                        "move {} → {} not made: {e}; retried every round",
                        job.from, job.to
                    ))
                });
                g.retry_at = Some(Instant::now() + TICK);
            } else {
                set_status(shared, job.idx, |s| s.error = Some(e.clone()));
                // A standby attempted nothing; any other failure may have reached the store.
                g.reread = done.label != "fenced";
                g.retry_at = Some(Instant::now() + retry_delay(done.label, g.backoff));
                g.backoff = (g.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Exit status when the writer task is gone: nothing can be written or audited any more, so
/// the process ends for its supervisor to restart it (every record and override is on disk;
/// an intent without an outcome is resolved from the store at the next start).
pub const EXIT_WRITER_DIED: i32 = 4;

/// The writer task ended while the controller runs (a panic, or its loop left): stop being
/// ready, answer waiting operator calls with an error, and exit non-zero. Never answer 200
/// for a move that nothing will write.
pub(super) async fn writer_died(
    writer: &mut tokio::task::JoinHandle<()>,
    guarded: &mut [Guarded],
    shared: &Shared,
) -> ! {
    shared.ready.store(false, Ordering::Relaxed);
    let why = match writer.await {
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic".into());
            format!("panicked: {msg}")
        }
        Err(e) => e.to_string(),
        Ok(()) => "its loop ended".to_string(),
    };
    error!(
        exit = EXIT_WRITER_DIED,
        "the routing writer task is gone ({why}): no move can be written; exiting for the supervisor to restart failoverd"
    );
    drop_queued_commands(
        guarded,
        503,
        &format!(
            "failoverd's routing writer is gone ({why}); nothing was written; failoverd is restarting"
        ),
    );
    for g in guarded.iter_mut() {
        for (tx, message, _) in g.waiters.drain(..) {
            let _ = tx.send(Err(refuse(
                503,
                format!("{message}, but failoverd's routing writer is gone ({why}); nothing was written; failoverd is restarting"),
            )));
        }
    }
    // Long enough for those answers to leave; the API stays up meanwhile, not ready.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::process::exit(EXIT_WRITER_DIED)
}

/// How long one write holds its concurrency permit at most: the `kubernetes` store's
/// per-request timeout (3 s). A write still running then is stalled on its object (a slow
/// webhook, a lock): it goes on to its real end without a permit, so stalled objects can
/// never starve every other object's write of permits. Writes in flight are still bounded:
/// one per VirtualService (its lane), and the store's token bucket paces their requests.
pub const PERMIT_HOLD: Duration = Duration::from_secs(3);

/// The writer: appends audit records in the order they were sent, and hands each routing
/// write to the lane of its VirtualService (`namespace/name`). A lane writes its object's
/// moves strictly in order, one at a time; lanes run concurrently (at most
/// `writeConcurrency` writes in flight, a stalled one giving its permit up after
/// [`PERMIT_HOLD`]), so one stalled object delays no other. The audit
/// chain stays one ordered chain (the log's mutex): intents and outcomes of different objects
/// may interleave, and each outcome names its intent (`inputs.intentSeq`).
///
/// Returns once every lane has finished its last write (the controller dropped the job
/// sender): nothing in flight is abandoned. A lane that panics takes the writer with it, so
/// the controller sees the writer gone (see [`writer_died`]).
pub(super) async fn writer(
    store: Arc<dyn RoutingStore>,
    log: Arc<Mutex<AuditLog>>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    shared: Arc<Shared>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.write_concurrency.max(1)));
    // Unbounded, yet bounded in practice: the controller has at most one write in flight per
    // playbook, so a lane never holds more jobs than playbooks share its object.
    let mut lanes: std::collections::HashMap<String, mpsc::UnboundedSender<LaneJob>> =
        std::collections::HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                match job {
                    Job::Audit(entry) => {
                        if let Err(e) = audit(&log, *entry).await {
                            shared.metrics.audit_errors.inc();
                            error!(error = %e, "audit append failed");
                        }
                    }
                    Job::AuditOwed(entry) => {
                        if let Err(e) = audit_owed(&log, *entry).await {
                            shared.metrics.audit_errors.inc();
                            warn!(error = %e, "audit record kept: written first once the log takes appends again");
                        }
                    }
                    Job::Write(_) | Job::Fault(_) => {
                        let (key, job) = match job {
                            Job::Write(j) => (j.pb.spec.virtual_service.to_string(), LaneJob::Move(j)),
                            Job::Fault(j) => (j.object(), LaneJob::Fault(j)),
                            _ => continue,
                        };
                        let lane = lanes.entry(key.clone()).or_insert_with(|| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            tasks.spawn(
                                lane(rx, store.clone(), log.clone(), done.clone(), shared.clone(), permits.clone())
                                    .instrument(info_span!("lane", object = %key)),
                            );
                            tx
                        });
                        // A lane only ends when its sender is dropped (below) or the
                        // controller is gone; either way there is no one left to tell.
                        let _ = lane.send(job);
                    }
                }
            }
            Some(ended) = tasks.join_next() => {
                if let Err(e) = ended && e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
    // Shutdown: every lane finishes the writes it holds (each is bounded by its store's own
    // budget) and reports them before the writer returns.
    drop(lanes);
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// What a lane writes: a routing move, or a drill's fault.
pub(super) enum LaneJob {
    /// A move decided by the controller (reported back as [`Done`]).
    Move(Box<WriteJob>),
    /// A drill fault edit (answered to its caller).
    Fault(Box<super::fault::FaultJob>),
}

/// One VirtualService's writes, in the order the controller sent them.
pub(super) async fn lane(
    mut jobs: mpsc::UnboundedReceiver<LaneJob>,
    store: Arc<dyn RoutingStore>,
    log: Arc<Mutex<AuditLog>>,
    done: mpsc::Sender<Done>,
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    while let Some(job) = jobs.recv().await {
        // Never closed, so this only fails if the writer is gone.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let job = match job {
            LaneJob::Move(job) => job,
            LaneJob::Fault(job) => {
                super::fault::write_fault(job, store.as_ref(), &log, &shared).await;
                drop(permit);
                continue;
            }
        };
        let write = write_one(job, store.as_ref(), &log, &shared);
        tokio::pin!(write);
        let finished = tokio::select! {
            finished = &mut write => finished,
            () = tokio::time::sleep(PERMIT_HOLD) => {
                // Stalled: let other objects' writes go, and await this one to its end.
                drop(permit);
                debug!("write still running after {PERMIT_HOLD:?}; its permit is released");
                write.await
            }
        };
        if done.send(finished).await.is_err() {
            break;
        }
    }
}

/// One routing write: intent record, the store write (awaited to its real end), outcome
/// record naming the intent.
pub(super) async fn write_one(
    job: Box<WriteJob>,
    store: &dyn RoutingStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
) -> Done {
    // A child of the decision (tracing on): the store's API requests are its children, and
    // the VirtualService annotation and audit records carry its trace.
    let vs = &job.pb.spec.virtual_service;
    let span = trace_span!(
        parent: &job.span,
        "failoverd.route.write",
        failoverd.playbook = %job.pb.name(),
        failoverd.move = job.kind.as_str(),
        failoverd.from = %job.from,
        failoverd.to = %job.to,
        k8s.namespace.name = %vs.namespace,
        failoverd.virtualservice = %vs.name,
        failoverd.result = tracing::field::Empty,
    );
    let done = write_one_in(job, store, log, shared, span.clone())
        .instrument(span.clone())
        .await;
    span.record("failoverd.result", done.label);
    done
}

async fn write_one_in(
    job: Box<WriteJob>,
    store: &dyn RoutingStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
    span: tracing::Span,
) -> Done {
    let traceparent = crate::trace::traceparent(&span);
    let started = Instant::now();
    let name = job.pb.name().to_string();
    let actor = job
        .actor
        .as_ref()
        .map_or("engine".to_string(), |a| a.identity.clone());
    let reason = match &job.actor {
        Some(a) if a.reason != job.reason => {
            format!("{} (operator reason: {})", job.reason, a.reason)
        }
        _ => job.reason.clone(),
    };
    let entry = |outcome: String, before: Value, after: Value, intent: Option<u64>| {
        let mut inputs = json!({
            "from": job.from, "to": job.to, "forced": job.forced, "signals": job.inputs,
        });
        if let Some(seq) = intent {
            inputs["intentSeq"] = json!(seq);
        }
        Entry {
            traceparent: traceparent.clone(),
            actor: actor.clone(),
            action: job.kind.as_str().to_string(),
            playbook: name.clone(),
            reason: reason.clone(),
            inputs,
            before,
            after,
            outcome,
        }
    };
    // A standby (or a leader whose lease lapsed) attempts nothing, so records nothing.
    if !shared.leader.is_leader() {
        return Done {
            job,
            result: Err(StoreError::Fenced.to_string()),
            label: "fenced",
            elapsed: started.elapsed(),
            unrecorded: None,
        };
    }
    // An action that cannot be audited is not performed. It is decided again every round
    // (see `finish_write`); the episode is announced once (see `audit_watch`), so a full
    // disk logs one error, not one per round.
    let was_available = shared.audit_health.unavailable().is_none();
    let intent = match audit_record(log, entry("intent".into(), Value::Null, Value::Null, None))
        .await
    {
        Ok(r) => r.seq,
        Err(e) => {
            shared.metrics.audit_errors.inc();
            if was_available {
                error!(playbook = %name, to = %job.to, error = %e, "audit append failed; routing write not performed (retried every round)");
            } else {
                debug!(playbook = %name, to = %job.to, error = %e, "audit log still refuses appends; routing write not performed");
            }
            return Done {
                job,
                result: Err(format!("audit log unavailable: {e}")),
                label: "audit",
                elapsed: started.elapsed(),
                unrecorded: None,
            };
        }
    };
    // Never dropped while it may still land: past WRITE_TIMEOUT the write is reported as in
    // flight (log, status) and awaited to its real end, so the outcome recorded is what the
    // store did. The store bounds its own attempts (the kubernetes store settles a lost
    // answer by reading the object back within its budget).
    let result = {
        let write = store.write(
            &job.pb,
            job.to,
            Stamp {
                last_move: job.next.last_move,
                break_glass: job.break_glass.clone(),
            },
        );
        tokio::pin!(write);
        let mut waited = Duration::ZERO;
        loop {
            match tokio::time::timeout(WRITE_TIMEOUT, &mut write).await {
                Ok(r) => break r,
                Err(_) => {
                    waited += WRITE_TIMEOUT;
                    let secs = waited.as_secs();
                    warn!(playbook = %name, to = %job.to, seconds = secs, "routing write still in flight; waiting for its real outcome");
                    set_status(shared, job.idx, |s| {
                        s.error = Some(format!(
                            "write in flight for {secs}s ({} → {}); its real outcome is recorded when it ends",
                            job.from, job.to
                        ))
                    });
                }
            }
        }
    };
    // What became of the intent is owed to the chain: when the log refuses it now, it is
    // kept in order and written before anything later, and the move is reported as
    // not recorded until then (a crash meanwhile is resolved from the store at start).
    let mut unrecorded = None;
    let (label, res) = match result {
        Ok(out) => {
            let outcome = if out.changed { "written" } else { "unchanged" };
            if let Err(e) = audit_owed(
                log,
                entry(outcome.into(), out.before, out.after, Some(intent)),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(playbook = %name, error = %e, "routing written but its audit record is not: kept, and written first once the log takes appends again");
                unrecorded = Some(e);
            }
            ("ok", Ok(()))
        }
        Err(e) => {
            let msg = e.to_string();
            if let Err(e) = audit_owed(
                log,
                entry(
                    format!("failed: {msg}"),
                    Value::Null,
                    Value::Null,
                    Some(intent),
                ),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(playbook = %name, error = %e, "audit record of a failed write kept for later");
            }
            (e.metric_label(), Err(msg))
        }
    };
    let elapsed = started.elapsed();
    match &res {
        Ok(())
            if matches!(
                job.kind,
                MoveKind::Failover | MoveKind::Switch | MoveKind::FailbackAborted
            ) =>
        {
            warn!(playbook = %name, kind = job.kind.as_str(), to = %job.to, ms = elapsed.as_millis() as u64, "{}", job.reason)
        }
        Ok(()) => {
            info!(playbook = %name, kind = job.kind.as_str(), to = %job.to, ms = elapsed.as_millis() as u64, "{}", job.reason)
        }
        Err(e) => {
            error!(playbook = %name, kind = job.kind.as_str(), to = %job.to, error = %e, "routing write failed; will retry")
        }
    }
    Done {
        job,
        result: res,
        label,
        elapsed,
        unrecorded,
    }
}

/// Summarises verdicts for display.
pub fn verdict_word(v: &Verdict) -> &'static str {
    match v {
        Verdict::Healthy { .. } => "healthy",
        Verdict::Suspect { .. } => "suspect",
        Verdict::Unhealthy { .. } => "unhealthy",
        Verdict::Unknown { .. } => "unknown",
    }
}
