//! The RBAC in `deploy/` grants exactly what failoverd uses, and the real binary holding only
//! those rules fails over with leader election on the API server emulator with nothing
//! refused (`cargo build -p failoverd` first). Shared rendering: `support::deploy`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::Emulator;
use chaos_tests::{
    DEMO_VIRTUAL_SERVICE, DR_HOST, Scenario, free_addr, http_get, kube_replica_command,
};
use serde_json::Value;

mod support;

use support::deploy::{arr, base_rules, id, kind, name, ns, of_kind, renders, s, strs};

/// What failoverd does in the cluster, read off its code: (API group, resource, verbs).
/// The RBAC must grant exactly these, nothing more and nothing missing.
///
/// - VirtualServices: `get` (routing store reads), `list` (one LIST per namespace at start
///   and takeover), `watch` (drift), `update` (every write is a replace carrying the
///   resourceVersion it read; daemon/src/routing/kube/write.rs). No patch, create or delete.
/// - Leases: `get`, `create`, `update` (daemon/src/leader.rs: get_opt, create, replace).
/// - Events: kube-rs's `Recorder` posts `events.k8s.io/v1` Events and patches a repeated
///   one (its series count); it never uses core v1 Events.
/// - ConfigMaps: the audit chain (daemon/src/trail/mod.rs): `get` (the head and segments),
///   `create` (segments, the head at the chain's start), `delete` (segments past retention),
///   and `update` of the head object only (checked below: `resourceNames`).
/// - The residency and mesh-policy facts (daemon/src/mesh/cluster.rs): one
///   `kube::runtime::watcher` per kind across all namespaces (`list`, `watch`) and `get`,
///   on Namespaces, PeerAuthentications, DestinationRules and ServiceEntries.
const ALLOWED: [(&str, &str, &[&str]); 8] = [
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
    ("", "configmaps", &["get", "create", "delete", "update"]),
    ("", "namespaces", READ),
    ("security.istio.io", "peerauthentications", READ),
    ("networking.istio.io", "destinationrules", READ),
    ("networking.istio.io", "serviceentries", READ),
];

/// Reading only.
const READ: &[&str] = &["get", "list", "watch"];

/// The one cluster-wide grant of the base install: reading the mesh facts (targets live in
/// other namespaces).
const MESH_FACTS: [(&str, &str); 4] = [
    ("", "namespaces"),
    ("security.istio.io", "peerauthentications"),
    ("networking.istio.io", "destinationrules"),
    ("networking.istio.io", "serviceentries"),
];

/// Whether the ClusterRole `name` of a render grants only reading the mesh facts.
fn reads_mesh_facts_only(objects: &[Value], name_: &str) -> bool {
    let Some(role) = objects
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == name_)
    else {
        return false;
    };
    let rules = arr(role.get("rules"));
    !rules.is_empty()
        && rules.iter().all(|rule| {
            strs(rule.get("verbs")).iter().all(|v| READ.contains(v))
                && strs(rule.get("apiGroups")).iter().all(|g| {
                    strs(rule.get("resources"))
                        .iter()
                        .all(|r| MESH_FACTS.contains(&(*g, *r)))
                })
        })
}

/// The roles of the token-review component, checked in deploy_identities.rs: failoverd's
/// review rights and the roles people are granted on `playbooks.failoverd.dev`.
const IDENTITY_ROLES: [&str; 4] = [
    "failoverd-token-review",
    "failoverd-viewer",
    "failoverd-operator",
    "failoverd-admin",
];

/// The audit chain's head object, the only ConfigMap failoverd may update.
const AUDIT_HEAD: &str = "failoverd-leader-audit";

/// Every rule of every Role and ClusterRole fits failoverd's list and together they grant all
/// of it; bindings name only its
/// ServiceAccount and existing roles; leases and ConfigMaps only in its own namespace, and
/// no ConfigMap update but the audit chain's head.
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
            .filter(|o| !IDENTITY_ROLES.contains(&name(o)))
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
                            if res == "configmaps"
                                && *v == "update"
                                && strs(rule.get("resourceNames")) != [AUDIT_HEAD]
                            {
                                problems.push(format!(
                                    "{}: update on configmaps other than {AUDIT_HEAD} (its own config and playbooks among them)",
                                    id(role)
                                ));
                            }
                        }
                        if matches!(res, "leases" | "configmaps")
                            && (kind(role) != "Role" || ns(role) != sa_ns)
                        {
                            problems.push(format!(
                                "{}: {res} only in failoverd's namespace {sa_ns}",
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
            let (rk, rn) = (s(b, "/roleRef/kind"), s(b, "/roleRef/name"));
            if kind(b) == "ClusterRoleBinding"
                && !r.with_components
                && !reads_mesh_facts_only(&r.objects, rn)
            {
                problems.push(format!(
                    "{}: cluster-wide binding outside the optional components, to more than reading the mesh facts",
                    id(b)
                ));
            }
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
    emu.add_token("deploy-rbac-token", sa, base_rules("demo"));
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
    let audit = dir.join("audit.jsonl");
    let playbooks = &sc.paths.playbooks;
    let child = kube_replica_command(&config, playbooks, &kubeconfig, addr, &audit, "failoverd-0")
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

/// The check of cluster-wide bindings can fail: a ClusterRole that writes, or reads
/// anything but the mesh facts, is not "reading the mesh facts only".
#[test]
fn the_cluster_wide_check_refuses_wider_roles() {
    let role = |rules: Value| {
        vec![serde_json::json!({"kind": "ClusterRole", "metadata": {"name": "r"}, "rules": rules})]
    };
    let ok = serde_json::json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]);
    assert!(reads_mesh_facts_only(&role(ok), "r"));
    for wider in [
        serde_json::json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "update"]}]),
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
        serde_json::json!([{"apiGroups": ["*"], "resources": ["namespaces"], "verbs": ["get"]}]),
        serde_json::json!([]),
    ] {
        assert!(!reads_mesh_facts_only(&role(wider.clone()), "r"), "{wider}");
    }
    assert!(
        !reads_mesh_facts_only(&[], "r"),
        "a role that is not rendered"
    );
}

/// The mesh facts' grant checked against the code running: a `MeshView::kubernetes` holding
/// only the base's rules (the ClusterRoleBinding's ClusterRole cluster-wide) reads all four
/// kinds with nothing refused, and sees a target's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_granted_rbac_is_enough_for_the_mesh_view() {
    use failoverd::mesh::{Fence, MeshView, judge};
    let emu = Emulator::start().await.expect("emulator");
    emu.seed(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "cases-dr", "labels": {"failoverd.dev/jurisdiction": "ID"}}}))
        .expect("seed");
    let sa = "system:serviceaccount:failoverd:failoverd";
    emu.add_token("mesh-rbac-token", sa, base_rules("demo"));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, "mesh-rbac-token")
        .expect("kubeconfig");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig reads");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    let view = MeshView::kubernetes(kube::Client::try_from(config).expect("client"));
    let start = Instant::now();
    while !view.snapshot().synced {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not synced in 20 s: {:?}",
            view.snapshot().error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = view.snapshot();
    assert_eq!(snap.error, None);
    let p = judge(
        &snap.view,
        "cases.cases-dr.svc.cluster.local",
        None,
        &Fence::default(),
    );
    assert_eq!(p.jurisdiction.as_deref(), Some("ID"));
    let kinds: BTreeSet<String> = emu
        .reads()
        .iter()
        .filter(|r| r.namespace.is_empty() && matches!(r.verb.as_str(), "list" | "watch"))
        .map(|r| r.kind.clone())
        .collect();
    for k in [
        "Namespace",
        "PeerAuthentication",
        "DestinationRule",
        "ServiceEntry",
    ] {
        assert!(kinds.contains(k), "{k} not read cluster-wide: {kinds:?}");
    }
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
