//! The write path of the `kubernetes` store: one read-modify-write guarded by
//! `resourceVersion`, retried inside the write budget, an unanswered update settled by
//! reading what the server holds, and the Kubernetes Event that tells people about the move.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DynamicObject, PostParams};
use kube::runtime::events::{Event, EventType};
use serde_json::Value;
use tracing::{Instrument, warn};

use crate::engine::Routing;
use crate::playbook::Playbook;
use crate::routing::{Stamp, StoreError, WriteOutcome, apply, view};

use super::{FIELD_MANAGER, KubeStore, TimedError, map_err, object_name, paced, timed};

impl KubeStore {
    /// The time left before `deadline`, bounded by one request's timeout.
    fn request_limit(&self, deadline: Instant) -> Duration {
        deadline
            .saturating_duration_since(Instant::now())
            .min(self.options.request_timeout)
    }

    /// One read-modify-write attempt; every request in it ends by `deadline`. `unanswered`
    /// carries an update sent by an earlier attempt whose answer never came.
    async fn try_write(
        &self,
        pb: &Playbook,
        to: Routing,
        stamp: &Stamp,
        deadline: Instant,
        unanswered: &mut Option<Unanswered>,
    ) -> Result<WriteOutcome, StoreError> {
        let object = object_name(pb);
        let ns = &pb.spec.virtual_service.namespace;
        let api = self.api(pb).await?;
        let mut vs = self
            .get(&api, pb, &self.limiter, self.request_limit(deadline))
            .instrument(request_span("GET", pb))
            .await?;
        let found_state = state_of(&vs);
        let current = view(&vs, pb)?;
        let i = crate::routing::route_index(&vs, pb)?;
        let pointer = format!("/spec/http/{i}/route");
        let before = apply(&mut vs, pb, to, stamp.clone())?;
        let after = vs.pointer(&pointer).cloned().unwrap_or(Value::Null);
        if current.routing == to && before == after {
            // Already there. If an update of ours went unanswered and the object carries the
            // state it sent, that update landed: this move was written, not found unchanged.
            if let Some(u) = unanswered.take_if(|u| found_state.is_some() && u.state == found_state)
            {
                return Ok(WriteOutcome {
                    before: u.before,
                    after,
                    changed: true,
                });
            }
            return Ok(WriteOutcome {
                before,
                after,
                changed: false,
            });
        }
        crate::routing::annotate_trace(
            &mut vs,
            crate::trace::traceparent(&tracing::Span::current()).as_deref(),
        );
        // Never send what the API server or istiod would refuse (or, worse, accept and
        // break the listener with).
        crate::routing::istio::validate_virtual_service(&vs).map_err(|problems| {
            StoreError::Invalid {
                object: object.clone(),
                message: problems.join("; "),
            }
        })?;
        let sent_state = state_of(&vs);
        let obj: DynamicObject = serde_json::from_value(vs).map_err(|e| StoreError::Malformed {
            object: object.clone(),
            message: format!("cannot build the update: {e}"),
        })?;
        // `metadata.resourceVersion` is the one read above: the API server answers 409 if
        // anybody wrote the object since.
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        paced(
            &self.limiter,
            self.request_limit(deadline),
            &object,
            "update",
        )
        .await?;
        if self.fence.as_ref().is_some_and(|f| !f.is_leader()) {
            return Err(StoreError::Fenced);
        }
        // From here until a definite answer, the update may land whatever we do: remember it,
        // so neither a lost answer nor the budget running out can turn it into `failed`.
        *unanswered = Some(Unanswered {
            before: before.clone(),
            state: sent_state,
        });
        let put = request_span("PUT", pb);
        let stored = match timed(
            self.request_limit(deadline),
            api.replace(&pb.spec.virtual_service.name, &params, &obj),
        )
        .instrument(put.clone())
        .await
        {
            // Answered: it landed, and the answer is the object as the API server stored it
            // (after admission), which is the read-back. `unanswered` stays set, so if that
            // answer cannot be read the next attempt (or the settling read) finds the object
            // carrying this state and reports the move written, never `unchanged` or `failed`.
            Ok(stored) => {
                put.record("http.response.status_code", 200);
                stored
            }
            // A 4xx is the server refusing this update: it did not land (an earlier
            // unanswered one still may have, which `unanswered` keeps).
            Err(TimedError::Kube(kube::Error::Api(status)))
                if (400..500).contains(&status.code) =>
            {
                put.record("http.response.status_code", status.code);
                return Err(map_err(
                    TimedError::Kube(kube::Error::Api(status)),
                    &object,
                    "update",
                    ns,
                ));
            }
            Err(e) => {
                put.record("error.type", "unanswered");
                return Err(map_err(e, &object, "update", ns));
            }
        };
        // The update's answer is the read-back: one request fewer per move than a GET after
        // it (a third of the rate limit when many playbooks fail over at once).
        let read_back = serde_json::to_value(&stored).map_err(|e| StoreError::Malformed {
            object: object.clone(),
            message: format!("cannot represent the update's answer as JSON: {e}"),
        })?;
        let got = read_back.pointer(&pointer).cloned().unwrap_or(Value::Null);
        let read_routing = view(&read_back, pb)?.routing;
        if got != after || read_routing != to {
            warn!(object, wrote = %after, read = %got, routing = %read_routing, "read back differs from the update");
            return Err(StoreError::Verify { object });
        }
        Ok(WriteOutcome {
            before,
            after: got,
            changed: true,
        })
    }

    pub(super) async fn write_with_budget(
        &self,
        pb: &Playbook,
        to: Routing,
        stamp: Stamp,
    ) -> Result<WriteOutcome, StoreError> {
        let started = Instant::now();
        // The attempts end early enough to leave one read for settling an unanswered update.
        let reserve = self.options.request_timeout.min(self.options.budget / 4);
        let deadline = started + self.options.budget - reserve;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 1u32;
        let mut unanswered: Option<Unanswered> = None;
        let err = loop {
            match self
                .try_write(pb, to, &stamp, deadline, &mut unanswered)
                .await
            {
                Ok(out) => return Ok(out),
                Err(e) if e.is_retryable() => {
                    // Jitter so many playbooks retrying after one API blip do not return in step.
                    let wait = backoff + backoff.mul_f64(rand::random::<f64>() * 0.5);
                    if Instant::now() + wait >= deadline {
                        break e;
                    }
                    warn!(playbook = pb.name(), attempt, error = %e, wait_ms = wait.as_millis() as u64, "VirtualService write did not land; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(e) => break e,
            }
        };
        let Some(u) = unanswered else {
            return Err(err);
        };
        // An update went out and its answer never came: read what the server holds and
        // report that, never a failure that may have landed.
        self.settle(pb, u, err, started + self.options.budget).await
    }

    /// Finds out whether an unanswered update landed: `written` when the object carries the
    /// state it sent, the attempt's error when it does not, and `Unavailable` naming the
    /// unknown outcome when even that read fails.
    async fn settle(
        &self,
        pb: &Playbook,
        u: Unanswered,
        err: StoreError,
        deadline: Instant,
    ) -> Result<WriteOutcome, StoreError> {
        let object = object_name(pb);
        let read = async {
            let api = self.api(pb).await?;
            let limit = deadline.saturating_duration_since(Instant::now());
            self.get(&api, pb, &self.limiter, limit)
                .instrument(request_span("GET", pb))
                .await
        };
        match read.await {
            Ok(vs) if u.state.is_some() && state_of(&vs) == u.state => {
                let i = crate::routing::route_index(&vs, pb)?;
                let after = vs
                    .pointer(&format!("/spec/http/{i}/route"))
                    .cloned()
                    .unwrap_or(Value::Null);
                warn!(
                    object,
                    "an update whose answer was lost had landed; recorded as written"
                );
                Ok(WriteOutcome {
                    before: u.before,
                    after,
                    changed: true,
                })
            }
            Ok(_) => Err(err),
            Err(read_err) => Err(StoreError::Unavailable {
                object,
                message: format!(
                    "outcome unknown: an update was sent but not answered ({err}), and reading the object back failed ({read_err}); the next read shows where the route is"
                ),
            }),
        }
    }

    /// Publishes a Kubernetes Event on the VirtualService, in the background: an Event is
    /// for people running `kubectl describe`, and must never delay or fail a move.
    pub(super) fn publish_event(
        &self,
        pb: &Playbook,
        to: Routing,
        result: &Result<WriteOutcome, StoreError>,
    ) {
        let Some(ar) = self.resource.get() else {
            return;
        };
        let (type_, reason, note) = match result {
            Ok(out) if !out.changed => return,
            Ok(_) => (
                EventType::Normal,
                "RouteChanged",
                format!("playbook {}: route now {to}", pb.name()),
            ),
            Err(e) => (
                EventType::Warning,
                "RouteWriteFailed",
                format!("playbook {}: could not route to {to}: {e}", pb.name()),
            ),
        };
        // The move's trace (tracing on), for `kubectl describe` readers to open it.
        let note = match crate::trace::trace_id(&tracing::Span::current()) {
            Some(id) => format!("{note} (trace {id})"),
            None => note,
        };
        let event = Event {
            type_,
            reason: reason.into(),
            // The API server caps a note at 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: if to == Routing::Primary {
                "Failback".into()
            } else {
                "Failover".into()
            },
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some("VirtualService".into()),
            name: Some(pb.spec.virtual_service.name.clone()),
            namespace: Some(pb.spec.virtual_service.namespace.clone()),
            ..Default::default()
        };
        let Ok(slot) = self.event_slots.clone().try_acquire_owned() else {
            // Counted, and logged once per hundred so a storm does not flood the log too.
            if super::EVENTS_DROPPED.inc().is_multiple_of(100) {
                warn!(
                    object = object_name(pb),
                    backlog = super::EVENT_BACKLOG,
                    "Kubernetes Events are dropped: moves outpace the event rate limit (counted in failoverd_kube_events_dropped_total)"
                );
            }
            return;
        };
        let recorder = self.recorder.clone();
        let limiter = self.event_limiter.clone();
        let timeout = self.options.request_timeout;
        let object = object_name(pb);
        tokio::spawn(async move {
            limiter.until_ready().await;
            match tokio::time::timeout(timeout, recorder.publish(&event, &reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(object, error = %e, "cannot publish the Kubernetes Event"),
                Err(_) => warn!(object, "publishing the Kubernetes Event timed out"),
            }
            drop(slot);
        });
    }
}

/// One Kubernetes API request of a write (a child of `failoverd.route.write`, tracing on),
/// with the HTTP and `k8s.*` semantic-convention attributes.
fn request_span(method: &'static str, pb: &Playbook) -> tracing::Span {
    let vs = &pb.spec.virtual_service;
    tracing::trace_span!(
        "failoverd.kube.request",
        otel.kind = "client",
        http.request.method = method,
        k8s.namespace.name = %vs.namespace,
        k8s.resource.name = %vs.name,
        k8s.resource.kind = "VirtualService",
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// An update that was sent: its answer never came, or it landed and has not been read back.
#[derive(Debug)]
struct Unanswered {
    /// The route before it, as the attempt that sent it read it.
    before: Value,
    /// The `failoverd.dev/state` annotation it carried. It holds the move's time, so an
    /// object carrying exactly this value was written by this move.
    state: Option<Value>,
}

/// The `failoverd.dev/state` annotation of an object, if any.
fn state_of(vs: &Value) -> Option<Value> {
    vs.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(crate::routing::STATE))
        .cloned()
}
