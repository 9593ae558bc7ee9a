//! Tests of the fault arithmetic: table tests on the repository's example object and a
//! property over generated VirtualServices.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::drill::inject::Inject;
use crate::playbook::{self, Playbook};
use crate::routing::tests::istio_property;
use crate::routing::{apply, istio};

const PB: &str = include_str!("testdata/web.playbook.yaml");
const VS: &str = include_str!("testdata/web.vs.yaml");

fn pb() -> Playbook {
    playbook::parse("t.yaml", PB).unwrap()
}

fn vs() -> Value {
    serde_saphyr::from_str(VS).unwrap()
}

fn inject(text: &str) -> Inject {
    serde_saphyr::from_str(text).unwrap()
}

/// `scope: probes` puts a copy of the guarded route first, matched on the drill header,
/// carrying the fault; nothing else changes.
#[test]
fn probes_scope_adds_a_header_matched_copy_first() {
    let pb = pb();
    let start = vs();
    let mut v = start.clone();
    add_fault(
        &mut v,
        &pb,
        "dr-1-ab",
        &inject("abort: { httpStatus: 503 }"),
    )
    .unwrap();
    let http = v["spec"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 3);
    let mut want = start["spec"]["http"][1].clone();
    want["name"] = json!("failoverd-drill-dr-1-ab");
    want["match"] = json!([{ "headers": { "x-failoverd-drill": { "exact": "dr-1-ab" } } }]);
    want["fault"] = json!({ "abort": { "httpStatus": 503, "percentage": { "value": 100.0 } } });
    assert_eq!(http[0], want);
    assert_eq!(http[1..], start["spec"]["http"].as_array().unwrap()[..]);
    assert_eq!(v["metadata"], start["metadata"]);
    assert_eq!(faults_in(&v), vec!["dr-1-ab".to_string()]);
    istio::validate_virtual_service(&v).unwrap();
    assert_eq!(
        remove_faults(&mut v, &pb).unwrap(),
        vec!["dr-1-ab".to_string()]
    );
    assert_eq!(v, start);
}

/// A guarded route with matches: each match is ANDed with the header (its own headers kept).
#[test]
fn each_match_is_anded_with_the_header() {
    let mut start = vs();
    start["spec"]["http"][1]["match"] = json!([
        { "uri": { "prefix": "/api" } },
        { "headers": { "x-tenant": { "exact": "a" } } },
    ]);
    let pb = pb();
    let mut v = start.clone();
    add_fault(&mut v, &pb, "r1", &inject("delay: { fixedDelay: 3s }")).unwrap();
    assert_eq!(
        v["spec"]["http"][0]["match"],
        json!([
            { "uri": { "prefix": "/api" }, "headers": { "x-failoverd-drill": { "exact": "r1" } } },
            { "headers": { "x-tenant": { "exact": "a" }, "x-failoverd-drill": { "exact": "r1" } } },
        ])
    );
    istio::validate_virtual_service(&v).unwrap();
    remove_faults(&mut v, &pb).unwrap();
    assert_eq!(v, start);
}

/// `scope: all` faults the guarded route itself and restores the route's own fault after.
#[test]
fn all_scope_faults_the_guarded_route_and_restores_its_own_fault() {
    let pb = pb();
    let spec = inject(
        "{ abort: { grpcStatus: UNAVAILABLE }, percentage: 10, scope: all, allTraffic: true }",
    );
    for own in [
        None,
        Some(json!({ "delay": { "fixedDelay": "1s", "percentage": { "value": 1.0 } } })),
    ] {
        let mut start = vs();
        if let Some(f) = &own {
            start["spec"]["http"][1]["fault"] = f.clone();
        }
        let mut v = start.clone();
        add_fault(&mut v, &pb, "r2", &spec).unwrap();
        assert_eq!(v["spec"]["http"].as_array().unwrap().len(), 2);
        assert_eq!(v["spec"]["http"][1]["fault"], spec.fault());
        assert_eq!(faults_in(&v), vec!["r2".to_string()]);
        istio::validate_virtual_service(&v).unwrap();
        assert_eq!(remove_faults(&mut v, &pb).unwrap(), vec!["r2".to_string()]);
        assert_eq!(v, start, "own fault {own:?}");
    }
}

/// Removal from an object with no drill fault is a no-op; a second fault is refused; a bad
/// run id is refused; the playbook's unnamed route is still found behind a fault route.
#[test]
fn edges() {
    let pb = pb();
    let mut v = vs();
    assert!(remove_faults(&mut v, &pb).unwrap().is_empty());
    assert_eq!(v, vs());
    let f = inject("abort: { httpStatus: 503 }");
    add_fault(&mut v, &pb, "a", &f).unwrap();
    let before = v.clone();
    assert!(matches!(
        add_fault(&mut v, &pb, "b", &f),
        Err(StoreError::Invalid { .. })
    ));
    assert_eq!(v, before);
    for bad in ["", "UPPER", "a b", &"x".repeat(64)] {
        assert!(
            matches!(
                add_fault(&mut vs(), &pb, bad, &f),
                Err(StoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    // A playbook without `route:` guards the first http route: still that one with a drill
    // route placed before it.
    let unnamed = playbook::parse("t.yaml", &PB.replace("  route: primary\n", "")).unwrap();
    let mut v = vs();
    let i0 = route_index(&v, &unnamed).unwrap();
    add_fault(&mut v, &unnamed, "c", &f).unwrap();
    assert_eq!(v["spec"]["http"][0]["name"], json!("failoverd-drill-c"));
    assert_eq!(route_index(&v, &unnamed).unwrap(), i0 + 1);
    assert_eq!(
        v["spec"]["http"][0]["route"],
        vs()["spec"]["http"][0]["route"]
    );
}

fn spec() -> impl Strategy<Value = Inject> {
    (
        prop_oneof![
            (200u32..600).prop_map(|s| format!("abort: {{ httpStatus: {s} }}, ")),
            Just("abort: { grpcStatus: UNAVAILABLE }, ".to_string()),
            Just(String::new()),
        ],
        proptest::option::of(1u64..10_000),
        1u32..=1000,
        any::<bool>(),
    )
        .prop_map(|(abort, delay, pct, all)| {
            let delay = match (delay, abort.is_empty()) {
                (Some(ms), _) => format!("delay: {{ fixedDelay: {ms}ms }}, "),
                (None, true) => "delay: { fixedDelay: 1s }, ".to_string(),
                (None, false) => String::new(),
            };
            let scope = if all {
                "scope: all, allTraffic: true, "
            } else {
                ""
            };
            inject(&format!(
                "{{ {abort}{delay}{scope}percentage: {} }}",
                f64::from(pct) / 10.0
            ))
        })
}

proptest! {
    /// Whatever the object and the fault: the result passes the Istio schema and webhook
    /// rules, failoverd's route moves still work on it, and removal gives back the object
    /// exactly.
    #[test]
    fn add_then_remove_is_identity_and_valid(
        original in istio_property::virtual_service(),
        f in spec(),
        with_match in any::<bool>(),
        run in "[a-z0-9][a-z0-9-]{0,20}",
    ) {
        let pb = istio_property::playbook(1);
        let mut original = original;
        if with_match {
            let i = route_index(&original, &pb).unwrap();
            original["spec"]["http"][i]["match"] = json!([{ "uri": { "prefix": "/m" } }]);
        }
        let mut v = original.clone();
        add_fault(&mut v, &pb, &run, &f).unwrap();
        let checked = istio::validate_virtual_service(&v);
        prop_assert!(checked.is_ok(), "{checked:?}\n{v:#}");
        prop_assert_eq!(faults_in(&v), vec![run.clone()]);
        // The guarded route is still the playbook's: a failover and failback under the fault.
        let guarded = route_index(&v, &pb).unwrap();
        prop_assert_eq!(&v["spec"]["http"][guarded]["name"], &json!("main"));
        let faulted = v.clone();
        apply(&mut v, &pb, crate::engine::Routing::Failover { target: 0 }, None).unwrap();
        let checked = istio::validate_virtual_service(&v);
        prop_assert!(checked.is_ok(), "failed over under the fault: {checked:?}\n{v:#}");
        apply(&mut v, &pb, crate::engine::Routing::Primary, None).unwrap();
        prop_assert_eq!(&v, &faulted);
        prop_assert_eq!(remove_faults(&mut v, &pb).unwrap(), vec![run]);
        prop_assert_eq!(&v, &original);
        prop_assert!(remove_faults(&mut v, &pb).unwrap().is_empty());
        prop_assert_eq!(v, original);
    }
}
