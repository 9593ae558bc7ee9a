#![allow(clippy::unwrap_used)]
//! The rules a playbook must keep (probe names, targets, timeouts, thresholds, hosts,
//! subsets, failback steps, probes on every target): each refusal located at
//! file:line:col and field (fixtures: `support::playbooks`).

mod support;

use support::playbooks::{VALID, at, at_index, check, edit, one_problem, problems};

/// Two probes with the same name are refused at the second name.
#[test]
fn duplicate_probe_names_are_refused() {
    let text = edit("- name: dr-health", "- name: primary-health");
    let p = one_problem(&text);
    let second = text.rfind("primary-health").unwrap();
    check(
        &p,
        at_index(&text, second),
        "spec.probes[1].name",
        &["duplicate signal name `primary-health`"],
    );
}

/// An SLO may not reuse a probe's name either: names share one namespace.
#[test]
fn slo_name_clashing_with_probe_is_refused() {
    let text = format!(
        "{VALID}  slos:\n    - name: dr-health\n      target: primary\n      prometheus: {{ query: up, above: 0.5 }}\n"
    );
    let p = one_problem(&text);
    let second = text.rfind("dr-health").unwrap();
    check(
        &p,
        at_index(&text, second),
        "spec.slos[0].name",
        &["duplicate signal name `dr-health`"],
    );
}

/// A probe target `failover[3]` that does not exist is refused at the target.
#[test]
fn probe_target_out_of_range_is_refused() {
    let text = edit("target: failover[0]", "target: failover[3]");
    let (_, ps) = problems(&text);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    check(
        &ps[0],
        at(&text, "failover[3]"),
        "spec.probes[1].target",
        &["`failover[3]` does not exist", "spec.failover has 1 entry"],
    );
    // The only probe of failover[0] now points elsewhere, so failover[0] is unwatched.
    check(
        &ps[1],
        at(&text, "svc.ns-dr.svc.cluster.local\n"),
        "spec.failover[0]",
        &["no probe or SLO watches `failover[0]`"],
    );
}

/// A target that is not `primary` or `failover[N]` is refused when parsed.
#[test]
fn malformed_target_is_refused() {
    let text = edit("target: failover[0]", "target: dr");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "dr\n"),
        "",
        &["invalid target `dr`", "expected `primary` or `failover[N]`"],
    );
}

/// A timeout equal to or longer than the interval is refused at the timeout.
#[test]
fn timeout_not_shorter_than_interval_is_refused() {
    for timeout in ["1s", "2s"] {
        let text = edit("timeout: 500ms", &format!("timeout: {timeout}"));
        let p = one_problem(&text);
        check(
            &p,
            at(&text, &format!("{timeout}\n    - name: dr-health")),
            "spec.probes[0].timeout",
            &[&format!("timeout {timeout}"), "shorter than interval 1s"],
        );
    }
}

/// With the default timeout (500ms) and a 500ms interval, the error points at the probe name.
#[test]
fn default_timeout_too_long_points_at_probe() {
    let text = edit(
        "      interval: 1s\n      timeout: 500ms\n",
        "      interval: 500ms\n",
    );
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "primary-health"),
        "spec.probes[0].timeout",
        &["timeout 500ms", "shorter than interval 500ms"],
    );
}

/// `failureThreshold: 0` is refused at the value.
#[test]
fn failure_threshold_zero_is_refused() {
    let text = format!("{VALID}  trigger:\n    failureThreshold: 0\n");
    let p = one_problem(&text);
    let (line, col) = at(&text, "failureThreshold: 0");
    check(
        &p,
        (line, col + "failureThreshold: ".len() as u64),
        "spec.trigger.failureThreshold",
        &["must be at least 1"],
    );
}

/// An empty failover list is refused at the list.
#[test]
fn empty_failover_list_is_refused() {
    let text = edit(
        "  failover:\n    - host: svc.ns-dr.svc.cluster.local\n",
        "  failover: []\n",
    )
    .replace("target: failover[0]", "target: primary");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "[]"),
        "spec.failover",
        &["at least one failover target"],
    );
}

/// Hosts with a scheme, a wildcard or nothing at all are refused at the host.
#[test]
fn malformed_hosts_are_refused() {
    let cases = [
        ("http://x", "http://x", "must be a bare host name"),
        ("\"*\"", "\"*\"", "must not be a wildcard"),
        ("\"\"", "\"\"", "host must not be empty"),
        (
            "svc.ns-dr:8080",
            "svc.ns-dr:8080",
            "no scheme, port or path",
        ),
        (
            "Under_Score.example",
            "Under_Score",
            "not a valid domain name",
        ),
    ];
    for (host, needle, fragment) in cases {
        let text = edit(
            "- host: svc.ns-dr.svc.cluster.local",
            &format!("- host: {host}"),
        );
        let p = one_problem(&text);
        check(&p, at(&text, needle), "spec.failover[0].host", &[fragment]);
    }
    // The same check guards the primary.
    let text = edit(
        "host: svc.ns.svc.cluster.local",
        "host: \"*.ns.svc.cluster.local\"",
    );
    let p = one_problem(&text);
    check(&p, at(&text, "\"*.ns"), "spec.primary.host", &["wildcard"]);
}

/// A subset that is not a DNS-1123 label is refused at the subset.
#[test]
fn bad_subset_is_refused() {
    let text = edit("subset: v1", "subset: V_1");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "V_1"),
        "spec.primary.subset",
        &["`V_1` is not a DNS-1123 label"],
    );
}

/// Failback steps must rise strictly and end at 100; each bad list is refused at the list.
#[test]
fn bad_failback_steps_are_refused() {
    for steps in [
        "[10, 50, 90]",
        "[50, 10, 100]",
        "[50, 50, 100]",
        "[0, 100]",
        "[]",
    ] {
        let text = format!("{VALID}  failback:\n    steps: {steps}\n");
        let p = one_problem(&text);
        check(
            &p,
            at(&text, steps),
            "spec.failback.steps",
            &["strictly increasing", "ending at 100"],
        );
    }
}

/// A percentage above 255 does not fit the type and is refused when parsed, located.
#[test]
fn failback_step_out_of_type_range_is_refused() {
    let text = format!("{VALID}  failback:\n    steps: [50, 300]\n");
    let p = one_problem(&text);
    assert_eq!(p.line, at(&text, "300").0, "{p}");
    assert!(p.column > 0, "{p}");
}

/// A failover target that no probe or SLO watches is refused at its host.
#[test]
fn failover_target_without_probe_is_refused() {
    let text = edit(
        "    - host: svc.ns-dr.svc.cluster.local\n",
        "    - host: svc.ns-dr.svc.cluster.local\n    - host: svc.region-b.global\n",
    );
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "svc.region-b.global"),
        "spec.failover[1]",
        &["no probe or SLO watches `failover[1]`"],
    );
}

/// A primary that nothing watches is refused (failoverd could never notice it failing).
#[test]
fn primary_without_probe_is_refused() {
    let text = edit("target: primary", "target: failover[0]");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "svc\n"), // the playbook's name: the playbook as a whole
        "spec.probes",
        &["no probe or SLO watches `primary`"],
    );
}
