//! Table tests with fixed instants and property tests over random fault sequences.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::Timestamp;

use super::*;
use crate::playbook::test_support::Validate;
use crate::playbook::{self, Playbook, Target};

const BASE: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: svc }
spec:
  virtualService: { namespace: ns, name: svc }
  primary: { host: svc.ns.svc.cluster.local, subset: v1 }
  failover:
    - { host: svc.dr.svc.cluster.local }
    - { host: svc.dr2.svc.cluster.local }
  probes:
    - { name: p, target: primary, http: { url: "http://127.0.0.1:9/healthz" }, interval: 1s, timeout: 500ms }
    - { name: f0, target: "failover[0]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
    - { name: f1, target: "failover[1]", tcp: { address: "127.0.0.1:9" }, interval: 1s, timeout: 500ms }
  trigger: { failureThreshold: 3 }
  failback: { after: 60s, steps: [10, 50, 100], stepInterval: 30s }
  minDwell: 120s
"#;

fn playbook(extra: &[(&str, &str)]) -> Playbook {
    let mut y = BASE.to_string();
    for (from, to) in extra {
        assert!(y.contains(from), "fixture lacks {from}");
        y = y.replace(from, to);
    }
    let pb = playbook::parse("test.yaml", &y).unwrap();
    assert_eq!(pb.validate("test.yaml"), vec![], "fixture must be valid");
    pb
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A little world of signals whose streaks are kept like the daemon keeps them.
#[derive(Default, Clone)]
struct World {
    obs: BTreeMap<String, Observation>,
}

impl World {
    fn report(
        &mut self,
        name: &str,
        target: Target,
        kind: SignalKind,
        health: Health,
        now: Timestamp,
    ) {
        let o = self
            .obs
            .entry(name.to_string())
            .or_insert_with(|| Observation {
                signal: name.into(),
                kind,
                target,
                health: health.clone(),
                streak: 0,
                streak_since: now,
                at: now,
                max_age: StdDuration::from_secs(3),
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

    /// All three probes report: primary, failover[0], failover[1].
    fn probes(&mut self, p: Health, f0: Health, f1: Health, now: Timestamp) {
        self.report("p", Target::Primary, SignalKind::Probe, p, now);
        self.report("f0", Target::Failover(0), SignalKind::Probe, f0, now);
        self.report("f1", Target::Failover(1), SignalKind::Probe, f1, now);
    }

    fn list(&self) -> Vec<Observation> {
        self.obs.values().cloned().collect()
    }
}

fn up() -> Health {
    Health::Healthy
}
fn down() -> Health {
    Health::Unhealthy("connect: connection refused".into())
}
fn unknown() -> Health {
    Health::Unknown("probe could not run".into())
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

/// Runs `decide` and applies the result as the daemon would after a successful write.
fn step(pb: &Playbook, st: &mut State, w: &World, ov: &Overrides, now: Timestamp) -> Decision {
    let d = decide(pb, st, &w.list(), ov, now);
    *st = d.state.clone();
    d
}

/// Ensures a healthy primary is left alone and re-deciding is harmless.
#[test]
fn healthy_primary_no_action() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..5 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert!(d.actions.is_empty(), "{d:?}");
        assert_eq!(st.phase, Phase::Normal);
    }
}

/// Ensures the failure threshold is counted: two failures are Suspect, the third fails over
/// to the first healthy target, and deciding again with the same inputs does nothing.
#[test]
fn threshold_then_failover_then_idempotent() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    w.probes(up(), up(), up(), at(0));
    step(&pb, &mut st, &w, &Overrides::default(), at(0));
    for s in 1..=2 {
        w.probes(down(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert!(routes(&d).is_empty());
        assert_eq!(st.phase, Phase::Suspect { since: at(1) });
    }
    w.probes(down(), up(), up(), at(3));
    let d = step(&pb, &mut st, &w, &Overrides::default(), at(3));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::Failover)]
    );
    assert_eq!(
        st.phase,
        Phase::FailedOver {
            target: 0,
            since: at(3)
        }
    );
    assert_eq!(st.last_move, Some(at(3)));
    let again = decide(&pb, &st, &w.list(), &Overrides::default(), at(3));
    assert!(again.actions.is_empty(), "{again:?}");
    assert_eq!(again.state, st);
}

/// Ensures the first *healthy* target wins: failover[0] unhealthy or unknown is skipped.
#[test]
fn picks_first_healthy_target() {
    for f0 in [down(), unknown()] {
        let pb = playbook(&[]);
        let mut w = World::default();
        let mut st = State::default();
        for s in 0..3 {
            w.probes(down(), f0.clone(), up(), at(s));
        }
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(2));
        assert_eq!(
            routes(&d),
            vec![(Routing::Failover { target: 1 }, MoveKind::Failover)]
        );
    }
}

/// Ensures no move happens when no failover target is known healthy, and the stuck alert
/// is raised once, not on every round.
#[test]
fn stuck_when_no_healthy_target_alerts_once() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    let mut stuck = 0;
    for s in 0..6 {
        w.probes(down(), down(), unknown(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert!(routes(&d).is_empty());
        stuck += d
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Stuck { .. }))
            .count();
    }
    assert_eq!(stuck, 1);
    assert_eq!(st.routing, Routing::Primary);
}

/// Ensures stepped failback: after `failback.after` of a healthy primary, 10 % → 50 % →
/// original route, each after `stepInterval`.
#[test]
fn stepped_failback() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert_eq!(st.routing, Routing::Failover { target: 0 });
    // Primary recovers at t=10; dwell (120 s from t=2) also has to pass.
    let mut seen = Vec::new();
    for s in 10..=400 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        for r in routes(&d) {
            seen.push((s, r));
        }
    }
    assert_eq!(
        seen,
        vec![
            (
                122,
                (
                    Routing::Split {
                        target: 0,
                        primary_percent: 10
                    },
                    MoveKind::FailbackStep
                )
            ),
            (
                152,
                (
                    Routing::Split {
                        target: 0,
                        primary_percent: 50
                    },
                    MoveKind::FailbackStep
                )
            ),
            (182, (Routing::Primary, MoveKind::Failback)),
        ]
    );
    assert_eq!(st.phase, Phase::Normal);
}

/// Ensures `failback.after` is counted from the primary's recovery: with no dwell in the
/// way, failback starts exactly `after` seconds after the primary turned healthy.
#[test]
fn failback_waits_after() {
    let pb = playbook(&[
        ("minDwell: 120s", "minDwell: 0s"),
        ("steps: [10, 50, 100]", "steps: [100]"),
    ]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    let mut first = None;
    for s in 5..100 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        if !routes(&d).is_empty() && first.is_none() {
            first = Some((s, routes(&d)));
        }
        if s < 65 {
            assert!(
                matches!(st.phase, Phase::Recovering { .. }),
                "{s}: {:?}",
                st.phase
            );
        }
    }
    assert_eq!(
        first,
        Some((65, vec![(Routing::Primary, MoveKind::Failback)]))
    );
}

/// Ensures a primary that fails during the ramp loses all its traffic at once (no dwell).
#[test]
fn ramp_abort_is_immediate() {
    let pb = playbook(&[("minDwell: 120s", "minDwell: 0s")]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    for s in 3..=63 {
        w.probes(up(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert!(
        matches!(
            st.routing,
            Routing::Split {
                primary_percent: 10,
                ..
            }
        ),
        "{st:?}"
    );
    w.probes(down(), up(), up(), at(64));
    let d = step(&pb, &mut st, &w, &Overrides::default(), at(64));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::FailbackAborted)]
    );
    assert_eq!(
        st.phase,
        Phase::FailedOver {
            target: 0,
            since: at(64)
        }
    );
}

/// Ensures `minDwell` holds a second move: the failover target dies 10 s after failover
/// while failover[1] is healthy; the switch waits until the dwell has passed.
#[test]
fn min_dwell_delays_second_move() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    let mut moved = None;
    for s in 3..200 {
        let f0 = if s >= 10 { down() } else { up() };
        w.probes(down(), f0, up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        if let Some(r) = routes(&d).first() {
            moved.get_or_insert((s, *r));
        }
    }
    assert_eq!(
        moved,
        Some((122, (Routing::Failover { target: 1 }, MoveKind::Switch)))
    );
}

/// Ensures `onMissing`: hold never moves on missing data; failover treats missing primary
/// data as failing after the threshold; ignore leaves the signal out.
#[test]
fn on_missing_modes() {
    for (mode, expect_move) in [("hold", false), ("failover", true), ("ignore", false)] {
        let pb = playbook(&[(
            "minDwell: 120s",
            &format!("minDwell: 120s\n  onMissing: {mode}"),
        )]);
        let mut w = World::default();
        let mut st = State::default();
        let mut moved = false;
        for s in 0..5 {
            w.probes(unknown(), up(), up(), at(s));
            let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
            moved |= !routes(&d).is_empty();
        }
        assert_eq!(moved, expect_move, "onMissing {mode}");
    }
}

/// Ensures a result older than its max age reads as Unknown (a stalled probe loop is not a
/// healthy service), and that Unknown holds (no failback).
#[test]
fn stale_results_are_unknown() {
    let pb = playbook(&[]);
    let mut w = World::default();
    w.probes(up(), up(), up(), at(0));
    let v = verdict(&pb, &w.list(), Target::Primary, at(2));
    assert!(v.is_healthy());
    let v = verdict(&pb, &w.list(), Target::Primary, at(10));
    assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
}

/// Ensures an SLO counts in time: a breach shorter than `for` is Suspect, then Unhealthy.
#[test]
fn slo_for_duration() {
    let pb = playbook(&[(
        "trigger: { failureThreshold: 3 }",
        "trigger: { failureThreshold: 3, for: 30s }",
    )]);
    let mut w = World::default();
    let breach = Health::Unhealthy("error ratio 0.31 above 0.05".into());
    w.report(
        "slo",
        Target::Primary,
        SignalKind::Slo,
        breach.clone(),
        at(0),
    );
    let mut v = verdict(&pb, &w.list(), Target::Primary, at(0));
    assert!(matches!(v, Verdict::Suspect { .. }), "{v:?}");
    for s in (2..=30).step_by(2) {
        w.report(
            "slo",
            Target::Primary,
            SignalKind::Slo,
            breach.clone(),
            at(s),
        );
        v = verdict(&pb, &w.list(), Target::Primary, at(s));
        if s < 30 {
            assert!(matches!(v, Verdict::Suspect { .. }), "{s} {v:?}");
        }
    }
    assert!(matches!(v, Verdict::Unhealthy { .. }), "{v:?}");
}

fn actor() -> Actor {
    Actor {
        identity: "alice@oncall".into(),
        reason: "INC-1".into(),
    }
}

/// Ensures a freeze stops automatic moves until it ends, then automation resumes.
#[test]
fn freeze_stops_moves_until_it_ends() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    let ov = Overrides {
        freeze: Some(Freeze {
            by: actor(),
            until: Some(at(20)),
        }),
        ..Default::default()
    };
    for s in 0..20 {
        w.probes(down(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &ov, at(s));
        assert!(d.actions.is_empty());
        assert_eq!(
            st.phase,
            Phase::Frozen {
                until: Some(at(20))
            }
        );
    }
    w.probes(down(), up(), up(), at(20));
    let d = step(&pb, &mut st, &w, &ov, at(20));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::Failover)]
    );
}

/// Ensures an operator hold fails over while the primary is healthy, refuses nothing during
/// its TTL, and hands back to automation (which then fails back, after minDwell) when it expires.
#[test]
fn operator_hold_then_expiry() {
    let pb = playbook(&[("steps: [10, 50, 100]", "steps: [100]")]);
    let mut w = World::default();
    let mut st = State::default();
    let hold = Overrides {
        hold: Some(Hold {
            by: actor(),
            target: 1,
            until: at(100),
            force: false,
            break_glass: None,
        }),
        ..Default::default()
    };
    w.probes(up(), up(), up(), at(0));
    let d = step(&pb, &mut st, &w, &hold, at(0));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 1 }, MoveKind::OperatorFailover)]
    );
    for s in 1..100 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &hold, at(s));
        assert!(routes(&d).is_empty(), "{s}");
    }
    // After expiry automation takes over; it leaves the operator's move alone for minDwell
    // (120 s from t=0), then fails back to the long-healthy primary.
    let mut first = None;
    for s in 100..200 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &hold, at(s));
        if let Some(r) = routes(&d).first() {
            first.get_or_insert((s, *r));
        }
    }
    assert_eq!(first, Some((120, (Routing::Primary, MoveKind::Failback))));
}

/// Ensures manual failback mode waits for an operator, and an operator failback of an
/// unhealthy primary is refused unless forced.
#[test]
fn manual_failback_and_refusal() {
    let pb = playbook(&[(
        "failback: { after: 60s",
        "failback: { mode: manual, after: 60s",
    )]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    let cmd = |force| Overrides {
        command: Some(Command::Failback { by: actor(), force }),
        ..Default::default()
    };
    w.probes(down(), up(), up(), at(4));
    let d = step(&pb, &mut st, &w, &cmd(false), at(4));
    assert!(
        matches!(d.actions.as_slice(), [Action::Refused { .. }]),
        "{d:?}"
    );
    for s in 5..500 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert!(routes(&d).is_empty());
    }
    assert!(matches!(st.phase, Phase::Recovering { .. }));
    let d = step(&pb, &mut st, &w, &cmd(false), at(500));
    assert_eq!(
        routes(&d),
        vec![(Routing::Primary, MoveKind::OperatorFailback)]
    );
}

/// Ensures a restart in the middle of a ramp resumes safely: the primary keeps its share only
/// while healthy and loses it at once when it fails.
#[test]
fn resume_from_split() {
    let pb = playbook(&[]);
    let split = Routing::Split {
        target: 0,
        primary_percent: 50,
    };
    let mut st = State::resume(split, at(0));
    let mut w = World::default();
    w.probes(down(), up(), up(), at(1));
    let d = step(&pb, &mut st, &w, &Overrides::default(), at(1));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::FailbackAborted)]
    );
}

/// Ensures an operator hold applies while automation is frozen (freeze stops automation,
/// not operators).
#[test]
fn hold_overrules_freeze() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    let ov = Overrides {
        freeze: Some(Freeze {
            by: actor(),
            until: Some(at(100)),
        }),
        hold: Some(Hold {
            by: actor(),
            target: 0,
            until: at(50),
            force: false,
            break_glass: None,
        }),
        ..Default::default()
    };
    w.probes(up(), up(), up(), at(0));
    let d = step(&pb, &mut st, &w, &ov, at(0));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::OperatorFailover)]
    );
    // Hold over, freeze still on: automation stays frozen, nothing moves back.
    w.probes(up(), up(), up(), at(60));
    let d = step(&pb, &mut st, &w, &ov, at(60));
    assert!(d.actions.is_empty());
    assert_eq!(
        st.phase,
        Phase::Frozen {
            until: Some(at(100))
        }
    );
}

/// Ensures `requireProbeCorroboration`: an SLO breach alone is only Suspect; with a failing
/// probe on the same target it is Unhealthy.
#[test]
fn slo_needs_probe_corroboration() {
    let pb = playbook(&[(
        "trigger: { failureThreshold: 3 }",
        "trigger: { failureThreshold: 3, requireProbeCorroboration: true }",
    )]);
    let mut w = World::default();
    let breach = Health::Unhealthy("error ratio 0.5 above 0.05".into());
    w.probes(up(), up(), up(), at(0));
    w.report(
        "slo",
        Target::Primary,
        SignalKind::Slo,
        breach.clone(),
        at(0),
    );
    let v = verdict(&pb, &w.list(), Target::Primary, at(0));
    assert!(
        matches!(&v, Verdict::Suspect { reason } if reason.contains("not corroborated")),
        "{v:?}"
    );
    w.report("p", Target::Primary, SignalKind::Probe, down(), at(1));
    w.report("slo", Target::Primary, SignalKind::Slo, breach, at(1));
    let v = verdict(&pb, &w.list(), Target::Primary, at(1));
    assert!(matches!(v, Verdict::Unhealthy { .. }), "{v:?}");
}

/// Ensures routings from outside (a state annotation) are checked against the playbook: a
/// split outside 1..=99 % or a missing target is refused with a reason, and even an unchecked
/// one neither panics nor wraps when displayed or turned into weights.
#[test]
fn outside_routings_are_checked_and_never_wrap() {
    let pb = playbook(&[]);
    let n = pb.spec.failover.value.len();
    let split = |target, primary_percent| Routing::Split {
        target,
        primary_percent,
    };
    let table: &[(Routing, Option<&str>)] = &[
        (Routing::Primary, None),
        (Routing::Failover { target: 1 }, None),
        (split(0, 1), None),
        (split(1, 99), None),
        (
            Routing::Failover { target: 2 },
            Some("failover[2] does not exist"),
        ),
        (
            Routing::Failover { target: usize::MAX },
            Some("does not exist"),
        ),
        (split(0, 0), Some("primaryPercent 0 is outside 1..=99")),
        (split(0, 100), Some("primaryPercent 100 is outside 1..=99")),
        (split(0, 250), Some("primaryPercent 250 is outside 1..=99")),
        (split(0, u8::MAX), Some("outside 1..=99")),
        (split(5, 50), Some("failover[5] does not exist")),
    ];
    for (r, want) in table {
        match (r.check(n), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.contains(w), "{r:?}: {e}"),
            (got, _) => panic!("{r:?}: got {got:?}, want {want:?}"),
        }
        // Unchecked values still display and weigh without underflow: two shares, each
        // non-zero, summing to 100.
        let shown = r.to_string();
        assert!(!shown.is_empty());
        let sum: u32 = r.weights().iter().map(|(_, w)| u32::from(*w)).sum();
        assert_eq!(sum, 100, "{r:?}");
        assert!(r.weights().iter().all(|(_, w)| *w > 0), "{r:?}");
    }
    assert_eq!(split(0, 250).to_string(), "primary 99% / failover[0] 1%");
}

/// Ensures a saved hold naming a failover target the playbook no longer has (a reload removed
/// it, or the state file was edited) never routes there, forced or not: the next healthy
/// target is used, or the engine reports stuck naming the missing target.
#[test]
fn hold_on_a_missing_target_never_routes_there() {
    let pb = playbook(&[]);
    for force in [false, true] {
        let hold = |target| Overrides {
            hold: Some(Hold {
                by: actor(),
                target,
                until: at(100),
                force,
                break_glass: None,
            }),
            ..Default::default()
        };
        let mut w = World::default();
        w.probes(down(), up(), up(), at(0));
        let d = decide(&pb, &State::default(), &w.list(), &hold(2), at(0));
        assert_eq!(
            routes(&d),
            vec![(Routing::Failover { target: 0 }, MoveKind::OperatorFailover)],
            "force {force}"
        );
        let d = decide(&pb, &State::default(), &w.list(), &hold(usize::MAX), at(0));
        assert_eq!(
            routes(&d),
            vec![(Routing::Failover { target: 0 }, MoveKind::OperatorFailover)]
        );
        // No healthy target at all: stuck, naming the missing one, no move.
        w.probes(down(), down(), unknown(), at(1));
        let d = decide(&pb, &State::default(), &w.list(), &hold(7), at(1));
        assert!(routes(&d).is_empty(), "force {force}: {:?}", d.actions);
        assert!(
            d.actions.iter().any(|a| matches!(a, Action::Stuck { reason } if reason.contains("failover[7], which does not exist"))),
            "{:?}",
            d.actions
        );
    }
}

/// Ensures the staleness budget is three intervals plus the timeout and saturates instead of
/// overflowing on durations no playbook loader would pass.
#[test]
fn stale_after_saturates() {
    let s = StdDuration::from_secs;
    assert_eq!(
        stale_after(s(1), StdDuration::from_millis(500)),
        StdDuration::from_millis(3500)
    );
    assert_eq!(stale_after(s(3600), s(300)), s(3 * 3600 + 300));
    assert_eq!(stale_after(StdDuration::MAX, s(1)), StdDuration::MAX);
    assert_eq!(
        stale_after(s(u64::MAX / 2), StdDuration::MAX),
        StdDuration::MAX
    );
}

mod explain;
mod fence;
mod fence_cluster;
mod properties;
