//! Property tests: random fault sequences never break the engine's safety rules.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        dt_ms: u64,
        p: u8,
        f0: u8,
        f1: u8,
    },
    Freeze {
        secs: u64,
    },
    Hold {
        target: usize,
        secs: u64,
        force: bool,
    },
    Failback {
        force: bool,
    },
}

fn health_of(code: u8) -> Health {
    match code % 10 {
        0..=5 => Health::Healthy,
        6..=8 => Health::Unhealthy("down".into()),
        _ => Health::Unknown("no data".into()),
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        20 => (0u64..4000, any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(dt_ms, p, f0, f1)| Ev::Tick { dt_ms, p, f0, f1 }),
        1 => (1u64..60).prop_map(|secs| Ev::Freeze { secs }),
        1 => (0usize..2, 1u64..120, any::<bool>()).prop_map(|(target, secs, force)| Ev::Hold { target, secs, force }),
        1 => any::<bool>().prop_map(|force| Ev::Failback { force }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Invariants over random sequences of faults, recoveries, overrides and clock advances:
    /// weights sum to 100; an automatic move never routes to zero healthy destinations nor to a
    /// destination known unhealthy; automatic moves that start a move are at least `minDwell`
    /// apart unless an operator intervened; deciding twice on the same inputs adds nothing.
    #[test]
    fn engine_invariants(events in proptest::collection::vec(ev(), 1..300), dwell in 0u64..60, steps in 0usize..3) {
        let steps_yaml = ["[100]", "[10, 50, 100]", "[1, 99, 100]"][steps];
        let pb = playbook(&[
            ("minDwell: 120s", &format!("minDwell: {dwell}s")),
            ("steps: [10, 50, 100]", &format!("steps: {steps_yaml}")),
            ("after: 60s", "after: 5s"),
            ("stepInterval: 30s", "stepInterval: 2s"),
        ]);
        let mut w = World::default();
        let mut st = State::default();
        let mut now = at(0);
        let mut ov = Overrides::default();
        let mut last_start: Option<Timestamp> = None;
        w.probes(Health::Healthy, Health::Healthy, Health::Healthy, now);
        for e in events {
            ov.command = None;
            match e {
                Ev::Tick { dt_ms, p, f0, f1 } => {
                    now += jiff::SignedDuration::from_millis(dt_ms as i64);
                    w.probes(health_of(p), health_of(f0), health_of(f1), now);
                }
                Ev::Freeze { secs } => ov.freeze = Some(Freeze { by: actor(), until: Some(now + jiff::SignedDuration::from_secs(secs as i64)) }),
                Ev::Hold { target, secs, force } => ov.hold = Some(Hold { by: actor(), target, until: now + jiff::SignedDuration::from_secs(secs as i64), force, break_glass: None }),
                Ev::Failback { force } => { ov.hold = None; ov.command = Some(Command::Failback { by: actor(), force }); }
            }
            let obs = w.list();
            let d = decide(&pb, &st, &obs, &ov, now);
            let again = decide(&pb, &st, &obs, &ov, now);
            prop_assert_eq!(&d, &again, "decide is not deterministic");
            for a in &d.actions {
                let Action::Route { from, to, kind, forced, actor, .. } = a else { continue };
                prop_assert_eq!(*from, st.routing);
                let weights = to.weights();
                prop_assert_eq!(weights.iter().map(|(_, w)| u32::from(*w)).sum::<u32>(), 100);
                prop_assert!(weights.iter().all(|(_, w)| *w > 0));
                if *forced {
                    continue;
                }
                let verdicts: Vec<Verdict> = to.targets().map(|t| verdict(&pb, &obs, t, now)).collect();
                prop_assert!(verdicts.iter().any(Verdict::is_healthy), "{:?} to zero healthy destinations: {:?}", kind, verdicts);
                prop_assert!(!verdicts.iter().any(|v| matches!(v, Verdict::Unhealthy { .. })), "{:?} to an unhealthy destination: {:?}", kind, verdicts);
                if actor.is_some() {
                    last_start = None;
                } else if kind.starts_move(*from) {
                    if let Some(prev) = last_start {
                        let gap = now.duration_since(prev).as_secs_f64();
                        prop_assert!(gap >= dwell as f64, "{:?} {}s after the previous move, minDwell {}s", kind, gap, dwell);
                    }
                    last_start = Some(now);
                }
            }
            st = d.state.clone();
            // Re-deciding on the applied state with the same inputs is harmless (a one-shot
            // command is consumed by the round that saw it).
            if ov.command.is_some() {
                continue;
            }
            let idem = decide(&pb, &st, &obs, &ov, now);
            prop_assert!(idem.actions.iter().all(|a| !matches!(a, Action::Route { .. })), "second decide moved again: {:?}", idem.actions);
        }
    }
}
