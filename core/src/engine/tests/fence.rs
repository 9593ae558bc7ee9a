//! The fence (residency and mesh policy): a refused target is never routed to, automatically
//! or by force; only an approved break-glass hold passes it.

use proptest::prelude::*;

use super::*;

fn fenced() -> Playbook {
    let mut pb = playbook(&[]);
    pb.fenced = true;
    pb
}

const SG: &str = "residency: jurisdiction SG is outside the allowed set [ID]";

/// Reports the fence's verdict on every target: `None` clears it, `Some(rule)` refuses it.
fn policy(w: &mut World, rules: [Option<&str>; 3], now: Timestamp) {
    for (i, rule) in rules.into_iter().enumerate() {
        let target = if i == 0 {
            Target::Primary
        } else {
            Target::Failover(i - 1)
        };
        let health = rule.map_or(Health::Healthy, |r| Health::Unhealthy(r.into()));
        w.report(
            &format!("policy-{i}"),
            target,
            SignalKind::Policy,
            health,
            now,
        );
    }
}

fn hold(target: usize, force: bool, break_glass: Option<&str>) -> Overrides {
    Overrides {
        hold: Some(Hold {
            by: actor(),
            target,
            until: at(1000),
            force,
            break_glass: break_glass.map(String::from),
        }),
        ..Default::default()
    }
}

#[test]
fn automatic_failover_skips_a_fenced_target() {
    let pb = fenced();
    let mut w = World::default();
    let mut st = State::default();
    policy(&mut w, [None, Some(SG), None], at(0));
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert_eq!(
        st.routing,
        Routing::Failover { target: 1 },
        "failover[0] is in SG"
    );
}

#[test]
fn every_target_fenced_is_stuck_naming_the_rule() {
    let pb = fenced();
    let mut w = World::default();
    let mut st = State::default();
    policy(
        &mut w,
        [None, Some(SG), Some("policy: namespace dr2 is PERMISSIVE")],
        at(0),
    );
    let mut last = None;
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        last = Some(step(&pb, &mut st, &w, &Overrides::default(), at(s)));
    }
    let d = last.unwrap();
    assert_eq!(st.routing, Routing::Primary);
    let stuck = d.actions.iter().find_map(|a| match a {
        Action::Stuck { reason } => Some(reason.clone()),
        _ => None,
    });
    let stuck = stuck.expect("a stuck alert");
    assert!(
        stuck.contains(SG) && stuck.contains("PERMISSIVE"),
        "{stuck}"
    );
}

#[test]
fn a_target_without_a_policy_verdict_is_outside_the_fence() {
    let pb = fenced();
    let mut w = World::default();
    let mut st = State::default();
    // Only the primary and failover[1] have been judged.
    w.report("policy-0", Target::Primary, SignalKind::Policy, up(), at(0));
    w.report(
        "policy-2",
        Target::Failover(1),
        SignalKind::Policy,
        up(),
        at(0),
    );
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert_eq!(st.routing, Routing::Failover { target: 1 });
    let why = fence(&pb, &w.list(), Target::Failover(0)).unwrap();
    assert!(
        why.starts_with("residency:") && why.contains("not known"),
        "{why}"
    );
}

#[test]
fn an_unfenced_playbook_ignores_policy_observations() {
    let pb = playbook(&[]);
    let mut w = World::default();
    let mut st = State::default();
    policy(&mut w, [None, Some(SG), None], at(0));
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert_eq!(st.routing, Routing::Failover { target: 0 });
}

#[test]
fn force_cannot_pass_the_fence_but_break_glass_can() {
    let pb = fenced();
    let mut w = World::default();
    policy(&mut w, [None, Some(SG), None], at(0));
    w.probes(up(), up(), up(), at(0));
    let obs = w.list();
    let err = check_operator_failover(&pb, &obs, Some(0), true, false, at(0)).unwrap_err();
    assert!(err.contains(SG) && err.contains("force cannot"), "{err}");
    assert_eq!(
        check_operator_failover(&pb, &obs, Some(0), true, true, at(0)),
        Ok(0)
    );
    assert_eq!(
        check_operator_failover(&pb, &obs, None, false, false, at(0)),
        Ok(1)
    );

    // A forced hold (say, saved before the namespace was relabelled) never lands there.
    let d = decide(&pb, &State::default(), &obs, &hold(0, true, None), at(1));
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 1 }, MoveKind::OperatorFailover)]
    );
    // An approved break-glass does, marked forced and naming the rule it passes.
    let d = decide(
        &pb,
        &State::default(),
        &obs,
        &hold(0, true, Some("bg-1")),
        at(1),
    );
    assert_eq!(
        routes(&d),
        vec![(Routing::Failover { target: 0 }, MoveKind::OperatorFailover)]
    );
    let Some(Action::Route { forced, reason, .. }) = d.actions.first() else {
        panic!()
    };
    assert!(*forced);
    assert!(
        reason.contains("break-glass bg-1") && reason.contains(SG),
        "{reason}"
    );
}

#[test]
fn forced_failback_to_a_fenced_primary_is_refused() {
    let pb = fenced();
    let mut w = World::default();
    policy(
        &mut w,
        [Some("policy: namespace ns is PERMISSIVE"), None, None],
        at(0),
    );
    w.probes(up(), up(), up(), at(0));
    let st = State {
        routing: Routing::Failover { target: 0 },
        ..State::default()
    };
    let ov = Overrides {
        command: Some(Command::Failback {
            by: actor(),
            force: true,
        }),
        ..Default::default()
    };
    let d = decide(&pb, &st, &w.list(), &ov, at(1));
    assert_eq!(routes(&d), vec![]);
    assert!(
        matches!(&d.actions[..], [Action::Refused { reason }] if reason.contains("PERMISSIVE"))
    );
}

/// A property's operator hold on `failover[target]` for a minute: forced or not, approved by a
/// break-glass or not.
pub(super) fn hold_for(target: usize, force: bool, break_glass: bool, now: Timestamp) -> Hold {
    Hold {
        by: actor(),
        target,
        until: now + jiff::SignedDuration::from_secs(60),
        force,
        break_glass: break_glass.then(|| "bg-1".to_string()),
    }
}

/// The first route in `d` to a destination `outside` the fence (0 the primary, N + 1
/// `failover[N]`), unless it is the target of a break-glass hold in force.
pub(super) fn crossing(
    d: &Decision,
    ov: &Overrides,
    now: Timestamp,
    outside: impl Fn(usize) -> bool,
) -> Option<String> {
    for a in &d.actions {
        let Action::Route { to, .. } = a else {
            continue;
        };
        for t in to.targets() {
            let i = match t {
                Target::Primary => 0,
                Target::Failover(n) => n + 1,
            };
            let glass = ov.hold.as_ref().is_some_and(|h| {
                h.break_glass.is_some() && h.until > now && t == Target::Failover(h.target)
            });
            if outside(i) && !glass {
                return Some(format!("routed to {t} outside the fence: {a:?}"));
            }
        }
    }
    None
}

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        dt_ms: u64,
        health: [u8; 3],
    },
    /// The cluster changed: a new fence verdict per destination.
    Relabel([u8; 3]),
    Hold {
        target: usize,
        force: bool,
        break_glass: bool,
    },
    Failback {
        force: bool,
    },
}

/// A fence verdict: cleared, refused by residency, refused by policy, or not judged at all.
fn rule(code: u8) -> Option<Option<&'static str>> {
    match code % 6 {
        0..=2 => Some(None),
        3 => Some(Some(SG)),
        4 => Some(Some("policy: DestinationRule dr/x disables TLS")),
        _ => None,
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        12 => (0u64..4000, any::<[u8; 3]>()).prop_map(|(dt_ms, health)| Ev::Tick { dt_ms, health }),
        3 => any::<[u8; 3]>().prop_map(Ev::Relabel),
        2 => (0usize..2, any::<bool>(), any::<bool>()).prop_map(|(target, force, break_glass)| Ev::Hold { target, force, break_glass }),
        1 => any::<bool>().prop_map(|force| Ev::Failback { force }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the faults, relabels and operator calls (force included), no route is
    /// written to a destination the cluster's facts put outside the fence, except the one
    /// target of a hold approved by break-glass. The oracle is the generated facts
    /// themselves, not `fence()`.
    #[test]
    fn no_route_crosses_the_fence(events in proptest::collection::vec(ev(), 1..200)) {
        let pb = fenced();
        let mut w = World::default();
        let mut st = State::default();
        let mut now = at(0);
        let mut ov = Overrides::default();
        // Which destinations are outside the fence: [primary, failover[0], failover[1]].
        let mut outside = [false; 3];
        for e in events {
            ov.command = None;
            match e {
                Ev::Tick { dt_ms, health } => {
                    now += jiff::SignedDuration::from_millis(dt_ms as i64);
                    let h = |c: u8| if c.is_multiple_of(4) { down() } else { up() };
                    w.probes(h(health[0]), h(health[1]), h(health[2]), now);
                }
                Ev::Relabel(codes) => {
                    for (i, c) in codes.into_iter().enumerate() {
                        let name = format!("policy-{i}");
                        let target = if i == 0 { Target::Primary } else { Target::Failover(i - 1) };
                        match rule(c) {
                            Some(r) => {
                                outside[i] = r.is_some();
                                let health = r.map_or(Health::Healthy, |r| Health::Unhealthy(r.into()));
                                w.report(&name, target, SignalKind::Policy, health, now);
                            }
                            None => {
                                outside[i] = true;
                                w.obs.remove(&name);
                            }
                        }
                    }
                }
                Ev::Hold { target, force, break_glass } => {
                    ov.hold = Some(hold_for(target, force, break_glass, now));
                }
                Ev::Failback { force } => {
                    ov.hold = None;
                    ov.command = Some(Command::Failback { by: actor(), force });
                }
            }
            // Before the first relabel nothing is judged: everything is outside.
            if !w.obs.keys().any(|k| k.starts_with("policy-")) {
                outside = [true; 3];
            }
            let d = decide(&pb, &st, &w.list(), &ov, now);
            let crossed = crossing(&d, &ov, now, |i| outside[i]);
            prop_assert!(crossed.is_none(), "{:?}", crossed);
            st = d.state.clone();
        }
    }
}

/// Missing facts refuse a target but never move traffic on their own: a healthy primary
/// whose namespace lost its label stays (and is not failed back to), a dead one is left for
/// a target the cluster clears.
#[test]
fn missing_facts_refuse_but_never_move_traffic() {
    let pb = fenced();
    let unknown_primary = |w: &mut World, now| {
        w.report(
            "policy-0",
            Target::Primary,
            SignalKind::Policy,
            Health::Unknown("residency: jurisdiction unknown (no label)".into()),
            now,
        );
        w.report(
            "policy-1",
            Target::Failover(0),
            SignalKind::Policy,
            up(),
            now,
        );
        w.report(
            "policy-2",
            Target::Failover(1),
            SignalKind::Policy,
            up(),
            now,
        );
    };
    let mut w = World::default();
    let mut st = State::default();
    unknown_primary(&mut w, at(0));
    for s in 0..5 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert_eq!(routes(&d), vec![], "moved on missing facts");
    }
    assert!(matches!(
        verdict(&pb, &w.list(), Target::Primary, at(5)),
        Verdict::Unknown { .. }
    ));
    for s in 5..8 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert_eq!(
        st.routing,
        Routing::Failover { target: 0 },
        "a dead primary is still left"
    );
    // Healthy again, but its facts are still missing: no failback to it.
    for s in 8..200 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert_eq!(
            routes(&d),
            vec![],
            "failed back to a primary the cluster does not place"
        );
    }
}
