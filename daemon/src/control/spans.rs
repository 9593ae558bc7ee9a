//! The span of a deciding round (tracing on, see [`crate::trace`]): `failoverd.decide`,
//! with one child per signal the engine used. A leaf: no sibling is imported.

use crate::engine::{self, Decision, Verdict};

/// The `failoverd.decide` span of a round that acts or refuses, with one child per signal
/// (its health, streak and the values behind it). `command`: the round decides an operator
/// command (`failoverd.kind` is then refined by the action), `parent`: its caller's trace.
pub(super) fn decide_span(
    name: &str,
    d: &Decision,
    obs: &[engine::Observation],
    command: bool,
    parent: Option<&str>,
) -> tracing::Span {
    let span = tracing::trace_span!(
        "failoverd.decide",
        failoverd.playbook = %name,
        failoverd.phase = d.state.phase.name(),
        failoverd.kind = if command { "operator" } else { "automatic" },
        failoverd.primary = match d.primary {
            Verdict::Healthy { .. } => "healthy",
            Verdict::Suspect { .. } => "suspect",
            Verdict::Unhealthy { .. } => "unhealthy",
            Verdict::Unknown { .. } => "unknown",
        },
        failoverd.move = tracing::field::Empty,
        failoverd.from = tracing::field::Empty,
        failoverd.to = tracing::field::Empty,
        failoverd.reason = tracing::field::Empty,
        failoverd.refused = tracing::field::Empty,
    );
    if let Some(tp) = parent {
        crate::trace::set_parent(&span, tp);
    }
    for o in obs {
        let health = match &o.health {
            engine::Health::Healthy => "healthy",
            engine::Health::Unhealthy(_) => "unhealthy",
            engine::Health::Unknown(_) => "unknown",
        };
        let _signal = tracing::trace_span!(
            parent: &span,
            "failoverd.signal",
            failoverd.signal = %o.signal,
            failoverd.signal.kind = ?o.kind,
            failoverd.signal.target = ?o.target,
            failoverd.signal.health = health,
            failoverd.signal.streak = o.streak,
            failoverd.signal.at = %o.at,
            failoverd.signal.detail = %o.detail,
        );
    }
    span
}
