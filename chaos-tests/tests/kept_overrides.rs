//! Operator overrides kept in the cluster (`failoverd::overrides::kept::ClusterState`, the
//! write-through a leader does before acknowledging an override) against the Kubernetes API
//! server emulator: the API server's own limits (256 KiB of annotations per object,
//! resourceVersion conflicts) decide, not failoverd's arithmetic. The end-to-end guarantee
//! across leader deaths is in `leader.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use failoverd::leader::ElectionConfig;
use failoverd::overrides::kept::{Change, ClusterState, KeepError};
use failoverd::overrides::{OverrideKind, OverrideRecord};
use jiff::Timestamp;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

const STATE: &str = "failoverd-leader-state";

async fn setup() -> (Emulator, tempfile::TempDir, ClusterState) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&path, ADMIN_TOKEN).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let state = ClusterState::new(
        Client::try_from(config).unwrap(),
        &ElectionConfig::default().namespace,
        &ElectionConfig::default().name,
    );
    (emu, dir, state)
}

fn freeze(i: usize, reason: &str) -> OverrideRecord {
    let now = Timestamp::now();
    OverrideRecord {
        id: format!("ov-{i:08x}"),
        playbook: format!("pb-{i}"),
        kind: OverrideKind::Freeze,
        actor: "oncall@test".into(),
        reason: reason.into(),
        created: now,
        until: now + jiff::SignedDuration::from_hours(1),
        target: None,
        force: false,
        break_glass: None,
    }
}

fn add(r: &OverrideRecord) -> Change {
    Change::between(&[], std::slice::from_ref(r), "oncall@test")
}

/// The state Lease's annotations as the emulator holds them.
fn annotations(emu: &Emulator) -> serde_json::Map<String, Value> {
    emu.get("coordination.k8s.io/v1", "Lease", "failoverd", STATE)
        .and_then(|l| l["metadata"]["annotations"].as_object().cloned())
        .unwrap_or_default()
}

fn bytes(a: &serde_json::Map<String, Value>) -> usize {
    a.iter()
        .map(|(k, v)| k.len() + v.as_str().unwrap().len())
        .sum()
}

/// Ensures overrides with the longest reasons the API accepts fill the storage to a clear
/// "full" (507) before the API server would refuse the object, that what was refused left
/// nothing behind, and that deleting still works when full.
#[tokio::test]
async fn a_full_store_is_refused_with_507_before_the_api_server_limit_and_deletes_still_work() {
    let (emu, _dir, state) = setup().await;
    let reason = "r".repeat(failoverd::api::MAX_REASON);
    let mut kept = Vec::new();
    let full = loop {
        let r = freeze(kept.len(), &reason);
        match state.keep(&add(&r), Timestamp::now(), || true).await {
            Ok(()) => kept.push(r),
            Err(e) => break e,
        }
        assert!(kept.len() < 500, "never full");
    };
    assert!(matches!(full, KeepError::Full(_)), "{full:?}");
    assert_eq!(full.status(), 507);
    assert!(kept.len() >= 40, "only {} overrides fit", kept.len());
    let a = annotations(&emu);
    assert_eq!(a.len(), kept.len(), "a refused override left a trace");
    assert!(bytes(&a) <= 256 * 1024);
    let gone = kept.remove(0);
    state
        .keep(
            &Change::between(std::slice::from_ref(&gone), &[], "oncall@test"),
            Timestamp::now(),
            || true,
        )
        .await
        .unwrap();
    let a = annotations(&emu);
    let tomb: Value = serde_json::from_str(
        a[&format!("override.failoverd.dev/{}", gone.id)]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tomb["deleted"]["by"], "oncall@test", "{tomb}");
}

/// Ensures an update that lands but is answered after the request deadline counts as kept
/// (read back), is written once, and a deposed leader sends nothing.
#[tokio::test]
async fn an_update_answered_late_counts_once_the_object_shows_it() {
    let (emu, _dir, state) = setup().await;
    let first = freeze(1, "first");
    state
        .keep(&add(&first), Timestamp::now(), || true)
        .await
        .unwrap();
    let writes_before = emu.writes().len();
    emu.answer_writes_late_to(STATE, Duration::from_secs(3));
    let second = freeze(2, "second");
    state
        .keep(&add(&second), Timestamp::now(), || true)
        .await
        .unwrap();
    emu.answer_writes_late_to(STATE, Duration::ZERO);
    let a = annotations(&emu);
    assert!(
        a.contains_key("override.failoverd.dev/ov-00000002"),
        "{a:?}"
    );
    assert_eq!(emu.writes().len(), writes_before + 1, "{:?}", emu.writes());
    let third = freeze(3, "third");
    let e = state
        .keep(&add(&third), Timestamp::now(), || false)
        .await
        .unwrap_err();
    assert_eq!(e, KeepError::NotLeader);
    assert!(!annotations(&emu).contains_key("override.failoverd.dev/ov-00000003"));
}

/// Ensures a competing write to the state Lease between read and update (another
/// controller, a kubectl annotate) is neither overwritten nor fatal: the update conflicts,
/// is redone on the new object, and both changes are there.
#[tokio::test]
async fn a_competing_write_is_kept_and_the_change_redone() {
    let (emu, _dir, state) = setup().await;
    let first = freeze(1, "first");
    state
        .keep(&add(&first), Timestamp::now(), || true)
        .await
        .unwrap();
    emu.after_next_get("Lease", "failoverd", STATE, |l| {
        l["metadata"]["annotations"]["example.com/owner"] = Value::from("platform-team");
    })
    .unwrap();
    let second = freeze(2, "second");
    state
        .keep(&add(&second), Timestamp::now(), || true)
        .await
        .unwrap();
    let a = annotations(&emu);
    assert_eq!(a["example.com/owner"], "platform-team");
    assert!(a.contains_key("override.failoverd.dev/ov-00000001"));
    assert!(a.contains_key("override.failoverd.dev/ov-00000002"));
}
