//! The manifests in `deploy/`, rendered by the real `kubectl kustomize`: every core object
//! fits the Kubernetes v1.33 OpenAPI schema of its kind (the strict JSON Schemas vendored in
//! `deploy/schemas/kubernetes-v1.33-strict.json`: an unknown, misspelt or mistyped field
//! fails), every Istio security and prometheus-operator object the hand-written shapes in
//! `deploy/schemas/crd-shapes.json` (see SOURCE.md there), and the checker catches typical
//! mistakes. Shared rendering: `support::deploy`.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

mod support;

use support::deploy::{api_server_rules, id, of_kind, renders, schema_errors, schema_key};

#[test]
fn every_rendered_object_fits_the_schema_of_its_kind() {
    let renders = renders();
    let mut cache = HashMap::new();
    let mut problems = Vec::new();
    let mut kinds = BTreeSet::new();
    for r in renders {
        for o in &r.objects {
            kinds.insert(schema_key(o));
            match schema_errors(&mut cache, o) {
                Ok(errors) => problems.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("{}: {}: {e}", r.name, id(o))),
                ),
                Err(e) => problems.push(format!("{}: {}: {e}", r.name, id(o))),
            }
            api_server_rules(o, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The kinds the brief asks for are all there (a render that silently lost one fails).
    for k in [
        "v1_Namespace",
        "v1_ServiceAccount",
        "v1_ConfigMap",
        "v1_Service",
        "apps_v1_StatefulSet",
        "policy_v1_PodDisruptionBudget",
        "networking.k8s.io_v1_NetworkPolicy",
        "rbac.authorization.k8s.io_v1_Role",
        "rbac.authorization.k8s.io_v1_RoleBinding",
        "rbac.authorization.k8s.io_v1_ClusterRole",
        "security.istio.io_v1_PeerAuthentication",
        "security.istio.io_v1_AuthorizationPolicy",
        "monitoring.coreos.com_v1_ServiceMonitor",
        "monitoring.coreos.com_v1_PrometheusRule",
    ] {
        assert!(kinds.contains(k), "no {k} rendered");
    }
}

/// The validation is not vacuous: typical mistakes in each kind of object are caught.
#[test]
fn schema_check_catches_typical_mistakes() {
    let renders = renders();
    let base = renders
        .iter()
        .find(|r| r.name == "deploy/base")
        .expect("base render");
    let get = |k: &str| of_kind(base, k).next().cloned().expect(k);
    type Mutation = (&'static str, &'static str, fn(&mut Value));
    let mutations: [Mutation; 9] = [
        ("StatefulSet", "misspelt field", |o| {
            o["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] =
                json!(true);
        }),
        ("StatefulSet", "string for an integer", |o| {
            o["spec"]["replicas"] = json!("2");
        }),
        ("StatefulSet", "container without a name", |o| {
            if let Some(c) = o["spec"]["template"]["spec"]["containers"][0].as_object_mut() {
                c.remove("name");
            }
        }),
        ("Role", "rule without verbs", |o| {
            if let Some(r) = o["rules"][0].as_object_mut() {
                r.remove("verbs");
            }
        }),
        ("NetworkPolicy", "field at the wrong level", |o| {
            o["spec"]["ports"] = json!([{ "port": 8080 }]);
        }),
        ("AuthorizationPolicy", "unknown action", |o| {
            o["spec"]["action"] = json!("PERMIT");
        }),
        ("PeerAuthentication", "lower-case mode", |o| {
            o["spec"]["mtls"]["mode"] = json!("strict");
        }),
        ("ServiceMonitor", "misspelt endpoint field", |o| {
            o["spec"]["endpoints"][0]["intervall"] = json!("15s");
        }),
        ("PrometheusRule", "bad duration and record+alert", |o| {
            o["spec"]["groups"][0]["rules"][0]["for"] = json!("2 minutes");
            o["spec"]["groups"][0]["rules"][0]["record"] = json!("x:y");
        }),
    ];
    let mut cache = HashMap::new();
    for (k, what, mutate) in mutations {
        let mut o = get(k);
        assert_eq!(
            schema_errors(&mut cache, &o).expect("schema"),
            Vec::<String>::new(),
            "{k} valid before the mutation"
        );
        mutate(&mut o);
        let errors = schema_errors(&mut cache, &o).expect("schema");
        assert!(!errors.is_empty(), "{k}: {what} was not caught");
    }
}
