//! The engine's values: signals and their health, verdicts, routings, the carried state,
//! operator overrides, and the actions and decision the engine returns.

use std::fmt;
use std::time::Duration as StdDuration;

use jiff::Timestamp;
use serde::Serialize;

use crate::playbook::Target;

/// What one signal (probe or SLO) said last.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "camelCase")]
pub enum Health {
    /// The signal saw its target working.
    Healthy,
    /// The signal saw its target failing, and why.
    Unhealthy(String),
    /// The signal could not tell (probe could not run, no data): never healthy, never failing.
    Unknown(String),
}

impl Health {
    fn class(&self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Unhealthy(_) => 1,
            Health::Unknown(_) => 2,
        }
    }

    /// True when both are the same kind (ignoring the reason).
    pub fn same_class(&self, other: &Health) -> bool {
        self.class() == other.class()
    }
}

/// Whether a signal is an active probe or an SLO.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SignalKind {
    /// Active probe: counted in consecutive results (`failureThreshold`).
    Probe,
    /// SLO: counted in time (`for`).
    Slo,
    /// Residency and mesh policy, judged from the cluster's objects: never counted; one
    /// that does not clear its target makes the target ineligible at once, and `force`
    /// cannot override it (only an approved break-glass can).
    Policy,
    /// Another replica's verdict on the target (`signal` is its vantage name, `at` when its
    /// report arrived here, `max_age` three exchange intervals). Never read as a signal of
    /// the target: it only holds back an automatic failover the vantages do not agree on,
    /// and vetoes a failover target it sees unhealthy.
    Vantage,
}

/// The current summary of one signal, as the engine reads it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Probe or SLO name from the playbook.
    pub signal: String,
    /// Probe or SLO.
    pub kind: SignalKind,
    /// The destination it speaks for: `primary` or `failover[N]`.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, pattern = r"^(primary|failover\[[0-9]+\])$")
    )]
    pub target: Target,
    /// The latest result.
    pub health: Health,
    /// Consecutive results of the same kind as the latest, including it.
    pub streak: u32,
    /// When the current streak began.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub streak_since: Timestamp,
    /// When the latest result arrived.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// A result older than this is stale and read as Unknown (the probe loop stalled).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::StdDuration))]
    pub max_age: StdDuration,
    /// The values behind the latest result (an SLO's ratios per window), for explanations.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The engine's reading of one target, combining its signals.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Verdict {
    /// Every signal healthy, since the given instant.
    Healthy {
        /// The latest instant from which every signal has been healthy.
        since: Timestamp,
    },
    /// Failing, but below `failureThreshold` / `for`.
    Suspect {
        /// Which signal and why.
        reason: String,
    },
    /// Failing past the trigger.
    Unhealthy {
        /// Which signal and why.
        reason: String,
    },
    /// Not enough data to tell.
    Unknown {
        /// Which signal and why.
        reason: String,
    },
}

impl Verdict {
    /// True only for a positively healthy target.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }
}

/// Where traffic goes, in the playbook's terms. The routing store turns this into Istio
/// destinations; `Primary` means "the original route exactly". Stored in the state
/// annotation, so its serialised form is a compatibility contract.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "to", rename_all = "camelCase")]
pub enum Routing {
    /// The original route (what the VirtualService had before failover).
    Primary,
    /// All traffic to failover target N.
    Failover {
        /// Index into `spec.failover`.
        target: usize,
    },
    /// A failback step: `primaryPercent` on the primary, the rest on the failover target.
    #[serde(rename_all = "camelCase")]
    Split {
        /// Index into `spec.failover`.
        target: usize,
        /// Percent on the primary, in 1..=99.
        primary_percent: u8,
    },
}

impl Routing {
    /// The weights per target; they always sum to 100 and no entry is 0.
    pub fn weights(&self) -> Vec<(Target, u8)> {
        match *self {
            Routing::Primary => vec![(Target::Primary, 100)],
            Routing::Failover { target } => vec![(Target::Failover(target), 100)],
            Routing::Split {
                target,
                primary_percent,
            } => {
                let p = primary_percent.clamp(1, 99);
                vec![(Target::Primary, p), (Target::Failover(target), 100 - p)]
            }
        }
    }

    /// The targets that receive traffic.
    pub fn targets(&self) -> impl Iterator<Item = Target> {
        self.weights().into_iter().map(|(t, _)| t)
    }

    /// Checks a routing that came from outside the engine (the VirtualService's state
    /// annotation, which anyone with write access to the object can edit) against a playbook
    /// with `failover_targets` failover targets: every target index exists and a split puts
    /// 1..=99 % on the primary, so its two weights are both non-zero and sum to 100.
    ///
    /// The engine itself only ever produces routings that pass; this is the gate at entry so
    /// a foreign or tampered value is refused with a reason instead of being computed with.
    pub fn check(&self, failover_targets: usize) -> Result<(), String> {
        let target_ok = |t: usize| {
            if t < failover_targets {
                Ok(())
            } else {
                Err(format!(
                    "failover[{t}] does not exist (the playbook has {failover_targets} failover target(s))"
                ))
            }
        };
        match *self {
            Routing::Primary => Ok(()),
            Routing::Failover { target } => target_ok(target),
            Routing::Split {
                target,
                primary_percent,
            } => {
                target_ok(target)?;
                if (1..=99).contains(&primary_percent) {
                    Ok(())
                } else {
                    Err(format!(
                        "primaryPercent {primary_percent} is outside 1..=99 (a split must leave \
                         a non-zero share on both sides, summing to 100)"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::Primary => f.write_str("primary (original route)"),
            Routing::Failover { target } => write!(f, "failover[{target}] 100%"),
            // The same (clamped) weights the route is written with: never `100 - p` on an
            // unchecked value, which would underflow for p > 100.
            Routing::Split {
                target,
                primary_percent,
            } => {
                let p = (*primary_percent).clamp(1, 99);
                write!(f, "primary {p}% / failover[{target}] {}%", 100 - p)
            }
        }
    }
}

/// Where a playbook is in its life cycle.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// On the primary, primary healthy or unknown.
    Normal,
    /// On the primary, primary failing but the trigger not yet met (or no target to go to).
    Suspect {
        /// When the primary started failing.
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        since: Timestamp,
    },
    /// All traffic on a failover target.
    FailedOver {
        /// Index into `spec.failover`.
        target: usize,
        /// When traffic moved there.
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        since: Timestamp,
    },
    /// Failed over, primary healthy, waiting for `failback.after` (or for an operator).
    Recovering {
        /// Index into `spec.failover`.
        target: usize,
        /// Since when the primary has been healthy.
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        since: Timestamp,
    },
    /// Traffic returning to the primary in steps.
    FailingBack {
        /// Index into `spec.failover`.
        target: usize,
        /// Index into `failback.steps` of the step in force.
        step: usize,
        /// When that step was written.
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        since: Timestamp,
    },
    /// An operator froze automation; routing stays as it is.
    Frozen {
        /// When the freeze ends (null: until resumed).
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
        until: Option<Timestamp>,
    },
}

impl Phase {
    /// A short lower-case name for metrics and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Suspect { .. } => "suspect",
            Phase::FailedOver { .. } => "failedOver",
            Phase::Recovering { .. } => "recovering",
            Phase::FailingBack { .. } => "failingBack",
            Phase::Frozen { .. } => "frozen",
        }
    }
}

/// Per-playbook state carried from one decision to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Life-cycle phase.
    pub phase: Phase,
    /// What the routing store holds (as far as the engine knows).
    pub routing: Routing,
    /// When failoverd last moved traffic (for `minDwell`).
    pub last_move: Option<Timestamp>,
    /// True while the engine is raising "no healthy destination" (so the alert fires once).
    pub stuck: bool,
}

impl State {
    /// The state of a playbook found routing as `routing` at start-up.
    ///
    /// A failed-over route resumes as failed over to the target it found, so the primary gets
    /// no traffic again until it has been healthy for `failback.after`.
    pub fn resume(routing: Routing, now: Timestamp) -> Self {
        Self {
            phase: match routing {
                Routing::Primary => Phase::Normal,
                Routing::Failover { target } => Phase::FailedOver { target, since: now },
                // A ramp interrupted by a restart resumes at its first step's rules: the
                // primary keeps its share only while healthy, else loses it at once.
                Routing::Split { target, .. } => Phase::FailingBack {
                    target,
                    step: 0,
                    since: now,
                },
            },
            routing,
            last_move: None,
            stuck: false,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self {
            phase: Phase::Normal,
            routing: Routing::Primary,
            last_move: None,
            stuck: false,
        }
    }
}

/// Who asked for something, and why (kept for the audit record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// Authenticated identity, e.g. `alice@oncall`.
    pub identity: String,
    /// The reason given.
    pub reason: String,
}

/// An operator freeze: no automatic moves until it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Freeze {
    /// Who froze and why.
    pub by: Actor,
    /// End of the freeze (None: until resumed).
    pub until: Option<Timestamp>,
}

/// An operator failover that holds for its TTL even when the primary looks healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// Who and why.
    pub by: Actor,
    /// Index into `spec.failover`.
    pub target: usize,
    /// When the hold ends and automation takes over again.
    pub until: Timestamp,
    /// Route there even if failoverd believes the target unhealthy.
    pub force: bool,
    /// The id of the two-person break-glass that approved this hold: it may route to a
    /// target that residency or mesh policy refuses. None for every other hold.
    pub break_glass: Option<String>,
}

/// A one-shot operator command, passed to exactly one `decide` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum Command {
    /// Return all traffic to the primary now (ignores `failback.after`, steps and dwell).
    Failback {
        /// Who and why.
        by: Actor,
        /// Fail back even if the primary is not known healthy.
        force: bool,
    },
}

/// Operator input that shapes a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// An active freeze, if any (expired ones are ignored).
    pub freeze: Option<Freeze>,
    /// An operator failover hold, if any (expired ones are ignored).
    pub hold: Option<Hold>,
    /// A one-shot command.
    pub command: Option<Command>,
}

/// Why traffic moved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    /// The primary failed during the failback ramp; all traffic back to the failover target.
    FailbackAborted,
    /// An operator's failover hold.
    OperatorFailover,
    /// An operator's failback.
    OperatorFailback,
    /// The same routing written again after someone else changed the route (`onDrift:
    /// reassert`). Not a new move: the engine never emits it; the runtime does.
    Reassert,
}

impl MoveKind {
    /// Stable lower-case name (audit `action`, metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            MoveKind::Failover => "failover",
            MoveKind::Switch => "switch",
            MoveKind::FailbackStep => "failback-step",
            MoveKind::Failback => "failback",
            MoveKind::FailbackAborted => "failback-aborted",
            MoveKind::OperatorFailover => "operator-failover",
            MoveKind::OperatorFailback => "operator-failback",
            MoveKind::Reassert => "reassert",
        }
    }

    /// True when a move of this kind from `from` starts a new move and so restarts the
    /// `minDwell` clock: failover, switch, the first step of a failback, and operator moves
    /// (automation then leaves an operator's decision alone for `minDwell`). Later ramp steps
    /// and a ramp abort continue a move already started. Operator moves are never *held* by
    /// the dwell; only automatic ones are.
    pub fn starts_move(&self, from: Routing) -> bool {
        match self {
            MoveKind::Failover
            | MoveKind::Switch
            | MoveKind::OperatorFailover
            | MoveKind::OperatorFailback => true,
            MoveKind::Failback | MoveKind::FailbackStep => !matches!(from, Routing::Split { .. }),
            MoveKind::FailbackAborted | MoveKind::Reassert => false,
        }
    }
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Write this routing to the store.
    Route {
        /// What the store holds now.
        from: Routing,
        /// What to write.
        to: Routing,
        /// Why.
        kind: MoveKind,
        /// Human explanation, kept in the audit record.
        reason: String,
        /// True when an operator forced a target failoverd believes unhealthy.
        forced: bool,
        /// The operator behind the move, if any.
        actor: Option<Actor>,
        /// The approved break-glass that lets this move pass the fence (its id), if any.
        break_glass: Option<String>,
    },
    /// Tell on-call: traffic cannot go anywhere healthy.
    Stuck {
        /// What is wrong.
        reason: String,
    },
    /// An operator command was refused by a safety rule.
    Refused {
        /// The rule that refused it.
        reason: String,
    },
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// State to carry forward once the actions are done.
    pub state: State,
    /// What to do (empty when nothing changes: deciding again is harmless).
    pub actions: Vec<Action>,
    /// Why the engine did (or did not) act, in one line.
    pub explain: String,
    /// The primary's verdict this round.
    pub primary: Verdict,
    /// Set when an automatic failover was made on this replica's view alone although the
    /// playbook asks for agreement (no live peer, fewer live than `min`): a bounded reason
    /// for the log and `failoverd_vantage_fallback_total{reason}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'static str>,
}
