//! Drills: the `kind: Drill` document ([`spec`]) and when a drill may run ([`window`]).
//! Running one (the runner, its reports and the error-budget query) is the daemon's.

pub mod spec;
pub mod window;
