//! The controller's side of the vantage exchange: the peers' verdicts join each decision's
//! observations, this replica's own verdicts are published for the peers, a change in a
//! peer's verdicts is decided at once, and `suspect-observer` is raised once per episode.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tracing::warn;

use crate::engine::{self, Health, Observation, Verdict};
use crate::notify::EventKind;
use crate::playbook::{Playbook, Target};
use crate::shared::{Clock, Shared};

use super::Guarded;

/// Adds the peers' latest verdicts on this playbook to its observations.
pub(super) fn with_peers(
    obs: &mut Vec<Observation>,
    pb: &Playbook,
    shared: &Shared,
    clock: &Clock,
) {
    obs.extend(shared.vantage.observations(pb.name(), |i| clock.ts(i)));
}

/// This replica's verdict on each target (primary first), from its own signals only.
fn verdicts(pb: &Playbook, obs: &[Observation], now: jiff::Timestamp) -> Vec<(Target, Verdict)> {
    std::iter::once(Target::Primary)
        .chain((0..pb.spec.failover.value.len()).map(Target::Failover))
        .map(|t| (t, engine::verdict(pb, obs, t, now)))
        .collect()
}

/// Publishes this replica's verdicts on playbook `idx` for the peers.
pub(super) fn publish(
    idx: usize,
    pb: &Playbook,
    obs: &[Observation],
    now: jiff::Timestamp,
    shared: &Shared,
) {
    if !shared.vantage.exchanging() {
        return;
    }
    shared.vantage.publish(
        idx,
        crate::vantage::views(pb.name(), &verdicts(pb, obs, now)),
    );
}

/// Counts and logs a failover decided on this replica's view alone (leader only: a standby's
/// decision moves nothing).
pub(super) fn note_fallback(pb: &Playbook, reason: Option<&'static str>, shared: &Shared) {
    if let Some(reason) = reason
        && shared.leader.is_leader()
    {
        shared.vantage.metrics.fallback(reason);
        warn!(playbook = %pb.name(), reason, "failover decided on this vantage's view alone: the other vantages are not live (see vantage.peers)");
    }
}

/// The controller's vantage bookkeeping between ticks.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// When the own verdicts and the lone-observer check last ran.
    last: Option<Instant>,
    /// Since when each vantage has alone seen enough primaries failing.
    lone_since: BTreeMap<String, Instant>,
    /// Vantages whose episode was raised (cleared when it ends).
    raised: BTreeSet<String>,
}

impl Round {
    /// Runs on the controller's tick, once per exchange interval: refreshes this replica's
    /// own verdicts (so a quiet playbook's stale signals are reported unknown) and looks for
    /// a lone observer.
    pub(super) fn tick(&mut self, guarded: &[Guarded], shared: &Shared, clock: &Clock) {
        let interval = shared.vantage.interval;
        if !shared.vantage.exchanging() || self.last.is_some_and(|l| l.elapsed() < interval) {
            return;
        }
        self.last = Some(Instant::now());
        let now = clock.now();
        let mut views: Vec<Vec<(String, Health)>> = Vec::with_capacity(guarded.len());
        let mut failing_here: Vec<usize> = Vec::new();
        for (i, g) in guarded.iter().enumerate() {
            let mut obs = g.observations(clock);
            publish(i, &g.pb, &obs, now, shared);
            let here = match engine::verdict(&g.pb, &obs, Target::Primary, now) {
                Verdict::Healthy { .. } => Health::Healthy,
                Verdict::Unhealthy { reason } => Health::Unhealthy(reason),
                Verdict::Suspect { reason } | Verdict::Unknown { reason } => {
                    Health::Unknown(reason)
                }
            };
            if matches!(here, Health::Unhealthy(_)) {
                failing_here.push(i);
            }
            with_peers(&mut obs, &g.pb, shared, clock);
            let mut pv = vec![(shared.vantage.identity.name.clone(), here)];
            pv.extend(
                engine::vantages::peer_views(&obs, Target::Primary)
                    .into_iter()
                    .filter(|o| engine::vantages::is_live(o, now))
                    .map(|o| (o.signal.clone(), o.health.clone())),
            );
            views.push(pv);
        }
        let lone = engine::vantages::lone_observers(&views, shared.vantage.suspect_after);
        self.raise(&lone, &views, guarded, shared, interval);
    }

    /// Raises `suspect-observer` for a vantage that has been a lone observer for three
    /// exchange intervals (replicas cross a probe threshold up to an interval apart; a real
    /// outage reaches every vantage within that), once per episode.
    fn raise(
        &mut self,
        lone: &[(String, usize)],
        views: &[Vec<(String, Health)>],
        guarded: &[Guarded],
        shared: &Shared,
        interval: Duration,
    ) {
        let names: BTreeSet<&str> = lone.iter().map(|(n, _)| n.as_str()).collect();
        self.lone_since.retain(|n, _| names.contains(n.as_str()));
        self.raised.retain(|n| names.contains(n.as_str()));
        for (name, count) in lone {
            let since = *self
                .lone_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < interval.saturating_mul(3) || self.raised.contains(name) {
                continue;
            }
            // Only the leader pages on-call; every replica keeps the episode, so a new leader
            // does not raise one that is already known.
            self.raised.insert(name.clone());
            if !shared.leader.is_leader() {
                continue;
            }
            let playbooks: Vec<(usize, &str)> = views
                .iter()
                .enumerate()
                .filter(|(_, v)| {
                    v.iter()
                        .filter(|(_, h)| matches!(h, Health::Unhealthy(_)))
                        .count()
                        == 1
                        && v.iter()
                            .any(|(n, h)| n == name && matches!(h, Health::Unhealthy(_)))
                })
                .filter_map(|(i, _)| guarded.get(i).map(|g| (i, g.pb.name())))
                .collect();
            let here = *name == shared.vantage.identity.name;
            let reason = format!(
                "vantage {name}{} alone sees {count} primaries failing that every other live vantage sees healthy ({}): suspect the observer (its node's routes, conntrack or DNS), not the services; failovers on those need the vantages to agree",
                if here { " (this replica)" } else { "" },
                playbooks
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            warn!(vantage = %name, playbooks = count, "{reason}");
            shared.vantage.metrics.suspect(name);
            if let Some((i, _)) = playbooks.first() {
                shared.event(
                    *i,
                    EventKind::SuspectObserver,
                    None,
                    None,
                    &reason,
                    json!({ "vantage": name, "playbooks": playbooks.iter().map(|(_, n)| *n).collect::<Vec<_>>() }),
                    "engine",
                );
            }
        }
    }
}
