//! Shared by `tests/landed_write.rs` and `tests/writer_death.rs`: the daemon in this process
//! on the demo playbook, with loopback stand-ins for its primary and failover target and a
//! routing store the test wraps around a file store (to make writes fail in chosen ways).
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use failoverd::auth::{Tokens, hash_token};
use failoverd::playbook::Playbook;
use failoverd::routing::{FileStore, RoutingStore};
use failoverd::shared::Shared;
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
        let super::Demo {
            dir,
            primary,
            dr,
            pb,
            store: files,
            ..
        } = super::Demo::new().await;
        let tokens = match token {
            Some(t) => format!(
                "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
                hash_token(t)
            ),
            None => "[]\n".into(),
        };
        std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        let loaded = super::loaded(&pb);
        let shared = Arc::new(Shared::new(&loaded));
        let (rt, audit_path) = super::runtime(loaded, wrap(files.clone()), dir.path());
        let tokens = Tokens::load(&dir.path().join("tokens.yaml")).unwrap();
        let super::Served { addr, stop, task } = super::serve_ready(
            rt,
            &shared,
            tokens,
            audit_path.clone(),
            Duration::from_secs(20),
        )
        .await;
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
