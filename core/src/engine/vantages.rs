//! Agreement across vantage points: every replica probes every target, and the other
//! replicas' verdicts arrive as `SignalKind::Vantage` observations (one per peer and target,
//! `at` = when the report arrived here, `max_age` = three exchange intervals).
//!
//! The rules, all pure (time passed in):
//! - Agreement only ever holds a failover back, never starts one: the decision begins with
//!   this replica seeing the primary failing past its trigger.
//! - A peer is live while its latest report is at most `max_age` old. A live peer whose view
//!   is unknown (no data, playbook missing there) counts as live and not agreeing: missing
//!   data is never agreement.
//! - Required: `trigger.vantages.min` (default: every live vantage), capped at the number of
//!   live vantages, so a replica that died or lags cannot block a failover forever; when no
//!   peer is live at all, this replica's view decides. Both fallbacks are reported with a
//!   bounded reason.
//! - A failover target that any live vantage sees unhealthy is not a safe target: clients
//!   run on every node, and a destination one node cannot reach is broken for the traffic
//!   from that node.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::playbook::{Playbook, Target};

use super::types::{Health, Observation, SignalKind};
use super::verdicts::{elapsed, verdict};

/// Fallback reason: no other vantage has reported within three exchange intervals.
pub const FALLBACK_NO_LIVE_PEER: &str = "no-live-peer";
/// Fallback reason: fewer vantages are live than `trigger.vantages.min`, and all of them agree.
pub const FALLBACK_FEWER_THAN_MIN: &str = "fewer-live-than-min";

/// What the vantages say about a primary this replica sees failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// No other vantage is known (one replica) or `min: 1`: this replica's view decides.
    Alone,
    /// Enough live vantages see the primary failing.
    Agreed,
    /// Decided on fewer vantages than asked for; the bounded reason.
    Fallback(&'static str),
    /// Not enough live vantages see it failing: hold. Who sees what.
    Disagree(String),
}

/// The newest observation of each peer on `target`, by peer name.
pub fn peer_views(obs: &[Observation], target: Target) -> Vec<&Observation> {
    let mut newest: BTreeMap<&str, &Observation> = BTreeMap::new();
    for o in obs
        .iter()
        .filter(|o| o.kind == SignalKind::Vantage && o.target == target)
    {
        let e = newest.entry(o.signal.as_str()).or_insert(o);
        if o.at > e.at {
            *e = o;
        }
    }
    newest.into_values().collect()
}

/// True while a peer's report is fresh enough to count.
pub fn is_live(o: &Observation, now: Timestamp) -> bool {
    elapsed(now, o.at) <= o.max_age
}

/// One peer's view in words: `b [zone eu-1] healthy`.
fn describe_peer(o: &Observation, now: Timestamp) -> String {
    let detail = if o.detail.is_empty() {
        String::new()
    } else {
        format!(" [{}]", o.detail)
    };
    if !is_live(o, now) {
        return format!(
            "{}{detail} not live (last report {} ago)",
            o.signal,
            humantime::format_duration(super::verdicts::round_ms(elapsed(now, o.at)))
        );
    }
    match &o.health {
        Health::Healthy => format!("{}{detail} sees it healthy", o.signal),
        Health::Unhealthy(r) => format!("{}{detail} sees it unhealthy ({r})", o.signal),
        Health::Unknown(r) => format!("{}{detail} cannot tell ({r})", o.signal),
    }
}

/// Whether the vantages agree that the primary is failing, given that this replica sees it
/// failing past its trigger (`here` says why).
pub fn agreement(pb: &Playbook, obs: &[Observation], here: &str, now: Timestamp) -> Agreement {
    let min = pb
        .spec
        .trigger
        .vantages
        .as_ref()
        .map(|v| usize::try_from(v.min.value.max(1)).unwrap_or(usize::MAX));
    let peers = peer_views(obs, Target::Primary);
    if peers.is_empty() || min == Some(1) {
        return Agreement::Alone;
    }
    let live: Vec<&Observation> = peers.iter().copied().filter(|o| is_live(o, now)).collect();
    if live.is_empty() {
        return Agreement::Fallback(FALLBACK_NO_LIVE_PEER);
    }
    let total = 1 + live.len();
    let agree = 1 + live
        .iter()
        .filter(|o| matches!(o.health, Health::Unhealthy(_)))
        .count();
    let required = min.map_or(total, |m| m.min(total));
    if agree >= required {
        return if min.is_some_and(|m| m > total) {
            Agreement::Fallback(FALLBACK_FEWER_THAN_MIN)
        } else {
            Agreement::Agreed
        };
    }
    let views: Vec<String> = peers.iter().map(|o| describe_peer(o, now)).collect();
    Agreement::Disagree(format!(
        "vantages disagree: here it is unhealthy ({here}); {}; {agree} of {total} live vantages see it failing, {required} must (trigger.vantages)",
        views.join("; ")
    ))
}

/// The live peers that see `target` unhealthy, in words; `None` when none does.
pub fn veto(obs: &[Observation], target: Target, now: Timestamp) -> Option<String> {
    let seen: Vec<String> = peer_views(obs, target)
        .into_iter()
        .filter(|o| is_live(o, now) && matches!(o.health, Health::Unhealthy(_)))
        .map(|o| describe_peer(o, now))
        .collect();
    (!seen.is_empty()).then(|| seen.join("; "))
}

/// The first failover target, in playbook order, that this replica knows healthy and no live
/// vantage sees unhealthy (skipping `except`).
pub fn first_safe_target(
    pb: &Playbook,
    obs: &[Observation],
    now: Timestamp,
    except: Option<usize>,
) -> Option<usize> {
    (0..pb.spec.failover.value.len())
        .filter(|i| Some(*i) != except)
        .find(|i| {
            verdict(pb, obs, Target::Failover(*i), now).is_healthy()
                && veto(obs, Target::Failover(*i), now).is_none()
        })
}

/// Failover targets this replica knows healthy that a live vantage vetoes, in words (for a
/// `stuck` explanation).
pub fn vetoed_targets(pb: &Playbook, obs: &[Observation], now: Timestamp) -> Vec<String> {
    (0..pb.spec.failover.value.len())
        .filter_map(|i| {
            let t = Target::Failover(i);
            verdict(pb, obs, t, now)
                .is_healthy()
                .then(|| veto(obs, t, now).map(|v| format!("{t}: {v}")))
                .flatten()
        })
        .collect()
}

/// The vantages that alone see many primaries failing. `playbooks` holds, per playbook, each
/// live vantage's view of its primary (`Unhealthy` failing, `Healthy` working, `Unknown`
/// neither). A vantage is a lone observer of a playbook when it sees the primary failing and
/// at least one other vantage has a view and every other one sees it healthy. Returns each
/// vantage that is the lone observer of at least `at_least` playbooks, with the count.
pub fn lone_observers(
    playbooks: &[Vec<(String, Health)>],
    at_least: usize,
) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for views in playbooks {
        let failing: Vec<&str> = views
            .iter()
            .filter(|(_, h)| matches!(h, Health::Unhealthy(_)))
            .map(|(n, _)| n.as_str())
            .collect();
        let healthy = views
            .iter()
            .filter(|(_, h)| matches!(h, Health::Healthy))
            .count();
        if let [alone] = failing.as_slice()
            && healthy >= 1
            && healthy + 1 == views.len()
        {
            *counts.entry(alone).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, c)| *c >= at_least.max(1))
        .map(|(n, c)| (n.to_string(), c))
        .collect()
}
