//! Fault drills (`spec.inject`) against the real `failoverd` binary, the file store and
//! stand-in services, with the primary's probes going through the routing proxy
//! (`chaos_tests::proxy`), which follows the VirtualService file the way Envoy does: `http[]`
//! in order, first match wins, header matches, `fault.abort`/`delay` with their percentages.
//! A route the proxy cannot honour (an unsupported match field) or an object it refuses fails
//! the test rather than being guessed.
//!
//! Must hold (issue 17): a `scope: probes` drill on a healthy playbook passes, user traffic
//! without the header sees no error at any point, detection within interval × threshold +
//! 1 interval, the VirtualService after the run equals the original exactly; the failover
//! target unhealthy at the start → `skipped`, nothing written; the target dying during the
//! hold → `aborted`, fault removed, failback done; kill -9 right after the fault is written
//! (10 runs) → after restart the fault is gone within one round and its removal audited; no
//! fault written to a playbook failed over for real, frozen or held.
#![allow(clippy::unwrap_used)]

#[path = "support/fault_drill.rs"]
mod fault_drill;
#[path = "support/user_load.rs"]
mod user_load;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chaos_tests::{assert_events_in_order, drill_events, wait_for};
use failoverd::engine::Routing;
use serde_json::Value;

use fault_drill::{Setup, WAIT, api_get, fault_routes, verdict};
use user_load::user_load;

/// The probe interval and threshold the tests run with (the detection budget follows).
const INTERVAL: Duration = Duration::from_millis(500);
const THRESHOLD: u32 = 2;

// ---------------------------------------------------------------------------------------
// The set-up (the shared part: `support/fault_drill.rs`).

/// Waits until no run of `drill` is in progress (bounded).
async fn wait_free(addr: SocketAddr, drill: &str) {
    for _ in 0..600 {
        let (_, body) = api_get(addr, "/v1/drills").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let busy = v["drills"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["name"] == drill && !d["running"].is_null());
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("drill {drill} still running");
}

const PROBES_DRILL: &str = "  mode: live\n  hold: 2s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";

// ---------------------------------------------------------------------------------------
// The tests.

/// A `scope: probes` drill on a healthy playbook passes; users never see an error; the
/// fault is detected within interval × threshold + 1 interval; the VirtualService after the
/// run is exactly the original; the fault's writes are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_scope_drill_passes_and_users_see_no_error() {
    let setup = Setup::new(&[
        ("fault", PROBES_DRILL),
        (
            "fault-plan",
            "  mode: plan\n  inject: { abort: { httpStatus: 503 } }\n",
        ),
    ])
    .await;
    let original = setup.vs();
    let d = setup.spawn("fault-pass").await;
    // Plan mode: reports the fault a live run would write, writes nothing.
    let before = setup.s.vs_bytes().unwrap();
    let out = setup.cli(&d, &["drill", "run", "fault-plan", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{out:?}");
    assert!(
        text.contains("**Result: PASSED**") && text.contains("failoverd-drill-<run id>"),
        "{text}"
    );
    assert_eq!(
        setup.s.vs_bytes().unwrap(),
        before,
        "plan mode wrote the store"
    );
    // Users: a bounded request loop through the router, without the header.
    let (stop, users) = user_load(setup.router.addr(), 5_000);
    let id = setup.start(&d, "fault");
    // Observed from outside: when the fault route appears, and when the route moves.
    let vs_path = setup.s.vs_path.clone();
    wait_for("the fault route in the VirtualService", WAIT, || {
        (!fault_routes(&vs_path).is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let fault_seen = Instant::now();
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let failover_seen = fault_seen.elapsed();
    let report = verdict(d.addr, "fault", &id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = users.await.unwrap();
    assert_eq!(report["result"], "passed", "{report:#}\n{}", d.logs());
    assert!(sent >= 20, "the user loop ran only {sent} requests");
    assert!(
        errors.is_empty(),
        "users saw errors during the drill (seconds, status): {errors:?}"
    );
    assert!(
        setup.router.unsupported().is_empty() && setup.router.rejected().is_empty(),
        "the proxy could not honour: {:?}; refused: {:?}",
        setup.router.unsupported(),
        setup.router.rejected()
    );
    assert!(
        setup.router.stats().aborted > 0,
        "the proxy aborted no request: the drill traffic never met the fault"
    );
    assert_events_in_order(
        &drill_events(&report),
        &[
            "steady-state",
            "fault-written",
            "failover-written",
            "held",
            "fault-removed",
            "restored",
            "finished",
        ],
    );
    // Detection: the report's measure, and the outside view (the fault route seen to the
    // failover seen in the file, which adds the failover write and two 50 ms polls).
    let budget = INTERVAL.as_secs_f64() * f64::from(THRESHOLD) + INTERVAL.as_secs_f64();
    let leg = &report["playbooks"][0];
    let intervals = leg["fault"]["intervals"].as_array().unwrap();
    let detect = intervals
        .iter()
        .find(|i| i["name"] == "fault-written → detected")
        .unwrap_or_else(|| panic!("{leg:#}"));
    assert!(
        detect["seconds"].as_f64().unwrap() <= budget,
        "detection {detect} over {budget} s"
    );
    assert!(
        failover_seen.as_secs_f64() <= budget + 2.0,
        "fault route seen → failover seen took {failover_seen:?}"
    );
    assert!(
        leg["fault"]["errorWindowSeconds"].as_f64().unwrap() > 0.0,
        "{leg:#}"
    );
    assert_eq!(
        setup.vs(),
        original,
        "the VirtualService is not exactly the original"
    );
    assert!(setup.fault_routes().is_empty());
    let audit = setup.fault_audit();
    for want in [
        ("drill-fault-written", "intent"),
        ("drill-fault-written", "written"),
        ("drill-fault-removed", "intent"),
        ("drill-fault-removed", "written"),
    ] {
        assert!(
            audit
                .iter()
                .any(|(a, o, who)| a == want.0 && o == want.1 && who == "drill:fault"),
            "no {want:?} in {audit:?}"
        );
    }
    chaos_tests::assert_audit_verifies(&setup.s.paths.audit);
}

/// The failover target unhealthy at the start: the run is skipped, nothing is written and
/// no fault is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_unhealthy_at_the_start_is_skipped_with_nothing_written() {
    let setup = Setup::new(&[("fault", PROBES_DRILL)]).await;
    let d = setup.spawn("fault-skip").await;
    setup.s.dr.set_health_status(503);
    // Wait until failoverd has seen it: its status shows the DR probe failing.
    let mut seen = false;
    for _ in 0..400 {
        let (_, body) = api_get(d.addr, "/v1/playbooks/demo").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        seen = v["status"]["signals"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["signal"] == "dr-health"
                    && s["health"].to_string().to_lowercase().contains("unhealthy")
            });
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "failoverd never saw the DR probe fail\n{}", d.logs());
    let before = setup.s.vs_bytes().unwrap();
    let id = setup.start(&d, "fault");
    let report = verdict(d.addr, "fault", &id).await;
    assert_eq!(report["result"], "skipped", "{report:#}");
    assert!(
        report["reasons"][0].as_str().unwrap().contains("dr-health"),
        "{report:#}"
    );
    assert_eq!(
        setup.s.vs_bytes().unwrap(),
        before,
        "a skipped drill wrote the store"
    );
    assert!(setup.fault_audit().is_empty(), "{:?}", setup.fault_audit());
}

/// The target dies during the hold: the run aborts, the fault is removed before the
/// failback, the failback is done and the VirtualService is the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dying_during_the_hold_aborts_removes_the_fault_and_fails_back() {
    let body = "  mode: live\n  hold: 30s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";
    let setup = Setup::new(&[("fault", body)]).await;
    let original = setup.vs();
    let d = setup.spawn("fault-abort").await;
    let id = setup.start(&d, "fault");
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    setup.s.dr.set_health_status(503);
    let report = verdict(d.addr, "fault", &id).await;
    assert_eq!(report["result"], "aborted", "{report:#}\n{}", d.logs());
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("failover target failover[0] turned unhealthy"),
        "{report:#}"
    );
    assert_events_in_order(
        &drill_events(&report),
        &["failover-written", "aborted", "fault-removed", "restored"],
    );
    assert!(report["playbooks"][0]["heldSeconds"].as_f64().unwrap() < 30.0);
    assert_eq!(setup.vs(), original);
    assert!(setup.fault_routes().is_empty());
}

/// kill -9 right after the fault route is written, ten times: each time the restarted
/// failoverd removes the fault within one probe round of being ready, audits the removal,
/// and fails back; the VirtualService ends exactly the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_the_fault_is_written_is_cleaned_up_on_restart() {
    const RUNS: usize = 10;
    let body = "  mode: live\n  hold: 60s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";
    let setup = Setup::new(&[("fault", body)]).await;
    let original = setup.vs();
    let mut d = setup.spawn("kill9-0").await;
    for run in 0..RUNS {
        setup.start(&d, "fault");
        let vs_path = setup.s.vs_path.clone();
        // Right after the write: polled every 5 ms, killed at once.
        let deadline = Instant::now() + WAIT;
        while fault_routes(&vs_path).is_empty() {
            assert!(
                Instant::now() < deadline,
                "run {run}: no fault route\n{}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        d.kill().unwrap();
        assert!(!setup.fault_routes().is_empty(), "run {run}");
        let removed_before = setup
            .fault_audit()
            .iter()
            .filter(|(a, o, _)| a == "drill-fault-removed" && o == "written")
            .count();
        d = setup.spawn(&format!("kill9-{}", run + 1)).await;
        let ready = Instant::now();
        wait_for("the fault route removed after the restart", WAIT, || {
            fault_routes(&vs_path).is_empty().then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("run {run}: {e}\n{}", d.logs()));
        let gone = ready.elapsed();
        // One round: the first probe round (recovery waits for it) plus the removal write.
        assert!(
            gone <= INTERVAL * 2 + Duration::from_secs(2),
            "run {run}: the fault stayed {gone:?} after the restart"
        );
        wait_for("the removal audited", WAIT, || {
            (setup
                .fault_audit()
                .iter()
                .filter(|(a, o, _)| a == "drill-fault-removed" && o == "written")
                .count()
                > removed_before)
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("run {run}: {e}\n{:?}", setup.fault_audit()));
        // Back to a steady state before the next run (the recovered run fails back).
        wait_for("the original route back", WAIT, || {
            (setup.vs() == original).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("run {run}: {e}\n{}", d.logs()));
        wait_free(d.addr, "fault").await;
        tokio::time::sleep(INTERVAL * 3).await;
    }
    d.terminate(WAIT).unwrap();
    assert_eq!(setup.vs(), original);
    chaos_tests::assert_audit_verifies(&setup.s.paths.audit);
}

/// No fault is written to a playbook that is frozen, held on a target by an operator, or
/// failed over for real: each run is refused (409) and the VirtualService never holds a
/// fault route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_on_a_frozen_held_or_failed_over_playbook() {
    let setup = Setup::new(&[("fault", PROBES_DRILL)]).await;
    let d = setup.spawn("fault-refused").await;
    let refused = |what: &str| {
        let out = setup.cli(
            &d,
            &["drill", "run", "fault", "--reason", "must be refused"],
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("409"),
            "{what}: {out:?}"
        );
        assert!(setup.fault_routes().is_empty(), "{what}");
    };
    let ok = |args: &[&str]| {
        let out = setup.cli(&d, args);
        assert!(out.status.success(), "{args:?}: {out:?}\n{}", d.logs());
    };
    ok(&["freeze", "demo", "--reason", "change freeze"]);
    refused("frozen");
    ok(&["resume", "demo", "--reason", "freeze over"]);
    ok(&["failover", "demo", "--reason", "operator hold"]);
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap();
    refused("held");
    ok(&["resume", "demo", "--reason", "hold over"]);
    setup
        .s
        .wait_routing(|r| r == Routing::Primary, WAIT)
        .await
        .unwrap();
    // A real incident: the primary fails and the engine fails over on its own.
    setup.s.primary.set_health_status(503);
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap();
    refused("failed over for real");
    assert!(setup.fault_audit().is_empty(), "{:?}", setup.fault_audit());
}
