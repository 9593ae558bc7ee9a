//! Duration bounds, and the loader under arbitrary and near-valid input (property tests).
#![allow(clippy::unwrap_used)]

use std::time::Duration as StdDuration;

use proptest::prelude::*;

use super::*;

/// A valid playbook using every bounded duration field; tests derive variants from it.
const VALID: &str = r#"apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata:
  name: svc
spec:
  virtualService: { namespace: ns, name: svc }
  route: primary
  primary: { host: svc.ns.svc.cluster.local, subset: v1 }
  failover:
    - host: svc.ns-dr.svc.cluster.local
  probes:
    - name: primary-health
      target: primary
      http: { url: "http://svc.ns.svc.cluster.local:8080/healthz" }
      interval: 1s
      timeout: 500ms
    - name: dr-health
      target: failover[0]
      tcp: { address: "svc.ns-dr.svc.cluster.local:8080" }
  slos:
    - name: errors
      target: primary
      scrape:
        url: "http://127.0.0.1:9/metrics"
        metric: requests_total
        errorWhen: { code: "=~5.." }
        window: 1m
        above: 0.05
      timeout: 2s
      evaluationInterval: 5s
    - name: burn
      target: primary
      server: "http://127.0.0.1:9090"
      ratio:
        objective: 99.9
        errors: "sum(rate(e[{{window}}]))"
        total: "sum(rate(t[{{window}}]))"
        burnRates:
          - { long: 1h, short: 5m, factor: 14.4 }
  trigger: { failureThreshold: 3, for: 10s }
  failback: { after: 60s, steps: [10, 100], stepInterval: 30s }
  minDwell: 2m
"#;

fn edit(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "`{from}` is ambiguous");
    VALID.replacen(from, to, 1)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (u64, u64) {
    let i = text.find(needle).unwrap();
    let before = &text[..i];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |n| n + 1)..]
        .chars()
        .count()
        + 1;
    (line as u64, col as u64)
}

/// The base fixture is valid, so each refusal below comes from its one edit.
#[test]
fn fixture_is_valid() {
    let pb = parse("pb.yaml", VALID).unwrap();
    assert_eq!(pb.validate("pb.yaml"), vec![]);
}

/// Ensures every duration field has its documented upper bound, refused at the value's own
/// file:line:col with the field's bound in the message, and the bound itself is accepted.
#[test]
fn durations_over_their_bound_are_refused_at_their_location() {
    // (edit from, edit to, the value as written, the bound in the message)
    let table: &[(&str, &str, &str, &str)] = &[
        ("interval: 1s", "interval: 61m", "61m", "1h"),
        (
            "evaluationInterval: 5s",
            "evaluationInterval: 2h",
            "2h",
            "1h",
        ),
        ("timeout: 2s", "timeout: 6m", "6m", "5m"),
        ("window: 1m", "window: 25h", "25h", "1day"),
        ("long: 1h", "long: 31d", "31d", "30days"),
        ("short: 5m", "short: 800h", "800h", "30days"),
        ("for: 10s", "for: 8d", "8d", "7days"),
        ("after: 60s", "after: 169h", "169h", "7days"),
        ("stepInterval: 30s", "stepInterval: 8d", "8d", "7days"),
        ("minDwell: 2m", "minDwell: 1y", "1y", "7days"),
        // Beyond anything failoverd accepts, and beyond what a duration can hold.
        ("minDwell: 2m", "minDwell: 2y", "2y", "1year"),
        (
            "minDwell: 2m",
            "minDwell: 9000000000000s",
            "9000000000000s",
            "1year",
        ),
        (
            "minDwell: 2m",
            "minDwell: 584942417355y",
            "584942417355y",
            "",
        ),
    ];
    for (from, to, value, bound) in table {
        let text = edit(from, to);
        let err = parse("pb.yaml", &text).unwrap_err();
        assert_eq!(
            (err.line, err.column),
            at(&text, value),
            "{to}: wrong location: {err}"
        );
        assert!(err.message.contains(bound), "{to}: {err}");
        assert!(
            err.message.contains("longer than") || err.message.contains("invalid duration"),
            "{to}: {err}"
        );
    }
    // The probe timeout is checked after parsing (it must also be shorter than the interval).
    let text = edit("interval: 1s", "interval: 1h").replacen("timeout: 500ms", "timeout: 10m", 1);
    let pb = parse("pb.yaml", &text).unwrap();
    let ps = pb.validate("pb.yaml");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].field, "spec.probes[0].timeout");
    assert_eq!((ps[0].line, ps[0].column), at(&text, "10m"));
    assert!(ps[0].message.contains("maximum 5m"), "{}", ps[0]);
    // Each bound itself is allowed.
    for (from, to) in [
        ("interval: 1s", "interval: 1h"),
        (
            "timeout: 2s\n      evaluationInterval: 5s",
            "timeout: 5m\n      evaluationInterval: 1h",
        ),
        ("for: 10s", "for: 7d"),
        ("after: 60s", "after: 7d"),
        ("stepInterval: 30s", "stepInterval: 7d"),
        ("minDwell: 2m", "minDwell: 7d"),
        ("long: 1h", "long: 30d"),
        ("above: 0.05", "above: 0.5"),
    ] {
        // The scrape window must stay at least 2 × the longest evaluation interval.
        let text = edit(from, to).replacen("window: 1m", "window: 12h", 1);
        let pb = parse("pb.yaml", &text).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_eq!(pb.validate("pb.yaml"), vec![], "{to}");
    }
}

/// Ensures a scrape window is bounded in evaluations too (one sample is kept per evaluation).
#[test]
fn scrape_window_is_bounded_in_evaluations() {
    let ok = edit("window: 1m", "window: 1d").replacen(
        "evaluationInterval: 5s",
        "evaluationInterval: 10s",
        1,
    );
    let pb = parse("pb.yaml", &ok).unwrap();
    assert_eq!(pb.validate("pb.yaml"), vec![], "8,640 evaluations");
    let text = edit("window: 1m", "window: 1d");
    let ps = parse("pb.yaml", &text).unwrap().validate("pb.yaml");
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].field, "spec.slos[0].scrape.window");
    assert!(ps[0].line > 0, "{}", ps[0]);
    assert!(
        ps[0].message.contains("holds 17280 evaluations")
            && ps[0].message.contains("at most 10000"),
        "{}",
        ps[0]
    );
}

/// Checks what an accepted playbook must hold, on the object the loader produced.
fn check_accepted(pb: &Playbook) -> Result<(), TestCaseError> {
    let s = &pb.spec;
    let le = |d: Duration, max: u64| d.get() <= StdDuration::from_secs(max);
    prop_assert!(le(s.min_dwell, 7 * 86400));
    prop_assert!(le(s.trigger.for_, 7 * 86400));
    prop_assert!(le(s.failback.after, 7 * 86400));
    prop_assert!(le(s.failback.step_interval, 7 * 86400));
    for p in &s.probes {
        prop_assert!(le(p.interval, 3600) && !p.interval.get().is_zero());
        prop_assert!(p.timeout.value < p.interval && le(p.timeout.value, 300));
    }
    for o in &s.slos {
        prop_assert!(le(o.evaluation_interval, 3600) && le(o.timeout, 300));
        if let Some(sc) = &o.scrape {
            prop_assert!(le(sc.window, 86400));
            prop_assert!(sc.window.get() <= o.evaluation_interval.get().saturating_mul(10_000));
        }
        if let Some(r) = &o.ratio {
            for b in &r.burn_rates {
                prop_assert!(le(b.long, 30 * 86400) && le(b.short, 30 * 86400));
            }
        }
    }
    let steps = &s.failback.steps.value;
    prop_assert_eq!(steps.last().copied(), Some(100));
    prop_assert!(steps.windows(2).all(|w| w[0] < w[1]) && steps[0] >= 1);
    prop_assert!(!s.failover.value.is_empty());
    prop_assert!(s.trigger.failure_threshold.value >= 1);
    Ok(())
}

/// Edits that keep the text close to a playbook: swapped values, dropped or repeated
/// lines, stray characters, YAML aliases.
fn near_valid() -> impl Strategy<Value = String> {
    let duration = prop_oneof![
        Just("0s".to_string()),
        (0u64..10_000).prop_map(|n| format!("{n}ms")),
        (0u64..100_000).prop_map(|n| format!("{n}s")),
        (0u64..400).prop_map(|n| format!("{n}d")),
        any::<u64>().prop_map(|n| format!("{n}s")),
        any::<u64>().prop_map(|n| format!("{n}y")),
        Just("1h 30m".to_string()),
        Just("-1s".to_string()),
        "[0-9a-zµ ]{0,8}",
    ];
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
        Just(".nan".to_string()),
        Just(".inf".to_string()),
        Just("-.inf".to_string()),
        (0u32..300).prop_map(|n| n.to_string()),
    ];
    let fields = [
        "interval: 1s",
        "timeout: 500ms",
        "window: 1m",
        "evaluationInterval: 5s",
        "timeout: 2s",
        "long: 1h",
        "short: 5m",
        "for: 10s",
        "after: 60s",
        "stepInterval: 30s",
        "minDwell: 2m",
    ];
    let numeric = [
        "failureThreshold: 3",
        "above: 0.05",
        "objective: 99.9",
        "factor: 14.4",
        "steps: [10, 100]",
    ];
    let edit_duration = (0..fields.len(), duration).prop_map(move |(i, d)| {
        let (k, _) = fields[i].split_once(": ").unwrap();
        VALID.replacen(fields[i], &format!("{k}: {d}"), 1)
    });
    let edit_number = (0..numeric.len(), number.clone(), number).prop_map(move |(i, a, b)| {
        let (k, _) = numeric[i].split_once(": ").unwrap();
        let v = if k == "steps" {
            format!("[{a}, {b}]")
        } else {
            a
        };
        VALID.replacen(numeric[i], &format!("{k}: {v}"), 1)
    });
    let lines = VALID.lines().count();
    let drop_or_repeat = (0..lines, any::<bool>()).prop_map(|(n, repeat)| {
        let mut out: Vec<&str> = VALID.lines().collect();
        if repeat {
            out.insert(n, out[n]);
        } else {
            out.remove(n);
        }
        out.join("\n")
    });
    let stray = (0..VALID.len(), "[ -~\t\n:{}\\[\\]&*!|>'\"#%@`-]{1,4}").prop_map(|(i, s)| {
        let i = (0..=i)
            .rev()
            .find(|i| VALID.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}{s}{}", &VALID[..i], &VALID[i..])
    });
    // Small alias chains (the full bomb is `yaml_bomb_is_refused`: each costs seconds).
    let aliases = (1usize..4).prop_map(bomb);
    prop_oneof![edit_duration, edit_number, drop_or_repeat, stray, aliases]
}

/// A billion-laughs document (10^11 nodes once expanded) is refused, not expanded: the loader
/// stays bounded on a YAML bomb dropped into the playbooks directory.
#[test]
fn yaml_bomb_is_refused() {
    let text = bomb(11);
    let t = std::time::Instant::now();
    let err = parse("pb.yaml", &text).unwrap_err();
    eprintln!("refused in {:?}: {err}", t.elapsed());
    assert!(err.line >= 1, "{err}");
}

/// `VALID` with an alias chain of `depth` levels, each ten times the one below, as labels.
fn bomb(depth: usize) -> String {
    let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for d in 1..depth {
        y.push_str(&format!(
            "a{d}: &a{d} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = d - 1
        ));
    }
    VALID.replacen(
        "  name: svc\n",
        &format!(
            "  name: svc\n  labels:\n    {}\n",
            y.trim_end().replace('\n', "\n    ")
        ),
        1,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes through the real file loader: Ok or problems naming the file, no panic.
    #[test]
    fn loader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pb.yaml");
        std::fs::write(&path, &bytes).unwrap();
        match load_file(&path) {
            Ok(l) => check_accepted(&l.playbook)?,
            Err(ps) => {
                prop_assert!(!ps.is_empty());
                for p in &ps {
                    prop_assert_eq!(&p.file, &path.display().to_string());
                    prop_assert!(!p.message.is_empty());
                }
                if std::str::from_utf8(&bytes).is_err() {
                    prop_assert!(ps[0].message.contains("cannot read"), "{}", ps[0]);
                }
            }
        }
    }

    /// Near-valid playbooks: accepted ones hold every bound and rule (checked on the parsed
    /// object); refused ones name a location inside the text.
    #[test]
    fn loader_locates_every_refusal_of_near_valid_text(text in near_valid()) {
        match parse("pb.yaml", &text) {
            Ok(pb) => {
                let ps = pb.validate("pb.yaml");
                if ps.is_empty() {
                    check_accepted(&pb)?;
                } else {
                    for p in &ps {
                        prop_assert!(!p.field.is_empty() && !p.message.is_empty(), "{p}");
                    }
                }
            }
            Err(p) => {
                let lines = text.lines().count() as u64 + 1;
                prop_assert!(p.line >= 1 && p.line <= lines, "{p}\n{text}");
                prop_assert!(p.column >= 1, "{p}");
                prop_assert!(!p.message.is_empty(), "{p}");
            }
        }
    }
}
