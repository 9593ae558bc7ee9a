//! Both kinds against the shipped schemas and the webhook rules, with the demo
//! VirtualService and hand-made broken objects.

use super::*;
use serde_json::json;

fn demo() -> Value {
    let text = include_str!("../../../../playbooks/examples/demo-virtualservice.yaml");
    serde_saphyr::from_str(text).expect("demo VS parses")
}

fn errs(v: &Value) -> Vec<String> {
    validate_virtual_service(v).expect_err("must be rejected")
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn schemas_compile_for_every_served_version() {
    let s = SCHEMAS.as_ref().expect("schemas compile");
    for kind in ["VirtualService", "DestinationRule"] {
        for v in VERSIONS {
            let c = s
                .get(&(kind.to_string(), v.to_string()))
                .expect("version served");
            assert!(c.as_ref().is_ok(), "{kind} {v}");
        }
    }
}

#[test]
fn real_examples_validate_in_every_version() {
    let mut vs = demo();
    for v in VERSIONS {
        vs["apiVersion"] = json!(format!("{GROUP}/{v}"));
        assert_eq!(validate_virtual_service(&vs), Ok(()), "{v}");
    }
    // The routing store tests' VS: two weighted destinations with ports, an unknown field
    // (not rejected: the schema does not forbid extra fields, the API server prunes them).
    let text = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: demo }
spec:
  hosts: [web.demo.svc.cluster.local, "*.example.com"]
  gateways: [mesh]
  http:
    - name: primary
      retries: { attempts: 2, perTryTimeout: 2s }
      timeout: 10s
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1, port: { number: 8080 } }
          weight: 90
        - destination: { host: web-dr.other, subset: v3, port: { number: 8080 } }
          weight: 10
      mirror: { host: shadow }
      x-unknown-field: kept
  tcp:
    - route:
        - destination: { host: db, port: { number: 5432 } }
"#;
    let vs: Value = serde_saphyr::from_str(text).expect("yaml");
    assert_eq!(validate_virtual_service(&vs), Ok(()));
    let dr = json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"host": "web.demo.svc.cluster.local",
                 "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
                                   "connectionPool": {"http": {"http2MaxRequests": 100}}},
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                             {"name": "v2", "labels": {"version": "v2"}}]}
    });
    assert_eq!(validate_destination_rule(&dr), Ok(()));
}

#[test]
fn negative_weight_names_its_path() {
    let mut vs = demo();
    vs["spec"]["http"][1]["route"]
        .as_array_mut()
        .expect("route")
        .push(json!({"destination": {"host": "web-dr"}, "weight": -3}));
    assert_eq!(
        errs(&vs),
        vec!["spec.http[1].route[1].weight: weight -3 < 0"]
    );
}

#[test]
fn all_zero_weights_with_several_destinations() {
    let mut vs = demo();
    vs["spec"]["http"][1]["route"] = json!([
        {"destination": {"host": "a"}, "weight": 0},
        {"destination": {"host": "b"}, "weight": 0}
    ]);
    assert_eq!(
        errs(&vs),
        vec!["spec.http[1].route: total destination weight = 0"]
    );
    // One destination with weight 0 is fine (it gets everything).
    vs["spec"]["http"][1]["route"] = json!([{"destination": {"host": "a"}, "weight": 0}]);
    assert_eq!(validate_virtual_service(&vs), Ok(()));
}

#[test]
fn route_redirect_direct_response_exactly_one() {
    let mut vs = demo();
    vs["spec"]["http"][0]["redirect"] = json!({"uri": "/x"});
    assert!(has(
        &errs(&vs),
        "HTTP route cannot contain both route and redirect"
    ));
    let mut vs = demo();
    vs["spec"]["http"][0]["directResponse"] = json!({"status": 503});
    assert!(has(&errs(&vs), "both route and direct_response"));
    let mut vs = demo();
    vs["spec"]["http"][0]
        .as_object_mut()
        .expect("obj")
        .remove("route");
    assert!(has(
        &errs(&vs),
        "HTTP route, redirect or direct_response is required"
    ));
    let mut vs = demo();
    vs["spec"]["http"][0]["delegate"] = json!({"name": "d", "namespace": "n"});
    assert!(has(&errs(&vs), "both route and delegate"));
}

#[test]
fn mirror_and_mirrors_are_exclusive() {
    let mut vs = demo();
    vs["spec"]["http"][1]["mirror"] = json!({"host": "shadow"});
    vs["spec"]["http"][1]["mirrors"] = json!([{"destination": {"host": "shadow2"}}]);
    assert_eq!(
        errs(&vs),
        vec!["spec.http[1]: HTTP route cannot contain both mirror and mirrors"]
    );
}

#[test]
fn destination_host_rules() {
    for (host, msg) in [
        ("*", "invalid destination host *"),
        ("web..demo", "invalid (label \"\" invalid)"),
        ("we_b", "invalid (label \"we_b\" invalid)"),
        ("", "empty domain name not allowed"),
    ] {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["destination"]["host"] = json!(host);
        let e = errs(&vs);
        assert!(
            has(&e, "spec.http[1].route[0].destination.host: "),
            "{host}: {e:?}"
        );
        assert!(has(&e, msg), "{host}: {e:?}");
    }
    // Short names and wildcard prefixes are allowed.
    for host in ["web", "*.demo.svc", "*web.demo"] {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["destination"]["host"] = json!(host);
        assert_eq!(validate_virtual_service(&vs), Ok(()), "{host}");
    }
}

#[test]
fn subset_must_be_a_dns1123_label() {
    let mut vs = demo();
    vs["spec"]["http"][1]["route"][0]["destination"]["subset"] = json!("v_1");
    assert_eq!(
        errs(&vs),
        vec!["spec.http[1].route[0].destination.subset: subset name is invalid: v_1"]
    );
    let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {"host": "web", "subsets": [{"name": "ok"}, {"name": "-bad"}]}});
    assert_eq!(
        validate_destination_rule(&dr),
        Err(vec![
            "spec.subsets[1].name: subset name is invalid: -bad".to_string()
        ])
    );
}

#[test]
fn at_least_one_of_http_tcp_tls_and_hosts() {
    let mut vs = demo();
    vs["spec"].as_object_mut().expect("obj").remove("http");
    assert!(has(
        &errs(&vs),
        "http, tcp or tls must be provided in virtual service"
    ));
    // No hosts makes a delegate VirtualService, which may not name gateways.
    let mut vs = demo();
    vs["spec"]["hosts"] = json!([]);
    assert_eq!(
        errs(&vs),
        vec!["spec.gateways: delegate virtual service must have no gateways specified"]
    );
    let mut vs = demo();
    vs["spec"]["hosts"] = json!(["*"]);
    assert!(has(&errs(&vs), "wildcard host * is not allowed"));
    vs["spec"]["gateways"] = json!(["istio-system/ingress"]);
    assert_eq!(validate_virtual_service(&vs), Ok(()));
}

#[test]
fn schema_violations_name_their_path() {
    let mut vs = demo();
    vs["spec"]["http"][1]["route"][0]["weight"] = json!("heavy");
    let e = errs(&vs);
    assert!(has(&e, "spec.http[1].route[0].weight: "), "{e:?}");
    let mut vs = demo();
    vs["spec"]["http"][1]["route"][0]["weight"] = json!(3_000_000_000_i64);
    assert!(has(&errs(&vs), "spec.http[1].route[0].weight: "));
    let mut vs = demo();
    vs["spec"]["http"][1]["route"][0]["destination"]
        .as_object_mut()
        .expect("obj")
        .remove("host");
    assert!(has(&errs(&vs), "spec.http[1].route[0].destination: "));
    let mut vs = demo();
    vs["spec"]["hosts"] = json!("web");
    assert!(has(&errs(&vs), "spec.hosts: "));
    let mut vs = demo();
    vs["apiVersion"] = json!("networking.istio.io/v2");
    assert!(has(&errs(&vs), "apiVersion: Unsupported value"));
    let mut vs = demo();
    vs["metadata"]["name"] = json!("Web");
    assert!(has(&errs(&vs), "metadata.name: Invalid value"));
    // nullable fields accept null.
    let mut vs = demo();
    vs["spec"]["http"][1]["retries"]["retryRemoteLocalities"] = json!(null);
    assert_eq!(validate_virtual_service(&vs), Ok(()));
}

#[test]
fn the_source_tells_schema_from_webhook() {
    let mut vs = demo();
    vs["spec"]["http"][1]["route"][0]["weight"] = json!(-1);
    assert_eq!(check_virtual_service(&vs)[0].source, Source::Webhook);
    vs["spec"]["http"][1]["route"][0]["weight"] = json!("x");
    assert_eq!(check_virtual_service(&vs)[0].source, Source::Schema);
}

#[test]
fn prune_drops_unknown_fields_only() {
    let mut vs = demo();
    vs["spec"]["http"][1]["x-unknown-field"] = json!("dropped");
    vs["spec"]["http"][1]["route"][0]["destination"]["colour"] = json!("red");
    vs["extra"] = json!(1);
    let before = demo();
    let mut pruned = prune(&mut vs);
    pruned.sort();
    assert_eq!(
        pruned,
        vec![
            "extra",
            "spec.http[1].route[0].destination.colour",
            "spec.http[1].x-unknown-field"
        ]
    );
    assert_eq!(
        vs, before,
        "known fields (headers map values included) are kept"
    );
}

#[test]
fn path_conversion() {
    assert_eq!(
        pointer_to_path("/spec/http/0/route/12/weight"),
        "spec.http[0].route[12].weight"
    );
    assert_eq!(pointer_to_path(""), "<root>");
    assert_eq!(
        pointer_to_path("/metadata/annotations/a~1b"),
        "metadata.annotations.a/b"
    );
}
