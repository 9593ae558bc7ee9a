#![allow(clippy::unwrap_used)]
//! A `scrape` SLO against the real `failoverd` binary (build it first: `cargo build -p
//! failoverd`): the daemon reads the primary stand-in's `/metrics` directly, no Prometheus.
//! The stand-in serves 100 synthetic requests/s; its error share goes to 30 % while
//! `/healthz` stays green, so only the scrape signal can move the traffic.

use std::time::Duration;

use chaos_tests::{FAST_FAILBACK, Scenario};
use failoverd::engine::Routing;

const SEC: Duration = Duration::from_secs(1);
/// Window 3 s of 500 ms scrapes, limit 10 %: 30 % errors pass it within a few scrapes;
/// the rest is room for a loaded machine.
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);

fn scrape_slo(primary: &str) -> String {
    format!(
        "  slos:\n    - name: errors-from-sidecar\n      target: primary\n      \
         evaluationInterval: 500ms\n      timeout: 400ms\n      scrape:\n        \
         url: http://{primary}/metrics\n        metric: istio_requests_total\n        \
         matchers: {{ destination_service: primary }}\n        \
         errorWhen: {{ response_code: \"=~5..\" }}\n        window: 3s\n        above: 0.1\n"
    )
}

/// Error share 0 % stays on the primary; 30 % fails over on the scrape signal alone, with the SLO's reason in the audit record.
#[tokio::test(flavor = "multi_thread")]
async fn scrape_signal_fails_over_at_30_percent_errors() {
    let s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let text = s.playbook_text.replacen(
        "  trigger:\n",
        &format!("{}  trigger:\n", scrape_slo(&s.primary.addr().to_string())),
        1,
    );
    std::fs::write(&s.playbook_path, &text).unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    let ready = d.wait_ready(10 * SEC).await;
    ready.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));

    // With no errors the route stays put while the window fills (3 s) and well beyond.
    for _ in 0..40 {
        let (r, _) = s.wait_routing(|_| true, SEC).await.unwrap();
        assert_eq!(r, Routing::Primary, "moved without errors\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    s.primary.set_error_share(0.3);
    let moved = s
        .wait_routing(|r| r == Routing::Failover { target: 0 }, FAILOVER_WITHIN)
        .await;
    let (_, took) = moved.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    eprintln!("scrape SLO failover written {took:?} after the error share went to 30 %");
    let record = s
        .wait_audit("the failover record", |r| r.action == "failover", 5 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert!(
        record.reason.contains("errors-from-sidecar"),
        "failover reason should name the scrape SLO: {record:?}"
    );
    d.terminate(10 * SEC).unwrap();
}
