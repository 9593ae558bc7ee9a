//! Fixtures shared by the daemon's in-process tests (one place, not one copy per test
//! file): the demo playbook pointed at two loopback stand-ins, a temporary file store
//! holding the demo VirtualService, the runtime over them, and the daemon served
//! in-process until its first probe round is in.
//!
//! The fixtures of one group of tests sit beside it: `api` (the override API tests),
//! `playbooks` (loading and validation), `inproc` (a daemon over a wrapped store),
//! `notify` (receivers, Alertmanager).
#![allow(dead_code)] // each test binary uses its own part of the fixtures
#![allow(clippy::unwrap_used)]

pub mod api;
pub mod inproc;
pub mod notify;
pub mod playbooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::app::{ServeOptions, serve};
use failoverd::audit::AuditLog;
use failoverd::auth::Tokens;
use failoverd::control::Runtime;
use failoverd::overrides::OverrideStore;
use failoverd::playbook::{self, Loaded, Playbook, Validate};
use failoverd::routing::{FileStore, RoutingStore};
use failoverd::shared::Shared;
use failoverd::standin::StandIn;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One TLS crypto provider for the process, as `main` installs it.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The bundled examples (the demo playbook and its VirtualService).
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/examples")
}

/// The demo set-up on loopback: stand-ins for the primary and the DR copy, the demo
/// playbook pointed at them, and a temporary directory whose `routes/` file store holds
/// the demo VirtualService.
pub struct Demo {
    /// Holds the store, and the audit log, state and tokens the tests put beside it.
    pub dir: TempDir,
    /// The primary's stand-in.
    pub primary: StandIn,
    /// The DR copy's stand-in.
    pub dr: StandIn,
    /// The demo playbook, pointed at the stand-ins (and valid).
    pub pb: Playbook,
    /// The file store under `dir/routes`.
    pub store: FileStore,
    /// The VirtualService file in the store.
    pub vs_path: PathBuf,
}

impl Demo {
    /// Starts the stand-ins and writes the demo VirtualService into a fresh store.
    pub async fn new() -> Self {
        install_crypto();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await.unwrap();
        let dr = StandIn::start("dr", loopback).await.unwrap();
        let text = failoverd::demo::PLAYBOOK
            .replace("127.0.0.1:18081", &primary.addr().to_string())
            .replace("127.0.0.1:18082", &dr.addr().to_string());
        let pb = playbook::parse("demo.yaml", &text).unwrap();
        assert!(pb.validate("demo.yaml").is_empty());
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("routes"));
        let vs_path = store.path(&pb);
        std::fs::create_dir_all(vs_path.parent().unwrap()).unwrap();
        std::fs::write(&vs_path, failoverd::demo::VIRTUAL_SERVICE).unwrap();
        Self {
            dir,
            primary,
            dr,
            pb,
            store,
            vs_path,
        }
    }
}

/// The demo playbook as loaded from `demo.yaml`.
pub fn loaded(pb: &Playbook) -> Vec<Loaded> {
    vec![Loaded {
        file: "demo.yaml".into(),
        playbook: pb.clone(),
    }]
}

/// The runtime on `store`, with the audit log and override state in `dir`; returns the
/// audit log's path too.
pub fn runtime(
    loaded: Vec<Loaded>,
    store: Arc<dyn RoutingStore>,
    dir: &Path,
) -> (Runtime, PathBuf) {
    let audit_path = dir.join("audit.jsonl");
    let rt = Runtime {
        playbooks: loaded,
        store,
        audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        overrides: OverrideStore::open(&dir.join("overrides.json")).unwrap(),
        prometheus: None,
        prometheus_client: None,
        fence: Default::default(),
        mesh: None,
    };
    (rt, audit_path)
}

/// A daemon served in-process.
pub struct Served {
    /// The API's address.
    pub addr: SocketAddr,
    /// Send `true` to stop it.
    pub stop: watch::Sender<bool>,
    /// Its task (the result of [`serve`]).
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Serves `rt` on a fresh loopback listener and waits (at most `ready_within`) until the
/// first probe round is in.
pub async fn serve_ready(
    rt: Runtime,
    shared: &Arc<Shared>,
    tokens: Tokens,
    audit_path: PathBuf,
    ready_within: Duration,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        rt,
        shared.clone(),
        Arc::new(tokens),
        audit_path,
        listener,
        stop_rx,
        ServeOptions::default(),
    ));
    let deadline = Instant::now() + ready_within;
    while !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "daemon never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Served { addr, stop, task }
}
