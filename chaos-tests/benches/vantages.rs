//! Fault → route written with agreement across vantages: two real replicas (release binary)
//! with leader election on the API server emulator, exchanging verdicts every second, three
//! playbooks with `trigger: { failureThreshold: 3, vantages: { min: 2 } }` and probes every
//! 1 s. Each fault stops the primary stand-in (both vantages lose it); measured from the
//! stop until each VirtualService's update is answered by the API server. Then the primary
//! comes back, an operator fails each playbook back, and the next fault waits until both
//! replicas see the primary healthy again. p50/p99 over every route of every fault, beside
//! the goal `interval × threshold + 1 s` (4 s).
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench vantages`, or with
//! a debug harness driving the release daemon (how the README's numbers were taken):
//! `FAILOVERD_BIN=$PWD/target/release/failoverd cargo bench --profile dev -p chaos-tests
//! --bench vantages` (`FAULTS` changes the 20 faults). Bounded: every wait ≤ 30 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use chaos_tests::{percentile, wait_for};

#[path = "../tests/support/mod.rs"]
mod support;

use support::leader::{SEC, request};
use support::vantage::{EXCHANGE, Fleet, INTERVAL, PLAYBOOKS, THRESHOLD, playbook_detail};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let faults: usize = std::env::var("FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut fleet = Fleet::new(", vantages: { min: 2 }").await;
    let (a, b) = fleet.pair().await;
    let goal = INTERVAL * THRESHOLD + SEC;
    let mut samples: Vec<Duration> = Vec::new();
    let started = Instant::now();
    for i in 0..faults {
        let fault = SystemTime::now();
        fleet.primary.stop();
        wait_for("every route failed over", 30 * SEC, || {
            PLAYBOOKS.iter().all(|p| fleet.failed_over(p)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("fault {i}: {e}\n{}\n{}", a.logs(), b.logs()));
        let seen = fleet.first_updates(fault);
        assert!(seen.iter().all(Option::is_some), "fault {i}: {seen:?}");
        samples.extend(seen.into_iter().flatten());
        fleet.primary.restart().await.unwrap();
        // Both vantages see the primary healthy again before the operator fails back.
        for r in [&a, &b] {
            let start = Instant::now();
            loop {
                let mut all = true;
                for p in PLAYBOOKS {
                    let d = playbook_detail(r, p).await.unwrap_or_default();
                    all &= d["status"]["signals"][0]["health"]["state"] == "healthy"
                        && d["status"]["signals"][0]["streak"].as_u64() >= Some(2);
                }
                if all {
                    break;
                }
                assert!(
                    start.elapsed() < 30 * SEC,
                    "fault {i}: primary not healthy again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for p in PLAYBOOKS {
            let (code, body) = request(
                a.addr,
                "POST",
                &format!("/v1/playbooks/{p}/failback"),
                Some(r#"{"reason":"vantages bench: next fault"}"#),
            )
            .await
            .unwrap();
            assert!((200..300).contains(&code), "failback {p}: {code} {body}");
        }
        wait_for("every route back on the primary", 30 * SEC, || {
            PLAYBOOKS
                .iter()
                .all(|p| !fleet.failed_over(p))
                .then_some(())
        })
        .await
        .unwrap();
        // The failback started a move: `minDwell` (5 s) would hold the next automatic
        // failover and the bench would measure the dwell, not the detection.
        tokio::time::sleep(Duration::from_millis(5500)).await;
    }
    samples.sort();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "vantages: {faults} faults x {} routes, 2 replicas, vantages min 2, probes {INTERVAL:?} x {THRESHOLD}, exchange {EXCHANGE:?} ({:.0} s)",
        PLAYBOOKS.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "fault -> route written: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (goal <= {} ms)",
        ms(percentile(&samples, 50)),
        ms(percentile(&samples, 99)),
        ms(samples.last().copied()),
        goal.as_millis()
    );
}
