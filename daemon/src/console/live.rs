//! `GET /ui/events`: the one server-sent-events stream a console page keeps open. It sends
//! `change` (with the status table's version) whenever a phase, a routing, an explanation,
//! an error or the override set changes; the page then fetches its live regions again.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;

use crate::api::kube_auth::Verb;

use super::{ConsoleState, Need};

/// A session is checked again this often while its stream is open: a revoked token's
/// stream ends (and its page shows it lost the stream) within this time.
pub const RECHECK: Duration = Duration::from_secs(5);
/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /ui/events`.
pub async fn events(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = state
        .reader(&headers, Need::Fragment, Verb::List, None)
        .await
    {
        return *r;
    }
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams open; retrying shortly",
        )
            .into_response();
    };
    Sse::new(stream(state, headers, permit))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn stream(
    state: ConsoleState,
    headers: HeaderMap,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut changes = state.changes.clone();
    async_stream(move |tx| async move {
        // Held until the stream's task ends (the page went away, the session ended, shutdown).
        let _permit = permit;
        // The first event tells the page the stream is up and which version it holds.
        let first = *changes.borrow_and_update();
        if tx.send(change(first)).await.is_err() {
            return;
        }
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return; // shutting down
                    }
                    let v = *changes.borrow_and_update();
                    if tx.send(change(v)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return, // the page went away
                _ = recheck.tick() => {
                    if state.sessions.current(&headers, &state.api.tokens).is_none() {
                        return;
                    }
                }
            }
        }
    })
}

fn change(version: u64) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event("change")
        .data(format!("{{\"version\":{version}}}")))
}

/// A stream fed by a task through a small channel (the task ends when the client goes).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A page needs only the latest change; a few queued events are plenty.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
