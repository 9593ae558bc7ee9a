#![allow(clippy::unwrap_used)]
//! Fault catalogue, part 2: faults in failoverd's own inputs and outputs (Prometheus, the
//! routing store, the daemon process) and the fleet blast-radius rule.
//!
//! Same set-up as `catalogue.rs`: the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`), probes every 300 ms, the file store, stand-ins on loopback, a
//! routing proxy following the VirtualService and a steady load through it. Every wait is
//! bounded; each test has its own directory, ports and processes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos_tests::prometheus::ratio_slo_item;
use chaos_tests::rig::{ReadOnly, Rig, actions, count, verify_audit, window};
use chaos_tests::{
    DEMO_PLAYBOOK, DEMO_VIRTUAL_SERVICE, DR_HOST, Daemon, DaemonPaths, FAST_FAILBACK, StandIn,
    free_addr, wait_routing,
};
use failoverd::engine::Routing;
use failoverd::playbook;
use failoverd::routing::{FileStore, RoutingStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(1);
const INTERVAL: &str = "300ms";
const TIMEOUT: &str = "250ms";
const RATE: u32 = 50;

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

fn ok<T>(rig: &Rig, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", rig.d.logs()))
}

/// Fails (with logs) unless the scenario's route stays `want` for `dur` (checked every 50 ms).
async fn assert_route_stays(rig: &Rig, want: Routing, dur: Duration) {
    let store = FileStore::new(&rig.s.paths.store);
    let start = Instant::now();
    while start.elapsed() < dur {
        let r = store.read(&rig.s.playbook).await.unwrap().routing;
        assert_eq!(
            r,
            want,
            "route changed {:?} into the window\n{}",
            start.elapsed(),
            rig.d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prometheus unreachable (nothing listens at its address) while the primary serves 50 %
/// errors: the SLO is unknown, never read as failing, so failoverd holds (no move, no intent)
/// and says why. Users keep seeing the primary's errors: the cost of not acting on no data.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_down_holds() {
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
    let nowhere = format!("http://{}", free_addr().unwrap());
    let rig = Rig::start(
        "promdown",
        &subs,
        INTERVAL,
        TIMEOUT,
        &["--prometheus", &nowhere],
    )
    .await
    .unwrap();
    let load = rig.load(RATE, 20 * SEC);
    rig.s.primary.set_error_share(0.5);
    assert_route_stays(&rig, Routing::Primary, 6 * SEC).await;
    let report = load.stop(4 * SEC).await;
    let summary = report.summary(report.started);
    eprintln!("prometheus down: {summary}");
    assert!(
        report.failed_after(report.started) > 0,
        "users saw the primary's errors: {summary}"
    );
    ok(&rig, rig.verify_audit());
    let records = rig.audit();
    assert!(
        records.iter().all(|r| r.outcome != "intent"),
        "no move attempted: {:?}",
        actions(&records)
    );
    let log = rig.d.stderr_text();
    assert!(
        log.contains("SLO signal unknown"),
        "the log says the SLO is unknown\n{}",
        rig.d.logs()
    );
}

/// The routing store's directory turns read-only (immutable) as the primary fails: the
/// failover write fails, is audited as failed and retried with backoff; once the directory is
/// writable again the route lands, once.
#[tokio::test(flavor = "multi_thread")]
async fn store_read_only_during_failover_retries_until_it_lands() {
    let mut rig = Rig::start("readonly", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    let ns_dir = rig.s.vs_path.parent().unwrap().to_path_buf();
    let mut ro = ReadOnly::hold(&ns_dir).unwrap();
    let fault = Instant::now();
    rig.s.primary.stop();
    let failed = rig
        .s
        .wait_audit(
            "a failed failover write",
            |r| r.action == "failover" && r.outcome.starts_with("failed"),
            15 * SEC,
        )
        .await;
    ok(&rig, failed);
    // Keep it broken a little longer: the retry fails again, the route has not moved.
    tokio::time::sleep(2 * SEC).await;
    assert_route_stays(&rig, Routing::Primary, Duration::from_millis(200)).await;
    ro.release().unwrap();
    ok(&rig, rig.wait_routing(failed_over, 15 * SEC).await);
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    tokio::time::sleep(SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, _, summary) = window(&report, fault);
    eprintln!("store read-only: {summary}");
    assert_eq!(report.failed_after(settled), 0, "{summary}");
    assert!(w < 20 * SEC, "error window {w:?}: {summary}");
    ok(&rig, rig.verify_audit());
    let records = rig.audit();
    let failed = records
        .iter()
        .filter(|r| r.action == "failover" && r.outcome.starts_with("failed"))
        .count();
    assert!(
        failed >= 2,
        "failed writes audited and retried: {:?}",
        actions(&records)
    );
    assert_eq!(
        count(&records, "failover", "written"),
        1,
        "{:?}",
        actions(&records)
    );
}

/// SIGKILL as soon as the failover's `intent` record is on disk (before or just after the
/// write), then a restart: the route converges to the failover target, the audit chain is
/// whole, and the move has exactly one `written` record.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_failover_then_restart_converges() {
    let mut rig = Rig::start("kill9", FAST_FAILBACK, INTERVAL, TIMEOUT, &[])
        .await
        .unwrap();
    let load = rig.load(RATE, 40 * SEC);
    let fault = Instant::now();
    rig.s.primary.stop();
    let audit = rig.s.paths.audit.clone();
    let intent = chaos_tests::wait_for("the failover intent record", 15 * SEC, || {
        failoverd::audit::read_all(&audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "failover" && r.outcome == "intent")
    })
    .await;
    ok(&rig, intent);
    rig.d.kill().unwrap();
    let killed_at = Instant::now();
    let mut d = Daemon::spawn(&rig.s.paths, "kill9-restarted").unwrap();
    d.wait_ready(15 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let moved = rig.s.wait_routing(failed_over, 15 * SEC).await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    // Let the restarted daemon run a few rounds: it must not write the move again.
    tokio::time::sleep(2 * SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, _, summary) = window(&report, fault);
    eprintln!(
        "sigkill mid-failover (killed {:?} after the fault): {summary}",
        killed_at - fault
    );
    assert!(w < 20 * SEC, "error window {w:?}: {summary}");
    verify_audit(&rig.s.paths.audit).unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    let records = rig.audit();
    assert_eq!(
        count(&records, "failover", "written"),
        1,
        "exactly one written record for the move: {:?}",
        actions(&records)
    );
}

/// Five playbooks whose primaries all fail at once with `--max-concurrent-failovers 2`: it
/// looks like failoverd's own network, so none moves and one `blast-radius` record is audited.
/// An operator failover on one of them still goes through.
#[tokio::test(flavor = "multi_thread")]
async fn blast_radius_holds_a_fleet_wide_failure() {
    const N: usize = 5;
    const TOKEN: &str = "blast-radius-test-token";
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let dr = StandIn::start("dr", loopback).await.unwrap();
    let mut primaries = Vec::new();
    for i in 0..N {
        primaries.push(
            StandIn::start(&format!("primary{i}"), loopback)
                .await
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = DaemonPaths {
        playbooks: dir.path().join("playbooks"),
        store: dir.path().join("routes"),
        audit: dir.path().join("audit.jsonl"),
        logs: dir.path().join("logs"),
    };
    std::fs::create_dir_all(&paths.playbooks).unwrap();
    std::fs::create_dir_all(paths.store.join("demo")).unwrap();
    let mut pbs = Vec::new();
    for (i, p) in primaries.iter().enumerate() {
        let text = DEMO_PLAYBOOK
            .replace(chaos_tests::DEMO_PRIMARY_ADDR, &p.addr().to_string())
            .replace(chaos_tests::DEMO_DR_ADDR, &dr.addr().to_string())
            .replace("name: demo #", &format!("name: demo{i} #"))
            .replace(
                "virtualService: { namespace: demo, name: web }",
                &format!("virtualService: {{ namespace: demo, name: web{i} }}"),
            )
            .replace("interval: 1s", &format!("interval: {INTERVAL}"))
            .replace("timeout: 500ms", &format!("timeout: {TIMEOUT}"));
        let path = paths.playbooks.join(format!("demo{i}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let pb = playbook::load_file(&path)
            .map_err(|p| anyhow::anyhow!("{}", playbook::Problems(p)))
            .unwrap()
            .playbook;
        let vs = DEMO_VIRTUAL_SERVICE.replacen("  name: web\n", &format!("  name: web{i}\n"), 1);
        assert_ne!(vs, DEMO_VIRTUAL_SERVICE, "renamed the VirtualService");
        std::fs::write(FileStore::new(&paths.store).path(&pb), vs).unwrap();
        pbs.push(pb);
    }
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
            failoverd::auth::hash_token(TOKEN)
        ),
    )
    .unwrap();
    let tokens_arg = tokens.to_str().unwrap().to_string();
    let mut d = Daemon::spawn_with(
        &paths,
        "blast",
        &[
            "--max-concurrent-failovers",
            "2",
            "--tokens",
            tokens_arg.as_str(),
        ],
    )
    .unwrap();
    d.wait_ready(15 * SEC).await.unwrap();
    for p in primaries.iter_mut() {
        p.stop();
    }
    let audit = paths.audit.clone();
    let raised = chaos_tests::wait_for("the blast-radius record", 15 * SEC, || {
        failoverd::audit::read_all(&audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "blast-radius")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert_eq!(raised.outcome, "held");
    // Several trigger lengths later, nothing has moved.
    tokio::time::sleep(3 * SEC).await;
    let store = FileStore::new(&paths.store);
    for pb in &pbs {
        let r = store.read(pb).await.unwrap().routing;
        assert_eq!(r, Routing::Primary, "{} moved\n{}", pb.name(), d.logs());
    }
    // An operator failover is never held.
    let (code, body) = post(
        d.addr,
        "/v1/playbooks/demo0/failover",
        TOKEN,
        r#"{"reason":"blast radius drill: move demo0 by hand"}"#,
    )
    .await;
    assert!(
        (200..300).contains(&code),
        "operator failover: {code} {body}\n{}",
        d.logs()
    );
    wait_routing(&paths.store, &pbs[0], failed_over, 15 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    tokio::time::sleep(SEC).await;
    for pb in &pbs[1..] {
        let r = store.read(pb).await.unwrap().routing;
        assert_eq!(r, Routing::Primary, "{} moved\n{}", pb.name(), d.logs());
    }
    verify_audit(&paths.audit).unwrap();
    let records = failoverd::audit::read_all(&paths.audit).unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "blast-radius")
            .count(),
        1,
        "raised once: {:?}",
        actions(&records)
    );
    assert!(
        records
            .iter()
            .all(|r| !(r.action == "failover" && r.outcome == "intent")),
        "no automatic failover attempted: {:?}",
        actions(&records)
    );
    assert_eq!(
        count(&records, "operator-failover", "written"),
        1,
        "{:?}",
        actions(&records)
    );
}

/// `POST path` with a bearer token and a JSON body (HTTP/1.0, bounded): status and body.
async fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("POST answered within 15 s")
        .expect("POST exchange");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
