//! Stand-in HTTP services on loopback that fail on command: for the demo and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A small HTTP service: `GET /healthz` answers 200 `ok` (or the status set with
/// [`StandIn::set_health_status`]), `GET /` answers `hello from NAME`.
#[derive(Debug)]
pub struct StandIn {
    name: String,
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    task: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let mut s = Self {
            name: name.to_string(),
            addr,
            health: Arc::new(AtomicU16::new(200)),
            task: None,
        };
        s.listen().await?;
        Ok(s)
    }

    async fn listen(&mut self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let name = self.name.clone();
        let app = Router::new()
            .route("/healthz", get(health))
            .route(
                "/",
                get(move || async move { format!("hello from {name}\n") }),
            )
            .with_state(self.health.clone());
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
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn health(State(code): State<Arc<AtomicU16>>) -> (StatusCode, &'static str) {
    let code = StatusCode::from_u16(code.load(Ordering::Relaxed))
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
