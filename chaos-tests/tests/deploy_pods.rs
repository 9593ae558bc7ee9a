//! The workloads in `deploy/`: every pod (failoverd's and the tools') runs locked down, the
//! daemon is highly available, and services and network policies select the pods they mean.
//! Shared rendering: `support::deploy`.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

mod support;

use support::deploy::{
    api_server_rules, arr, id, kind, name, ns, of_kind, playbooks_of, renders, root, s,
    schema_errors, strs, workload,
};

fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(want) = selector.as_object() else {
        return false;
    };
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Pod Security "restricted" essentials and failoverd's own rules for one pod spec:
/// non-root as 65532, RuntimeDefault seccomp, no host namespaces or paths, and per container
/// a read-only root, no privilege escalation, every capability dropped, requests and limits.
fn check_pod_security(who: &str, pod: &Value) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], json!(true), "{who}: runAsNonRoot");
    assert_eq!(psc["runAsUser"], json!(65532), "{who}: runAsUser");
    assert_eq!(
        psc["seccompProfile"]["type"],
        json!("RuntimeDefault"),
        "{who}: seccomp"
    );
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], json!(true), "{who}: {host}");
    }
    for v in arr(pod.get("volumes")) {
        assert!(v.get("hostPath").is_none(), "{who}: hostPath volume");
    }
    let containers = arr(pod.get("containers"));
    assert!(!containers.is_empty(), "{who}: containers");
    for c in containers.iter().chain(arr(pod.get("initContainers"))) {
        let sc = &c["securityContext"];
        let cw = format!("{who}: container {}", s(c, "/name"));
        assert_ne!(sc["runAsNonRoot"], json!(false), "{cw}: runAsNonRoot");
        assert_ne!(sc["privileged"], json!(true), "{cw}: privileged");
        assert_eq!(
            sc["readOnlyRootFilesystem"],
            json!(true),
            "{cw}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"],
            json!(false),
            "{cw}: allowPrivilegeEscalation"
        );
        assert_eq!(
            strs(sc.pointer("/capabilities/drop")),
            vec!["ALL"],
            "{cw}: drop ALL"
        );
        assert!(
            sc.pointer("/capabilities/add").is_none(),
            "{cw}: adds capabilities"
        );
        for q in [
            "/resources/requests/cpu",
            "/resources/requests/memory",
            "/resources/limits/cpu",
            "/resources/limits/memory",
        ] {
            assert!(c.pointer(q).is_some(), "{cw}: {q}");
        }
    }
}

/// deploy/tools/*.yaml (applied by hand, e.g. the audit reader): schema and pod security.
#[test]
fn tools_fit_their_schemas_and_run_locked_down() {
    let dir = root().join("deploy/tools");
    let mut cache = HashMap::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/tools") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for o in docs.iter().filter(|o| !o.is_null()) {
            seen += 1;
            let who = format!("{}: {}", path.display(), id(o));
            let errors = schema_errors(&mut cache, o).unwrap_or_else(|e| panic!("{who}: {e}"));
            assert!(errors.is_empty(), "{who}:\n{}", errors.join("\n"));
            let mut problems = Vec::new();
            api_server_rules(o, &mut problems);
            assert!(problems.is_empty(), "{}", problems.join("\n"));
            if kind(o) == "Pod" {
                check_pod_security(&who, &o["spec"]);
                for m in o["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| arr(c.get("volumeMounts")))
                {
                    assert_eq!(m["readOnly"], json!(true), "{who}: tools only read");
                }
            }
        }
    }
    assert!(seen >= 1, "no manifests in deploy/tools");
}

#[test]
fn pods_run_locked_down_and_highly_available() {
    let renders = renders();
    for r in renders {
        let (w, tpl) = workload(r);
        let pod = &tpl["spec"];
        let who = format!("{}: {}", r.name, id(w));
        check_pod_security(&who, pod);
        for c in arr(pod.get("containers")) {
            let cw = format!("{who}: container {}", s(c, "/name"));
            // Probes on the named port serving the API.
            let port = arr(c.get("ports"))
                .iter()
                .find(|p| s(p, "/name") == "http")
                .unwrap_or_else(|| panic!("{cw}: port named http"));
            assert_eq!(port["containerPort"], json!(8080), "{cw}: port 8080");
            assert_eq!(s(c, "/readinessProbe/httpGet/path"), "/readyz", "{cw}");
            assert_eq!(s(c, "/livenessProbe/httpGet/path"), "/healthz", "{cw}");
            for p in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let port = &c[p]["httpGet"]["port"];
                assert!(
                    port == &json!("http") || port == &json!(8080),
                    "{cw}: {p} port {port}"
                );
            }
            // Every writable mount is a volume meant for writing, never the config.
            for m in arr(c.get("volumeMounts")) {
                let vol = s(m, "/name");
                let writable = m["readOnly"] != json!(true);
                let is_claim = arr(w.pointer("/spec/volumeClaimTemplates"))
                    .iter()
                    .any(|t| s(t, "/metadata/name") == vol);
                let is_empty_dir = arr(pod.get("volumes"))
                    .iter()
                    .any(|v| s(v, "/name") == vol && v.get("emptyDir").is_some());
                assert!(
                    !writable || is_claim || is_empty_dir,
                    "{cw}: {vol} is mounted writable"
                );
                assert!(
                    is_claim || arr(pod.get("volumes")).iter().any(|v| s(v, "/name") == vol),
                    "{cw}: mount of undeclared volume {vol}"
                );
            }
        }
        // Two or more replicas spread over nodes; a drain keeps one.
        let replicas = w["spec"]["replicas"].as_i64().unwrap_or(1);
        assert!(replicas >= 2, "{who}: {replicas} replicas");
        let labels = &tpl["metadata"]["labels"];
        assert!(
            selects(&w["spec"]["selector"]["matchLabels"], labels),
            "{who}: selector"
        );
        let anti = arr(pod
            .pointer("/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution"));
        assert!(
            anti.iter().any(|t| {
                s(t, "/podAffinityTerm/topologyKey") == "kubernetes.io/hostname"
                    && selects(
                        &t["podAffinityTerm"]["labelSelector"]["matchLabels"],
                        labels,
                    )
            }),
            "{who}: anti-affinity on hostname"
        );
        assert!(
            arr(pod.get("topologySpreadConstraints"))
                .iter()
                .all(|t| selects(&t["labelSelector"]["matchLabels"], labels))
                && !arr(pod.get("topologySpreadConstraints")).is_empty(),
            "{who}: topology spread"
        );
        let pdbs: Vec<&Value> = of_kind(r, "PodDisruptionBudget").collect();
        assert_eq!(pdbs.len(), 1, "{who}: one PDB");
        let min = pdbs[0]["spec"]["minAvailable"].as_i64().unwrap_or(0);
        assert!(
            min >= 1 && min < replicas,
            "{who}: minAvailable {min} with {replicas} replicas"
        );
        assert!(
            selects(&pdbs[0]["spec"]["selector"]["matchLabels"], labels),
            "{who}: PDB selects the pods"
        );
        // The pods run as the rendered ServiceAccount, in the same namespace.
        let sa = s(pod, "/serviceAccountName");
        assert!(
            of_kind(r, "ServiceAccount").any(|o| name(o) == sa && ns(o) == ns(w)),
            "{who}: ServiceAccount {sa}"
        );
    }
}

/// Services, policies and the ServiceMonitor point at the pods and the port that exist;
/// every namespaced object lives in a rendered Namespace or a guarded one.
#[test]
fn services_and_policies_select_the_pods() {
    let renders = renders();
    for r in renders {
        let (w, tpl) = workload(r);
        let labels = &tpl["metadata"]["labels"];
        let who = &r.name;
        let services: Vec<&Value> = of_kind(r, "Service").collect();
        assert!(!services.is_empty(), "{who}: Service");
        for svc in &services {
            assert!(
                selects(&svc["spec"]["selector"], labels),
                "{who}: {} selects the pods",
                id(svc)
            );
            for p in arr(svc.pointer("/spec/ports")) {
                assert_eq!(p["port"], json!(8080), "{who}: {}", id(svc));
                assert_eq!(s(p, "/name"), "http", "{who}: {}", id(svc));
                assert_eq!(p["targetPort"], json!("http"), "{who}: {}", id(svc));
            }
        }
        assert!(
            of_kind(r, "StatefulSet").all(|ss| services
                .iter()
                .any(|svc| name(svc) == s(ss, "/spec/serviceName")
                    && svc.pointer("/spec/clusterIP") == Some(&json!("None")))),
            "{who}: the StatefulSet's serviceName is a headless Service"
        );
        for np in of_kind(r, "NetworkPolicy") {
            assert!(
                selects(&np["spec"]["podSelector"]["matchLabels"], labels),
                "{who}: {}",
                id(np)
            );
            let types = strs(np.pointer("/spec/policyTypes"));
            assert!(
                types.contains(&"Ingress") && types.contains(&"Egress"),
                "{who}: {} restricts both directions",
                id(np)
            );
            let ingress_ports: Vec<&Value> = arr(np.pointer("/spec/ingress"))
                .iter()
                .flat_map(|i| arr(i.get("ports")))
                .map(|p| &p["port"])
                .collect();
            assert_eq!(
                ingress_ports,
                vec![&json!(8080)],
                "{who}: ingress only 8080"
            );
            assert!(
                arr(np.pointer("/spec/ingress"))
                    .iter()
                    .all(|i| !arr(i.get("from")).is_empty()),
                "{who}: {}: an ingress rule without `from` admits everyone",
                id(np)
            );
        }
        for pa in of_kind(r, "PeerAuthentication") {
            assert!(
                selects(&pa["spec"]["selector"]["matchLabels"], labels),
                "{who}: {}",
                id(pa)
            );
            assert_eq!(s(pa, "/spec/mtls/mode"), "STRICT", "{who}: {}", id(pa));
        }
        let aps: Vec<&Value> = of_kind(r, "AuthorizationPolicy").collect();
        assert_eq!(aps.len(), 1, "{who}: one AuthorizationPolicy");
        let ap = aps[0];
        assert!(
            selects(&ap["spec"]["selector"]["matchLabels"], labels),
            "{who}: AuthorizationPolicy selects the pods"
        );
        assert_eq!(s(ap, "/spec/action"), "ALLOW", "{who}");
        let mut posts = 0;
        let mut metrics = 0;
        for rule in arr(ap.pointer("/spec/rules")) {
            let sources: Vec<&Value> = arr(rule.get("from")).iter().collect();
            // A rule without sources would allow anyone in the mesh.
            assert!(!sources.is_empty(), "{who}: an ALLOW rule with no `from`");
            for src in &sources {
                let src = &src["source"];
                assert!(
                    !strs(src.get("principals")).is_empty()
                        || !strs(src.get("namespaces")).is_empty(),
                    "{who}: source {src} names no identity"
                );
                assert!(
                    !strs(src.get("principals")).contains(&"*")
                        && !strs(src.get("namespaces")).contains(&"*"),
                    "{who}: wildcard source"
                );
            }
            for op in arr(rule.get("to")) {
                let op = &op["operation"];
                let methods = strs(op.get("methods"));
                let paths = strs(op.get("paths"));
                assert!(
                    !methods.is_empty() && !paths.is_empty(),
                    "{who}: rule {rule} allows every method or path"
                );
                if methods.contains(&"POST") {
                    posts += 1;
                    assert!(
                        paths.iter().all(|p| p.starts_with("/v1/")),
                        "{who}: POST allowed outside /v1/"
                    );
                }
                if paths.contains(&"/metrics") {
                    metrics += 1;
                    assert_eq!(methods, vec!["GET"], "{who}: /metrics is read-only");
                }
            }
        }
        assert!(posts >= 1 && metrics >= 1, "{who}: API and /metrics rules");
        for sm in of_kind(r, "ServiceMonitor") {
            let selected: Vec<&&Value> = services
                .iter()
                .filter(|svc| {
                    selects(
                        &sm["spec"]["selector"]["matchLabels"],
                        &svc["metadata"]["labels"],
                    )
                })
                .collect();
            assert_eq!(
                selected.len(),
                1,
                "{who}: the ServiceMonitor selects exactly one Service (no double scrapes)"
            );
            for e in arr(sm.pointer("/spec/endpoints")) {
                assert!(
                    arr(selected[0].pointer("/spec/ports"))
                        .iter()
                        .any(|p| p["name"] == e["port"]),
                    "{who}: endpoint port {}",
                    e["port"]
                );
                assert_eq!(s(e, "/path"), "/metrics", "{who}");
            }
        }
        // Namespaces: failoverd's own is rendered; others only for guarded VirtualServices.
        let namespaces: BTreeSet<&str> = of_kind(r, "Namespace").map(name).collect();
        assert!(
            namespaces.contains(ns(w)),
            "{who}: namespace {} rendered",
            ns(w)
        );
        let guarded: BTreeSet<String> = playbooks_of(r)
            .iter()
            .map(|p| p.playbook.spec.virtual_service.namespace.clone())
            .collect();
        for o in &r.objects {
            let n = ns(o);
            assert!(
                n.is_empty() || namespaces.contains(n) || guarded.contains(n),
                "{who}: {} is in namespace {n}, which is neither rendered nor guarded",
                id(o)
            );
        }
    }
}
