//! Shared by `tests/notify.rs` and `benches/notify_latency.rs` (through `support`): loopback HTTP receivers
//! that record or misbehave, a real Alertmanager process, and the in-process daemon on the
//! demo playbook.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use failoverd::auth::Tokens;
use failoverd::engine::Routing;
use failoverd::notify::Notifier;
use failoverd::playbook::Playbook;
use failoverd::routing::{FileStore, RoutingStore};
use failoverd::shared::Shared;
use failoverd::standin::StandIn;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    /// Wall-clock arrival, to compare with a file's mtime.
    pub wall: SystemTime,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How a receiver answers.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// 200 at once.
    Ok,
    /// 500 for the first N requests, then 200.
    FailFirst(usize),
    /// Always 500.
    Fail,
    /// Records the request, then holds it this long before answering 200.
    Hang(Duration),
}

#[derive(Clone)]
struct RecvState {
    hits: Arc<Mutex<Vec<Hit>>>,
    mode: Mode,
    count: Arc<AtomicUsize>,
}

/// A loopback HTTP receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(s): State<RecvState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = s.count.fetch_add(1, Ordering::SeqCst);
    s.hits.lock().unwrap().push(Hit {
        at: Instant::now(),
        wall: SystemTime::now(),
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    match s.mode {
        Mode::Ok => StatusCode::OK,
        Mode::FailFirst(k) if n < k => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::FailFirst(_) => StatusCode::OK,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    }
}

impl Receiver {
    pub async fn start(mode: Mode) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let state = RecvState {
            hits: hits.clone(),
            mode,
            count: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits (bounded) for the first hit matching `f`.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&Hit) -> bool) -> Option<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = self.hits().into_iter().find(|h| f(h)) {
                return Some(h);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The Alertmanager binary (Debian's `prometheus-alertmanager`, or `alertmanager`).
pub fn alertmanager_binary() -> PathBuf {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        }) {
            return p;
        }
    }
    panic!(
        "Alertmanager is not installed: these tests drive a real one. Install it with \
         `sudo apt-get install -y --no-install-recommends prometheus-alertmanager` \
         (./scripts/test.sh does this when run as root)"
    );
}

/// A real Alertmanager on a loopback port, routing everything to `receiver_url` with
/// `group_wait: 0s`, `group_interval: 1s` and resolved notifications on.
pub struct Alertmanager {
    pub url: String,
    child: Child,
    _dir: TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    pub async fn start(receiver_url: &str) -> Self {
        let bin = alertmanager_binary();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:\n  receiver: hook\n  group_by: ['alertname', 'playbook']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: '{receiver_url}'\n        send_resolved: true\n"
        );
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = closed_port();
            let mut child = Command::new(&bin)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log.try_clone().unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let url = format!("http://127.0.0.1:{port}");
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!("exited with {status}");
                    break;
                }
                if let Ok(r) = client.get(format!("{url}/-/ready")).send().await
                    && r.status().is_success()
                {
                    return Self {
                        url,
                        child,
                        _dir: dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            if last_err.is_empty() {
                last_err = "not ready within 20 s".into();
            }
        }
        let log = std::fs::read_to_string(dir.path().join("alertmanager.log")).unwrap_or_default();
        panic!("Alertmanager did not start: {last_err}\n{log}");
    }
}

/// Alerts in an Alertmanager webhook notification, as (status, alertname, playbook, severity).
pub fn am_alerts(hit: &Hit) -> Vec<(String, String, String, String)> {
    let v = hit.json();
    v["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (
                        s(&a["status"]),
                        s(&a["labels"]["alertname"]),
                        s(&a["labels"]["playbook"]),
                        s(&a["labels"]["severity"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The daemon in-process on the demo playbook, with stand-ins and a temporary file store.
pub struct Daemon {
    pub primary: StandIn,
    pub dr: StandIn,
    pub pb: Playbook,
    pub store: FileStore,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

impl Daemon {
    /// Starts it with `notifier` built by `make` (given the daemon's metrics) and waits
    /// until ready.
    pub async fn start(make: impl FnOnce(&Shared) -> Notifier) -> Self {
        let super::Demo {
            dir,
            primary,
            dr,
            pb,
            store,
            ..
        } = super::Demo::new().await;
        let loaded = super::loaded(&pb);
        let mut shared = Shared::new(&loaded);
        shared.notifier = make(&shared);
        let shared = Arc::new(shared);
        let (rt, audit_path) = super::runtime(loaded, Arc::new(store.clone()), dir.path());
        let super::Served { stop, task, .. } = super::serve_ready(
            rt,
            &shared,
            Tokens::none(),
            audit_path,
            Duration::from_secs(20),
        )
        .await;
        Self {
            primary,
            dr,
            pb,
            store,
            shared,
            stop,
            task: Some(task),
            _dir: dir,
        }
    }

    /// Polls the store every 5 ms until `want` holds (bounded); returns when it was seen.
    pub async fn wait_routing(&self, timeout: Duration, want: impl Fn(Routing) -> bool) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.store.read(&self.pb).await
                && want(v.routing)
            {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "routing did not change within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// When the VirtualService file was last written (its mtime: the routing write's data
    /// hit the temp file; fsync, rename, read-back and the audit record come after).
    pub fn write_time(&self) -> SystemTime {
        std::fs::metadata(self.store.path(&self.pb))
            .and_then(|m| m.modified())
            .unwrap()
    }

    /// Breaks the primary; returns (fault instant, write seen instant).
    pub async fn fail_primary(&mut self) -> (Instant, Instant) {
        self.primary.stop();
        let fault = Instant::now();
        let written = self
            .wait_routing(Duration::from_secs(30), |r| r != Routing::Primary)
            .await;
        (fault, written)
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}
