//! The engine: a pure function from (playbook, state, observations, overrides, now) to
//! (next state, actions).
//!
//! No I/O, no clock reads, no randomness: the caller passes `now`, so every rule here
//! (thresholds, `for`, minimum dwell, failback ramp, freezes) is tested with fixed instants.
//! The engine never routes to a destination it does not positively know to be healthy,
//! unless an operator forces it, and never moves twice within `minDwell` on its own.

mod decision;
mod explain;
pub mod fleet;
mod operator;
#[cfg(test)]
mod tests;
mod types;
pub mod vantages;
#[cfg(test)]
mod vantages_tests;
mod verdicts;

pub use decision::decide;
pub use explain::explain_key;
pub use operator::check_operator_failover;
pub use types::{
    Action, Actor, Command, Decision, Freeze, Health, Hold, MoveKind, Observation, Overrides,
    Phase, Routing, SignalKind, State, Verdict,
};
pub use verdicts::{describe, fence, first_healthy_target, stale_after, verdict};
