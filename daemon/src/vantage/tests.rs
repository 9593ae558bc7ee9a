//! The vantage store and its config: what a peer's report becomes for the engine, when it
//! stops counting, and which configs are refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::{
    Identity, PlaybookView, Report, TargetView, VantageConfig, VantageMetrics, VantageSettings,
    Vantages,
};
use crate::engine::{Health, SignalKind, Verdict};
use crate::playbook::Target;

fn settings(peers: &[&str]) -> VantageSettings {
    VantageSettings {
        identity: Identity {
            name: "a".into(),
            zone: Some("z1".into()),
        },
        peers: peers.iter().map(|p| p.to_string()).collect(),
        interval: Duration::from_secs(1),
        token_file: None,
        ca_file: None,
        suspect_after: 3,
    }
}

fn report(name: &str, primary: &str) -> Report {
    Report {
        vantage: Identity {
            name: name.into(),
            zone: Some("z2".into()),
        },
        evaluated_at: Timestamp::UNIX_EPOCH,
        version: 1,
        playbooks: vec![PlaybookView {
            name: "pb".into(),
            targets: vec![
                TargetView {
                    target: "primary".into(),
                    state: primary.into(),
                    reason: "p: refused".into(),
                },
                TargetView {
                    target: "failover[0]".into(),
                    state: "healthy".into(),
                    reason: "healthy since then".into(),
                },
            ],
        }],
    }
}

/// Ensures a peer's report becomes one Vantage observation per target, named after the peer,
/// stamped with the arrival time and live for three intervals; a peer failing below its
/// trigger is neither agreement nor healthy; a playbook the peer lacks reads unknown.
#[test]
fn report_becomes_observations() {
    let v = Vantages::new(&settings(&["http://b"]), VantageMetrics::default());
    let arrived = Instant::now();
    v.accept("http://b", report("b", "suspect"), arrived);
    let stamp = Timestamp::from_second(1_800_000_000).unwrap();
    let obs = v.observations("pb", |i| {
        assert_eq!(i, arrived);
        stamp
    });
    assert_eq!(obs.len(), 2);
    assert!(obs.iter().all(|o| o.kind == SignalKind::Vantage
        && o.signal == "b"
        && o.at == stamp
        && o.max_age == Duration::from_secs(3)
        && o.detail == "zone z2"));
    assert_eq!(obs[0].target, Target::Primary);
    assert_eq!(
        obs[0].health,
        Health::Unknown("failing below its trigger: p: refused".into())
    );
    assert_eq!(obs[1].target, Target::Failover(0));
    assert_eq!(obs[1].health, Health::Healthy);
    let other = v.observations("other", |_| stamp);
    assert_eq!(other.len(), 1);
    assert!(matches!(&other[0].health, Health::Unknown(r) if r.contains("not loaded")));
}

/// Ensures the version moves when a peer's verdicts change and not when the same verdicts
/// arrive again (the controller decides again only on a change).
#[test]
fn version_moves_on_change_only() {
    let v = Vantages::new(&settings(&["http://b"]), VantageMetrics::default());
    let t0 = Instant::now();
    v.accept("http://b", report("b", "healthy"), t0);
    let first = v.version();
    v.accept(
        "http://b",
        report("b", "healthy"),
        t0 + Duration::from_millis(500),
    );
    assert_eq!(v.version(), first);
    v.accept(
        "http://b",
        report("b", "unhealthy"),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(v.version(), first + 1);
}

/// Ensures this replica's own entry in the shared peer list is dropped once recognised.
#[test]
fn own_entry_is_dropped() {
    let v = Vantages::new(
        &settings(&["http://a", "http://b"]),
        VantageMetrics::default(),
    );
    v.mark_self("http://a");
    assert_eq!(v.status().peers.len(), 1);
    assert_eq!(v.status().peers[0].url, "http://b");
}

/// Ensures the published verdicts are served, and served as unknown once the controller
/// has not refreshed them for three intervals.
#[tokio::test(start_paused = true)]
async fn own_report_goes_unknown_when_stale() {
    let v = Vantages::new(&settings(&["http://b"]), VantageMetrics::default());
    assert!(v.report().playbooks.is_empty());
    v.publish(
        0,
        super::views(
            "pb",
            &[(
                Target::Primary,
                Verdict::Unhealthy {
                    reason: "p: refused".into(),
                },
            )],
        ),
    );
    let r = v.report();
    assert_eq!(r.vantage.name, "a");
    assert_eq!(r.playbooks[0].targets[0].state, "unhealthy");
    tokio::time::advance(Duration::from_millis(3100)).await;
    let r = v.report();
    assert_eq!(r.playbooks[0].targets[0].state, "unknown");
    assert!(
        r.playbooks[0].targets[0]
            .reason
            .contains("has not evaluated for"),
        "{:?}",
        r.playbooks[0].targets[0]
    );
}

/// Ensures bad `vantage:` settings are refused naming the key.
#[test]
fn bad_config_is_refused_naming_the_key() {
    let cases = [
        ("interval: 10ms", "vantage.interval"),
        ("peers: [\"ftp://x\"]\ntokenFile: /t", "vantage.peers[0]"),
        ("peers: [\"not a url\"]\ntokenFile: /t", "vantage.peers[0]"),
        ("peers: [\"http://x:8080\"]", "vantage.tokenFile"),
        ("suspectAfter: 0", "vantage.suspectAfter"),
    ];
    for (yaml, key) in cases {
        let c: VantageConfig = serde_saphyr::from_str(yaml).unwrap();
        let e = c.resolve(Some("lease-id")).unwrap_err();
        assert!(e.starts_with(key), "{yaml}: {e}");
    }
    let c: VantageConfig = serde_saphyr::from_str(
        "zone: eu-1\npeers: [\"http://x:8080/\"]\ntokenFile: /t\ninterval: 2s",
    )
    .unwrap();
    let s = c.resolve(Some("lease-id")).unwrap();
    assert_eq!(s.identity.zone.as_deref(), Some("eu-1"));
    assert_eq!(s.peers, vec!["http://x:8080".to_string()]);
    assert_eq!(s.interval, Duration::from_secs(2));
    assert!(serde_saphyr::from_str::<VantageConfig>("zones: x").is_err());
}

/// Ensures the long poll answers at once when the verdicts already differ from the version
/// the caller saw, as soon as a verdict changes while it waits (not at the interval), and
/// after one interval when nothing changes; a running clock in a reason is not a change.
#[tokio::test(start_paused = true)]
async fn long_poll_answers_on_change_or_after_one_interval() {
    let v = std::sync::Arc::new(Vantages::new(
        &settings(&["http://b"]),
        VantageMetrics::default(),
    ));
    let healthy = |since: i64| {
        super::views(
            "pb",
            &[(
                Target::Primary,
                Verdict::Healthy {
                    since: Timestamp::from_second(since).unwrap(),
                },
            )],
        )
    };
    v.publish(0, healthy(1));
    let seen = v.report().version;
    // Already newer than what the caller saw: at once.
    let start = Instant::now();
    assert_eq!(v.report_after(seen - 1).await.version, seen);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Nothing changes (a new `since` is not a new state): one interval.
    let start = Instant::now();
    let waiting = tokio::spawn({
        let v = v.clone();
        async move { v.report_after(seen).await }
    });
    // Let it start waiting before the clock moves.
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(300)).await;
    v.publish(0, healthy(2));
    let r = waiting.await.unwrap();
    assert_eq!(r.version, seen);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // A change while waiting: answered then.
    let start = Instant::now();
    let waiting = tokio::spawn({
        let v = v.clone();
        async move { v.report_after(seen).await }
    });
    // Let it start waiting before the clock moves.
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(300)).await;
    v.publish(
        0,
        super::views(
            "pb",
            &[(
                Target::Primary,
                Verdict::Unhealthy {
                    reason: "p: refused".into(),
                },
            )],
        ),
    );
    let r = waiting.await.unwrap();
    assert_eq!(r.version, seen + 1);
    assert_eq!(r.playbooks[0].targets[0].state, "unhealthy");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}
