//! The schemas of the API's answers: derived from the real types (the engine's and the
//! audit record's through the core's `openapi` feature), re-exported here under the names
//! the handlers' annotations use; plus the two that describe a string or a request field
//! rather than a type (`PhaseName`, `TargetSpec`). The tests in `api/openapi.rs` hold each
//! schema to what values of its type serialize to.
//!
//! A leaf of `api/`: the handlers refer to these in their annotations and the document in
//! `openapi` collects them, so neither imports the other.

use utoipa::ToSchema;

pub use crate::audit::Record as AuditRecord;
pub use crate::engine::{Health, MoveKind, Observation, Phase, Routing, SignalKind};
pub use crate::overrides::{OverrideKind, OverrideRecord};
pub use crate::shared::{ControlReply, PlaybookStatus, Transition};
pub use failoverd_core::openapi::StdDuration;

/// Short name of a life-cycle phase.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PhaseName {
    /// On the primary.
    Normal,
    /// On the primary, primary failing below the trigger.
    Suspect,
    /// All traffic on a failover target.
    FailedOver,
    /// Failed over, primary healthy, waiting for `failback.after`.
    Recovering,
    /// Returning to the primary in steps.
    FailingBack,
    /// Automation frozen by an operator.
    Frozen,
}

/// A failover target in a request: `failover[N]` or the index N.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum TargetSpec {
    /// `failover[N]` (0-based index into `spec.failover`).
    #[schema(example = "failover[0]")]
    Name(String),
    /// N (0-based index into `spec.failover`).
    Index(u64),
}
