//! A `scope: all` fault drill (`allTraffic: true`, an error-budget floor read from a real
//! Prometheus) against the real `failoverd` binary on the file store, users and the
//! primary's probe going through the routing proxy (`chaos_tests::proxy`) on the guarded
//! route itself, where `scope: all` puts the fault.
//!
//! Must hold (issue 17, README "Fault drills"): while the fault is on the guarded route,
//! users see aborts at about its percentage (50 %); the fault is taken out as soon as the
//! failover is written, not at the end of the hold; after the run the VirtualService equals
//! the original exactly, the guarded route's own pre-existing `fault` restored from the
//! annotation `failoverd.dev/drill-fault` it was kept in meanwhile. Below the error-budget
//! floor a `scope: all` drill is refused before anything moves.
#![allow(clippy::unwrap_used)]

#[path = "support/fault_drill.rs"]
mod fault_drill;
#[path = "support/user_load.rs"]
mod user_load;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::prometheus::{Prometheus, ratio_expr};
use chaos_tests::{DR_HOST, Daemon, drill_events, wait_for};
use serde_json::{Value, json};

use fault_drill::{Setup, VS, WAIT, verdict};
use user_load::user_request;

/// The guarded route's own fault in the original VirtualService: a delay of 1 ms on 1 % of
/// requests (harmless to the measure, and not an abort, so any abort users see is the
/// drill's).
const OWN_FAULT: &str =
    "      fault: { delay: { fixedDelay: 1ms, percentage: { value: 1 } } }\n      route:\n";

/// What one user loop saw: each request's (sent, answered, status).
type Seen = Vec<(Instant, Instant, u16)>;

/// Users in flight: `workers` loops of requests without any header through the router, 5 ms
/// apart, each at most `max` requests, until stopped; every request's (sent, answered,
/// status).
fn users(
    router: SocketAddr,
    workers: usize,
    max: usize,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Seen>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) && seen.len() < max {
                    let sent = Instant::now();
                    let code = user_request(router).await;
                    seen.push((sent, Instant::now(), code));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    (stop, tasks)
}

/// failoverd on the set-up's file store with `--prometheus` (the error budget's server).
async fn spawn(setup: &Setup, prom: &Prometheus, name: &str) -> Daemon {
    let state = setup.s.dir.path().join("overrides.json");
    let mut d = Daemon::spawn_with(
        &setup.s.paths,
        name,
        &[
            std::ffi::OsStr::new("--tokens"),
            setup.tokens.as_os_str(),
            std::ffi::OsStr::new("--state"),
            state.as_os_str(),
            std::ffi::OsStr::new("--prometheus"),
            std::ffi::OsStr::new(&prom.url()),
        ],
    )
    .unwrap();
    d.wait_ready(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    d
}

/// The guarded route (`primary`) of a VirtualService object.
fn guarded(vs: &Value) -> Value {
    vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "primary")
        .cloned()
        .unwrap()
}

/// A `scope: all` drill at 50 %: users see about half their requests aborted while the fault
/// is on the guarded route and none outside it; the fault comes out right after the failover
/// is written; the VirtualService ends exactly the original, its own fault restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_all_aborts_users_at_its_percentage_and_restores_the_routes_own_fault() {
    let body = format!(
        "  mode: live\n  hold: 6s\n  abort:\n    errorBudget:\n      query: '{}'\n      objective: 99\n      floor: 50\n  inject:\n    abort: {{ httpStatus: 503 }}\n    percentage: 50\n    scope: all\n    allTraffic: true\n",
        ratio_expr("primary", "10s")
    );
    let setup = Setup::new(&[("fault-all", &body)]).await;
    // The guarded route carries its own fault; the primary's probe takes the guarded route
    // (a header the probe route does not match), as users do, so it meets the drill's fault.
    // Once failed over, that probe reaches DR through the route and reads healthy, so the
    // failback goes ahead at the end of the hold; the budget query counts the primary
    // stand-in's own answers, which the router's aborts never reach, so it stays whole.
    let vs = VS.replace(
        "      timeout: 10s\n      route:\n",
        &format!("      timeout: 10s\n{OWN_FAULT}"),
    );
    assert_ne!(vs, VS);
    std::fs::write(&setup.s.vs_path, &vs).unwrap();
    let text = std::fs::read_to_string(&setup.s.playbook_path).unwrap();
    let probe = text.replace(
        "headers: { x-probe: primary }",
        "headers: { x-probe: users }",
    );
    assert_ne!(probe, text);
    std::fs::write(&setup.s.playbook_path, probe).unwrap();
    let original = setup.vs();
    assert!(
        guarded(&original)["fault"]["delay"].is_object(),
        "{original:#}"
    );
    let prom = Prometheus::start(&[setup.s.primary.addr()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut d = spawn(&setup, &prom, "fault-all").await;
    prom.wait_value(&ratio_expr("primary", "10s"), |v| v == 0.0, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", d.logs(), prom.logs()));
    let (stop, tasks) = users(setup.router.addr(), 8, 20_000);
    let id = setup.start(&d, "fault-all");
    // The drill's fault on the guarded route, its own fault kept in the annotation.
    let vs_path = setup.s.vs_path.clone();
    let during = wait_for("the drill fault on the guarded route", WAIT, || {
        let v = chaos_tests::read_yaml(&vs_path).ok()?;
        (guarded(&v)["fault"]["abort"]["httpStatus"] == 503).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let kept = during["metadata"]["annotations"]["failoverd.dev/drill-fault"].clone();
    let report = verdict(d.addr, "fault-all", &id).await;
    // Users a little past the end of the run: the route's own fault back, nothing aborted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    eprintln!("kept: {kept}\nevents: {:?}", drill_events(&report));
    assert!(
        setup.router.unsupported().is_empty() && setup.router.rejected().is_empty(),
        "the proxy could not honour: {:?}; refused: {:?}",
        setup.router.unsupported(),
        setup.router.rejected()
    );
    // When the router had the drill's abort on the guarded route.
    let history = setup.router.http_history();
    let aborting = |r: &chaos_tests::proxy::HttpRoutes| {
        r.routes
            .iter()
            .find(|x| x.name.as_deref() == Some("primary"))
            .is_some_and(|x| x.fault.as_ref().is_some_and(|f| f.abort.is_some()))
    };
    let on = history
        .iter()
        .position(|(_, r)| aborting(r))
        .unwrap_or_else(|| panic!("the router never had the drill fault"));
    let off = history[on..]
        .iter()
        .position(|(_, r)| !aborting(r))
        .map(|i| i + on)
        .unwrap_or_else(|| panic!("the router kept the drill fault"));
    assert!(
        history[off..].iter().all(|(_, r)| !aborting(r)),
        "the drill fault came back"
    );
    let (from, to) = (history[on].0, history[off].0);
    // Inside: sent after the router applied the fault, answered before it applied its
    // removal. Outside: answered before the fault or sent after the removal.
    let inside: Vec<u16> = seen
        .iter()
        .filter(|(s, a, _)| *s >= from && *a <= to)
        .map(|(_, _, c)| *c)
        .collect();
    let outside_bad: Vec<u16> = seen
        .iter()
        .filter(|(s, a, c)| (*a < from || *s > to) && *c != 200)
        .map(|(_, _, c)| *c)
        .collect();
    let aborted = inside.iter().filter(|c| **c == 503).count();
    assert!(inside.iter().all(|c| *c == 200 || *c == 503), "{inside:?}");
    let share = aborted as f64 / inside.len() as f64;
    eprintln!(
        "users: {} requests, {} while the fault was on ({:?}), {aborted} aborted ({:.1} %)",
        seen.len(),
        inside.len(),
        to - from,
        share * 100.0
    );
    assert!(inside.len() >= 100, "only {} requests inside", inside.len());
    assert!((0.2..=0.8).contains(&share), "abort share {share}");
    assert!(
        outside_bad.is_empty(),
        "users saw errors outside: {outside_bad:?}"
    );
    // Half the probes fail, so two in a row may take longer than the detection budget
    // (interval × failureThreshold + 1 interval, reckoned for a fault on every request): the
    // run then fails naming that interval, and only that.
    eprintln!("run: {} {}", report["result"], report["reasons"]);
    match report["result"].as_str() {
        Some("passed") => {}
        Some("failed") => {
            for r in report["reasons"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(
                    [
                        "fault-written → first failing signal took",
                        "fault-written → detected took",
                        "first failing → detected took",
                    ]
                    .iter()
                    .any(|w| r.contains(w)),
                    "{report:#}\n{}",
                    d.logs()
                );
            }
        }
        _ => panic!("{report:#}\n{}", d.logs()),
    }
    // Taken out as soon as the failover was written: the router's first `http[]` without the
    // fault still has the route on DR, and came less than half the hold (6 s) after the first
    // with the route on DR (the router may skip the in-between version: it polls the file);
    // a removal at the end of the hold would come at least 6 s after. The report's events
    // say the same.
    let on_dr = |r: &chaos_tests::proxy::HttpRoutes| {
        r.routes
            .iter()
            .find(|x| x.name.as_deref() == Some("primary"))
            .is_some_and(|x| x.destinations.iter().all(|d| d.host == DR_HOST))
    };
    let dr_at = history
        .iter()
        .position(|(_, r)| on_dr(r))
        .unwrap_or_else(|| panic!("the router never saw the failover"));
    assert!(
        dr_at <= off && on_dr(&history[off].1),
        "the fault stayed until the failback"
    );
    let late = history[off].0 - history[dr_at].0;
    assert!(
        late < Duration::from_secs(3),
        "the fault came out {late:?} after the failover"
    );
    let ev = drill_events(&report);
    let at = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{ev:?}"))
    };
    assert!(at("failover-written") < at("fault-removed"), "{ev:?}");
    assert!(at("fault-removed") < at("held"), "{ev:?}");
    // Its own fault was kept in the annotation (with the run) and is back, exactly.
    let kept: Value = serde_json::from_str(kept.as_str().unwrap()).unwrap();
    assert_eq!(
        kept,
        json!({ "run": id, "fault": guarded(&original)["fault"] })
    );
    assert_eq!(
        setup.vs(),
        original,
        "the VirtualService is not the original"
    );
    // The fault's edits audited: each an intent, then `written` naming it.
    let recs = chaos_tests::json_lines(&setup.s.paths.audit);
    for action in ["drill-fault-written", "drill-fault-removed"] {
        let mine: Vec<&Value> = recs.iter().filter(|r| r["action"] == action).collect();
        let outcomes: Vec<&str> = mine
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["intent", "written"], "{action}: {mine:#?}");
        assert_eq!(mine[1]["inputs"]["intentSeq"], mine[0]["seq"]);
    }
    let written = recs
        .iter()
        .find(|r| r["action"] == "drill-fault-written")
        .unwrap();
    assert_eq!(written["inputs"]["scope"], "all", "{written:#}");
    d.terminate(WAIT).unwrap();
    chaos_tests::assert_audit_verifies(&setup.s.paths.audit);
    drop(prom);
}

/// A `scope: all` drill on a service whose error budget is below the floor (the query, read
/// by the real Prometheus, says half the requests fail: far past a 1 % budget) is refused
/// (409) before anything moves: the VirtualService byte for byte, no fault audited, users
/// never aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_all_below_the_error_budget_floor_is_refused_with_nothing_written() {
    let body = "  mode: live\n  hold: 6s\n  abort:\n    errorBudget:\n      query: 'vector(0.5)'\n      objective: 99\n      floor: 50\n  inject:\n    abort: { httpStatus: 503 }\n    percentage: 50\n    scope: all\n    allTraffic: true\n";
    let setup = Setup::new(&[("fault-all", body)]).await;
    let prom = Prometheus::start(&[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let d = spawn(&setup, &prom, "fault-all-budget").await;
    let before = setup.s.vs_bytes().unwrap();
    let out = setup.cli(
        &d,
        &["drill", "run", "fault-all", "--reason", "budget spent"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", d.logs());
    assert!(stderr.contains("409"), "{stderr}");
    assert!(stderr.to_lowercase().contains("budget"), "{stderr}");
    for _ in 0..5 {
        assert_eq!(user_request(setup.router.addr()).await, 200);
    }
    assert_eq!(
        setup.s.vs_bytes().unwrap(),
        before,
        "a refused drill wrote the store"
    );
    let recs = chaos_tests::json_lines(&setup.s.paths.audit);
    assert!(
        !recs
            .iter()
            .any(|r| r["action"].as_str().unwrap().starts_with("drill-fault")),
        "{recs:#?}"
    );
    assert_eq!(setup.router.stats().aborted, 0);
}
