//! Table tests of the residency and policy rules: each rule, each way a jurisdiction is
//! unknown, and the objects' parsing.

use serde_json::{Value, json};

use super::*;

pub(super) fn namespace(name: &str, label: Option<&str>) -> Value {
    let mut o = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(l) = label {
        o["metadata"]["labels"] = json!({ JURISDICTION_LABEL: l, "team": "dr" });
    }
    o
}

pub(super) fn peer_auth(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

pub(super) fn mode(m: &str) -> Value {
    json!({"mtls": {"mode": m}})
}

pub(super) fn dest_rule(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

pub(super) fn service_entry(ns: &str, name: &str, hosts: &[&str], label: Option<&str>) -> Value {
    let mut o = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": hosts, "location": "MESH_EXTERNAL", "resolution": "DNS"}});
    if let Some(l) = label {
        o["metadata"]["labels"] = json!({ JURISDICTION_LABEL: l });
    }
    o
}

pub(super) fn view(objects: &[Value]) -> ClusterView {
    let mut v = ClusterView::default();
    for o in objects {
        v.insert(o).unwrap();
    }
    v
}

pub(super) fn fence(allowed: &[&str], strict: bool) -> Fence {
    Fence {
        allowed: Some(allowed.iter().map(|s| s.to_string()).collect()),
        require_strict_mtls: strict,
    }
}

pub(super) const DR_HOST: &str = "cases.cases-dr.svc.cluster.local";

/// A DR namespace labelled ID under a namespace-wide STRICT PeerAuthentication.
pub(super) fn good_dr() -> Vec<Value> {
    vec![
        namespace("cases-dr", Some("ID")),
        peer_auth("cases-dr", "default", mode("STRICT")),
    ]
}

fn violation(objects: &[Value], host: &str, subset: Option<&str>, f: &Fence) -> Option<String> {
    judge(&view(objects), host, subset, f).violation
}

/// Ensures a labelled, STRICT target inside the allowed set passes, and says where both facts
/// came from.
#[test]
fn a_target_in_the_allowed_set_under_strict_mtls_passes() {
    let p = judge(&view(&good_dr()), DR_HOST, None, &fence(&["ID"], true));
    assert_eq!(p.violation, None);
    assert_eq!(p.jurisdiction.as_deref(), Some("ID"));
    assert_eq!(p.host, DR_HOST);
    assert!(p.detail.contains("Namespace cases-dr"), "{}", p.detail);
    assert!(p.detail.contains("cases-dr/default"), "{}", p.detail);
}

/// Ensures the residency rule: a jurisdiction outside the set, and every unknown case.
#[test]
fn residency_rule_table() {
    let f = fence(&["ID", "MY"], false);
    let rows: Vec<(&str, Vec<Value>, Option<&str>)> = vec![
        ("labelled ID", vec![namespace("cases-dr", Some("ID"))], None),
        (
            "labelled SG",
            vec![namespace("cases-dr", Some("SG"))],
            Some("residency: jurisdiction SG is outside the allowed set [ID, MY]"),
        ),
        (
            "no label",
            vec![namespace("cases-dr", None)],
            Some(
                "residency: jurisdiction unknown (namespace cases-dr has no failoverd.dev/jurisdiction label)",
            ),
        ),
        (
            "no namespace",
            vec![namespace("other", Some("ID"))],
            Some("residency: jurisdiction unknown (namespace cases-dr does not exist)"),
        ),
        (
            "lower case",
            vec![namespace("cases-dr", Some("id"))],
            Some(
                "residency: jurisdiction unknown (namespace cases-dr has failoverd.dev/jurisdiction=\"id\", not an ISO 3166-1 alpha-2 code)",
            ),
        ),
        (
            "alpha-3",
            vec![namespace("cases-dr", Some("IDN"))],
            Some(
                "residency: jurisdiction unknown (namespace cases-dr has failoverd.dev/jurisdiction=\"IDN\", not an ISO 3166-1 alpha-2 code)",
            ),
        ),
    ];
    for (name, objects, want) in rows {
        let got = violation(&objects, DR_HOST, None, &f);
        assert_eq!(got.as_deref(), want, "{name}");
    }
}

/// Ensures an empty allowed set refuses even a labelled target, and no residency rule refuses
/// nothing while still reporting the jurisdiction.
#[test]
fn empty_and_absent_allowed_sets() {
    let objects = vec![namespace("cases-dr", Some("SG"))];
    assert!(violation(&objects, DR_HOST, None, &fence(&[], false)).is_some());
    let open = Fence::default();
    assert!(!open.is_active());
    let p = judge(&view(&objects), DR_HOST, None, &open);
    assert_eq!(p.violation, None);
    assert_eq!(p.jurisdiction.as_deref(), Some("SG"));
    let unknown = judge(&view(&[]), DR_HOST, None, &open);
    assert_eq!((unknown.violation, unknown.jurisdiction), (None, None));
    assert!(fence(&[], false).is_active());
    assert!(
        Fence {
            allowed: None,
            require_strict_mtls: true
        }
        .is_active()
    );
}

#[test]
fn country_code_shape() {
    for (s, want) in [
        ("ID", true),
        ("SG", true),
        ("id", false),
        ("Id", false),
        ("IDN", false),
        ("I", false),
        ("", false),
        ("I1", false),
        ("ÍD", false),
    ] {
        assert_eq!(is_country_code(s), want, "{s:?}");
    }
}

/// Ensures the PeerAuthentication rule: namespace-wide first, mesh-wide second, PERMISSIVE by
/// default, UNSET inherits, workload-level and port-level exceptions break it.
#[test]
fn strict_mtls_rule_table() {
    let ns = namespace("cases-dr", Some("ID"));
    let f = fence(&["ID"], true);
    let not_covered = |why: &str| {
        Some(format!(
            "policy: namespace cases-dr is not covered by a STRICT PeerAuthentication ({why})"
        ))
    };
    let workload =
        |m: &str| json!({"selector": {"matchLabels": {"app": "cases"}}, "mtls": {"mode": m}});
    let rows: Vec<(&str, Vec<Value>, Option<String>)> = vec![
        (
            "none at all",
            vec![],
            not_covered(
                "no namespace-wide or mesh-wide (istio-system) one sets a mode: Istio's default is PERMISSIVE",
            ),
        ),
        (
            "mesh-wide PERMISSIVE",
            vec![peer_auth("istio-system", "default", mode("PERMISSIVE"))],
            not_covered("mesh-wide istio-system/default is PERMISSIVE"),
        ),
        (
            "mesh-wide STRICT",
            vec![peer_auth("istio-system", "default", mode("STRICT"))],
            None,
        ),
        (
            "namespace UNSET and no mesh-wide",
            vec![peer_auth("cases-dr", "default", mode("UNSET"))],
            not_covered(
                "no namespace-wide or mesh-wide (istio-system) one sets a mode: Istio's default is PERMISSIVE",
            ),
        ),
        (
            "namespace UNSET inherits mesh STRICT",
            vec![
                peer_auth("istio-system", "default", mode("STRICT")),
                peer_auth("cases-dr", "default", mode("UNSET")),
            ],
            None,
        ),
        (
            "namespace without mtls inherits mesh PERMISSIVE",
            vec![
                peer_auth("istio-system", "default", mode("PERMISSIVE")),
                peer_auth("cases-dr", "default", json!({})),
            ],
            not_covered("mesh-wide istio-system/default is PERMISSIVE"),
        ),
        (
            "namespace PERMISSIVE beats mesh STRICT",
            vec![
                peer_auth("istio-system", "default", mode("STRICT")),
                peer_auth("cases-dr", "default", mode("PERMISSIVE")),
            ],
            not_covered("namespace-wide cases-dr/default is PERMISSIVE"),
        ),
        (
            "namespace STRICT beats mesh PERMISSIVE",
            vec![
                peer_auth("istio-system", "default", mode("PERMISSIVE")),
                peer_auth("cases-dr", "default", mode("STRICT")),
            ],
            None,
        ),
        (
            "namespace DISABLE",
            vec![peer_auth("cases-dr", "default", mode("DISABLE"))],
            not_covered("namespace-wide cases-dr/default is DISABLE"),
        ),
        (
            "two namespace-wide, one PERMISSIVE",
            vec![
                peer_auth("cases-dr", "a", mode("STRICT")),
                peer_auth("cases-dr", "b", mode("PERMISSIVE")),
            ],
            not_covered("namespace-wide cases-dr/b is PERMISSIVE"),
        ),
        (
            "another namespace's STRICT does not count",
            vec![peer_auth("cases", "default", mode("STRICT"))],
            not_covered(
                "no namespace-wide or mesh-wide (istio-system) one sets a mode: Istio's default is PERMISSIVE",
            ),
        ),
        (
            "workload PERMISSIVE under namespace STRICT",
            vec![
                peer_auth("cases-dr", "default", mode("STRICT")),
                peer_auth("cases-dr", "legacy", workload("PERMISSIVE")),
            ],
            Some(
                "policy: workload-level PeerAuthentication cases-dr/legacy sets PERMISSIVE in namespace cases-dr"
                    .into(),
            ),
        ),
        (
            "workload DISABLE under mesh STRICT",
            vec![
                peer_auth("istio-system", "default", mode("STRICT")),
                peer_auth("cases-dr", "legacy", workload("DISABLE")),
            ],
            Some(
                "policy: workload-level PeerAuthentication cases-dr/legacy sets DISABLE in namespace cases-dr"
                    .into(),
            ),
        ),
        (
            "workload STRICT and UNSET are fine",
            vec![
                peer_auth("cases-dr", "default", mode("STRICT")),
                peer_auth("cases-dr", "w1", workload("STRICT")),
                peer_auth("cases-dr", "w2", workload("UNSET")),
            ],
            None,
        ),
        (
            "workload PERMISSIVE elsewhere does not count",
            vec![
                peer_auth("cases-dr", "default", mode("STRICT")),
                peer_auth("cases", "legacy", workload("PERMISSIVE")),
            ],
            None,
        ),
        (
            "empty selector is namespace-wide",
            vec![peer_auth(
                "cases-dr",
                "default",
                json!({"selector": {"matchLabels": {}}, "mtls": {"mode": "PERMISSIVE"}}),
            )],
            not_covered("namespace-wide cases-dr/default is PERMISSIVE"),
        ),
        (
            "a port not STRICT",
            vec![
                peer_auth("cases-dr", "default", mode("STRICT")),
                peer_auth(
                    "cases-dr",
                    "metrics",
                    json!({"selector": {"matchLabels": {"app": "cases"}}, "mtls": {"mode": "STRICT"},
                        "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}}),
                ),
            ],
            Some("policy: PeerAuthentication cases-dr/metrics sets port 9090 to PERMISSIVE".into()),
        ),
    ];
    for (name, mut objects, want) in rows {
        objects.push(ns.clone());
        let got = violation(&objects, DR_HOST, None, &f);
        assert_eq!(got, want, "{name}");
        // Without the mTLS requirement the same facts pass.
        assert_eq!(
            violation(&objects, DR_HOST, None, &fence(&["ID"], false)),
            None,
            "{name} (no mTLS rule)"
        );
    }
}

/// Ensures the DestinationRule rule: DISABLE at the top, per port, per subset (the target's,
/// or all when it names none), short and wildcard hosts, and a `tls` without a mode.
#[test]
fn destination_rule_tls_table() {
    let f = fence(&["ID"], true);
    let subset = |name: &str, tls: Value| json!({"name": name, "labels": {"v": name}, "trafficPolicy": {"tls": tls}});
    let disabled = |at: &str| {
        Some(format!(
            "policy: DestinationRule cases-dr/cases disables TLS to {DR_HOST}{at}"
        ))
    };
    let rows: Vec<(&str, Value, Option<&str>, Option<String>)> = vec![
        (
            "top DISABLE (FQDN host)",
            json!({"host": DR_HOST, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            None,
            disabled(""),
        ),
        (
            "top DISABLE (short host)",
            json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            None,
            disabled(""),
        ),
        (
            "top DISABLE (wildcard host)",
            json!({"host": "*.cases-dr.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            None,
            disabled(""),
        ),
        (
            "tls without a mode is DISABLE",
            json!({"host": "cases", "trafficPolicy": {"tls": {}}}),
            None,
            disabled(""),
        ),
        (
            "ISTIO_MUTUAL is fine",
            json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
            None,
            None,
        ),
        (
            "another host",
            json!({"host": "billing", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            None,
            None,
        ),
        (
            "per port",
            json!({"host": "cases", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "ISTIO_MUTUAL"}},
                {"port": {"number": 8080}, "tls": {"mode": "DISABLE"}}]}}),
            None,
            disabled(" (port 8080)"),
        ),
        (
            "subset v2 DISABLE, target subset v1",
            json!({"host": "cases", "subsets": [subset("v1", json!({"mode": "ISTIO_MUTUAL"})), subset("v2", json!({"mode": "DISABLE"}))]}),
            Some("v1"),
            None,
        ),
        (
            "subset v2 DISABLE, target subset v2",
            json!({"host": "cases", "subsets": [subset("v1", json!({"mode": "ISTIO_MUTUAL"})), subset("v2", json!({"mode": "DISABLE"}))]}),
            Some("v2"),
            disabled(" (subset v2)"),
        ),
        (
            "subset v2 DISABLE, target names no subset",
            json!({"host": "cases", "subsets": [subset("v2", json!({"mode": "DISABLE"}))]}),
            None,
            disabled(" (subset v2)"),
        ),
        (
            "subset port DISABLE",
            json!({"host": "cases", "subsets": [{"name": "v2", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 9000}, "tls": {"mode": "DISABLE"}}]}}]}),
            Some("v2"),
            disabled(" (subset v2, port 9000)"),
        ),
        (
            "top DISABLE applies to every subset",
            json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}, "subsets": [subset("v1", json!({"mode": "ISTIO_MUTUAL"}))]}),
            Some("v1"),
            disabled(""),
        ),
    ];
    for (name, spec, target_subset, want) in rows {
        let mut objects = good_dr();
        objects.push(dest_rule("cases-dr", "cases", spec));
        assert_eq!(
            violation(&objects, DR_HOST, target_subset, &f),
            want,
            "{name}"
        );
        assert_eq!(
            violation(&objects, DR_HOST, target_subset, &fence(&["ID"], false)),
            None,
            "{name} (no mTLS rule)"
        );
    }
}

/// Ensures a short DR host means its own namespace: `cases` in namespace `cases` is not the DR
/// copy's host.
#[test]
fn a_short_dr_host_is_in_the_rules_namespace() {
    let mut objects = good_dr();
    objects.push(dest_rule(
        "cases",
        "cases",
        json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    assert_eq!(
        violation(&objects, DR_HOST, None, &fence(&["ID"], true)),
        None
    );
}

/// Ensures hosts outside the cluster domain take their jurisdiction and namespace from
/// ServiceEntries: exact, wildcard, missing, unlabelled and disagreeing.
#[test]
fn service_entry_table() {
    let host = "records.dr.example.co.id";
    let f = fence(&["ID"], false);
    let unknown = |why: &str| Some(format!("residency: jurisdiction unknown ({why})"));
    let rows: Vec<(&str, Vec<Value>, Option<String>)> = vec![
        (
            "exact",
            vec![service_entry("ext", "records", &[host], Some("ID"))],
            None,
        ),
        (
            "wildcard",
            vec![service_entry(
                "ext",
                "all",
                &["*.example.co.id"],
                Some("ID"),
            )],
            None,
        ),
        (
            "upper-case host in the entry",
            vec![service_entry(
                "ext",
                "records",
                &["Records.DR.example.co.id"],
                Some("ID"),
            )],
            None,
        ),
        (
            "outside",
            vec![service_entry("ext", "records", &[host], Some("SG"))],
            Some("residency: jurisdiction SG is outside the allowed set [ID]".into()),
        ),
        (
            "none",
            vec![service_entry(
                "ext",
                "other",
                &["other.example.com"],
                Some("ID"),
            )],
            unknown("no ServiceEntry lists records.dr.example.co.id"),
        ),
        (
            "unlabelled",
            vec![service_entry("ext", "records", &[host], None)],
            unknown("ServiceEntry ext/records has no failoverd.dev/jurisdiction label"),
        ),
        (
            "one of two unlabelled",
            vec![
                service_entry("ext", "records", &[host], Some("ID")),
                service_entry("ext", "all", &["*.example.co.id"], None),
            ],
            unknown("ServiceEntry ext/all has no failoverd.dev/jurisdiction label"),
        ),
        (
            "disagreeing",
            vec![
                service_entry("ext", "records", &[host], Some("ID")),
                service_entry("mirror", "records", &[host], Some("SG")),
            ],
            unknown(
                "ServiceEntries listing records.dr.example.co.id disagree: ext/records says ID; mirror/records says SG",
            ),
        ),
        (
            "agreeing",
            vec![
                service_entry("ext", "records", &[host], Some("ID")),
                service_entry("mirror", "records", &["*.dr.example.co.id"], Some("ID")),
            ],
            None,
        ),
        (
            "a namespace label does not count for an external host",
            vec![namespace("ext", Some("ID"))],
            unknown("no ServiceEntry lists records.dr.example.co.id"),
        ),
    ];
    for (name, objects, want) in rows {
        assert_eq!(violation(&objects, host, None, &f), want, "{name}");
    }
}

/// Ensures the mTLS rule for a ServiceEntry host looks at the entries' namespaces, and that a
/// host no entry lists fails the policy too.
#[test]
fn service_entry_hosts_take_the_entries_namespace_for_mtls() {
    let host = "records.example.co.id";
    let f = fence(&["ID"], true);
    let se = service_entry("ext", "records", &[host], Some("ID"));
    let strict = vec![se.clone(), peer_auth("ext", "default", mode("STRICT"))];
    assert_eq!(violation(&strict, host, None, &f), None);
    let elsewhere = vec![se.clone(), peer_auth("cases-dr", "default", mode("STRICT"))];
    assert!(
        violation(&elsewhere, host, None, &f)
            .unwrap()
            .starts_with("policy: namespace ext is not covered"),
    );
    let none = judge(
        &view(&[]),
        host,
        None,
        &Fence {
            allowed: None,
            require_strict_mtls: true,
        },
    );
    assert_eq!(
        none.violation.as_deref(),
        Some(
            "policy: no ServiceEntry lists records.example.co.id, so no namespace's PeerAuthentication covers it"
        )
    );
}

/// Ensures residency is reported before policy when both are broken.
#[test]
fn residency_comes_before_policy() {
    let objects = vec![
        namespace("cases-dr", Some("SG")),
        peer_auth("cases-dr", "default", mode("PERMISSIVE")),
    ];
    let v = violation(&objects, DR_HOST, None, &fence(&["ID"], true)).unwrap();
    assert!(v.starts_with("residency: "), "{v}");
    let policy_only = Fence {
        allowed: None,
        require_strict_mtls: true,
    };
    let v = violation(&objects, DR_HOST, None, &policy_only).unwrap();
    assert!(v.starts_with("policy: "), "{v}");
}

/// Ensures hosts are compared without case and a trailing dot, and the verdict keeps the
/// host as the playbook wrote it.
#[test]
fn hosts_compare_without_case() {
    let p = judge(
        &view(&good_dr()),
        "Cases.Cases-DR.svc.cluster.local.",
        None,
        &fence(&["ID"], true),
    );
    assert_eq!(p.violation, None);
    assert_eq!(p.host, "Cases.Cases-DR.svc.cluster.local.");
}

/// Ensures short names are qualified the way Istio resolves them, and an unqualified short
/// name is not taken for a cluster host.
#[test]
fn short_names_are_qualified_in_the_virtual_services_namespace() {
    assert_eq!(qualify("Cases", "cases-dr"), DR_HOST);
    assert_eq!(qualify("cases.cases-dr", "demo"), "cases.cases-dr");
    assert_eq!(qualify(DR_HOST, "demo"), DR_HOST);
    let v = view(&good_dr());
    assert_eq!(
        judge(
            &v,
            &qualify("cases", "cases-dr"),
            None,
            &fence(&["ID"], true)
        )
        .violation,
        None
    );
    assert!(
        judge(&v, "cases", None, &fence(&["ID"], true))
            .violation
            .is_some()
    );
}

/// Ensures the verdict serializes with camelCase fields (the API and audit shape).
#[test]
fn verdict_serializes_camel_case() {
    let p = judge(&view(&good_dr()), DR_HOST, None, &fence(&["ID"], true));
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["host"], DR_HOST);
    assert_eq!(v["jurisdiction"], "ID");
    assert_eq!(v["violation"], Value::Null);
    assert!(v["detail"].is_string());
    let back: TargetPolicy = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
    assert_eq!(Kind::of(&namespace("x", None)), Some(Kind::Namespace));
}
