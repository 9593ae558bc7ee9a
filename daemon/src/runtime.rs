//! The daemon's moving parts: probes feed a controller that runs the engine; every routing
//! write and audit record goes through the writer, which appends audit records in order and
//! writes each VirtualService in its own lane (lanes run concurrently, see [`WRITE_CONCURRENCY`]).
//!
//! ```text
//! probes ──results──► controller (decide) ──jobs──► writer (audit, store, audit) ──done──┐
//!                          ▲                                                              │
//!                          └──────────────────────────────────────────────────────────────┘
//! ```
//! The controller applies an engine decision's next state only once the writer reports the
//! write done, so a failed write is simply decided again (with backoff) on a later tick.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use failover_probes::{Outcome, ProbeKind, ProbeResult, ProbeSpec, ProbeWindow};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::audit::{AuditHealth, AuditLog, Entry, Record};
use crate::engine::{
    self, Action, Actor, Command, Decision, Health, MoveKind, Observation, Overrides, Phase,
    Routing, SignalKind, State, Verdict,
};
use crate::metrics::{Metrics, labels};
use crate::notify::{Condition, Event, EventKind, Notifier};
use crate::overrides::{OverrideKind, OverrideRecord, OverrideStore, new_id};
use crate::playbook::ToProbe;
use crate::playbook::{Loaded, Playbook, Target};
use crate::routing::{RoutingStore, StoreError};
use crate::slo::{self, PromClient, SloResult};

/// How often time-driven rules (failback `after`, dwell expiry, stale results) are checked.
/// Probe results trigger a decision at once; this tick only bounds the lateness of the rest.
const TICK: Duration = Duration::from_millis(250);
/// A routing write still running after this long is reported as in flight (a warning, and
/// the playbook's status error), then again every period. It is never abandoned: a write
/// dropped while it may still land would leave the audit saying `failed` for a move that
/// happened. The stores bound their own attempts (the kubernetes store within 8 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed write; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Retry delay ceiling: a broken store is retried at least this often.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Probe results are bursty (every probe may fire in one tick); the queue absorbs a few
/// seconds of a large fleet before probe tasks wait on it (they never drop results).
const RESULT_QUEUE: usize = 4096;
/// Moves kept per playbook for status output.
const HISTORY: usize = 20;
/// Results kept per probe (for the success ratio in status).
const WINDOW: usize = 20;

/// Monotonic clock mapped to wall time once at start, so the engine sees timestamps that
/// never jump with NTP.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    base_ts: Timestamp,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            base: Instant::now(),
            base_ts: Timestamp::now(),
        }
    }

    /// The timestamp of a monotonic instant.
    pub fn ts(&self, at: Instant) -> Timestamp {
        let d = at.saturating_duration_since(self.base);
        self.base_ts
            .checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(self.base_ts)
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.ts(Instant::now())
    }
}

/// One move, as shown in status.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// When the write completed.
    pub time: Timestamp,
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
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookStatus {
    /// Playbook name.
    pub name: String,
    /// Life-cycle phase (None until the store has been read).
    pub phase: Option<Phase>,
    /// Current routing as failoverd knows it.
    pub routing: Option<Routing>,
    /// The last decision's explanation.
    pub explain: String,
    /// The last error on this playbook (store, audit), if any.
    pub error: Option<String>,
    /// Latest observation per signal.
    pub signals: Vec<Observation>,
    /// Recent moves, newest last.
    pub transitions: VecDeque<Transition>,
}

/// State shared with the HTTP server.
#[derive(Debug)]
pub struct Shared {
    /// Metrics registry.
    pub metrics: Metrics,
    /// True once every probe has reported at least once.
    pub ready: AtomicBool,
    /// True once the saved overrides are loaded and published: until then the API serves
    /// nothing that reports state (503), so an empty list never reads as "not frozen".
    pub state_loaded: AtomicBool,
    /// Per-playbook status, in playbook order.
    pub status: RwLock<Vec<PlaybookStatus>>,
    /// The playbooks, in the same order.
    pub playbooks: Vec<Arc<Playbook>>,
    /// Active overrides (a copy of the persisted set).
    pub overrides: RwLock<Vec<OverrideRecord>>,
    /// Where events for on-call go (never blocks).
    pub notifier: Notifier,
    /// Playbook reload outcome (the refused set's problems, for `/readyz`).
    pub reload: Arc<crate::reload::ReloadStatus>,
    /// Bumped whenever something `GET /v1/playbooks` shows changes (phase, routing,
    /// explanation, error, overrides), so the API can serve a cached body in between.
    pub list_version: std::sync::atomic::AtomicU64,
    /// The fleet blast-radius rule's bookkeeping (`maxConcurrentFailovers`; off by default).
    pub fleet: Mutex<crate::engine::fleet::FleetGuard>,
    /// Whether this replica may write routing (always, without leader election).
    pub leader: Arc<crate::leader::Leadership>,
    /// Whether the audit log takes appends (for `/readyz` and `failoverd_audit_available`);
    /// [`run`] attaches it to the log.
    pub audit_health: Arc<AuditHealth>,
}

impl Shared {
    /// Status for a set of playbooks, not ready yet.
    pub fn new(playbooks: &[Loaded]) -> Self {
        let metrics = Metrics::new();
        let reload = crate::reload::ReloadStatus::new(&metrics);
        let audit_health = Arc::new(AuditHealth::with_gauge(metrics.audit_available.clone()));
        Self {
            audit_health,
            metrics,
            reload,
            ready: AtomicBool::new(false),
            state_loaded: AtomicBool::new(false),
            status: RwLock::new(
                playbooks
                    .iter()
                    .map(|l| PlaybookStatus {
                        name: l.playbook.name().to_string(),
                        phase: None,
                        routing: None,
                        explain: "starting".into(),
                        error: None,
                        signals: Vec::new(),
                        transitions: VecDeque::new(),
                    })
                    .collect(),
            ),
            playbooks: playbooks
                .iter()
                .map(|l| Arc::new(l.playbook.clone()))
                .collect(),
            overrides: RwLock::new(Vec::new()),
            notifier: Notifier::none(),
            list_version: std::sync::atomic::AtomicU64::new(1),
            fleet: Mutex::new(crate::engine::fleet::FleetGuard::new(playbooks.len(), 0)),
            leader: Arc::new(crate::leader::Leadership::always()),
        }
    }

    /// Sends an event about playbook `idx` to on-call (never blocks).
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        idx: usize,
        kind: EventKind,
        from: Option<Routing>,
        to: Option<Routing>,
        reason: &str,
        signals: Value,
        actor: &str,
    ) {
        let Some(pb) = self.playbooks.get(idx) else {
            return;
        };
        self.notifier.notify(Event {
            kind,
            time: Timestamp::now(),
            playbook: pb.name().to_string(),
            service: pb.spec.virtual_service.to_string(),
            namespace: pb.spec.virtual_service.namespace.clone(),
            from: from.map(|r| r.to_string()),
            to: to.map(|r| r.to_string()),
            reason: reason.to_string(),
            signals,
            actor: actor.to_string(),
        });
    }

    /// A copy of the status table.
    pub fn snapshot(&self) -> Vec<PlaybookStatus> {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Index of a playbook by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.playbooks.iter().position(|p| p.name() == name)
    }
}

/// What an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlKind {
    /// Fail over (to `target`, or the first healthy target) and hold it for `ttl`.
    Failover {
        /// Failover target index.
        target: Option<usize>,
        /// Route there even if not known healthy.
        force: bool,
        /// How long the hold lasts.
        ttl: Duration,
    },
    /// Return to the original route now.
    Failback {
        /// Even if the primary is not known healthy.
        force: bool,
    },
    /// Stop automatic moves for `ttl`.
    Freeze {
        /// How long.
        ttl: Duration,
    },
    /// Release freezes and holds.
    Resume,
    /// Remove one override by id.
    DeleteOverride {
        /// Its id.
        id: String,
    },
}

impl ControlKind {
    fn action(&self) -> &'static str {
        match self {
            ControlKind::Failover { .. } => "override-failover",
            ControlKind::Failback { .. } => "override-failback",
            ControlKind::Freeze { .. } => "override-freeze",
            ControlKind::Resume => "override-resume",
            ControlKind::DeleteOverride { .. } => "override-delete",
        }
    }
}

/// A successful operator call.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlReply {
    /// What happened.
    pub message: String,
    /// The override created, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_id: Option<String>,
    /// Routing after the call.
    pub routing: Option<Routing>,
    /// True when the call wrote the routing store.
    pub written: bool,
}

/// A refused or failed operator call.
#[derive(Clone, Debug)]
pub struct ControlError {
    /// HTTP status: 404 unknown, 409 refused by a rule, 500 failed.
    pub status: u16,
    /// One-line error.
    pub error: String,
}

type ControlResult = Result<ControlReply, ControlError>;

/// An operator call on its way to the controller.
#[derive(Debug)]
pub struct Control {
    /// The playbook (None for `DeleteOverride`).
    pub playbook: Option<String>,
    /// What to do.
    pub kind: ControlKind,
    /// Who and why.
    pub actor: Actor,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ControlResult>,
}

fn refuse(status: u16, error: impl Into<String>) -> ControlError {
    ControlError {
        status,
        error: error.into(),
    }
}

struct Slot {
    name: String,
    kind: SignalKind,
    target: Target,
    window: ProbeWindow,
    max_age: Duration,
    /// The values behind the latest result (SLOs).
    detail: String,
    /// True once on-call was told this signal has been unknown for a while.
    unknown_alerted: bool,
}

struct Guarded {
    pb: Arc<Playbook>,
    state: Option<State>,
    slots: Vec<Slot>,
    pending: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    overrides: Overrides,
    /// Operator calls waiting for the write they caused.
    waiters: Vec<(oneshot::Sender<ControlResult>, String, Option<String>)>,
    /// An operator command (a failback) not decided yet, because a write was in flight or a
    /// retry was due later. Kept here, not in `overrides` (rebuilt on every expiry and
    /// takeover), so it is applied after the write whatever happens to the overrides.
    command: Option<Command>,
    /// The caller of `command`: answered once it is decided, or with an error when it can no
    /// longer apply (leadership lost, shutdown). Never a 200 for a command not applied.
    command_waiter: Option<Waiter>,
    /// An intent found in the audit log at start with no outcome after it (failoverd stopped
    /// between the two): resolved from the store when the route is first read.
    open_intent: Option<Record>,
    /// The last move was not made because the audit log refused its intent.
    audit_blocked: bool,
    /// The last move was written but its outcome record is still owed to the audit log.
    unrecorded: bool,
    /// A write failed after it may have reached the store (it landed, then its read-back
    /// failed; or someone else wrote in between): the route is read again before anything
    /// is decided, so the controller never acts on a routing the store no longer holds.
    reread: bool,
}

/// An operator call's reply channel, its message and the override it created.
type Waiter = (oneshot::Sender<ControlResult>, String, Option<String>);

struct WriteJob {
    idx: usize,
    pb: Arc<Playbook>,
    from: Routing,
    to: Routing,
    kind: MoveKind,
    reason: String,
    forced: bool,
    actor: Option<Actor>,
    inputs: Value,
    next: State,
}

enum Job {
    Write(Box<WriteJob>),
    Audit(Box<Entry>),
    /// A record the chain must get even if the log refuses appends now (it is kept and
    /// written first once it takes them): what became of an intent.
    AuditOwed(Box<Entry>),
}

struct Done {
    job: Box<WriteJob>,
    result: Result<(), String>,
    label: &'static str,
    elapsed: Duration,
    /// Set when the write was made but its outcome record is still owed to the audit log
    /// (the move is not reported as recorded until it is written).
    unrecorded: Option<String>,
}

/// Builds the probe list for a set of playbooks: (spec, playbook index, slot index).
fn probe_specs(playbooks: &[Loaded]) -> (Vec<ProbeSpec>, Vec<(usize, usize)>) {
    let mut specs = Vec::new();
    let mut owners = Vec::new();
    for (pi, l) in playbooks.iter().enumerate() {
        for (si, p) in l.playbook.spec.probes.iter().enumerate() {
            let kind = match (&p.http, &p.tcp, &p.grpc) {
                (Some(h), _, _) => ProbeKind::Http(h.to_probe()),
                (None, Some(t), _) => ProbeKind::Tcp(t.to_probe()),
                (None, None, Some(g)) => ProbeKind::Grpc(g.to_probe()),
                (None, None, None) => continue,
            };
            owners.push((pi, si));
            specs.push(ProbeSpec {
                id: specs.len(),
                kind,
                interval: p.interval.get(),
                timeout: p.timeout.value.get(),
                vantage: failover_probes::Vantage::local(),
            });
        }
    }
    (specs, owners)
}

fn health_of(o: &Outcome) -> Health {
    match o {
        Outcome::Healthy => Health::Healthy,
        Outcome::Unhealthy(r) => Health::Unhealthy(r.clone()),
        Outcome::Unknown(r) => Health::Unknown(r.clone()),
    }
}

impl Guarded {
    fn observations(&self, clock: &Clock) -> Vec<Observation> {
        self.slots
            .iter()
            .filter_map(|s| {
                let last = s.window.last()?;
                Some(Observation {
                    signal: s.name.clone(),
                    kind: s.kind,
                    target: s.target,
                    health: health_of(last),
                    streak: s.window.streak(),
                    streak_since: clock.ts(s.window.streak_since()?),
                    at: clock.ts(s.window.last_at()?),
                    max_age: s.max_age,
                    detail: s.detail.clone(),
                })
            })
            .collect()
    }
}

/// The running daemon's inputs.
#[derive(Debug)]
pub struct Runtime {
    /// Validated playbooks.
    pub playbooks: Vec<Loaded>,
    /// Where routes live.
    pub store: Arc<dyn RoutingStore>,
    /// The audit log, already opened (and its chain checked); shared with the API.
    pub audit: Arc<Mutex<AuditLog>>,
    /// Persisted operator overrides.
    pub overrides: OverrideStore,
    /// Default Prometheus server for SLOs without their own `server`.
    pub prometheus: Option<String>,
    /// The Prometheus client (credentials, CAs); None: a plain client.
    pub prometheus_client: Option<PromClient>,
}

/// Runs probes, controller and writer until `shutdown` turns true. Returns once the writer
/// has drained (a write in flight completes and is audited).
pub async fn run(
    rt: Runtime,
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Control>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clock = Clock::start();
    let (specs, owners) = probe_specs(&rt.playbooks);
    let n_probes = specs.len();
    let client = failover_probes::http_client()?;
    let (res_tx, mut res_rx) = mpsc::channel::<ProbeResult>(RESULT_QUEUE);
    let probes = failover_probes::spawn_probes(specs, client, res_tx, shutdown.clone());
    // SLO queries share one pooled client: Prometheus is one server, reuse is right here.
    let (slo_tx, mut slo_rx) = mpsc::channel::<SloResult>(RESULT_QUEUE);
    let prom = match rt.prometheus_client.clone() {
        Some(c) => c,
        None => PromClient::new(
            reqwest::Client::builder()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot build the Prometheus client: {e}"))?,
        ),
    };
    let slo_task = slo::spawn(
        &rt.playbooks,
        rt.prometheus.as_deref(),
        prom,
        slo_tx,
        shutdown.clone(),
    );

    let mut guarded: Vec<Guarded> = rt
        .playbooks
        .iter()
        .enumerate()
        .map(|(i, l)| Guarded {
            // The status keeps the same playbooks in the same order: share them.
            pb: shared
                .playbooks
                .get(i)
                .filter(|p| p.name() == l.playbook.name())
                .cloned()
                .unwrap_or_else(|| Arc::new(l.playbook.clone())),
            state: None,
            slots: l
                .playbook
                .spec
                .probes
                .iter()
                .map(|p| Slot {
                    name: p.name.value.clone(),
                    kind: SignalKind::Probe,
                    target: p.target.value,
                    window: ProbeWindow::new(WINDOW),
                    // Three missed intervals (plus the timeout) and the signal is unknown.
                    max_age: engine::stale_after(p.interval.get(), p.timeout.value.get()),
                    detail: String::new(),
                    unknown_alerted: false,
                })
                // SLO slots follow the probe slots, in playbook order.
                .chain(l.playbook.spec.slos.iter().map(|s| Slot {
                    name: s.name.value.clone(),
                    kind: SignalKind::Slo,
                    target: s.target.value,
                    window: ProbeWindow::new(WINDOW),
                    max_age: engine::stale_after(s.evaluation_interval.get(), s.timeout.get()),
                    detail: String::new(),
                    unknown_alerted: false,
                }))
                .collect(),
            pending: false,
            retry_at: None,
            backoff: MIN_BACKOFF,
            overrides: Overrides::default(),
            waiters: Vec::new(),
            command: None,
            command_waiter: None,
            open_intent: None,
            audit_blocked: false,
            unrecorded: false,
            reread: false,
        })
        .collect();
    // The log publishes its availability to readiness and metrics from now on; intents left
    // without an outcome by the last run are resolved when each route is first read.
    if let Ok(mut l) = rt.audit.lock() {
        l.attach_health(shared.audit_health.clone());
        for intent in l.take_unresolved() {
            match guarded.iter_mut().find(|g| g.pb.name() == intent.playbook) {
                Some(g) => {
                    warn!(playbook = %intent.playbook, seq = intent.seq, "the audit log holds an intent with no outcome (failoverd stopped between the two); resolving it from the store");
                    g.open_intent = Some(intent);
                }
                None => {
                    warn!(playbook = %intent.playbook, seq = intent.seq, "the audit log holds an intent with no outcome for a playbook no longer loaded; left as is")
                }
            }
        }
    }

    // The writer: the only task that touches the store and the audit log.
    let (job_tx, job_rx) = mpsc::channel::<Job>(256);
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(256);
    let log = rt.audit;
    let mut writer = tokio::spawn(
        writer(
            rt.store.clone(),
            log.clone(),
            job_rx,
            done_tx,
            shared.clone(),
        )
        .instrument(info_span!("writer")),
    );
    let mut ov_store = rt.overrides;
    expire_overrides(&mut ov_store, &log, &shared, &clock).await;
    publish_overrides(&ov_store, &shared);
    shared.state_loaded.store(true, Ordering::Release);
    for g in guarded.iter_mut() {
        g.overrides = ov_store.for_playbook(g.pb.name(), clock.now());
    }

    let mut leader_rx = shared.leader.subscribe();
    leader_rx.mark_unchanged();
    // Playbooks held on a failover target by a drill that ran on the last leader: its drill
    // runner died with it, so this replica ends the drill once their routes are read again.
    let mut orphaned_drills: Vec<String> = Vec::new();
    let (drift_tx, mut drift_rx) = mpsc::channel::<crate::drift::Found>(64);
    let drift_task =
        crate::drift::spawn(rt.store.clone(), shared.clone(), drift_tx, shutdown.clone());

    // First read of every playbook's route (one bulk read where the store has one).
    let all: Vec<usize> = (0..guarded.len()).collect();
    read_states(
        &all,
        &mut guarded,
        rt.store.as_ref(),
        &job_tx,
        &shared,
        &clock,
    )
    .await;

    let mut seen = vec![false; n_probes];
    let mut unseen = n_probes;
    if unseen == 0 {
        shared.ready.store(true, Ordering::Relaxed);
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_episode = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            done = done_rx.recv() => {
                match done {
                    Some(done) => finish_write(&mut guarded, done, &shared, &clock),
                    None => writer_died(&mut writer, &mut guarded, &shared).await,
                }
            }
            Ok(()) = leader_rx.changed() => {
                if *leader_rx.borrow_and_update() {
                    // Taking over: what this standby believed may be stale; the cluster is
                    // the truth. The last leader's overrides first, then every route is read
                    // again before anything is decided.
                    adopt_cluster_overrides(&mut ov_store, &log, &shared, &clock).await;
                    orphaned_drills = ov_store
                        .all()
                        .iter()
                        .filter(|r| is_drill_hold(r))
                        .map(|r| r.playbook.clone())
                        .collect();
                    orphaned_drills.sort();
                    orphaned_drills.dedup();
                    for g in guarded.iter_mut() {
                        g.overrides = ov_store.for_playbook(g.pb.name(), clock.now());
                    }
                    info!("became the leader: re-reading every route from the store");
                    let mut reread = Vec::new();
                    for (i, g) in guarded.iter_mut().enumerate().filter(|(_, g)| !g.pending) {
                        g.state = None;
                        g.retry_at = None;
                        reread.push(i);
                    }
                    // At once, not at the next tick: a failover the standby already saw
                    // coming is pending, and every millisecond here is on the users.
                    read_and_step(&reread, &mut guarded, rt.store.as_ref(), &mut ov_store, &mut orphaned_drills, &log, &job_tx, &shared, &clock).await;
                } else {
                    // A standby writes nothing: a command still queued here will never apply.
                    drop_queued_commands(&mut guarded, 503, "this replica lost leadership before the command applied; nothing was written for it (ask the new leader)");
                }
            }
            Some(found) = drift_rx.recv() => {
                handle_drift(found, &mut guarded, &mut ov_store, &log, &job_tx, &shared, &clock).await;
            }
            Some(msg) = control.recv() => {
                handle_control(msg, &mut guarded, &mut ov_store, &log, &job_tx, &shared, &clock).await;
            }
            Some(r) = slo_rx.recv() => {
                let Some(g) = guarded.get_mut(r.playbook) else { continue };
                let pi = r.playbook;
                record_slo(g, r, &shared);
                step(pi, g, &job_tx, &shared, &clock).await;
            }
            Some(r) = res_rx.recv() => {
                let Some(&(pi, si)) = owners.get(r.id) else { continue };
                if !seen[r.id] {
                    seen[r.id] = true;
                    unseen -= 1;
                    if unseen == 0 {
                        info!(probes = n_probes, "first probe round complete; ready");
                        shared.ready.store(true, Ordering::Relaxed);
                    }
                }
                let g = &mut guarded[pi];
                let slot = &mut g.slots[si];
                let result = match &r.outcome { Outcome::Healthy => "healthy", Outcome::Unhealthy(_) => "unhealthy", Outcome::Unknown(_) => "unknown" };
                shared.metrics.probe_results.get_or_create(&labels([("playbook", g.pb.name()), ("probe", &slot.name), ("result", result)])).inc();
                shared.metrics.probe_lateness_seconds.observe(r.lateness.as_secs_f64());
                slot.window.record(r.outcome, r.started + r.latency);
                step(pi, g, &job_tx, &shared, &clock).await;
            }
            _ = tick.tick() => {
                audit_watch(&log, &mut audit_episode, &mut guarded, &shared).await;
                if expire_overrides(&mut ov_store, &log, &shared, &clock).await {
                    publish_overrides(&ov_store, &shared);
                    for g in guarded.iter_mut() {
                        g.overrides = ov_store.for_playbook(g.pb.name(), clock.now());
                    }
                }
                // Routes not read yet (a failed read due again, or all of them after a
                // takeover) are read together, then every playbook with a route is stepped.
                let due: Vec<usize> = guarded
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.state.is_none() && g.retry_at.is_none_or(|t| Instant::now() >= t))
                    .map(|(i, _)| i)
                    .collect();
                reread_after_failed_writes(&mut guarded, rt.store.as_ref(), &job_tx, &shared, &clock).await;
                read_and_step(&due, &mut guarded, rt.store.as_ref(), &mut ov_store, &mut orphaned_drills, &log, &job_tx, &shared, &clock).await;
            }
        }
    }
    info!("shutting down: stopping probes, draining the writer");
    drift_task.abort();
    probes.shutdown().await;
    if let Some(t) = slo_task {
        let _ = t.await;
    }
    drop(job_tx);
    // A write in flight completes (and is audited) before the process exits.
    while let Some(done) = done_rx.recv().await {
        finish_write(&mut guarded, done, &shared, &clock);
    }
    drop_queued_commands(
        &mut guarded,
        503,
        "failoverd shut down before the command applied; nothing was written for it",
    );
    writer.await?;
    Ok(())
}

/// Acts on a route changed by someone else while failed over: audit and count it, then
/// `onDrift: reassert` writes failoverd's routing again and `respect` freezes the playbook.
async fn handle_drift(
    found: crate::drift::Found,
    guarded: &mut [Guarded],
    ov_store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let Some(g) = guarded.get_mut(found.idx) else {
        return;
    };
    let Some(state) = g.state.clone() else {
        return;
    };
    // A write in flight, or a move since the check started, explains the difference. A
    // standby leaves drift to the leader.
    if g.pending || state.routing != found.believed || !shared.leader.is_leader() {
        return;
    }
    let name = g.pb.name().to_string();
    if g.overrides.freeze.is_some() {
        // Frozen: an operator is in charge; leave their route alone, say so quietly.
        debug!(playbook = %name, "route changed outside failoverd while frozen: {}", found.detail);
        return;
    }
    let on_drift = g.pb.spec.on_drift;
    let action = match on_drift {
        crate::playbook::OnDrift::Reassert => "reassert",
        crate::playbook::OnDrift::Respect => "respect",
    };
    shared
        .metrics
        .drift
        .get_or_create(&labels([("playbook", &name), ("action", action)]))
        .inc();
    warn!(playbook = %name, action, "route changed outside failoverd: {}", found.detail);
    let reason = format!("route changed outside failoverd: {}", found.detail);
    let _ = jobs
        .send(Job::Audit(Box::new(Entry {
            actor: "failoverd".into(),
            action: "drift".into(),
            playbook: name.clone(),
            reason: reason.clone(),
            after: found.route.clone(),
            outcome: format!("onDrift: {action}"),
            ..Entry::default()
        })))
        .await;
    match on_drift {
        crate::playbook::OnDrift::Reassert => {
            let job = WriteJob {
                idx: found.idx,
                pb: g.pb.clone(),
                from: state.routing,
                to: state.routing,
                kind: MoveKind::Reassert,
                reason: format!(
                    "{reason}; writing {} again (onDrift: reassert)",
                    state.routing
                ),
                forced: false,
                actor: None,
                inputs: json!({ "drift": found.detail, "found": found.route }),
                next: state,
            };
            g.pending = true;
            if jobs.send(Job::Write(Box::new(job))).await.is_err() {
                g.pending = false;
            }
        }
        crate::playbook::OnDrift::Respect => {
            // A freeze through the operator path: persisted, audited and announced like one.
            let (reply, _) = oneshot::channel();
            let msg = Control {
                playbook: Some(name),
                kind: ControlKind::Freeze {
                    ttl: RESPECT_FREEZE,
                },
                actor: Actor {
                    identity: "failoverd".into(),
                    reason: format!("{reason}; respecting it (onDrift: respect)"),
                },
                reply,
            };
            Box::pin(handle_control(
                msg, guarded, ov_store, log, jobs, shared, clock,
            ))
            .await;
        }
    }
}

/// How long `onDrift: respect` freezes a playbook: long enough for whoever changed the
/// route to finish; an operator resumes it earlier with `failoverd resume`.
const RESPECT_FREEZE: Duration = Duration::from_secs(24 * 3600);

/// When to try a failed store operation again. Errors a retry cannot fix (the API server or
/// istiod rejected the object, a missing RBAC rule, an object failoverd refuses to write)
/// are not retried in the backoff loop: the same request would fail the same way and only
/// add load. They are tried again after [`RECHECK_REJECTED`], in case someone fixed the
/// object or the Role meanwhile.
fn retry_delay(label: &str, backoff: Duration) -> Duration {
    match label {
        "rejected" | "forbidden" | "invalid" => RECHECK_REJECTED,
        _ => backoff,
    }
}

/// See [`retry_delay`].
const RECHECK_REJECTED: Duration = Duration::from_secs(60);

/// How long a signal may stay unknown before on-call hears about it: long enough to ride out
/// a Prometheus restart, short enough that an outage of the signal itself is noticed.
const UNKNOWN_ALERT_AFTER: Duration = Duration::from_secs(60);

/// Records one SLO evaluation in its slot: metrics, logs and the "unknown for a while" event.
fn record_slo(g: &mut Guarded, r: SloResult, shared: &Shared) {
    let si = g.pb.spec.probes.len() + r.slo;
    let name = g.pb.name().to_string();
    let Some(slot) = g.slots.get_mut(si) else {
        return;
    };
    let message = match &r.eval.outcome {
        Outcome::Unknown(m) => m.clone(),
        _ => String::new(),
    };
    if let Some(label) = r.eval.unknown_label {
        shared
            .metrics
            .signal_unknown
            .get_or_create(&labels([
                ("playbook", &name),
                ("signal", &slot.name),
                ("reason", label),
            ]))
            .inc();
        if !matches!(slot.window.last(), Some(Outcome::Unknown(_))) {
            warn!(playbook = %name, signal = %slot.name, reason = label, "SLO signal unknown: {message}");
        }
        if label == "bad_data" {
            set_status(shared, r.playbook, |s| {
                s.error = Some(format!("SLO {}: {message}", slot.name))
            });
        }
    }
    slot.detail = r.eval.detail;
    let unknown = matches!(r.eval.outcome, Outcome::Unknown(_));
    slot.window.record(r.eval.outcome, r.at);
    if !unknown {
        slot.unknown_alerted = false;
        return;
    }
    let unknown_for = slot
        .window
        .streak_since()
        .map(|t| r.at.saturating_duration_since(t))
        .unwrap_or_default();
    if !slot.unknown_alerted && unknown_for >= UNKNOWN_ALERT_AFTER {
        slot.unknown_alerted = true;
        let reason = format!(
            "{} unknown for {}s: {message}",
            slot.name,
            unknown_for.as_secs()
        );
        shared.event(
            r.playbook,
            EventKind::SignalUnknown,
            None,
            None,
            &reason,
            Value::Null,
            "failoverd",
        );
    }
}

/// Reads the routes at `idxs` (one bulk read), ends drills left by a dead leader whose routes
/// are now known, then steps every playbook that has a route.
#[allow(clippy::too_many_arguments)]
async fn read_and_step(
    idxs: &[usize],
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    overrides: &mut OverrideStore,
    orphaned_drills: &mut Vec<String>,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    read_states(idxs, guarded, store, jobs, shared, clock).await;
    if !orphaned_drills.is_empty() {
        end_orphaned_drills(
            orphaned_drills,
            guarded,
            overrides,
            log,
            jobs,
            shared,
            clock,
        )
        .await;
    }
    for (i, g) in guarded.iter_mut().enumerate() {
        if g.state.is_some() {
            step(i, g, jobs, shared, clock).await;
        }
    }
}

/// Reads the route of every playbook whose last write failed after it may have reached the
/// store, once its retry is due, and adopts what the store holds when it differs from what
/// the controller believed (audited as `found`). Until that read succeeds the playbook
/// decides nothing: acting on a stale routing could leave users on a failover target while
/// the controller thinks them on the primary.
async fn reread_after_failed_writes(
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    for (i, g) in guarded.iter_mut().enumerate() {
        if !g.reread || g.pending || g.retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        let Ok(view) = store.read(&g.pb).await else {
            // Still unreadable: read again next round; nothing is decided meanwhile.
            continue;
        };
        g.reread = false;
        let believed = g.state.as_ref().map(|s| s.routing);
        if believed == Some(view.routing) {
            continue;
        }
        warn!(playbook = g.pb.name(), store = %view.routing, believed = ?believed.map(|r| r.to_string()), "after a failed write the store holds another route; adopting it");
        let _ = jobs
            .send(Job::Audit(Box::new(Entry {
                actor: "failoverd".into(),
                action: "found".into(),
                playbook: g.pb.name().to_string(),
                reason: format!(
                    "after a failed write the store holds {} where failoverd believed {}: the write landed after all, or someone else moved it; adopted before deciding again",
                    view.routing,
                    believed.map_or_else(|| "nothing".to_string(), |r| r.to_string())
                ),
                after: view.route.clone(),
                outcome: "noted".into(),
                ..Entry::default()
            })))
            .await;
        let mut st = State::resume(view.routing, clock.now());
        st.last_move = view.last_move;
        set_status(shared, i, |s| {
            s.phase = Some(st.phase.clone());
            s.routing = Some(st.routing);
        });
        g.state = Some(st);
    }
}

/// Reads the routes of the playbooks at `idxs` in one bulk read and settles each.
async fn read_states(
    idxs: &[usize],
    guarded: &mut [Guarded],
    store: &dyn RoutingStore,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    if idxs.is_empty() {
        return;
    }
    let pbs: Vec<Arc<Playbook>> = idxs.iter().map(|&i| guarded[i].pb.clone()).collect();
    let results = store.read_all(&pbs).await;
    for (&i, result) in idxs.iter().zip(results) {
        settle_read(i, &mut guarded[i], result, jobs, shared, clock).await;
    }
}

/// Takes a route read from the store as the playbook's state, or schedules another read.
async fn settle_read(
    i: usize,
    g: &mut Guarded,
    result: Result<crate::routing::RouteView, StoreError>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    match result {
        Ok(view) => {
            let mut st = State::resume(view.routing, clock.now());
            // minDwell survives a restart (a crash loop must not turn into a flapping route).
            st.last_move = view.last_move;
            info!(playbook = g.pb.name(), routing = %view.routing, "route read from the store");
            if let Some(intent) = g.open_intent.take() {
                // The last run recorded an intent and stopped before its outcome (a crash
                // between the two, or a kill while the outcome was kept for a full disk): the
                // store says what became of it. Owed, so a full disk now only delays it.
                let entry = resolve_intent(&intent, &view);
                info!(playbook = g.pb.name(), seq = intent.seq, outcome = %entry.outcome, "intent without an outcome resolved from the store");
                let _ = jobs.send(Job::AuditOwed(Box::new(entry))).await;
            } else if view.routing != Routing::Primary {
                // Say in the audit log where failoverd found the route: after a crash between a
                // write and its `written` record, this is the record that closes the gap.
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        actor: "failoverd".into(),
                        action: "resumed".into(),
                        playbook: g.pb.name().to_string(),
                        reason: format!("started and found the route at {}", view.routing),
                        after: view.route.clone(),
                        outcome: "noted".into(),
                        ..Entry::default()
                    })))
                    .await;
            }
            set_status(shared, i, |s| {
                s.phase = Some(st.phase.clone());
                s.routing = Some(st.routing);
                s.error = None;
            });
            g.state = Some(st);
            g.retry_at = None;
            g.backoff = MIN_BACKOFF;
        }
        Err(e) => {
            if g.retry_at.is_none() {
                error!(playbook = g.pb.name(), error = %e, "cannot read the playbook's VirtualService; the playbook is inactive until it can");
            }
            shared
                .metrics
                .route_write_errors
                .get_or_create(&labels([
                    ("playbook", g.pb.name()),
                    ("reason", e.metric_label()),
                ]))
                .inc();
            set_status(shared, i, |s| s.error = Some(e.to_string()));
            g.retry_at = Some(Instant::now() + retry_delay(e.metric_label(), g.backoff));
            g.backoff = (g.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The record closing an intent that has no outcome, from what the store holds now. Its
/// outcome is in the usual words (`written`, `failed: ...`) so the chain reads like any move;
/// the reason says it was recovered at start.
fn resolve_intent(intent: &Record, view: &crate::routing::RouteView) -> Entry {
    let intended = intent
        .inputs
        .get("to")
        .and_then(|v| serde_json::from_value::<Routing>(v.clone()).ok());
    let why = format!(
        "recovered at start: intent seq {} had no outcome (failoverd stopped between the intent and its record)",
        intent.seq
    );
    let (outcome, reason) = match intended {
        Some(to) if to == view.routing => (
            "written".to_string(),
            format!("{why}; the store holds the intended route {to}"),
        ),
        Some(to) => (
            format!(
                "failed: not written (recovered at start: the store holds {}, not the intended {to})",
                view.routing
            ),
            why,
        ),
        None => (
            format!(
                "failed: unknown (recovered at start: the intent names no route; the store holds {})",
                view.routing
            ),
            why,
        ),
    };
    Entry {
        actor: "failoverd".into(),
        action: intent.action.clone(),
        playbook: intent.playbook.clone(),
        reason,
        inputs: json!({
            "intentSeq": intent.seq,
            "from": intent.inputs.get("from"),
            "to": intent.inputs.get("to"),
        }),
        before: Value::Null,
        after: view.route.clone(),
        outcome,
    }
}

fn set_status(shared: &Shared, i: usize, f: impl FnOnce(&mut PlaybookStatus)) {
    if let Ok(mut s) = shared.status.write()
        && let Some(s) = s.get_mut(i)
    {
        // Only what the list shows counts as a change (signals change on every result).
        let listed = |s: &PlaybookStatus| {
            (
                s.phase.clone(),
                s.routing,
                s.explain.clone(),
                s.error.clone(),
            )
        };
        let before = listed(s);
        f(s);
        if listed(s) != before {
            shared.list_version.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one decision round did.
#[derive(Debug, Default)]
struct StepOutcome {
    write_queued: bool,
    refused: Option<String>,
}

async fn step(
    i: usize,
    g: &mut Guarded,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) -> StepOutcome {
    let mut outcome = StepOutcome::default();
    let Some(state) = g.state.clone() else {
        return outcome;
    };
    if g.pending || g.reread || g.retry_at.is_some_and(|t| Instant::now() < t) {
        return outcome;
    }
    let obs = g.observations(clock);
    let now = clock.now();
    // A queued operator command is decided now; its caller (if waiting) hears the result.
    g.overrides.command = g.command.take();
    let waiter = if g.overrides.command.is_some() {
        g.command_waiter.take()
    } else {
        None
    };
    let started = std::time::Instant::now();
    let d: Decision = engine::decide(&g.pb, &state, &obs, &g.overrides, now);
    shared
        .metrics
        .decision_seconds
        .observe(started.elapsed().as_secs_f64());
    g.overrides.command = None;
    let d = blast_radius(i, g.pb.name(), &state, d, now, jobs, shared).await;
    let name = g.pb.name().to_string();
    // Logged on a change of phase or reason, not of the running clock in the explanation
    // (a recovering playbook's text changes every round: "healthy for 3s of 5m", "4s", ...).
    let changed_explain = shared
        .status
        .read()
        .ok()
        .and_then(|s| {
            s.get(i).map(|s| {
                s.phase.as_ref().map(Phase::name) != Some(d.state.phase.name())
                    || engine::explain_key(&s.explain) != engine::explain_key(&d.explain)
            })
        })
        .unwrap_or(true);
    if changed_explain {
        info!(playbook = %name, phase = d.state.phase.name(), "{}", d.explain);
    }
    // Serialised only when something is recorded: most rounds decide to do nothing.
    let inputs = if d.actions.is_empty() {
        Value::Null
    } else {
        json!({ "observations": obs, "primary": d.primary })
    };
    let mut route = None;
    for a in &d.actions {
        match a {
            Action::Route {
                from,
                to,
                kind,
                reason,
                forced,
                actor,
            } => {
                route = Some(WriteJob {
                    idx: i,
                    pb: g.pb.clone(),
                    from: *from,
                    to: *to,
                    kind: *kind,
                    reason: reason.clone(),
                    forced: *forced,
                    actor: actor.clone(),
                    inputs: inputs.clone(),
                    next: d.state.clone(),
                });
            }
            Action::Stuck { reason } => {
                error!(playbook = %name, "{reason}");
                shared.event(
                    i,
                    EventKind::Stuck,
                    Some(state.routing),
                    None,
                    reason,
                    inputs.clone(),
                    "engine",
                );
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        actor: "engine".into(),
                        action: "stuck".into(),
                        playbook: name.clone(),
                        reason: reason.clone(),
                        inputs: inputs.clone(),
                        outcome: "noted".into(),
                        ..Entry::default()
                    })))
                    .await;
            }
            Action::Refused { reason } => {
                outcome.refused = Some(reason.clone());
                shared.event(
                    i,
                    EventKind::Refused,
                    Some(state.routing),
                    None,
                    reason,
                    inputs.clone(),
                    "engine",
                );
                warn!(playbook = %name, "operator command refused: {reason}");
                let _ = jobs
                    .send(Job::Audit(Box::new(Entry {
                        actor: "engine".into(),
                        action: "refused".into(),
                        playbook: name.clone(),
                        reason: reason.clone(),
                        inputs: inputs.clone(),
                        outcome: format!("refused: {reason}"),
                        ..Entry::default()
                    })))
                    .await;
            }
        }
    }
    let stuck = d.state.stuck;
    set_status(shared, i, |s| {
        s.explain = d.explain.clone();
        s.signals = obs;
        if route.is_none() {
            s.phase = Some(d.state.phase.clone());
        }
    });
    shared.notifier.condition(
        &name,
        &g.pb.spec.virtual_service.to_string(),
        &g.pb.spec.virtual_service.namespace,
        Condition {
            // The routing the store holds: a move still being written is not yet a condition
            // (the write's own event raises it once it lands).
            failed_over: if route.is_some() {
                state.routing != Routing::Primary
            } else {
                d.state.routing != Routing::Primary
            },
            stuck,
        },
    );
    shared
        .metrics
        .stuck
        .get_or_create(&labels([("playbook", &name)]))
        .set(i64::from(stuck));
    match route {
        // A standby evaluates and shows what it would do; only the leader writes (and adopts
        // the move once written). It re-reads every route when it takes over.
        Some(_) if !shared.leader.is_leader() => {}
        Some(job) => {
            g.pending = true;
            if jobs.send(Job::Write(Box::new(job))).await.is_err() {
                g.pending = false;
            } else {
                outcome.write_queued = true;
            }
        }
        None => {
            set_phase_metric(shared, &name, state.phase.name(), d.state.phase.name());
            g.state = Some(d.state);
        }
    }
    if let Some(w) = waiter {
        answer_queued(g, w, &outcome, shared);
    }
    outcome
}

/// Answers the caller of a command that was queued behind a write, now that it is decided:
/// refused (409), waiting for the write it caused, or done without a write.
fn answer_queued(g: &mut Guarded, w: Waiter, outcome: &StepOutcome, shared: &Shared) {
    let (tx, message, created) = w;
    if let Some(r) = &outcome.refused {
        let _ = tx.send(Err(refuse(
            409,
            format!("{message}: refused when it came to apply after the write in flight: {r}"),
        )));
    } else if outcome.write_queued {
        g.waiters.push((tx, message, created));
    } else if !shared.leader.is_leader() {
        let _ = tx.send(Err(refuse(
            503,
            format!(
                "{message}: not applied, this replica lost leadership first; nothing was written"
            ),
        )));
    } else {
        let _ = tx.send(Ok(ControlReply {
            message,
            override_id: created,
            routing: g.state.as_ref().map(|s| s.routing),
            written: false,
        }));
    }
}

/// Drops every queued operator command that can no longer apply, answering its caller with
/// `status` and `why` (never a silent success).
fn drop_queued_commands(guarded: &mut [Guarded], status: u16, why: &str) {
    for g in guarded.iter_mut() {
        g.command = None;
        if let Some((tx, message, _)) = g.command_waiter.take() {
            let _ = tx.send(Err(refuse(status, format!("{message}, but {why}"))));
        }
    }
}

/// The fleet blast-radius rule (see [`crate::engine::fleet`]): records where this playbook
/// stands and, when too many playbooks are in trouble at once, turns an automatic failover into
/// a hold (raising one `blast-radius` event per episode, audited). Operator moves pass untouched.
async fn blast_radius(
    i: usize,
    name: &str,
    state: &State,
    mut d: Decision,
    now: Timestamp,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
) -> Decision {
    use crate::engine::fleet::{Gate, Seat};
    let wants = d.actions.iter().any(|a| {
        matches!(
            a,
            Action::Route {
                kind: MoveKind::Failover,
                from: Routing::Primary,
                ..
            }
        )
    });
    let seat = if d.state.routing != Routing::Primary {
        Seat::FailedOver
    } else if matches!(
        d.primary,
        Verdict::Unhealthy { .. } | Verdict::Suspect { .. }
    ) {
        Seat::Breaching
    } else {
        Seat::Fine
    };
    // Fails closed on a poisoned lock (see `fleet::gate`): the move is held, not let through.
    let gate = crate::engine::fleet::gate(&shared.fleet, i, wants, seat);
    let Gate::Hold { judgement, raise } = gate else {
        return d;
    };
    let reason = judgement.reason();
    d.actions.retain(|a| {
        !matches!(
            a,
            Action::Route {
                kind: MoveKind::Failover,
                ..
            }
        )
    });
    d.state = state.clone();
    if !matches!(d.state.phase, Phase::Suspect { .. }) {
        d.state.phase = Phase::Suspect { since: now };
    }
    d.explain = format!("{}; held: {reason}", d.explain);
    if raise {
        error!(playbook = %name, "blast radius: {reason}");
        let inputs = json!({ "primary": d.primary, "fleet": judgement });
        shared.event(
            i,
            EventKind::BlastRadius,
            Some(state.routing),
            None,
            &reason,
            inputs.clone(),
            "engine",
        );
        let _ = jobs
            .send(Job::Audit(Box::new(Entry {
                actor: "engine".into(),
                action: "blast-radius".into(),
                playbook: name.to_string(),
                reason,
                inputs,
                outcome: "held".into(),
                ..Entry::default()
            })))
            .await;
    }
    d
}

fn set_phase_metric(shared: &Shared, playbook: &str, old: &str, new: &str) {
    shared
        .metrics
        .phase
        .get_or_create(&labels([("playbook", playbook), ("phase", old)]))
        .set(0);
    shared
        .metrics
        .phase
        .get_or_create(&labels([("playbook", playbook), ("phase", new)]))
        .set(1);
}

fn finish_write(guarded: &mut [Guarded], done: Done, shared: &Shared, clock: &Clock) {
    let job = done.job;
    let Some(g) = guarded.get_mut(job.idx) else {
        return;
    };
    g.pending = false;
    let audit_refused = done.result.is_err() && done.label == "audit";
    g.audit_blocked = audit_refused;
    // Operator calls that caused this write get their answer now.
    for (tx, message, override_id) in g.waiters.drain(..) {
        let reply = match (&done.result, &done.unrecorded) {
            (Ok(()), None) => Ok(ControlReply {
                message: format!("{message}; routing written: {}", job.to),
                override_id,
                routing: Some(job.to),
                written: true,
            }),
            (Ok(()), Some(e)) => Ok(ControlReply {
                message: format!(
                    "{message}; routing written: {}, but NOT yet recorded in the audit log (the record is kept and written first once the log takes appends again): {e}",
                    job.to
                ),
                override_id,
                routing: Some(job.to),
                written: true,
            }),
            (Err(e), _) if audit_refused => Err(refuse(
                500,
                format!(
                    "{message}, but nothing was written: no move without its audit record, and {e} (failoverd retries every round)"
                ),
            )),
            (Err(e), _) => Err(refuse(
                500,
                format!("{message}, but the routing write failed (failoverd keeps retrying): {e}"),
            )),
        };
        let _ = tx.send(reply);
    }
    let name = job.pb.name().to_string();
    shared
        .metrics
        .route_write_seconds
        .get_or_create(&labels([("result", done.label)]))
        .observe(done.elapsed.as_secs_f64());
    let actor = job
        .actor
        .as_ref()
        .map_or("engine".to_string(), |a| a.identity.clone());
    let kind = match (&done.result, job.kind) {
        // Announced once per episode by `audit_watch`, not once per round.
        (Err(_), _) if audit_refused => None,
        (Err(_), _) => Some(EventKind::WriteFailed),
        (
            Ok(()),
            MoveKind::Failover
            | MoveKind::Switch
            | MoveKind::OperatorFailover
            | MoveKind::FailbackAborted,
        ) => Some(EventKind::Failover),
        (Ok(()), MoveKind::Failback | MoveKind::OperatorFailback | MoveKind::FailbackStep) => {
            Some(EventKind::Failback)
        }
        // Drift was audited when found; writing the same routing again is no news for on-call.
        (Ok(()), MoveKind::Reassert) => None,
    };
    if let Some(kind) = kind {
        let reason = match &done.result {
            Err(e) => format!("{} — write failed, retrying: {e}", job.reason),
            Ok(()) => job.reason.clone(),
        };
        shared.event(
            job.idx,
            kind,
            Some(job.from),
            Some(job.to),
            &reason,
            job.inputs.clone(),
            &actor,
        );
    }
    match done.result {
        Ok(()) => {
            let old = g.state.as_ref().map(|s| s.phase.name()).unwrap_or("normal");
            set_phase_metric(shared, &name, old, job.next.phase.name());
            match job.kind {
                MoveKind::Failover | MoveKind::Switch | MoveKind::OperatorFailover => {
                    shared
                        .metrics
                        .failovers
                        .get_or_create(&labels([("playbook", &name)]))
                        .inc();
                }
                MoveKind::Failback | MoveKind::OperatorFailback => {
                    shared
                        .metrics
                        .failbacks
                        .get_or_create(&labels([("playbook", &name)]))
                        .inc();
                }
                _ => {}
            }
            let t = Transition {
                time: clock.now(),
                kind: job.kind,
                from: job.from,
                to: job.to,
                reason: job.reason.clone(),
                actor: job
                    .actor
                    .as_ref()
                    .map_or("engine".to_string(), |a| a.identity.clone()),
            };
            g.unrecorded = done.unrecorded.is_some();
            let error = done.unrecorded.as_ref().map(|e| {
                format!(
                    "routing written ({} → {}) but its audit record is not yet: kept and written first once the audit log takes appends again: {e}",
                    job.from, job.to
                )
            });
            set_status(shared, job.idx, |s| {
                s.phase = Some(job.next.phase.clone());
                s.routing = Some(job.to);
                s.error = error;
                s.transitions.push_back(t);
                while s.transitions.len() > HISTORY {
                    s.transitions.pop_front();
                }
            });
            let mut next = job.next;
            // minDwell limits how often the *route* changes, so the dwell counts from when the
            // write landed, not from the decision: a write slowed by a busy disk or API server
            // must not shorten the time the new route holds.
            let prior = g.state.as_ref().and_then(|s| s.last_move);
            if let Some(decided) = next.last_move.filter(|t| Some(*t) != prior) {
                next.last_move = Some(decided.max(clock.now()));
            }
            g.state = Some(next);
            g.retry_at = None;
            g.backoff = MIN_BACKOFF;
        }
        Err(e) => {
            shared
                .metrics
                .route_write_errors
                .get_or_create(&labels([("playbook", &name), ("reason", done.label)]))
                .inc();
            if audit_refused {
                // Decided again at the next tick: the disk may come back at any moment, and an
                // attempt costs one failed append (cut back at once). No backoff growth.
                set_status(shared, job.idx, |s| {
                    s.error = Some(format!(
                        "move {} → {} not made: {e}; retried every round",
                        job.from, job.to
                    ))
                });
                g.retry_at = Some(Instant::now() + TICK);
            } else {
                set_status(shared, job.idx, |s| s.error = Some(e.clone()));
                // A standby attempted nothing; any other failure may have reached the store.
                g.reread = done.label != "fenced";
                g.retry_at = Some(Instant::now() + retry_delay(done.label, g.backoff));
                g.backoff = (g.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn audit(log: &Arc<Mutex<AuditLog>>, entry: Entry) -> Result<(), String> {
    audit_record(log, entry).await.map(|_| ())
}

/// [`audit`], returning the record written (its `seq` is how an outcome names its intent).
async fn audit_record(log: &Arc<Mutex<AuditLog>>, entry: Entry) -> Result<Record, String> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut log = log
            .lock()
            .map_err(|_| "audit log lock poisoned".to_string())?;
        log.append(entry).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// [`AuditLog::append_owed`] off the async threads: the record is written now or kept.
async fn audit_owed(log: &Arc<Mutex<AuditLog>>, entry: Entry) -> Result<(), String> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut log = log
            .lock()
            .map_err(|_| "audit log lock poisoned".to_string())?;
        log.append_owed(entry)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Exit status when the writer task is gone: nothing can be written or audited any more, so
/// the process ends for its supervisor to restart it (every record and override is on disk;
/// an intent without an outcome is resolved from the store at the next start).
pub const EXIT_WRITER_DIED: i32 = 4;

/// The writer task ended while the controller runs (a panic, or its loop left): stop being
/// ready, answer waiting operator calls with an error, and exit non-zero. Never answer 200
/// for a move that nothing will write.
async fn writer_died(
    writer: &mut tokio::task::JoinHandle<()>,
    guarded: &mut [Guarded],
    shared: &Shared,
) -> ! {
    shared.ready.store(false, Ordering::Relaxed);
    let why = match writer.await {
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic".into());
            format!("panicked: {msg}")
        }
        Err(e) => e.to_string(),
        Ok(()) => "its loop ended".to_string(),
    };
    error!(
        exit = EXIT_WRITER_DIED,
        "the routing writer task is gone ({why}): no move can be written; exiting for the supervisor to restart failoverd"
    );
    drop_queued_commands(
        guarded,
        503,
        &format!(
            "failoverd's routing writer is gone ({why}); nothing was written; failoverd is restarting"
        ),
    );
    for g in guarded.iter_mut() {
        for (tx, message, _) in g.waiters.drain(..) {
            let _ = tx.send(Err(refuse(
                503,
                format!("{message}, but failoverd's routing writer is gone ({why}); nothing was written; failoverd is restarting"),
            )));
        }
    }
    // Long enough for those answers to leave; the API stays up meanwhile, not ready.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::process::exit(EXIT_WRITER_DIED)
}

/// Once per tick: while the audit log refuses appends, tries one (owed records first) so the
/// episode ends as soon as the log takes them again; announces each episode once (error line,
/// event `audit-unavailable`) and its end (`audit-recovered`). Metrics and `/readyz` follow
/// the log's [`AuditHealth`] directly.
async fn audit_watch(
    log: &Arc<Mutex<AuditLog>>,
    announced: &mut bool,
    guarded: &mut [Guarded],
    shared: &Shared,
) {
    let health = &shared.audit_health;
    if let Some(u) = health.unavailable() {
        // Each round, one append that also writes the owed records first: it ends the episode
        // as soon as the log takes appends again, even with no move waiting, and leaves in
        // the chain when appends were refused (records that are not moves' — a refused call,
        // a note — may be missing from that time; moves were held, none is missing).
        let note = Entry {
            actor: "failoverd".into(),
            action: "audit-unavailable".into(),
            reason: format!(
                "the audit log refused appends from {} until this record ({}); no move was made without its intent meanwhile, other records of that time may be missing",
                u.since, u.error
            ),
            outcome: "noted".into(),
            ..Entry::default()
        };
        if audit(log, note).await.is_ok() {
            info!(
                "the audit log takes appends again; records kept meanwhile are written, in order"
            );
        }
    }
    if health.owed() == 0 {
        for (i, g) in guarded.iter_mut().enumerate().filter(|(_, g)| g.unrecorded) {
            g.unrecorded = false;
            set_status(shared, i, |s| s.error = None);
        }
    }
    // The playbook whose move waits on the log, if any, names the event.
    let blocked = guarded.iter().position(|g| g.audit_blocked);
    match (health.unavailable(), *announced) {
        (Some(u), false) => {
            *announced = true;
            let reason = format!(
                "audit appends fail since {}: {}; moves are not made until the log takes appends (retried every round)",
                u.since, u.error
            );
            error!(owed = health.owed(), "{reason}");
            audit_event(shared, EventKind::AuditUnavailable, blocked, &reason);
        }
        (None, true) => {
            *announced = false;
            info!("the audit log takes appends again; moves held for it proceed");
            audit_event(
                shared,
                EventKind::AuditRecovered,
                blocked,
                "the audit log takes appends again",
            );
        }
        _ => {}
    }
}

/// An audit event, about the blocked playbook when there is one, else daemon-wide.
fn audit_event(shared: &Shared, kind: EventKind, idx: Option<usize>, reason: &str) {
    match idx {
        Some(i) => shared.event(i, kind, None, None, reason, Value::Null, "failoverd"),
        None => shared.notifier.notify(Event {
            kind,
            time: Timestamp::now(),
            playbook: String::new(),
            service: String::new(),
            namespace: String::new(),
            from: None,
            to: None,
            reason: reason.to_string(),
            signals: Value::Null,
            actor: "failoverd".to_string(),
        }),
    }
}

/// How many routing writes may be in flight at once, each to a different VirtualService:
/// enough that a storm of failovers is written in parallel (the kubernetes store's token
/// bucket still paces the requests), few enough that a slow API server is not flooded.
pub const WRITE_CONCURRENCY: usize = 16;

/// The writer: appends audit records in the order they were sent, and hands each routing
/// write to the lane of its VirtualService (`namespace/name`). A lane writes its object's
/// moves strictly in order, one at a time; lanes run concurrently (at most
/// [`WRITE_CONCURRENCY`] writes in flight), so one stalled object delays no other. The audit
/// chain stays one ordered chain (the log's mutex): intents and outcomes of different objects
/// may interleave, and each outcome names its intent (`inputs.intentSeq`).
///
/// Returns once every lane has finished its last write (the controller dropped the job
/// sender): nothing in flight is abandoned. A lane that panics takes the writer with it, so
/// the controller sees the writer gone (see [`writer_died`]).
async fn writer(
    store: Arc<dyn RoutingStore>,
    log: Arc<Mutex<AuditLog>>,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    shared: Arc<Shared>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY));
    // Unbounded, yet bounded in practice: the controller has at most one write in flight per
    // playbook, so a lane never holds more jobs than playbooks share its object.
    let mut lanes: std::collections::HashMap<String, mpsc::UnboundedSender<Box<WriteJob>>> =
        std::collections::HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                match job {
                    Job::Audit(entry) => {
                        if let Err(e) = audit(&log, *entry).await {
                            shared.metrics.audit_errors.inc();
                            error!(error = %e, "audit append failed");
                        }
                    }
                    Job::AuditOwed(entry) => {
                        if let Err(e) = audit_owed(&log, *entry).await {
                            shared.metrics.audit_errors.inc();
                            warn!(error = %e, "audit record kept: written first once the log takes appends again");
                        }
                    }
                    Job::Write(job) => {
                        let key = job.pb.spec.virtual_service.to_string();
                        let lane = lanes.entry(key.clone()).or_insert_with(|| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            tasks.spawn(
                                lane(rx, store.clone(), log.clone(), done.clone(), shared.clone(), permits.clone())
                                    .instrument(info_span!("lane", object = %key)),
                            );
                            tx
                        });
                        // A lane only ends when its sender is dropped (below) or the
                        // controller is gone; either way there is no one left to tell.
                        let _ = lane.send(job);
                    }
                }
            }
            Some(ended) = tasks.join_next() => {
                if let Err(e) = ended && e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
    // Shutdown: every lane finishes the writes it holds (each is bounded by its store's own
    // budget) and reports them before the writer returns.
    drop(lanes);
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// One VirtualService's writes, in the order the controller sent them.
async fn lane(
    mut jobs: mpsc::UnboundedReceiver<Box<WriteJob>>,
    store: Arc<dyn RoutingStore>,
    log: Arc<Mutex<AuditLog>>,
    done: mpsc::Sender<Done>,
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    while let Some(job) = jobs.recv().await {
        // Never closed, so this only fails if the writer is gone.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let finished = write_one(job, store.as_ref(), &log, &shared).await;
        drop(permit);
        if done.send(finished).await.is_err() {
            break;
        }
    }
}

/// One routing write: intent record, the store write (awaited to its real end), outcome
/// record naming the intent.
async fn write_one(
    job: Box<WriteJob>,
    store: &dyn RoutingStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
) -> Done {
    let started = Instant::now();
    let name = job.pb.name().to_string();
    let actor = job
        .actor
        .as_ref()
        .map_or("engine".to_string(), |a| a.identity.clone());
    let reason = match &job.actor {
        Some(a) if a.reason != job.reason => {
            format!("{} (operator reason: {})", job.reason, a.reason)
        }
        _ => job.reason.clone(),
    };
    let entry = |outcome: String, before: Value, after: Value, intent: Option<u64>| {
        let mut inputs = json!({
            "from": job.from, "to": job.to, "forced": job.forced, "signals": job.inputs,
        });
        if let Some(seq) = intent {
            inputs["intentSeq"] = json!(seq);
        }
        Entry {
            actor: actor.clone(),
            action: job.kind.as_str().to_string(),
            playbook: name.clone(),
            reason: reason.clone(),
            inputs,
            before,
            after,
            outcome,
        }
    };
    // A standby (or a leader whose lease lapsed) attempts nothing, so records nothing.
    if !shared.leader.is_leader() {
        return Done {
            job,
            result: Err(StoreError::Fenced.to_string()),
            label: "fenced",
            elapsed: started.elapsed(),
            unrecorded: None,
        };
    }
    // An action that cannot be audited is not performed. It is decided again every round
    // (see `finish_write`); the episode is announced once (see `audit_watch`), so a full
    // disk logs one error, not one per round.
    let was_available = shared.audit_health.unavailable().is_none();
    let intent = match audit_record(log, entry("intent".into(), Value::Null, Value::Null, None))
        .await
    {
        Ok(r) => r.seq,
        Err(e) => {
            shared.metrics.audit_errors.inc();
            if was_available {
                error!(playbook = %name, to = %job.to, error = %e, "audit append failed; routing write not performed (retried every round)");
            } else {
                debug!(playbook = %name, to = %job.to, error = %e, "audit log still refuses appends; routing write not performed");
            }
            return Done {
                job,
                result: Err(format!("audit log unavailable: {e}")),
                label: "audit",
                elapsed: started.elapsed(),
                unrecorded: None,
            };
        }
    };
    // Never dropped while it may still land: past WRITE_TIMEOUT the write is reported as in
    // flight (log, status) and awaited to its real end, so the outcome recorded is what the
    // store did. The store bounds its own attempts (the kubernetes store settles a lost
    // answer by reading the object back within its budget).
    let result = {
        let write = store.write(&job.pb, job.to, job.next.last_move);
        tokio::pin!(write);
        let mut waited = Duration::ZERO;
        loop {
            match tokio::time::timeout(WRITE_TIMEOUT, &mut write).await {
                Ok(r) => break r,
                Err(_) => {
                    waited += WRITE_TIMEOUT;
                    let secs = waited.as_secs();
                    warn!(playbook = %name, to = %job.to, seconds = secs, "routing write still in flight; waiting for its real outcome");
                    set_status(shared, job.idx, |s| {
                        s.error = Some(format!(
                            "write in flight for {secs}s ({} → {}); its real outcome is recorded when it ends",
                            job.from, job.to
                        ))
                    });
                }
            }
        }
    };
    // What became of the intent is owed to the chain: when the log refuses it now, it is
    // kept in order and written before anything later, and the move is reported as
    // not recorded until then (a crash meanwhile is resolved from the store at start).
    let mut unrecorded = None;
    let (label, res) = match result {
        Ok(out) => {
            let outcome = if out.changed { "written" } else { "unchanged" };
            if let Err(e) = audit_owed(
                log,
                entry(outcome.into(), out.before, out.after, Some(intent)),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(playbook = %name, error = %e, "routing written but its audit record is not: kept, and written first once the log takes appends again");
                unrecorded = Some(e);
            }
            ("ok", Ok(()))
        }
        Err(e) => {
            let msg = e.to_string();
            if let Err(e) = audit_owed(
                log,
                entry(
                    format!("failed: {msg}"),
                    Value::Null,
                    Value::Null,
                    Some(intent),
                ),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(playbook = %name, error = %e, "audit record of a failed write kept for later");
            }
            (e.metric_label(), Err(msg))
        }
    };
    let elapsed = started.elapsed();
    match &res {
        Ok(())
            if matches!(
                job.kind,
                MoveKind::Failover | MoveKind::Switch | MoveKind::FailbackAborted
            ) =>
        {
            warn!(playbook = %name, kind = job.kind.as_str(), to = %job.to, ms = elapsed.as_millis() as u64, "{}", job.reason)
        }
        Ok(()) => {
            info!(playbook = %name, kind = job.kind.as_str(), to = %job.to, ms = elapsed.as_millis() as u64, "{}", job.reason)
        }
        Err(e) => {
            error!(playbook = %name, kind = job.kind.as_str(), to = %job.to, error = %e, "routing write failed; will retry")
        }
    }
    Done {
        job,
        result: res,
        label,
        elapsed,
        unrecorded,
    }
}

/// Summarises verdicts for display.
pub fn verdict_word(v: &Verdict) -> &'static str {
    match v {
        Verdict::Healthy { .. } => "healthy",
        Verdict::Suspect { .. } => "suspect",
        Verdict::Unhealthy { .. } => "unhealthy",
        Verdict::Unknown { .. } => "unknown",
    }
}

/// A failover hold placed by a drill (its actor is `drill:<name>`).
fn is_drill_hold(r: &OverrideRecord) -> bool {
    r.kind == OverrideKind::Failover && r.actor.starts_with(crate::drill::ACTOR_PREFIX)
}

/// Ends drills the last leader was running (see `orphaned_drills` in [`run`]): a failback as
/// the drill would have made it, once the playbook's route has been read again; when the
/// primary is not healthy enough for that (or the route is already back), the drill's hold
/// is released and the engine decides as after any hold. Names still waiting for their
/// route stay in `names`.
async fn end_orphaned_drills(
    names: &mut Vec<String>,
    guarded: &mut [Guarded],
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let mut waiting = Vec::new();
    for name in std::mem::take(names) {
        let ready = guarded
            .iter()
            .any(|g| g.pb.name() == name && g.state.is_some() && !g.pending);
        if !ready {
            waiting.push(name);
            continue;
        }
        let holds: Vec<OverrideRecord> = store
            .all()
            .iter()
            .filter(|r| r.playbook == name && is_drill_hold(r))
            .cloned()
            .collect();
        let Some(first) = holds.first() else {
            continue;
        };
        let actor = Actor {
            identity: first.actor.clone(),
            reason: "the drill ran on the previous leader, which is gone; ended on takeover".into(),
        };
        warn!(playbook = %name, drill = %first.actor, "a drill from the previous leader holds this playbook; failing back");
        let (tx, mut rx) = oneshot::channel();
        let failback = Control {
            playbook: Some(name.clone()),
            kind: ControlKind::Failback { force: false },
            actor: actor.clone(),
            reply: tx,
        };
        handle_control(failback, guarded, store, log, jobs, shared, clock).await;
        // A refusal is answered at once; an accepted failback answers after its write.
        if let Ok(Err(refused)) = rx.try_recv() {
            info!(playbook = %name, reason = %refused.error, "no failback now; releasing the drill's hold instead");
            for h in holds {
                let (tx, _rx) = oneshot::channel();
                let release = Control {
                    playbook: None,
                    kind: ControlKind::DeleteOverride { id: h.id },
                    actor: actor.clone(),
                    reply: tx,
                };
                handle_control(release, guarded, store, log, jobs, shared, clock).await;
            }
        }
    }
    *names = waiting;
}

/// On takeover: replaces this replica's overrides with the set the last leader kept in the
/// cluster (a freeze set through the old leader must hold on the new one), and audits it.
async fn adopt_cluster_overrides(
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
    clock: &Clock,
) {
    let outcome = match shared.leader.load_overrides().await {
        Ok(None) => {
            // Nothing kept yet (the first leader, or no cluster state): this replica's own
            // set stands, and goes to the cluster for the next leader.
            publish_overrides(store, shared);
            format!(
                "no overrides kept in the cluster; this replica's own {} stand",
                store.all().len()
            )
        }
        Ok(Some(json)) => match serde_json::from_str::<Vec<OverrideRecord>>(&json) {
            Ok(records) => {
                let now = clock.now();
                let live: Vec<OverrideRecord> =
                    records.into_iter().filter(|r| r.until > now).collect();
                let n = live.len();
                match store.replace(live) {
                    Ok(()) => {
                        publish_overrides(store, shared);
                        format!("adopted {n} override(s) kept in the cluster by the last leader")
                    }
                    Err(e) => format!("failed: cannot persist the cluster's overrides: {e}"),
                }
            }
            Err(e) => format!("failed: the cluster's overrides are not valid JSON: {e}"),
        },
        Err(e) => format!("failed: cannot read the cluster's overrides: {e}"),
    };
    if outcome.starts_with("failed") {
        error!("{outcome}; keeping this replica's own overrides");
    } else {
        info!("{outcome}");
    }
    if let Err(e) = audit(
        log,
        Entry {
            actor: "failoverd".into(),
            action: "takeover".into(),
            reason: "became the leader".into(),
            outcome,
            ..Entry::default()
        },
    )
    .await
    {
        shared.metrics.audit_errors.inc();
        error!(error = %e, "audit append failed");
    }
}

fn publish_overrides(store: &OverrideStore, shared: &Shared) {
    if let Ok(mut o) = shared.overrides.write() {
        *o = store.all().to_vec();
    }
    // With leader election the set is also kept in the cluster, for the next leader.
    shared
        .leader
        .mirror_overrides(|| serde_json::to_string(store.all()).unwrap_or_default());
    shared.list_version.fetch_add(1, Ordering::Relaxed);
}

/// Drops overrides whose time is up, auditing each; true when any expired.
async fn expire_overrides(
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    shared: &Shared,
    clock: &Clock,
) -> bool {
    let now = clock.now();
    let (expired, keep): (Vec<_>, Vec<_>) =
        store.all().iter().cloned().partition(|r| r.until <= now);
    if expired.is_empty() {
        return false;
    }
    if let Err(e) = store.replace(keep) {
        error!(error = %e, "cannot persist override expiry; will retry");
        return false;
    }
    for r in expired {
        info!(playbook = %r.playbook, id = %r.id, kind = ?r.kind, "override expired; automation takes over");
        if let Some(idx) = shared.index(&r.playbook) {
            let msg = format!(
                "{:?} override {} by {} ended; automation takes over",
                r.kind, r.id, r.actor
            );
            shared.event(
                idx,
                EventKind::OverrideExpired,
                None,
                None,
                &msg,
                Value::Null,
                "failoverd",
            );
        }
        let entry = Entry {
            actor: "failoverd".into(),
            action: "override-expired".into(),
            playbook: r.playbook.clone(),
            reason: format!(
                "{:?} override {} by {} ended ({})",
                r.kind, r.id, r.actor, r.reason
            ),
            inputs: serde_json::to_value(&r).unwrap_or(Value::Null),
            outcome: "noted".into(),
            ..Entry::default()
        };
        if let Err(e) = audit(log, entry).await {
            shared.metrics.audit_errors.inc();
            error!(error = %e, "audit append failed");
        }
    }
    true
}

#[allow(clippy::too_many_arguments)]
async fn handle_control(
    msg: Control,
    guarded: &mut [Guarded],
    store: &mut OverrideStore,
    log: &Arc<Mutex<AuditLog>>,
    jobs: &mpsc::Sender<Job>,
    shared: &Shared,
    clock: &Clock,
) {
    let Control {
        playbook,
        kind,
        actor,
        reply,
    } = msg;
    if !shared.leader.is_leader() {
        let leader = shared
            .leader
            .holder()
            .unwrap_or_else(|| "not known yet".into());
        let _ = reply.send(Err(refuse(
            503,
            format!("this replica is a standby and does not write; the leader is `{leader}`"),
        )));
        return;
    }
    let now = clock.now();
    let action = kind.action();
    let audit_entry = |playbook: &str, outcome: String, inputs: Value| Entry {
        actor: actor.identity.clone(),
        action: action.into(),
        playbook: playbook.to_string(),
        reason: actor.reason.clone(),
        inputs,
        outcome,
        ..Entry::default()
    };
    // Resolve the playbook (DeleteOverride finds it through the override).
    let name = match (&kind, &playbook) {
        (ControlKind::DeleteOverride { id }, _) => match store.all().iter().find(|r| &r.id == id) {
            Some(r) => r.playbook.clone(),
            None => {
                let _ = reply.send(Err(refuse(404, format!("no override with id `{id}`"))));
                return;
            }
        },
        (_, Some(p)) => p.clone(),
        (_, None) => {
            let _ = reply.send(Err(refuse(404, "no playbook named")));
            return;
        }
    };
    let Some(idx) = guarded.iter().position(|g| g.pb.name() == name) else {
        let _ = reply.send(Err(refuse(404, format!("no playbook named `{name}`"))));
        return;
    };
    let g = &mut guarded[idx];
    let inputs = json!({ "request": format!("{kind:?}") });
    let Some(state) = g.state.clone() else {
        let _ = reply.send(Err(refuse(
            409,
            format!("playbook `{name}` is inactive: its VirtualService could not be read"),
        )));
        return;
    };
    // A drill's failover is re-checked here, in the one controller, so an incident cannot
    // slip in between the drill's own check and its move.
    if let Some(why) =
        crate::drill::refuse_drill_failover(&actor, &kind, &name, &state, store.all())
    {
        let _ = reply.send(Err(refuse(409, why)));
        return;
    }
    let obs = g.observations(clock);
    let mut records: Vec<OverrideRecord> = store.all().to_vec();
    let mut created = None;
    let mut command = None;
    let checked: Result<String, ControlError> = match &kind {
        ControlKind::Failover { target, force, ttl } => {
            engine::check_operator_failover(&g.pb, &obs, *target, *force, now)
                .map_err(|e| refuse(409, e))
                .map(|t| {
                    records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Failover));
                    let rec = OverrideRecord {
                        id: new_id(),
                        playbook: name.clone(),
                        kind: OverrideKind::Failover,
                        actor: actor.identity.clone(),
                        reason: actor.reason.clone(),
                        created: now,
                        until: add(now, *ttl),
                        target: Some(t),
                        force: *force,
                    };
                    let msg = format!("failover to failover[{t}] held until {}", rec.until);
                    created = Some(rec.id.clone());
                    records.push(rec);
                    msg
                })
        }
        ControlKind::Failback { force } => {
            let primary = engine::verdict(&g.pb, &obs, Target::Primary, now);
            if state.routing == Routing::Primary {
                Err(refuse(409, "already on the primary route"))
            } else if !force && !primary.is_healthy() {
                Err(refuse(
                    409,
                    format!(
                        "primary is not known healthy ({}); use force to fail back anyway",
                        engine::describe(&primary)
                    ),
                ))
            } else {
                records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Failover));
                command = Some(Command::Failback {
                    by: actor.clone(),
                    force: *force,
                });
                Ok("failback to the original route".to_string())
            }
        }
        ControlKind::Freeze { ttl } => {
            records.retain(|r| !(r.playbook == name && r.kind == OverrideKind::Freeze));
            let rec = OverrideRecord {
                id: new_id(),
                playbook: name.clone(),
                kind: OverrideKind::Freeze,
                actor: actor.identity.clone(),
                reason: actor.reason.clone(),
                created: now,
                until: add(now, *ttl),
                target: None,
                force: false,
            };
            let msg = format!("automation frozen until {}", rec.until);
            created = Some(rec.id.clone());
            records.push(rec);
            Ok(msg)
        }
        ControlKind::Resume => {
            let before = records.len();
            records.retain(|r| r.playbook != name);
            if records.len() == before {
                Err(refuse(
                    409,
                    format!("playbook `{name}` has no freeze or hold to release"),
                ))
            } else {
                Ok("freezes and holds released; automation in control".to_string())
            }
        }
        ControlKind::DeleteOverride { id } => {
            records.retain(|r| &r.id != id);
            Ok(format!("override {id} removed"))
        }
    };
    let message = match checked {
        Ok(m) => m,
        Err(e) => {
            // Authenticated refusals are audited too.
            if let Err(err) = audit(
                log,
                audit_entry(&name, format!("refused: {}", e.error), inputs),
            )
            .await
            {
                shared.metrics.audit_errors.inc();
                error!(error = %err, "audit append failed");
            }
            shared.event(
                idx,
                EventKind::Refused,
                Some(state.routing),
                None,
                &format!("{action} by {} refused: {}", actor.identity, e.error),
                Value::Null,
                &actor.identity,
            );
            let _ = reply.send(Err(e));
            return;
        }
    };
    // Audit first: a call that cannot be audited is not performed.
    let mut accepted = inputs.clone();
    if let Some(id) = &created {
        accepted["overrideId"] = json!(id);
    }
    if let Err(e) = audit(log, audit_entry(&name, "accepted".into(), accepted)).await {
        shared.metrics.audit_errors.inc();
        let _ = reply.send(Err(refuse(
            500,
            format!("cannot audit the call, so it was not performed: {e}"),
        )));
        return;
    }
    if let Err(e) = store.replace(records) {
        let _ = audit(
            log,
            audit_entry(
                &name,
                format!("failed: cannot persist overrides: {e}"),
                Value::Null,
            ),
        )
        .await;
        let _ = reply.send(Err(refuse(
            500,
            format!("cannot persist the override: {e}"),
        )));
        return;
    }
    publish_overrides(store, shared);
    info!(playbook = %name, actor = %actor.identity, action, "{message}: {}", actor.reason);
    let kind = if matches!(kind, ControlKind::Freeze { .. }) {
        EventKind::Freeze
    } else {
        EventKind::Override
    };
    shared.event(
        idx,
        kind,
        Some(state.routing),
        None,
        &format!("{message} (by {}: {})", actor.identity, actor.reason),
        Value::Null,
        &actor.identity,
    );
    g.overrides = store.for_playbook(&name, now);
    let queued = command.is_some();
    if let Some(c) = command {
        if let Some((tx, earlier, _)) = g.command_waiter.take() {
            let _ = tx.send(Err(refuse(
                409,
                format!("{earlier}: superseded by a later operator command before it could apply; nothing was written for it"),
            )));
        }
        g.command = Some(c);
    }
    if queued && g.pending {
        // Decided right after the write in flight; the caller hears how it ended then.
        g.command_waiter = Some((reply, message, created));
        return;
    }
    if g.pending {
        // The command stays queued and is decided right after the write in flight.
        let _ = reply.send(Ok(ControlReply {
            message: format!(
                "{message}; a routing write is in flight, the change applies right after it"
            ),
            override_id: created,
            routing: Some(state.routing),
            written: false,
        }));
        return;
    }
    let out = step(idx, g, jobs, shared, clock).await;
    let g = &mut guarded[idx];
    if g.command.is_some() {
        // Not decided yet (a retry is due later, or the route is being read again): the
        // caller is answered when it is.
        g.command_waiter = Some((reply, message, created));
        return;
    }
    if let Some(r) = out.refused {
        let _ = reply.send(Err(refuse(409, r)));
    } else if out.write_queued {
        g.waiters.push((reply, message, created));
    } else {
        let _ = reply.send(Ok(ControlReply {
            message,
            override_id: created,
            routing: g.state.as_ref().map(|s| s.routing),
            written: false,
        }));
    }
}

fn add(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn intent(to: Value) -> Record {
        Record {
            seq: 7,
            time: Timestamp::UNIX_EPOCH,
            prev: crate::audit::GENESIS.into(),
            actor: "engine".into(),
            action: "failover".into(),
            playbook: "web".into(),
            reason: "primary down".into(),
            inputs: json!({ "from": { "to": "primary" }, "to": to, "forced": false }),
            before: Value::Null,
            after: Value::Null,
            outcome: "intent".into(),
        }
    }

    fn view(routing: Routing) -> crate::routing::RouteView {
        crate::routing::RouteView {
            routing,
            route: json!([{ "destination": { "host": "dr" }, "weight": 100 }]),
            last_move: None,
            drift: None,
        }
    }

    /// A store whose writes take a set time per playbook and log when each starts and ends.
    #[derive(Debug, Default)]
    struct SlowStore {
        delays: std::collections::HashMap<String, Duration>,
        log: Mutex<Vec<String>>,
    }

    impl RoutingStore for SlowStore {
        fn read<'a>(
            &'a self,
            _pb: &'a Playbook,
        ) -> crate::routing::StoreFuture<'a, crate::routing::RouteView> {
            Box::pin(async { Ok(view(Routing::Primary)) })
        }

        fn write<'a>(
            &'a self,
            pb: &'a Playbook,
            _to: Routing,
            _last_move: Option<Timestamp>,
        ) -> crate::routing::StoreFuture<'a, crate::routing::WriteOutcome> {
            Box::pin(async move {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("start {}", pb.name()));
                if let Some(d) = self.delays.get(pb.name()) {
                    tokio::time::sleep(*d).await;
                }
                self.log.lock().unwrap().push(format!("end {}", pb.name()));
                Ok(crate::routing::WriteOutcome {
                    before: json!([{ "destination": { "host": "primary" } }]),
                    after: json!([{ "destination": { "host": "dr" } }]),
                    changed: true,
                })
            })
        }

        fn describe(&self) -> String {
            "slow".into()
        }
    }

    /// The demo playbook renamed `name`, routing VirtualService `demo/<object>`.
    fn playbook(name: &str, object: &str) -> Loaded {
        let text = crate::demo::PLAYBOOK
            .replacen("name: demo", &format!("name: {name}"), 1)
            .replacen(
                "virtualService: { namespace: demo, name: web }",
                &format!("virtualService: {{ namespace: demo, name: {object} }}"),
                1,
            );
        let playbook = crate::playbook::parse("test.yaml", &text).unwrap();
        assert_eq!(playbook.name(), name);
        assert_eq!(playbook.spec.virtual_service.name, object);
        Loaded {
            file: "test.yaml".into(),
            playbook,
        }
    }

    fn failover_job(idx: usize, pb: &Arc<Playbook>) -> Job {
        let to = Routing::Failover { target: 0 };
        Job::Write(Box::new(WriteJob {
            idx,
            pb: pb.clone(),
            from: Routing::Primary,
            to,
            kind: MoveKind::Failover,
            reason: "primary down".into(),
            forced: false,
            actor: None,
            inputs: Value::Null,
            next: State::resume(to, Timestamp::UNIX_EPOCH),
        }))
    }

    struct Rig {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        shared: Arc<Shared>,
        store: Arc<SlowStore>,
        jobs: mpsc::Sender<Job>,
        done: mpsc::Receiver<Done>,
        writer: tokio::task::JoinHandle<()>,
    }

    fn rig(playbooks: &[Loaded], delays: &[(&str, Duration)]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(Mutex::new(AuditLog::open(&path).unwrap()));
        let shared = Arc::new(Shared::new(playbooks));
        let store = Arc::new(SlowStore {
            delays: delays.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            log: Mutex::default(),
        });
        let (jobs, job_rx) = mpsc::channel(16);
        let (done_tx, done) = mpsc::channel(16);
        let writer = tokio::spawn(writer(store.clone(), log, job_rx, done_tx, shared.clone()));
        Rig {
            _dir: dir,
            path,
            shared,
            store,
            jobs,
            done,
            writer,
        }
    }

    /// Checks every outcome names an earlier intent of its playbook, once.
    fn outcomes_name_their_intents(records: &[Record]) {
        let mut open = std::collections::HashMap::new();
        for r in records {
            if r.outcome == "intent" {
                open.insert(r.seq, r.playbook.clone());
            } else {
                let seq = r.inputs["intentSeq"].as_u64().unwrap();
                assert_eq!(open.remove(&seq), Some(r.playbook.clone()), "{r:?}");
            }
        }
        assert!(open.is_empty(), "intents without outcome: {open:?}");
    }

    /// Ensures a write still running when WRITE_TIMEOUT passes is not abandoned: the status
    /// says it is in flight, and once it ends the audit holds its real outcome (`written`,
    /// naming its intent), no `failed`.
    #[tokio::test(start_paused = true)]
    async fn a_write_past_the_timeout_is_recorded_with_its_real_outcome() {
        let pbs = [playbook("slow", "web")];
        let mut r = rig(&pbs, &[("slow", WRITE_TIMEOUT + Duration::from_secs(2))]);
        r.jobs
            .send(failover_job(0, &r.shared.playbooks[0]))
            .await
            .unwrap();
        tokio::time::sleep(WRITE_TIMEOUT + Duration::from_secs(1)).await;
        let error = r.shared.snapshot()[0].error.clone().unwrap_or_default();
        assert!(error.starts_with("write in flight for 10s"), "{error}");
        assert!(r.done.try_recv().is_err(), "reported before it ended");
        let done = r.done.recv().await.unwrap();
        assert_eq!((done.result, done.label), (Ok(()), "ok"));
        drop(r.jobs);
        r.writer.await.unwrap();
        let records = crate::audit::read_all(&r.path).unwrap();
        let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes, ["intent", "written"]);
        outcomes_name_their_intents(&records);
    }

    /// Ensures lanes: a write to another object goes ahead while one object's write is
    /// stalled, and a second write to the stalled object starts only after the first ends.
    #[tokio::test(start_paused = true)]
    async fn one_object_stalled_delays_only_its_own_later_writes() {
        let pbs = [
            playbook("a1", "web-a"),
            playbook("b", "web-b"),
            playbook("a2", "web-a"),
        ];
        let stall = Duration::from_secs(60);
        let mut r = rig(&pbs, &[("a1", stall)]);
        let started = Instant::now();
        for (i, pb) in r.shared.playbooks.clone().iter().enumerate() {
            r.jobs.send(failover_job(i, pb)).await.unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let d = r.done.recv().await.unwrap();
            order.push((d.job.pb.name().to_string(), started.elapsed()));
        }
        assert_eq!(order[0].0, "b");
        assert!(order[0].1 < Duration::from_secs(1), "{order:?}");
        assert_eq!(
            order.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["b", "a1", "a2"]
        );
        let log = r.store.log.lock().unwrap().clone();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        assert!(pos("end b") < pos("end a1"), "{log:?}");
        assert!(pos("end a1") < pos("start a2"), "{log:?}");
        drop(r.jobs);
        r.writer.await.unwrap();
        outcomes_name_their_intents(&crate::audit::read_all(&r.path).unwrap());
    }

    /// Ensures an intent without an outcome is closed as `written` when the store holds the
    /// intended route and as `failed: not written` when it holds another, naming both, under
    /// the intent's own action and playbook (so the audit scan sees it closed).
    #[test]
    fn intent_is_resolved_from_the_store() {
        let to = json!({ "to": "failover", "target": 0 });
        let failed_over = view(Routing::Failover { target: 0 });
        let e = resolve_intent(&intent(to.clone()), &failed_over);
        assert_eq!(
            (e.action.as_str(), e.playbook.as_str(), e.outcome.as_str()),
            ("failover", "web", "written")
        );
        assert!(
            e.reason.starts_with("recovered at start: intent seq 7"),
            "{}",
            e.reason
        );
        assert_eq!(e.inputs["intentSeq"], 7);
        assert_eq!(e.after, failed_over.route);

        let e = resolve_intent(&intent(to), &view(Routing::Primary));
        assert_eq!(
            e.outcome,
            "failed: not written (recovered at start: the store holds primary (original route), not the intended failover[0] 100%)"
        );

        let e = resolve_intent(&intent(Value::Null), &view(Routing::Primary));
        assert!(e.outcome.starts_with("failed: unknown"), "{}", e.outcome);
    }
}
