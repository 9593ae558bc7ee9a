//! The engine: a pure function from (playbook, state, observations, overrides, now) to
//! (next state, actions).
//!
//! No I/O, no clock reads, no randomness: the caller passes `now`, so every rule here
//! (thresholds, `for`, minimum dwell, failback ramp, freezes) is tested with fixed instants.
//! The engine never routes to a destination it does not positively know to be healthy,
//! unless an operator forces it, and never moves twice within `minDwell` on its own.

pub mod fleet;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration as StdDuration;

use jiff::Timestamp;
use serde::Serialize;

use crate::playbook::{FailbackMode, OnMissing, Playbook, Target};

/// What one signal (probe or SLO) said last.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SignalKind {
    /// Active probe: counted in consecutive results (`failureThreshold`).
    Probe,
    /// SLO: counted in time (`for`).
    Slo,
}

/// The current summary of one signal, as the engine reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Probe or SLO name from the playbook.
    pub signal: String,
    /// Probe or SLO.
    pub kind: SignalKind,
    /// The destination it speaks for.
    pub target: Target,
    /// The latest result.
    pub health: Health,
    /// Consecutive results of the same kind as the latest, including it.
    pub streak: u32,
    /// When the current streak began.
    pub streak_since: Timestamp,
    /// When the latest result arrived.
    pub at: Timestamp,
    /// A result older than this is stale and read as Unknown (the probe loop stalled).
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
    /// A failback step: `primary_percent` on the primary, the rest on the failover target.
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// On the primary, primary healthy or unknown.
    Normal,
    /// On the primary, primary failing but the trigger not yet met (or no target to go to).
    Suspect {
        /// When the primary started failing.
        since: Timestamp,
    },
    /// All traffic on a failover target.
    FailedOver {
        /// Index into `spec.failover`.
        target: usize,
        /// When traffic moved there.
        since: Timestamp,
    },
    /// Failed over, primary healthy, waiting for `failback.after` (or for an operator).
    Recovering {
        /// Index into `spec.failover`.
        target: usize,
        /// Since when the primary has been healthy.
        since: Timestamp,
    },
    /// Traffic returning to the primary in steps.
    FailingBack {
        /// Index into `spec.failover`.
        target: usize,
        /// Index into `failback.steps` of the step in force.
        step: usize,
        /// When that step was written.
        since: Timestamp,
    },
    /// An operator froze automation; routing stays as it is.
    Frozen {
        /// When the freeze ends (None: until resumed).
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
}

fn elapsed(now: Timestamp, since: Timestamp) -> StdDuration {
    let d = now.duration_since(since);
    if d.is_negative() {
        StdDuration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// How old a signal's latest result may be before it reads as Unknown: three missed
/// intervals plus the attempt's timeout. Saturating: the durations come from a playbook.
pub fn stale_after(interval: StdDuration, timeout: StdDuration) -> StdDuration {
    interval.saturating_mul(3).saturating_add(timeout)
}

/// The explanation with its running clocks taken out: every duration written the way the
/// engine writes them (humantime's `1m 3s 200ms`) becomes `…`.
///
/// While a playbook waits (recovering for `failback.after`, held by `minDwell`, a breach that
/// must last `for`, a stale signal) its explanation carries the time elapsed or left, so the
/// text changes every decision round. Comparing this key instead says whether the *reason*
/// changed, so the controller logs on a change of phase or reason, not of the clock.
pub fn explain_key(explain: &str) -> String {
    let mut out = String::with_capacity(explain.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while let Some(c) = explain[i..].chars().next() {
        let starts_word = !prev.is_some_and(|p| p.is_alphanumeric() || p == '.' || p == '_');
        if c.is_ascii_digit()
            && starts_word
            && let Some(mut end) = duration_token_end(explain, i)
        {
            // A run of tokens (`1m 3s 200ms`) is one duration.
            while explain[end..].starts_with(' ') {
                match duration_token_end(explain, end + 1) {
                    Some(e) => end = e,
                    None => break,
                }
            }
            out.push('…');
            prev = explain[..end].chars().next_back();
            i = end;
            continue;
        }
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// The end of a humantime duration token (`200ms`, `3s`, `2days`) starting at `start`.
fn duration_token_end(s: &str, start: usize) -> Option<usize> {
    const UNITS: [&str; 13] = [
        "years", "year", "months", "month", "days", "day", "ms", "us", "µs", "ns", "h", "m", "s",
    ];
    let digits = s[start..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &s[start + digits..];
    UNITS.iter().find_map(|u| {
        let after = rest.strip_prefix(u)?;
        let boundary = !after.chars().next().is_some_and(char::is_alphanumeric);
        boundary.then_some(start + digits + u.len())
    })
}

/// Reads one target from its signals.
pub fn verdict(pb: &Playbook, obs: &[Observation], target: Target, now: Timestamp) -> Verdict {
    let threshold = pb.spec.trigger.failure_threshold.value.max(1);
    let for_ = pb.spec.trigger.for_.get();
    // onMissing=failover reads missing data on the primary as failing; a failover target is
    // never chosen on missing data, whatever the playbook says.
    let missing = match (pb.spec.on_missing, target) {
        (OnMissing::Failover, Target::Failover(_)) => OnMissing::Hold,
        (m, _) => m,
    };
    // An SLO breach alone may need a failing probe on the same target to count.
    let corroborate = pb.spec.trigger.require_probe_corroboration;
    let probe_failing = obs.iter().any(|o| {
        o.target == target
            && o.kind == SignalKind::Probe
            && matches!(o.health, Health::Unhealthy(_))
            && elapsed(now, o.at) <= o.max_age
    });
    let mut healthy_since: Option<Timestamp> = None;
    let mut suspect: Option<String> = None;
    let mut unknown: Option<String> = None;
    let mut seen = 0usize;
    for o in obs.iter().filter(|o| o.target == target) {
        let stale = elapsed(now, o.at) > o.max_age;
        let health = if stale {
            Health::Unknown(format!(
                "no result for {}",
                humantime::format_duration(round_ms(elapsed(now, o.at)))
            ))
        } else {
            o.health.clone()
        };
        let (health, streak, streak_since) = match (&health, missing) {
            (Health::Unknown(_), OnMissing::Ignore) => continue,
            (Health::Unknown(r), OnMissing::Failover) => (
                Health::Unhealthy(format!("no data ({r})")),
                if stale { threshold } else { o.streak },
                o.streak_since,
            ),
            _ => (health, o.streak, o.streak_since),
        };
        seen += 1;
        match health {
            Health::Healthy => {
                healthy_since = Some(healthy_since.map_or(streak_since, |h| h.max(streak_since)));
            }
            Health::Unhealthy(r) => {
                let lasted = elapsed(now, streak_since);
                let count_ok = o.kind == SignalKind::Slo || streak >= threshold;
                let corroborated = o.kind == SignalKind::Probe || !corroborate || probe_failing;
                if count_ok && lasted >= for_ && corroborated {
                    return Verdict::Unhealthy {
                        reason: format!("{}: {r}", o.signal),
                    };
                }
                if count_ok && lasted >= for_ {
                    suspect.get_or_insert_with(|| {
                        format!("{}: {r} (not corroborated by a failing probe)", o.signal)
                    });
                    continue;
                }
                suspect.get_or_insert_with(|| match o.kind {
                    SignalKind::Probe => format!("{}: {r} ({streak}/{threshold})", o.signal),
                    SignalKind::Slo => format!(
                        "{}: {r} (for {})",
                        o.signal,
                        humantime::format_duration(round_ms(lasted))
                    ),
                });
            }
            Health::Unknown(r) => {
                unknown.get_or_insert_with(|| format!("{}: {r}", o.signal));
            }
        }
    }
    if let Some(reason) = suspect {
        Verdict::Suspect { reason }
    } else if let Some(reason) = unknown {
        Verdict::Unknown { reason }
    } else if seen == 0 {
        Verdict::Unknown {
            reason: format!("no signal reports on {target}"),
        }
    } else {
        Verdict::Healthy {
            since: healthy_since.unwrap_or(now),
        }
    }
}

fn round_ms(d: StdDuration) -> StdDuration {
    // Saturates rather than truncating `as_millis()` (u128) to u64.
    StdDuration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first failover target, in playbook order, that is positively healthy (skipping `except`).
pub fn first_healthy_target(
    pb: &Playbook,
    obs: &[Observation],
    now: Timestamp,
    except: Option<usize>,
) -> Option<usize> {
    (0..pb.spec.failover.value.len())
        .filter(|i| Some(*i) != except)
        .find(|i| verdict(pb, obs, Target::Failover(*i), now).is_healthy())
}

/// Checks an operator failover before it is accepted: the target must exist and, unless
/// forced, be known healthy. Returns the resolved target index.
pub fn check_operator_failover(
    pb: &Playbook,
    obs: &[Observation],
    target: Option<usize>,
    force: bool,
    now: Timestamp,
) -> Result<usize, String> {
    let n = pb.spec.failover.value.len();
    match target {
        Some(t) if t >= n => Err(format!("failover[{t}] does not exist ({n} failover targets)")),
        Some(t) => {
            let v = verdict(pb, obs, Target::Failover(t), now);
            if v.is_healthy() || force {
                Ok(t)
            } else {
                Err(format!(
                    "failover[{t}] is not known healthy ({}); use force to route there anyway",
                    describe(&v)
                ))
            }
        }
        None => first_healthy_target(pb, obs, now, None).ok_or_else(|| {
            "no failover target is known healthy; name one with target and force to route there anyway"
                .to_string()
        }),
    }
}

/// One-line description of a verdict.
pub fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Healthy { since } => format!("healthy since {since}"),
        Verdict::Suspect { reason } => format!("suspect: {reason}"),
        Verdict::Unhealthy { reason } => format!("unhealthy: {reason}"),
        Verdict::Unknown { reason } => format!("unknown: {reason}"),
    }
}

struct Ctx<'a> {
    pb: &'a Playbook,
    obs: &'a [Observation],
    now: Timestamp,
    state: &'a State,
    next: State,
    actions: Vec<Action>,
    explain: String,
}

impl Ctx<'_> {
    fn dwell_left(&self) -> Option<StdDuration> {
        let min = self.pb.spec.min_dwell.get();
        let last = self.state.last_move?;
        let e = elapsed(self.now, last);
        (e < min).then(|| min - e)
    }

    fn route(
        &mut self,
        to: Routing,
        kind: MoveKind,
        reason: String,
        forced: bool,
        actor: Option<Actor>,
    ) {
        if to != self.state.routing {
            self.actions.push(Action::Route {
                from: self.state.routing,
                to,
                kind,
                reason: reason.clone(),
                forced,
                actor,
            });
            self.next.routing = to;
            if kind.starts_move(self.state.routing) {
                self.next.last_move = Some(self.now);
            }
        }
        self.explain = reason;
    }

    fn stuck(&mut self, reason: String) {
        if !self.state.stuck {
            self.actions.push(Action::Stuck {
                reason: reason.clone(),
            });
        }
        self.next.stuck = true;
        self.explain = reason;
    }

    fn target_verdict(&self, t: usize) -> Verdict {
        verdict(self.pb, self.obs, Target::Failover(t), self.now)
    }
}

/// Decides what to do next. Pure: the same inputs always give the same output, and an input
/// that changes nothing gives no action.
pub fn decide(
    pb: &Playbook,
    state: &State,
    obs: &[Observation],
    overrides: &Overrides,
    now: Timestamp,
) -> Decision {
    let primary = verdict(pb, obs, Target::Primary, now);
    let mut cx = Ctx {
        pb,
        obs,
        now,
        state,
        next: state.clone(),
        actions: Vec::new(),
        explain: String::new(),
    };
    cx.next.stuck = false;

    // Operator commands come first: they are explicit, audited, and exempt from dwell.
    if let Some(Command::Failback { by, force }) = &overrides.command {
        if state.routing == Routing::Primary {
            cx.actions.push(Action::Refused {
                reason: "already on the primary route".into(),
            });
        } else if primary.is_healthy() || *force {
            let forced = !primary.is_healthy();
            cx.route(
                Routing::Primary,
                MoveKind::OperatorFailback,
                format!(
                    "operator {} failed back: {} (primary {})",
                    by.identity,
                    by.reason,
                    describe(&primary)
                ),
                forced,
                Some(by.clone()),
            );
            cx.next.phase = Phase::Normal;
            return finish(cx, primary);
        } else {
            cx.actions.push(Action::Refused {
                reason: format!(
                    "primary is not known healthy ({}); use force to fail back anyway",
                    describe(&primary)
                ),
            });
        }
    }

    // A freeze that ended (or is overruled by an operator hold) hands control back from
    // wherever routing stands.
    let phase = match &state.phase {
        Phase::Frozen { .. } => State::resume(state.routing, now).phase,
        p => p.clone(),
    };
    cx.next.phase = phase.clone();

    // An operator hold is an explicit instruction: it applies even while automation is frozen.
    let hold = overrides.hold.as_ref().filter(|h| h.until > now);
    if let Some(h) = hold {
        let v = cx.target_verdict(h.target);
        let already_there = state.routing == Routing::Failover { target: h.target };
        // A hold comes from the saved overrides, which may name a target the (reloaded)
        // playbook no longer has: `force` cannot route to a destination that does not exist.
        let exists = h.target < pb.spec.failover.value.len();
        let target = if exists
            && (h.force
                || v.is_healthy()
                || (already_there && !matches!(v, Verdict::Unhealthy { .. })))
        {
            Some(h.target)
        } else {
            // The held target is not known healthy: stay failed over, on the next healthy
            // target if any (only `force` sends traffic somewhere failoverd cannot vouch for).
            first_healthy_target(pb, obs, now, Some(h.target))
        };
        match target {
            Some(t) => {
                let reason = format!(
                    "operator {} holds failover to failover[{t}] until {}: {}",
                    h.by.identity, h.until, h.by.reason
                );
                cx.route(
                    Routing::Failover { target: t },
                    MoveKind::OperatorFailover,
                    reason,
                    h.force && !cx.target_verdict(t).is_healthy(),
                    Some(h.by.clone()),
                );
                cx.next.phase = match phase {
                    Phase::FailedOver { target, since } if target == t => Phase::FailedOver { target, since },
                    _ => Phase::FailedOver { target: t, since: now },
                };
            }
            None if !exists => cx.stuck(format!(
                "operator hold on failover[{}], which does not exist ({} failover target(s)), and no other failover target is healthy",
                h.target,
                pb.spec.failover.value.len()
            )),
            None => cx.stuck(format!(
                "operator hold on failover[{}], which is {}, and no other failover target is healthy",
                h.target,
                describe(&v)
            )),
        }
        return finish(cx, primary);
    }

    let freeze = overrides
        .freeze
        .as_ref()
        .filter(|f| f.until.is_none_or(|u| u > now));
    if let Some(f) = freeze {
        cx.next.phase = Phase::Frozen { until: f.until };
        cx.explain = format!("frozen by {}: {}", f.by.identity, f.by.reason);
        return finish(cx, primary);
    }
    match phase {
        Phase::Normal | Phase::Suspect { .. } | Phase::Frozen { .. } => {
            on_primary(&mut cx, &primary, &phase)
        }
        Phase::FailedOver { target, since } | Phase::Recovering { target, since } => {
            failed_over(&mut cx, &primary, target, since, &phase)
        }
        Phase::FailingBack {
            target,
            step,
            since,
        } => failing_back(&mut cx, &primary, target, step, since),
    }
    finish(cx, primary)
}

fn finish(cx: Ctx<'_>, primary: Verdict) -> Decision {
    Decision {
        state: cx.next,
        actions: cx.actions,
        explain: cx.explain,
        primary,
    }
}

fn on_primary(cx: &mut Ctx<'_>, primary: &Verdict, phase: &Phase) {
    let now = cx.now;
    match primary {
        Verdict::Unhealthy { reason } => {
            let since = match phase {
                Phase::Suspect { since } => *since,
                _ => now,
            };
            cx.next.phase = Phase::Suspect { since };
            let Some(t) = first_healthy_target(cx.pb, cx.obs, now, None) else {
                cx.stuck(format!(
                    "primary unhealthy ({reason}) and no failover target is known healthy: staying on the primary"
                ));
                return;
            };
            if let Some(left) = cx.dwell_left() {
                cx.explain = format!(
                    "primary unhealthy ({reason}); minDwell holds the route for {}",
                    humantime::format_duration(round_ms(left))
                );
                return;
            }
            let dest = cx
                .pb
                .destination(Target::Failover(t))
                .map(|d| d.to_string())
                .unwrap_or_default();
            cx.route(
                Routing::Failover { target: t },
                MoveKind::Failover,
                format!("primary unhealthy ({reason}); failing over to failover[{t}] {dest}"),
                false,
                None,
            );
            cx.next.phase = Phase::FailedOver {
                target: t,
                since: now,
            };
        }
        Verdict::Suspect { reason } => {
            let since = match phase {
                Phase::Suspect { since } => *since,
                _ => now,
            };
            cx.next.phase = Phase::Suspect { since };
            cx.explain = format!("primary suspect ({reason})");
        }
        Verdict::Healthy { .. } => {
            cx.next.phase = Phase::Normal;
            cx.explain = "primary healthy".into();
        }
        Verdict::Unknown { reason } => {
            cx.next.phase = Phase::Normal;
            cx.explain = format!("primary unknown ({reason}): holding");
        }
    }
}

fn failed_over(
    cx: &mut Ctx<'_>,
    primary: &Verdict,
    target: usize,
    since: Timestamp,
    phase: &Phase,
) {
    let now = cx.now;
    let pb = cx.pb;
    let failed_at = match phase {
        Phase::FailedOver { since, .. } => *since,
        _ => since,
    };
    let current = cx.target_verdict(target);
    if let Verdict::Unhealthy { reason } = &current {
        // The target we are on died. Prefer a healthy primary, else another healthy target.
        let (to, kind) = if primary.is_healthy() {
            (Routing::Primary, MoveKind::Failback)
        } else if let Some(t) = first_healthy_target(pb, cx.obs, now, Some(target)) {
            (Routing::Failover { target: t }, MoveKind::Switch)
        } else {
            cx.stuck(format!(
                "failover[{target}] unhealthy ({reason}) and no other destination is known healthy (primary {}): staying",
                describe(primary)
            ));
            return;
        };
        if let Some(left) = cx.dwell_left() {
            cx.explain = format!(
                "failover[{target}] unhealthy ({reason}); minDwell holds the route for {}",
                humantime::format_duration(round_ms(left))
            );
            return;
        }
        cx.route(
            to,
            kind,
            format!("failover[{target}] unhealthy ({reason}); moving to {to}"),
            false,
            None,
        );
        cx.next.phase = match to {
            Routing::Failover { target } => Phase::FailedOver { target, since: now },
            _ => Phase::Normal,
        };
        return;
    }
    let Verdict::Healthy {
        since: healthy_since,
    } = primary
    else {
        cx.next.phase = Phase::FailedOver {
            target,
            since: failed_at,
        };
        cx.explain = format!(
            "failed over to failover[{target}]; primary {}",
            describe(primary)
        );
        return;
    };
    let after = pb.spec.failback.after.get();
    let stable = elapsed(now, *healthy_since);
    cx.next.phase = Phase::Recovering {
        target,
        since: *healthy_since,
    };
    if stable < after {
        cx.explain = format!(
            "primary healthy for {} of {} before failback",
            humantime::format_duration(round_ms(stable)),
            pb.spec.failback.after
        );
        return;
    }
    if pb.spec.failback.mode == FailbackMode::Manual {
        cx.explain = "primary stable; failback mode is manual: waiting for an operator".into();
        return;
    }
    if let Some(left) = cx.dwell_left() {
        cx.explain = format!(
            "primary stable; minDwell holds the route for {}",
            humantime::format_duration(round_ms(left))
        );
        return;
    }
    let first = pb.failback_steps().first().copied().unwrap_or(100);
    let reason = format!(
        "primary healthy for {} (≥ {}); failing back",
        humantime::format_duration(round_ms(stable)),
        pb.spec.failback.after
    );
    if first >= 100 {
        cx.route(Routing::Primary, MoveKind::Failback, reason, false, None);
        cx.next.phase = Phase::Normal;
    } else {
        cx.route(
            Routing::Split {
                target,
                primary_percent: first,
            },
            MoveKind::FailbackStep,
            format!("{reason}: step 1, {first}% to the primary"),
            false,
            None,
        );
        cx.next.phase = Phase::FailingBack {
            target,
            step: 0,
            since: now,
        };
    }
}

fn failing_back(cx: &mut Ctx<'_>, primary: &Verdict, target: usize, step: usize, since: Timestamp) {
    let now = cx.now;
    let pb = cx.pb;
    match primary {
        Verdict::Unhealthy { reason } | Verdict::Suspect { reason } => {
            // A cold primary that stumbles during the ramp loses all its traffic at once.
            let to = if cx.target_verdict(target).is_healthy() {
                Some(target)
            } else {
                first_healthy_target(pb, cx.obs, now, None)
            };
            match to {
                Some(t) => {
                    cx.route(
                        Routing::Failover { target: t },
                        MoveKind::FailbackAborted,
                        format!("primary failing during failback ({reason}); all traffic back to failover[{t}]"),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::FailedOver { target: t, since: now };
                }
                None => cx.stuck(format!(
                    "primary failing during failback ({reason}) and no failover target is known healthy: holding the split"
                )),
            }
        }
        Verdict::Unknown { reason } => {
            cx.explain = format!(
                "failback paused at step {}: primary unknown ({reason})",
                step + 1
            );
        }
        Verdict::Healthy { .. }
            if matches!(cx.target_verdict(target), Verdict::Unhealthy { .. }) =>
        {
            cx.route(
                Routing::Primary,
                MoveKind::Failback,
                format!("failover[{target}] failed during failback and the primary is healthy: original route restored"),
                false,
                None,
            );
            cx.next.phase = Phase::Normal;
        }
        Verdict::Healthy { .. } => {
            let steps = pb.failback_steps();
            let interval = pb.spec.failback.step_interval.get();
            if elapsed(now, since) < interval {
                cx.explain = format!(
                    "failback at step {} of {}: {}% on the primary",
                    step + 1,
                    steps.len(),
                    steps.get(step).copied().unwrap_or(100)
                );
                return;
            }
            let next = step + 1;
            match steps.get(next).copied() {
                Some(p) if p < 100 => {
                    cx.route(
                        Routing::Split {
                            target,
                            primary_percent: p,
                        },
                        MoveKind::FailbackStep,
                        format!(
                            "failback step {} of {}: {p}% to the primary",
                            next + 1,
                            steps.len()
                        ),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::FailingBack {
                        target,
                        step: next,
                        since: now,
                    };
                }
                _ => {
                    cx.route(
                        Routing::Primary,
                        MoveKind::Failback,
                        "failback complete: original route restored".into(),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::Normal;
                }
            }
        }
    }
}
