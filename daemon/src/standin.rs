//! Stand-in HTTP services on loopback that fail on command: for the demo and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A small HTTP service: `GET /healthz` answers 200 `ok` (or the status set with
/// [`StandIn::set_health_status`]), `GET /` answers `hello from NAME`, and `GET /metrics`
/// exposes `istio_requests_total` counters fed by synthetic traffic (100 requests/s) whose
/// error share is set with [`StandIn::set_error_share`].
#[derive(Debug)]
pub struct StandIn {
    name: String,
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    traffic: Arc<Traffic>,
    task: Option<JoinHandle<()>>,
    generator: JoinHandle<()>,
}

/// Synthetic request counters.
#[derive(Debug, Default)]
struct Traffic {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Error share in parts per million.
    error_ppm: AtomicU64,
}

#[derive(Clone, Debug)]
struct AppState {
    name: String,
    health: Arc<AtomicU16>,
    traffic: Arc<Traffic>,
}

impl StandIn {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let traffic = Arc::new(Traffic::default());
        let t = traffic.clone();
        // 10 requests every 100 ms; errors carried as a fraction so any share is exact over time.
        let generator = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
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
            health: Arc::new(AtomicU16::new(200)),
            traffic,
            task: None,
            generator,
        };
        s.listen().await?;
        Ok(s)
    }

    async fn listen(&mut self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let state = AppState {
            name: self.name.clone(),
            health: self.health.clone(),
            traffic: self.traffic.clone(),
        };
        let app = Router::new()
            .route("/healthz", get(health))
            .route("/metrics", get(metrics))
            .route(
                "/",
                get(|State(s): State<AppState>| async move { format!("hello from {}\n", s.name) }),
            )
            .with_state(state);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        Ok(())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener: new connections are refused. (Connections already open are
    /// served until their client closes them; failoverd's probes never reuse connections.)
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The aborted task releases the socket asynchronously; retry the bind briefly.
        let mut last = None;
        for _ in 0..50 {
            match self.listen().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("restart failed")))
    }

    /// Status code `/healthz` answers with (200 healthy, e.g. 503 failing).
    pub fn set_health_status(&self, code: u16) {
        self.health.store(code, Ordering::Relaxed);
    }

    /// Share of synthetic requests that fail with 500, in 0.0..=1.0.
    pub fn set_error_share(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.traffic.error_ppm.store(ppm, Ordering::Relaxed);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
        self.generator.abort();
    }
}

async fn metrics(State(s): State<AppState>) -> String {
    let t = &s.traffic;
    format!(
        "# HELP istio_requests_total Requests served (synthetic).\n\
         # TYPE istio_requests_total counter\n\
         istio_requests_total{{destination_service=\"{name}\",response_code=\"200\"}} {}\n\
         istio_requests_total{{destination_service=\"{name}\",response_code=\"500\"}} {}\n",
        t.ok.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        name = s.name
    )
}

async fn health(State(s): State<AppState>) -> (StatusCode, &'static str) {
    let code = StatusCode::from_u16(s.health.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        if code.is_success() {
            "ok\n"
        } else {
            "failing\n"
        },
    )
}
