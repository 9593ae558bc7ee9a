//! Agreement across vantages: table tests with fixed instants and a property over random
//! peer views.
#![allow(clippy::unwrap_used)]

use std::time::Duration as StdDuration;

use jiff::Timestamp;
use proptest::prelude::*;

use super::vantages::{
    Agreement, FALLBACK_FEWER_THAN_MIN, FALLBACK_NO_LIVE_PEER, agreement, lone_observers,
};
use super::{
    Action, Actor, Decision, Health, Hold, MoveKind, Observation, Overrides, Phase, Routing,
    SignalKind, State, decide,
};
use crate::playbook::test_support::Validate;
use crate::playbook::{self, Playbook, Target};

const BASE: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: svc }
spec:
  virtualService: { namespace: ns, name: svc }
  primary: { host: svc.ns.svc.cluster.local }
  failover:
    - { host: svc.dr.svc.cluster.local }
    - { host: svc.dr2.svc.cluster.local }
  probes:
    - { name: p, target: primary, http: { url: "http://127.0.0.1:9/healthz" }, interval: 1s, timeout: 500ms }
    - { name: f0, target: "failover[0]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
    - { name: f1, target: "failover[1]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
  trigger: { failureThreshold: 3 }
  minDwell: 0s
"#;

/// Three exchange intervals of 1 s: how long a peer's report stays live.
const LIVE: StdDuration = StdDuration::from_secs(3);

fn playbook(min: Option<u32>) -> Playbook {
    let y = match min {
        Some(m) => BASE.replace(
            "trigger: { failureThreshold: 3 }",
            &format!("trigger: {{ failureThreshold: 3, vantages: {{ min: {m} }} }}"),
        ),
        None => BASE.to_string(),
    };
    let pb = playbook::parse("test.yaml", &y).unwrap();
    assert_eq!(pb.validate("test.yaml"), vec![], "fixture must be valid");
    pb
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn down() -> Health {
    Health::Unhealthy("connect: connection refused".into())
}

/// This replica's own probes: the primary failing past the threshold (or healthy), both
/// failover targets healthy.
fn local(primary_down: bool, now: Timestamp) -> Vec<Observation> {
    let probe = |name: &str, target, health| Observation {
        signal: name.into(),
        kind: SignalKind::Probe,
        target,
        health,
        streak: 5,
        streak_since: at(-10),
        at: now,
        max_age: LIVE,
        detail: String::new(),
    };
    vec![
        probe(
            "p",
            Target::Primary,
            if primary_down {
                down()
            } else {
                Health::Healthy
            },
        ),
        probe("f0", Target::Failover(0), Health::Healthy),
        probe("f1", Target::Failover(1), Health::Healthy),
    ]
}

/// A peer's verdict on `target`, received `age` seconds before `now`.
fn peer(name: &str, target: Target, health: Health, age: i64, now: Timestamp) -> Observation {
    Observation {
        signal: name.into(),
        kind: SignalKind::Vantage,
        target,
        health,
        streak: 0,
        streak_since: now,
        at: now
            .checked_sub(jiff::SignedDuration::from_secs(age))
            .unwrap(),
        max_age: LIVE,
        detail: format!("zone {name}-zone"),
    }
}

fn decide_normal(pb: &Playbook, obs: &[Observation], ov: &Overrides, now: Timestamp) -> Decision {
    decide(pb, &State::default(), obs, ov, now)
}

fn routes(d: &Decision) -> Vec<(Routing, MoveKind)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Route { to, kind, .. } => Some((*to, *kind)),
            _ => None,
        })
        .collect()
}

const TO_F0: (Routing, MoveKind) = (Routing::Failover { target: 0 }, MoveKind::Failover);

/// Ensures a primary that only this replica sees failing is held (no move, phase Suspect),
/// and the explanation names what each vantage sees.
#[test]
fn lone_view_holds_and_names_each_vantage() {
    let pb = playbook(None);
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, Health::Healthy, 0, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![]);
    assert!(
        matches!(d.state.phase, Phase::Suspect { .. }),
        "{:?}",
        d.state.phase
    );
    assert!(d.explain.contains("vantages disagree"), "{}", d.explain);
    assert!(
        d.explain
            .contains("here it is unhealthy (p: connect: connection refused)"),
        "{}",
        d.explain
    );
    assert!(
        d.explain.contains("b [zone b-zone] sees it healthy"),
        "{}",
        d.explain
    );
    assert!(
        d.explain
            .contains("1 of 2 live vantages see it failing, 2 must"),
        "{}",
        d.explain
    );
    assert_eq!(d.fallback, None);
}

/// Ensures a primary every vantage sees failing is failed over, with no fallback reported.
#[test]
fn agreement_fails_over() {
    let pb = playbook(None);
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 1, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, None);
}

/// Ensures a peer whose report is older than three exchange intervals no longer counts:
/// this replica decides on its own view, and says so with the bounded reason.
#[test]
fn dead_peer_falls_back_to_own_view() {
    let pb = playbook(Some(2));
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, Health::Healthy, 4, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, Some(FALLBACK_NO_LIVE_PEER));
    assert!(
        d.explain
            .contains("decided on this vantage's view: no-live-peer"),
        "{}",
        d.explain
    );
    // At exactly three intervals it is still live, and its healthy view holds the move.
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, Health::Healthy, 3, now));
    assert_eq!(
        routes(&decide_normal(&pb, &obs, &Overrides::default(), now)),
        vec![]
    );
}

/// Ensures a live peer that cannot tell (Unknown) is not counted as agreeing: missing peer
/// data never confirms a failure.
#[test]
fn unknown_peer_is_not_agreement() {
    let pb = playbook(None);
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer(
        "b",
        Target::Primary,
        Health::Unknown("no result for 5s".into()),
        0,
        now,
    ));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![]);
    assert!(
        d.explain
            .contains("b [zone b-zone] cannot tell (no result for 5s)"),
        "{}",
        d.explain
    );
}

/// Ensures `min: 2` among three live vantages fails over when two see the primary failing,
/// while the default (all live vantages) holds on the same views.
#[test]
fn min_two_of_three() {
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 0, now));
    obs.push(peer("c", Target::Primary, Health::Healthy, 0, now));
    let d = decide_normal(&playbook(Some(2)), &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, None);
    let d = decide_normal(&playbook(None), &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![]);
    assert!(
        d.explain
            .contains("2 of 3 live vantages see it failing, 3 must"),
        "{}",
        d.explain
    );
}

/// Ensures `min` above the live vantages is capped (a dead replica cannot block a failover)
/// and the move reports the fallback reason.
#[test]
fn min_above_live_is_capped_and_reported() {
    let pb = playbook(Some(3));
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 0, now));
    obs.push(peer("c", Target::Primary, Health::Healthy, 30, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, Some(FALLBACK_FEWER_THAN_MIN));
}

/// Ensures `min: 1` turns agreement off: this replica's view alone decides, with no fallback.
#[test]
fn min_one_is_this_view_alone() {
    let pb = playbook(Some(1));
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, Health::Healthy, 0, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, None);
}

/// Ensures one replica with no peers at all decides as before (no fallback is reported).
#[test]
fn no_peers_known_is_unchanged() {
    let pb = playbook(Some(2));
    let now = at(0);
    let d = decide_normal(&pb, &local(true, now), &Overrides::default(), now);
    assert_eq!(routes(&d), vec![TO_F0]);
    assert_eq!(d.fallback, None);
}

/// Ensures a failover target a live peer sees unhealthy is skipped for the next one, and
/// that with every target vetoed the playbook is stuck with the vetoes named.
#[test]
fn target_seen_unhealthy_elsewhere_is_not_safe() {
    let pb = playbook(None);
    let now = at(0);
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 0, now));
    obs.push(peer("b", Target::Failover(0), down(), 0, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 1 }, MoveKind::Failover)]
    );
    // A stale veto does not count.
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 0, now));
    obs.push(peer("c", Target::Failover(0), down(), 9, now));
    assert_eq!(
        routes(&decide_normal(&pb, &obs, &Overrides::default(), now)),
        vec![TO_F0]
    );
    // Both vetoed: stuck, naming them.
    let mut obs = local(true, now);
    obs.push(peer("b", Target::Primary, down(), 0, now));
    obs.push(peer("b", Target::Failover(0), down(), 0, now));
    obs.push(peer("b", Target::Failover(1), down(), 0, now));
    let d = decide_normal(&pb, &obs, &Overrides::default(), now);
    assert_eq!(routes(&d), vec![]);
    assert!(d.state.stuck);
    assert!(
        d.explain
            .contains("seen unhealthy from another vantage: failover[0]: b"),
        "{}",
        d.explain
    );
}

/// Ensures an operator's hold moves traffic whatever the vantages say about the primary.
#[test]
fn operator_moves_are_unaffected() {
    let pb = playbook(None);
    let now = at(0);
    let mut obs = local(false, now);
    obs.push(peer("b", Target::Primary, Health::Healthy, 0, now));
    let ov = Overrides {
        hold: Some(Hold {
            by: Actor {
                identity: "alice".into(),
                reason: "drill".into(),
            },
            target: 0,
            until: at(600),
            force: false,
            break_glass: None,
        }),
        ..Overrides::default()
    };
    let d = decide_normal(&pb, &obs, &ov, now);
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::OperatorFailover)]
    );
}

/// Ensures the newest report of a peer is the one that counts.
#[test]
fn newest_report_per_peer_counts() {
    let pb = playbook(None);
    let now = at(0);
    let obs = [
        peer("b", Target::Primary, Health::Healthy, 2, now),
        peer("b", Target::Primary, down(), 0, now),
    ];
    assert_eq!(agreement(&pb, &obs, "x", now), Agreement::Agreed);
}

/// Ensures a lone observer is found only where it alone sees the primary failing, every
/// other vantage with a view sees it healthy, and it does so for enough playbooks.
#[test]
fn lone_observer_table() {
    let v = |views: &[(&str, Health)]| -> Vec<(String, Health)> {
        views
            .iter()
            .map(|(n, h)| (n.to_string(), h.clone()))
            .collect()
    };
    let unknown = Health::Unknown("no data".into());
    let lone = v(&[("a", down()), ("b", Health::Healthy)]);
    let both = v(&[("a", down()), ("b", down())]);
    let other_unknown = v(&[("a", down()), ("b", unknown.clone())]);
    let alone = v(&[("a", down())]);
    let three = v(&[
        ("a", down()),
        ("b", Health::Healthy),
        ("c", Health::Healthy),
    ]);
    type Views = Vec<(String, Health)>;
    type Case = (Vec<Views>, usize, Vec<(String, usize)>);
    let cases: Vec<Case> = vec![
        (
            vec![lone.clone(), lone.clone(), lone.clone()],
            3,
            vec![("a".into(), 3)],
        ),
        (vec![lone.clone(), lone.clone()], 3, vec![]),
        (vec![lone.clone(), lone.clone(), both.clone()], 3, vec![]),
        (vec![lone.clone(), lone.clone(), other_unknown], 3, vec![]),
        (vec![alone.clone(), alone.clone(), alone], 3, vec![]),
        (
            vec![three.clone(), three.clone(), lone],
            3,
            vec![("a".into(), 3)],
        ),
        (vec![both], 1, vec![]),
    ];
    for (i, (playbooks, at_least, want)) in cases.into_iter().enumerate() {
        assert_eq!(lone_observers(&playbooks, at_least), want, "case {i}");
    }
}

/// Ensures `trigger.vantages.min: 0` is refused with its file, line and column.
#[test]
fn min_zero_is_refused_with_its_place() {
    let y = BASE.replace(
        "trigger: { failureThreshold: 3 }",
        "trigger: { failureThreshold: 3, vantages: { min: 0 } }",
    );
    let pb = playbook::parse("pb.yaml", &y).unwrap();
    let problems: Vec<String> = pb
        .validate("pb.yaml")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("pb.yaml:15:")
            && problems[0].contains("spec.trigger.vantages.min")
            && problems[0].contains("at least 1"),
        "{problems:?}"
    );
}

/// One peer as the property draws it: absent, or a view with an age in seconds.
#[derive(Clone, Debug)]
enum Draw {
    Absent,
    Seen { health: u8, age: i64 },
}

fn draw() -> impl Strategy<Value = Draw> {
    prop_oneof![
        1 => Just(Draw::Absent),
        4 => (0u8..3, 0i64..6).prop_map(|(health, age)| Draw::Seen { health, age }),
    ]
}

fn health(code: u8) -> Health {
    match code {
        0 => Health::Healthy,
        1 => down(),
        _ => Health::Unknown("no data".into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Over random peer views (absent, healthy, failing, unknown; fresh or stale) and random
    /// `min`: an automatic failover happens only when at least min(`min`, live vantages)
    /// live vantages (this one included) see the primary failing, counted here from the
    /// drawn views (unknown views never count), or when no peer is live and the decision says
    /// it fell back; and never onto a target a live peer sees unhealthy.
    #[test]
    fn never_fails_over_without_enough_live_agreement(
        primary in proptest::collection::vec(draw(), 0..4),
        f0 in proptest::collection::vec(draw(), 0..4),
        min in proptest::option::of(1u32..5),
    ) {
        let pb = playbook(min);
        let now = at(100);
        let mut obs = local(true, now);
        let mut live = 0usize;
        let mut live_failing = 0usize;
        let mut known = 0usize;
        for (i, d) in primary.iter().enumerate() {
            if let Draw::Seen { health: h, age } = d {
                known += 1;
                if *age <= 3 {
                    live += 1;
                    live_failing += usize::from(*h == 1);
                }
                obs.push(peer(&format!("p{i}"), Target::Primary, health(*h), *age, now));
            }
        }
        let mut f0_vetoed = false;
        for (i, d) in f0.iter().enumerate() {
            if let Draw::Seen { health: h, age } = d {
                f0_vetoed |= *h == 1 && *age <= 3;
                obs.push(peer(&format!("q{i}"), Target::Failover(0), health(*h), *age, now));
            }
        }
        let d = decide_normal(&pb, &obs, &Overrides::default(), now);
        let moved: Vec<_> = routes(&d);
        if let Some((to, kind)) = moved.first() {
            prop_assert_eq!(*kind, MoveKind::Failover);
            if f0_vetoed {
                prop_assert_eq!(*to, Routing::Failover { target: 1 });
            }
            if known > 0 && min != Some(1) {
                if live == 0 {
                    prop_assert_eq!(d.fallback, Some(FALLBACK_NO_LIVE_PEER));
                } else {
                    let total = 1 + live;
                    let required = min.map_or(total, |m| (m as usize).min(total));
                    prop_assert!(1 + live_failing >= required,
                        "moved with {} of {} live failing, {} required", 1 + live_failing, total, required);
                }
            }
        } else {
            // Held: then agreement was truly missing (or no safe target).
            let total = 1 + live;
            let required = min.map_or(total, |m| (m as usize).min(total));
            let agreed = known == 0 || min == Some(1) || live == 0 || 1 + live_failing >= required;
            prop_assert!(!agreed || d.state.stuck, "held although agreed: {}", d.explain);
        }
    }
}
