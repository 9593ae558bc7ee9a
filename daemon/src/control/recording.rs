//! Audit records from the controller, and the audit log's availability told to on-call.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde_json::Value;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Entry, Record};
use crate::notify::{Event, EventKind};
use crate::shared::Shared;

use super::Guarded;
use super::step::set_status;

pub(super) async fn audit(log: &Arc<Mutex<AuditLog>>, entry: Entry) -> Result<(), String> {
    audit_record(log, entry).await.map(|_| ())
}

/// [`audit`], returning the record written (its `seq` is how an outcome names its intent).
pub(super) async fn audit_record(
    log: &Arc<Mutex<AuditLog>>,
    entry: Entry,
) -> Result<Record, String> {
    let span = append_span(&entry);
    let log = log.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut log = log
            .lock()
            .map_err(|_| "audit log lock poisoned".to_string())?;
        log.append(entry).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match &r {
        Ok(rec) => span.record("failoverd.audit.seq", rec.seq),
        Err(e) => span.record("error.type", e.as_str()),
    };
    r
}

/// The `failoverd.audit.append` span of a traced record (one whose cause is traced), in
/// that trace; disabled for the others.
fn append_span(entry: &Entry) -> tracing::Span {
    let Some(tp) = &entry.traceparent else {
        return tracing::Span::none();
    };
    let span = tracing::trace_span!(
        "failoverd.audit.append",
        failoverd.playbook = %entry.playbook,
        failoverd.action = %entry.action,
        failoverd.outcome = %entry.outcome,
        failoverd.audit.seq = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    crate::trace::set_parent(&span, tp);
    span
}

/// [`AuditLog::append_owed`] off the async threads: the record is written now or kept.
pub(super) async fn audit_owed(log: &Arc<Mutex<AuditLog>>, entry: Entry) -> Result<(), String> {
    let span = append_span(&entry);
    let log = log.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut log = log
            .lock()
            .map_err(|_| "audit log lock poisoned".to_string())?;
        log.append_owed(entry).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match &r {
        Ok(rec) => span.record("failoverd.audit.seq", rec.seq),
        Err(e) => span.record("error.type", e.as_str()),
    };
    r.map(|_| ())
}

/// Once per tick: while the audit log refuses appends, tries one (owed records first) so the
/// episode ends as soon as the log takes them again; announces each episode once (error line,
/// event `audit-unavailable`) and its end (`audit-recovered`). Metrics and `/readyz` follow
/// the log's [`AuditHealth`] directly.
pub(super) async fn audit_watch(
    log: &Arc<Mutex<AuditLog>>,
    announced: &mut bool,
    guarded: &mut [Guarded],
    shared: &Shared,
) {
    crate::audit::checkpoint_tick(log).await;
    let health = &shared.audit_health;
    if health.unavailable().is_some() {
        // Each round, one attempt to write the owed records and the episode's note (see
        // [`AuditLog::flush`]): it ends the episode as soon as the log takes appends again,
        // even with no move waiting.
        let log = log.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            log.lock()
                .map_err(|_| "audit log lock poisoned".to_string())
                .and_then(|mut l| l.flush().map_err(|e| e.to_string()))
        })
        .await;
        if matches!(flushed, Ok(Ok(()))) {
            info!(
                "the audit log takes appends again; records kept meanwhile are written, in order"
            );
        }
    }
    if health.owed() == 0 {
        for (i, g) in guarded.iter_mut().enumerate().filter(|(_, g)| g.unrecorded) {
            g.unrecorded = false;
            set_status(shared, i, |s| s.error = None);
        }
    }
    // The playbook whose move waits on the log, if any, names the event.
    let blocked = guarded.iter().position(|g| g.audit_blocked);
    match (health.unavailable(), *announced) {
        (Some(u), false) => {
            *announced = true;
            let reason = format!(
                "audit appends fail since {}: {}; moves are not made until the log takes appends (retried every round)",
                u.since, u.error
            );
            error!(owed = health.owed(), "{reason}");
            audit_event(shared, EventKind::AuditUnavailable, blocked, &reason);
        }
        (None, true) => {
            *announced = false;
            info!("the audit log takes appends again; moves held for it proceed");
            audit_event(
                shared,
                EventKind::AuditRecovered,
                blocked,
                "the audit log takes appends again",
            );
        }
        _ => {}
    }
}

/// An audit event, about the blocked playbook when there is one, else daemon-wide.
pub(super) fn audit_event(shared: &Shared, kind: EventKind, idx: Option<usize>, reason: &str) {
    match idx {
        Some(i) => shared.event(i, kind, None, None, reason, Value::Null, "failoverd"),
        None => shared.notifier.notify(Event {
            kind,
            time: Timestamp::now(),
            playbook: String::new(),
            service: String::new(),
            namespace: String::new(),
            from: None,
            to: None,
            reason: reason.to_string(),
            signals: Value::Null,
            actor: "failoverd".to_string(),
            traceparent: None,
        }),
    }
}

/// On takeover, after the takeover record (so this replica's file holds the whole chain):
/// intents the last leader recorded without an outcome (it died between the two) are
/// resolved from the store when each route is read again, as this replica's own would be at
/// a restart, so every write the last leader made has its outcome in the chain.
pub(super) async fn adopt_chain_intents(guarded: &mut [Guarded], log: &Arc<Mutex<AuditLog>>) {
    let log = log.clone();
    let found = tokio::task::spawn_blocking(move || {
        log.lock()
            .map_err(|_| "audit log lock poisoned".to_string())
            .and_then(|l| l.unresolved_now().map_err(|e| e.to_string()))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let intents = match found {
        Ok(i) => i,
        Err(e) => {
            error!(error = %e, "cannot read the audit chain for the last leader's open intents");
            return;
        }
    };
    for intent in intents {
        if let Some(g) = guarded
            .iter_mut()
            .find(|g| g.pb.name() == intent.playbook && g.open_intent.is_none() && !g.pending)
        {
            warn!(playbook = %intent.playbook, seq = intent.seq, "the audit chain holds an intent of the last leader with no outcome; resolving it from the store");
            g.open_intent = Some(intent);
        }
    }
}
