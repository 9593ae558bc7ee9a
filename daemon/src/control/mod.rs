//! The daemon's moving parts: probes feed a controller that runs the engine; every routing
//! write and audit record goes through the writer, which appends audit records in order and
//! writes each VirtualService in its own lane (lanes run concurrently, see [`DEFAULT_WRITE_CONCURRENCY`]).
//!
//! ```text
//! probes ──results──► controller (decide) ──jobs──► writer (audit, store, audit) ──done──┐
//!                          ▲                                                              │
//!                          └──────────────────────────────────────────────────────────────┘
//! ```
//! The controller applies an engine decision's next state only once the writer reports the
//! write done, so a failed write is simply decided again (with backoff) on a later tick.

mod commands;
pub mod drift;
mod expiry;
mod fault;
pub mod fence;
mod read;
mod recording;
mod spans;
mod step;
#[cfg(test)]
mod tests;
mod traced;
mod vantage;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failover_probes::{Outcome, ProbeKind, ProbeResult, ProbeSpec, ProbeWindow};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use crate::audit::{AuditLog, Entry, Record};
use crate::engine::{
    self, Actor, Command, Health, MoveKind, Observation, Overrides, Routing, SignalKind, State,
};
use crate::metrics::labels;
use crate::overrides::OverrideStore;
use crate::playbook::ToProbe;
use crate::playbook::{Loaded, Playbook, Target};
use crate::routing::RoutingStore;
use crate::slo::{self, PromClient, SloResult};

use crate::shared::*;
use commands::*;
use drift::*;
use expiry::*;
use read::*;
use recording::*;
use step::*;
use traced::handle_control;
use writer::*;

pub use crate::shared::{DEFAULT_WRITE_CONCURRENCY, WRITE_CONCURRENCY_RANGE};
pub use writer::{EXIT_WRITER_DIED, PERMIT_HOLD, verdict_word};

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
    /// The `traceparent` of the call behind `command` (tracing on): its decision joins it.
    command_trace: Option<String>,
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
    /// Residency and mesh policy in force for this playbook (inactive when unfenced).
    fence: crate::mesh::Fence,
    /// The fence's verdict on each target, from the latest mesh view (empty when unfenced).
    policy: Vec<Observation>,
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
    /// The approved break-glass this routing carries into the VirtualService annotations.
    break_glass: Option<String>,
    inputs: Value,
    next: State,
    /// The decision's span (`failoverd.decide`; disabled when tracing is off): the write,
    /// its audit records and events are its children.
    span: tracing::Span,
}

enum Job {
    Write(Box<WriteJob>),
    Audit(Box<Entry>),
    /// A record the chain must get even if the log refuses appends now (it is kept and
    /// written first once it takes them): what became of an intent.
    AuditOwed(Box<Entry>),
    /// A drill fault written or removed in its VirtualService's lane.
    Fault(Box<fault::FaultJob>),
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
            .chain(self.policy.iter().cloned())
            .collect()
    }

    /// Judges every target again on a new mesh view.
    fn refresh_fence(&mut self, snap: &crate::mesh::Snapshot, now: jiff::Timestamp) {
        self.policy = fence::policy_observations(&self.pb, &self.fence, snap, now);
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
    /// Residency and mesh policy from the daemon config.
    pub fence: crate::config::FenceConfig,
    /// The cluster's residency and policy facts (None: no playbook is fenced, or nothing to
    /// read them from; a fenced playbook's targets are then all refused).
    pub mesh: Option<crate::mesh::MeshView>,
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
    // A fault drill marks the playbook's HTTP probes of its primary with its header.
    if let Ok(mut m) = shared.drill_probes.primary.write() {
        m.clear();
        for (id, (spec, &(pi, si))) in specs.iter().zip(owners.iter()).enumerate() {
            let Some(l) = rt.playbooks.get(pi) else {
                continue;
            };
            let primary =
                l.playbook.spec.probes.get(si).map(|p| p.target.value) == Some(Target::Primary);
            if primary && matches!(spec.kind, ProbeKind::Http(_)) {
                m.entry(l.playbook.name().to_string()).or_default().push(id);
            }
        }
    }
    let probes = failover_probes::spawn_probes_with_headers(
        specs,
        client,
        res_tx,
        shutdown.clone(),
        shared.drill_probes.headers.clone(),
    );
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
            command_trace: None,
            open_intent: None,
            audit_blocked: false,
            unrecorded: false,
            reread: false,
            fence: fence::fence_of(&l.playbook, &rt.fence),
            policy: Vec::new(),
        })
        .collect();
    let mut mesh = rt.mesh.clone();
    if let Some(m) = &mesh {
        let snap = m.snapshot();
        for g in guarded.iter_mut() {
            g.refresh_fence(&snap, clock.now());
        }
    }
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
    let (kept_tx, mut kept_rx) = mpsc::channel::<KeptDone>(16);
    let mut ov_store = Book::new(rt.overrides, kept_tx);
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
    let (drift_tx, mut drift_rx) = mpsc::channel::<drift::Found>(64);
    let drift_task = drift::spawn(rt.store.clone(), shared.clone(), drift_tx, shutdown.clone());

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
    // Each probe's result counters, looked up once: a label set built and the family's
    // lock taken on every result were a visible share of the daemon's CPU at fleet size.
    // (The family never drops a series, so a kept handle stays the exported one.)
    let mut result_counters: Vec<[Option<prometheus_client::metrics::counter::Counter>; 3]> =
        vec![[None, None, None]; n_probes];
    let mut unseen = n_probes;
    if unseen == 0 {
        shared.ready.store(true, Ordering::Relaxed);
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_episode = false;
    let mut vantage_round = vantage::Round::default();
    let mut peer_verdicts = shared.vantage.subscribe();
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
                    adopt_chain_intents(&mut guarded, &log).await;
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
                    ov_store.refuse_deferred(503, "this replica lost leadership before the command applied; nothing was done for it (ask the new leader)");
                }
            }
            Some(found) = drift_rx.recv() => {
                handle_drift(found, &mut guarded, &mut ov_store, &log, &job_tx, &shared, &clock).await;
            }
            true = mesh_changed(&mut mesh) => {
                // A relabel, a PeerAuthentication or DestinationRule edit: every fenced
                // playbook is judged again and decided at once, not at its next probe.
                let snap = mesh.as_ref().map(crate::mesh::MeshView::snapshot);
                if let Some(snap) = snap {
                    for (i, g) in guarded.iter_mut().enumerate().filter(|(_, g)| g.pb.fenced) {
                        g.refresh_fence(&snap, clock.now());
                        step(i, g, &job_tx, &shared, &clock).await;
                    }
                }
            }
            Some(done) = kept_rx.recv() => {
                kept_done(done, &mut guarded, &mut ov_store, &log, &job_tx, &shared, &clock).await;
            }
            // While a change is being kept in the cluster, calls wait in the channel.
            Some(msg) = control.recv(), if !ov_store.keeping => {
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
                let (ri, result) = match &r.outcome { Outcome::Healthy => (0, "healthy"), Outcome::Unhealthy(_) => (1, "unhealthy"), Outcome::Unknown(_) => (2, "unknown") };
                if let Some(handles) = result_counters.get_mut(r.id) {
                    handles[ri].get_or_insert_with(|| shared.metrics.probe_results.get_or_create(&labels([("playbook", g.pb.name()), ("probe", &slot.name), ("result", result)])).clone()).inc();
                }
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
                vantage_round.tick(&guarded, &shared, &clock);
            }
            Ok(()) = peer_verdicts.changed() => {
                // A peer's verdict changed: what it now agrees to (or vetoes) is decided now,
                // not at each playbook's next probe result.
                for (i, g) in guarded.iter_mut().enumerate() {
                    step(i, g, &job_tx, &shared, &clock).await;
                }
            }
        }
    }
    info!("shutting down: stopping probes, draining the writer");
    drift_task.abort();
    probes.shutdown().await;
    if let Some(t) = slo_task {
        let _ = t.await;
    }
    // A change being kept in the cluster is finished (bounded by its budget): the cluster
    // may hold it already, so its caller hears how it ended rather than nothing.
    while ov_store.keeping {
        let Some(done) = kept_rx.recv().await else {
            break;
        };
        kept_done(
            done,
            &mut guarded,
            &mut ov_store,
            &log,
            &job_tx,
            &shared,
            &clock,
        )
        .await;
    }
    ov_store.refuse_deferred(
        503,
        "failoverd shut down before the command applied; nothing was done for it",
    );
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

/// Resolves true when the mesh view changed; never resolves without one (or once its
/// source has stopped: the last view stays in force).
async fn mesh_changed(mesh: &mut Option<crate::mesh::MeshView>) -> bool {
    if let Some(m) = mesh
        && m.changed().await
    {
        return true;
    }
    std::future::pending().await
}
