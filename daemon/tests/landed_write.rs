#![allow(clippy::unwrap_used)]
//! A write that lands but is reported failed (its read-back failed) must not leave the
//! controller believing the old routing: it reads the route again before deciding anything,
//! adopts what the store holds and says so in the audit log.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverd::audit;
use failoverd::engine::Routing;
use failoverd::playbook::Playbook;
use failoverd::routing::{
    FileStore, RouteView, RoutingStore, StoreError, StoreFuture, WriteOutcome,
};
use support::inproc::InProc;

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
        stamp: failoverd::routing::Stamp,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            self.0.write(pb, to, stamp).await?;
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
    let mut d = InProc::start(|files| Arc::new(LandsButFails(files)), None).await;
    let (files, pb, audit_path) = (d.files.clone(), d.pb.clone(), d.audit_path.clone());
    let shared = d.shared.clone();
    d.primary.stop();
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
    d.shutdown().await;
}
