//! OpenAPI mirrors of types the API returns but other modules define (the engine, the
//! runtime, the override store and the audit log). They only describe the JSON: the tests
//! in `api/openapi.rs` hold each one to the fields and variants its real type serializes,
//! and the API test suite checks live answers against them, so a drift shows.
//!
//! A leaf of `api/`: the handlers refer to these in their annotations and the document in
//! `openapi` collects them, so neither imports the other.

use serde_json::Value;
use utoipa::ToSchema;

/// Where traffic goes: the original route, all on a failover target, or a failback step.
#[derive(Debug, ToSchema)]
#[serde(tag = "to", rename_all = "camelCase")]
pub enum Routing {
    /// The original route exactly.
    Primary,
    /// All traffic on failover target `target`.
    Failover {
        /// Index into `spec.failover`.
        target: usize,
    },
    /// A failback step: `primaryPercent` on the primary, the rest on `target`.
    #[serde(rename_all = "camelCase")]
    Split {
        /// Index into `spec.failover`.
        target: usize,
        /// Percent on the primary, 1..=99.
        primary_percent: u8,
    },
}

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

/// A playbook's life-cycle phase with its details.
#[derive(Debug, ToSchema)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// On the primary, primary healthy or unknown.
    Normal,
    /// On the primary, primary failing but the trigger not yet met.
    Suspect {
        /// When the primary started failing.
        #[schema(format = DateTime)]
        since: String,
    },
    /// All traffic on a failover target.
    FailedOver {
        /// Index into `spec.failover`.
        target: usize,
        /// When traffic moved there.
        #[schema(format = DateTime)]
        since: String,
    },
    /// Failed over, primary healthy, waiting for `failback.after` (or an operator).
    Recovering {
        /// Index into `spec.failover`.
        target: usize,
        /// Since when the primary has been healthy.
        #[schema(format = DateTime)]
        since: String,
    },
    /// Traffic returning to the primary in steps.
    FailingBack {
        /// Index into `spec.failover`.
        target: usize,
        /// Index into `failback.steps` of the step in force.
        step: usize,
        /// When that step was written.
        #[schema(format = DateTime)]
        since: String,
    },
    /// An operator froze automation; routing stays as it is.
    Frozen {
        /// When the freeze ends (null: until resumed).
        #[schema(format = DateTime)]
        until: Option<String>,
    },
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

/// What one signal said last.
#[derive(Debug, ToSchema)]
#[serde(tag = "state", content = "reason", rename_all = "camelCase")]
pub enum Health {
    /// The signal saw its target working.
    Healthy,
    /// The signal saw its target failing, and why.
    Unhealthy(String),
    /// The signal could not tell, and why.
    Unknown(String),
}

/// Whether a signal is an active probe or an SLO.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SignalKind {
    /// Active probe.
    Probe,
    /// SLO.
    Slo,
}

/// A duration as seconds and nanoseconds.
#[derive(Debug, ToSchema)]
pub struct StdDuration {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

/// The current summary of one signal.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Probe or SLO name from the playbook.
    pub signal: String,
    /// Probe or SLO.
    pub kind: SignalKind,
    /// The destination it speaks for: `primary` or `failover[N]`.
    #[schema(pattern = r"^(primary|failover\[[0-9]+\])$")]
    pub target: String,
    /// The latest result.
    pub health: Health,
    /// Consecutive results of the same kind as the latest, including it.
    pub streak: u32,
    /// When the current streak began.
    #[schema(format = DateTime)]
    pub streak_since: String,
    /// When the latest result arrived.
    #[schema(format = DateTime)]
    pub at: String,
    /// A result older than this is stale.
    pub max_age: StdDuration,
    /// The values behind the latest result (an SLO's ratios per window), for
    /// explanations; absent when there are none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Why traffic moved.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum MoveKind {
    /// Primary failed; traffic to a failover target.
    Failover,
    /// The failover target failed; traffic to another healthy destination.
    Switch,
    /// One step of a stepped failback.
    FailbackStep,
    /// Traffic back on the original route.
    Failback,
    /// The primary failed during the failback ramp.
    FailbackAborted,
    /// An operator's failover hold.
    OperatorFailover,
    /// An operator's failback.
    OperatorFailback,
    /// The same routing written again after someone else changed the route (`onDrift:
    /// reassert`): not a new move.
    Reassert,
}

/// One move.
#[derive(Debug, ToSchema)]
pub struct Transition {
    /// When the write completed.
    #[schema(format = DateTime)]
    pub time: String,
    /// What kind of move.
    pub kind: MoveKind,
    /// Routing before.
    pub from: Routing,
    /// Routing after.
    pub to: Routing,
    /// Why.
    pub reason: String,
    /// Who (`engine` or an operator).
    pub actor: String,
}

/// What the daemon shows about one playbook.
#[derive(Debug, ToSchema)]
pub struct PlaybookStatus {
    /// Playbook name.
    pub name: String,
    /// Life-cycle phase (null until the store has been read).
    pub phase: Option<Phase>,
    /// Current routing as failoverd knows it.
    pub routing: Option<Routing>,
    /// The last decision's explanation.
    pub explain: String,
    /// The last error on this playbook, if any.
    pub error: Option<String>,
    /// Latest observation per signal.
    pub signals: Vec<Observation>,
    /// Recent moves, newest last.
    pub transitions: Vec<Transition>,
}

/// Kind of an override.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OverrideKind {
    /// Automation frozen: no automatic moves.
    Freeze,
    /// Failover held to a target until the TTL ends.
    Failover,
}

/// One active override (freeze or failover hold); persisted, so it survives restarts.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideRecord {
    /// Stable id, e.g. `ov-3f9a1c2b`.
    #[schema(example = "ov-3f9a1c2b")]
    pub id: String,
    /// The playbook it applies to.
    pub playbook: String,
    /// Freeze or failover hold.
    pub kind: OverrideKind,
    /// Authenticated identity of the operator.
    pub actor: String,
    /// The operator's reason.
    pub reason: String,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created: String,
    /// When it ends.
    #[schema(format = DateTime)]
    pub until: String,
    /// Failover target index (holds only).
    pub target: Option<usize>,
    /// Route to the target even if failoverd believes it unhealthy (holds only).
    pub force: bool,
}

/// One audit record (hash-chained JSON Lines).
#[derive(Debug, ToSchema)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
    #[schema(format = DateTime)]
    pub time: String,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
    /// `engine` for automatic moves, else the operator's identity.
    pub actor: String,
    /// What happened: `failover`, `override-freeze`, `operator-failover`, ...
    pub action: String,
    /// The playbook concerned (empty for daemon-wide records).
    pub playbook: String,
    /// Why, in words.
    pub reason: String,
    /// The observations and values that caused it.
    pub inputs: Value,
    /// Route before.
    pub before: Value,
    /// Route after.
    pub after: Value,
    /// `intent`, `written`, `unchanged`, `accepted`, `failed: ...`, `refused: ...`, `noted`.
    pub outcome: String,
}

/// A successful operator call.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlReply {
    /// What happened.
    pub message: String,
    /// The override created, if any.
    pub override_id: Option<String>,
    /// Routing after the call.
    pub routing: Option<Routing>,
    /// True when the call wrote the routing store.
    pub written: bool,
}
