//! The objects' parsing and the view's bookkeeping: malformed objects named, unreadable
//! ones failing closed, updates, deletes and relists.

use serde_json::json;

use super::tests::{
    DR_HOST, dest_rule, fence, good_dr, mode, namespace, peer_auth, service_entry, view,
};
use super::*;

/// Ensures a malformed object of a known kind is an error naming kind, namespace, name and
/// field; other kinds are ignored.
#[test]
fn malformed_objects_are_named() {
    let rows: Vec<(Value, &str)> = vec![
        (
            peer_auth("cases-dr", "default", mode("strict")),
            "PeerAuthentication cases-dr/default: spec.mtls.mode is \"strict\", not one of UNSET, DISABLE, PERMISSIVE, STRICT",
        ),
        (
            peer_auth("cases-dr", "p", json!({"portLevelMtls": [1]})),
            "PeerAuthentication cases-dr/p: spec.portLevelMtls is not a map",
        ),
        (
            dest_rule("cases-dr", "cases", json!({"trafficPolicy": {}})),
            "DestinationRule cases-dr/cases: spec.host is missing",
        ),
        (
            dest_rule(
                "cases-dr",
                "cases",
                json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "OFF"}}}),
            ),
            "DestinationRule cases-dr/cases: spec.trafficPolicy.tls.mode is \"OFF\", not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
        ),
        (
            dest_rule(
                "cases-dr",
                "cases",
                json!({"host": "cases", "subsets": [{"trafficPolicy": {}}]}),
            ),
            "DestinationRule cases-dr/cases: spec.subsets[0].name is missing",
        ),
        (
            service_entry("ext", "records", &[], Some("ID")),
            "ServiceEntry ext/records: spec.hosts is missing or empty",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {JURISDICTION_LABEL: 62}}}),
            "Namespace x: metadata.labels.failoverd.dev/jurisdiction is not a string",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}),
            "Namespace: metadata.name is missing",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication", "metadata": {"name": "x", "namespace": "n"}, "spec": "STRICT"}),
            "PeerAuthentication n/x: spec is not a map",
        ),
    ];
    for (obj, want) in rows {
        let mut v = ClusterView::default();
        assert_eq!(v.insert(&obj), Err(want.to_string()));
    }
    let mut v = ClusterView::default();
    for other in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}, "spec": 3}),
        json!({"apiVersion": "example.com/v1", "kind": "Namespace", "metadata": {}}),
        json!("not an object"),
    ] {
        assert_eq!(v.insert(&other), Ok(()));
    }
    assert!(v.is_empty());
}

/// Ensures an unreadable object stands in conservatively for what it replaced, and a good
/// version clears it.
#[test]
fn unreadable_objects_fail_closed() {
    let f = fence(&["ID"], true);
    let mut v = view(&good_dr());
    assert_eq!(judge(&v, DR_HOST, None, &f).violation, None);
    assert!(
        v.insert(&peer_auth("cases-dr", "default", mode("strict")))
            .is_err()
    );
    let got = judge(&v, DR_HOST, None, &f).violation.unwrap();
    assert!(
        got.starts_with("policy: PeerAuthentication cases-dr/default could not be read"),
        "{got}"
    );
    assert_eq!(v.problems().len(), 1);
    v.insert(&peer_auth("cases-dr", "default", mode("STRICT")))
        .unwrap();
    assert_eq!(judge(&v, DR_HOST, None, &f).violation, None);
    assert!(v.problems().is_empty());

    // An unreadable DestinationRule whose host names the target, or whose host is unreadable.
    let bad_dr = dest_rule(
        "cases-dr",
        "cases",
        json!({"host": "cases", "trafficPolicy": 5}),
    );
    assert!(v.insert(&bad_dr).is_err());
    assert!(
        judge(&v, DR_HOST, None, &f)
            .violation
            .unwrap()
            .starts_with("policy: DestinationRule cases-dr/cases could not be read")
    );
    v.remove(&bad_dr);
    assert_eq!(judge(&v, DR_HOST, None, &f).violation, None);
    let other_host = dest_rule(
        "cases-dr",
        "b",
        json!({"host": "billing", "trafficPolicy": 5}),
    );
    assert!(v.insert(&other_host).is_err());
    assert_eq!(
        judge(&v, DR_HOST, None, &f).violation,
        None,
        "names another host"
    );

    // An unreadable Namespace: jurisdiction unknown.
    let bad_ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cases-dr", "labels": "ID"}});
    assert!(v.insert(&bad_ns).is_err());
    let p = judge(&v, DR_HOST, None, &f);
    assert_eq!(p.jurisdiction, None);
    assert!(
        p.violation
            .unwrap()
            .starts_with("residency: jurisdiction unknown (namespace cases-dr could not be read")
    );
}

/// Ensures updates replace, deletes remove, and re-listing a kind starts it afresh.
#[test]
fn insert_replaces_remove_and_clear_kind_forget() {
    let f = fence(&["ID"], true);
    let mut v = view(&good_dr());
    v.insert(&namespace("cases-dr", Some("SG"))).unwrap();
    assert_eq!(
        judge(&v, DR_HOST, None, &f).jurisdiction.as_deref(),
        Some("SG")
    );
    let dr = dest_rule(
        "cases-dr",
        "cases",
        json!({"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    );
    v.insert(&namespace("cases-dr", Some("ID"))).unwrap();
    v.insert(&dr).unwrap();
    assert!(judge(&v, DR_HOST, None, &f).violation.is_some());
    // The same rule edited to another host no longer names the target.
    v.insert(&dest_rule(
        "cases-dr",
        "cases",
        json!({"host": "billing", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ))
    .unwrap();
    assert_eq!(judge(&v, DR_HOST, None, &f).violation, None);
    v.insert(&dr).unwrap();
    v.remove(&json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "cases", "namespace": "cases-dr"}}));
    assert_eq!(judge(&v, DR_HOST, None, &f).violation, None);
    assert_eq!(v.len(), 2);
    v.clear_kind(Kind::PeerAuthentication);
    assert_eq!(v.len(), 1);
    assert!(
        judge(&v, DR_HOST, None, &f)
            .violation
            .unwrap()
            .starts_with("policy: namespace cases-dr is not covered")
    );
    v.clear_kind(Kind::Namespace);
    assert!(v.is_empty());
    assert_eq!(v, ClusterView::default());
}
