//! What every room shares, below all of them: the clock the controller runs on, the status
//! table the API and the drills read, and the operator commands they send the controller.
//! Nothing here decides or writes; the control loop (`control/`) does.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::audit::AuditHealth;
use crate::engine::{Actor, MoveKind, Observation, Phase, Routing};
use crate::metrics::{Labels, Metrics};
use crate::notify::{Event, EventKind, Notifier};
use crate::overrides::OverrideRecord;
use crate::playbook::{Loaded, Playbook};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// When the write completed.
    #[schema(value_type = String, format = DateTime)]
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookStatus {
    /// Playbook name.
    pub name: String,
    /// Life-cycle phase (null until the store has been read).
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
    #[schema(value_type = Vec<Transition>)]
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
    pub reload: Arc<ReloadStatus>,
    /// Bumped whenever something `GET /v1/playbooks` shows changes (phase, routing,
    /// explanation, error, overrides), so the API can serve a cached body in between.
    pub list_version: std::sync::atomic::AtomicU64,
    /// The fleet blast-radius rule's bookkeeping (`maxConcurrentFailovers`; off by default).
    pub fleet: Mutex<crate::engine::fleet::FleetGuard>,
    /// Whether this replica may write routing (always, without leader election).
    pub leader: Arc<crate::leader::Leadership>,
    /// Where the leader keeps operator overrides for the next one (leader election on):
    /// written before an override call is acknowledged. None: only the state file.
    pub kept_overrides: Option<crate::overrides::kept::ClusterState>,
    /// Whether the audit log takes appends (for `/readyz` and `failoverd_audit_available`);
    /// [`run`] attaches it to the log.
    pub audit_health: Arc<AuditHealth>,
    /// Routing writes in flight at once (`writeConcurrency`, validated; set before the
    /// controller runs).
    pub write_concurrency: usize,
    /// The fault-drill header on a playbook's probes of its primary (set by the controller
    /// when it starts the probes, marked and cleared by the drill runner).
    pub drill_probes: DrillProbes,
    /// This replica as a vantage point, its own verdicts and the peers' latest reports.
    pub vantage: Arc<crate::vantage::Vantages>,
}

/// Which probes a fault drill marks with its header: each playbook's HTTP probes of its
/// primary (the failover targets' probes stay truthful), and the headers they send.
#[derive(Debug, Default)]
pub struct DrillProbes {
    /// The probe scheduler's run-time headers.
    pub headers: failover_probes::RuntimeHeaders,
    /// Probe ids of each playbook's HTTP probes of the primary.
    pub primary: RwLock<std::collections::HashMap<String, Vec<usize>>>,
}

impl DrillProbes {
    /// Makes `playbook`'s probes of the primary send `x-failoverd-drill: <run>`; returns how
    /// many probes carry it (0: the playbook has no HTTP probe of its primary).
    pub fn mark(&self, playbook: &str, run: &str) -> usize {
        let ids = self.ids(playbook);
        for id in &ids {
            self.headers.set(
                *id,
                vec![(
                    failoverd_core::drill::inject::DRILL_HEADER.to_string(),
                    run.to_string(),
                )],
            );
        }
        ids.len()
    }

    /// Stops `playbook`'s probes sending the drill header.
    pub fn unmark(&self, playbook: &str) {
        for id in self.ids(playbook) {
            self.headers.clear(id);
        }
    }

    fn ids(&self, playbook: &str) -> Vec<usize> {
        self.primary
            .read()
            .ok()
            .and_then(|m| m.get(playbook).cloned())
            .unwrap_or_default()
    }
}

impl Shared {
    /// Status for a set of playbooks, not ready yet.
    pub fn new(playbooks: &[Loaded]) -> Self {
        let metrics = Metrics::new();
        let reload = ReloadStatus::new(&metrics);
        let audit_health = Arc::new(
            AuditHealth::with_gauge(metrics.audit_available.clone())
                .with_ship_errors(metrics.audit_ship_errors.clone()),
        );
        let vantage = Arc::new(crate::vantage::Vantages::new(
            &crate::vantage::VantageSettings::default(),
            metrics.vantage.clone(),
        ));
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
            kept_overrides: None,
            write_concurrency: DEFAULT_WRITE_CONCURRENCY,
            drill_probes: DrillProbes::default(),
            vantage,
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
            // The span current where the event is raised (a decision, a write) is its cause.
            traceparent: crate::trace::traceparent(&tracing::Span::current()),
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
        /// Set when two admins approved a break-glass: the hold may pass the fence.
        break_glass: Option<crate::overrides::BreakGlassMark>,
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
    /// A fault drill's fault written into, or every drill fault removed from, the
    /// playbook's VirtualService, in its writer lane (audited, read back).
    DrillFault {
        /// The edit.
        edit: FaultRequest,
    },
}

/// A drill fault edit carried by [`ControlKind::DrillFault`]; equal when it reads the same
/// (the fault holds floating-point percentages, so no derived `Eq`).
#[derive(Clone, Debug)]
pub struct FaultRequest(pub crate::routing::fault::FaultEdit);

impl PartialEq for FaultRequest {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

impl Eq for FaultRequest {}

impl ControlKind {
    pub(crate) fn action(&self) -> &'static str {
        match self {
            ControlKind::Failover { .. } => "override-failover",
            ControlKind::Failback { .. } => "override-failback",
            ControlKind::Freeze { .. } => "override-freeze",
            ControlKind::Resume => "override-resume",
            ControlKind::DeleteOverride { .. } => "override-delete",
            ControlKind::DrillFault { edit } => edit.0.action(),
        }
    }
}

/// A successful operator call.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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

pub(crate) type ControlResult = Result<ControlReply, ControlError>;

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
    /// The W3C `traceparent` of the call (tracing on): the decision it causes joins its trace.
    pub traceparent: Option<String>,
}

pub(crate) fn refuse(status: u16, error: impl Into<String>) -> ControlError {
    ControlError {
        status,
        error: error.into(),
    }
}

/// Environment variable carrying the count of applied reloads across the re-exec, so the
/// counter stays monotonic for the process's whole life.
pub(crate) const APPLIED_ENV: &str = "FAILOVERD_RELOADS_APPLIED";

/// Reload outcome visible to `/readyz` and metrics.
#[derive(Debug)]
pub struct ReloadStatus {
    /// The problems of the last refused set (one per line), None when the last check passed.
    pub last_error: RwLock<Option<String>>,
    /// `failoverd_playbook_reload_total{result}`: applied, invalid.
    pub total: Family<Labels, Counter>,
    /// `failoverd_playbook_reload_failed`: 1 while the files on disk are an invalid set.
    pub failed: Gauge,
}

impl ReloadStatus {
    /// Uses the registered metrics and seeds the applied count carried over a re-exec.
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Self> {
        let s = Arc::new(Self {
            last_error: RwLock::new(None),
            total: metrics.playbook_reload.clone(),
            failed: metrics.playbook_reload_failed.clone(),
        });
        let applied: u64 = std::env::var(APPLIED_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        s.total
            .get_or_create(&result_label("applied"))
            .inc_by(applied);
        // Present from the start, so a dashboard sees 0 rather than no series.
        let _ = s.total.get_or_create(&result_label("invalid"));
        s
    }

    /// The refused set's problems, if the last check refused one.
    pub fn error(&self) -> Option<String> {
        self.last_error.read().ok().and_then(|e| e.clone())
    }
}

pub(crate) fn result_label(result: &str) -> Labels {
    crate::metrics::labels([("result", result)])
}

/// How many routing writes may be in flight at once by default (`writeConcurrency`), each
/// to a different VirtualService: enough that a storm of failovers is written in parallel
/// (the kubernetes store's token bucket still paces the requests), few enough that a slow
/// API server is not flooded.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 16;

/// The values `writeConcurrency` may take (checked by the validation gate).
pub const WRITE_CONCURRENCY_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
