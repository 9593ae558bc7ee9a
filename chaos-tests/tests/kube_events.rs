#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Kubernetes Events about moves, under a flood of moves that outpaces their rate limit.
//!
//! What must hold: a move's Event is either sent or counted as dropped
//! (`failoverd_kube_events_dropped_total`), never lost silently and never sent twice; the
//! backlog of Events waiting for the event rate limit is bounded (a storm of moves kept
//! every unsent Event in memory, minutes late, before the bound: about 2 KB per move); and
//! the moves themselves never wait for an Event. The memory side is measured by the
//! `trace_collector_down` bench (RSS through a 10-minute storm), not by a timed test.
//!
//! The oracle is the API server emulator's own record of the Event requests it answered,
//! not anything failoverd reports about its Events.

use std::time::{Duration, Instant};

use chaos_tests::storm::{Storm, Timing};

/// The sum of every sample of `name` (all label sets) in a Prometheus text exposition.
fn sum(metrics: &str, name: &str) -> f64 {
    chaos_tests::prometheus::sum_series(metrics, name, &[])
}

/// Ensures that 50 playbooks failing over and back every 3 s for 30 s (about 16 moves a
/// second against an Event rate of 10 a second) send or count every move's Event: once the
/// storm ends and the backlog drains, the Events the API server stored (creates and series
/// updates it answered) plus the dropped count equal the moves, and some were dropped (the
/// flood really outpaced the limit, so the bound was exercised).
#[tokio::test]
async fn every_moves_event_is_sent_or_counted_and_the_backlog_is_bounded() {
    let storm = Storm::new(50, Timing::FAST).await.unwrap();
    storm.automatic_failback().unwrap();
    let mut d = storm.spawn("events", &[]).unwrap();
    d.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));

    let end = Instant::now() + Duration::from_secs(30);
    let mut unhealthy = false;
    while Instant::now() < end {
        unhealthy = !unhealthy;
        storm
            .primary
            .set_health_status(if unhealthy { 503 } else { 200 });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(d.is_running(), "the daemon died:\n{}", d.logs());
    }
    storm.primary.set_health_status(200);

    // The storm is over once every playbook is back on its primary; the backlog (64 Events
    // at 10 a second) drains within seconds after that.
    let back = storm
        .wait_all(
            failoverd::engine::Routing::Primary,
            Duration::from_secs(60),
            &[],
        )
        .await;
    assert!(
        back.is_empty(),
        "not back on the primary: {back:?}\n{}",
        d.logs()
    );
    let sent = || {
        storm
            .emu
            .writes()
            .iter()
            .filter(|w| w.kind == "Event" && w.resource_version.is_some())
            .count() as f64
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (moves, dropped, events) = loop {
        let (_, m) = d.get("/metrics").await.unwrap();
        let moves = sum(&m, "failoverd_failovers_total") + sum(&m, "failoverd_failbacks_total");
        let dropped = sum(&m, "failoverd_kube_events_dropped_total");
        let events = sent();
        if events + dropped >= moves || Instant::now() > deadline {
            break (moves, dropped, events);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Nothing more arrives after the balance is reached: no Event is sent twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent(), events, "Events kept arriving after the balance");
    assert!(moves >= 200.0, "the storm made only {moves} moves");
    assert!(
        dropped > 0.0,
        "{moves} moves in 30 s never outpaced the Event rate limit: the bound was not exercised"
    );
    assert_eq!(
        events + dropped,
        moves,
        "{events} Events stored + {dropped} dropped != {moves} moves"
    );
    d.terminate(Duration::from_secs(20)).unwrap();
}
