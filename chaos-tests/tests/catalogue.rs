#![allow(clippy::unwrap_used)]
//! Fault catalogue, part 1: faults in the services, measured by the users' requests.
//!
//! Each test runs the real `failoverd` binary (build it first: `cargo build -p failoverd`) on
//! the demo playbook with probes every 300 ms, the file store, two stand-ins on loopback, a
//! routing proxy that follows the VirtualService like Envoy follows istiod, and a steady load of
//! 50 requests/s through that proxy. Each asserts the final routing, the audit log (chain whole,
//! the expected `intent` and `written` records) and an upper bound on the user-visible error
//! window, with generous slack for a loaded 2-core machine. Each test has its own temporary
//! directory, ports and processes, so they run in parallel; every wait is bounded.
//! Part 2 (`catalogue_control.rs`) breaks failoverd's own inputs and outputs.

use std::time::{Duration, Instant};

use chaos_tests::prometheus::ratio_slo_item;
use chaos_tests::rig::{Rig, actions, count, window};
use chaos_tests::{DR_HOST, FAST_FAILBACK, Prometheus};
use failoverd::engine::Routing;

const SEC: Duration = Duration::from_secs(1);
const INTERVAL: &str = "300ms";
const TIMEOUT: &str = "250ms";
/// Load per second through the proxy.
const RATE: u32 = 50;

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

fn on_primary(r: Routing) -> bool {
    r == Routing::Primary
}

/// Unwraps, panicking with the daemon's logs.
fn ok<T>(rig: &Rig, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", rig.d.logs()))
}

/// Audit chain whole, and exactly one `intent` and one `written` record for `action`.
fn assert_one_move(rig: &Rig, action: &str) {
    ok(rig, rig.verify_audit());
    let records = rig.audit();
    assert_eq!(
        (
            count(&records, action, "intent"),
            count(&records, action, "written")
        ),
        (1, 1),
        "one {action} intent and one written record: {:?}",
        actions(&records)
    );
}

/// Primary's listener closes: 503s (connection refused) until the route moves and the proxy
/// follows; then every request is served by the DR stand-in.
#[tokio::test(flavor = "multi_thread")]
async fn primary_down() {
    let mut rig = Rig::start("down", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    tokio::time::sleep(SEC).await;
    let fault = Instant::now();
    rig.s.primary.stop();
    ok(&rig, rig.wait_routing(failed_over, 15 * SEC).await);
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    tokio::time::sleep(SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, failed, summary) = window(&report, fault);
    eprintln!("primary down: {summary}");
    assert!(
        failed > 0,
        "the fault reached users before the move: {summary}"
    );
    assert!(w < 8 * SEC, "error window {w:?}: {summary}");
    assert_eq!(report.failed_after(settled), 0, "after the move: {summary}");
    assert!(report.served_ok_by(settled, "dr") > 0, "{summary}");
    assert_one_move(&rig, "failover");
}

/// Primary answers after 3 s (health checks time out at 250 ms, users get the proxy's 504
/// after 1 s) until the route moves.
#[tokio::test(flavor = "multi_thread")]
async fn primary_slow() {
    let rig = Rig::start("slow", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    tokio::time::sleep(SEC).await;
    let fault = Instant::now();
    rig.s.primary.set_latency(3 * SEC);
    ok(&rig, rig.wait_routing(failed_over, 15 * SEC).await);
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    tokio::time::sleep(2 * SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, failed, summary) = window(&report, fault);
    eprintln!("primary slow: {summary}");
    assert!(failed > 0, "users saw timeouts: {summary}");
    assert!(
        report
            .after(fault)
            .any(|s| s.outcome == chaos_tests::load::Outcome::Status(504)),
        "timeouts are the proxy's 504s: {summary}"
    );
    assert!(w < 10 * SEC, "error window {w:?}: {summary}");
    assert_eq!(report.failed_after(settled), 0, "after the move: {summary}");
    assert_one_move(&rig, "failover");
}

/// 30 % of the primary's answers are 500s while its health check stays green: a real
/// Prometheus scrapes the stand-in's `istio_requests_total` and the burn-rate SLO moves the
/// route. Users see about 30 % errors until then, none after.
#[tokio::test(flavor = "multi_thread")]
async fn primary_30_percent_5xx() {
    let slo = ratio_slo_item(
        "availability",
        "primary",
        "primary",
        95.0,
        ("10s", "5s", 5.0),
    );
    let mut subs: Vec<(&str, String)> = FAST_FAILBACK
        .iter()
        .map(|(a, b)| (*a, b.to_string()))
        .collect();
    subs.push(("  trigger:\n", format!("  slos:\n{slo}  trigger:\n")));
    let subs: Vec<(&str, &str)> = subs.iter().map(|(a, b)| (*a, b.as_str())).collect();
    // The daemon needs the Prometheus URL before it starts, and Prometheus the stand-ins'
    // addresses: set up the scenario first, then Prometheus, then the daemon.
    let s = chaos_tests::Scenario::new(&subs).await.unwrap();
    chaos_tests::rig::quick_probes(&s, INTERVAL, TIMEOUT).unwrap();
    let prom = Prometheus::start(&[s.primary.addr(), s.dr.addr()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut d = s.spawn_with_prometheus("5xx", &prom.url()).unwrap();
    d.wait_ready(15 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.logs()));
    let proxy = chaos_tests::rig::proxy_for(&s).await.unwrap();
    let rig = Rig { s, d, proxy };
    // Prometheus holds a rate for the primary before the fault.
    prom.wait_value(
        &chaos_tests::prometheus::ratio_expr("primary", "5s"),
        |v| v == 0.0,
        20 * SEC,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.logs()));
    let load = rig.load(RATE, 60 * SEC);
    tokio::time::sleep(SEC).await;
    let fault = Instant::now();
    rig.s.primary.set_error_share(0.3);
    let moved = rig.wait_routing(failed_over, 40 * SEC).await;
    let moved = moved.unwrap_or_else(|e| panic!("{e:#}\n{}", prom.logs()));
    assert!(failed_over(moved));
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    tokio::time::sleep(SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, failed, summary) = window(&report, fault);
    eprintln!("primary 30% 5xx: {summary}");
    // The share users saw from the primary before the move is the share the stand-in serves.
    let from_primary: Vec<_> = report
        .after(fault)
        .filter(|s| s.served_by.as_deref() == Some("primary"))
        .collect();
    let errors = from_primary.iter().filter(|s| s.failed()).count();
    let share = errors as f64 / from_primary.len().max(1) as f64;
    assert!(
        (0.2..=0.4).contains(&share),
        "error share from the primary {share:.2}: {summary}"
    );
    assert!(failed > 0, "{summary}");
    assert!(w < 45 * SEC, "error window {w:?}: {summary}");
    assert_eq!(report.failed_after(settled), 0, "after the move: {summary}");
    assert_one_move(&rig, "failover");
    drop(prom);
}

/// Primary down and up every 2 s with `minDwell: 3s`: moves happen, but two moves are never
/// closer than `minDwell` (audit timestamps of the written moves, and the proxy's route
/// changes), and once the flapping stops the route ends on the primary.
#[tokio::test(flavor = "multi_thread")]
async fn primary_flapping_respects_min_dwell() {
    let dwell = 3 * SEC;
    let subs = [
        ("after: 5s", "after: 1s"),
        ("minDwell: 5s", "minDwell: 3s"),
        ("steps: [50, 100]", "steps: [100]"),
    ];
    let mut rig = Rig::start("flap", &subs, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    rig.s.primary.flap(2 * SEC);
    tokio::time::sleep(14 * SEC).await;
    let r = rig.s.primary.restart().await;
    ok(&rig, r.map_err(Into::into));
    ok(&rig, rig.wait_routing(on_primary, 20 * SEC).await);
    let report = load.stop(4 * SEC).await;
    eprintln!("flapping: {}", report.summary(report.started));
    ok(&rig, rig.verify_audit());
    let records = rig.audit();
    let moves: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == "written" && (r.action == "failover" || r.action == "failback"))
        .collect();
    assert!(
        moves.iter().any(|r| r.action == "failover"),
        "the flapping primary caused at least one failover: {:?}",
        actions(&records)
    );
    // A write lands a little after its decision; allow that jitter, never a whole dwell.
    let slack = Duration::from_millis(400);
    for pair in moves.windows(2) {
        let gap = pair[1].time.duration_since(pair[0].time).unsigned_abs();
        assert!(
            gap + slack >= dwell,
            "moves {} and {} only {gap:?} apart (minDwell {dwell:?}): {:?}",
            pair[0].seq,
            pair[1].seq,
            actions(&records)
        );
    }
    // The first entry is the route the proxy read at start, not a move.
    let history = rig.proxy.history();
    assert!(history.len() >= 3, "the proxy followed the moves");
    for pair in history[1..].windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(
            gap + slack >= dwell,
            "the proxy's route changed twice within {gap:?}"
        );
    }
}

/// The failover target is down when the primary fails: the route stays on the primary (never
/// to a target failoverd cannot vouch for), `stuck` is raised once and audited; when both
/// come back (the primary first) nothing moves.
#[tokio::test(flavor = "multi_thread")]
async fn failover_target_down_too_stays_and_raises_stuck() {
    let mut rig = Rig::start("both", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    rig.s.dr.stop();
    tokio::time::sleep(2 * SEC).await;
    rig.s.primary.stop();
    let stuck = rig
        .s
        .wait_audit("a stuck record", |r| r.action == "stuck", 15 * SEC)
        .await;
    ok(&rig, stuck);
    tokio::time::sleep(2 * SEC).await;
    // The primary first, and seen healthy, before the DR side returns: the other order is a
    // legitimate failover (primary still unhealthy, a target healthy again).
    let r = rig.s.primary.restart().await;
    ok(&rig, r.map_err(Into::into));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = rig.s.dr.restart().await;
    ok(&rig, r.map_err(Into::into));
    tokio::time::sleep(3 * SEC).await;
    let report = load.stop(4 * SEC).await;
    eprintln!("both down: {}", report.summary(report.started));
    ok(&rig, rig.verify_audit());
    let records = rig.audit();
    assert_eq!(
        count(&records, "stuck", "noted"),
        1,
        "{:?}",
        actions(&records)
    );
    assert!(
        records.iter().all(|r| r.outcome != "intent"),
        "no move was attempted: {:?}",
        actions(&records)
    );
    assert_eq!(rig.proxy.history().len(), 1, "the route never changed");
    assert!(
        report.served_ok_by(report.started, "dr") == 0,
        "no request reached the DR stand-in"
    );
    let (r, _) = ok(&rig, rig.s.wait_routing(on_primary, SEC).await);
    assert_eq!(r, Routing::Primary);
}

/// Failed over, then the DR side dies too: the route stays (stuck, no healthy destination);
/// both recover: the route fails back to the primary and users are served again.
#[tokio::test(flavor = "multi_thread")]
async fn both_down_then_both_recover_fails_back() {
    let mut rig = Rig::start("recover", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 50 * SEC);
    rig.s.primary.stop();
    ok(&rig, rig.wait_routing(failed_over, 15 * SEC).await);
    rig.s.dr.stop();
    let stuck = rig
        .s
        .wait_audit("a stuck record", |r| r.action == "stuck", 15 * SEC)
        .await;
    ok(&rig, stuck);
    let r = rig.s.dr.restart().await;
    ok(&rig, r.map_err(Into::into));
    let r = rig.s.primary.restart().await;
    ok(&rig, r.map_err(Into::into));
    let healed = Instant::now();
    ok(&rig, rig.wait_routing(on_primary, 20 * SEC).await);
    ok(
        &rig,
        rig.wait_proxy("web.demo.svc.cluster.local", 5 * SEC).await,
    );
    tokio::time::sleep(SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let summary = report.summary(healed);
    eprintln!("both recover: {summary}");
    assert_eq!(report.failed_after(settled), 0, "{summary}");
    assert!(report.served_ok_by(settled, "primary") > 0, "{summary}");
    assert_one_move(&rig, "failover");
    let records = rig.audit();
    assert_eq!(
        count(&records, "failback", "written"),
        1,
        "{:?}",
        actions(&records)
    );
    assert_eq!(
        count(&records, "stuck", "noted"),
        1,
        "{:?}",
        actions(&records)
    );
}
