//! Notifications: every move and every refusal reaches on-call, without ever slowing a
//! routing write.
//!
//! The runtime calls [`Notifier::notify`] and [`Notifier::condition`]; both only enqueue and
//! never block. Sinks (Alertmanager, signed webhooks) deliver from their own tasks, each
//! with its own bounded queue: a full queue drops the newest item and counts it, a slow or
//! dead receiver only ever delays itself.
//!
//! - **Alertmanager** (`notify.alertmanager`): `POST <url>/api/v2/alerts` to every listed
//!   Alertmanager (as Prometheus does for an HA pair). Two *condition* alerts per playbook
//!   fire while the condition lasts and are re-sent every `resendInterval` with
//!   `endsAt = now + 4 × resendInterval` (so a dead failoverd lets them resolve instead of
//!   firing forever): `FailoverdFailedOver` (warning) while traffic is off the original
//!   route, `FailoverdStuck` (critical) while there is no healthy destination. When the
//!   condition ends they are sent with `endsAt` = the end. Other events (write failed,
//!   refused, signal unknown, freeze, override, override expired) become one-shot alerts
//!   that end after `eventTtl`.
//! - **Webhooks** (`notify.webhooks[]`): a JSON body with `"version": "1"`, signed with
//!   `X-Failoverd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//!   delivered in order per webhook with retries (exponential backoff, full jitter); an
//!   event that exhausts its attempts (or gets a 4xx other than 408/429) is dead-lettered:
//!   logged and counted.
//!
//! One concern per file: `event` (the data), `error`, `config` (with its validation), `template`,
//! `signing`, `queue` (bounded queues and metrics), `webhook`, `alertmanager`; this file
//! is the public surface and the [`Notifier`] that fans events out to the sinks.

mod alertmanager;
mod config;
mod error;
mod event;
mod queue;
mod signing;
mod template;
mod webhook;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::task::AbortHandle;
use tracing::warn;

pub use config::{AlertmanagerConfig, NotifyConfig, Resolved, WebhookConfig};
pub use error::NotifyError;
pub use event::{Condition, Event, EventKind};
pub use queue::{SinkSnapshot, SinkStats};
pub use signing::{SIGNATURE_HEADER, sign, signature_header, verify};
pub use template::{PLACEHOLDERS, playbook_link, render};
pub use webhook::{BODY_VERSION, webhook_body};

use crate::metrics::Metrics;
use alertmanager::{AmHandle, AmMsg, AmState, AmTarget, am_manager, am_sender};
use error::bad;
use queue::{NotifyMetrics, Pending, Queue, http_client, lock, watch_queues};
use webhook::{Hook, webhook_task};

/// Fans events out to the configured sinks. With no sinks it does nothing.
#[derive(Default)]
pub struct Notifier {
    hooks: Vec<Arc<Hook>>,
    am: Option<AmHandle>,
    conditions: Mutex<HashMap<String, Condition>>,
    metrics: Option<NotifyMetrics>,
    tasks: Vec<AbortHandle>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "webhooks",
                &self.hooks.iter().map(|h| &h.cfg.name).collect::<Vec<_>>(),
            )
            .field(
                "alertmanagers",
                &self
                    .am
                    .as_ref()
                    .map(|a| a.targets.iter().map(|t| t.0.clone()).collect::<Vec<_>>()),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Notifier {
    /// A notifier with no sinks.
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks `config` (see [`NotifyConfig::resolve`]) and starts the sink tasks on the
    /// current tokio runtime. `link_base` is the daemon's external URL (links point at
    /// `<link_base>/v1/playbooks/<name>`); `metrics`, when given, receives the
    /// notification metrics.
    pub fn start(
        config: &NotifyConfig,
        link_base: &str,
        metrics: Option<&Metrics>,
    ) -> Result<Self, NotifyError> {
        Self::start_resolved(config.resolve()?, link_base, metrics)
    }

    /// Starts the sink tasks of a checked config.
    pub fn start_resolved(
        resolved: Resolved,
        link_base: &str,
        metrics: Option<&Metrics>,
    ) -> Result<Self, NotifyError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(bad("notify", "notifier started outside a tokio runtime"));
        }
        let metrics = metrics.map(NotifyMetrics::new);
        let mut tasks = Vec::new();
        let mut watched: Vec<(String, Arc<dyn Pending>)> = Vec::new();
        let mut hooks = Vec::new();
        for cfg in resolved.hooks {
            let client = http_client(cfg.timeout)?;
            let sink = format!("webhook:{}", cfg.name);
            let queue = Arc::new(Queue::new(cfg.queue));
            watched.push((sink.clone(), queue.clone()));
            let hook = Arc::new(Hook {
                cfg,
                sink,
                queue,
                stats: Arc::default(),
            });
            tasks.push(
                tokio::spawn(webhook_task(
                    hook.clone(),
                    client,
                    link_base.to_string(),
                    metrics.clone(),
                ))
                .abort_handle(),
            );
            hooks.push(hook);
        }
        let am = match resolved.am {
            None => None,
            Some(cfg) => {
                let client = http_client(cfg.timeout)?;
                let mut targets = Vec::new();
                let mut handles = Vec::new();
                for url in &cfg.urls {
                    let host = url.host_str().unwrap_or_default();
                    let sink = match url.port_or_known_default() {
                        Some(p) => format!("alertmanager:{host}:{p}"),
                        None => format!("alertmanager:{host}"),
                    };
                    let queue = Arc::new(Queue::new(cfg.queue));
                    let stats = Arc::<SinkStats>::default();
                    watched.push((sink.clone(), queue.clone()));
                    handles.push((
                        sink.clone(),
                        stats.clone(),
                        queue.clone() as Arc<dyn Pending>,
                    ));
                    tasks.push(
                        tokio::spawn(am_sender(
                            url.clone(),
                            sink.clone(),
                            queue.clone(),
                            stats.clone(),
                            client.clone(),
                            metrics.clone(),
                        ))
                        .abort_handle(),
                    );
                    targets.push(AmTarget {
                        url: url.clone(),
                        sink,
                        queue,
                        stats,
                    });
                }
                // Condition changes and events: a small, fast queue (the manager only
                // computes alerts and hands them to the per-Alertmanager queues).
                let queue = Arc::new(Queue::new(4096));
                watched.push(("alertmanager".into(), queue.clone()));
                let events = cfg.events;
                let state = AmState::new(cfg, link_base.to_string());
                tasks.push(
                    tokio::spawn(am_manager(state, queue.clone(), targets, metrics.clone()))
                        .abort_handle(),
                );
                Some(AmHandle {
                    events,
                    queue,
                    stats: Arc::default(),
                    targets: handles,
                })
            }
        };
        if let Some(m) = metrics.clone()
            && !watched.is_empty()
        {
            tasks.push(tokio::spawn(watch_queues(watched, m)).abort_handle());
        }
        Ok(Self {
            hooks,
            am,
            conditions: Mutex::new(HashMap::new()),
            metrics,
            tasks,
        })
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.am.is_none()
    }

    /// Enqueues an event for every sink that wants it. Never blocks.
    pub fn notify(&self, event: Event) {
        if self.is_empty() {
            return;
        }
        let bit = event.kind.bit();
        let ev = event.kind.as_str();
        let event = Arc::new(event);
        for h in &self.hooks {
            if h.cfg.events & bit == 0 {
                continue;
            }
            if !h.queue.try_push(event.clone()) {
                h.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.count(&h.sink, ev, "dropped");
                }
                warn!(webhook = %h.cfg.name, event = ev, playbook = %event.playbook, "webhook queue full; event dropped");
            }
        }
        if let Some(am) = &self.am
            && (am.events & bit != 0
                || matches!(event.kind, EventKind::Failover | EventKind::Stuck))
            && !am.queue.try_push(AmMsg::Event(event.clone()))
        {
            am.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.count("alertmanager", ev, "dropped");
            }
            warn!(event = ev, playbook = %event.playbook, "alertmanager queue full; event dropped");
        }
    }

    /// Reports a playbook's ongoing conditions (called after every decision; cheap when
    /// nothing changed). Never blocks.
    pub fn condition(&self, playbook: &str, service: &str, namespace: &str, condition: Condition) {
        let Some(am) = &self.am else {
            return;
        };
        let mut last = lock(&self.conditions);
        if last.get(playbook) == Some(&condition) {
            return;
        }
        let msg = AmMsg::Condition {
            playbook: playbook.to_string(),
            service: service.to_string(),
            namespace: namespace.to_string(),
            condition,
            at: Timestamp::now(),
        };
        // Remember it only once queued: a change lost to a full queue is retried on the
        // next call.
        if am.queue.try_push(msg) {
            last.insert(playbook.to_string(), condition);
        } else {
            am.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.count("alertmanager", "condition", "dropped");
            }
        }
    }

    /// Counts per sink.
    pub fn stats(&self) -> Vec<SinkSnapshot> {
        let snap = |sink: &str, s: &SinkStats, pending: usize| SinkSnapshot {
            sink: sink.to_string(),
            sent: s.sent.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            pending,
        };
        let mut out: Vec<SinkSnapshot> = self
            .hooks
            .iter()
            .map(|h| snap(&h.sink, &h.stats, h.queue.pending().0))
            .collect();
        if let Some(am) = &self.am {
            out.push(snap("alertmanager", &am.stats, am.queue.pending().0));
            for (sink, stats, q) in &am.targets {
                out.push(snap(sink, stats, q.pending().0));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use super::*;
    use crate::notify::event::sample_event as event;

    #[test]
    fn notify_never_blocks_and_counts_drops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let dir = tempfile::tempdir().unwrap();
            let secret = dir.path().join("s");
            std::fs::write(&secret, "x\n").unwrap();
            let cfg = NotifyConfig {
                alertmanager: None,
                webhooks: vec![WebhookConfig {
                    name: "w".into(),
                    // Nothing listens on port 9 (discard) here; the task never runs anyway
                    // because this single-threaded runtime is never yielded to.
                    url: "http://127.0.0.1:9/".into(),
                    secret_file: secret,
                    queue: Some(3),
                    ..WebhookConfig::default()
                }],
            };
            let n = Notifier::start(&cfg, "http://x", None).unwrap();
            let t = Instant::now();
            for _ in 0..1000 {
                n.notify(event(EventKind::Failover));
            }
            assert!(t.elapsed() < Duration::from_millis(500));
            let s = &n.stats()[0];
            assert_eq!(s.pending, 3);
            assert_eq!(s.dropped, 997);
        });
    }
}
