//! Tests of the pure rewrite (the file store's are the daemon's).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::engine::Routing;
use crate::playbook::{self, Playbook};

const PB: &str = include_str!("testdata/web.playbook.yaml");

const VS: &str = include_str!("testdata/web.vs.yaml");

fn pb() -> Playbook {
    playbook::parse("t.yaml", PB).unwrap()
}

fn vs() -> Value {
    serde_saphyr::from_str(VS).unwrap()
}

fn without_route_and_annotations(mut v: Value) -> Value {
    v["spec"]["http"][1]
        .as_object_mut()
        .unwrap()
        .remove("route");
    v["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(ORIGINAL_ROUTE);
    v["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(STATE);
    v
}

/// Ensures failover rewrites only the named route's destinations and records the original,
/// and failback restores the original route exactly (whole object equal to the start).
#[test]
fn failover_and_back_preserves_everything() {
    let pb = pb();
    let start = vs();
    let mut v = start.clone();
    let before = apply(&mut v, &pb, Routing::Failover { target: 0 }, None).unwrap();
    assert_eq!(before, start["spec"]["http"][1]["route"]);
    assert_eq!(
        v["spec"]["http"][1]["route"],
        json!([{ "destination": { "host": "web.demo-dr.svc.cluster.local" }, "weight": 100 }])
    );
    assert_eq!(
        without_route_and_annotations(v.clone()),
        without_route_and_annotations(start.clone())
    );
    let view = view(&v, &pb).unwrap();
    assert_eq!(view.routing, Routing::Failover { target: 0 });
    apply(
        &mut v,
        &pb,
        Routing::Split {
            target: 0,
            primary_percent: 50,
        },
        None,
    )
    .unwrap();
    apply(&mut v, &pb, Routing::Primary, None).unwrap();
    assert_eq!(v, start);
}

/// Ensures a split step scales the original weights (90/10) into the primary's share and the
/// result sums to exactly 100.
#[test]
fn split_scales_original_weights() {
    let pb = pb();
    let mut v = vs();
    apply(&mut v, &pb, Routing::Failover { target: 0 }, None).unwrap();
    apply(
        &mut v,
        &pb,
        Routing::Split {
            target: 0,
            primary_percent: 15,
        },
        None,
    )
    .unwrap();
    let route = v["spec"]["http"][1]["route"].as_array().unwrap().clone();
    let weights: Vec<u64> = route
        .iter()
        .map(|d| d["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, vec![14, 1, 85]);
    assert_eq!(route[0]["destination"]["port"]["number"], 8080);
}

/// Ensures the largest-remainder split always sums to the total.
#[test]
fn scale_weights_sums() {
    for (w, t) in [
        (vec![1, 1, 1], 10),
        (vec![90, 10], 15),
        (vec![0, 0], 7),
        (vec![3], 99),
        (vec![1, 2, 3, 4], 1),
    ] {
        let s = scale_weights(&w, t);
        assert_eq!(s.iter().sum::<u32>(), t, "{w:?} {t}");
    }
}

/// Ensures a missing route, a wrong kind, and an invalid result are errors, not panics.
#[test]
fn bad_objects_are_errors() {
    let pb = pb();
    let mut v = vs();
    v["spec"]["http"][1]["name"] = json!("renamed");
    assert!(matches!(
        apply(&mut v, &pb, Routing::Primary, None),
        Err(StoreError::RouteNotFound { .. })
    ));
    let mut v = vs();
    v["kind"] = json!("DestinationRule");
    assert!(matches!(
        apply(&mut v, &pb, Routing::Primary, None),
        Err(StoreError::Malformed { .. })
    ));
    assert!(validate_route(&json!([]), "x", true).is_err());
    assert!(
        validate_route(
            &json!([{ "destination": { "host": "" }, "weight": 100 }]),
            "x",
            true
        )
        .is_err()
    );
    assert!(validate_route(&json!([{ "destination": { "host": "a.b" }, "weight": 60 }, { "destination": { "host": "c.d" }, "weight": 30 }]), "x", true).is_err());
    assert!(validate_route(&json!([{ "destination": { "host": "a.b" }, "weight": 0 }, { "destination": { "host": "c.d" }, "weight": 0 }]), "x", false).is_err());
}

/// Ensures every routing survives the YAML round trip (the file store's format) unchanged.
#[test]
fn yaml_round_trip_of_every_routing() {
    let pb = pb();
    for to in [
        Routing::Failover { target: 0 },
        Routing::Split {
            target: 0,
            primary_percent: 50,
        },
        Routing::Primary,
    ] {
        let mut v = vs();
        apply(&mut v, &pb, Routing::Failover { target: 0 }, None).unwrap();
        apply(&mut v, &pb, to, None).unwrap();
        let text = serde_saphyr::to_string(&v).unwrap();
        let back: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, v, "{to:?}\n{text}");
        assert_eq!(
            view(&back, &pb).unwrap().routing,
            to,
            "state annotation round trip"
        );
    }
}

/// Ensures the start of the last move is kept in the state annotation, so `minDwell`
/// survives a restart, and disappears with the annotation on failback.
#[test]
fn last_move_round_trips() {
    let pb = pb();
    let mut v = vs();
    let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    apply(&mut v, &pb, Routing::Failover { target: 0 }, Some(t)).unwrap();
    assert_eq!(view_at(&v, &pb, t).unwrap().last_move, Some(t));
    apply(&mut v, &pb, Routing::Primary, Some(t)).unwrap();
    assert_eq!(view_at(&v, &pb, t).unwrap().last_move, None);
}

pub(crate) mod istio_property {
    //! No object failoverd writes is one the Istio schema or istiod's webhook would reject,
    //! whatever the VirtualService looked like and whatever sequence of moves is applied.
    use proptest::prelude::*;

    use super::*;

    const HOSTS: [&str; 4] = [
        "svc-a.ns.svc.cluster.local",
        "svc-b.ns-dr.svc.cluster.local",
        "svc-c",
        "svc-d.other.svc.cluster.local",
    ];

    fn dest() -> impl Strategy<Value = (usize, Option<&'static str>, Option<u32>)> {
        (
            0..HOSTS.len(),
            proptest::option::of(prop_oneof![Just("v1"), Just("v2"), Just("blue-green")]),
            proptest::option::of(1u32..9000),
        )
    }

    fn destination(host: usize, subset: Option<&str>, port: Option<u32>) -> Value {
        let mut d = json!({ "host": HOSTS[host] });
        if let Some(s) = subset {
            d["subset"] = json!(s);
        }
        if let Some(p) = port {
            d["port"] = json!({ "number": p });
        }
        d
    }

    prop_compose! {
        /// A valid VirtualService: 1-3 http routes, the playbook's one named `main`, with
        /// 1-4 weighted destinations (weights relative, not all zero), plus other fields.
        pub(crate) fn virtual_service()(
            before in 0usize..2,
            after in 0usize..2,
            dests in proptest::collection::vec((dest(), 0u32..200), 1..5),
            timeout in proptest::option::of(1u32..60),
            retries in proptest::option::of(0u32..5),
            hosts in proptest::collection::vec(0..HOSTS.len(), 1..3),
        ) -> Value {
            let mut route: Vec<Value> = dests
                .iter()
                .map(|((h, s, p), w)| json!({ "destination": destination(*h, *s, *p), "weight": w }))
                .collect();
            if route.iter().all(|d| d["weight"] == json!(0)) {
                route[0]["weight"] = json!(1);
            }
            if route.len() == 1 && dests[0].1 % 2 == 0 {
                // A lone destination may omit its weight (Istio reads it as 100 %).
                route[0].as_object_mut().unwrap().remove("weight");
            }
            let mut main = json!({ "name": "main", "route": route });
            if let Some(t) = timeout {
                main["timeout"] = json!(format!("{t}s"));
            }
            if let Some(a) = retries {
                main["retries"] = json!({ "attempts": a, "perTryTimeout": "2s" });
            }
            let other = |n: usize| json!({
                "name": format!("other-{n}"),
                "match": [{ "uri": { "prefix": format!("/p{n}") } }],
                "route": [{ "destination": { "host": HOSTS[n % HOSTS.len()] } }],
            });
            let mut http: Vec<Value> = (0..before).map(other).collect();
            http.push(main);
            http.extend((0..after).map(|n| other(n + 10)));
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": { "name": "web", "namespace": "demo", "labels": { "app": "web" } },
                "spec": {
                    "hosts": hosts.iter().map(|h| HOSTS[*h]).collect::<Vec<_>>(),
                    "http": http,
                },
            })
        }
    }

    pub(crate) fn playbook(targets: usize) -> Playbook {
        let failover: String = (0..targets)
            .map(|i| {
                format!(
                    "    - {{ host: {}, subset: dr{i} }}\n",
                    HOSTS[(i + 1) % HOSTS.len()]
                )
            })
            .collect();
        let probes: String = (0..targets)
            .map(|i| {
                format!(
                    "    - {{ name: f{i}, target: \"failover[{i}]\", tcp: {{ address: \"127.0.0.1:9\" }} }}\n"
                )
            })
            .collect();
        let text = format!(
            "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: web }}\nspec:\n  \
             virtualService: {{ namespace: demo, name: web }}\n  route: main\n  \
             primary: {{ host: {} }}\n  failover:\n{failover}  probes:\n    \
             - {{ name: p, target: primary, tcp: {{ address: \"127.0.0.1:9\" }} }}\n{probes}",
            HOSTS[0]
        );
        playbook::parse("prop.yaml", &text).unwrap()
    }

    fn routing(targets: usize) -> impl Strategy<Value = Routing> {
        prop_oneof![
            Just(Routing::Primary),
            (0..targets).prop_map(|target| Routing::Failover { target }),
            (0..targets, 1u8..100).prop_map(|(target, p)| Routing::Split {
                target,
                primary_percent: p,
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_written_object_passes_istio_validation(
            (targets, moves) in (1usize..4).prop_flat_map(|t| (Just(t), proptest::collection::vec(routing(t), 1..8))),
            original in virtual_service(),
        ) {
            prop_assert!(
                istio::validate_virtual_service(&original).is_ok(),
                "generator made an invalid object: {:?}",
                istio::validate_virtual_service(&original)
            );
            let pb = playbook(targets);
            let mut vs = original.clone();
            for to in moves {
                apply(&mut vs, &pb, to, None).unwrap();
                let checked = istio::validate_virtual_service(&vs);
                prop_assert!(checked.is_ok(), "after {to:?}: {checked:?}\n{vs:#}");
                let route = vs.pointer(&format!("/spec/http/{}/route", route_index(&vs, &pb).unwrap())).unwrap();
                if to != Routing::Primary {
                    let sum: u64 = route.as_array().unwrap().iter().map(|d| d["weight"].as_u64().unwrap()).sum();
                    prop_assert_eq!(sum, 100);
                }
            }
            // However it moved, failing back restores the original object exactly.
            apply(&mut vs, &pb, Routing::Primary, None).unwrap();
            prop_assert_eq!(vs, original);
        }
    }
}

/// Ensures a route changed behind failoverd's back while failed over is seen as drift, and
/// that failoverd's own writes never are.
#[test]
fn drift_is_detected_only_for_changes_made_by_others() {
    let pb = pb();
    let mut v = vs();
    assert_eq!(view(&v, &pb).unwrap().drift, None, "primary is never drift");
    for to in [
        Routing::Failover { target: 0 },
        Routing::Split {
            target: 0,
            primary_percent: 10,
        },
    ] {
        apply(&mut v, &pb, to, None).unwrap();
        assert_eq!(view(&v, &pb).unwrap().drift, None, "{to:?}");
    }
    let i = route_index(&v, &pb).unwrap();
    // A GitOps sync puts the original route back but leaves the annotations.
    let original = vs()
        .pointer(&format!("/spec/http/{i}/route"))
        .unwrap()
        .clone();
    *v.pointer_mut(&format!("/spec/http/{i}/route")).unwrap() = original;
    let drift = view(&v, &pb).unwrap().drift.expect("drift");
    assert!(drift.contains("failoverd wrote"), "{drift}");
    // Writing the routing again (reassert) clears it.
    let routing = view(&v, &pb).unwrap().routing;
    apply(&mut v, &pb, routing, None).unwrap();
    assert_eq!(view(&v, &pb).unwrap().drift, None);
}

/// The failover route written for `pb`, with the state annotation replaced by `state`.
fn tampered(pb: &Playbook, state: &str) -> Value {
    let mut v = vs();
    apply(&mut v, pb, Routing::Failover { target: 0 }, None).unwrap();
    v["metadata"]["annotations"][STATE] = Value::String(state.to_string());
    v
}

/// Ensures a foreign or tampered state annotation is refused as malformed, naming the
/// annotation and the field, never read as "on the primary" and never computed with; and that
/// valid ones (and other playbooks' ones) still read.
#[test]
fn tampered_state_annotations_are_refused_with_a_reason() {
    let pb = pb();
    let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let bad: &[(&str, &str)] = &[
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":250}}"#,
            "primaryPercent 250 is outside 1..=99",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":0}}"#,
            "primaryPercent 0 is outside 1..=99",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":100}}"#,
            "primaryPercent 100 is outside 1..=99",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":-5}}"#,
            "field routing",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":1e300}}"#,
            "field routing",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":1}}"#,
            "failover[1] does not exist",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":18446744073709551615}}"#,
            "does not exist",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"sideways"}}"#,
            "field routing",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":0},"lastMove":"2999-12-31T00:00:00Z"}"#,
            "field lastMove 2999-12-31T00:00:00Z is in the future",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":0},"lastMove":"yesterday"}"#,
            "field lastMove",
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":0},"lastMove":12}"#,
            "field lastMove",
        ),
        ("not json", "is not failoverd's state JSON"),
        ("", "is not failoverd's state JSON"),
        ("{}", "is not failoverd's state JSON"),
    ];
    for (text, want) in bad {
        let v = tampered(&pb, text);
        match view_at(&v, &pb, now) {
            Err(StoreError::Malformed { object, message }) => {
                assert_eq!(object, "demo/web");
                assert!(message.contains(STATE), "{text}: {message}");
                assert!(message.contains(want), "{text}: {message}");
            }
            other => panic!("{text}: expected Malformed, got {other:?}"),
        }
        // A write through the same object is refused too: nothing computed from the bad value.
        let mut w = v.clone();
        assert!(
            matches!(
                apply(&mut w, &pb, Routing::Primary, None).and(view_at(&w, &pb, now)),
                Err(StoreError::Malformed { .. })
                    | Ok(RouteView {
                        routing: Routing::Primary,
                        ..
                    })
            ),
            "{text}"
        );
    }
    let long = format!(
        r#"{{"playbook":"web","route":"primary","routing":{{"to":"primary"}},"x":"{}"}}"#,
        "a".repeat(MAX_STATE_LEN)
    );
    assert!(matches!(
        view_at(&tampered(&pb, &long), &pb, now),
        Err(StoreError::Malformed { message, .. }) if message.contains("more than the 4096")
    ));
    // Not a string at all.
    let mut v = tampered(&pb, "");
    v["metadata"]["annotations"][STATE] = json!({ "routing": 250 });
    assert!(matches!(
        view_at(&v, &pb, now),
        Err(StoreError::Malformed { message, .. }) if message.contains("is not a string")
    ));

    let good: &[(&str, Routing, Option<&str>)] = &[
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":1}}"#,
            Routing::Split {
                target: 0,
                primary_percent: 1,
            },
            None,
        ),
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"split","target":0,"primaryPercent":99}}"#,
            Routing::Split {
                target: 0,
                primary_percent: 99,
            },
            None,
        ),
        // A replica's clock a little ahead is tolerated.
        (
            r#"{"playbook":"web","route":"primary","routing":{"to":"failover","target":0},"lastMove":"2026-01-01T00:04:00Z"}"#,
            Routing::Failover { target: 0 },
            Some("2026-01-01T00:04:00Z"),
        ),
        // Another playbook's (or another route's) annotation: not ours, so this playbook has
        // not moved the route, whatever that playbook's routing says.
        (
            r#"{"playbook":"other","route":"primary","routing":{"to":"split","target":7,"primaryPercent":250}}"#,
            Routing::Primary,
            None,
        ),
        (
            r#"{"playbook":"web","route":"other","routing":{"to":"failover","target":9}}"#,
            Routing::Primary,
            None,
        ),
    ];
    for (text, routing, last) in good {
        let got = view_at(&tampered(&pb, text), &pb, now).unwrap();
        assert_eq!(got.routing, *routing, "{text}");
        assert_eq!(
            got.last_move,
            last.map(|l| l.parse::<jiff::Timestamp>().unwrap()),
            "{text}"
        );
    }
}

/// Ensures a tampered original-route annotation is refused (naming it) instead of being
/// restored, scaled or truncated.
#[test]
fn tampered_original_route_annotations_are_refused() {
    let pb = pb();
    let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let cases: &[(Value, &str)] = &[
        (json!("not json"), "not JSON"),
        (json!({ "route": [] }), "not a string"),
        (json!("[]"), "no destinations"),
        (
            json!(r#"[{"destination":{"host":"a.b"},"weight":-1}]"#),
            "non-negative",
        ),
        (
            json!(r#"[{"destination":{"host":"a.b"},"weight":0}]"#),
            "sum to 0",
        ),
        (
            json!(
                r#"[{"destination":{"host":"a.b"},"weight":4294967346},{"destination":{"host":"c.d"},"weight":50}]"#
            ),
            "larger than Istio allows",
        ),
        (json!(r#"[{"destination":{"host":"*"}}]"#), "route[0]"),
    ];
    for (ann, want) in cases {
        let mut v = vs();
        apply(&mut v, &pb, Routing::Failover { target: 0 }, None).unwrap();
        v["metadata"]["annotations"][ORIGINAL_ROUTE] = ann.clone();
        let err = view_at(&v, &pb, now).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Malformed { .. }), "{ann}: {msg}");
        assert!(
            msg.contains(ORIGINAL_ROUTE) && msg.contains(want),
            "{ann}: {msg}"
        );
        let mut w = v.clone();
        let err = apply(
            &mut w,
            &pb,
            Routing::Split {
                target: 0,
                primary_percent: 50,
            },
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "{ann}: {err}");
        assert_eq!(w, v, "nothing half-written");
    }
}

mod annotation_fuzz {
    //! The state-annotation parser under arbitrary and near-valid input: it never panics, and
    //! whatever it accepts is a routing the playbook can write (checked on the route that
    //! routing actually produces, not on the routing's own weight helper).
    use proptest::prelude::*;

    use super::*;

    fn near_valid() -> impl Strategy<Value = String> {
        let playbook = prop_oneof![4 => Just("web".to_string()), 1 => "[a-z]{0,4}"];
        let route = prop_oneof![
            4 => Just("\"primary\"".to_string()),
            1 => Just("null".to_string()),
            1 => "\"[a-z]{0,3}\""
        ];
        let to = prop_oneof![
            1 => Just("primary"),
            2 => Just("failover"),
            4 => Just("split"),
            1 => Just("Split"),
            1 => Just("")
        ];
        let number = prop_oneof![
            (0i64..300).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:?}")),
            Just("\"5\"".to_string()),
            Just("null".to_string()),
        ];
        // Up to the year 9999 (jiff's range): most are in the past of the test's `now`.
        let last = prop_oneof![
            2 => Just(String::new()),
            2 => (0i64..1_767_225_600).prop_map(|s| format!(
                ",\"lastMove\":\"{}\"",
                jiff::Timestamp::from_second(s).unwrap()
            )),
            1 => (0i64..253_402_207_200).prop_map(|s| format!(
                ",\"lastMove\":\"{}\"",
                jiff::Timestamp::from_second(s).unwrap()
            )),
            1 => "[ -~]{0,12}".prop_map(|s| format!(",\"lastMove\":{s:?}")),
        ];
        let target = prop_oneof![3 => Just("0".to_string()), 1 => Just("1".to_string()), 2 => number.clone()];
        let percent = prop_oneof![2 => (0u16..=101).prop_map(|n| n.to_string()), 1 => number];
        (playbook, route, to, target, percent, last).prop_map(
            |(pb, route, to, target, percent, last)| {
                format!(
                    r#"{{"playbook":"{pb}","route":{route},"routing":{{"to":"{to}","target":{target},"primaryPercent":{percent}}}{last}}}"#
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn annotation_parser_never_panics_and_accepts_only_writable_routings(
            text in prop_oneof![6 => near_valid(), 1 => any::<String>(), 1 => "[{}\":,a-z0-9 ]{0,64}"],
        ) {
            let pb = pb();
            let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let n = pb.spec.failover.value.len();
            match parse_state(&text, &pb, now) {
                Err(msg) => prop_assert!(msg.contains(STATE), "{msg}"),
                Ok(None) => {}
                Ok(Some(s)) => {
                    if let Some(t) = s.last_move {
                        prop_assert!(t <= now.checked_add(MAX_LAST_MOVE_SKEW).unwrap());
                    }
                    match s.routing {
                        Routing::Primary => {}
                        Routing::Failover { target } => prop_assert!(target < n),
                        Routing::Split { target, primary_percent } => {
                            prop_assert!(target < n);
                            prop_assert!((1..=99).contains(&primary_percent));
                        }
                    }
                    // The route this routing writes: weights non-zero integers summing to 100
                    // (or the original route itself), and the object passes Istio's checks.
                    let mut v = vs();
                    apply(&mut v, &pb, s.routing, s.last_move).unwrap();
                    prop_assert!(istio::validate_virtual_service(&v).is_ok());
                    if s.routing != Routing::Primary {
                        let route = v["spec"]["http"][1]["route"].as_array().unwrap().clone();
                        let weights: Vec<u64> =
                            route.iter().map(|d| d["weight"].as_u64().unwrap()).collect();
                        prop_assert!(weights.iter().all(|w| *w > 0), "{weights:?}");
                        prop_assert_eq!(weights.iter().sum::<u64>(), 100);
                        // And it reads back as exactly what was accepted.
                        prop_assert_eq!(view_at(&v, &pb, now).unwrap().routing, s.routing);
                    }
                }
            }
        }
    }
}

/// Ensures a break-glass write marks the VirtualService and the next plain write unmarks it.
#[test]
fn break_glass_mark_follows_the_write() {
    let pb = pb();
    let mut v = vs();
    let glass = Stamp {
        last_move: None,
        break_glass: Some("bg-1".into()),
    };
    apply(&mut v, &pb, Routing::Failover { target: 0 }, glass).unwrap();
    assert_eq!(v["metadata"]["annotations"][BREAK_GLASS], "bg-1");
    apply(&mut v, &pb, Routing::Failover { target: 0 }, None).unwrap();
    assert!(
        v["metadata"]["annotations"].get(BREAK_GLASS).is_none(),
        "{v}"
    );
}
