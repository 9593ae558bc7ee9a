#![allow(clippy::unwrap_used)]
//! A VirtualService whose failoverd annotations were tampered with, against the real
//! `failoverd` binary (build it first: `cargo build -p failoverd`) and a real file store.
//!
//! The annotation is outside input: anyone who can edit the object can write it. A bad one
//! degrades that one playbook with a reason (`/readyz`, metrics, an ERROR log): the daemon
//! stays up, never computes with the bad value (the object is left as found), and every other
//! playbook still fails over.

use std::time::Duration;

use chaos_tests::{DEMO_VIRTUAL_SERVICE, Daemon, FAST_FAILBACK, POLL, Scenario};
use failoverd::engine::Routing;
use failoverd::playbook;
use failoverd::routing::{FileStore, STATE, apply};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);
/// Budget for a failover: 3 probes at 1 s plus write, with room for a loaded machine.
const FAILOVER_WITHIN: Duration = Duration::from_secs(8);

fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n--- daemon logs ---\n{}", d.logs()))
}

/// The demo VirtualService as failoverd leaves it failed over to `failover[0]`, with the state
/// annotation then replaced by `state` (JSON).
fn tampered_vs(pb: &playbook::Playbook, state: Value) -> String {
    let mut vs: Value = serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap();
    apply(&mut vs, pb, Routing::Failover { target: 0 }, None).unwrap();
    vs["metadata"]["annotations"][STATE] = Value::String(state.to_string());
    serde_saphyr::to_string(&vs).unwrap()
}

/// Polls `/readyz` until `pred` holds on its body, at most `timeout`.
async fn wait_readyz(d: &Daemon, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (code, body) = ok(d.get("/readyz").await, d);
        let v: Value = serde_json::from_str(&body).unwrap();
        if code == 200 && pred(&v) {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "/readyz never matched within {timeout:?}: {code} {body}\n{}",
                d.logs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A split of 250 % on the primary (a value that underflowed `100 - p` before it was checked
/// where the annotation is read) in one playbook's VirtualService: the daemon starts and stays
/// up, `/readyz` and the metrics name that playbook's problem, its VirtualService is left
/// byte-identical, and a second playbook on the same primary still fails over.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_state_annotation_degrades_one_playbook_and_others_still_fail_over() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    // A second playbook, `other`, on its own VirtualService (demo/web2), watching the same
    // stand-ins.
    let other_text = s
        .playbook_text
        .replacen("name: demo", "name: other", 1)
        .replacen("name: web }", "name: web2 }", 1);
    let other_path = s.paths.playbooks.join("other.yaml");
    std::fs::write(&other_path, &other_text).unwrap();
    let other = playbook::load_file(&other_path).unwrap().playbook;
    assert_eq!(other.name(), "other");
    let other_vs = FileStore::new(&s.paths.store).path(&other);
    assert_ne!(other_vs, s.vs_path);
    std::fs::write(
        &other_vs,
        DEMO_VIRTUAL_SERVICE.replacen("name: web\n", "name: web2\n", 1),
    )
    .unwrap();

    let tampered = tampered_vs(
        &s.playbook,
        json!({
            "playbook": "demo",
            "route": "primary",
            "routing": { "to": "split", "target": 0, "primaryPercent": 250 },
        }),
    );
    std::fs::write(&s.vs_path, &tampered).unwrap();

    let mut d = s.spawn("failoverd").unwrap();
    ok(d.wait_ready(15 * SEC).await, &d);
    let readyz = wait_readyz(&d, 10 * SEC, |v| {
        v["playbookErrors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["playbook"] == "demo"))
    })
    .await;
    let errors = readyz["playbookErrors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        1,
        "only the tampered playbook is degraded: {readyz}"
    );
    let error = errors[0]["error"].as_str().unwrap();
    assert!(
        error.contains(STATE) && error.contains("primaryPercent 250 is outside 1..=99"),
        "the reason names the annotation and the value: {error}"
    );
    assert_eq!(readyz["status"], "degraded", "{readyz}");
    let (_, metrics) = ok(d.get("/metrics").await, &d);
    assert!(
        metrics.lines().any(|l| l.contains("route_write_errors")
            && l.contains("playbook=\"demo\"")
            && l.contains("reason=\"malformed\"")),
        "no malformed-route metric for demo:\n{metrics}"
    );
    let logged = d.log_lines().into_iter().any(|l| {
        l["level"] == "ERROR"
            && l.to_string()
                .contains("primaryPercent 250 is outside 1..=99")
    });
    assert!(logged, "no ERROR log with the reason\n{}", d.logs());

    // The primary fails: `other` fails over; the tampered object is not touched.
    s.primary.stop();
    ok(
        chaos_tests::wait_routing(
            &s.paths.store,
            &other,
            |r| r == Routing::Failover { target: 0 },
            FAILOVER_WITHIN,
        )
        .await,
        &d,
    );
    assert_eq!(
        std::fs::read_to_string(&s.vs_path).unwrap(),
        tampered,
        "the tampered VirtualService was rewritten"
    );
    assert!(d.is_running(), "failoverd exited\n{}", d.logs());
    assert!(
        !d.logs().contains("panicked"),
        "a panic was logged\n{}",
        d.logs()
    );
    // Still degraded for the same reason, still serving.
    let readyz = wait_readyz(&d, 2 * SEC, |_| true).await;
    assert!(
        readyz["playbookErrors"]
            .to_string()
            .contains("primaryPercent 250"),
        "{readyz}"
    );
    let (code, _) = ok(d.get("/healthz").await, &d);
    assert_eq!(code, 200);
}

/// The annotation tampered with while the daemon runs, failed over: when the failback is due
/// the write is refused (nothing is computed from a failover target that does not exist),
/// `/readyz` names the problem, the object stays as found and the daemon stays up; once the
/// object is fixed the failback proceeds with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn annotation_tampered_while_failed_over_blocks_only_that_write_until_fixed() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    ok(d.wait_ready(15 * SEC).await, &d);
    s.primary.stop();
    ok(
        s.wait_routing(|r| r == Routing::Failover { target: 0 }, FAILOVER_WITHIN)
            .await,
        &d,
    );
    // The move is done once its outcome is recorded (the write was read back and verified):
    // tampering before that would race failoverd's own read-back.
    ok(
        s.wait_audit(
            "the failover's written record",
            |r| r.action == "failover" && r.outcome == "written",
            5 * SEC,
        )
        .await,
        &d,
    );
    let good = std::fs::read_to_string(&s.vs_path).unwrap();
    let mut vs: Value = serde_saphyr::from_str(&good).unwrap();
    let state: Value =
        serde_json::from_str(vs["metadata"]["annotations"][STATE].as_str().unwrap()).unwrap();
    let mut bad_state = state.clone();
    bad_state["routing"] = json!({ "to": "failover", "target": 7 });
    vs["metadata"]["annotations"][STATE] = Value::String(bad_state.to_string());
    let tampered = serde_saphyr::to_string(&vs).unwrap();
    std::fs::write(&s.vs_path, &tampered).unwrap();

    // The primary heals: a failback is due after `after: 2s` (+ `minDwell: 1s`).
    s.primary.restart().await.unwrap();
    let readyz = wait_readyz(&d, 15 * SEC, |v| {
        v["playbookErrors"]
            .to_string()
            .contains("failover[7] does not exist")
    })
    .await;
    assert_eq!(readyz["status"], "degraded", "{readyz}");
    // Retried, still refused: the object is left exactly as found.
    tokio::time::sleep(2 * SEC).await;
    assert_eq!(std::fs::read_to_string(&s.vs_path).unwrap(), tampered);
    assert!(d.is_running(), "failoverd exited\n{}", d.logs());

    // Fixed by hand: the failback proceeds (the write is retried with backoff, at most 5 s).
    std::fs::write(&s.vs_path, &good).unwrap();
    ok(
        s.wait_routing(|r| r == Routing::Primary, 10 * SEC).await,
        &d,
    );
    wait_readyz(&d, 5 * SEC, |v| {
        v["playbookErrors"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(
        !d.logs().contains("panicked"),
        "a panic was logged\n{}",
        d.logs()
    );
    // The recovering wait (2 s, a decision on every probe result, its text carrying the
    // running clock "healthy for 1s 3ms of 2s") is logged once, not every round.
    let waits = d
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("before failback"))
        })
        .count();
    assert_eq!(
        waits,
        1,
        "the recovering wait logged {waits} times\n{}",
        d.logs()
    );
}
