//! Drills: the `kind: Drill` document ([`spec`]), when a drill may run ([`window`]) and
//! whether its error budget allows it ([`budget`]). Running one (the runner, its reports and
//! the error-budget query) is the daemon's.

pub mod budget;
pub mod inject;
pub mod spec;
pub mod window;
