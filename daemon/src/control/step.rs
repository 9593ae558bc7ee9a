//! One decision: the engine run on a playbook's signals, its write queued, and what it tells
//! on-call (status, metrics, blast radius).

use std::sync::atomic::Ordering;
use std::time::Duration;

use failover_probes::Outcome;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, error, info, warn};

use crate::audit::Entry;
use crate::engine::{self, Action, Decision, MoveKind, Phase, Routing, State, Verdict};
use crate::metrics::labels;
use crate::notify::{Condition, EventKind};
use crate::shared::{Clock, ControlReply, PlaybookStatus, Shared, refuse};
use crate::signals::SloResult;

use super::{Guarded, Job, Waiter, WriteJob};

/// When to try a failed store operation again. Errors a retry cannot fix (the API server or
/// istiod rejected the object, a missing RBAC rule, an object failoverd refuses to write)
/// are not retried in the backoff loop: the same request would fail the same way and only
/// add load. They are tried again after [`RECHECK_REJECTED`], in case someone fixed the
/// object or the Role meanwhile.
pub(super) fn retry_delay(label: &str, backoff: Duration) -> Duration {
    match label {
        "rejected" | "forbidden" | "invalid" => RECHECK_REJECTED,
        _ => backoff,
    }
}

/// See [`retry_delay`].
pub(super) const RECHECK_REJECTED: Duration = Duration::from_secs(60);

/// How long a signal may stay unknown before on-call hears about it: long enough to ride out
/// a Prometheus restart, short enough that an outage of the signal itself is noticed.
pub(super) const UNKNOWN_ALERT_AFTER: Duration = Duration::from_secs(60);

/// Records one SLO evaluation in its slot: metrics, logs and the "unknown for a while" event.
pub(super) fn record_slo(g: &mut Guarded, r: SloResult, shared: &Shared) {
    let si = g.pb.spec.probes.len() + r.slo;
    let name = g.pb.name().to_string();
    let Some(slot) = g.slots.get_mut(si) else {
        return;
    };
    let message = match &r.eval.outcome {
        Outcome::Unknown(m) => m.clone(),
        _ => String::new(),
    };
    if let Some(label) = r.eval.unknown_label {
        shared
            .metrics
            .signal_unknown
            .get_or_create(&labels([
                ("playbook", &name),
                ("signal", &slot.name),
                ("reason", label),
            ]))
            .inc();
        if !matches!(slot.window.last(), Some(Outcome::Unknown(_))) {
            warn!(playbook = %name, signal = %slot.name, reason = label, "SLO signal unknown: {message}");
        }
        if label == "bad_data" {
            set_status(shared, r.playbook, |s| {
                s.error = Some(format!("SLO {}: {message}", slot.name))
            });
        }
    }
    slot.detail = r.eval.detail;
    let unknown = matches!(r.eval.outcome, Outcome::Unknown(_));
    slot.window.record(r.eval.outcome, r.at);
    if !unknown {
        slot.unknown_alerted = false;
        return;
    }
    let unknown_for = slot
        .window
        .streak_since()
        .map(|t| r.at.saturating_duration_since(t))
        .unwrap_or_default();
    if !slot.unknown_alerted && unknown_for >= UNKNOWN_ALERT_AFTER {
        slot.unknown_alerted = true;
        let reason = format!(
            "{} unknown for {}s: {message}",
            slot.name,
            unknown_for.as_secs()
        );
        shared.event(
            r.playbook,
            EventKind::SignalUnknown,
            None,
            None,
            &reason,
            Value::Null,
            "failoverd",
        );
    }
}

pub(super) fn set_status(shared: &Shared, i: usize, f: impl FnOnce(&mut PlaybookStatus)) {
    if let Ok(mut s) = shared.status.write()
        && let Some(s) = s.get_mut(i)
    {
        // Only what the list shows counts as a change (signals change on every result).
        let listed = |s: &PlaybookStatus| {
            (
                s.phase.clone(),
                s.routing,
                s.explain.clone(),
                s.error.clone(),
            )
        };
        let before = listed(s);
        f(s);
        if listed(s) != before {
            shared.list_version.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one decision round did.
#[derive(Debug, Default)]
pub(super) struct StepOutcome {
    pub(super) write_queued: bool,
    pub(super) refused: Option<String>,
}

pub(super) async fn step(
    i: usize,
    g: &mut Guarded,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) -> StepOutcome {
    let mut outcome = StepOutcome::default();
    let Some(state) = g.state.clone() else {
        return outcome;
    };
    if g.pending || g.reread || g.retry_at.is_some_and(|t| Instant::now() < t) {
        return outcome;
    }
    let mut obs = g.observations(clock);
    let now = clock.now();
    // Own verdicts for the peers first (from this replica's signals only), then the peers'
    // verdicts join the decision's inputs (and its audit record).
    super::vantage::publish(i, &g.pb, &obs, now, shared);
    super::vantage::with_peers(&mut obs, &g.pb, shared, clock);
    // A queued operator command is decided now; its caller (if waiting) hears the result.
    g.overrides.command = g.command.take();
    let waiter = if g.overrides.command.is_some() {
        g.command_waiter.take()
    } else {
        None
    };
    let started = std::time::Instant::now();
    let d: Decision = engine::decide(&g.pb, &state, &obs, &g.overrides, now);
    let took = started.elapsed();
    super::vantage::note_fallback(&g.pb, d.fallback, shared);
    g.overrides.command = None;
    let command_trace = g.command_trace.take();
    let name = g.pb.name().to_string();
    // A round that acts or refuses is traced (always sampled, tracing on): its span, with one
    // child per signal it used, is the root of the write, audit and notifications it causes.
    let span = if d.actions.is_empty() {
        tracing::Span::none()
    } else {
        super::spans::decide_span(&name, &d, &obs, waiter.is_some(), command_trace.as_deref())
    };
    // A traced round's trace id is the exemplar of its time.
    shared.metrics.decision_seconds.observe(
        took.as_secs_f64(),
        crate::metrics::trace_exemplar(crate::trace::trace_id(&span)),
        None,
    );
    let d = blast_radius(i, g.pb.name(), &state, d, now, jobs, shared)
        .instrument(span.clone())
        .await;
    // Logged on a change of phase or reason, not of the running clock in the explanation
    // (a recovering playbook's text changes every round: "healthy for 3s of 5m", "4s", ...).
    let changed_explain = shared
        .status
        .read()
        .ok()
        .and_then(|s| {
            s.get(i).map(|s| {
                s.phase.as_ref().map(Phase::name) != Some(d.state.phase.name())
                    || engine::explain_key(&s.explain) != engine::explain_key(&d.explain)
            })
        })
        .unwrap_or(true);
    if changed_explain {
        info!(playbook = %name, phase = d.state.phase.name(), "{}", d.explain);
    }
    // Serialised only when something is recorded: most rounds decide to do nothing.
    let inputs = if d.actions.is_empty() {
        Value::Null
    } else {
        json!({ "observations": obs, "primary": d.primary })
    };
    let mut route = None;
    for a in &d.actions {
        match a {
            Action::Route {
                from,
                to,
                kind,
                reason,
                forced,
                actor,
                break_glass,
            } => {
                span.record("failoverd.from", from.to_string());
                span.record("failoverd.to", to.to_string());
                span.record("failoverd.move", kind.as_str());
                span.record("failoverd.reason", reason.as_str());
                span.record(
                    "failoverd.kind",
                    match actor {
                        None => "automatic",
                        Some(a) if a.identity.starts_with(crate::drill::ACTOR_PREFIX) => "drill",
                        // An approved two-person break-glass (a forced move alone is an
                        // operator's).
                        Some(_) if break_glass.is_some() => "break-glass",
                        Some(_) => "operator",
                    },
                );
                route = Some(WriteJob {
                    span: span.clone(),
                    idx: i,
                    pb: g.pb.clone(),
                    from: *from,
                    to: *to,
                    kind: *kind,
                    reason: reason.clone(),
                    forced: *forced,
                    actor: actor.clone(),
                    break_glass: break_glass.clone(),
                    inputs: inputs.clone(),
                    next: d.state.clone(),
                });
            }
            Action::Stuck { reason } => {
                error!(playbook = %name, "{reason}");
                span.record("failoverd.reason", reason.as_str());
                // Raised inside the decision's span: the event joins its trace.
                span.in_scope(|| {
                    shared.event(
                        i,
                        EventKind::Stuck,
                        Some(state.routing),
                        None,
                        reason,
                        inputs.clone(),
                        "engine",
                    )
                });
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        traceparent: crate::trace::traceparent(&span),
                        actor: "engine".into(),
                        action: "stuck".into(),
                        playbook: name.clone(),
                        reason: reason.clone(),
                        inputs: inputs.clone(),
                        outcome: "noted".into(),
                        ..Entry::default()
                    })))
                    .await;
            }
            Action::Refused { reason } => {
                outcome.refused = Some(reason.clone());
                span.record("failoverd.refused", reason.as_str());
                // Raised inside the decision's span: the event joins its trace.
                span.in_scope(|| {
                    shared.event(
                        i,
                        EventKind::Refused,
                        Some(state.routing),
                        None,
                        reason,
                        inputs.clone(),
                        "engine",
                    )
                });
                warn!(playbook = %name, "operator command refused: {reason}");
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        traceparent: crate::trace::traceparent(&span),
                        actor: "engine".into(),
                        action: "refused".into(),
                        playbook: name.clone(),
                        reason: reason.clone(),
                        inputs: inputs.clone(),
                        outcome: format!("refused: {reason}"),
                        ..Entry::default()
                    })))
                    .await;
            }
        }
    }
    let stuck = d.state.stuck;
    set_status(shared, i, |s| {
        s.explain = d.explain.clone();
        s.signals = obs;
        if route.is_none() {
            s.phase = Some(d.state.phase.clone());
        }
    });
    shared.notifier.condition(
        &name,
        &g.pb.spec.virtual_service.to_string(),
        &g.pb.spec.virtual_service.namespace,
        Condition {
            // The routing the store holds: a move still being written is not yet a condition
            // (the write's own event raises it once it lands).
            failed_over: if route.is_some() {
                state.routing != Routing::Primary
            } else {
                d.state.routing != Routing::Primary
            },
            stuck,
        },
    );
    shared
        .metrics
        .stuck
        .get_or_create(&labels([("playbook", &name)]))
        .set(i64::from(stuck));
    match route {
        // A standby evaluates and shows what it would do; only the leader writes (and adopts
        // the move once written). It re-reads every route when it takes over.
        Some(_) if !shared.leader.is_leader() => {}
        Some(job) => {
            g.pending = true;
            if jobs.send(Job::Write(Box::new(job))).await.is_err() {
                g.pending = false;
            } else {
                outcome.write_queued = true;
            }
        }
        None => {
            set_phase_metric(shared, &name, state.phase.name(), d.state.phase.name());
            g.state = Some(d.state);
        }
    }
    if let Some(w) = waiter {
        answer_queued(g, w, &outcome, shared);
    }
    outcome
}

/// Answers the caller of a command that was queued behind a write, now that it is decided:
/// refused (409), waiting for the write it caused, or done without a write.
pub(super) fn answer_queued(g: &mut Guarded, w: Waiter, outcome: &StepOutcome, shared: &Shared) {
    let (tx, message, created) = w;
    if let Some(r) = &outcome.refused {
        let _ = tx.send(Err(refuse(
            409,
            format!("{message}: refused when it came to apply after the write in flight: {r}"),
        )));
    } else if outcome.write_queued {
        g.waiters.push((tx, message, created));
    } else if !shared.leader.is_leader() {
        let _ = tx.send(Err(refuse(
            503,
            format!(
                "{message}: not applied, this replica lost leadership first; nothing was written"
            ),
        )));
    } else {
        let _ = tx.send(Ok(ControlReply {
            message,
            override_id: created,
            routing: g.state.as_ref().map(|s| s.routing),
            written: false,
        }));
    }
}

/// Drops every queued operator command that can no longer apply, answering its caller with
/// `status` and `why` (never a silent success).
pub(super) fn drop_queued_commands(guarded: &mut [Guarded], status: u16, why: &str) {
    for g in guarded.iter_mut() {
        g.command = None;
        if let Some((tx, message, _)) = g.command_waiter.take() {
            let _ = tx.send(Err(refuse(status, format!("{message}, but {why}"))));
        }
    }
}

/// The fleet blast-radius rule (see [`crate::engine::fleet`]): records where this playbook
/// stands and, when too many playbooks are in trouble at once, turns an automatic failover into
/// a hold (raising one `blast-radius` event per episode, audited). Operator moves pass untouched.
pub(super) async fn blast_radius(
    i: usize,
    name: &str,
    state: &State,
    mut d: Decision,
    now: Timestamp,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
) -> Decision {
    use crate::engine::fleet::{Gate, Seat};
    let wants = d.actions.iter().any(|a| {
        matches!(
            a,
            Action::Route {
                kind: MoveKind::Failover,
                from: Routing::Primary,
                ..
            }
        )
    });
    let seat = if d.state.routing != Routing::Primary {
        Seat::FailedOver
    } else if matches!(
        d.primary,
        Verdict::Unhealthy { .. } | Verdict::Suspect { .. }
    ) {
        Seat::Breaching
    } else {
        Seat::Fine
    };
    // Fails closed on a poisoned lock (see `fleet::gate`): the move is held, not let through.
    let gate = crate::engine::fleet::gate(&shared.fleet, i, wants, seat);
    let Gate::Hold { judgement, raise } = gate else {
        return d;
    };
    let reason = judgement.reason();
    d.actions.retain(|a| {
        !matches!(
            a,
            Action::Route {
                kind: MoveKind::Failover,
                ..
            }
        )
    });
    d.state = state.clone();
    if !matches!(d.state.phase, Phase::Suspect { .. }) {
        d.state.phase = Phase::Suspect { since: now };
    }
    d.explain = format!("{}; held: {reason}", d.explain);
    if raise {
        error!(playbook = %name, "blast radius: {reason}");
        let inputs = json!({ "primary": d.primary, "fleet": judgement });
        // Raised inside the decision's span (see `step`): the event joins its trace.
        shared.event(
            i,
            EventKind::BlastRadius,
            Some(state.routing),
            None,
            &reason,
            inputs.clone(),
            "engine",
        );
        tracing::Span::current().record("failoverd.refused", reason.as_str());
        let _ = jobs
            .send(Job::Audit(Box::new(Entry {
                traceparent: crate::trace::traceparent(&tracing::Span::current()),
                actor: "engine".into(),
                action: "blast-radius".into(),
                playbook: name.to_string(),
                reason,
                inputs,
                outcome: "held".into(),
                ..Entry::default()
            })))
            .await;
    }
    d
}

pub(super) fn set_phase_metric(shared: &Shared, playbook: &str, old: &str, new: &str) {
    // Most rounds keep the phase: zeroing it first would cost a second label set and
    // lookup on every round (and let a scrape see the playbook in no phase at all).
    if old != new {
        shared
            .metrics
            .phase
            .get_or_create(&labels([("playbook", playbook), ("phase", old)]))
            .set(0);
    }
    shared
        .metrics
        .phase
        .get_or_create(&labels([("playbook", playbook), ("phase", new)]))
        .set(1);
}
