//! Explanation keys: running clocks are dropped, reasons are kept.

use super::*;

/// Ensures the explanation key drops running clocks and nothing else.
#[test]
fn explain_key_drops_clocks_only() {
    let same: &[(&str, &str)] = &[
        (
            "primary healthy for 3s 200ms of 5m before failback",
            "primary healthy for 1m 4s of 5m before failback",
        ),
        (
            "primary unhealthy (p: timeout after 500ms); minDwell holds the route for 1m 59s 900ms",
            "primary unhealthy (p: timeout after 500ms); minDwell holds the route for 2s",
        ),
        (
            "primary suspect (slo: error ratio 0.3 (for 12s))",
            "primary suspect (slo: error ratio 0.3 (for 2days 3h))",
        ),
        (
            "failed over; primary unknown: p: no result for 9s",
            "failed over; primary unknown: p: no result for 31s",
        ),
    ];
    for (a, b) in same {
        assert_ne!(a, b);
        assert_eq!(explain_key(a), explain_key(b), "{a} / {b}");
    }
    let different: &[(&str, &str)] = &[
        ("failing over to failover[0]", "failing over to failover[1]"),
        (
            "failback at step 1 of 3: 10% on the primary",
            "failback at step 2 of 3: 50% on the primary",
        ),
        (
            "primary suspect (p: refused (1/3))",
            "primary suspect (p: refused (2/3))",
        ),
        (
            "primary healthy since 2026-01-01T00:00:00Z",
            "primary healthy since 2026-01-01T00:00:01Z",
        ),
        ("primary unhealthy (a)", "primary unhealthy (b)"),
    ];
    for (a, b) in different {
        assert_ne!(explain_key(a), explain_key(b), "{a} / {b}");
    }
    assert_eq!(explain_key("held for 1m 3s 200ms."), "held for ….");
    assert_eq!(explain_key("µ 5s é"), "µ … é");
}

/// Ensures a recovering playbook's explanation, which changes every round, keeps one key for
/// the whole wait: the controller logs it once, then again when failback starts.
#[test]
fn recovering_explanations_share_one_key() {
    let pb = playbook(&[("minDwell: 120s", "minDwell: 0s")]);
    let mut w = World::default();
    let mut st = State::default();
    for s in 0..3 {
        w.probes(down(), up(), up(), at(s));
        step(&pb, &mut st, &w, &Overrides::default(), at(s));
    }
    assert!(
        matches!(st.phase, Phase::FailedOver { .. }),
        "{:?}",
        st.phase
    );
    let mut texts = std::collections::BTreeSet::new();
    let mut keys = Vec::new();
    for s in 5..60 {
        w.probes(up(), up(), up(), at(s));
        let d = step(&pb, &mut st, &w, &Overrides::default(), at(s));
        assert!(
            matches!(st.phase, Phase::Recovering { .. }),
            "{s}: {:?}",
            st.phase
        );
        texts.insert(d.explain.clone());
        let key = (d.state.phase.name(), explain_key(&d.explain));
        if keys.last() != Some(&key) {
            keys.push(key);
        }
    }
    assert!(texts.len() > 50, "the text carries a clock: {texts:?}");
    assert_eq!(keys.len(), 1, "{keys:?}");
}
