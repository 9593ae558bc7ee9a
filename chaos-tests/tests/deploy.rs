//! The Kubernetes manifests in `deploy/`, rendered by the real `kubectl kustomize` and
//! checked object by object:
//!
//! - every core object against the Kubernetes v1.33 OpenAPI schema of its kind (the strict
//!   JSON Schemas vendored in `deploy/schemas/kubernetes-v1.33-strict.json`: an unknown,
//!   misspelt or mistyped field fails), every Istio security and prometheus-operator object
//!   against the hand-written shapes in `deploy/schemas/crd-shapes.json` (see SOURCE.md there:
//!   their CRD schemas are not in any registry reachable here);
//! - RBAC grants nothing beyond failoverd's list; every pod runs locked down;
//! - the wiring: selectors match the pods, mounts match the config file's paths, the config
//!   file and the playbooks load in failoverd itself, the container arguments parse with
//!   failoverd's own CLI;
//! - alert rules and dashboard queries name metrics failoverd exports; `promtool check
//!   rules` and `promtool test rules` (`deploy/tests/alerts.test.yaml`) on the rendered rules.
//!
//! Needs `kubectl` (Debian `kubernetes-client`) and `promtool` (Debian `prometheus`), both
//! installed by scripts/test.sh. Without one of them every test that needs it FAILS with the
//! install command: a test that passes without checking would hide a broken deploy/.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, Scenario, failoverd_bin, free_addr, http_get};

use clap::Parser as _;
use serde_json::{Value, json};

/// What failoverd does in the cluster, read off its code: (API group, resource, verbs).
/// The RBAC must grant exactly these, nothing more and nothing missing.
///
/// - VirtualServices: `get` (routing store reads), `list` (one LIST per namespace at start
///   and takeover), `watch` (drift), `update` (every write is a replace carrying the
///   resourceVersion it read; daemon/src/routing/kube.rs). No patch, create or delete.
/// - Leases: `get`, `create`, `update` (daemon/src/leader.rs: get_opt, create, replace).
/// - Events: kube-rs's `Recorder` posts `events.k8s.io/v1` Events and patches a repeated
///   one (its series count); it never uses core v1 Events.
const ALLOWED: [(&str, &str, &[&str]); 3] = [
    (
        "networking.istio.io",
        "virtualservices",
        &["get", "list", "watch", "update"],
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A tool the tests drive, or a failure naming the Debian package that provides it. Never a
/// skip: a missing tool must not turn into a green run that checked nothing.
fn tool(bin: &str, package: &str) -> PathBuf {
    find_in_path(bin).unwrap_or_else(|| {
        panic!(
            "{bin} not found on PATH: deploy/ cannot be checked without it. Install it with \
             `apt-get install {package}` (scripts/test.sh does)"
        )
    })
}

/// One rendered kustomization.
#[derive(Debug)]
struct Render {
    /// What was rendered, for messages (`deploy/overlays/example`).
    name: String,
    objects: Vec<Value>,
    /// Whether the optional component is in (the cluster-wide VirtualService binding).
    with_components: bool,
}

/// `kubectl kustomize` of every entry point, once per test binary.
///
/// # Panics
///
/// Without `kubectl`, naming the package to install (every test that renders fails).
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS
        .get_or_init(|| {
            let kubectl = tool("kubectl", "kubernetes-client");
            let deploy = root().join("deploy");
            let targets: [(&str, PathBuf, bool); 4] = [
                ("deploy", deploy.clone(), false),
                (
                    "deploy/overlays/example",
                    deploy.join("overlays/example"),
                    false,
                ),
                ("deploy/base", deploy.join("base"), false),
                // base + every optional component
                (
                    "deploy/tests/with-components",
                    deploy.join("tests/with-components"),
                    true,
                ),
            ];
            let mut out = Vec::new();
            for (name, dir, with_components) in targets {
                let run = Command::new(&kubectl)
                    .arg("kustomize")
                    .arg(&dir)
                    .output()
                    .expect("run kubectl");
                if !run.status.success() {
                    // An old kubectl embeds a kustomize without components, generator
                    // options or directories as resources (Debian bookworm's
                    // kubernetes-client 1.20 has kustomize v2.0.3): name the version.
                    let version = Command::new(&kubectl)
                        .args(["version", "--client"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    panic!(
                        "kubectl kustomize {name} failed: {}\n{} `kubectl version --client`:\n{version}\
                         deploy/ needs the kustomize v4 or later that kubectl 1.21+ embeds",
                        String::from_utf8_lossy(&run.stderr),
                        kubectl.display()
                    );
                }
                let text = String::from_utf8(run.stdout).expect("utf-8 output");
                let objects: Vec<Value> = serde_saphyr::from_multiple(&text)
                    .unwrap_or_else(|e| panic!("{name}: rendered YAML does not parse: {e}"));
                let objects: Vec<Value> = objects.into_iter().filter(|o| !o.is_null()).collect();
                assert!(!objects.is_empty(), "{name} rendered nothing");
                out.push(Render {
                    name: name.to_string(),
                    objects,
                    with_components,
                });
            }
            out
        })
        .as_slice()
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn kind(o: &Value) -> &str {
    s(o, "/kind")
}

fn name(o: &Value) -> &str {
    s(o, "/metadata/name")
}

fn ns(o: &Value) -> &str {
    s(o, "/metadata/namespace")
}

fn id(o: &Value) -> String {
    match ns(o) {
        "" => format!("{}/{}", kind(o), name(o)),
        n => format!("{}/{}/{}", kind(o), n, name(o)),
    }
}

fn of_kind<'a>(r: &'a Render, k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    r.objects.iter().filter(move |o| kind(o) == k)
}

fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    arr(v).iter().filter_map(Value::as_str).collect()
}

/// The schema key of an object: `apiVersion_Kind` with `/` as `_`.
fn schema_key(o: &Value) -> String {
    format!("{}/{}", s(o, "/apiVersion"), kind(o)).replace('/', "_")
}

/// The vendored Kubernetes schemas and the custom-resource shapes, one `$defs` map.
fn schema_defs() -> &'static serde_json::Map<String, Value> {
    static DEFS: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut defs = serde_json::Map::new();
        for f in ["kubernetes-v1.33-strict.json", "crd-shapes.json"] {
            let path = root().join("deploy/schemas").join(f);
            let text = std::fs::read_to_string(&path).expect("read schema file");
            let doc: Value = serde_json::from_str(&text).expect("schema file is JSON");
            let map = doc
                .get("$defs")
                .and_then(Value::as_object)
                .expect("schema file has $defs");
            defs.extend(map.clone());
        }
        defs
    })
}

/// Schema violations of one object (empty: valid), each as `path: message`.
fn schema_errors(
    cache: &mut HashMap<String, jsonschema::Validator>,
    o: &Value,
) -> Result<Vec<String>, String> {
    let key = schema_key(o);
    if !cache.contains_key(&key) {
        let defs = schema_defs();
        if !defs.contains_key(&key) {
            return Err(format!(
                "no schema for {} {} (vendor it: deploy/schemas/SOURCE.md)",
                s(o, "/apiVersion"),
                kind(o)
            ));
        }
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/$defs/{key}"),
            "$defs": defs,
        });
        let v = jsonschema::draft202012::new(&schema).map_err(|e| format!("{key}: {e}"))?;
        cache.insert(key.clone(), v);
    }
    let v = &cache[&key];
    Ok(v.iter_errors(o)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect())
}

/// Checks the API server makes that the OpenAPI schema does not: names, label values, ports.
fn api_server_rules(o: &Value, problems: &mut Vec<String>) {
    let dns_label = |v: &str| {
        !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-')
    };
    let n = name(o);
    let name_ok = match kind(o) {
        "Namespace" | "Service" => dns_label(n),
        _ => n.len() <= 253 && n.split('.').all(dns_label),
    };
    if !name_ok {
        problems.push(format!("{}: invalid name `{n}`", id(o)));
    }
    for (k, v) in o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let v = v.as_str().unwrap_or("<not a string>");
        let ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && (v.is_empty()
                || (v.as_bytes()[0].is_ascii_alphanumeric()
                    && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
        if !ok {
            problems.push(format!("{}: label {k} has an invalid value `{v}`", id(o)));
        }
    }
    for p in arr(o.pointer("/spec/ports")) {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            problems.push(format!("{}: port {port} out of range", id(o)));
        }
    }
}

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

/// Every rule of every Role and ClusterRole fits failoverd's list and together they grant all
/// of it; bindings name only its
/// ServiceAccount and existing roles; leases only in its own namespace.
#[test]
fn rbac_grants_exactly_what_failoverd_uses() {
    let renders = renders();
    for r in renders {
        let mut problems = Vec::new();
        let sa: Vec<&Value> = of_kind(r, "ServiceAccount").collect();
        assert_eq!(sa.len(), 1, "{}: one ServiceAccount", r.name);
        let (sa_name, sa_ns) = (name(sa[0]), ns(sa[0]));
        // Every (group, resource, verb) some rule grants, to check nothing is missing.
        let mut granted: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
        for role in r
            .objects
            .iter()
            .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
        {
            if role.get("aggregationRule").is_some() {
                problems.push(format!("{}: aggregationRule", id(role)));
            }
            for rule in arr(role.get("rules")) {
                if rule.get("nonResourceURLs").is_some() {
                    problems.push(format!("{}: nonResourceURLs", id(role)));
                }
                let verbs = strs(rule.get("verbs"));
                for g in strs(rule.get("apiGroups")) {
                    for res in strs(rule.get("resources")) {
                        let Some((_, _, ok)) =
                            ALLOWED.iter().find(|(ag, rs, _)| *ag == g && *rs == res)
                        else {
                            problems.push(format!("{}: {g}/{res} is not allowed", id(role)));
                            continue;
                        };
                        for v in &verbs {
                            if ok.contains(v) {
                                granted.insert((g, res, v));
                            } else {
                                problems.push(format!("{}: {v} on {g}/{res}", id(role)));
                            }
                        }
                        if res == "leases" && (kind(role) != "Role" || ns(role) != sa_ns) {
                            problems.push(format!(
                                "{}: leases only in failoverd's namespace {sa_ns}",
                                id(role)
                            ));
                        }
                    }
                }
                if strs(rule.get("apiGroups")).is_empty() || strs(rule.get("resources")).is_empty()
                {
                    problems.push(format!("{}: rule without apiGroups/resources", id(role)));
                }
            }
        }
        for b in r
            .objects
            .iter()
            .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding"))
        {
            if kind(b) == "ClusterRoleBinding" && !r.with_components {
                problems.push(format!(
                    "{}: cluster-wide binding outside the optional components",
                    id(b)
                ));
            }
            let (rk, rn) = (s(b, "/roleRef/kind"), s(b, "/roleRef/name"));
            let found = r
                .objects
                .iter()
                .any(|o| kind(o) == rk && name(o) == rn && (rk == "ClusterRole" || ns(o) == ns(b)));
            if !found {
                problems.push(format!("{}: roleRef {rk}/{rn} is not rendered", id(b)));
            }
            for sub in arr(b.get("subjects")) {
                if s(sub, "/kind") != "ServiceAccount"
                    || s(sub, "/name") != sa_name
                    || s(sub, "/namespace") != sa_ns
                {
                    problems.push(format!(
                        "{}: subject {sub} is not the ServiceAccount {sa_ns}/{sa_name}",
                        id(b)
                    ));
                }
            }
        }
        // And nothing failoverd uses is missing: a verb left out fails in the cluster as a
        // 403 on the first move, not at install time.
        for (g, res, verbs) in ALLOWED {
            for v in verbs {
                if !granted.contains(&(g, res, v)) {
                    problems.push(format!(
                        "no role grants {v} on {g}/{res}, which failoverd uses"
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}:\n{}", r.name, problems.join("\n"));
    }
}

/// The rules of deploy/base's Role and ClusterRole as the emulator's RBAC: the Role in its
/// own namespace, the ClusterRole in `guarded` (where the example overlay binds it with a
/// RoleBinding).
fn granted_rules(guarded: &str) -> Vec<Rule> {
    let base = renders()
        .iter()
        .find(|r| r.name == "deploy/base")
        .expect("deploy/base is rendered");
    let mut out = Vec::new();
    for role in base
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        let scope = if kind(role) == "Role" {
            ns(role)
        } else {
            guarded
        };
        for rule in arr(role.get("rules")) {
            out.push(Rule::new(
                &strs(rule.get("verbs")),
                &strs(rule.get("apiGroups")),
                &strs(rule.get("resources")),
                &[scope],
            ));
        }
    }
    assert!(!out.is_empty(), "deploy/base grants nothing");
    out
}

/// The list above is read off the code; this checks it against the code running. The real
/// `failoverd` binary (`cargo build -p failoverd` first), holding only the rules the
/// manifests grant, on the API server emulator with leader election: it takes the Lease,
/// fails over when the primary dies, publishes the Event, puts a drifted route back, and no
/// request of its is refused (a 403 is logged naming the verb, and a refused write is
/// recorded by the emulator).
// Several workers: the in-process emulator validates a VirtualService write synchronously
// (the Istio schema, slow in a debug build on a loaded machine), and the lease renewals
// must still be answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_granted_rbac_is_enough_for_failover_with_leader_election() {
    const SEC: Duration = Duration::from_secs(1);
    const VS_API: &str = "networking.istio.io/v1";
    let emu = Emulator::start().await.expect("emulator");
    emu.seed(serde_saphyr::from_str::<Value>(DEMO_VIRTUAL_SERVICE).expect("demo VS"))
        .expect("seed");
    let sa = "system:serviceaccount:failoverd:failoverd";
    emu.add_token("deploy-rbac-token", sa, granted_rules("demo"));
    let mut sc = Scenario::new(&[]).await.expect("scenario");
    let dir = sc.dir.path();
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, "deploy-rbac-token")
        .expect("kubeconfig");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        // The manifests' timings (the defaults: lease 8 s, renew deadline 5 s, retry 1 s).
        "leaderElection:\n  enabled: true\n  namespace: failoverd\n",
    )
    .expect("config");
    let addr = free_addr().expect("address");
    let log = dir.join("stderr.log");
    let child = Command::new(failoverd_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--playbooks")
        .arg(&sc.paths.playbooks)
        .args(["--store", "kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--listen", &addr.to_string(), "--audit"])
        .arg(dir.join("audit.jsonl"))
        .args(["--log-format", "json"])
        .env("POD_NAME", "failoverd-0")
        .env_remove("FAILOVERD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn failoverd");
    let _daemon = KillOnDrop(child);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let vs_host = |emu: &Emulator| {
        emu.get(VS_API, "VirtualService", "demo", "web")
            .and_then(|v| {
                v["spec"]["http"][1]["route"][0]["destination"]["host"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };

    // Ready, then holding the Lease (get/create/update on leases in its namespace).
    let start = Instant::now();
    while !matches!(http_get(addr, "/readyz", SEC).await, Ok((200, _))) {
        assert!(start.elapsed() < 30 * SEC, "not ready in 30 s\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(&log, "the Lease held by failoverd-0", 15 * SEC, &|| {
        emu.get(
            "coordination.k8s.io/v1",
            "Lease",
            "failoverd",
            "failoverd-leader",
        )
        .is_some_and(|l| l["spec"]["holderIdentity"] == "failoverd-0")
    })
    .await;

    // A failover (get/list to read, update to write), and its Event (events.k8s.io create).
    sc.primary.stop();
    wait_until(&log, "the failover written", 20 * SEC, &|| {
        vs_host(&emu) == DR_HOST
    })
    .await;
    wait_until(
        &log,
        "a RouteChanged Event on the VirtualService",
        10 * SEC,
        &|| {
            emu.events().iter().any(|e| {
                e["reason"] == "RouteChanged"
                    && e["regarding"]["name"] == "web"
                    && e["metadata"]["namespace"] == "demo"
            })
        },
    )
    .await;

    // Drift: someone puts the original route back while failed over; failoverd (watch)
    // writes its routing again.
    let original: Value = serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).expect("demo VS");
    let drifted = emu
        .mutate("VirtualService", "demo", "web", |o| {
            o["spec"]["http"][1]["route"] = original["spec"]["http"][1]["route"].clone();
        })
        .expect("drift");
    // What was stored (failoverd may put its route back at any moment after this).
    assert_ne!(
        drifted["spec"]["http"][1]["route"][0]["destination"]["host"], DR_HOST,
        "the drift did not land"
    );
    wait_until(&log, "the drifted route reasserted", 20 * SEC, &|| {
        vs_host(&emu) == DR_HOST
    })
    .await;

    let refused: Vec<String> = emu
        .writes()
        .iter()
        .filter(|w| w.identity == sa && (w.status == 401 || w.status == 403))
        .map(|w| {
            format!(
                "{} {} {}/{}: {}",
                w.verb, w.kind, w.namespace, w.name, w.status
            )
        })
        .collect();
    assert!(refused.is_empty(), "refused writes: {refused:?}");
    let text = logs();
    let forbidden: Vec<&str> = text
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "failoverd was refused by the API server:\n{}",
        forbidden.join("\n")
    );
}

/// Polls `ok` every 20 ms until it holds; fails after `timeout` with the daemon's log.
async fn wait_until(log: &Path, what: &str, timeout: Duration, ok: &dyn Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills and reaps the daemon when dropped, a failed assertion included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The one workload (StatefulSet) of a render and its pod template.
fn workload(r: &Render) -> (&Value, &Value) {
    let w: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "StatefulSet" | "Deployment"))
        .collect();
    assert_eq!(w.len(), 1, "{}: one workload", r.name);
    (w[0], &w[0]["spec"]["template"])
}

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

/// The rendered ConfigMap named `prefix` (kustomize appends a content hash).
fn config_map<'a>(r: &'a Render, prefix: &str) -> &'a Value {
    let found: Vec<&Value> = of_kind(r, "ConfigMap")
        .filter(|o| {
            name(o) == prefix
                || name(o)
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.len() == 10)
        })
        .collect();
    assert_eq!(found.len(), 1, "{}: ConfigMap {prefix}", r.name);
    found[0]
}

fn write_data(cm: &Value, dir: &Path) {
    for (k, v) in cm
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        std::fs::write(dir.join(k), v.as_str().expect("string data")).expect("write");
    }
}

/// The playbooks of a render, loaded by failoverd itself.
fn playbooks_of(r: &Render) -> Vec<failoverd::playbook::Loaded> {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_data(config_map(r, "failoverd-playbooks"), tmp.path());
    if std::fs::read_dir(tmp.path()).expect("dir").next().is_none() {
        return Vec::new();
    }
    failoverd::playbook::load_paths(&[tmp.path().to_path_buf()])
        .unwrap_or_else(|e| panic!("{}: playbooks do not load:\n{e}", r.name))
}

/// The config file, the playbooks and the container arguments are what failoverd accepts,
/// and the paths in the config file are where the volumes are mounted.
#[test]
fn config_and_playbooks_load_in_failoverd() {
    let renders = renders();
    for r in renders {
        let who = &r.name;
        let (w, tpl) = workload(r);
        let c = &tpl["spec"]["containers"][0];
        let mounts = arr(c.get("volumeMounts"));
        let volumes = arr(tpl.pointer("/spec/volumes"));
        // The mount (path, volume) that holds `path`.
        let mount_of = |path: &str| -> (&str, &str, bool) {
            let m = mounts
                .iter()
                .filter(|m| path.starts_with(&format!("{}/", s(m, "/mountPath"))))
                .max_by_key(|m| s(m, "/mountPath").len())
                .unwrap_or_else(|| panic!("{who}: nothing mounted at {path}"));
            (
                s(m, "/mountPath"),
                s(m, "/name"),
                m["readOnly"] == json!(true),
            )
        };
        let volume = |vol: &str| volumes.iter().find(|v| s(v, "/name") == vol);

        // Container arguments: failoverd's own CLI parses them.
        let mut argv = vec!["failoverd".to_string()];
        argv.extend(strs(c.get("args")).into_iter().map(String::from));
        failoverd::cli::Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{who}: container args {argv:?}: {e}"));
        let config_path = argv
            .windows(2)
            .find(|a| a[0] == "--config")
            .map(|a| a[1].clone())
            .expect("--config in the args");

        // The config file comes from the config ConfigMap at that path, and loads.
        let (mount, vol, ro) = mount_of(&config_path);
        assert!(ro, "{who}: config mounted read-only");
        let cm = config_map(r, "failoverd-config");
        assert_eq!(
            volume(vol).map(|v| s(v, "/configMap/name")),
            Some(name(cm)),
            "{who}: {config_path} comes from {}",
            name(cm)
        );
        let key = config_path.trim_start_matches(&format!("{mount}/"));
        let tmp = tempfile::tempdir().expect("tempdir");
        write_data(cm, tmp.path());
        let cfg = failoverd::config::FileConfig::load(&tmp.path().join(key))
            .unwrap_or_else(|e| panic!("{who}: config does not load: {e}"));
        assert_eq!(cfg.store.as_deref(), Some("kubernetes"), "{who}: store");
        // More than one replica must elect a leader: two writers would race on every route.
        let replicas = w
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let election = cfg
            .leader_election
            .as_ref()
            .map(|l| l.resolve(false))
            .transpose()
            .unwrap_or_else(|e| panic!("{who}: leaderElection: {e}"))
            .flatten();
        assert!(
            replicas <= 1 || election.is_some(),
            "{who}: {replicas} replicas without leaderElection.enabled"
        );
        assert_eq!(
            cfg.listen.as_deref(),
            Some("0.0.0.0:8080"),
            "{who}: listen on the container port"
        );

        // Playbooks: the playbooks ConfigMap, read-only.
        let pb = cfg.playbooks.expect("playbooks in the config");
        let (_, vol, ro) = mount_of(&format!("{}/x", pb.display()));
        assert!(ro, "{who}: playbooks read-only");
        assert_eq!(
            volume(vol).map(|v| s(v, "/configMap/name")),
            Some(name(config_map(r, "failoverd-playbooks"))),
            "{who}: playbooks volume"
        );
        // Tokens: a Secret, read-only.
        let tokens = cfg.tokens.expect("tokens in the config");
        let (_, vol, ro) = mount_of(&tokens.display().to_string());
        assert!(
            ro && volume(vol).is_some_and(|v| v.get("secret").is_some()),
            "{who}: tokens from a Secret, read-only"
        );
        // Audit log and override state: on the replica's own persistent volume.
        for (what, p) in [
            ("audit", cfg.audit.expect("audit in the config")),
            ("state", cfg.state.expect("state in the config")),
        ] {
            let (_, vol, ro) = mount_of(&p.display().to_string());
            assert!(!ro, "{who}: {what} writable");
            assert!(
                arr(w.pointer("/spec/volumeClaimTemplates"))
                    .iter()
                    .any(|t| s(t, "/metadata/name") == vol),
                "{who}: {what} on a per-replica PersistentVolumeClaim"
            );
        }

        // Playbooks load in failoverd; each overlay copy equals its source in playbooks/;
        // failoverd may rewrite VirtualServices in each guarded namespace.
        let loaded = playbooks_of(r);
        if r.name.contains("example") || r.name == "deploy" {
            assert!(!loaded.is_empty(), "{who}: the example has playbooks");
        }
        let cm = config_map(r, "failoverd-playbooks");
        for (k, v) in cm
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let source = root().join("playbooks").join(k);
            let source = std::fs::read_to_string(&source)
                .unwrap_or_else(|e| panic!("{who}: {k} has no source in playbooks/: {e}"));
            assert_eq!(
                v.as_str(),
                Some(source.as_str()),
                "{who}: {k} differs from playbooks/{k}; copy it again"
            );
        }
        let sa_ns = ns(w);
        for p in &loaded {
            let vs_ns = &p.playbook.spec.virtual_service.namespace;
            let bound = r.objects.iter().any(|b| {
                (kind(b) == "ClusterRoleBinding" || (kind(b) == "RoleBinding" && ns(b) == vs_ns))
                    && s(b, "/roleRef/name") == "failoverd-virtualservices"
                    && arr(b.get("subjects"))
                        .iter()
                        .any(|sub| s(sub, "/namespace") == sa_ns)
            });
            assert!(
                bound,
                "{who}: playbook {} rewrites a VirtualService in {vs_ns}, but no RoleBinding there",
                p.file.display()
            );
        }
    }
}

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

/// What the manifests assume about the image: it runs as 65532, built from the lock file.
#[test]
fn dockerfile_builds_locked_and_runs_non_root() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile at the root");
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let runtime = stages.last().copied().unwrap_or_default();
    // The binary links glibc (x86_64-unknown-linux-gnu): distroless `static` has none.
    assert!(
        runtime.contains("distroless/cc-debian12:nonroot"),
        "runtime image: {runtime}"
    );
    assert!(
        text.contains("cargo build --release -p failoverd --locked"),
        "locked release build"
    );
    assert!(text.contains("USER 65532:65532"), "non-root user");
    let builder = stages[0];
    assert!(
        builder.contains("rust:1.95") && builder.contains("bookworm"),
        "builder on Debian 12 like the runtime (glibc): {builder}"
    );
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
