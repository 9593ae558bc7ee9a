//! Stand-in HTTP services on loopback that fail on command: for the demo and the tests.
//!
//! Each stand-in is a real listener on a real socket, so the faults it plays are the ones a
//! client (failoverd's probes, a routing proxy) really sees: a refused connection when it is
//! down, a connection that is accepted and never answered when it hangs, slow answers, a share
//! of 5xx answers, and a flapping service that goes down and up on a schedule.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a hanging stand-in keeps a request open at most (every wait is bounded).
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// A small HTTP service: `GET /healthz` answers 200 `ok` (or the status set with
/// [`StandIn::set_health_status`]), any other path answers `hello from NAME` with the header
/// `x-served-by: NAME`, and `GET /metrics` exposes `istio_requests_total` counters fed by
/// synthetic traffic (100 requests/s) plus the real requests it served; the error share set
/// with [`StandIn::set_error_share`] applies to both.
///
/// Faults: [`StandIn::stop`] (listener closed: connections refused), [`StandIn::set_hang`]
/// (connections accepted, never answered), [`StandIn::set_latency`], [`StandIn::set_error_share`]
/// and [`StandIn::flap`] (down and up every period). `GET /_standin?hang=1&latencyMs=200&
/// errorShare=0.3&health=503` sets the same knobs over HTTP (absent keys are left alone).
#[derive(Debug)]
pub struct StandIn {
    name: String,
    addr: SocketAddr,
    knobs: Arc<Knobs>,
    listener: Arc<Mutex<Option<JoinHandle<()>>>>,
    generator: JoinHandle<()>,
    flapper: Option<JoinHandle<()>>,
}

/// The fault knobs and request counters, shared by the handlers and the handle.
#[derive(Debug, Default)]
struct Knobs {
    health: AtomicU16,
    ok: AtomicU64,
    errors: AtomicU64,
    /// Error share in parts per million.
    error_ppm: AtomicU64,
    /// Added latency per request, in milliseconds.
    latency_ms: AtomicU64,
    hang: AtomicBool,
    /// Real requests served, for a deterministic error pattern (no randomness needed).
    served: AtomicU64,
}

impl Knobs {
    /// Whether this real request fails: spreads `error_ppm` evenly over consecutive requests.
    fn fails(&self) -> bool {
        let ppm = self.error_ppm.load(Ordering::Relaxed);
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        // Request n fails when the running error budget crosses an integer.
        (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    }

    /// Applies latency and hang before any answer. Returns false when the request should be
    /// dropped (the hang outlived its bound).
    async fn delay(&self) -> bool {
        let ms = self.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let start = tokio::time::Instant::now();
        while self.hang.load(Ordering::Relaxed) {
            if start.elapsed() > HANG_LIMIT {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

#[derive(Clone, Debug)]
struct AppState {
    name: Arc<str>,
    knobs: Arc<Knobs>,
}

impl StandIn {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let knobs = Arc::new(Knobs {
            health: AtomicU16::new(200),
            ..Knobs::default()
        });
        let t = knobs.clone();
        // 10 requests every 100 ms; errors carried as a fraction so any share is exact over time.
        let generator = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut owed = 0u64;
            loop {
                tick.tick().await;
                owed += 10 * t.error_ppm.load(Ordering::Relaxed);
                let errs = owed / 1_000_000;
                owed %= 1_000_000;
                t.errors.fetch_add(errs, Ordering::Relaxed);
                t.ok.fetch_add(10 - errs.min(10), Ordering::Relaxed);
            }
        });
        let mut s = Self {
            name: name.to_string(),
            addr,
            knobs,
            listener: Arc::new(Mutex::new(None)),
            generator,
            flapper: None,
        };
        s.addr = listen(&s.state(), s.addr, &s.listener).await?;
        Ok(s)
    }

    fn state(&self) -> AppState {
        AppState {
            name: Arc::from(self.name.as_str()),
            knobs: self.knobs.clone(),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it answers with (`x-served-by`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the listener: new connections are refused. (Connections already open are
    /// served until their client closes them; failoverd's probes never reuse connections.)
    /// Also stops a [`StandIn::flap`].
    pub fn stop(&mut self) {
        if let Some(f) = self.flapper.take() {
            f.abort();
        }
        close(&self.listener);
    }

    /// Listens again on the same port (and stops a [`StandIn::flap`]).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        reopen(&self.state(), self.addr, &self.listener).await
    }

    /// Goes down and up every `period` (down first), until [`StandIn::stop`] or
    /// [`StandIn::restart`]. Each phase lasts `period`; a bind that fails on the way up is
    /// retried on the next cycle.
    pub fn flap(&mut self, period: Duration) {
        if let Some(f) = self.flapper.take() {
            f.abort();
        }
        let (state, addr, listener) = (self.state(), self.addr, self.listener.clone());
        self.flapper = Some(tokio::spawn(async move {
            loop {
                close(&listener);
                tokio::time::sleep(period).await;
                let _ = reopen(&state, addr, &listener).await;
                tokio::time::sleep(period).await;
            }
        }));
    }

    /// Status code `/healthz` answers with (200 healthy, e.g. 503 failing).
    pub fn set_health_status(&self, code: u16) {
        self.knobs.health.store(code, Ordering::Relaxed);
    }

    /// Share of requests (synthetic and real) that fail with 500, in 0.0..=1.0.
    pub fn set_error_share(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.knobs.error_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Latency added before every answer (health checks included).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.knobs.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Accept connections but never answer (bounded to a minute per request), health checks
    /// included: what a wedged process or a black-holing middlebox looks like.
    pub fn set_hang(&self, hang: bool) {
        self.knobs.hang.store(hang, Ordering::Relaxed);
    }

    /// The `/metrics` counters (synthetic and real requests): answered 200, answered 500.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.knobs.ok.load(Ordering::Relaxed),
            self.knobs.errors.load(Ordering::Relaxed),
        )
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
        self.generator.abort();
    }
}

fn close(slot: &Mutex<Option<JoinHandle<()>>>) {
    if let Ok(mut t) = slot.lock()
        && let Some(t) = t.take()
    {
        t.abort();
    }
}

async fn listen(
    state: &AppState,
    addr: SocketAddr,
    slot: &Mutex<Option<JoinHandle<()>>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().fallback(serve).with_state(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    if let Ok(mut t) = slot.lock() {
        if let Some(old) = t.replace(task) {
            old.abort();
        }
    } else {
        task.abort();
    }
    Ok(bound)
}

async fn reopen(
    state: &AppState,
    addr: SocketAddr,
    slot: &Mutex<Option<JoinHandle<()>>>,
) -> std::io::Result<()> {
    close(slot);
    // The aborted task releases the socket asynchronously; retry the bind briefly.
    let mut last = None;
    for _ in 0..50 {
        match listen(state, addr, slot).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("restart failed")))
}

/// Applies `GET /_standin?key=value&...`; an unknown key or bad value is a 400 naming it.
fn control(k: &Knobs, query: &str) -> Result<(), String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |_| format!("{key}: invalid value `{value}`");
        match key {
            "hang" => k.hang.store(value != "0", Ordering::Relaxed),
            "latencyMs" => k.latency_ms.store(
                value
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(e.to_string()))?,
                Ordering::Relaxed,
            ),
            "errorShare" => {
                let e: f64 = value
                    .parse()
                    .map_err(|e: std::num::ParseFloatError| bad(e.to_string()))?;
                let ppm = (e.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
                k.error_ppm.store(ppm, Ordering::Relaxed);
            }
            "health" => k.health.store(
                value
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(e.to_string()))?,
                Ordering::Relaxed,
            ),
            _ => {
                return Err(format!(
                    "unknown key `{key}` (hang, latencyMs, errorShare, health)"
                ));
            }
        }
    }
    Ok(())
}

async fn serve(State(s): State<AppState>, uri: Uri, RawQuery(q): RawQuery) -> Response {
    let k = &s.knobs;
    if uri.path() == "/_standin" {
        // The control endpoint is never delayed: a hanging stand-in must be curable.
        return match control(k, q.as_deref().unwrap_or("")) {
            Ok(()) => "ok\n".into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
    }
    if !k.delay().await {
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let mut resp = match uri.path() {
        "/healthz" => {
            let code = StatusCode::from_u16(k.health.load(Ordering::Relaxed))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = if code.is_success() {
                "ok\n"
            } else {
                "failing\n"
            };
            (code, body).into_response()
        }
        "/metrics" => metrics(&s).into_response(),
        _ => {
            if k.fails() {
                k.errors.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("error from {}\n", s.name),
                )
                    .into_response()
            } else {
                k.ok.fetch_add(1, Ordering::Relaxed);
                format!("hello from {}\n", s.name).into_response()
            }
        }
    };
    if let Ok(v) = HeaderValue::from_str(&s.name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}

fn metrics(s: &AppState) -> String {
    let k = &s.knobs;
    format!(
        "# HELP istio_requests_total Requests served (synthetic and real).\n\
         # TYPE istio_requests_total counter\n\
         istio_requests_total{{destination_service=\"{name}\",response_code=\"200\"}} {}\n\
         istio_requests_total{{destination_service=\"{name}\",response_code=\"500\"}} {}\n",
        k.ok.load(Ordering::Relaxed),
        k.errors.load(Ordering::Relaxed),
        name = s.name
    )
}
