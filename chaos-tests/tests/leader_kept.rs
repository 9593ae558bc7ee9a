#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Overrides waiting on the cluster: while one waits on a stalled API server the controller
//! keeps deciding and the call is answered 503; an update that lands after the call gave up
//! is found, audited `found` and in force. The replicas and the emulator: `support::leader`.

use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::Emulator;
use chaos_tests::{Scenario, wait_for};
use failoverd::audit;
use serde_json::Value;

mod support;

use support::leader::{
    LEASE_NAME, Replica, SEC, cluster, kept_overrides, listed_overrides, request, request_within,
};

/// replica-a alone, leading, with one freeze on `demo` kept in the cluster (so the state
/// Lease exists: a create is not stalled by the emulator's per-object write faults).
async fn leader_with_a_freeze(sc: &Scenario, emu: &Emulator) -> Replica {
    let mut a = Replica::spawn(sc, emu, "replica-a");
    a.wait_ready().await;
    a.wait_leader(1, 20 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"first","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{text}");
    a
}

/// The `found` record `a` audits once it knows what became of an unanswered override
/// update on `demo`.
async fn found_record(a: &Replica, within: Duration) -> audit::Record {
    wait_for(
        "the unanswered override update settled in the audit",
        within,
        || {
            audit::read_all(&a.audit)
                .ok()?
                .into_iter()
                .find(|r| r.action == "found" && r.playbook == "demo")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()))
}

/// `failoverd_probe_results_total` summed over its series.
async fn probe_results(r: &Replica) -> u64 {
    let (_, body) = request(r.addr, "GET", "/metrics", None).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("failoverd_probe_results_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Ensures an operator call waiting for the cluster to keep its override does not stop the
/// controller, and is never acknowledged without the cluster: every write to the state Lease
/// stalls (an API server that takes updates to that object and never finishes them). Probe
/// results keep being taken in meanwhile; the call is answered 503 at the end of its 5 s
/// budget, naming the uncertainty, and the leader lists nothing new.
#[tokio::test]
async fn the_controller_keeps_deciding_while_an_override_waits_for_the_cluster() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let a = leader_with_a_freeze(&sc, &emu).await;
    let listed = listed_overrides(&a).await;
    emu.stall_writes_to(&format!("{LEASE_NAME}-state"), 60 * SEC);
    let addr = a.addr;
    let sent = Instant::now();
    let call = tokio::spawn(async move {
        request_within(
            15 * SEC,
            addr,
            "POST",
            "/v1/playbooks/demo/freeze",
            Some(r#"{"reason":"slow API server","ttl":"1h"}"#),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = probe_results(&a).await;
    tokio::time::sleep(3 * SEC).await;
    let during = probe_results(&a).await;
    if call.is_finished() {
        let answer = call.await.unwrap();
        panic!(
            "answered before its budget ran out ({:?}): {answer:?}\n{}",
            sent.elapsed(),
            a.logs()
        );
    }
    assert!(
        during > before,
        "no probe result taken in while the override waited ({before} → {during})\n{}",
        a.logs()
    );
    let (code, text) = call.await.unwrap().unwrap();
    assert_eq!(code, 503, "{text}\n{}", a.logs());
    assert!(text.contains("may or may not hold it"), "{text}");
    assert_eq!(listed_overrides(&a).await, listed);
    assert!(
        kept_overrides(&emu).is_some_and(|s| !s.contains("slow API server")),
        "{:?}",
        kept_overrides(&emu)
    );
    emu.stall_writes_to(&format!("{LEASE_NAME}-state"), Duration::ZERO);
    // Once writes go through again the leader finds out the update never landed (its own
    // write at that version lands first), and the audit says so.
    let found = found_record(&a, 20 * SEC).await;
    assert!(found.outcome.starts_with("did not land"), "{found:?}");
    assert_eq!(listed_overrides(&a).await, listed);
    // Calls made after it are taken again.
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/resume",
        Some(r#"{"reason":"API server back"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{text}");
}

/// Ensures an override update that the API server takes but answers only after failoverd
/// gave up (the call was answered 503 "may or may not") is found once it lands: the leader
/// puts it in force and audits it, so the leader, its audit and the cluster agree.
#[tokio::test]
async fn an_override_update_that_lands_after_the_call_gave_up_is_found_and_in_force() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let a = leader_with_a_freeze(&sc, &emu).await;
    // Every write to the state Lease is handled 6 s late, even after its client has gone.
    emu.stall_writes_detached_to(&format!("{LEASE_NAME}-state"), 6 * SEC);
    let (code, text) = request_within(
        15 * SEC,
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"landed late","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 503, "{text}\n{}", a.logs());
    assert!(text.contains("may or may not hold it"), "{text}");
    let found = found_record(&a, 30 * SEC).await;
    emu.stall_writes_detached_to(&format!("{LEASE_NAME}-state"), Duration::ZERO);
    assert!(found.outcome.starts_with("landed"), "{found:?}");
    let kept = kept_overrides(&emu).unwrap_or_default();
    assert!(kept.contains("landed late"), "{kept}");
    // The leader lists exactly what the cluster keeps: the late freeze replaced the first.
    let (_, body) = request(a.addr, "GET", "/v1/overrides", None).await.unwrap();
    let listed: Value = serde_json::from_str(&body).unwrap();
    let reasons: Vec<&str> = listed["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["landed late"], "{body}");
    assert!(!kept.contains("\"first\""), "{kept}");
}
