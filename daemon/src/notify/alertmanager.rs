//! Alertmanager: `POST <url>/api/v2/alerts` to every listed Alertmanager. A manager task
//! turns events and condition changes into alerts (condition alerts fire while the
//! condition lasts and are re-sent every `resendInterval`); one sender task per
//! Alertmanager delivers them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{error, warn};

use super::config::AmResolved;
use super::event::{Condition, Event, EventKind};
use super::queue::{NotifyMetrics, Pending, Queue, SinkStats, jittered};
use super::template::{compact_signals, playbook_link, render};

pub(super) enum AmMsg {
    Event(Arc<Event>),
    Condition {
        playbook: String,
        service: String,
        namespace: String,
        condition: Condition,
        at: Timestamp,
    },
}

/// Alerts sent in one POST, each with its `event` metric label.
type Batch = Arc<Vec<(String, Value)>>;

/// One Alertmanager endpoint and its queue of alert batches.
pub(super) struct AmTarget {
    pub(super) url: reqwest::Url,
    pub(super) sink: String,
    pub(super) queue: Arc<Queue<Batch>>,
    pub(super) stats: Arc<SinkStats>,
}

/// A condition alert that is firing (or was just resolved and is re-sent a few times).
#[derive(Clone)]
struct CondAlert {
    since: Timestamp,
    ended: Option<Timestamp>,
    /// Re-sends left for a resolved alert (an Alertmanager that missed the first learns it).
    resends_left: u8,
    detail: Option<Arc<Event>>,
}

#[derive(Default)]
struct PbAlerts {
    service: String,
    namespace: String,
    failed_over: Option<CondAlert>,
    stuck: Option<CondAlert>,
}

pub(super) struct AmState {
    cfg: AmResolved,
    link_base: String,
    playbooks: BTreeMap<String, PbAlerts>,
}

fn ts_plus(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

impl AmState {
    /// A manager state with no alert firing yet.
    pub(super) fn new(cfg: AmResolved, link_base: String) -> Self {
        Self {
            cfg,
            link_base,
            playbooks: BTreeMap::new(),
        }
    }

    fn link(&self, playbook: &str) -> String {
        playbook_link(&self.link_base, playbook)
    }

    fn runbook(&self, playbook: &str) -> String {
        match &self.cfg.runbook {
            Some(r) => r.replace("{playbook}", playbook),
            None => self.link(playbook),
        }
    }

    fn condition_alert(
        &self,
        playbook: &str,
        pb: &PbAlerts,
        stuck: bool,
        a: &CondAlert,
        now: Timestamp,
    ) -> (String, Value) {
        let (alertname, severity) = if stuck {
            ("FailoverdStuck", "critical")
        } else {
            ("FailoverdFailedOver", "warning")
        };
        let link = self.link(playbook);
        let summary = match (stuck, &a.detail) {
            (false, Some(e)) => format!(
                "{playbook}: traffic failed over to {} (from {})",
                e.to.as_deref().unwrap_or("a failover target"),
                e.from.as_deref().unwrap_or("-")
            ),
            (false, None) => format!("{playbook}: traffic is off the original route"),
            (true, Some(e)) => format!(
                "{playbook}: STUCK on {}: no healthy destination",
                e.from.as_deref().unwrap_or("its current route")
            ),
            (true, None) => format!("{playbook}: STUCK: no healthy destination"),
        };
        let mut description = match &a.detail {
            Some(e) => format!(
                "{} → {}. Why: {}. By {}. Signals: {}. Since {}.",
                e.from.as_deref().unwrap_or("-"),
                e.to.as_deref().unwrap_or("-"),
                e.reason,
                e.actor,
                compact_signals(&e.signals),
                a.since
            ),
            None => format!("Since {}.", a.since),
        };
        if !stuck {
            description.push_str(
                " Fires while traffic is off the original route; resolves when failback completes.",
            );
        }
        description.push_str(&format!(" Status: {link}"));
        let ends = a
            .ended
            .unwrap_or_else(|| ts_plus(now, self.cfg.resend.saturating_mul(4)));
        (
            "condition".to_string(),
            json!({
                "labels": {
                    "alertname": alertname,
                    "playbook": playbook,
                    "severity": severity,
                    "service": pb.service,
                    "namespace": pb.namespace,
                },
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "runbook_url": self.runbook(playbook),
                },
                "startsAt": a.since,
                "endsAt": ends,
                "generatorURL": link,
            }),
        )
    }

    fn event_alert(&self, e: &Event) -> (String, Value) {
        let link = self.link(&e.playbook);
        let mut alert = json!({
                "labels": {
                    "alertname": e.kind.alertname(),
                    "playbook": e.playbook,
                    "severity": e.kind.severity(),
                    "service": e.service,
                    "namespace": e.namespace,
                },
                "annotations": {
                    "summary": render(e.kind.default_template(), e, &link),
                    "description": format!(
                        "{} → {}. Why: {}. By {}. Signals: {}. Status: {link}",
                        e.from.as_deref().unwrap_or("-"),
                        e.to.as_deref().unwrap_or("-"),
                        e.reason,
                        e.actor,
                        compact_signals(&e.signals),
                    ),
                    "runbook_url": self.runbook(&e.playbook),
                },
                "startsAt": e.time,
                "endsAt": ts_plus(e.time, self.cfg.event_ttl),
                "generatorURL": link,
        });
        // The trace of the move (tracing on), for the incident tool to open.
        if let Some(tp) = &e.traceparent {
            alert["annotations"]["trace_id"] = json!(crate::trace::trace_id_of(tp));
        }
        (e.kind.as_str().to_string(), alert)
    }

    /// Applies a message; returns the alerts to send now.
    fn apply(&mut self, msg: AmMsg, now: Timestamp) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        match msg {
            AmMsg::Event(e) => {
                if self.cfg.events & e.kind.bit() != 0 {
                    out.push(self.event_alert(&e));
                }
                let stuck = match e.kind {
                    EventKind::Failover => false,
                    EventKind::Stuck => true,
                    _ => return out,
                };
                // A move or a stuck verdict raises its condition at once (the runtime's
                // next condition() call confirms it); the event's details annotate it.
                let pb = self.playbooks.entry(e.playbook.clone()).or_default();
                pb.service.clone_from(&e.service);
                pb.namespace.clone_from(&e.namespace);
                let slot = if stuck {
                    &mut pb.stuck
                } else {
                    &mut pb.failed_over
                };
                match slot {
                    Some(a) if a.ended.is_none() => a.detail = Some(e.clone()),
                    _ => {
                        *slot = Some(CondAlert {
                            since: e.time,
                            ended: None,
                            resends_left: 0,
                            detail: Some(e.clone()),
                        });
                    }
                }
                out.extend(self.alerts_of(&e.playbook, now, Some(stuck)));
            }
            AmMsg::Condition {
                playbook,
                service,
                namespace,
                condition,
                at,
            } => {
                let pb = self.playbooks.entry(playbook.clone()).or_default();
                pb.service = service;
                pb.namespace = namespace;
                let mut changed = Vec::new();
                for (stuck, on) in [(false, condition.failed_over), (true, condition.stuck)] {
                    let slot = if stuck {
                        &mut pb.stuck
                    } else {
                        &mut pb.failed_over
                    };
                    match (slot.as_mut(), on) {
                        (Some(a), true) if a.ended.is_none() => {}
                        (_, true) => {
                            *slot = Some(CondAlert {
                                since: at,
                                ended: None,
                                resends_left: 0,
                                detail: None,
                            });
                            changed.push(stuck);
                        }
                        (Some(a), false) if a.ended.is_none() => {
                            a.ended = Some(at);
                            a.resends_left = 3;
                            changed.push(stuck);
                        }
                        (_, false) => {}
                    }
                }
                for stuck in changed {
                    out.extend(self.alerts_of(&playbook, now, Some(stuck)));
                }
            }
        }
        out
    }

    /// The condition alerts of one playbook (one kind, or both).
    fn alerts_of(
        &self,
        playbook: &str,
        now: Timestamp,
        only: Option<bool>,
    ) -> Vec<(String, Value)> {
        let Some(pb) = self.playbooks.get(playbook) else {
            return Vec::new();
        };
        [(false, &pb.failed_over), (true, &pb.stuck)]
            .into_iter()
            .filter(|(s, _)| only.is_none_or(|o| o == *s))
            .filter_map(|(s, a)| {
                a.as_ref()
                    .map(|a| self.condition_alert(playbook, pb, s, a, now))
            })
            .collect()
    }

    /// Everything to re-send now; forgets resolved alerts whose re-sends are used up.
    fn resend(&mut self, now: Timestamp) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (name, pb) in &self.playbooks {
            for (s, a) in [(false, &pb.failed_over), (true, &pb.stuck)] {
                if let Some(a) = a {
                    out.push(self.condition_alert(name, pb, s, a, now));
                }
            }
        }
        for pb in self.playbooks.values_mut() {
            for slot in [&mut pb.failed_over, &mut pb.stuck] {
                if let Some(a) = slot
                    && a.ended.is_some()
                {
                    if a.resends_left == 0 {
                        *slot = None;
                    } else {
                        a.resends_left -= 1;
                    }
                }
            }
        }
        self.playbooks
            .retain(|_, pb| pb.failed_over.is_some() || pb.stuck.is_some());
        out
    }
}

fn fan_out(targets: &[AmTarget], alerts: Vec<(String, Value)>, metrics: Option<&NotifyMetrics>) {
    if alerts.is_empty() {
        return;
    }
    let batch = Arc::new(alerts);
    for t in targets {
        if !t.queue.try_push(batch.clone()) {
            t.stats
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(m) = metrics {
                for (ev, _) in batch.iter() {
                    m.count(&t.sink, ev, "dropped");
                }
            }
            warn!(alertmanager = %t.url, "alert queue full; batch dropped (the next re-send repeats firing alerts)");
        }
    }
}

pub(super) async fn am_manager(
    mut state: AmState,
    queue: Arc<Queue<AmMsg>>,
    targets: Vec<AmTarget>,
    metrics: Option<NotifyMetrics>,
) {
    let mut tick = tokio::time::interval(state.cfg.resend);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            (_, msg) = queue.pop() => {
                let alerts = state.apply(msg, Timestamp::now());
                queue.done();
                fan_out(&targets, alerts, metrics.as_ref());
            }
            _ = tick.tick() => {
                let alerts = state.resend(Timestamp::now());
                fan_out(&targets, alerts, metrics.as_ref());
            }
        }
    }
}

pub(super) async fn am_sender(
    url: reqwest::Url,
    sink: String,
    queue: Arc<Queue<Batch>>,
    stats: Arc<SinkStats>,
    client: reqwest::Client,
    metrics: Option<NotifyMetrics>,
) {
    let endpoint = format!("{}/api/v2/alerts", url.as_str().trim_end_matches('/'));
    loop {
        let (_, batch) = queue.pop().await;
        let body: Vec<&Value> = batch.iter().map(|(_, v)| v).collect();
        let mut ok = false;
        let mut last_error = String::new();
        // A few quick tries; a firing alert is re-sent on the next interval anyway.
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(jittered(
                    Duration::from_millis(250),
                    attempt - 1,
                    Duration::from_secs(2),
                ))
                .await;
            }
            match client.post(&endpoint).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    last_error = format!("HTTP {status}: {}", text.trim());
                    if status.is_client_error() {
                        break;
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            stats.retried.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &metrics {
                m.count(&sink, "batch", "retried");
            }
        }
        let result = if ok { "sent" } else { "dead-letter" };
        let counter = if ok { &stats.sent } else { &stats.dead_letters };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Some(m) = &metrics {
            for (ev, _) in batch.iter() {
                m.count(&sink, ev, result);
            }
        }
        if !ok {
            error!(alertmanager = %url, alerts = batch.len(), error = %last_error, "alerts not delivered to this Alertmanager");
        }
        queue.done();
    }
}

// ---------------------------------------------------------------------------------------
// The notifier
// ---------------------------------------------------------------------------------------

pub(super) struct AmHandle {
    pub(super) events: u32,
    pub(super) queue: Arc<Queue<AmMsg>>,
    pub(super) stats: Arc<SinkStats>,
    pub(super) targets: Vec<(String, Arc<SinkStats>, Arc<dyn Pending>)>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::notify::config::am_default_events;
    use crate::notify::event::sample_event as event;

    #[test]
    fn condition_alerts_fire_resend_and_resolve() {
        let cfg = AmResolved {
            urls: vec![],
            events: am_default_events(),
            resend: Duration::from_secs(30),
            event_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
            runbook: Some("https://runbooks.example/{playbook}".into()),
            queue: 8,
        };
        let mut st = AmState {
            cfg,
            link_base: "http://failoverd:8080".into(),
            playbooks: BTreeMap::new(),
        };
        let now: Timestamp = "2026-11-03T10:00:01Z".parse().unwrap();
        let out = st.apply(AmMsg::Event(Arc::new(event(EventKind::Failover))), now);
        assert_eq!(out.len(), 1);
        let a = &out[0].1;
        assert_eq!(a["labels"]["alertname"], "FailoverdFailedOver");
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["labels"]["service"], "child-welfare/case-management");
        assert_eq!(
            a["annotations"]["runbook_url"],
            "https://runbooks.example/case-management"
        );
        assert_eq!(a["endsAt"], json!(ts_plus(now, Duration::from_secs(120))));
        // The runtime confirms: no change, nothing sent.
        let cond = |failed_over, stuck| AmMsg::Condition {
            playbook: "case-management".into(),
            service: "child-welfare/case-management".into(),
            namespace: "child-welfare".into(),
            condition: Condition { failed_over, stuck },
            at: now,
        };
        assert!(st.apply(cond(true, false), now).is_empty());
        assert_eq!(st.resend(now).len(), 1);
        let out = st.apply(cond(true, true), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["labels"]["severity"], "critical");
        let out = st.apply(cond(false, false), now);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, a)| a["endsAt"] == json!(now)));
        // Resolved alerts are re-sent a few times, then forgotten.
        for _ in 0..4 {
            assert_eq!(st.resend(now).len(), 2);
        }
        assert!(st.resend(now).is_empty());
        // One-shot event alerts.
        let out = st.apply(AmMsg::Event(Arc::new(event(EventKind::Refused))), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["labels"]["alertname"], "FailoverdRefused");
    }
}
