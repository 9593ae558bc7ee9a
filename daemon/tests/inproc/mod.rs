//! Shared by `tests/landed_write.rs` and `tests/writer_death.rs`: the daemon in this process
//! on the demo playbook, with loopback stand-ins for its primary and failover target and a
//! routing store the test wraps around a file store (to make writes fail in chosen ways).
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::audit::AuditLog;
use failoverd::auth::{Tokens, hash_token};
use failoverd::overrides::OverrideStore;
use failoverd::playbook::{self, Loaded, Playbook};
use failoverd::routing::{FileStore, RoutingStore};
use failoverd::runtime::{Runtime, Shared};
use failoverd::standin::StandIn;
use tokio::sync::watch;

/// A running in-process daemon and what a test needs to look at it.
pub struct InProc {
    /// The daemon's shared state (status, readiness).
    pub shared: Arc<Shared>,
    /// The audit log.
    pub audit_path: PathBuf,
    /// The file store under the wrapper: the test's oracle for what was written.
    pub files: FileStore,
    /// The demo playbook, with the stand-ins' addresses.
    pub pb: Playbook,
    /// The primary's stand-in.
    pub primary: StandIn,
    /// The failover target's stand-in.
    pub dr: StandIn,
    /// The API listener's address.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl InProc {
    /// Starts the daemon on `wrap(file store)`, with one operator token `token` (None: no
    /// tokens), and waits until it is ready (first probe round in).
    pub async fn start(
        wrap: impl FnOnce(FileStore) -> Arc<dyn RoutingStore>,
        token: Option<&str>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await.unwrap();
        let dr = StandIn::start("dr", loopback).await.unwrap();
        let text = failoverd::demo::PLAYBOOK
            .replace("127.0.0.1:18081", &primary.addr().to_string())
            .replace("127.0.0.1:18082", &dr.addr().to_string());
        let pb = playbook::parse("demo.yaml", &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::new(dir.path().join("routes"));
        let vs_path = files.path(&pb);
        std::fs::create_dir_all(vs_path.parent().unwrap()).unwrap();
        std::fs::write(&vs_path, failoverd::demo::VIRTUAL_SERVICE).unwrap();
        let tokens = match token {
            Some(t) => format!(
                "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
                hash_token(t)
            ),
            None => "[]\n".into(),
        };
        std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        let loaded = vec![Loaded {
            file: "demo.yaml".into(),
            playbook: pb.clone(),
        }];
        let shared = Arc::new(Shared::new(&loaded));
        let audit_path = dir.path().join("audit.jsonl");
        let rt = Runtime {
            playbooks: loaded,
            store: wrap(files.clone()),
            audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
            overrides: OverrideStore::open(&dir.path().join("overrides.json")).unwrap(),
            prometheus: None,
            prometheus_client: None,
        };
        let tokens = Tokens::load(&dir.path().join("tokens.yaml")).unwrap();
        let listener = tokio::net::TcpListener::bind(loopback).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(failoverd::app::serve(
            rt,
            shared.clone(),
            Arc::new(tokens),
            audit_path.clone(),
            listener,
            stop_rx,
            failoverd::app::ServeOptions::default(),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "daemon never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            shared,
            audit_path,
            files,
            pb,
            primary,
            dr,
            addr,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Stops the daemon and waits (bounded) for it to drain.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
