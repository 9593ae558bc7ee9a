#![allow(clippy::unwrap_used)]
//! A write that lands but is reported failed (its read-back failed) must not leave the
//! controller believing the old routing: it reads the route again before deciding anything,
//! adopts what the store holds and says so in the audit log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::audit::{self, AuditLog};
use failoverd::auth::Tokens;
use failoverd::engine::Routing;
use failoverd::overrides::OverrideStore;
use failoverd::playbook::{self, Loaded, Playbook};
use failoverd::routing::{
    FileStore, RouteView, RoutingStore, StoreError, StoreFuture, WriteOutcome,
};
use failoverd::runtime::{Runtime, Shared};
use failoverd::standin::StandIn;
use tokio::sync::watch;

/// A file store whose writes land and are then reported failed, as when the read-back after
/// a successful write fails.
#[derive(Debug)]
struct LandsButFails(FileStore);

impl RoutingStore for LandsButFails {
    fn read<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, RouteView> {
        self.0.read(pb)
    }

    fn write<'a>(
        &'a self,
        pb: &'a Playbook,
        to: Routing,
        last_move: Option<jiff::Timestamp>,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            self.0.write(pb, to, last_move).await?;
            Err(StoreError::Io {
                context: "reading the route back (injected failure after the write)".into(),
                source: std::io::Error::other("injected"),
            })
        })
    }

    fn describe(&self) -> String {
        "lands-but-fails".into()
    }
}

/// Ensures the controller's routing follows the store after a write that landed but was
/// reported failed: the primary goes down, the failover lands in the file but every write
/// reports failure; the daemon must come to say `failover[0]` (what the file holds), record
/// a `found` note, and not keep deciding the same move against a routing it wrongly believes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_landed_but_failed_is_adopted_from_the_store() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut primary = StandIn::start("primary", loopback).await.unwrap();
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
    std::fs::write(dir.path().join("tokens.yaml"), "[]\n").unwrap();
    let loaded = vec![Loaded {
        file: "demo.yaml".into(),
        playbook: pb.clone(),
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let audit_path = dir.path().join("audit.jsonl");
    let rt = Runtime {
        playbooks: loaded,
        store: Arc::new(LandsButFails(files.clone())),
        audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        overrides: OverrideStore::open(&dir.path().join("overrides.json")).unwrap(),
        prometheus: None,
        prometheus_client: None,
    };
    let tokens = Tokens::load(&dir.path().join("tokens.yaml")).unwrap();
    let listener = tokio::net::TcpListener::bind(loopback).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(failoverd::cli::serve(
        rt,
        shared.clone(),
        Arc::new(tokens),
        audit_path.clone(),
        listener,
        stop_rx,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "daemon never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    primary.stop();
    let failed_over = Routing::Failover { target: 0 };
    // The oracle is the file itself, read by a fresh store.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if files.read(&pb).await.unwrap().routing == failed_over {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failover never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if shared.snapshot()[0].routing == Some(failed_over) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon still believes {:?} while the store holds {failed_over}",
            shared.snapshot()[0].routing
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = audit::read_all(&audit_path).unwrap();
        if records.iter().any(|r| r.action == "found") {
            break records;
        }
        assert!(Instant::now() < deadline, "no `found` note: {records:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Once adopted, nothing more is attempted: the primary is still down and the route is
    // already on the failover target.
    let attempts = |rs: &[audit::Record]| rs.iter().filter(|r| r.outcome == "intent").count();
    let before = attempts(&records);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = audit::read_all(&audit_path).unwrap();
    assert_eq!(attempts(&later), before, "{later:#?}");
    assert_eq!(shared.snapshot()[0].routing, Some(failed_over));
    assert!(audit::verify(&audit_path).is_ok());
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon).await;
}
