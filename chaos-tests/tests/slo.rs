#![allow(clippy::unwrap_used)]
//! SLO scenarios against the real `failoverd` binary and a real Prometheus (build the binary
//! first: `cargo build -p failoverd`; Prometheus comes from the Debian package `prometheus`,
//! and these tests fail, never skip, without it). Each test runs its own Prometheus, daemon,
//! stand-ins and file store on its own ports; every wait is bounded.
//!
//! The SLO in every scenario: a ratio SLO on the primary stand-in's `istio_requests_total`,
//! objective 95 % (budget 0.05), one burn-rate pair `{ long: 20s, short: 5s, factor: 5 }`
//! (limit 0.25 on both windows), evaluated every second. The stand-in serves 100 synthetic
//! requests/s; Prometheus scrapes it every second.

use std::time::{Duration, Instant};

use chaos_tests::prometheus::{ratio_expr, ratio_slo_item};
use chaos_tests::{Daemon, FAST_FAILBACK, Prometheus, Scenario, run_cli};
use failoverd::engine::Routing;
use failoverd::routing::{FileStore, RoutingStore};

const SEC: Duration = Duration::from_secs(1);
const SLO_NAME: &str = "availability";
/// `failback.after` in [`FAST_FAILBACK`].
const FAILBACK_AFTER: Duration = Duration::from_secs(2);
/// The burn-rate limit: factor 5 × budget 0.05.
const LIMIT: f64 = 0.25;
/// Budget for an SLO failover: the long window must pass the limit (≈10 s of 50 % errors
/// with a full 20 s window), plus scrape, evaluation and write, with room for a loaded machine.
const SLO_FAILOVER_WITHIN: Duration = Duration::from_secs(30);
/// Budget for the failback once errors stop: the 5 s window clears, `after: 2s`, plus room.
const SLO_FAILBACK_WITHIN: Duration = Duration::from_secs(20);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

fn on_primary(r: Routing) -> bool {
    r == Routing::Primary
}

/// The playbook substitutions: the demo playbook with [`FAST_FAILBACK`] and the ratio SLO on
/// the primary stand-in (whose `destination_service` is its name, `primary`).
fn slo_subs(slo: &str) -> Vec<(&'static str, String)> {
    let mut subs: Vec<(&str, String)> = FAST_FAILBACK
        .iter()
        .map(|(a, b)| (*a, b.to_string()))
        .collect();
    subs.push(("  trigger:\n", format!("  slos:\n{slo}  trigger:\n")));
    subs
}

fn default_slo() -> String {
    ratio_slo_item(SLO_NAME, "primary", "primary", 95.0, ("20s", "5s", 5.0))
}

/// The pieces of one SLO scenario.
struct Rig {
    s: Scenario,
    prom: Prometheus,
    d: Daemon,
}

impl Rig {
    /// Stand-ins, a Prometheus scraping them, the daemon on `--prometheus`, ready, and
    /// Prometheus holding a rate for the primary over the short window.
    async fn start(name: &str) -> Rig {
        let subs = slo_subs(&default_slo());
        let subs: Vec<(&str, &str)> = subs.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let s = Scenario::new(&subs).await.unwrap();
        let prom = Prometheus::start(&[s.primary.addr(), s.dr.addr()])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let d = s.spawn_with_prometheus(name, &prom.url()).unwrap();
        let mut rig = Rig { s, prom, d };
        let ready = rig.d.wait_ready(10 * SEC).await;
        rig.ok(ready);
        let scraped = rig
            .prom
            .wait_value(&ratio_expr("primary", "5s"), |v| v == 0.0, 15 * SEC)
            .await;
        rig.ok(scraped);
        rig
    }

    /// Unwraps `r`; on error, panics with the daemon's and Prometheus's logs attached.
    fn ok<T>(&self, r: anyhow::Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", self.d.logs(), self.prom.logs()))
    }

    /// The route now.
    async fn routing(&self) -> Routing {
        let store = FileStore::new(&self.s.paths.store);
        self.ok(store
            .read(&self.s.playbook)
            .await
            .map_err(anyhow::Error::from))
            .routing
    }

    /// Panics (with logs) unless the route is `want` on every check for `dur` (every 100 ms).
    async fn assert_route_stays(&self, want: Routing, dur: Duration, why: &str) {
        let start = Instant::now();
        while start.elapsed() < dur {
            let r = self.routing().await;
            if r != want {
                panic!(
                    "{why}: route changed to {r} {:?} into the observation window\n{}\n{}",
                    start.elapsed(),
                    self.d.logs(),
                    self.prom.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's `failoverd_signal_unknown_total` for this SLO and `reason`.
    async fn unknown_count(&self, reason: &str) -> f64 {
        let (code, body) = self.ok(self.d.get("/metrics").await);
        assert_eq!(code, 200, "GET /metrics: {body}");
        chaos_tests::prometheus::sum_series(
            &body,
            "failoverd_signal_unknown_total",
            &[
                ("playbook", "demo"),
                ("signal", SLO_NAME),
                ("reason", reason),
            ],
        )
    }
}

/// Error share 50 % with /healthz green → failover on the SLO alone; errors back to 0 →
/// failback after `failback.after`.
#[tokio::test(flavor = "multi_thread")]
async fn error_share_fails_over_with_green_health_and_fails_back() {
    let rig = Rig::start("failoverd").await;
    rig.s.primary.set_error_share(0.5);
    let (_, took) = rig.ok(rig.s.wait_routing(failed_over, SLO_FAILOVER_WITHIN).await);
    eprintln!("SLO failover written {took:?} after the error share went to 50 %");
    // The probe never failed: the SLO moved the traffic.
    let (code, _) = chaos_tests::http_get(rig.s.primary.addr(), "/healthz", 2 * SEC)
        .await
        .unwrap();
    assert_eq!(code, 200, "the primary's /healthz must stay green");
    let rec = rig.ok(rig
        .s
        .wait_audit(
            "a written failover record",
            |r| r.action == "failover" && r.outcome == "written",
            2 * SEC,
        )
        .await);
    assert!(
        rec.reason.contains(SLO_NAME),
        "the failover reason must name the SLO: {}",
        rec.reason
    );

    rig.s.primary.set_error_share(0.0);
    let (_, took) = rig.ok(rig.s.wait_routing(on_primary, SLO_FAILBACK_WITHIN).await);
    eprintln!("failback written {took:?} after the errors stopped");
    assert!(
        took >= FAILBACK_AFTER,
        "failback after {took:?}, sooner than failback.after {FAILBACK_AFTER:?}"
    );
    let rec = rig.ok(rig
        .s
        .wait_audit(
            "a written failback record",
            |r| r.action == "failback" && r.outcome == "written",
            2 * SEC,
        )
        .await);
    eprintln!("failback reason: {}", rec.reason);
}

/// Prometheus killed while failed over and the errors stop → no failback while it is down
/// and `/metrics` counts the SLO unknown with reason `unreachable`; Prometheus restarted on
/// the same port and TSDB → evaluation resumes and the failback happens.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_down_holds_failover_until_it_returns() {
    let mut rig = Rig::start("failoverd").await;
    rig.s.primary.set_error_share(1.0);
    let (_, took) = rig.ok(rig.s.wait_routing(failed_over, SLO_FAILOVER_WITHIN).await);
    eprintln!("SLO failover written {took:?} after the error share went to 100 %");

    let kill = rig.prom.kill();
    rig.ok(kill);
    rig.s.primary.set_error_share(0.0);
    let down_since = Instant::now();
    // Well past `failback.after` (2 s) + `minDwell` (1 s): a healthy reading would fail back.
    rig.assert_route_stays(
        Routing::Failover { target: 0 },
        8 * SEC,
        "no failback while Prometheus is down",
    )
    .await;
    let unreachable = rig.unknown_count("unreachable").await;
    assert!(
        unreachable > 0.0,
        "failoverd_signal_unknown_total{{playbook=\"demo\",signal=\"{SLO_NAME}\",reason=\"unreachable\"}} \
         is {unreachable} after {:?} with Prometheus down\n{}",
        down_since.elapsed(),
        rig.d.get("/metrics").await.map(|x| x.1).unwrap_or_default()
    );
    eprintln!("signal_unknown{{reason=unreachable}} = {unreachable} while Prometheus was down");

    let back = rig.prom.restart().await;
    let took = rig.ok(back);
    eprintln!("Prometheus ready again {took:?} after the restart (same port, same TSDB)");
    let (_, took) = rig.ok(rig.s.wait_routing(on_primary, SLO_FAILBACK_WITHIN).await);
    eprintln!("failback written {took:?} after Prometheus came back");
    rig.ok(rig
        .s
        .wait_audit(
            "a written failback record",
            |r| r.action == "failback" && r.outcome == "written",
            2 * SEC,
        )
        .await);
    // Once back, Prometheus answers: the unreachable count stops growing.
    let a = rig.unknown_count("unreachable").await;
    tokio::time::sleep(3 * SEC).await;
    let b = rig.unknown_count("unreachable").await;
    assert_eq!(a, b, "SLO still unreachable after Prometheus came back");
}

/// A 3 s burst of 100 % errors with a full 20 s long window → the short window breaches
/// but the long one stays under the limit → no failover; sustained errors then do fail over.
#[tokio::test(flavor = "multi_thread")]
async fn short_spike_alone_does_not_fail_over() {
    let rig = Rig::start("failoverd").await;
    // The long window must hold 20 s of history, or a 3 s burst would weigh more than 3/20.
    let full = rig
        .prom
        .wait_value(
            "count_over_time(istio_requests_total{destination_service=\"primary\",response_code=\"500\"}[20s])",
            |n| n >= 19.0,
            40 * SEC,
        )
        .await;
    rig.ok(full);

    // 3 s at 100 %: at most ~300 errors of ~1,900 requests in the long window (≈ 0.16 <
    // 0.25), while the 5 s window reads ≥ 0.4 (> 0.25) for a few seconds.
    let burst = Duration::from_secs(3);
    let observe = 10 * SEC;
    let start = Instant::now();
    rig.s.primary.set_error_share(1.0);
    let (mut max_short, mut max_long) = (0.0f64, 0.0f64);
    let mut burst_on = true;
    while start.elapsed() < observe {
        if burst_on && start.elapsed() >= burst {
            rig.s.primary.set_error_share(0.0);
            burst_on = false;
        }
        let r = rig.routing().await;
        assert_eq!(
            r,
            Routing::Primary,
            "a short spike failed over {:?} after it began (short max {max_short}, long max {max_long})\n{}",
            start.elapsed(),
            rig.d.logs()
        );
        for (w, max) in [("5s", &mut max_short), ("20s", &mut max_long)] {
            if let Ok(Ok(s)) = rig.prom.query(&ratio_expr("primary", w)).await {
                *max = max.max(s.value);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if burst_on {
        rig.s.primary.set_error_share(0.0);
    }
    eprintln!(
        "spike: short (5s) window max {max_short:.3}, long (20s) window max {max_long:.3}, limit {LIMIT}"
    );
    assert!(
        max_short > LIMIT,
        "the spike never breached the short window (max {max_short}): the scenario proves nothing"
    );
    assert!(
        max_long < LIMIT,
        "the long window reached {max_long} ≥ {LIMIT}: not a short spike"
    );
    let records = rig.s.audit();
    assert!(
        !records.iter().any(|r| r.action == "failover"),
        "failover records after a short spike: {:?}",
        records
            .iter()
            .map(|r| format!("{}:{}", r.action, r.outcome))
            .collect::<Vec<_>>()
    );

    // Control: the same SLO does fail over when the errors last (the evaluation was live).
    rig.s.primary.set_error_share(1.0);
    let (_, took) = rig.ok(rig.s.wait_routing(failed_over, SLO_FAILOVER_WITHIN).await);
    eprintln!("control: sustained 100 % errors failed over after {took:?}");
}

/// `failoverd validate --prometheus URL`: a PromQL syntax error in an SLO → exit 1 naming the
/// playbook and the SLO; the same playbook with valid queries → exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn validate_checks_slo_queries_against_live_prometheus() {
    let good = default_slo();
    // An unclosed `sum(`: Prometheus answers bad_data.
    let bad = good.replacen("errors: 'sum(rate(", "errors: 'sum(sum(rate(", 1);
    assert_ne!(good, bad);
    let subs_good = slo_subs(&good);
    let subs_good: Vec<(&str, &str)> = subs_good.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let s = Scenario::new(&subs_good).await.unwrap();
    let prom = Prometheus::start(&[s.primary.addr()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let bad_path = s.dir.path().join("bad.yaml");
    std::fs::write(
        &bad_path,
        s.playbook_text.replacen(good.as_str(), bad.as_str(), 1),
    )
    .unwrap();

    let out = run_cli(
        [
            "validate",
            bad_path.to_str().unwrap(),
            "--prometheus",
            &prom.url(),
        ],
        CLI_TIMEOUT,
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "validate of a bad query: {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("playbook demo: slos {SLO_NAME}:")),
        "stderr must name the playbook and the SLO: {stderr}"
    );
    assert!(
        stderr.contains("bad_data"),
        "stderr must say Prometheus rejected the query: {stderr}"
    );

    let out = run_cli(
        [
            "validate",
            s.playbook_path.to_str().unwrap(),
            "--prometheus",
            &prom.url(),
        ],
        CLI_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "validate of the valid playbook: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
