//! Table tests of the blast-radius rule and a model-based property test of the engine and the
//! rule together over a fleet of playbooks.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::engine::{
    Action, Actor, Command, Decision, Freeze, Health, Hold, MoveKind, Observation, Overrides,
    Routing, SignalKind, State, Verdict, decide, verdict,
};
use crate::playbook::test_support::Validate;
use crate::playbook::{self, Playbook, Target};

#[test]
fn judge_table() {
    // (breaching, failed over, max) -> held?
    let cases = [
        (5, 0, 0, false), // rule off
        (1, 0, 2, false),
        (2, 0, 2, false),
        (3, 0, 2, true),
        (1, 2, 2, true), // two already failed over: a third is one too many
        (1, 1, 2, false),
        (0, 3, 2, true),
        (5, 0, 2, true),
        (100, 0, 100, false),
    ];
    for (b, f, max, held) in cases {
        let j = judge(b, f, max);
        assert_eq!(
            matches!(j, Judgement::Hold { .. }),
            held,
            "judge({b}, {f}, {max}) = {j:?}"
        );
    }
    let reason = judge(5, 0, 2).reason();
    assert!(reason.contains("maxConcurrentFailovers 2"), "{reason}");
    assert!(reason.contains("observer fault"), "{reason}");
}

#[test]
fn guard_holds_the_whole_episode_and_raises_once() {
    let mut g = FleetGuard::new(5, 2);
    // Five primaries start failing together: each is breaching before any crosses its trigger.
    for i in 0..5 {
        g.seat(i, Seat::Breaching);
    }
    let gates: Vec<Gate> = (0..5).map(|i| g.check(i)).collect();
    let raised = gates
        .iter()
        .filter(|x| matches!(x, Gate::Hold { raise: true, .. }))
        .count();
    assert!(
        gates.iter().all(|x| matches!(x, Gate::Hold { .. })),
        "{gates:?}"
    );
    assert_eq!(raised, 1, "the event fires once per episode: {gates:?}");
    // Asking again in the same episode stays held and quiet.
    assert_eq!(
        g.check(0),
        Gate::Hold {
            judgement: judge(5, 0, 2),
            raise: false
        }
    );
    // Three recover: the two still failing are within the ceiling and may move.
    for i in 2..5 {
        g.seat(i, Seat::Fine);
    }
    assert_eq!(g.check(0), Gate::Allow);
    g.seat(0, Seat::FailedOver);
    assert_eq!(g.check(1), Gate::Allow);
    g.seat(1, Seat::FailedOver);
    // A new episode (a third breach on top of two failed over) raises again.
    assert!(matches!(g.check(2), Gate::Hold { raise: true, .. }));
}

#[test]
fn guard_off_allows_everything() {
    let mut g = FleetGuard::new(3, 0);
    for i in 0..3 {
        g.seat(i, Seat::Breaching);
    }
    assert!((0..3).all(|i| g.check(i) == Gate::Allow));
    assert_eq!(g.max(), 0);
}

#[test]
fn guard_grows_with_the_playbook_set() {
    let mut g = FleetGuard::new(1, 1);
    g.seat(4, Seat::Breaching);
    assert!(matches!(g.check(0), Gate::Hold { .. }), "index 4 counted");
}

// ---- model-based property test: several playbooks, the engine and the fleet rule ----

const PB: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: NAME }
spec:
  virtualService: { namespace: ns, name: NAME }
  primary: { host: NAME.ns.svc.cluster.local, subset: v1 }
  failover:
    - { host: NAME.dr.svc.cluster.local }
    - { host: NAME.dr2.svc.cluster.local }
  probes:
    - { name: p, target: primary, http: { url: "http://127.0.0.1:9/healthz" }, interval: 1s, timeout: 500ms }
    - { name: f0, target: "failover[0]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
    - { name: f1, target: "failover[1]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
  trigger: { failureThreshold: 2 }
  failback: { after: 5s, steps: STEPS, stepInterval: 2s }
  minDwell: DWELLs
"#;

fn fleet_playbook(i: usize, dwell: u64, steps: &str) -> Playbook {
    let y = PB
        .replace("NAME", &format!("svc{i}"))
        .replace("STEPS", steps)
        .replace("DWELL", &dwell.to_string());
    let pb = playbook::parse("model.yaml", &y).unwrap();
    assert_eq!(pb.validate("model.yaml"), vec![], "fixture must be valid");
    pb
}

/// One playbook's little world: the health each destination really has, and the signals'
/// streaks kept like the daemon keeps them.
#[derive(Clone)]
struct Member {
    pb: Playbook,
    up: [bool; 3],
    obs: BTreeMap<&'static str, Observation>,
    state: State,
    ov: Overrides,
    last_auto_start: Option<Timestamp>,
}

impl Member {
    fn report(&mut self, now: Timestamp) {
        for (k, (name, target)) in [
            ("p", Target::Primary),
            ("f0", Target::Failover(0)),
            ("f1", Target::Failover(1)),
        ]
        .into_iter()
        .enumerate()
        {
            let health = if self.up[k] {
                Health::Healthy
            } else {
                Health::Unhealthy("down".into())
            };
            let o = self.obs.entry(name).or_insert_with(|| Observation {
                signal: name.into(),
                kind: SignalKind::Probe,
                target,
                health: health.clone(),
                streak: 0,
                streak_since: now,
                at: now,
                max_age: StdDuration::from_secs(3600),
                detail: String::new(),
            });
            if o.streak == 0 || !o.health.same_class(&health) {
                o.streak = 1;
                o.streak_since = now;
            } else {
                o.streak += 1;
            }
            o.health = health;
            o.at = now;
        }
    }

    fn list(&self) -> Vec<Observation> {
        self.obs.values().cloned().collect()
    }
}

#[derive(Clone, Debug)]
enum Ev {
    /// Probe round after `dt_ms`.
    Tick {
        dt_ms: u64,
    },
    /// Destination `dest` (0 primary, 1-2 failover targets) of playbook `pb` goes down or up.
    Set {
        pb: usize,
        dest: usize,
        up: bool,
    },
    /// Every primary fails at once (the observer's own network).
    FleetFault,
    /// Every primary comes back.
    FleetHeal,
    Freeze {
        pb: usize,
        secs: u64,
    },
    Resume {
        pb: usize,
    },
    Hold {
        pb: usize,
        target: usize,
        secs: u64,
        force: bool,
    },
    Failback {
        pb: usize,
        force: bool,
    },
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        8 => (100u64..3_000).prop_map(|dt_ms| Ev::Tick { dt_ms }),
        4 => (0usize..5, 0usize..3, any::<bool>()).prop_map(|(pb, dest, up)| Ev::Set { pb, dest, up }),
        1 => Just(Ev::FleetFault),
        1 => Just(Ev::FleetHeal),
        1 => (0usize..5, 1u64..30).prop_map(|(pb, secs)| Ev::Freeze { pb, secs }),
        1 => (0usize..5).prop_map(|pb| Ev::Resume { pb }),
        1 => (0usize..5, 0usize..2, 1u64..30, any::<bool>())
            .prop_map(|(pb, target, secs, force)| Ev::Hold { pb, target, secs, force }),
        1 => (0usize..5, any::<bool>()).prop_map(|(pb, force)| Ev::Failback { pb, force }),
    ]
}

fn actor() -> Actor {
    Actor {
        identity: "alice@oncall".into(),
        reason: "model".into(),
    }
}

/// The controller's use of the rule (runtime.rs `blast_radius`), restated for the model.
fn gate(guard: &mut FleetGuard, i: usize, state: &State, mut d: Decision) -> Decision {
    let wants = d.actions.iter().any(|a| {
        matches!(
            a,
            Action::Route {
                kind: MoveKind::Failover,
                from: Routing::Primary,
                ..
            }
        )
    });
    if !wants {
        let seat = if d.state.routing != Routing::Primary {
            Seat::FailedOver
        } else if matches!(
            d.primary,
            Verdict::Unhealthy { .. } | Verdict::Suspect { .. }
        ) {
            Seat::Breaching
        } else {
            Seat::Fine
        };
        guard.seat(i, seat);
        return d;
    }
    if let Gate::Hold { .. } = guard.check(i) {
        d.actions.retain(|a| {
            !matches!(
                a,
                Action::Route {
                    kind: MoveKind::Failover,
                    ..
                }
            )
        });
        d.state = state.clone();
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random faults, recoveries, operator overrides and clock advances over a fleet of
    /// playbooks, the engine deciding for each and the blast-radius rule gating automatic
    /// failovers as the controller does. After every step: weights sum to 100 with no empty
    /// entry; an unforced move never routes to zero healthy destinations or to one known
    /// unhealthy; automatic moves that start a move are `minDwell` apart per playbook unless an
    /// operator intervened; routing only ever changes through a `Route` action (what the
    /// writer audits) that names the routing it leaves; and an automatic failover that goes
    /// through never leaves more than `maxConcurrentFailovers` playbooks off their primary.
    #[test]
    fn fleet_model(
        events in proptest::collection::vec(ev(), 1..200),
        n in 2usize..6,
        max in 0usize..4,
        dwell in 0u64..20,
        steps in 0usize..2,
    ) {
        let steps_yaml = ["[100]", "[50, 100]"][steps];
        let mut fleet: Vec<Member> = (0..n)
            .map(|i| Member {
                pb: fleet_playbook(i, dwell, steps_yaml),
                up: [true; 3],
                obs: BTreeMap::new(),
                state: State::default(),
                ov: Overrides::default(),
                last_auto_start: None,
            })
            .collect();
        let mut guard = FleetGuard::new(n, max);
        let mut now = Timestamp::from_second(1_800_000_000).unwrap();
        for m in fleet.iter_mut() {
            m.report(now);
        }
        for e in events {
            for m in fleet.iter_mut() {
                m.ov.command = None;
            }
            let secs = |s: u64| SignedDuration::from_secs(s as i64);
            match e {
                Ev::Tick { dt_ms } => {
                    now += SignedDuration::from_millis(dt_ms as i64);
                    for m in fleet.iter_mut() {
                        m.report(now);
                    }
                }
                Ev::Set { pb, dest, up } => {
                    if let Some(m) = fleet.get_mut(pb) {
                        m.up[dest] = up;
                    }
                }
                Ev::FleetFault => fleet.iter_mut().for_each(|m| m.up[0] = false),
                Ev::FleetHeal => fleet.iter_mut().for_each(|m| m.up[0] = true),
                Ev::Freeze { pb, secs: s } => {
                    if let Some(m) = fleet.get_mut(pb) {
                        m.ov.freeze = Some(Freeze { by: actor(), until: Some(now + secs(s)) });
                    }
                }
                Ev::Resume { pb } => {
                    if let Some(m) = fleet.get_mut(pb) {
                        m.ov.freeze = None;
                    }
                }
                Ev::Hold { pb, target, secs: s, force } => {
                    if let Some(m) = fleet.get_mut(pb) {
                        m.ov.hold = Some(Hold { by: actor(), target, until: now + secs(s), force, break_glass: None });
                    }
                }
                Ev::Failback { pb, force } => {
                    if let Some(m) = fleet.get_mut(pb) {
                        m.ov.hold = None;
                        m.ov.command = Some(Command::Failback { by: actor(), force });
                    }
                }
            }
            for i in 0..n {
                let m = &fleet[i];
                let obs = m.list();
                let raw = decide(&m.pb, &m.state, &obs, &m.ov, now);
                let d = gate(&mut guard, i, &m.state, raw);
                let from_state = m.state.routing;
                let mut routed_to = None;
                let mut last = m.last_auto_start;
                let others_off = fleet
                    .iter()
                    .enumerate()
                    .filter(|(j, o)| *j != i && o.state.routing != Routing::Primary)
                    .count();
                for a in &d.actions {
                    let Action::Route { from, to, kind, forced, actor, .. } = a else { continue };
                    prop_assert_eq!(*from, from_state, "a move names the routing it leaves");
                    routed_to = Some(*to);
                    let weights = to.weights();
                    prop_assert_eq!(weights.iter().map(|(_, w)| u32::from(*w)).sum::<u32>(), 100);
                    prop_assert!(weights.iter().all(|(_, w)| *w > 0));
                    if !*forced {
                        let verdicts: Vec<Verdict> =
                            to.targets().map(|t| verdict(&m.pb, &obs, t, now)).collect();
                        prop_assert!(verdicts.iter().any(Verdict::is_healthy),
                            "{:?} to zero healthy destinations: {:?}", kind, verdicts);
                        prop_assert!(!verdicts.iter().any(|v| matches!(v, Verdict::Unhealthy { .. })),
                            "{:?} to an unhealthy destination: {:?}", kind, verdicts);
                    }
                    if actor.is_some() {
                        last = None;
                    } else if kind.starts_move(*from) {
                        if let Some(prev) = last {
                            let gap = now.duration_since(prev).as_secs_f64();
                            prop_assert!(gap >= dwell as f64,
                                "svc{} {:?} {}s after its previous move, minDwell {}s", i, kind, gap, dwell);
                        }
                        last = Some(now);
                    }
                    if *kind == MoveKind::Failover && max > 0 {
                        prop_assert!(others_off < max,
                            "automatic failover of svc{} with {} others already off their primary, max {}", i, others_off, max);
                    }
                }
                prop_assert_eq!(d.state.routing, routed_to.unwrap_or(from_state),
                    "routing changed without a Route action");
                fleet[i].state = d.state;
                fleet[i].last_auto_start = last;
            }
        }
    }
}

/// A guard behind a lock that a panicking thread poisoned.
fn poisoned(playbooks: usize, max: usize) -> std::sync::Mutex<FleetGuard> {
    let m = std::sync::Mutex::new(FleetGuard::new(playbooks, max));
    std::thread::scope(|s| {
        let _ = s
            .spawn(|| {
                let _held = m.lock().unwrap();
                panic!("poison the fleet lock (expected in this test)");
            })
            .join();
    });
    assert!(m.is_poisoned());
    m
}

/// Ensures the gate fails closed: with the rule on, a poisoned lock holds every automatic
/// failover with a reason (raised once, not every round), even one the counts would allow;
/// seats still record and nothing is held with the rule off.
#[test]
fn poisoned_lock_holds_automatic_failovers() {
    use std::sync::Mutex;

    use crate::engine::fleet::gate as locked_gate;
    // The same single failover through a healthy lock is allowed.
    let fine = Mutex::new(FleetGuard::new(10, 3));
    assert_eq!(locked_gate(&fine, 0, true, Seat::Breaching), Gate::Allow);

    let m = poisoned(10, 3);
    let table: &[(usize, bool, Seat, bool)] = &[
        // (playbook, wants a failover, seat, held)
        (0, false, Seat::Fine, false),
        (1, false, Seat::Breaching, false),
        (0, true, Seat::Breaching, true),
        (2, true, Seat::Breaching, true),
        (3, false, Seat::FailedOver, false),
    ];
    let mut raised = 0;
    for &(idx, wants, seat, held) in table {
        match locked_gate(&m, idx, wants, seat) {
            Gate::Allow => assert!(!held, "playbook {idx} let through"),
            Gate::Hold { judgement, raise } => {
                assert!(held, "playbook {idx} held without wanting to move");
                assert!(
                    matches!(&judgement, Judgement::Unavailable { reason } if reason.contains("poisoned")),
                    "{judgement:?}"
                );
                assert!(
                    judgement.reason().contains("fails closed"),
                    "{}",
                    judgement.reason()
                );
                raised += usize::from(raise);
            }
        }
    }
    assert_eq!(raised, 1, "the hold is raised once");

    // The rule off (maxConcurrentFailovers 0): nothing to gate, poisoned or not.
    let off = poisoned(10, 0);
    assert_eq!(locked_gate(&off, 0, true, Seat::Breaching), Gate::Allow);
}
