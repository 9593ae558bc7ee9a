//! Signed webhooks: one task per webhook delivers its queue in order, with retries
//! (exponential backoff, full jitter); an event that exhausts its attempts (or gets a 4xx
//! other than 408/429) is dead-lettered: logged and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{Instrument, debug, error};

use super::config::HookResolved;
use super::event::Event;
use super::queue::{NotifyMetrics, Queue, SinkStats, jittered};
use super::signing::{SIGNATURE_HEADER, signature_header};
use super::template::{playbook_link, render};

/// The webhook body's `version` field; bumped on an incompatible change.
pub const BODY_VERSION: &str = "1";

/// The webhook body for an event (before signing).
pub fn webhook_body(event: &Event, id: &str, summary: &str, link: &str) -> Value {
    let mut body = json!({
        "version": BODY_VERSION,
        "id": id,
        "event": event.kind.as_str(),
        "severity": event.kind.severity(),
        "time": event.time,
        "playbook": event.playbook,
        "service": event.service,
        "namespace": event.namespace,
        "from": event.from,
        "to": event.to,
        "reason": event.reason,
        "signals": event.signals,
        "actor": event.actor,
        "link": link,
        "summary": summary,
        // Slack-compatible incoming webhooks show `text`.
        "text": summary,
    });
    // The trace of the move (tracing on): its id, and the W3C header value to join it.
    if let Some(tp) = &event.traceparent {
        body["traceId"] = json!(crate::trace::trace_id_of(tp));
        body["traceparent"] = json!(tp);
    }
    body
}

pub(super) struct Hook {
    pub(super) cfg: HookResolved,
    pub(super) sink: String,
    pub(super) queue: Arc<Queue<Arc<Event>>>,
    pub(super) stats: Arc<SinkStats>,
}

pub(super) async fn webhook_task(
    hook: Arc<Hook>,
    client: reqwest::Client,
    link_base: String,
    metrics: Option<NotifyMetrics>,
) {
    loop {
        let (_, event) = hook.queue.pop().await;
        deliver_webhook(&hook, &client, &link_base, metrics.as_ref(), &event).await;
        hook.queue.done();
    }
}

pub(super) async fn deliver_webhook(
    hook: &Hook,
    client: &reqwest::Client,
    link_base: &str,
    metrics: Option<&NotifyMetrics>,
    event: &Event,
) {
    // One span per sink and event, in the trace of the move that raised it.
    let span = tracing::trace_span!(
        "failoverd.notify",
        otel.kind = "client",
        failoverd.sink = %hook.sink,
        failoverd.event = event.kind.as_str(),
        failoverd.playbook = %event.playbook,
        failoverd.result = tracing::field::Empty,
    );
    if let Some(tp) = &event.traceparent {
        crate::trace::set_parent(&span, tp);
    }
    deliver_webhook_in(hook, client, link_base, metrics, event)
        .instrument(span)
        .await
}

async fn deliver_webhook_in(
    hook: &Hook,
    client: &reqwest::Client,
    link_base: &str,
    metrics: Option<&NotifyMetrics>,
    event: &Event,
) {
    let cfg = &hook.cfg;
    let link = playbook_link(link_base, &event.playbook);
    let template = cfg
        .templates
        .get(&event.kind)
        .or(cfg.default_template.as_ref())
        .map_or(event.kind.default_template(), String::as_str);
    let summary = render(template, event, &link);
    let id = format!("evt-{:016x}", rand::random::<u64>());
    let body = webhook_body(event, &id, &summary, &link).to_string();
    let ev = event.kind.as_str();
    let mut last_error = String::new();
    for attempt in 0..cfg.max_attempts {
        if attempt > 0 {
            tokio::time::sleep(jittered(cfg.backoff, attempt - 1, Duration::from_secs(30))).await;
        }
        // A fresh timestamp per attempt: receivers refuse stale ones.
        let t = Timestamp::now().as_second();
        let res = client
            .post(cfg.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature_header(&cfg.secret, t, body.as_bytes()),
            )
            .header("X-Failoverd-Event", ev)
            .header("X-Failoverd-Delivery", &id)
            .body(body.clone())
            .send()
            .await;
        let permanent = match res {
            Ok(r) if r.status().is_success() => {
                hook.stats.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = metrics {
                    m.count(&hook.sink, ev, "sent");
                }
                tracing::Span::current().record("failoverd.result", "sent");
                debug!(webhook = %cfg.name, event = ev, playbook = %event.playbook, attempt, "webhook delivered");
                return;
            }
            Ok(r) => {
                let s = r.status();
                last_error = format!("HTTP {s}");
                s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429
            }
            Err(e) => {
                last_error = if e.is_timeout() {
                    format!(
                        "timed out after {}",
                        humantime::format_duration(cfg.timeout)
                    )
                } else {
                    format!("{e}")
                };
                false
            }
        };
        if permanent || attempt + 1 == cfg.max_attempts {
            break;
        }
        hook.stats.retried.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = metrics {
            m.count(&hook.sink, ev, "retried");
        }
        debug!(webhook = %cfg.name, event = ev, attempt, error = %last_error, "webhook attempt failed; retrying");
    }
    tracing::Span::current().record("failoverd.result", "dead-letter");
    hook.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = metrics {
        m.count(&hook.sink, ev, "dead-letter");
    }
    error!(
        webhook = %cfg.name,
        event = ev,
        playbook = %event.playbook,
        id = %id,
        error = %last_error,
        summary = %summary,
        "webhook delivery dead-lettered: on-call did not get this event through this webhook"
    );
}
