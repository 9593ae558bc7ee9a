//! The alert rules and the dashboard in `deploy/` name only metrics failoverd exports, and
//! the rules pass `promtool check rules` and `promtool test rules`. Shared rendering:
//! `support::deploy`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

mod support;

use support::deploy::{arr, config_map, of_kind, renders, root, s, tool};

/// Metric names failoverd exports, as Prometheus stores them: every `register(` call in
/// daemon/src/metrics.rs (prefix `failoverd_`; counters get `_total`, histograms
/// `_bucket`/`_sum`/`_count`), typed by the `let` that declares the registered value.
/// The source is read rather than a fresh registry encoded: prometheus-client writes no
/// `# TYPE` line for a label family that has no series yet.
fn known_metrics() -> BTreeSet<String> {
    let path = root().join("daemon/src/metrics.rs");
    let src = std::fs::read_to_string(&path).expect("read daemon/src/metrics.rs");
    assert!(
        src.contains("Registry::with_prefix(\"failoverd\")"),
        "metrics.rs no longer registers under the prefix failoverd"
    );
    let mut out = BTreeSet::new();
    let mut prev = 0;
    while let Some(at) = src[prev..].find(".register(") {
        let call = prev + at;
        // The declaration of the registered value: from the last `let` before the call.
        let declared = &src[prev..call];
        let declared = declared.rfind("let ").map_or(declared, |i| &declared[i..]);
        let rest = &src[call + ".register(".len()..];
        prev = call + ".register(".len();
        // A name that is not a literal cannot be checked here; a rule using it then fails
        // as an unknown metric, naming it.
        let Some(name) = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let n = format!("failoverd_{name}");
        let suffixes: &[&str] = if declared.contains("Histogram") {
            &["_bucket", "_sum", "_count"]
        } else if declared.contains("Counter") {
            &["_total"]
        } else {
            &[""]
        };
        for suffix in suffixes {
            out.insert(format!("{n}{suffix}"));
        }
    }
    out
}

/// Identifiers in a PromQL expression that look like failoverd metrics (string literals
/// skipped), plus whether it reads `up`.
fn metrics_in(expr: &str) -> (Vec<String>, bool) {
    let mut names = Vec::new();
    let mut up = false;
    let mut chars = expr.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == '"' || ch == '\'' {
            // Skip the literal, honouring backslash escapes.
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == ch {
                    break;
                }
            }
            continue;
        }
        if ch.is_ascii_alphabetic() || ch == '_' {
            let mut end = i + ch.len_utf8();
            while let Some(&(j, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    end = j + c.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("failoverd_") {
                names.push(word.to_string());
            } else if word == "up" {
                up = true;
            }
        }
    }
    (names, up)
}

fn check_metric_names(
    what: &str,
    expr: &str,
    known: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let (names, up) = metrics_in(expr);
    if names.is_empty() && !up {
        problems.push(format!("{what}: `{expr}` reads no failoverd metric"));
    }
    for n in names {
        if !known.contains(&n) {
            problems.push(format!(
                "{what}: `{n}` is not exported by failoverd (daemon/src/metrics.rs)"
            ));
        }
    }
}

fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

#[test]
fn alert_rules_name_real_metrics_and_pass_promtool() {
    let renders = renders();
    let known = known_metrics();
    assert!(
        known.contains("failoverd_failovers_total")
            && known.contains("failoverd_route_write_seconds_bucket"),
        "metric names from the registry: {known:?}"
    );
    let r = renders
        .iter()
        .find(|r| r.name == "deploy")
        .expect("deploy render");
    let rules: Vec<&Value> = of_kind(r, "PrometheusRule").collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let groups = &rules[0]["spec"]["groups"];
    let mut problems = Vec::new();
    let mut alerts = BTreeSet::new();
    for g in arr(Some(groups)) {
        for rule in arr(g.get("rules")) {
            let a = s(rule, "/alert");
            alerts.insert(a.to_string());
            check_metric_names(a, s(rule, "/expr"), &known, &mut problems);
            assert!(
                matches!(s(rule, "/labels/severity"), "critical" | "warning" | "info"),
                "{a}: severity"
            );
            assert!(!s(rule, "/annotations/summary").is_empty(), "{a}: summary");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for a in [
        "FailoverdDown",
        "FailoverdNoLeader",
        "FailoverdSignalsUnknown",
        "FailoverdFailoverHappened",
        "FailoverdDrillFailed",
        "FailoverdAuditWritesFailing",
    ] {
        assert!(alerts.contains(a), "alert {a} missing");
    }

    // promtool: the rules as Prometheus will load them, then the rule unit tests (which
    // compare annotations exactly; they are about when alerts fire, so annotations go).
    let promtool = promtool();
    let tmp = tempfile::tempdir().expect("tempdir");
    let full = tmp.path().join("full.rules.json");
    std::fs::write(&full, json!({ "groups": groups }).to_string()).expect("write rules");
    let mut bare = groups.clone();
    for g in bare.as_array_mut().into_iter().flatten() {
        for rule in g["rules"].as_array_mut().into_iter().flatten() {
            if let Some(o) = rule.as_object_mut() {
                o.remove("annotations");
            }
        }
    }
    // JSON is YAML: promtool reads it as the rule file the test file names.
    std::fs::write(
        tmp.path().join("failoverd.rules.yaml"),
        json!({ "groups": bare }).to_string(),
    )
    .expect("write rules");
    std::fs::copy(
        root().join("deploy/tests/alerts.test.yaml"),
        tmp.path().join("alerts.test.yaml"),
    )
    .expect("copy alert tests");
    for args in [
        vec!["check", "rules", "full.rules.json"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(tmp.path())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_parses_and_queries_real_metrics() {
    let renders = renders();
    let known = known_metrics();
    let r = renders
        .iter()
        .find(|r| r.name == "deploy")
        .expect("deploy render");
    let cm = config_map(r, "failoverd-dashboard");
    assert_eq!(
        s(cm, "/metadata/labels/grafana_dashboard"),
        "1",
        "picked up by Grafana's sidecar"
    );
    let text = cm["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(Value::as_str)
        .expect("dashboard JSON in the ConfigMap");
    let dash: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    assert!(!s(&dash, "/uid").is_empty(), "dashboard uid");
    let panels = arr(dash.get("panels"));
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for p in panels {
        let title = s(p, "/title");
        assert!(
            ids.insert(p["id"].to_string()),
            "duplicate panel id in {title}"
        );
        let targets = arr(p.get("targets"));
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            check_metric_names(title, s(t, "/expr"), &known, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promql_scanner_skips_literals() {
    let (names, up) = metrics_in(
        r#"sum by (pod) (rate(failoverd_failovers_total{playbook="failoverd_fake"}[5m])) or up{job='failoverd_x'}"#,
    );
    assert_eq!(names, vec!["failoverd_failovers_total".to_string()]);
    assert!(up);
    let mut problems = Vec::new();
    let known: BTreeSet<String> = ["failoverd_a_total".to_string()].into();
    check_metric_names("t", "rate(failoverd_b_total[1m])", &known, &mut problems);
    check_metric_names("t", "vector(1)", &known, &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
}
