//! Vantage points: each replica is one (name = pod name, zone from config or the node), and
//! the replicas exchange their per-target verdicts so a failover needs the vantages to agree
//! (the rule itself is pure: `failoverd_core::engine::vantages`).
//!
//! The exchange: every replica serves its own verdicts at `GET /v1/vantage` (a fleet read,
//! authenticated like any API call) and polls the peers listed in `vantage.peers`, one
//! request in flight per peer. The poll is a long poll: `?wait=V` is answered as soon as the
//! verdicts differ from version `V`, or after one exchange interval (default 1 s) with the
//! same ones, so a change reaches the leader in one round trip and a quiet peer still reports
//! every interval. Each request is bounded by two intervals. The controller never waits for
//! a peer: it reads the latest report kept here (and decides again when one changes), and a
//! report older than three intervals is not live. Peers are a config list (the
//! StatefulSet's stable names); a replica's own entry is recognised by the name it answers
//! with and dropped. Nothing goes through the Kubernetes API.

mod config;
mod metrics;
mod poll;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::engine::{Health, Observation, SignalKind, Verdict};
use crate::playbook::Target;

pub use config::{DEFAULT_INTERVAL, DEFAULT_SUSPECT_AFTER, VantageConfig, VantageSettings};
pub use metrics::VantageMetrics;
pub use poll::{spawn, start};

/// Who this replica is as a vantage point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Identity {
    /// The pod name (`POD_NAME`), else the leader-election identity, else the host name.
    pub name: String,
    /// The zone (`vantage.zone`, else `NODE_ZONE`); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// One target's verdict as a vantage reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    /// `primary` or `failover[N]`.
    pub target: String,
    /// `healthy`, `suspect` (failing below its trigger), `unhealthy` or `unknown`.
    pub state: String,
    /// The verdict in words.
    pub reason: String,
}

/// One playbook's verdicts from one vantage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaybookView {
    /// Playbook name.
    pub name: String,
    /// Primary first, then the failover targets in order.
    pub targets: Vec<TargetView>,
}

/// `GET /v1/vantage`: this replica's verdicts, as the peers poll them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Who answers.
    pub vantage: Identity,
    /// When the verdicts were made (this replica's clock; shown, never compared).
    #[schema(value_type = String, format = DateTime)]
    pub evaluated_at: Timestamp,
    /// Changes whenever a verdict changes: pass it back as `?wait=` to hear of the next.
    #[serde(default)]
    pub version: u64,
    /// Per playbook.
    pub playbooks: Vec<PlaybookView>,
}

/// The verdicts of each target of one playbook, in the wire form.
pub fn views(name: &str, verdicts: &[(Target, Verdict)]) -> PlaybookView {
    PlaybookView {
        name: name.to_string(),
        targets: verdicts
            .iter()
            .map(|(t, v)| {
                let (state, reason) = match v {
                    Verdict::Healthy { since } => ("healthy", format!("healthy since {since}")),
                    Verdict::Suspect { reason } => ("suspect", reason.clone()),
                    Verdict::Unhealthy { reason } => ("unhealthy", reason.clone()),
                    Verdict::Unknown { reason } => ("unknown", reason.clone()),
                };
                TargetView {
                    target: t.to_string(),
                    state: state.into(),
                    reason,
                }
            })
            .collect(),
    }
}

/// A peer's word in the engine's terms: failing below its trigger is neither agreement nor
/// a healthy view (it may be seconds from agreeing).
/// Same targets in the same states (reasons and their running clocks aside).
fn same_states(a: &PlaybookView, b: &PlaybookView) -> bool {
    a.targets.len() == b.targets.len()
        && a.targets
            .iter()
            .zip(&b.targets)
            .all(|(x, y)| x.target == y.target && x.state == y.state)
}

fn health_of(v: &TargetView) -> Health {
    match v.state.as_str() {
        "healthy" => Health::Healthy,
        "unhealthy" => Health::Unhealthy(v.reason.clone()),
        "suspect" => Health::Unknown(format!("failing below its trigger: {}", v.reason)),
        _ => Health::Unknown(v.reason.clone()),
    }
}

#[derive(Debug, Default)]
struct Peer {
    report: Option<Report>,
    received: Option<Instant>,
    error: Option<String>,
    /// This replica's own entry in the shared list: never polled again.
    is_self: bool,
}

/// A peer as `GET /v1/playbooks/{name}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    /// The URL polled.
    pub url: String,
    /// The vantage that answered last (absent until one did).
    pub vantage: Option<Identity>,
    /// Whether its last report is recent enough to count (within three exchange intervals).
    pub live: bool,
    /// Seconds since its last report arrived.
    pub last_report_seconds: Option<f64>,
    /// The last exchange's error, if it failed.
    pub error: Option<String>,
}

/// What the vantages show beside a playbook.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VantageStatus {
    /// This replica.
    pub here: Identity,
    /// The other replicas polled (empty without `vantage.peers`).
    pub peers: Vec<PeerSummary>,
}

/// This replica's identity, its own verdicts for the peers, and the peers' latest reports.
#[derive(Debug)]
pub struct Vantages {
    /// Who this replica is.
    pub identity: Identity,
    /// The exchange interval: a peer's report is live for three of them.
    pub interval: Duration,
    /// Playbooks a vantage must alone see failing before `suspect-observer` is raised.
    pub suspect_after: usize,
    peers: Mutex<BTreeMap<String, Peer>>,
    /// Bumped when a peer's verdicts change (not its timestamps): the controller decides again.
    version: AtomicU64,
    /// The same, for the controller to wait on.
    changed: watch::Sender<u64>,
    /// Bumped when this replica's own verdicts change: answers the peers' long polls.
    own_version: watch::Sender<u64>,
    /// When the exchange began: a peer never heard from counts as silent since then.
    started: Instant,
    /// This replica's verdicts per playbook index, and when the controller made them.
    own: Mutex<(Option<Instant>, Vec<Option<PlaybookView>>)>,
    /// Exchange and fallback counters.
    pub metrics: VantageMetrics,
}

impl Default for Vantages {
    fn default() -> Self {
        Self::new(&VantageSettings::default(), VantageMetrics::default())
    }
}

impl Vantages {
    /// The vantage set from its settings (peers not polled until [`spawn`]).
    pub fn new(settings: &VantageSettings, metrics: VantageMetrics) -> Self {
        metrics.info(&settings.identity);
        Self {
            identity: settings.identity.clone(),
            interval: settings.interval,
            suspect_after: settings.suspect_after,
            peers: Mutex::new(
                settings
                    .peers
                    .iter()
                    .map(|u| (u.clone(), Peer::default()))
                    .collect(),
            ),
            version: AtomicU64::new(0),
            started: Instant::now(),
            changed: watch::channel(0).0,
            own_version: watch::channel(0).0,
            own: Mutex::new((None, Vec::new())),
            metrics,
        }
    }

    /// How long a peer's report counts: three exchange intervals.
    pub fn live_for(&self) -> Duration {
        self.interval.saturating_mul(3)
    }

    /// True when peers are configured: without them nothing is published or compared.
    pub fn exchanging(&self) -> bool {
        self.peers.lock().is_ok_and(|p| !p.is_empty())
    }

    /// Changes whenever a peer's verdicts change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Resolves when a peer's verdicts changed (for the controller's `select!`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keeps this replica's verdicts on playbook `idx`, made now; a change answers the
    /// peers' waiting polls at once.
    pub fn publish(&self, idx: usize, view: PlaybookView) {
        let changed = match self.own.lock() {
            Ok(mut own) => {
                if own.1.len() <= idx {
                    own.1.resize(idx + 1, None);
                }
                let changed = own.1[idx]
                    .as_ref()
                    .is_none_or(|old| !same_states(old, &view));
                own.1[idx] = Some(view);
                own.0 = Some(Instant::now());
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.own_version.send_modify(|v| *v += 1);
        }
    }

    /// This replica's report once its verdicts differ from version `seen`, or after one
    /// exchange interval with the same ones (the long poll of `GET /v1/vantage?wait=`).
    pub async fn report_after(&self, seen: u64) -> Report {
        let mut rx = self.own_version.subscribe();
        let _ = tokio::time::timeout(self.interval, rx.wait_for(|v| *v != seen)).await;
        self.report()
    }

    /// This replica's report. Verdicts the controller has not refreshed for three exchange
    /// intervals (a stalled loop) are reported unknown, never as the last healthy word.
    pub fn report(&self) -> Report {
        let (made, mut playbooks) = self
            .own
            .lock()
            .map(|o| (o.0, o.1.iter().flatten().cloned().collect::<Vec<_>>()))
            .unwrap_or_default();
        let stale = made.is_none_or(|m| m.elapsed() > self.live_for());
        if stale {
            let why = match made {
                Some(m) => format!(
                    "this replica has not evaluated for {}",
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(m.elapsed().as_millis()).unwrap_or(u64::MAX)
                    ))
                ),
                None => "this replica has not evaluated yet".into(),
            };
            for p in &mut playbooks {
                for t in &mut p.targets {
                    t.state = "unknown".into();
                    t.reason = why.clone();
                }
            }
        }
        Report {
            vantage: self.identity.clone(),
            evaluated_at: Timestamp::now(),
            version: *self.own_version.borrow(),
            playbooks,
        }
    }

    /// The peers' latest verdicts on `playbook` as engine observations (`at` = when each
    /// report arrived, converted by `ts`; `max_age` = three exchange intervals).
    pub fn observations(
        &self,
        playbook: &str,
        ts: impl Fn(Instant) -> Timestamp,
    ) -> Vec<Observation> {
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (url, p) in peers.iter().filter(|(_, p)| !p.is_self) {
            let (Some(r), Some(at)) = (&p.report, p.received) else {
                // A peer not heard from yet is a vantage with no view, silent since the
                // exchange began: for three intervals it holds a failover (missing data is
                // not agreement), then this replica decides alone, as for a dead peer.
                out.push(Observation {
                    signal: url.clone(),
                    kind: SignalKind::Vantage,
                    target: Target::Primary,
                    health: Health::Unknown(
                        p.error.clone().unwrap_or_else(|| "no report yet".into()),
                    ),
                    streak: 1,
                    streak_since: ts(self.started),
                    at: ts(self.started),
                    max_age: self.live_for(),
                    detail: String::new(),
                });
                continue;
            };
            let at = ts(at);
            let detail = r
                .vantage
                .zone
                .as_ref()
                .map(|z| format!("zone {z}"))
                .unwrap_or_default();
            let Some(pv) = r.playbooks.iter().find(|v| v.name == playbook) else {
                // A peer without this playbook has no view of it: reported unknown, so it
                // never counts as agreeing.
                out.push(Observation {
                    signal: r.vantage.name.clone(),
                    kind: SignalKind::Vantage,
                    target: Target::Primary,
                    health: Health::Unknown("the playbook is not loaded there".into()),
                    streak: 1,
                    streak_since: at,
                    at,
                    max_age: self.live_for(),
                    detail,
                });
                continue;
            };
            for t in &pv.targets {
                let Ok(target) = t.target.parse::<Target>() else {
                    continue;
                };
                out.push(Observation {
                    signal: r.vantage.name.clone(),
                    kind: SignalKind::Vantage,
                    target,
                    health: health_of(t),
                    streak: 1,
                    streak_since: at,
                    at,
                    max_age: self.live_for(),
                    detail: detail.clone(),
                });
            }
        }
        out
    }

    /// The peers as the API shows them.
    pub fn status(&self) -> VantageStatus {
        let peers = self
            .peers
            .lock()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|(_, p)| !p.is_self)
                    .map(|(url, p)| PeerSummary {
                        url: url.clone(),
                        vantage: p.report.as_ref().map(|r| r.vantage.clone()),
                        live: p.received.is_some_and(|r| r.elapsed() <= self.live_for()),
                        last_report_seconds: p.received.map(|r| r.elapsed().as_secs_f64()),
                        error: p.error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        VantageStatus {
            here: self.identity.clone(),
            peers,
        }
    }

    /// Keeps a peer's report; bumps the version when its verdicts changed.
    fn accept(&self, url: &str, report: Report, at: Instant) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        let p = peers.entry(url.to_string()).or_default();
        let changed = p
            .report
            .as_ref()
            .is_none_or(|old| old.playbooks != report.playbooks || old.vantage != report.vantage)
            || p.received
                .is_none_or(|r| at.duration_since(r) > self.live_for());
        p.report = Some(report);
        p.received = Some(at);
        p.error = None;
        if changed {
            let v = self.version.fetch_add(1, Ordering::AcqRel) + 1;
            self.changed.send_replace(v);
        }
    }

    fn failed(&self, url: &str, error: String) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.entry(url.to_string()).or_default().error = Some(error);
        }
    }

    fn mark_self(&self, url: &str) {
        if let Ok(mut peers) = self.peers.lock() {
            let p = peers.entry(url.to_string()).or_default();
            p.is_self = true;
            p.report = None;
            p.received = None;
        }
    }
}

#[cfg(test)]
mod tests;
