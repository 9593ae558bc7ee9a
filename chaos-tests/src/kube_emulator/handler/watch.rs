//! Watch streams: the event lines of a watch, served from the change log.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::Frame;
use hyper::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::kube_emulator::{Event, Shared};

use super::objects::{in_scope, parse_selectors, served};
use super::{Status, Target, respond};

/// A response body fed from a channel (one chunk per watch event).
pub(super) struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(super) fn watch_line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

pub(super) fn start_watch(
    shared: &Arc<Shared>,
    t: &Target,
    q: &[(String, String)],
) -> Response<Body> {
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut r = Response::new(Body::new(ChannelBody(rx)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let sel = match parse_selectors(q) {
        Ok(s) => s,
        Err(s) => return respond(s.code, &s.body()),
    };
    let bookmarks = matches!(param("allowWatchBookmarks").as_deref(), Some("true" | "1"));
    let initial = matches!(param("sendInitialEvents").as_deref(), Some("true" | "1"));
    let timeout = param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(1800);
    let rv: Option<u64> = param("resourceVersion")
        .filter(|s| !s.is_empty() && s != "0")
        .and_then(|s| s.parse().ok());
    let res = t.res;
    let version = t.version.clone();
    let ns = t.ns.clone();
    let scope = Target {
        res,
        version: version.clone(),
        ns,
        name: None,
        subresource: None,
    };
    // Under the lock: the backlog and the subscription start at the same point.
    let mut first: Vec<Bytes> = Vec::new();
    let mut rx_events;
    let current_rv;
    {
        let st = shared.lock();
        rx_events = shared.events_tx.subscribe();
        current_rv = st.rv;
        match rv {
            Some(from) if !initial => {
                if from < st.compacted {
                    let status = Status::new(
                        410,
                        "Expired",
                        format!("too old resource version: {from} ({})", st.compacted + 1),
                    );
                    first.push(watch_line("ERROR", status.body()));
                } else {
                    for ev in st.history.iter().filter(|e| e.rv > from) {
                        if in_scope(&scope, &ev.key) && sel.matches(&ev.object) {
                            first.push(watch_line(
                                ev.kind,
                                served(res, &version, ev.object.clone()),
                            ));
                        }
                    }
                }
            }
            _ => {
                // No resourceVersion (or "0", or sendInitialEvents): synthetic ADDED for the
                // current state, then live events.
                for (k, v) in &st.objects {
                    if in_scope(&scope, k) && sel.matches(v) {
                        first.push(watch_line("ADDED", served(res, &version, v.clone())));
                    }
                }
                if initial && bookmarks {
                    first.push(watch_line(
                        "BOOKMARK",
                        json!({"kind": res.kind, "apiVersion": res.api_version(&version),
                            "metadata": {"resourceVersion": st.rv.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"}}}),
                    ));
                }
            }
        }
    }
    let gone = first.iter().any(|b| b.starts_with(b"{\"type\":\"ERROR\""));
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let mut last_rv = current_rv;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": res.kind, "apiVersion": res.api_version(&version),
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(watch_line("BOOKMARK", bm)).await.is_err() { return; }
                }
                ev = rx_events.recv() => match ev {
                    Ok(ev) => {
                        let ev: Arc<Event> = ev;
                        last_rv = ev.rv;
                        if in_scope(&scope, &ev.key) && sel.matches(&ev.object) {
                            let line = watch_line(ev.kind, served(res, &version, ev.object.clone()));
                            if tx.send(line).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let s = Status::new(410, "Expired", "too old resource version: watch fell behind");
                        let _ = tx.send(watch_line("ERROR", s.body())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    r
}
