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
pub mod report;
pub mod spec;
pub use failoverd_core::drill::window;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::audit::{AuditLog, Entry};
use crate::engine::{self, Actor, Phase, Routing};
use crate::metrics::labels;
use crate::overrides::{OverrideKind, OverrideRecord};
use crate::playbook::{Playbook, Target};
use crate::routing::{self, RoutingStore};
use crate::shared::{Control, ControlError, ControlKind, ControlReply, Shared};
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
        tokio::spawn(async move {
            info!(drill = %run.drill, run = %run.id, mode = %run.mode, "drill started");
            svc.audit_run(&run, "drill-start", "started").await;
            match def.drill.spec.mode {
                Mode::Plan => svc.run_plan(&def, &mut run).await,
                Mode::Live => svc.run_live(&def, &mut run).await,
            }
        });
        Ok(started)
    }

    async fn audit_run(&self, run: &Run, action: &str, outcome: &str) {
        for leg in &run.playbooks {
            let entry = Entry {
                actor: format!("drill:{}", run.drill),
                action: action.into(),
                playbook: leg.playbook.clone(),
                reason: format!(
                    "{} drill run {} ({} by {}: {})",
                    run.mode, run.id, run.trigger, run.requested_by, run.reason
                ),
                inputs: json!({ "run": run.id, "reasons": run.reasons, "leg": leg }),
                outcome: outcome.to_string(),
                ..Entry::default()
            };
            let log = self.audit.clone();
            let res = tokio::task::spawn_blocking(move || {
                log.lock()
                    .map_err(|_| "audit log lock poisoned".to_string())
                    .and_then(|mut l| l.append(entry).map(|_| ()).map_err(|e| e.to_string()))
            })
            .await;
            if !matches!(res, Ok(Ok(()))) {
                self.shared.metrics.audit_errors.inc();
                error!(drill = %run.drill, "audit append for a drill failed");
            }
        }
    }

    /// Records the verdict: metrics, report, audit, and frees the playbooks.
    fn finish(self: &Arc<Self>, run: &mut Run, result: Verdict) {
        run.result = result;
        run.finished = Some(Timestamp::now());
        run.step(
            None,
            "finished",
            format!(
                "{}{}",
                result.as_str(),
                if run.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", run.reasons.join("; "))
                }
            ),
        );
        let m = &self.shared.metrics;
        m.drill_runs
            .get_or_create(&labels([
                ("drill", &run.drill),
                ("result", result.as_str()),
            ]))
            .inc();
        for leg in &run.playbooks {
            if let Some(s) = leg.failover_seconds {
                m.drill_failover_seconds
                    .get_or_create(&labels([("drill", &run.drill)]))
                    .observe(s);
            }
        }
        self.save(run);
        if let Ok(runs) = self.runs.lock()
            && let Err(e) = runs.clear_in_flight(&run.id)
        {
            error!(run = %run.id, error = %e, "cannot remove the in-flight drill record");
        }
        if let Ok(mut busy) = self.busy.lock() {
            busy.retain(|_, id| id != &run.id);
        }
        match result {
            Verdict::Passed => info!(drill = %run.drill, run = %run.id, "drill passed"),
            _ => {
                warn!(drill = %run.drill, run = %run.id, result = result.as_str(), reasons = %run.reasons.join("; "), "drill did not pass")
            }
        }
        for leg in &run.playbooks {
            if let Some(idx) = self.shared.index(&leg.playbook) {
                self.shared.event(
                    idx,
                    crate::notify::EventKind::Drill,
                    None,
                    None,
                    &format!(
                        "{} run {} {}{}",
                        run.drill,
                        run.id,
                        result.as_str().to_uppercase(),
                        if run.reasons.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", run.reasons.join("; "))
                        }
                    ),
                    Value::Null,
                    &format!("{ACTOR_PREFIX}{}", run.drill),
                );
            }
        }
        if result == Verdict::Skipped {
            let svc = self.clone();
            let run = run.clone();
            tokio::spawn(async move { svc.audit_run(&run, "drill-skipped", "skipped").await });
        }
    }

    async fn finish_audited(self: &Arc<Self>, run: &mut Run, result: Verdict) {
        self.finish(run, result);
        self.audit_run(run, "drill-end", result.as_str()).await;
    }

    fn playbook(&self, name: &str) -> Option<(usize, Arc<Playbook>)> {
        let idx = self.shared.index(name)?;
        Some((idx, self.shared.playbooks.get(idx)?.clone()))
    }

    /// Plan mode: where would the failover go, what would be written; nothing is written.
    async fn run_plan(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run) {
        if let Some(eb) = &def.drill.spec.abort.error_budget {
            match budget::check(eb, &self.prometheus, self.default_server.as_deref()).await {
                Ok(detail) => run.step(
                    None,
                    "error-budget",
                    format!("{detail}; a live run would start"),
                ),
                Err(why) => {
                    let why = format!("a live run would be refused: {why}");
                    run.step(None, "error-budget", why.clone());
                    run.reasons.push(why);
                }
            }
        }
        let now = Timestamp::now();
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            let Some((idx, pb)) = self.playbook(&name) else {
                run.reasons.push(format!("playbook `{name}` is not loaded"));
                continue;
            };
            let obs = self
                .shared
                .snapshot()
                .into_iter()
                .nth(idx)
                .map(|s| s.signals)
                .unwrap_or_default();
            let view = match self.store.read(&pb).await {
                Ok(v) => v,
                Err(e) => {
                    run.reasons
                        .push(format!("{name}: cannot read the route: {e}"));
                    continue;
                }
            };
            run.playbooks[i].original_route = view.route.clone();
            match engine::check_operator_failover(&pb, &obs, None, false, now) {
                Ok(t) => {
                    let to = Routing::Failover { target: t };
                    let route = routing::route_for(&pb, to, &view.route);
                    let valid =
                        routing::validate_route(&route, &pb.spec.virtual_service.to_string(), true);
                    run.playbooks[i].target = Some(Target::Failover(t).to_string());
                    run.playbooks[i].failover_route = route;
                    match valid {
                        Ok(()) => run.step(
                            Some(&name),
                            "evaluated",
                            format!(
                                "failover[{t}] is healthy; a failover would write {to} (nothing written)"
                            ),
                        ),
                        Err(e) => {
                            run.step(Some(&name), "evaluated", e.to_string());
                            run.reasons
                                .push(format!("{name}: the failover route is invalid: {e}"));
                        }
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "evaluated", e.clone());
                    run.reasons.push(format!("{name}: {e}"));
                }
            }
        }
        let result = if run.reasons.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        self.finish_audited(run, result).await;
    }

    async fn call(
        &self,
        playbook: Option<&str>,
        kind: ControlKind,
        actor: &Actor,
    ) -> Result<ControlReply, ControlError> {
        let (tx, rx) = oneshot::channel();
        let down = || ControlError {
            status: 503,
            error: "failoverd is shutting down".into(),
        };
        self.control
            .send(Control {
                playbook: playbook.map(String::from),
                kind,
                actor: actor.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| down())?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(down()),
            Err(_) => Err(ControlError {
                status: 504,
                error: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    fn actor(run: &Run, what: &str) -> Actor {
        Actor {
            identity: format!("drill:{}", run.drill),
            reason: format!("drill run {} {what} ({})", run.id, run.reason),
        }
    }

    fn overrides_of(&self, playbook: &str) -> Vec<OverrideRecord> {
        self.shared
            .overrides
            .read()
            .map(|o| {
                o.iter()
                    .filter(|r| r.playbook == playbook)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Why the hold must end now (None: hold on). Also notes a target that is unhealthy
    /// when the drill does not abort on it.
    fn abort_reason(&self, def: &LoadedDrill, run: &mut Run, i: usize) -> Option<String> {
        let leg = &run.playbooks[i];
        let name = leg.playbook.clone();
        let identity = format!("drill:{}", run.drill);
        let ovs = self.overrides_of(&name);
        if let Some(f) = ovs.iter().find(|r| r.kind == OverrideKind::Freeze) {
            return Some(format!(
                "{name}: frozen by {} during the drill ({})",
                f.actor, f.reason
            ));
        }
        match ovs.iter().find(|r| r.kind == OverrideKind::Failover) {
            Some(h) if h.actor != identity => {
                // An operator took the playbook over: the route is theirs now.
                run.playbooks[i].moved = false;
                return Some(format!(
                    "{name}: {} placed their own failover hold during the drill ({}); routing left to them",
                    h.actor, h.reason
                ));
            }
            None => {
                return Some(format!(
                    "{name}: the drill's failover hold was released by someone else"
                ));
            }
            Some(_) => {}
        }
        let (idx, pb) = self.playbook(&name)?;
        let status = self.shared.snapshot().into_iter().nth(idx)?;
        let now = Timestamp::now();
        let primary = engine::verdict(&pb, &status.signals, Target::Primary, now);
        if matches!(primary, engine::Verdict::Unhealthy { .. }) {
            return Some(format!(
                "{name}: real incident: the primary failed during the drill ({})",
                engine::describe(&primary)
            ));
        }
        if let Some(Routing::Failover { target }) = status.routing {
            let v = engine::verdict(&pb, &status.signals, Target::Failover(target), now);
            if matches!(v, engine::Verdict::Unhealthy { .. }) {
                let why = format!(
                    "{name}: failover target failover[{target}] turned unhealthy during the hold ({})",
                    engine::describe(&v)
                );
                if def.drill.spec.abort.target_unhealthy {
                    return Some(why);
                }
                if def.drill.spec.success.target_healthy_during_hold && !run.reasons.contains(&why)
                {
                    run.reasons.push(why);
                }
            }
        }
        None
    }

    /// Reads `eb` every [`budget::READ_EVERY`] in a task of its own and publishes the last
    /// judgement (None until the first). The caller aborts the task when the hold ends.
    fn watch_budget(
        &self,
        eb: spec::ErrorBudget,
    ) -> (
        watch::Receiver<Option<Result<String, String>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(None);
        let client = self.prometheus.clone();
        let default = self.default_server.clone();
        let task = tokio::spawn(async move {
            loop {
                // The budget was read just before the move; the first reading of the hold
                // waits a period.
                tokio::time::sleep(budget::READ_EVERY).await;
                let r = budget::check(&eb, &client, default.as_deref()).await;
                if tx.send(Some(r)).is_err() {
                    return;
                }
            }
        });
        (rx, task)
    }

    /// Live mode: failover, verify, hold, failback, verify.
    async fn run_live(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run) {
        let spec = &def.drill.spec;
        let hold = spec.hold.value.get();
        let ttl = hold
            + spec.success.failover_within.value.get()
            + spec.success.failback_within.value.get()
            + HOLD_MARGIN;
        // The original routes, before anything moves: what failback must restore exactly.
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            let Some((_, pb)) = self.playbook(&name) else {
                run.reasons.push(format!("playbook `{name}` is not loaded"));
                return self.finish_audited(run, Verdict::Failed).await;
            };
            match self.store.read(&pb).await {
                Ok(v) => run.playbooks[i].original_route = v.route,
                Err(e) => {
                    run.reasons
                        .push(format!("{name}: cannot read the route: {e}"));
                    return self.finish_audited(run, Verdict::Failed).await;
                }
            }
        }
        let mut abort: Option<String> = None;
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            // Persisted before the move: a crash from here on is rolled back at start.
            run.playbooks[i].moved = true;
            self.persist_in_flight(run);
            run.step(
                Some(&name),
                "requested",
                format!(
                    "operator failover as drill:{} (first healthy target)",
                    run.drill
                ),
            );
            let started = Instant::now();
            let res = self
                .call(
                    Some(&name),
                    ControlKind::Failover {
                        target: None,
                        force: false,
                        ttl,
                    },
                    &Self::actor(run, "failover"),
                )
                .await;
            match res {
                Ok(reply) => {
                    // The answer comes when the write completes; a write already in flight
                    // defers the hold to right after it, so wait for the route to move.
                    let to = match reply.routing {
                        Some(r @ Routing::Failover { .. }) if reply.written => r,
                        _ => {
                            self.wait_routing(&name, true, spec.success.failover_within.value.get())
                                .await
                        }
                    };
                    run.playbooks[i].override_id = reply.override_id.clone();
                    if let Routing::Failover { target } = to {
                        run.playbooks[i].target = Some(Target::Failover(target).to_string());
                    }
                    run.step(
                        Some(&name),
                        "written",
                        format!(
                            "{} ({})",
                            reply.message,
                            if reply.written {
                                "written"
                            } else {
                                "not written"
                            }
                        ),
                    );
                    self.persist_in_flight(run);
                    let verified = if to == Routing::Primary {
                        Err("the failover was accepted but the route never moved".to_string())
                    } else {
                        self.verify(&name, to, &run.playbooks[i].original_route)
                            .await
                    };
                    match verified {
                        Ok(route) => {
                            let secs = started.elapsed().as_secs_f64();
                            run.playbooks[i].failover_route = route;
                            run.playbooks[i].failover_seconds = Some(secs);
                            run.step(
                                Some(&name),
                                "verified",
                                format!(
                                    "read back {to} from the store, {secs:.3} s after the call"
                                ),
                            );
                            let within = spec.success.failover_within.value;
                            if secs > within.get().as_secs_f64() {
                                run.reasons.push(format!("{name}: failover took {secs:.3} s, over failoverWithin {within}"));
                            }
                        }
                        Err(e) => {
                            run.step(Some(&name), "verify-failed", e.clone());
                            run.reasons.push(format!("{name}: {e}"));
                        }
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "failover-refused", e.error.clone());
                    run.reasons.push(format!(
                        "{name}: failover failed ({}): {}",
                        e.status, e.error
                    ));
                }
            }
            self.persist_in_flight(run);
            if !run.reasons.is_empty() {
                break;
            }
        }
        if run.reasons.is_empty() {
            // The hold: watch for a reason to stop. The error budget is read off this loop,
            // every few seconds, so a slow Prometheus never delays the other checks.
            let budget = spec
                .abort
                .error_budget
                .as_ref()
                .map(|eb| self.watch_budget(eb.clone()));
            let began = Instant::now();
            let mut shutdown = self.shutdown.clone();
            'hold: while began.elapsed() < hold {
                if let Some((rx, _)) = &budget
                    && let Some(Err(why)) = &*rx.borrow()
                {
                    abort = Some(format!("{why} during the hold"));
                    break 'hold;
                }
                if *shutdown.borrow() {
                    run.step(
                        None,
                        "interrupted",
                        "failoverd is shutting down; the drill is rolled back when it starts again",
                    );
                    // The in-flight record stays: the next start restores the routes.
                    return;
                }
                for i in 0..run.playbooks.len() {
                    if let Some(why) = self.abort_reason(def, run, i) {
                        abort = Some(why);
                        break 'hold;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                    _ = shutdown.changed() => {}
                }
            }
            if let Some((_, task)) = budget {
                task.abort();
            }
            let held = began.elapsed().as_secs_f64();
            for leg in run.playbooks.iter_mut() {
                leg.held_seconds = Some(held);
            }
            match &abort {
                Some(why) => run.step(None, "aborted", why.clone()),
                None => run.step(
                    None,
                    "held",
                    format!("held {held:.3} s on the failover targets"),
                ),
            }
            self.persist_in_flight(run);
        }
        self.restore_all(def, run, abort.is_some()).await;
        let result = if let Some(why) = abort {
            run.reasons.insert(0, why);
            Verdict::Aborted
        } else if run.reasons.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        self.finish_audited(run, result).await;
    }

    /// Persists a live run's progress: the in-flight record (for a restart) and the copy the
    /// API shows.
    fn persist_in_flight(&self, run: &Run) {
        if let Ok(mut r) = self.runs.lock()
            && let Err(e) = r.progress(run)
        {
            error!(run = %run.id, error = %e, "cannot persist the in-flight drill record; a crash now would leave the drill's hold to its TTL");
        }
    }

    /// Waits (up to `budget`, at least 5 s) until the store's routing is away from the primary
    /// (`away`) or on it (`!away`); returns the routing last read.
    async fn wait_routing(&self, name: &str, away: bool, budget: Duration) -> Routing {
        let Some((_, pb)) = self.playbook(name) else {
            return Routing::Primary;
        };
        let deadline = Instant::now() + budget.max(Duration::from_secs(5));
        loop {
            let r = self
                .store
                .read(&pb)
                .await
                .map(|v| v.routing)
                .unwrap_or(Routing::Primary);
            if (r != Routing::Primary) == away || Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the route back and checks it is what `to` means; returns the route.
    async fn verify(&self, name: &str, to: Routing, original: &Value) -> Result<Value, String> {
        let (_, pb) = self
            .playbook(name)
            .ok_or_else(|| format!("playbook `{name}` is not loaded"))?;
        let view = self
            .store
            .read(&pb)
            .await
            .map_err(|e| format!("cannot read the route back: {e}"))?;
        let want = routing::route_for(&pb, to, original);
        if view.routing != to {
            return Err(format!(
                "read back {} from the store, expected {to}",
                view.routing
            ));
        }
        if view.route != want {
            return Err(format!(
                "the route read back differs from {to}: got {}, expected {want}",
                view.route
            ));
        }
        Ok(view.route)
    }

    /// Fails back every leg the drill moved and checks the original route is back.
    async fn restore_all(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run, aborted: bool) {
        let within = def.drill.spec.success.failback_within.value;
        for i in 0..run.playbooks.len() {
            if !run.playbooks[i].moved {
                continue;
            }
            let name = run.playbooks[i].playbook.clone();
            run.step(
                Some(&name),
                "failback-requested",
                format!("operator failback as drill:{}", run.drill),
            );
            let started = Instant::now();
            match self.restore(run, i).await {
                Ok(detail) => {
                    let secs = started.elapsed().as_secs_f64();
                    run.playbooks[i].failback_seconds = Some(secs);
                    run.playbooks[i].restored = true;
                    run.playbooks[i].moved = false;
                    run.step(
                        Some(&name),
                        "restored",
                        format!("{detail}; original route read back {secs:.3} s after the call"),
                    );
                    if !aborted && secs > within.get().as_secs_f64() {
                        run.reasons.push(format!(
                            "{name}: failback took {secs:.3} s, over failbackWithin {within}"
                        ));
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "not-restored", e.clone());
                    run.reasons.push(format!("{name}: {e}"));
                }
            }
            self.persist_in_flight(run);
        }
    }

    /// Returns one leg to its original route through the controller. A primary that is
    /// failing is not failed back onto: the drill's hold is released and the engine, which
    /// sees the incident, keeps traffic where it is safe.
    async fn restore(&self, run: &Run, i: usize) -> Result<String, String> {
        let leg = &run.playbooks[i];
        let name = &leg.playbook;
        let identity = format!("drill:{}", run.drill);
        let actor = Self::actor(run, "failback");
        let (idx, pb) = self
            .playbook(name)
            .ok_or_else(|| format!("playbook `{name}` is not loaded"))?;
        let deadline = Instant::now() + FAILBACK_RETRY;
        loop {
            let view = self
                .store
                .read(&pb)
                .await
                .map_err(|e| format!("cannot read the route: {e}"))?;
            if view.routing == Routing::Primary {
                // Nothing to fail back (a crash before the write, or already restored): the
                // drill's own hold must not outlive it.
                for r in self.overrides_of(name) {
                    if r.actor == identity {
                        let _ = self
                            .call(
                                None,
                                ControlKind::DeleteOverride { id: r.id.clone() },
                                &actor,
                            )
                            .await;
                    }
                }
                return self
                    .verify(name, Routing::Primary, &leg.original_route)
                    .await
                    .map(|_| "on the original route".to_string());
            }
            if let Some(h) = self
                .overrides_of(name)
                .into_iter()
                .find(|r| r.kind == OverrideKind::Failover && r.actor != identity)
            {
                return Err(format!(
                    "{} holds the playbook on a failover target now ({}); routing left to them",
                    h.actor, h.reason
                ));
            }
            let last = match self
                .call(Some(name), ControlKind::Failback { force: false }, &actor)
                .await
            {
                Ok(reply) => {
                    if !reply.written {
                        // Applied right after a write already in flight.
                        self.wait_routing(name, false, FAILBACK_RETRY).await;
                    }
                    return self
                        .verify(name, Routing::Primary, &leg.original_route)
                        .await
                        .map(|_| reply.message);
                }
                Err(e) => e.error,
            };
            let primary_failing = self
                .shared
                .snapshot()
                .into_iter()
                .nth(idx)
                .map(|s| engine::verdict(&pb, &s.signals, Target::Primary, Timestamp::now()))
                .is_some_and(|v| matches!(v, engine::Verdict::Unhealthy { .. }));
            if primary_failing || Instant::now() >= deadline {
                for r in self.overrides_of(name) {
                    if r.actor == identity {
                        let _ = self
                            .call(
                                None,
                                ControlKind::DeleteOverride { id: r.id.clone() },
                                &actor,
                            )
                            .await;
                    }
                }
                return Err(format!(
                    "not failed back ({last}); the drill's hold is released and the engine decides as for any incident"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rolls back live drills a previous process left in flight and records them aborted.
    async fn recover(self: &Arc<Self>) {
        let found = self.runs.lock().map(|r| r.in_flight()).unwrap_or_default();
        if found.is_empty() {
            return;
        }
        if let Ok(mut busy) = self.busy.lock() {
            for run in &found {
                for leg in &run.playbooks {
                    busy.insert(leg.playbook.clone(), run.id.clone());
                }
            }
        }
        // Only the leader moves traffic: a standby keeps the record until it leads.
        let mut stop = self.shutdown.clone();
        while !self.shared.leader.is_leader() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
        // The controller answers only once it has read the routes, and a failback needs
        // fresh signals about the primary: wait for the first probe round.
        let began = Instant::now();
        while !self.shared.ready.load(std::sync::atomic::Ordering::Relaxed)
            && began.elapsed() < RECOVERY_WAIT
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for mut run in found {
            warn!(drill = %run.drill, run = %run.id, "found a drill in flight from before a restart; rolling it back");
            run.step(
                None,
                "restarted",
                "failoverd restarted during this run; rolling back",
            );
            let why =
                "failoverd restarted during the drill; routing rolled back on start".to_string();
            for i in 0..run.playbooks.len() {
                run.playbooks[i].moved = true;
                let name = run.playbooks[i].playbook.clone();
                let started = Instant::now();
                match self.restore(&run, i).await {
                    Ok(detail) => {
                        run.playbooks[i].restored = true;
                        run.playbooks[i].moved = false;
                        run.playbooks[i].failback_seconds = Some(started.elapsed().as_secs_f64());
                        run.step(Some(&name), "restored", detail);
                    }
                    Err(e) => {
                        run.step(Some(&name), "not-restored", e.clone());
                        run.reasons.push(format!("{name}: {e}"));
                    }
                }
            }
            run.reasons.insert(0, why);
            self.finish_audited(&mut run, Verdict::Aborted).await;
        }
    }

    /// Arms every scheduled drill with tokio-cron-scheduler.
    ///
    /// Each firing is a one-shot job at the next occurrence computed in the drill's own time
    /// zone (chrono-tz), re-armed after it fires: the crate's own time-zone jobs fix the UTC
    /// offset when the job is created, which would move a drill by an hour at every
    /// daylight-saving change.
    async fn schedule(self: Arc<Self>) -> anyhow::Result<()> {
        if self.defs.iter().all(|d| d.schedule.is_none()) {
            return Ok(());
        }
        let mut sched = tokio_cron_scheduler::JobScheduler::new().await?;
        sched.start().await?;
        for i in 0..self.defs.len() {
            self.clone().arm(sched.clone(), i).await;
        }
        info!(
            drills = self.defs.iter().filter(|d| d.schedule.is_some()).count(),
            "drill schedules armed"
        );
        let mut stop = self.shutdown.clone();
        let _ = stop.wait_for(|v| *v).await;
        let _ = sched.shutdown().await;
        Ok(())
    }

    /// Adds a one-shot job for drill `i`'s next occurrence; the job re-arms itself.
    fn arm(
        self: Arc<Self>,
        sched: tokio_cron_scheduler::JobScheduler,
        i: usize,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Some(def) = self.defs.get(i) else { return };
            let now = Timestamp::now();
            let Some(next) = window::next_run(def, now) else {
                return;
            };
            let name = def.name().to_string();
            if let Ok(mut n) = self.next.lock() {
                n.insert(name.clone(), next);
            }
            let delay = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
            let svc = self.clone();
            let again = sched.clone();
            let job = tokio_cron_scheduler::Job::new_one_shot_async(delay, move |_, _| {
                let svc = svc.clone();
                let again = again.clone();
                Box::pin(async move {
                    if *svc.shutdown.borrow() {
                        return;
                    }
                    if let Some(d) = svc.defs.get(i) {
                        let name = d.name().to_string();
                        match svc.request(&name, Trigger::Schedule).await {
                            Ok(run) => {
                                info!(drill = %name, run = %run.id, result = run.result.as_str(), "scheduled drill")
                            }
                            Err(e) => {
                                info!(drill = %name, error = %e.error, "scheduled drill not started")
                            }
                        }
                    }
                    svc.arm(again, i).await;
                })
            });
            match job {
                Ok(job) => {
                    if let Err(e) = sched.add(job).await {
                        error!(drill = %name, error = %e, "cannot schedule the drill");
                    }
                }
                Err(e) => error!(drill = %name, error = %e, "cannot schedule the drill"),
            }
        })
    }
}

#[cfg(test)]
mod tests;
