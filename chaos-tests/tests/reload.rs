#![allow(clippy::unwrap_used)]
//! Playbook hot reload against the real `failoverd` binary (build it first: `cargo build -p
//! failoverd`): add a playbook, break a file (the running set is kept and still fails over,
//! the error is reported in the log, `/readyz` and metrics), fix it. Every wait is bounded.

use std::time::Duration;

use chaos_tests::prometheus::sum_series;
use chaos_tests::{Daemon, FAST_FAILBACK, Scenario};
use failoverd::engine::Routing;

const SEC: Duration = Duration::from_secs(1);
/// One poll (2 s) plus the drain and restart, with room for a loaded machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

async fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    // NaN while the daemon restarts (nothing listens for a moment).
    match d.get("/metrics").await {
        Ok((200, body)) => sum_series(&body, name, labels),
        _ => f64::NAN,
    }
}

/// Polls every 100 ms until `f` holds, at most `within`; panics with the logs otherwise.
async fn until<F: AsyncFnMut(&Daemon) -> bool>(d: &Daemon, what: &str, within: Duration, mut f: F) {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if f(d).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out after {within:?} waiting for {what}\n{}",
        d.logs()
    );
}

/// A second playbook on its own VirtualService, probing the same stand-ins.
fn other_playbook(demo: &str) -> String {
    demo.replacen("name: demo #", "name: other #", 1).replacen(
        "virtualService: { namespace: demo, name: web }",
        "virtualService: { namespace: demo, name: other }",
        1,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn add_break_fix() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    d.wait_ready(10 * SEC).await.unwrap();
    let pid = d.pid();

    // 1. Add a playbook: applied (a restart in place, same PID), its probes run.
    let other = s.paths.playbooks.join("other.yaml");
    std::fs::write(&other, other_playbook(&s.playbook_text)).unwrap();
    until(
        &d,
        "the added playbook's probes",
        RELOAD_WITHIN,
        async |d| {
            d.get("/metrics").await.is_ok_and(|(_, body)| {
                sum_series(
                    &body,
                    "failoverd_probe_results_total",
                    &[("playbook", "other")],
                ) > 0.0
            })
        },
    )
    .await;
    assert_eq!(d.pid(), pid);
    assert!(d.is_running());
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")]
        )
        .await,
        1.0
    );

    // 2. Break the demo playbook: refused, reported with file:line:col; the old set runs on.
    let broken = s
        .playbook_text
        .replacen("failureThreshold: 3", "failureThreshold: 0", 1);
    assert_ne!(broken, s.playbook_text);
    std::fs::write(&s.playbook_path, &broken).unwrap();
    until(&d, "the refused reload", RELOAD_WITHIN, async |d| {
        metric(d, "failoverd_playbook_reload_failed", &[]).await == 1.0
    })
    .await;
    let (code, readyz) = d.get("/readyz").await.unwrap();
    assert_eq!(code, 200, "{readyz}");
    let line = s
        .playbook_text
        .lines()
        .position(|l| l.contains("failureThreshold: 3"))
        .unwrap()
        + 1;
    assert!(
        readyz.contains(&format!("demo.yaml:{line}:")) && readyz.contains("failureThreshold"),
        "/readyz should carry the refused set's problem at line {line}: {readyz}"
    );
    assert!(
        d.logs().contains("playbook reload refused"),
        "the log should say so\n{}",
        d.logs()
    );
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "invalid")]
        )
        .await,
        1.0
    );
    // The running set (threshold 3) still fails over when the primary dies.
    s.primary.stop();
    let moved = chaos_tests::wait_routing(
        &s.paths.store,
        &s.playbook,
        |r| r == Routing::Failover { target: 0 },
        RELOAD_WITHIN,
    )
    .await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert!(d.is_running());

    // 3. Put the file back as it was: the files match the running set again, so the
    //    failure clears without a restart.
    std::fs::write(&s.playbook_path, &s.playbook_text).unwrap();
    until(&d, "the refusal cleared", RELOAD_WITHIN, async |d| {
        metric(d, "failoverd_playbook_reload_failed", &[]).await == 0.0
    })
    .await;
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")]
        )
        .await,
        1.0
    );

    // 4. A real fix that changes the set: applied; the route failoverd wrote is kept.
    let fixed = s
        .playbook_text
        .replacen("failureThreshold: 3", "failureThreshold: 2", 1);
    std::fs::write(&s.playbook_path, &fixed).unwrap();
    until(&d, "the fixed set applied", RELOAD_WITHIN, async |d| {
        metric(
            d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")],
        )
        .await
            == 2.0
    })
    .await;
    d.wait_ready(20 * SEC).await.unwrap();
    assert_eq!(
        metric(&d, "failoverd_playbook_reload_failed", &[]).await,
        0.0
    );
    let (_, readyz) = d.get("/readyz").await.unwrap();
    assert!(readyz.contains("\"playbookReloadError\":null"), "{readyz}");
    let (r, _) = chaos_tests::wait_routing(&s.paths.store, &s.playbook, |_| true, SEC)
        .await
        .unwrap();
    assert_eq!(r, Routing::Failover { target: 0 }, "{}", d.logs());
    assert_eq!(d.pid(), pid);
    d.terminate(10 * SEC).unwrap();
}
