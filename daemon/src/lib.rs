//! failoverd: an emergency failover control daemon for services on an Istio mesh.
//!
//! Probes and SLO signals feed a pure [`engine`]; its actions go through one writer to a
//! [`routing`] store, and every move is recorded in the [`audit`] log.

pub mod api;
pub mod app;
pub mod audit;
/// Audit reads for `GET /v1/audit` (kept at its old path).
pub use api::audit_read;
/// API tokens (kept at its old path).
pub use api::auth;
pub mod cli;
/// The override API's command-line client (kept at its old path).
pub use cli::client;
pub mod config;
pub mod console;
pub mod control;
/// The demo (kept at its old path).
pub use cli::demo;
pub mod drill;
pub use failoverd_core::engine;
pub mod kube_call;
pub mod leader;
pub mod log_escape;
pub mod mesh;
pub mod metrics;
pub mod notify;
pub mod overrides;
pub mod playbook;
pub mod reload;
pub mod routing;
/// The HTTP listener (kept at its old path).
pub use api::server;
pub mod screen;
pub mod shared;
pub mod signals;
pub mod trace;
pub mod trail;
pub use signals as slo;
pub mod standin;
/// TLS on the API listener (kept at its old path).
pub use api::tls;
pub mod validate;
pub mod vantage;
