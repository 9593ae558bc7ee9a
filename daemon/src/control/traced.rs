//! An operator command's span (tracing on, see [`crate::trace`]): `failoverd.control`, in
//! its caller's trace, around the command's whole handling.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::engine::Actor;
use crate::shared::{Clock, Control, ControlKind, Shared};

use super::commands::Book;
use super::{Guarded, Job};

/// Applies an operator command (see `commands::handle_control_in`) inside its span.
pub(super) async fn handle_control(
    msg: Control,
    guarded: &mut [Guarded],
    store: &mut Book,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    // The command's span, in the caller's trace (tracing on): the decision it causes, its
    // audit records and events are its children.
    let span = tracing::trace_span!(
        "failoverd.control",
        failoverd.action = msg.kind.action(),
        failoverd.playbook = msg.playbook.as_deref().unwrap_or(""),
        failoverd.kind = kind_word(&msg.actor, &msg.kind),
    );
    if let Some(tp) = &msg.traceparent {
        crate::trace::set_parent(&span, tp);
    }
    super::commands::handle_control_in(msg, guarded, store, log, jobs, shared, clock)
        .instrument(span)
        .await
}

/// `failoverd.kind` of an operator command: `drill`, `break-glass` (an approved two-person
/// break-glass hold) or `operator`.
fn kind_word(actor: &Actor, kind: &ControlKind) -> &'static str {
    if actor.identity.starts_with(crate::drill::ACTOR_PREFIX) {
        "drill"
    } else if matches!(
        kind,
        ControlKind::Failover {
            break_glass: Some(_),
            ..
        }
    ) {
        "break-glass"
    } else {
        "operator"
    }
}
