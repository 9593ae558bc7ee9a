//! Chaos drills: failoverd exercises its own failover path, on a schedule and on demand,
//! always rolls back, and reports a verdict with measured times.
//!
//! A live drill moves traffic the way an operator would: a failover hold through the
//! controller (the engine decides, the single writer writes and audits), with the identity
//! `drill:<name>`; after `hold` it fails back the same way and checks that the store holds the
//! exact original route again. It never writes routes itself. A plan drill evaluates the same
//! things (target health, the route a failover would write) and writes nothing.
//!
//! Rules: one drill at a time per playbook; never on a playbook that is failed over, failing
//! over, frozen or held; a real incident, a freeze or an operator override during the hold
//! aborts the drill. With an error-budget floor (`abort.errorBudget`, see [`budget`]) a live
//! drill also needs the service's remaining error budget, read from Prometheus, to be known
//! and at or above the floor, before it starts and throughout the hold. A live run in flight
//! is persisted under the state directory, so a restarted failoverd rolls it back and
//! records it as aborted.

pub mod budget;
pub mod fault_report;
pub mod report;
pub mod spec;

mod fault;
mod live;
mod run;
pub use failoverd_core::drill::window;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, error, info};

use crate::audit::AuditLog;
use crate::engine::{self, Actor, Phase, Routing};
use crate::overrides::{OverrideKind, OverrideRecord};
use crate::playbook::Target;
use crate::routing::RoutingStore;
use crate::shared::{Control, ControlKind, Shared};
use crate::slo::PromClient;

pub use report::{Leg, Run, RunStore, Verdict};
pub use spec::{LoadedDrill, Mode};

/// Time an operator-style call may take before the drill counts it as failed (the API's own
/// wait for a routing write).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often abort conditions are checked during the hold: quick enough to act within a
/// probe interval or two, cheap (it reads shared state only).
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Extra life of the drill's failover hold beyond the drill's own budget: if failoverd dies
/// and stays down, the hold still ends by itself.
const HOLD_MARGIN: Duration = Duration::from_secs(300);
/// How long a refused failback is retried (a primary whose health is briefly unknown, as
/// right after a restart) before the drill releases its hold to the engine.
const FAILBACK_RETRY: Duration = Duration::from_secs(30);
/// How long a restarted failoverd waits for its first probe round (and the routes) before
/// rolling back a drill it found in flight.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);

/// Why a run request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (404 unknown drill, 409 a rule refused).
    pub status: u16,
    /// One line.
    pub error: String,
}

fn refusal(status: u16, error: impl Into<String>) -> Refusal {
    Refusal {
        status,
        error: error.into(),
    }
}

/// Who asked for a run.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The drill's schedule.
    Schedule,
    /// An operator through the API.
    Manual {
        /// Authenticated identity.
        identity: String,
        /// Why.
        reason: String,
        /// Run even on a blocked date or outside the windows (never past a safety rule).
        force: bool,
    },
}

/// One drill as `GET /v1/drills` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillSummary {
    /// Drill name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// `plan` or `live`.
    pub mode: &'static str,
    /// Playbooks in scope.
    pub playbooks: Vec<String>,
    /// The cron schedule, if any.
    pub schedule: Option<String>,
    /// Its time zone.
    pub time_zone: String,
    /// Next scheduled run (None: manual only).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_run: Option<Timestamp>,
    /// Why a run now would be skipped (blocked date, outside windows), if it would.
    pub blocked_now: Option<String>,
    /// The id of a run in progress.
    pub running: Option<String>,
    /// The newest run.
    pub last_run: Option<RunSummary>,
}

/// A run in a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DrillRunSummary)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Verdict.
    pub result: Verdict,
    /// Start.
    #[schema(value_type = String, format = DateTime)]
    pub started: Timestamp,
    /// End.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished: Option<Timestamp>,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// Why that verdict.
    pub reasons: Vec<String>,
}

impl From<&Run> for RunSummary {
    fn from(r: &Run) -> Self {
        Self {
            id: r.id.clone(),
            result: r.result,
            started: r.started,
            finished: r.finished,
            trigger: r.trigger.clone(),
            reasons: r.reasons.clone(),
        }
    }
}

/// Identity prefix of a drill's operator calls (`drill:<name>`).
pub const ACTOR_PREFIX: &str = "drill:";

/// The controller's hook: why a drill's failover must be refused now (None: go ahead). A
/// drill moves only a playbook in normal operation, on its original route, without a freeze
/// or an operator's hold.
pub fn refuse_drill_failover(
    actor: &Actor,
    kind: &ControlKind,
    playbook: &str,
    state: &engine::State,
    overrides: &[OverrideRecord],
) -> Option<String> {
    let drill = actor.identity.strip_prefix(ACTOR_PREFIX)?;
    if !matches!(kind, ControlKind::Failover { .. }) {
        return None;
    }
    if !matches!(state.phase, Phase::Normal) || state.routing != Routing::Primary {
        return Some(format!(
            "drill {drill}: the playbook is {} on {}: drills never run on a playbook that is failed over, failing over or frozen",
            state.phase.name(),
            state.routing
        ));
    }
    overrides
        .iter()
        .find(|r| r.playbook == playbook && r.actor != actor.identity)
        .map(|r| {
            format!(
                "drill {drill}: the playbook has a {:?} override by {} ({})",
                r.kind, r.actor, r.reason
            )
        })
}

/// The drill service: definitions, runs, the scheduler and the runner.
#[derive(Debug)]
pub struct Drills {
    defs: Vec<LoadedDrill>,
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    store: Arc<dyn RoutingStore>,
    audit: Arc<Mutex<AuditLog>>,
    runs: Mutex<RunStore>,
    /// Playbook name → id of the run that has it.
    busy: Mutex<HashMap<String, String>>,
    /// Drill name → next scheduled run.
    next: Mutex<HashMap<String, Timestamp>>,
    shutdown: watch::Receiver<bool>,
    /// Reads error budgets (`abort.errorBudget`), with the daemon's `prometheusClient`.
    prometheus: PromClient,
    /// The daemon's default Prometheus (`--prometheus`).
    default_server: Option<String>,
}

impl Drills {
    /// The service for `defs`, keeping reports under `dir`; error budgets are read with
    /// `prometheus` from their own server or `default_server`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        defs: Vec<LoadedDrill>,
        dir: &Path,
        shared: Arc<Shared>,
        control: mpsc::Sender<Control>,
        store: Arc<dyn RoutingStore>,
        audit: Arc<Mutex<AuditLog>>,
        shutdown: watch::Receiver<bool>,
        prometheus: PromClient,
        default_server: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            defs,
            shared,
            control,
            store,
            audit,
            runs: Mutex::new(RunStore::open(dir)),
            busy: Mutex::default(),
            next: Mutex::default(),
            shutdown,
            prometheus,
            default_server,
        })
    }

    /// Rolls back drills a previous process left in flight, then starts the schedule.
    pub fn start(self: &Arc<Self>) {
        let svc = self.clone();
        tokio::spawn(self.clone().sweep_faults());
        tokio::spawn(async move {
            svc.recover().await;
            if let Err(e) = svc.clone().schedule().await {
                error!(error = %e, "drill scheduler failed; drills run on demand only");
            }
        });
    }

    fn def(&self, name: &str) -> Option<&LoadedDrill> {
        self.defs.iter().find(|d| d.name() == name)
    }

    /// Every drill with its next scheduled time and last result.
    pub fn list(&self) -> Vec<DrillSummary> {
        let now = Timestamp::now();
        let next = self.next.lock().map(|n| n.clone()).unwrap_or_default();
        let busy = self.busy.lock().map(|b| b.clone()).unwrap_or_default();
        self.defs
            .iter()
            .map(|d| {
                let last = self.runs.lock().ok().and_then(|r| r.last(d.name()));
                let running = d
                    .playbooks()
                    .iter()
                    .filter_map(|p| busy.get(p))
                    .find(|id| {
                        self.run(d.name(), id)
                            .is_some_and(|r| r.result == Verdict::Running)
                    })
                    .cloned();
                DrillSummary {
                    name: d.name().to_string(),
                    file: d.file.display().to_string(),
                    mode: d.drill.spec.mode.as_str(),
                    playbooks: d.playbooks(),
                    schedule: d.drill.spec.schedule.as_ref().map(|s| s.value.clone()),
                    time_zone: d.drill.spec.time_zone.value.clone(),
                    next_run: next.get(d.name()).copied(),
                    blocked_now: window::gate(d, now),
                    running,
                    last_run: last.as_ref().map(RunSummary::from),
                }
            })
            .collect()
    }

    /// True when a drill of that name is loaded.
    pub fn exists(&self, name: &str) -> bool {
        self.def(name).is_some()
    }

    /// Runs of a drill, newest first.
    pub fn runs(&self, name: &str) -> Vec<Run> {
        self.runs.lock().map(|r| r.list(name)).unwrap_or_default()
    }

    /// One run.
    pub fn run(&self, name: &str, id: &str) -> Option<Run> {
        self.runs.lock().ok().and_then(|r| r.get(name, id))
    }

    fn save(&self, run: &Run) {
        if let Ok(mut r) = self.runs.lock()
            && let Err(e) = r.save(run)
        {
            error!(drill = %run.drill, run = %run.id, error = %e, "cannot persist the drill report");
        }
    }

    /// Why `playbook` cannot be drilled now (None: it can).
    fn playbook_refusal(&self, playbook: &str, mode: Mode) -> Option<String> {
        let Some(idx) = self.shared.index(playbook) else {
            return Some(format!("playbook `{playbook}` is not loaded"));
        };
        // Every lookup that finds nothing refuses: "no reason found" must mean "checked".
        let (Some(status), Some(pb)) = (
            self.shared.snapshot().into_iter().nth(idx),
            self.shared.playbooks.get(idx),
        ) else {
            return Some(format!(
                "playbook `{playbook}`: its status cannot be read; drills refuse rather than guess"
            ));
        };
        match (&status.phase, status.routing) {
            (None, _) | (_, None) => {
                return Some(format!(
                    "playbook `{playbook}` is inactive: its VirtualService has not been read"
                ));
            }
            (Some(Phase::Normal), Some(Routing::Primary)) => {}
            (Some(p), Some(r)) => {
                return Some(format!(
                    "playbook `{playbook}` is {} on {r}: drills never run on a playbook that is failed over, failing over or frozen",
                    p.name()
                ));
            }
        }
        // A poisoned lock means the overrides cannot be read: fail closed, a drill must never
        // run over a freeze it could not see.
        let Ok(overrides) = self.shared.overrides.read() else {
            return Some(format!(
                "playbook `{playbook}`: its overrides cannot be read (lock poisoned); drills refuse rather than risk running over a freeze"
            ));
        };
        if let Some(r) = overrides.iter().find(|r| r.playbook == playbook) {
            let what = match r.kind {
                OverrideKind::Freeze => "frozen",
                OverrideKind::Failover => "held on a failover target",
            };
            return Some(format!(
                "playbook `{playbook}` is {what} by {} until {} ({})",
                r.actor, r.until, r.reason
            ));
        }
        drop(overrides);
        let v = engine::verdict(pb, &status.signals, Target::Primary, Timestamp::now());
        match (&v, mode) {
            (engine::Verdict::Healthy { .. }, _) => None,
            (engine::Verdict::Unknown { .. }, Mode::Plan) => None,
            _ => Some(format!(
                "playbook `{playbook}`: primary is not known healthy ({}): a drill needs a healthy primary to return to",
                engine::describe(&v)
            )),
        }
    }

    /// Starts a run (or records a skipped one). Returns the run as it starts; refusals of
    /// manual runs come back as errors, refusals of scheduled runs as skipped runs. A live
    /// drill with an error-budget floor reads the budget first (a bounded Prometheus query).
    pub async fn request(self: &Arc<Self>, name: &str, trigger: Trigger) -> Result<Run, Refusal> {
        let def = self
            .def(name)
            .ok_or_else(|| refusal(404, format!("no drill named `{name}`")))?
            .clone();
        // Only the leader moves traffic: a standby neither runs nor records drills (the
        // leader runs the scheduled ones).
        if !self.shared.leader.is_leader() {
            return Err(refusal(
                503,
                format!(
                    "this replica is a standby; drills run on the leader{}",
                    self.shared
                        .leader
                        .holder()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                ),
            ));
        }
        let (kind, requested_by, reason, force) = match &trigger {
            Trigger::Schedule => (
                "schedule",
                "failoverd".to_string(),
                format!(
                    "schedule `{}` ({})",
                    def.drill
                        .spec
                        .schedule
                        .as_ref()
                        .map_or("", |s| s.value.as_str()),
                    def.drill.spec.time_zone.value
                ),
                false,
            ),
            Trigger::Manual {
                identity,
                reason,
                force,
            } => ("manual", identity.clone(), reason.clone(), *force),
        };
        let mut run = Run {
            id: report::new_run_id(),
            drill: name.to_string(),
            mode: def.drill.spec.mode.as_str().to_string(),
            trigger: kind.to_string(),
            requested_by,
            reason,
            started: Timestamp::now(),
            finished: None,
            result: Verdict::Running,
            reasons: Vec::new(),
            timeline: Vec::new(),
            playbooks: def
                .playbooks()
                .into_iter()
                .map(|p| Leg {
                    playbook: p,
                    ..Leg::default()
                })
                .collect(),
        };
        let refused = {
            let mut busy = self
                .busy
                .lock()
                .map_err(|_| refusal(500, "drill state lock poisoned"))?;
            let mut why = if force {
                None
            } else {
                window::gate(&def, run.started).map(|g| {
                    if matches!(trigger, Trigger::Manual { .. }) {
                        format!("{g}; pass force to run anyway")
                    } else {
                        g
                    }
                })
            };
            for p in def.playbooks() {
                if why.is_some() {
                    break;
                }
                if let Some(other) = busy.get(&p) {
                    why = Some(format!(
                        "playbook `{p}` is already in drill run {other}: one drill at a time"
                    ));
                } else {
                    why = self.playbook_refusal(&p, def.drill.spec.mode);
                }
            }
            if why.is_none() {
                for p in def.playbooks() {
                    busy.insert(p, run.id.clone());
                }
            }
            why
        };
        // The error-budget floor, last: the other rules are cheap reads of memory, this one
        // a Prometheus query. The playbooks stay reserved meanwhile, so no other run slips in.
        let refused = match (
            &refused,
            def.drill.spec.mode,
            &def.drill.spec.abort.error_budget,
        ) {
            (None, Mode::Live, Some(eb)) => {
                match budget::check(eb, &self.prometheus, self.default_server.as_deref()).await {
                    Ok(detail) => {
                        run.step(None, "error-budget", detail);
                        None
                    }
                    Err(why) => {
                        if let Ok(mut busy) = self.busy.lock() {
                            busy.retain(|_, id| id != &run.id);
                        }
                        Some(format!("{why}: a live drill needs the budget to afford it"))
                    }
                }
            }
            _ => refused,
        };
        if let Some(why) = refused {
            if matches!(trigger, Trigger::Manual { .. }) {
                return Err(refusal(409, why));
            }
            run.step(None, "skipped", why.clone());
            run.reasons.push(why);
            self.finish(&mut run, Verdict::Skipped);
            return Ok(run);
        }
        run.step(
            None,
            "started",
            format!(
                "{} drill over {} by {} ({})",
                run.mode,
                def.playbooks().join(", "),
                run.requested_by,
                run.reason
            ),
        );
        self.save(&run);
        let started = run.clone();
        let svc = self.clone();
        // The run's span (tracing on; always sampled): the moves it causes through the
        // controller, and its audit records, are its children.
        let span = tracing::trace_span!(
            "failoverd.drill.run",
            failoverd.kind = "drill",
            failoverd.drill = %run.drill,
            failoverd.drill.run = %run.id,
            failoverd.drill.mode = %run.mode,
            failoverd.drill.trigger = %run.trigger,
            failoverd.playbook = %def.playbooks().join(","),
            failoverd.result = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                info!(drill = %run.drill, run = %run.id, mode = %run.mode, "drill started");
                svc.audit_run(&run, "drill-start", "started").await;
                match def.drill.spec.mode {
                    Mode::Plan => svc.run_plan(&def, &mut run).await,
                    Mode::Live if def.drill.spec.inject.is_some() => {
                        svc.run_fault(&def, &mut run).await
                    }
                    Mode::Live => svc.run_live(&def, &mut run).await,
                }
                tracing::Span::current().record("failoverd.result", run.result.as_str());
            }
            .instrument(span),
        );
        Ok(started)
    }
}

#[cfg(test)]
mod tests;
