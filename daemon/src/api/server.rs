//! The HTTP side: health, readiness and metrics, and the listener that serves them with the
//! `/v1` API ([`serve`]: connection cap, header-read and body-read timeouts).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::ApiState;
use crate::shared::Shared;

/// The router for the daemon's HTTP endpoints: open health, readiness and metrics, and the
/// authenticated `/v1` API.
pub fn router(shared: Arc<Shared>, api: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
        .merge(crate::api::routes(api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The handlers enforce the real limit with a JSON error; this caps what is buffered.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_BODY * 4,
        ))
        .layer(axum::middleware::from_fn(read_body_in_time))
}

/// Time a client has to send a request body once its headers are in. A body trickled in
/// slower than this would hold a connection slot (a call being read is never evicted).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (from the connection's start, or from the
/// previous response on a kept-alive connection): slowloris and idle clients are dropped.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on open API connections (lowered further by the open-file budget).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Descriptors kept for everything but API connections and probes: the audit log, state and
/// store files, playbook reloads, Prometheus, notification and Kubernetes clients, the
/// runtime's own (epoll, eventfd, signal pipe), stdio.
pub const FD_RESERVE: u64 = 128;
/// The cap never goes below this, however low the open-file limit.
pub const MIN_CONNECTIONS: usize = 16;

/// Buffers a request body within [`BODY_READ_TIMEOUT`] (408 otherwise), before any handler
/// runs, so a slow body cannot hold a handler (and its connection slot) open.
pub async fn read_body_in_time(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = crate::api::MAX_BODY * 4;
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(
                json!({ "error": format!("body larger than {limit} bytes"), "detail": null }),
            ),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(json!({
                "error": "request body not received in time",
                "detail": format!("send the body within {} s", BODY_READ_TIMEOUT.as_secs()),
            })),
        )
            .into_response(),
    }
}

/// How the API listener is set up (`--max-connections`, `tls:`).
#[derive(Clone, Debug, Default)]
pub struct ListenerOptions {
    /// See [`ListenerLimits::for_process`].
    pub max_connections: Option<usize>,
    /// Serve HTTPS with these files (re-read when they change).
    pub tls: Option<crate::tls::TlsFiles>,
    /// With `tls`: accept client certificates signed by a CA in this PEM bundle.
    pub client_ca: Option<std::path::PathBuf>,
}

/// Limits of the API listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Most connections open at once; beyond it the oldest idle connection is closed to make
    /// room (never one with a call in progress).
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
}

impl ListenerLimits {
    /// `configured` (default [`DEFAULT_MAX_CONNECTIONS`]) capped by the open-file budget of the
    /// soft limit now in force (see [`connection_budget`]).
    pub fn for_process(configured: Option<usize>) -> Self {
        let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let configured = configured.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_connections = connection_budget(nofile, configured);
        if max_connections < configured {
            tracing::warn!(
                nofile,
                configured,
                max_connections,
                "API connection cap lowered to fit the open-file limit (probes keep {} descriptors)",
                failover_probes::MAX_IN_FLIGHT
            );
        }
        Self {
            max_connections,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self::for_process(None)
    }
}

/// The API connection cap for a soft open-file limit `nofile`: what is left after the probes'
/// worst case ([`failover_probes::MAX_IN_FLIGHT`] attempts in flight) and [`FD_RESERVE`],
/// at most `configured`, at least [`MIN_CONNECTIONS`]. API clients can then never take the
/// descriptors probes need.
pub fn connection_budget(nofile: u64, configured: usize) -> usize {
    let probes = u64::try_from(failover_probes::MAX_IN_FLIGHT).unwrap_or(u64::MAX);
    let left = nofile.saturating_sub(probes.saturating_add(FD_RESERVE));
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(configured)
        .max(MIN_CONNECTIONS)
}

/// Raises the soft open-file limit to the hard limit (a common default of 1,024 is too few
/// for probes, API clients and files at once); returns the soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// One open connection, for eviction.
#[derive(Debug)]
struct Conn {
    /// Calls in progress on it.
    active: AtomicU32,
    /// When its last call finished (ms since [`Conns::epoch`]); 0: never served one.
    last_done_ms: AtomicU64,
    close: tokio::sync::Notify,
}

/// The open connections, oldest first.
#[derive(Debug)]
struct Conns {
    epoch: Instant,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

/// A kept-alive connection whose last answer went out this recently is not evicted (its
/// response may still be on its way out).
const EVICT_GRACE_MS: u64 = 1000;

impl Conns {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks the oldest connection with no call in progress to close; false if all are busy.
    fn evict_oldest_idle(&self) -> bool {
        let now = self.now_ms();
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        let victim = open.iter().find_map(|(id, c)| {
            let last = c.last_done_ms.load(Ordering::Acquire);
            let idle = c.active.load(Ordering::Acquire) == 0
                && (last == 0 || now.saturating_sub(last) >= EVICT_GRACE_MS);
            idle.then_some(*id)
        });
        match victim.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks a call in progress on a connection while alive.
struct Active {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.conn
            .last_done_ms
            .store(self.conns.now_ms().max(1), Ordering::Release);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` (HTTP/1.1, over TLS when `tls` is given) until `stop` turns
/// true, then drains: calls in
/// progress finish (an operator call waits at most [`crate::api::CALL_TIMEOUT`]), idle
/// connections close.
///
/// At most `limits.max_connections` are open; a new one beyond that closes the oldest
/// connection with no call in progress (idle, kept alive, or still sending its headers), so
/// a flood of idle or slowloris clients cannot lock out `/healthz` or an operator. Headers
/// must arrive within `limits.header_read_timeout`. Each request carries the peer address
/// as `ConnectInfo<SocketAddr>` (the API limits failed authentications per address). A TLS
/// handshake must finish within the header-read timeout too.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ListenerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Service;

    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let conns = Arc::new(Conns {
        epoch: Instant::now(),
        open: Mutex::new(BTreeMap::new()),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut next_id: u64 = 0;
    let mut accept_errors_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|v| *v) => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a peer gone before accept: never
                // fatal; back off a little so a full table is not spun on.
                if accept_errors_logged.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!("API accept failed: {e}");
                    accept_errors_logged = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: make room by closing the oldest idle connection; with every
                // connection busy, wait for a call to finish (each is bounded).
                conns.evict_oldest_idle();
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = stop.wait_for(|v| *v) => break,
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn {
            active: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            close: tokio::sync::Notify::new(),
        });
        if let Ok(mut open) = conns.open.lock() {
            open.insert(id, conn.clone());
        }
        let (app, conn_svc, conns_svc) = (app.clone(), conn.clone(), conns.clone());
        // The client certificate's identity, known once the TLS handshake is done.
        let peer = Arc::new(std::sync::OnceLock::<crate::tls::ClientIdentity>::new());
        let peer_svc = peer.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo::<SocketAddr>(remote));
                if let Some(id) = peer_svc.get() {
                    req.extensions_mut().insert(id.clone());
                }
                conn_svc.active.fetch_add(1, Ordering::AcqRel);
                let active = Active {
                    conn: conn_svc.clone(),
                    conns: conns_svc.clone(),
                };
                let mut app = app.clone();
                async move {
                    let resp = app.call(req).await;
                    drop(active);
                    resp
                }
            });
        let (watcher, http, tls, conns) =
            (graceful.watcher(), http.clone(), tls.clone(), conns.clone());
        let handshake_within = limits.header_read_timeout;
        tokio::spawn(async move {
            let work = async move {
                match tls {
                    None => {
                        let _ = watcher
                            .watch(http.serve_connection(TokioIo::new(stream), svc))
                            .await;
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(handshake_within, acceptor.accept(stream)).await
                        {
                            if let Some(id) = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| crate::tls::identity_of(c))
                            {
                                let _ = peer.set(crate::tls::ClientIdentity(id));
                            }
                            let _ = watcher
                                .watch(http.serve_connection(TokioIo::new(stream), svc))
                                .await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = work => {}
                _ = conn.close.notified() => {}
            }
            if let Ok(mut open) = conns.open.lock() {
                open.remove(&id);
            }
            drop(permit);
        });
    }
    drop(listener);
    let drain = crate::api::CALL_TIMEOUT + Duration::from_secs(5);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after {drain:?}; closing them");
    }
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the first probe round is in; the body lists playbooks with errors, which
/// stay visible without failing readiness (one missing VirtualService must not take the
/// whole controller out of its Service).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.ready.load(Ordering::Relaxed);
    let errors: Vec<_> = shared
        .snapshot()
        .into_iter()
        .filter_map(|s| s.error.map(|e| json!({ "playbook": s.name, "error": e })))
        .collect();
    // An audit log that refuses appends (full disk, I/O error) stops every move, yet leaves
    // readiness at 200 ("degraded"): a 503 would take the API out of its Service exactly when
    // on-call needs it (to read status, freeze), and restarting or moving the pod does not
    // free the volume. The signal is here, in `failoverd_audit_available` and its alert, and
    // in the `audit-unavailable` event.
    let audit_down = shared.audit_health.unavailable();
    let audit = json!({
        "available": audit_down.is_none(),
        "error": audit_down.as_ref().map(|u| u.error.clone()),
        "since": audit_down.as_ref().map(|u| u.since),
        "owedRecords": shared.audit_health.owed(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        // Degraded: some playbook cannot act (a missing VirtualService, a missing RBAC rule);
        // still ready, so the API and the other playbooks stay reachable.
        "status": if errors.is_empty() && audit_down.is_none() { "ok" } else { "degraded" },
        "reason": if ready { "first probe round complete" } else { "waiting for the first probe round" },
        "playbookErrors": errors,
        // A refused playbook reload: the running set stays in force until the files are fixed.
        "playbookReloadError": shared.reload.error(),
        // Whether the audit log takes appends: while not, no move is made (see above).
        "audit": audit,
    });
    (code, axum::Json(body)).into_response()
}

/// `/metrics`: OpenMetrics (with the trace ids of moves as exemplars) when the scraper asks
/// for it (`Accept: application/openmetrics-text`, as Prometheus does with exemplar storage
/// or by default), the Prometheus text format otherwise.
async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim_start().starts_with("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            shared.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            shared.metrics.encode_plain(),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "not found", "detail": null })),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({ "error": "method not allowed", "detail": null })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Ensures the cap leaves the probes' share and the reserve free: 1,024 descriptors give
    /// 1,024 - 768 - 128 = 128 connections; a high limit keeps the configured cap; a tiny one
    /// keeps the floor.
    #[test]
    fn connection_budget_leaves_room_for_probes() {
        assert_eq!(failover_probes::MAX_IN_FLIGHT, 768);
        assert_eq!(connection_budget(1024, 512), 128);
        assert_eq!(connection_budget(1_048_576, 512), 512);
        assert_eq!(connection_budget(1_048_576, 20), 20);
        assert_eq!(connection_budget(100, 512), MIN_CONNECTIONS);
    }

    /// Reads until the peer closes; true if it closed within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn get(s: &mut TcpStream, path: &str) -> String {
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Ensures that at the cap a new connection is served by closing the oldest idle one,
    /// while a connection with a call in progress is never closed (its call completes).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let app = Router::new()
            .route("/fast", get_route(|| async { "fast" }))
            .route(
                "/slow",
                get_route(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let limits = ListenerLimits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(30),
        };
        let server = tokio::spawn(serve(listener, app, limits, None, stop));
        // Slot 1: a call in progress for 1.5 s.
        let busy = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            get(&mut s, "/slow").await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Slots 2 and 3: idle, oldest first.
        let mut idle1 = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut idle2 = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A fourth connection: served, and the oldest idle one is closed for it.
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(&mut fresh, "/fast"))
            .await
            .expect("the new connection was not served");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("fast"),
            "{answer}"
        );
        assert!(
            closed(&mut idle1, Duration::from_secs(2)).await,
            "oldest idle kept"
        );
        assert!(
            !closed(&mut idle2, Duration::from_millis(300)).await,
            "newer idle closed"
        );
        let slow = busy.await.unwrap();
        assert!(
            slow.starts_with("HTTP/1.1 200") && slow.ends_with("slow"),
            "{slow}"
        );
        stop_tx.send(true).unwrap();
        drop(idle2);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    fn get_route<H, T>(h: H) -> axum::routing::MethodRouter
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        axum::routing::get(h)
    }
}
