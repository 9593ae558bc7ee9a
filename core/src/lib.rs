//! failoverd's pure core: what the daemon decides and checks, with no I/O runtime and no
//! network crate in reach.
//!
//! - [`manifest`]: which failoverd document a YAML text is (by `apiVersion` and `kind`);
//! - [`playbook`] and [`drill`]: the documents' models, parsed from text and validated with
//!   problems located by file, line, column and field;
//! - [`engine`]: the decision, a pure function of (playbook, state, observations, overrides,
//!   now), and the fleet rule over all playbooks;
//! - [`audit`]: the audit record and its hash-chain arithmetic;
//! - [`routing`]: the route arithmetic on a VirtualService value;
//! - [`residency`]: the cluster facts on residency and mesh policy, and the verdict on a target.
//!
//! Its dependency closure holds no tokio, kube, k8s-openapi, reqwest, hyper, axum or tonic
//! (checked by `tests/no_io_deps.rs`): whatever needs those lives in the daemon, which hands
//! the core plain values (and, for probe options, a [`playbook::ProbeChecks`]).

pub mod audit;
pub mod drill;
pub mod engine;
pub mod manifest;
pub mod playbook;
pub mod residency;
pub mod routing;

/// Schema-only types for the API's OpenAPI document: how values of foreign types (here
/// `std::time::Duration`) look in JSON.
#[cfg(feature = "openapi")]
pub mod openapi {
    /// A duration as seconds and nanoseconds (how `std::time::Duration` serializes).
    #[derive(Debug, utoipa::ToSchema)]
    pub struct StdDuration {
        /// Whole seconds.
        pub secs: u64,
        /// Nanoseconds past `secs`.
        pub nanos: u32,
    }
}
