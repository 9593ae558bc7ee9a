//! What a notification is about: the event kinds, one event, and a playbook's ongoing
//! conditions. Plain data, shared by every sink.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Traffic moved to a failover target (automatic or operator).
    Failover,
    /// A failback step or the completed return to the original route.
    Failback,
    /// A routing write failed (it is retried).
    WriteFailed,
    /// No healthy destination: failoverd cannot move traffic anywhere safe.
    Stuck,
    /// An operator created an override (failover hold, failback, resume, delete).
    Override,
    /// An operator froze automation.
    Freeze,
    /// An override reached its end.
    OverrideExpired,
    /// A signal has been unknown (no data) for a while.
    SignalUnknown,
    /// An operator call was refused by a rule.
    Refused,
    /// Too many playbooks breached at once (`maxConcurrentFailovers`): automatic failovers held.
    BlastRadius,
    /// A drill run ended (passed, failed, aborted or skipped); one event per drilled playbook.
    Drill,
    /// The audit log refuses appends (full disk, I/O error): no move can be made until it
    /// takes them again. Once per episode.
    AuditUnavailable,
    /// The audit log takes appends again after [`EventKind::AuditUnavailable`].
    AuditRecovered,
    /// A two-person break-glass was requested (page the second admin) or approved (traffic
    /// may now go where residency or mesh policy forbids).
    BreakGlass,
    /// One vantage (replica) alone sees many primaries failing that every other live vantage
    /// sees healthy: the observer is suspect, not the services. Once per episode.
    SuspectObserver,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 15] = [
        EventKind::Failover,
        EventKind::Failback,
        EventKind::WriteFailed,
        EventKind::Stuck,
        EventKind::Override,
        EventKind::Freeze,
        EventKind::OverrideExpired,
        EventKind::SignalUnknown,
        EventKind::Refused,
        EventKind::BlastRadius,
        EventKind::Drill,
        EventKind::AuditUnavailable,
        EventKind::AuditRecovered,
        EventKind::BreakGlass,
        EventKind::SuspectObserver,
    ];

    /// Stable name, as used in webhook `events:` filters and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::Failback => "failback",
            EventKind::WriteFailed => "write-failed",
            EventKind::Stuck => "stuck",
            EventKind::Override => "override",
            EventKind::Freeze => "freeze",
            EventKind::OverrideExpired => "override-expired",
            EventKind::SignalUnknown => "signal-unknown",
            EventKind::Refused => "refused",
            EventKind::BlastRadius => "blast-radius",
            EventKind::Drill => "drill",
            EventKind::AuditUnavailable => "audit-unavailable",
            EventKind::AuditRecovered => "audit-recovered",
            EventKind::BreakGlass => "break-glass",
            EventKind::SuspectObserver => "suspect-observer",
        }
    }

    /// The kind with this stable name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// `critical`, `warning` or `info`.
    pub fn severity(&self) -> &'static str {
        match self {
            EventKind::Stuck
            | EventKind::WriteFailed
            | EventKind::BlastRadius
            | EventKind::AuditUnavailable
            | EventKind::BreakGlass => "critical",
            // Suspect observer: agreement already holds the false failover (no traffic is
            // harmed); that replica's node needs looking at while it is one observer short.
            EventKind::Failover
            | EventKind::Refused
            | EventKind::SignalUnknown
            | EventKind::SuspectObserver => "warning",
            EventKind::Failback
            | EventKind::Override
            | EventKind::Freeze
            | EventKind::OverrideExpired
            | EventKind::Drill
            | EventKind::AuditRecovered => "info",
        }
    }

    /// The Alertmanager `alertname` of this event as a one-shot alert.
    pub fn alertname(&self) -> &'static str {
        match self {
            EventKind::Failover => "FailoverdFailover",
            EventKind::Failback => "FailoverdFailback",
            EventKind::WriteFailed => "FailoverdWriteFailed",
            EventKind::Stuck => "FailoverdStuckEvent",
            EventKind::Override => "FailoverdOverride",
            EventKind::Freeze => "FailoverdFreeze",
            EventKind::OverrideExpired => "FailoverdOverrideExpired",
            EventKind::SignalUnknown => "FailoverdSignalUnknown",
            EventKind::Refused => "FailoverdRefused",
            EventKind::BlastRadius => "FailoverdBlastRadius",
            EventKind::Drill => "FailoverdDrill",
            EventKind::AuditUnavailable => "FailoverdAuditUnavailable",
            EventKind::AuditRecovered => "FailoverdAuditRecovered",
            EventKind::BreakGlass => "FailoverdBreakGlass",
            EventKind::SuspectObserver => "FailoverdSuspectObserver",
        }
    }

    pub(super) fn bit(&self) -> u32 {
        1 << (*self as u32)
    }

    /// The default human summary template (see [`render`] for the placeholders).
    pub fn default_template(&self) -> &'static str {
        match self {
            EventKind::Failover => {
                "[{severity}] failoverd {playbook}: FAILED OVER {from} → {to}. Why: {reason}. By {actor}. {link}"
            }
            EventKind::Failback => {
                "[{severity}] failoverd {playbook}: failback {from} → {to}. Why: {reason}. By {actor}. {link}"
            }
            EventKind::WriteFailed => {
                "[{severity}] failoverd {playbook}: routing write FAILED ({from} → {to}), retrying. {reason}. {link}"
            }
            EventKind::Stuck => {
                "[{severity}] failoverd {playbook}: STUCK on {from}, no healthy destination to move to. {reason}. {link}"
            }
            EventKind::Override => {
                "[{severity}] failoverd {playbook}: operator override by {actor}: {reason}. Routing now {from}. {link}"
            }
            EventKind::Freeze => {
                "[{severity}] failoverd {playbook}: automation FROZEN by {actor}: {reason}. {link}"
            }
            EventKind::OverrideExpired => {
                "[{severity}] failoverd {playbook}: override ended, automation back in control. {reason}. {link}"
            }
            EventKind::SignalUnknown => {
                "[{severity}] failoverd {playbook}: signal unknown (no data), read neither healthy nor failing: {reason}. {link}"
            }
            EventKind::Refused => {
                "[{severity}] failoverd {playbook}: REFUSED: {reason}. Routing stays {from}. {link}"
            }
            EventKind::BlastRadius => {
                "[{severity}] failoverd {playbook}: BLAST RADIUS: automatic failovers held. {reason}. {link}"
            }
            EventKind::Drill => {
                "[{severity}] failoverd {playbook}: DRILL {reason}. By {actor}. {link}"
            }
            EventKind::AuditUnavailable => {
                "[{severity}] failoverd {playbook}: AUDIT LOG UNAVAILABLE, no move is made until it takes appends again: {reason}. {link}"
            }
            EventKind::AuditRecovered => {
                "[{severity}] failoverd {playbook}: audit log takes appends again; held moves proceed. {reason}. {link}"
            }
            EventKind::BreakGlass => {
                "[{severity}] failoverd {playbook}: BREAK-GLASS past residency/mesh policy: {reason}. By {actor}. {link}"
            }
            EventKind::SuspectObserver => {
                "[{severity}] failoverd {playbook}: SUSPECT OBSERVER, failover held: {reason}. {link}"
            }
        }
    }
}

/// One event for on-call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub time: Timestamp,
    /// The playbook.
    pub playbook: String,
    /// The VirtualService `namespace/name`.
    pub service: String,
    /// The VirtualService namespace.
    pub namespace: String,
    /// Routing before (human form), if any.
    pub from: Option<String>,
    /// Routing after (human form), if any.
    pub to: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The signal values that decided it.
    pub signals: Value,
    /// `engine`, `failoverd` or the operator's identity.
    pub actor: String,
    /// The W3C `traceparent` of the decision or call behind it (tracing on): delivery spans
    /// join that trace and the webhook body carries its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Ongoing conditions of one playbook, for alerts that fire while they last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// Traffic is not on the original route.
    pub failed_over: bool,
    /// No healthy destination to go to.
    pub stuck: bool,
}

/// A sample event for tests of every sink (one fixture, not one per file).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) fn sample_event(kind: EventKind) -> Event {
    Event {
        kind,
        time: "2026-11-03T10:00:00Z".parse().unwrap(),
        playbook: "case-management".into(),
        service: "child-welfare/case-management".into(),
        namespace: "child-welfare".into(),
        from: Some("primary (original route)".into()),
        to: Some("failover[0] 100%".into()),
        reason: "primary unhealthy: 3 consecutive probe failures".into(),
        signals: serde_json::json!({"primary-health": "unhealthy"}),
        actor: "engine".into(),
        traceparent: None,
    }
}
