#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing, end to end: one leader
//! at a time and the standby refusing writes, a leader killed mid-failover replaced with one
//! write, a leader that cannot renew writing nothing past `renewDeadline`. The replicas and
//! the emulator: `support::leader`; the takeover time at the default timings is measured by
//! the `takeover` bench.

use std::time::{Duration, Instant, SystemTime};

use chaos_tests::kube_emulator::Rule;
use chaos_tests::{Scenario, wait_for};
use failoverd::audit;

mod support;

use support::leader::{
    LEASE, RENEW_DEADLINE, Replica, SEC, assert_single_writer, cluster, failed_over, lease_holder,
    pair, request, since, vs_writes,
};

/// Ensures two replicas started together elect exactly one leader (the Lease holder, the only
/// one with `failoverd_leader 1`), and a mutating API call to the standby is refused with 503
/// naming the leader while the leader accepts it.
#[tokio::test]
async fn exactly_one_leader_and_the_standby_refuses_writes() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let mut a = Replica::spawn(&sc, &emu, "replica-a");
    let mut b = Replica::spawn(&sc, &emu, "replica-b");
    a.wait_ready().await;
    b.wait_ready().await;
    let holder = wait_for("a lease holder", 20 * SEC, || lease_holder(&emu))
        .await
        .unwrap();
    let (leader, standby) = if holder == a.name { (&a, &b) } else { (&b, &a) };
    leader.wait_leader(1, 20 * SEC).await;
    // Over several renewals (and lease periods), never two leaders and never a change.
    for _ in 0..16 {
        let (l, s) = (leader.leader_gauge().await, standby.leader_gauge().await);
        assert_eq!(
            (l, s),
            (Some(1), Some(0)),
            "leader {} / standby {}\n{}\n{}",
            leader.name,
            standby.name,
            leader.logs(),
            standby.logs()
        );
        assert_eq!(lease_holder(&emu).as_deref(), Some(leader.name));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Renewals are not takeovers: the leader re-read its routes at most once (when it won the
    // lease after its runtime started), not at every renewal.
    let takeovers = std::fs::read_to_string(&leader.stderr)
        .unwrap()
        .matches("became the leader: re-reading every route")
        .count();
    assert!(takeovers <= 1, "{takeovers} re-reads\n{}", leader.logs());
    let body = r#"{"reason":"leader election test: force a failover"}"#;
    let (code, text) = request(
        standby.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        Some(body),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", standby.logs()));
    assert_eq!(code, 503, "{text}");
    assert!(text.contains(leader.name), "names the leader: {text}");
    assert!(vs_writes(&emu).is_empty(), "the standby wrote nothing");
    let (code, text) = request(
        leader.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        Some(body),
    )
    .await
    .unwrap();
    assert!(
        (200..300).contains(&code),
        "{code} {text}\n{}",
        leader.logs()
    );
    wait_for("the forced failover", 15 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap();
    let writes = vs_writes(&emu);
    assert!(
        writes.iter().all(|w| w.identity == leader.name),
        "only the leader writes: {writes:?}"
    );
}

/// Ensures a leader SIGKILLed right after the primary fails (before it wrote) is replaced by
/// the standby, which writes the failover exactly once, within lease duration + detection
/// (with generous slack), and no two replicas ever write within one lease period.
#[tokio::test]
async fn leader_killed_mid_failover_standby_writes_once() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, mut b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    sc.primary.stop();
    a.kill();
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    b.wait_leader(1, 20 * SEC).await;
    let took_over = killed.elapsed();
    wait_for("the failover written", 30 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    let written = killed.elapsed();
    // lease 3 s + one retry + detection (3 failures at 1 s) ≈ 7 s; a loaded 2-core box gets 3×.
    assert!(
        written < 25 * SEC,
        "written {written:?} after the kill (lease held {took_over:?})"
    );
    assert!(
        took_over >= LEASE - Duration::from_millis(500),
        "took over {took_over:?} after the kill, before the lease could expire"
    );
    assert_eq!(lease_holder(&emu).as_deref(), Some("replica-b"));
    // Let anything in flight land before counting.
    tokio::time::sleep(2 * SEC).await;
    let writes = vs_writes(&emu);
    assert_eq!(writes.len(), 1, "written exactly once: {writes:?}");
    assert_eq!(writes[0].identity, "replica-b");
    assert!(writes[0].time > killed_at);
    assert_single_writer(&writes);
    let records = audit::read_all(&b.audit).unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "failover" && r.outcome == "written")
            .count(),
        1,
        "{records:#?}"
    );
    assert!(audit::verify(&b.audit).is_ok());
    assert!(b.try_status().is_none(), "the new leader keeps running");
}

/// Ensures fencing: the leader loses the right to touch the Lease (403) while it may still
/// write VirtualServices, and the primary fails at the same moment. The cut-off leader writes
/// nothing after its renew deadline, exits with status 3, and the standby takes over and
/// writes the failover; writers never overlap.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing_and_exits_3() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, mut b) = pair(&sc, &emu).await;
    // replica-a keeps full rights on VirtualServices and Events, none on Leases: only the
    // fence stands between it and a write after its lease lapsed.
    emu.add_token(
        &a.kube_token,
        a.name,
        vec![
            Rule::new(&["*"], &["networking.istio.io"], &["*"], &["*"]),
            Rule::new(&["*"], &["events.k8s.io", ""], &["events"], &["*"]),
        ],
    );
    let cut = SystemTime::now();
    sc.primary.stop();
    let exited = wait_for("replica-a to exit", 20 * SEC, || a.try_status())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    assert_eq!(exited.code(), Some(3), "{exited}\n{}", a.logs());
    assert!(
        a.logs()
            .contains("could not renew the lease within renewDeadline"),
        "{}",
        a.logs()
    );
    b.wait_leader(1, 20 * SEC).await;
    wait_for("the failover written", 30 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.logs(), b.logs()));
    tokio::time::sleep(2 * SEC).await;
    let all = emu.writes();
    let takeover = all
        .iter()
        .find(|w| w.kind == "Lease" && w.identity == "replica-b" && w.status < 300)
        .map(|w| w.time)
        .expect("replica-b wrote the lease");
    let writes = vs_writes(&emu);
    for w in writes.iter().filter(|w| w.identity == "replica-a") {
        // The fence is checked before sending; one second covers the request in flight.
        assert!(
            since(w.time, cut) < RENEW_DEADLINE + SEC,
            "replica-a wrote {:?} after the cut, past its renew deadline: {w:?}",
            since(w.time, cut)
        );
        assert!(w.time < takeover, "replica-a wrote after the takeover");
    }
    // Any VirtualService request replica-a sent at all (even refused) was before its deadline.
    for w in all
        .iter()
        .filter(|w| w.kind == "VirtualService" && w.identity == "replica-a")
    {
        assert!(since(w.time, cut) < RENEW_DEADLINE + SEC, "{w:?}");
    }
    assert_eq!(
        writes.iter().filter(|w| w.identity == "replica-b").count(),
        usize::from(!writes.iter().any(|w| w.identity == "replica-a")),
        "replica-b writes the failover unless replica-a did within its lease: {writes:?}"
    );
    assert_single_writer(&writes);
    assert!(failed_over(&emu));
    b.kill();
}
