//! A dashboard polling `GET /v1/playbooks/{name}` during a failover storm, through the real
//! binary on the Kubernetes API server emulator: viewer reads come from the kubernetes
//! store's watch cache, so they cost the API server nothing and can never take a token a
//! routing write needs. Checked from the emulator's own request log (what the API server
//! saw), not from the daemon. Timing (route-written latency with and without the load) is
//! measured by `benches/storm.rs` (`DASHBOARD=1`), not asserted here.
//!
//! Run `cargo build -p failoverd` first (the test drives `target/debug/failoverd`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use chaos_tests::assert_audit_verifies;
use chaos_tests::storm::{Dashboard, DashboardAnswer, Storm, Timing, object_name, viewer_get};
use failoverd::audit;
use failoverd::engine::Routing;
use serde_json::Value;

const N: usize = 50;
const FAILED_OVER: Routing = Routing::Failover { target: 0 };
/// The dashboard's rate (the figure).
const RATE: u32 = 200;
/// How often the drift checker re-reads every failed-over route (`drift::CHECK_EVERY`).
const DRIFT_EVERY: Duration = failoverd::control::drift::CHECK_EVERY;

/// VirtualService GETs per object name the API server answered in `[from, to]`.
fn vs_gets(storm: &Storm, from: SystemTime, to: SystemTime) -> HashMap<String, usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in storm.emu.reads() {
        if r.kind == "VirtualService" && r.verb == "get" && r.time >= from && r.time <= to {
            *per.entry(r.name).or_default() += 1;
        }
    }
    per
}

/// VirtualService updates per object name in `[from, to]` (each write attempt reads the
/// object once before it, so each update accounts for one GET).
fn vs_updates(storm: &Storm, from: SystemTime, to: SystemTime) -> HashMap<String, usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for w in storm.emu.writes() {
        if w.kind == "VirtualService" && w.verb == "update" && w.time >= from && w.time <= to {
            *per.entry(w.name).or_default() += 1;
        }
    }
    per
}

/// VirtualService LISTs and WATCHes (a restarted watch or a fallback relist) in `[from, to]`.
fn vs_lists_and_watches(storm: &Storm, from: SystemTime, to: SystemTime) -> usize {
    storm
        .emu
        .reads()
        .iter()
        .filter(|r| r.kind == "VirtualService" && r.verb != "get")
        .filter(|r| r.time >= from && r.time <= to)
        .count()
}

/// Every answer is a 200 whose route view came from the watch cache.
fn assert_all_from_cache(what: &str, answers: &[DashboardAnswer]) {
    let bad: Vec<String> = answers
        .iter()
        .filter(|a| {
            a.status != 200
                || a.body
                    .as_ref()
                    .is_none_or(|b| b["store"]["source"] != "watch-cache")
        })
        .take(5)
        .map(|a| format!("pb-{:04}: {} {:?}", a.idx, a.status, a.body))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: answers not 200 from the watch cache (first 5): {bad:#?}"
    );
}

/// Ensures a dashboard (200 req/s of `GET /v1/playbooks/{name}` across 50 playbooks) costs
/// the API server no request, before and during a storm where all 50 primaries fail at once;
/// that every route is written and the audit verifies; and that every playbook's answer ends
/// up showing exactly the route the API server holds.
///
/// Quiet phase (all on the primary): the controller needs no VirtualService read at all,
/// so the emulator must see zero GETs. Storm phase: the controller needs, per object, one
/// GET per write attempt (counted from the emulator's update log), one drift re-read when
/// the watch reports its update, and one per drift tick; the dashboard sends far more per
/// object than that (checked), so one GET per dashboard call could not hide in the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_reads_cost_the_api_server_nothing_during_a_storm() {
    let mut storm = Storm::new(N, Timing::FAST).await.unwrap();
    let tokens = storm.viewer_tokens().unwrap();
    let mut d = storm
        .spawn("dashboard", &["--tokens", tokens.to_str().unwrap()])
        .unwrap();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();

    // Set-up: the watch has listed (bounded wait): every playbook is served from the cache.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waiting: Vec<usize> = (0..N).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for &i in &waiting {
            let (code, body) = viewer_get(
                d.addr,
                &format!("/v1/playbooks/pb-{i:04}"),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if code != 200 || v["store"]["source"] != "watch-cache" {
                still.push(i);
            }
        }
        waiting = still;
        assert!(
            waiting.is_empty() || Instant::now() < deadline,
            "not served from the watch cache within 30 s: {waiting:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Quiet phase: 600 calls (3 s at 200/s, at most 10 s).
    let from = SystemTime::now();
    let quiet = Dashboard::start(d.addr, N, RATE, 600, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = quiet.stop().await;
    let to = SystemTime::now();
    assert!(quiet.len() >= 300, "quiet load sent only {}", quiet.len());
    assert_all_from_cache("quiet", &quiet);
    for a in &quiet {
        let b = a.body.as_ref().unwrap();
        assert_eq!(b["store"]["routing"]["to"], "primary", "{b}");
    }
    let gets = vs_gets(&storm, from, to);
    assert!(
        gets.is_empty(),
        "{} dashboard calls on a quiet fleet caused VirtualService GETs: {gets:?}",
        quiet.len()
    );
    assert_eq!(vs_lists_and_watches(&storm, from, to), 0);

    // Storm phase: the load runs from before the fault until every route is written
    // (at most 4,000 calls, 30 s).
    let from = SystemTime::now();
    let started = Instant::now();
    let load = Dashboard::start(d.addr, N, RATE, 4000, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    storm.primary.stop();
    let missing = storm
        .wait_all(FAILED_OVER, Duration::from_secs(25), &[])
        .await;
    assert!(
        missing.is_empty(),
        "never failed over: {missing:?}\n{}",
        d.logs()
    );
    // The `written` records follow each update's answer; wait for all of them (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = audit::read_all(&storm.paths.audit).unwrap_or_default();
        let written = (0..N)
            .filter(|i| {
                let pb = format!("pb-{i:04}");
                records
                    .iter()
                    .any(|r| r.playbook == pb && r.action == "failover" && r.outcome == "written")
            })
            .count();
        if written == N {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "only {written} of {N} `written` records within 20 s\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // At least 5 s of load (1,000 calls), so every object is asked for far more often than
    // the controller reads it, however fast the storm was.
    let min_end = started + Duration::from_secs(5);
    tokio::time::sleep(min_end.saturating_duration_since(Instant::now())).await;
    let answers = load.stop().await;
    let to = SystemTime::now();
    assert!(
        !records.iter().any(|r| r.outcome.starts_with("failed")),
        "a write failed during the load: {:#?}",
        records
            .iter()
            .filter(|r| r.outcome.starts_with("failed"))
            .collect::<Vec<_>>()
    );
    assert_all_from_cache("storm", &answers);

    // What the API server saw, per object, against what the controller needs.
    let window = to.duration_since(from).unwrap();
    let ticks = (window.as_secs() / DRIFT_EVERY.as_secs()) as usize + 1;
    let gets = vs_gets(&storm, from, to);
    let updates = vs_updates(&storm, from, to);
    let mut asked: HashMap<String, usize> = HashMap::new();
    for a in &answers {
        *asked.entry(object_name(a.idx)).or_default() += 1;
    }
    let mut over = Vec::new();
    for i in 0..N {
        let name = object_name(i);
        let need = updates.get(&name).copied().unwrap_or(0) + 1 + ticks;
        let got = gets.get(&name).copied().unwrap_or(0);
        let calls = asked.get(&name).copied().unwrap_or(0);
        // The check can only tell if the dashboard asked for this object more often than
        // the controller may read it.
        assert!(
            calls > 2 * need,
            "{name}: only {calls} dashboard calls in {window:?}, the controller may read it {need} times: the load is too small to tell"
        );
        if got > need {
            over.push(format!(
                "{name}: {got} GETs, controller needs at most {need}, dashboard asked {calls}"
            ));
        }
    }
    println!(
        "{} dashboard calls in {window:.1?}; VirtualService GETs {}, updates {}",
        answers.len(),
        gets.values().sum::<usize>(),
        updates.values().sum::<usize>()
    );
    assert!(
        over.is_empty(),
        "dashboard calls reached the API server: {over:#?}"
    );
    assert_eq!(vs_lists_and_watches(&storm, from, to), 0);

    // Eventually every answer shows exactly what the API server holds (bounded).
    let want_routing = serde_json::to_value(FAILED_OVER).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..N {
        loop {
            let (code, body) = viewer_get(
                d.addr,
                &format!("/v1/playbooks/pb-{i:04}"),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            let store = &v["store"];
            if store["source"] == "watch-cache"
                && store["routing"] == want_routing
                && store["route"] == storm.route(i)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pb-{i:04} never showed the cluster's route {}: {store}",
                storm.route(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    d.kill().unwrap();
    assert_audit_verifies(&storm.paths.audit);
}

/// Ensures that without a watch cache (the daemon's credentials may not `watch`, so the
/// cache never lists) a playbook view still sends no request to the API server: it answers
/// from the controller, says so (`source: controller`, no `route`), and shows the routing
/// the controller holds, before and after a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_watch_views_come_from_the_controller() {
    const M: usize = 5;
    let mut storm = Storm::new(M, Timing::FAST).await.unwrap();
    // Everything failoverd needs but `watch`.
    storm.emu.add_token(
        "no-watch-token",
        "system:serviceaccount:failoverd:no-watch",
        vec![
            chaos_tests::kube_emulator::Rule::new(
                &["get", "list", "update"],
                &["networking.istio.io"],
                &["virtualservices"],
                &["*"],
            ),
            chaos_tests::kube_emulator::Rule::new(
                &["create", "patch", "update"],
                &["", "events.k8s.io"],
                &["events"],
                &["*"],
            ),
        ],
    );
    storm
        .emu
        .write_kubeconfig(&storm.kubeconfig, "no-watch-token")
        .unwrap();
    let tokens = storm.viewer_tokens().unwrap();
    let mut d = storm
        .spawn("no-watch", &["--tokens", tokens.to_str().unwrap()])
        .unwrap();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();

    let view = |v: &Value| (v["store"]["source"].clone(), v["store"]["routing"].clone());
    let from = SystemTime::now();
    let load = Dashboard::start(d.addr, M, RATE, 400, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.stop().await;
    let to = SystemTime::now();
    assert!(answers.len() >= 200, "sent only {}", answers.len());
    let primary = serde_json::to_value(Routing::Primary).unwrap();
    for a in &answers {
        assert_eq!(a.status, 200, "{:?}", a.body);
        let b = a.body.as_ref().unwrap();
        assert_eq!(view(b), ("controller".into(), primary.clone()), "{b}");
        assert!(b["store"].get("route").is_none(), "{b}");
    }
    let gets = vs_gets(&storm, from, to);
    assert!(
        gets.is_empty(),
        "views caused VirtualService GETs: {gets:?}"
    );

    storm.primary.stop();
    let missing = storm
        .wait_all(FAILED_OVER, Duration::from_secs(30), &[])
        .await;
    assert!(
        missing.is_empty(),
        "never failed over: {missing:?}\n{}",
        d.logs()
    );
    let failed_over = serde_json::to_value(FAILED_OVER).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..M {
        loop {
            let (code, body) = viewer_get(
                d.addr,
                &format!("/v1/playbooks/pb-{i:04}"),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            if view(&v) == ("controller".into(), failed_over.clone()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pb-{i:04} never showed the controller's failover: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    d.kill().unwrap();
    assert_audit_verifies(&storm.paths.audit);
}
