//! Tests of the file store (the pure rewrite's are `failoverd_core::routing`'s).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::engine::Routing;
use crate::playbook::{self, Playbook};

/// The same fixtures as the core's rewrite tests: one playbook, one VirtualService.
const PB: &str = include_str!("../../../core/src/routing/testdata/web.playbook.yaml");
const VS: &str = include_str!("../../../core/src/routing/testdata/web.vs.yaml");

fn pb() -> Playbook {
    playbook::parse("t.yaml", PB).unwrap()
}

fn vs() -> Value {
    serde_saphyr::from_str(VS).unwrap()
}

/// Ensures the file store writes atomically, reads back, is a no-op when nothing changes,
/// keeps the YAML round trip exact, and reports a missing file as NotFound.
#[tokio::test]
async fn file_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let pb = pb();
    assert!(matches!(
        store.read(&pb).await,
        Err(StoreError::NotFound(_))
    ));
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    std::fs::write(store.path(&pb), VS).unwrap();
    assert_eq!(store.read(&pb).await.unwrap().routing, Routing::Primary);
    let out = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    assert!(out.changed);
    let again = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    assert!(!again.changed, "no change, no write");
    let text = std::fs::read_to_string(store.path(&pb)).unwrap();
    let reparsed: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        reparsed["spec"]["http"][0]["match"][0]["headers"]["x-canary"]["exact"],
        json!("true")
    );
    store
        .write(&pb, Routing::Primary, Default::default())
        .await
        .unwrap();
    let restored: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(store.path(&pb)).unwrap()).unwrap();
    assert_eq!(restored, vs());
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("demo"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1);
    std::fs::write(store.path(&pb), "kind: [").unwrap();
    assert!(matches!(
        store.read(&pb).await,
        Err(StoreError::Malformed { .. })
    ));
}

/// Ensures a writer that takes the namespace directory's lock the way `flock(1)` does (the
/// real util-linux tool, so the lock is the one cooperating GitOps tools can take) never has
/// its change overwritten: it replaces the manifest after failoverd read it and staged its
/// write, while failoverd waits for the lock; failoverd must notice, recompute on top of it,
/// and keep both changes.
#[tokio::test]
async fn file_store_keeps_a_cooperating_writers_change() {
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("demo");
    std::fs::create_dir_all(&ns).unwrap();
    let store = FileStore::new(dir.path());
    let pb = pb();
    std::fs::write(store.path(&pb), VS).unwrap();
    // The other writer's version: a label failoverd does not know about.
    let theirs = VS.replace(
        "labels: { app: web }",
        "labels: { app: web, synced-by: gitops }",
    );
    let theirs_path = dir.path().join("theirs.yaml");
    std::fs::write(&theirs_path, &theirs).unwrap();
    // Under the lock: wait (bounded, 10 s) until failoverd has staged its write, which it
    // does after reading the old manifest, then replace the manifest — late enough (200 ms)
    // that a writer ignoring the lock would already have renamed over it.
    let script = format!(
        "i=0; while ! ls {ns}/.failoverd-*.tmp >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 1000 ] && exit 3; sleep 0.01; done; sleep 0.2; cp {theirs} {ns}/web.yaml",
        ns = ns.display(),
        theirs = theirs_path.display()
    );
    let mut flock = std::process::Command::new("flock")
        .arg("--exclusive")
        .arg(&ns)
        .args(["sh", "-c", &script])
        .spawn()
        .expect("flock(1) from util-linux");
    // flock must hold the lock before failoverd reads, or there is no race to test.
    let t0 = std::time::Instant::now();
    while std::fs::File::open(&ns).unwrap().try_lock().is_ok() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "flock(1) never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    assert!(
        flock.wait().unwrap().success(),
        "the cooperating writer ran"
    );
    assert!(out.changed);
    let got: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(store.path(&pb)).unwrap()).unwrap();
    assert_eq!(
        got["metadata"]["labels"]["synced-by"],
        json!("gitops"),
        "their change kept"
    );
    assert_eq!(
        got["spec"]["http"][1]["route"][0]["destination"]["host"],
        json!("web.demo-dr.svc.cluster.local"),
        "our change written on top"
    );
    assert_eq!(
        store.read(&pb).await.unwrap().routing,
        Routing::Failover { target: 0 }
    );
}

/// Ensures a lock held past the wait fails the write as a conflict (retried by the
/// controller), leaving the manifest untouched and no temp file behind.
#[tokio::test]
async fn file_store_lock_held_too_long_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("demo");
    std::fs::create_dir_all(&ns).unwrap();
    let store = FileStore::new(dir.path());
    let pb = pb();
    std::fs::write(store.path(&pb), VS).unwrap();
    let held = std::fs::File::open(&ns).unwrap();
    held.lock().unwrap();
    let err = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    drop(held);
    assert_eq!(std::fs::read_to_string(store.path(&pb)).unwrap(), VS);
    assert_eq!(ns.read_dir().unwrap().count(), 1, "no temp file left");
}

/// Ensures a drill fault is written through the file store with its read-back, a second
/// write of the same run is `unchanged`, a failover and failback under it keep it, and
/// removing it gives back the original object exactly (a second removal changes nothing).
#[tokio::test]
async fn file_store_writes_and_removes_a_drill_fault() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let pb = pb();
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    std::fs::write(store.path(&pb), VS).unwrap();
    let inject = serde_saphyr::from_str("abort: { httpStatus: 503 }").unwrap();
    let add = fault::FaultEdit::Add {
        run: "dr-1-ab".into(),
        inject: Box::new(inject),
    };
    assert!(store.faults(&pb).await.unwrap().is_empty());
    let out = store.write_fault(&pb, &add).await.unwrap();
    assert!(out.changed);
    assert_eq!(out.before, vs()["spec"]["http"]);
    assert_eq!(out.after[0]["name"], json!("failoverd-drill-dr-1-ab"));
    assert_eq!(
        store.faults(&pb).await.unwrap(),
        vec!["dr-1-ab".to_string()]
    );
    assert!(!store.write_fault(&pb, &add).await.unwrap().changed);
    // A second drill's fault is refused while one is written.
    let other = fault::FaultEdit::Add {
        run: "dr-2-cd".into(),
        inject: Box::new(serde_saphyr::from_str("abort: { httpStatus: 500 }").unwrap()),
    };
    assert!(matches!(
        store.write_fault(&pb, &other).await,
        Err(StoreError::Invalid { .. })
    ));
    store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    store
        .write(&pb, Routing::Primary, Default::default())
        .await
        .unwrap();
    assert_eq!(
        store.faults(&pb).await.unwrap(),
        vec!["dr-1-ab".to_string()]
    );
    let out = store
        .write_fault(&pb, &fault::FaultEdit::Remove)
        .await
        .unwrap();
    assert!(out.changed);
    let restored: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(store.path(&pb)).unwrap()).unwrap();
    assert_eq!(restored, vs());
    assert!(
        !store
            .write_fault(&pb, &fault::FaultEdit::Remove)
            .await
            .unwrap()
            .changed
    );
}
