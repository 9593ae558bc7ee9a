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
pub mod demo;
pub mod drift;
pub mod drill;
pub use failoverd_core::engine;
pub mod leader;
pub mod log_escape;
pub mod metrics;
pub mod notify;
pub mod overrides;
pub mod playbook;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod slo;
pub mod standin;
pub mod tls;
pub mod validate;
