//! failoverd: an emergency failover control daemon for services on an Istio mesh.
//!
//! Probes and SLO signals feed a pure [`engine`]; its actions go through one writer to a
//! [`routing`] store, and every move is recorded in the [`audit`] log.

pub mod api;
pub mod audit;
pub mod audit_read;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod drill;
pub mod engine;
pub mod leader;
pub mod log_escape;
pub mod metrics;
pub mod notify;
pub mod overrides;
pub mod playbook;
pub mod reload;
pub mod routing;
pub mod runtime {
    //! The control loop and the types every room shares, under their former path.
    pub use crate::control::*;
    pub use crate::shared::*;
}
pub mod server;
pub mod shared;
pub mod signals;
pub use signals as slo;
pub mod standin;
pub mod tls;
pub mod validate;
