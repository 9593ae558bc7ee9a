//! Tests of the pure rewrite and of the file store.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::engine::Routing;
use crate::playbook::{self, Playbook};

const PB: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: web }
spec:
  virtualService: { namespace: demo, name: web }
  route: primary
  primary: { host: web.demo.svc.cluster.local, subset: v1 }
  failover:
    - { host: web.demo-dr.svc.cluster.local }
  probes:
    - { name: p, target: primary, tcp: { address: "127.0.0.1:9" } }
    - { name: f, target: "failover[0]", tcp: { address: "127.0.0.1:9" } }
"#;

const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: demo
  labels: { app: web }
  annotations: { owner: platform-team }
spec:
  hosts: [web.demo.svc.cluster.local]
  gateways: [mesh]
  http:
    - name: canary-header
      match:
        - headers:
            x-canary: { exact: "true" }
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v2 }
    - name: primary
      retries: { attempts: 2, perTryTimeout: 2s }
      timeout: 10s
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1, port: { number: 8080 } }
          weight: 90
        - destination: { host: web.demo.svc.cluster.local, subset: v3, port: { number: 8080 } }
          weight: 10
      x-unknown-field: kept
"#;

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

/// Ensures the file store writes atomically, reads back, is a no-op when nothing changes,
/// keeps the YAML round trip exact, and reports a missing file as NotFound.
#[tokio::test]
async fn file_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let pb = pb();
    assert!(matches!(
        store.read(&pb).await,
        Err(StoreError::NotFound(_))
    ));
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    std::fs::write(store.path(&pb), VS).unwrap();
    assert_eq!(store.read(&pb).await.unwrap().routing, Routing::Primary);
    let out = store
        .write(&pb, Routing::Failover { target: 0 }, None)
        .await
        .unwrap();
    assert!(out.changed);
    let again = store
        .write(&pb, Routing::Failover { target: 0 }, None)
        .await
        .unwrap();
    assert!(!again.changed, "no change, no write");
    let text = std::fs::read_to_string(store.path(&pb)).unwrap();
    let reparsed: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        reparsed["spec"]["http"][0]["match"][0]["headers"]["x-canary"]["exact"],
        json!("true")
    );
    store.write(&pb, Routing::Primary, None).await.unwrap();
    let restored: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(store.path(&pb)).unwrap()).unwrap();
    assert_eq!(restored, vs());
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("demo"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1);
    std::fs::write(store.path(&pb), "kind: [").unwrap();
    assert!(matches!(
        store.read(&pb).await,
        Err(StoreError::Malformed { .. })
    ));
}

/// Ensures every routing survives the YAML round trip of the file store unchanged.
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
    assert_eq!(view(&v, &pb).unwrap().last_move, Some(t));
    apply(&mut v, &pb, Routing::Primary, Some(t)).unwrap();
    assert_eq!(view(&v, &pb).unwrap().last_move, None);
}
