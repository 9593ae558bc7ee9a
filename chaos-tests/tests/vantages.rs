#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Agreement across vantage points, end to end: two real replicas with leader election on the
//! Kubernetes API server emulator, exchanging verdicts over `GET /v1/vantage`, three playbooks
//! on one primary stand-in. replica-a (the leader) probes the primary through a path switch
//! that can blackhole it (accepts and never answers: a node that lost its route to the
//! primary's zone); replica-b probes it directly. See `support::vantage`.

use std::time::{Duration, Instant, SystemTime};

use chaos_tests::wait_for;

mod support;

use support::leader::{SEC, request};
use support::vantage::{EXCHANGE, Fleet, INTERVAL, PLAYBOOKS, THRESHOLD, metric, playbook_detail};

/// The reason of the leader's first move on `web`, once its write is reported (bounded).
async fn first_move(a: &support::leader::Replica) -> String {
    let start = Instant::now();
    loop {
        let d = playbook_detail(a, "web").await.unwrap_or_default();
        if let Some(r) = d["status"]["transitions"][0]["reason"].as_str() {
            return r.to_string();
        }
        assert!(
            start.elapsed() < 10 * SEC,
            "no move shown: {d}\n{}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the leader decided each playbook's failover, after `fault`: its JSON log line of the
/// move (`failing over to`), in [`PLAYBOOKS`] order.
fn decisions(a: &support::leader::Replica, fault: SystemTime) -> Vec<Option<Duration>> {
    let fault = jiff::Timestamp::try_from(fault).unwrap();
    let text = std::fs::read_to_string(&a.stderr).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    PLAYBOOKS
        .iter()
        .map(|p| {
            lines.iter().find_map(|l| {
                let msg = l["fields"]["message"].as_str()?;
                if l["fields"]["playbook"] != *p || !msg.contains("failing over to") {
                    return None;
                }
                let t: jiff::Timestamp = l["timestamp"].as_str()?.parse().ok()?;
                let d = t.duration_since(fault);
                (!d.is_negative()).then(|| d.unsigned_abs())
            })
        })
        .collect()
}

/// Detection alone: `interval × threshold`.
fn detection() -> Duration {
    INTERVAL * THRESHOLD
}

/// Ensures a leader that alone loses its path to the primary moves nothing: every
/// VirtualService unchanged for `interval × threshold + 3 exchange intervals` (and more) after
/// the fault; the leader's `explain` names the disagreement (itself unhealthy, replica-b
/// healthy); one `suspect-observer` event names replica-a with the three playbooks, and the
/// episode is raised once, not per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_alone_blind_holds_and_raises_suspect_observer() {
    let fleet = Fleet::new("").await;
    let (a, b) = fleet.pair().await;
    fleet.switch.set_blackhole(true);
    let fault = Instant::now();
    let watch = detection() + EXCHANGE * 3 + 2 * SEC;
    while fault.elapsed() < watch {
        assert_eq!(
            fleet.vs_updates(),
            0,
            "a VirtualService was written {:?} after the leader alone lost its path\n{}\n{}",
            fault.elapsed(),
            a.logs(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in PLAYBOOKS {
        let d = playbook_detail(&a, name).await.unwrap();
        let explain = d["status"]["explain"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            explain.contains("vantages disagree")
                && explain.contains("here it is unhealthy")
                && explain.contains("replica-b [zone zone-1] sees it healthy")
                && explain.contains("1 of 2 live vantages see it failing, 2 must"),
            "{name}: {explain}"
        );
        assert_eq!(d["status"]["phase"]["phase"], "suspect", "{name}: {d}");
        // The standby sees it healthy and says so.
        let d = playbook_detail(&b, name).await.unwrap();
        assert_eq!(d["status"]["explain"], "primary healthy", "{name}: {d}");
    }
    let events = wait_for("a suspect-observer event", 10 * SEC, || {
        let e = fleet.hook.events("suspect-observer");
        (!e.is_empty()).then_some(e)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    let reason = events[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("vantage replica-a (this replica) alone sees 3 primaries failing")
            && PLAYBOOKS.iter().all(|p| reason.contains(p)),
        "{}",
        events[0]
    );
    assert_eq!(events[0]["severity"], "warning", "{}", events[0]);
    // Once per episode: several more exchange rounds raise nothing new.
    tokio::time::sleep(EXCHANGE * 4).await;
    assert_eq!(fleet.hook.events("suspect-observer").len(), 1);
    assert_eq!(
        metric(
            &a,
            "failoverd_vantage_suspect_observer_total{vantage=\"replica-a\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(fleet.vs_updates(), 0, "{}", a.logs());
    assert!(fleet.hook.events("failover").is_empty());
}

/// Ensures a primary every vantage loses is failed over, the move decided within
/// `interval × threshold` + one exchange interval of the fault for all three playbooks (the
/// decision's own log time; the route written is then one store round trip, printed), by the
/// leader with the vantages agreeing (no fallback), and raises no `suspect-observer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_vantages_lose_it_fail_over_within_one_exchange_interval() {
    let mut fleet = Fleet::new("").await;
    let (a, b) = fleet.pair().await;
    let fault = SystemTime::now();
    fleet.primary.stop();
    println!("fault at {:?}", jiff::Timestamp::try_from(fault).unwrap());
    wait_for("all three failed over", 20 * SEC, || {
        PLAYBOOKS.iter().all(|p| fleet.failed_over(p)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.logs(), b.logs()));
    // Fault -> decided (the leader's log of the move, stamped when `decide` returned it) is
    // what agreement bounds; decided -> written is the store's round trip (DESIGN's timing
    // budget), printed beside it and measured by `benches/vantages.rs`.
    let budget = detection() + EXCHANGE;
    let decided = decisions(&a, fault);
    let written = fleet.first_updates(fault);
    println!(
        "fault -> decided: {decided:?}; fault -> route written: {written:?} (budget {budget:?})"
    );
    assert!(
        decided.iter().all(|t| t.is_some_and(|t| t <= budget)),
        "not every failover decided within {budget:?} of the fault: {decided:?}\n{}\n{}",
        a.logs(),
        b.logs()
    );
    let writers: Vec<String> = fleet
        .emu
        .writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.verb != "create" && w.status < 300)
        .map(|w| w.identity)
        .collect();
    assert!(writers.iter().all(|w| w == "replica-a"), "{writers:?}");
    let moved = first_move(&a).await;
    assert!(
        moved.starts_with("primary unhealthy") && !moved.contains("decided on this vantage's view"),
        "{moved}"
    );
    let (_, page) = request(a.addr, "GET", "/metrics", None).await.unwrap();
    assert!(
        !page
            .lines()
            .any(|l| l.starts_with("failoverd_vantage_fallback_total")),
        "no fallback is counted: {page}"
    );
    assert!(fleet.hook.events("suspect-observer").is_empty());
}

/// Asserts that the leader, deciding alone, wrote every playbook's failover within
/// `interval × threshold` + three exchange intervals + one probe interval of `fault` (when
/// the standby was `what`: killed or stopped), and counted one `no-live-peer` fallback per
/// playbook.
async fn moved_alone(fleet: &Fleet, a: &support::leader::Replica, fault: SystemTime, what: &str) {
    let budget = detection() + EXCHANGE * 3 + INTERVAL;
    let seen = fleet.first_updates(fault);
    println!("{what} -> route written: {seen:?} (budget {budget:?})");
    assert!(
        seen.iter().all(|t| t.is_some_and(|t| t <= budget)),
        "{seen:?} (budget {budget:?})\n{}",
        a.logs()
    );
    assert_eq!(
        metric(
            a,
            "failoverd_vantage_fallback_total{reason=\"no-live-peer\"}"
        )
        .await,
        Some(3.0)
    );
}

/// Ensures a standby killed with SIGKILL cannot block a failover: the leader, alone blind to
/// the primary from the same moment, decides on its own view once the standby's last report
/// is three exchange intervals old, failing over within `interval × threshold` + three
/// exchange intervals + one probe interval (its next decision) of the kill, counting the
/// fallback with its reason and saying so in the move's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_standby_never_blocks_a_failover() {
    let fleet = Fleet::new(", vantages: { min: 2 }").await;
    let (a, mut b) = fleet.pair().await;
    let fault = SystemTime::now();
    b.kill();
    fleet.switch.set_blackhole(true);
    wait_for("all three failed over", 30 * SEC, || {
        PLAYBOOKS.iter().all(|p| fleet.failed_over(p)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    moved_alone(&fleet, &a, fault, "kill").await;
    let moved = first_move(&a).await;
    assert!(
        moved.contains("decided on this vantage's view: no-live-peer"),
        "{moved}"
    );
    let d = playbook_detail(&a, "web").await.unwrap();
    assert_eq!(d["vantages"]["peers"][0]["live"], false, "{d}");
}

/// Ensures a standby that lags (stopped with SIGSTOP: it holds its connections and answers
/// nothing) cannot block a failover either: its reports stop, and once the last is three
/// exchange intervals old the leader decides on its own view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_standby_never_blocks_a_failover() {
    let fleet = Fleet::new("").await;
    let (a, b) = fleet.pair().await;
    let pid = b.child.id().to_string();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stop.success());
    let fault = SystemTime::now();
    fleet.switch.set_blackhole(true);
    let moved = wait_for("all three failed over", 30 * SEC, || {
        PLAYBOOKS.iter().all(|p| fleet.failed_over(p)).then_some(())
    })
    .await;
    // Resumed before any assertion, so the process can be killed and reaped on drop.
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    moved.unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    moved_alone(&fleet, &a, fault, "stop").await;
}
