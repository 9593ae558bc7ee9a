//! The residency and policy facts on the API server emulator: the emulator serves the kinds
//! (Namespaces cluster-scoped, PeerAuthentications, ServiceEntries) as a real API server does
//! to kube-rs, and `failoverd::mesh::MeshView::kubernetes` follows them: a relabel or a
//! PERMISSIVE PeerAuthentication changes the verdict within one watch event; an RBAC denial is
//! an `error` in the snapshot, not a panic, and the watch recovers once granted.

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator, Rule};
use failoverd::mesh::{Fence, MeshView, judge};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Discovery, ResourceExt};
use serde_json::{Value, json};

const HOST: &str = "cases.cases-dr.svc.cluster.local";

/// How long a watch event may take to reach the view on a loaded 2-core machine.
const EVENT: Duration = Duration::from_secs(10);

fn ar(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

fn namespaces(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ar("", "Namespace", "namespaces"))
}

fn peer_auths(client: &Client, ns: &str) -> Api<DynamicObject> {
    let r = ar(
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    );
    Api::namespaced_with(client.clone(), ns, &r)
}

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("object")
}

fn namespace(name: &str, label: Option<&str>) -> DynamicObject {
    let mut v = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(l) = label {
        v["metadata"]["labels"] = json!({"failoverd.dev/jurisdiction": l});
    }
    obj(v)
}

fn peer_auth(ns: &str, name: &str, mode: &str) -> DynamicObject {
    obj(
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns}, "spec": {"mtls": {"mode": mode}}}),
    )
}

async fn client_for(emu: &Emulator, dir: &Path, token: &str) -> Client {
    // kube and reqwest share rustls: one process-wide provider (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = dir.join(format!("kubeconfig-{token}"));
    emu.write_kubeconfig(&path, token).expect("kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn fence() -> Fence {
    Fence {
        allowed: Some(["ID".to_string()].into()),
        require_strict_mtls: true,
    }
}

fn verdict(view: &MeshView) -> Option<String> {
    judge(&view.snapshot().view, HOST, None, &fence()).violation
}

/// Waits until the view is synced, through `changed()`: every snapshot published so far is
/// then seen, so the next `changed()` is a later one.
async fn synced(view: &mut MeshView, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let changed = tokio::time::timeout_at(deadline, view.changed())
            .await
            .unwrap_or_else(|_| {
                panic!("not synced within {within:?}: {:?}", view.snapshot().error)
            });
        assert!(changed, "the source is gone");
        if view.snapshot().synced {
            return;
        }
    }
}

/// Ensures Namespaces are served cluster-scoped with the API server's answers: discovery,
/// create (finalizer, phase, name label), 409, 422, 404, merge patch, list, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_cluster_scoped() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&emu, dir.path(), ADMIN_TOKEN).await;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (found, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .expect("Namespace discovered");
    assert_eq!(found.plural, "namespaces");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    for (g, k) in [
        ("security.istio.io", "PeerAuthentication"),
        ("networking.istio.io", "ServiceEntry"),
        ("networking.istio.io", "DestinationRule"),
    ] {
        let (_, caps) = discovery
            .resolve_gvk(&GroupVersionKind::gvk(g, "v1", k))
            .unwrap_or_else(|| panic!("{k} discovered"));
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced, "{k}");
    }

    let api = namespaces(&client);
    let pp = PostParams::default();
    let created = api
        .create(&pp, &namespace("cases-dr", Some("SG")))
        .await
        .expect("create");
    let v = serde_json::to_value(&created).expect("json");
    assert_eq!(v["metadata"].get("namespace"), None, "{v}");
    assert_eq!(
        v["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "cases-dr"
    );
    assert_eq!(v["metadata"]["labels"]["failoverd.dev/jurisdiction"], "SG");
    assert_eq!(v["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(v["status"]["phase"], "Active");

    let dup = api_err(
        api.create(&pp, &namespace("cases-dr", None))
            .await
            .expect_err("refused"),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(dup.message, "namespaces \"cases-dr\" already exists");
    let bad = api_err(
        api.create(&pp, &namespace("Cases_DR", None))
            .await
            .expect_err("refused"),
    );
    assert_eq!((bad.code, bad.reason.as_str()), (422, "Invalid"));
    assert!(bad.message.starts_with("Namespace \"Cases_DR\" is invalid: metadata.name: Invalid value: \"Cases_DR\": a lowercase RFC 1123 label"), "{}", bad.message);
    let bad_label = api_err(
        api.create(&pp, &namespace("other", Some("not a code!")))
            .await
            .expect_err("refused"),
    );
    assert_eq!(bad_label.code, 422, "{}", bad_label.message);
    let missing = api_err(api.get("nowhere").await.expect_err("refused"));
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );

    let patch = json!({"metadata": {"labels": {"failoverd.dev/jurisdiction": "ID"}}});
    let patched = api
        .patch("cases-dr", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
    assert_eq!(patched.labels()["failoverd.dev/jurisdiction"], "ID");
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    // A replace that drops the name label and the status does not lose them.
    let mut bare = namespace("cases-dr", Some("ID"));
    bare.metadata.resource_version = patched.metadata.resource_version.clone();
    let replaced = api.replace("cases-dr", &pp, &bare).await.expect("replace");
    let replaced = serde_json::to_value(&replaced).expect("json");
    assert_eq!(
        replaced["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "cases-dr"
    );
    assert_eq!(replaced["status"]["phase"], "Active");
    api.create(&pp, &namespace("istio-system", None))
        .await
        .expect("create");
    let list = api.list(&ListParams::default()).await.expect("list");
    let names: Vec<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(names, ["cases-dr", "istio-system"]);
    assert!(list.metadata.resource_version.is_some());

    let gone = api
        .delete("cases-dr", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = gone.left().expect("the Namespace itself");
    let gone = serde_json::to_value(&gone).expect("json");
    assert_eq!(gone["status"]["phase"], "Terminating");
    assert!(gone["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        api_err(api.get("cases-dr").await.expect_err("refused")).code,
        404
    );
}

/// Ensures PeerAuthentications and ServiceEntries are served like the other Istio kinds:
/// schema checks (422 naming the field), a stale update (409), listing across namespaces,
/// and an older served version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_authentications_and_service_entries() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&emu, dir.path(), ADMIN_TOKEN).await;
    let pp = PostParams::default();
    let pa = peer_auths(&client, "cases-dr");
    let bad = api_err(
        pa.create(&pp, &peer_auth("cases-dr", "default", "strict"))
            .await
            .expect_err("refused"),
    );
    assert_eq!(bad.code, 422);
    assert_eq!(
        bad.message,
        "PeerAuthentication.security.istio.io \"default\" is invalid: spec.mtls.mode: Unsupported value: \"strict\": supported values: \"UNSET\", \"DISABLE\", \"PERMISSIVE\", \"STRICT\""
    );
    let ports_without_selector = obj(json!({"apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication", "metadata": {"name": "p", "namespace": "cases-dr"},
        "spec": {"portLevelMtls": {"8080": {"mode": "DISABLE"}}}}));
    let bad = api_err(
        pa.create(&pp, &ports_without_selector)
            .await
            .expect_err("refused"),
    );
    assert!(
        bad.message
            .ends_with("spec: Invalid value: \"object\": portLevelMtls requires selector"),
        "{}",
        bad.message
    );
    let first = pa
        .create(&pp, &peer_auth("cases-dr", "default", "STRICT"))
        .await
        .expect("create");
    let mut stale = first.clone();
    pa.replace("default", &pp, &peer_auth_rv(&first, "PERMISSIVE"))
        .await
        .expect("update");
    stale.data["spec"]["mtls"]["mode"] = json!("DISABLE");
    let conflict = api_err(
        pa.replace("default", &pp, &stale)
            .await
            .expect_err("refused"),
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    peer_auths(&client, "istio-system")
        .create(&pp, &peer_auth("istio-system", "default", "STRICT"))
        .await
        .expect("create");
    let all: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ar(
            "security.istio.io",
            "PeerAuthentication",
            "peerauthentications",
        ),
    );
    let list = all
        .list(&ListParams::default())
        .await
        .expect("list across namespaces");
    let mut seen: Vec<(String, String)> = list
        .items
        .iter()
        .map(|o| {
            (
                o.metadata.namespace.clone().unwrap_or_default(),
                o.data["spec"]["mtls"]["mode"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("cases-dr".into(), "PERMISSIVE".into()),
            ("istio-system".into(), "STRICT".into())
        ]
    );

    let se: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "ext",
        &ar("networking.istio.io", "ServiceEntry", "serviceentries"),
    );
    let no_hosts = obj(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "records", "namespace": "ext"}, "spec": {"location": "MESH_EXTERNAL"}}),
    );
    let bad = api_err(se.create(&pp, &no_hosts).await.expect_err("refused"));
    assert_eq!(
        bad.message,
        "ServiceEntry.networking.istio.io \"records\" is invalid: spec.hosts: Required value"
    );
    let good = obj(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "records", "namespace": "ext", "labels": {"failoverd.dev/jurisdiction": "ID"}},
        "spec": {"hosts": ["records.example.co.id"], "location": "MESH_EXTERNAL", "resolution": "DNS"}}),
    );
    se.create(&pp, &good).await.expect("create");
    let old: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "ext",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "ServiceEntry"),
            "serviceentries",
        ),
    );
    let got = old.get("records").await.expect("v1beta1 get");
    assert_eq!(
        got.types.expect("types").api_version,
        "networking.istio.io/v1beta1"
    );
}

fn peer_auth_rv(current: &DynamicObject, mode: &str) -> DynamicObject {
    let mut o = current.clone();
    o.data["spec"]["mtls"]["mode"] = json!(mode);
    o
}

/// Ensures the view follows the cluster: each write (a relabel, a PERMISSIVE
/// PeerAuthentication, its removal, a DestinationRule disabling TLS) changes the verdict with
/// the first change the view announces after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_follows_the_cluster_within_one_watch_event() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&emu, dir.path(), ADMIN_TOKEN).await;
    let pp = PostParams::default();
    namespaces(&client)
        .create(&pp, &namespace("cases-dr", None))
        .await
        .expect("ns");
    peer_auths(&client, "istio-system")
        .create(&pp, &peer_auth("istio-system", "default", "STRICT"))
        .await
        .expect("mesh-wide STRICT");
    let mut view = MeshView::kubernetes(client.clone());
    synced(&mut view, Duration::from_secs(20)).await;
    assert_eq!(view.snapshot().error, None);
    assert_eq!(
        verdict(&view).as_deref(),
        Some(
            "residency: jurisdiction unknown (namespace cases-dr has no failoverd.dev/jurisdiction label)"
        )
    );

    // Each step: a real write, then the next change announced must carry it.
    async fn next(view: &mut MeshView) {
        let changed = tokio::time::timeout(EVENT, view.changed())
            .await
            .expect("a change within one watch event");
        assert!(changed, "the source is gone");
    }
    let label = |code: &str| json!({"metadata": {"labels": {"failoverd.dev/jurisdiction": code}}});
    let nss = namespaces(&client);
    nss.patch(
        "cases-dr",
        &PatchParams::default(),
        &Patch::Merge(&label("ID")),
    )
    .await
    .expect("label ID");
    next(&mut view).await;
    assert_eq!(verdict(&view), None);

    let pa = peer_auths(&client, "cases-dr");
    pa.create(&pp, &peer_auth("cases-dr", "default", "PERMISSIVE"))
        .await
        .expect("PERMISSIVE");
    next(&mut view).await;
    assert_eq!(
        verdict(&view).as_deref(),
        Some(
            "policy: namespace cases-dr is not covered by a STRICT PeerAuthentication (namespace-wide cases-dr/default is PERMISSIVE)"
        )
    );

    pa.delete("default", &DeleteParams::default())
        .await
        .expect("delete");
    next(&mut view).await;
    assert_eq!(verdict(&view), None);

    let dr: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "cases-dr",
        &ar("networking.istio.io", "DestinationRule", "destinationrules"),
    );
    dr.create(
        &pp,
        &obj(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "cases", "namespace": "cases-dr"},
        "spec": {"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}),
        ),
    )
    .await
    .expect("DR");
    next(&mut view).await;
    assert_eq!(
        verdict(&view).as_deref(),
        Some(
            "policy: DestinationRule cases-dr/cases disables TLS to cases.cases-dr.svc.cluster.local"
        )
    );

    nss.patch(
        "cases-dr",
        &PatchParams::default(),
        &Patch::Merge(&label("SG")),
    )
    .await
    .expect("label SG");
    next(&mut view).await;
    assert_eq!(
        verdict(&view).as_deref(),
        Some("residency: jurisdiction SG is outside the allowed set [ID]")
    );
    assert_eq!(view.snapshot().error, None);
}

/// Ensures an RBAC denial is reported in the snapshot (not synced, `error` naming the refused
/// kind), nothing panics, and the watch recovers by itself once the grant is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denial_is_an_error_not_a_panic() {
    let emu = Emulator::start().await.expect("emulator");
    emu.seed(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "cases-dr", "labels": {"failoverd.dev/jurisdiction": "ID"}}}))
        .expect("seed");
    let sa = "system:serviceaccount:failoverd:failoverd";
    // The Istio kinds everywhere, but Namespaces only inside one namespace: a list of
    // Namespaces is cluster-scoped, so it is refused.
    let istio_only = vec![
        Rule::new(
            &["get", "list", "watch"],
            &["security.istio.io", "networking.istio.io"],
            &["peerauthentications", "destinationrules", "serviceentries"],
            &["*"],
        ),
        Rule::new(
            &["get", "list", "watch"],
            &[""],
            &["namespaces"],
            &["cases-dr"],
        ),
    ];
    emu.add_token("mesh-token", sa, istio_only);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut view = MeshView::kubernetes(client_for(&emu, dir.path(), "mesh-token").await);
    let start = Instant::now();
    let error = loop {
        if let Some(e) = view.snapshot().error {
            break e;
        }
        assert!(start.elapsed() < EVENT, "no error reported in {EVENT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("namespaces"), "{error}");
    assert!(error.contains("forbidden"), "{error}");
    assert!(!view.snapshot().synced, "synced without Namespaces");
    assert_eq!(
        verdict(&view)
            .as_deref()
            .map(|v| v.starts_with("residency: jurisdiction unknown")),
        Some(true)
    );

    // Granted: the watcher's next retry (backoff) lists Namespaces and the error clears.
    emu.add_token(
        "mesh-token",
        sa,
        vec![Rule::new(&["get", "list", "watch"], &["*"], &["*"], &["*"])],
    );
    // kube-rs's default backoff for a watcher tops out at 30 s between retries.
    synced(&mut view, Duration::from_secs(40)).await;
    let snap = view.snapshot();
    assert_eq!(snap.error, None);
    assert_eq!(
        judge(&snap.view, HOST, None, &Fence::default())
            .jurisdiction
            .as_deref(),
        Some("ID")
    );
}

/// Ensures the view converges after an API server restart that lost the watch history
/// (compaction: resuming is 410, so the watchers list again): a relabel and a deletion made
/// meanwhile are both in the view, and the deleted object is not kept from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_lists_again_after_a_restart_that_lost_the_history() {
    let emu = Emulator::start().await.expect("emulator");
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "cases-dr", "labels": {"failoverd.dev/jurisdiction": "ID"}}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "cases", "namespace": "cases-dr"},
            "spec": {"host": "cases", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}),
    ] {
        emu.seed(o).expect("seed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut view = MeshView::kubernetes(client_for(&emu, dir.path(), ADMIN_TOKEN).await);
    synced(&mut view, Duration::from_secs(20)).await;
    assert_eq!(
        verdict(&view).as_deref(),
        Some(
            "policy: DestinationRule cases-dr/cases disables TLS to cases.cases-dr.svc.cluster.local"
        )
    );

    emu.unavailable_for(Duration::from_secs(2));
    emu.remove("DestinationRule", "cases-dr", "cases")
        .expect("remove");
    emu.mutate("Namespace", "", "cases-dr", |o| {
        o["metadata"]["labels"]["failoverd.dev/jurisdiction"] = json!("SG");
    })
    .expect("relabel");
    emu.compact();

    let policy_only = Fence {
        allowed: None,
        require_strict_mtls: true,
    };
    let converged = |view: &MeshView| {
        let s = view.snapshot();
        let p = judge(&s.view, HOST, None, &policy_only);
        p.jurisdiction.as_deref() == Some("SG") && p.violation.is_none() && s.error.is_none()
    };
    // The watchers back off while the server is away (kube-rs: up to 30 s between tries).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !converged(&view) {
        let changed = tokio::time::timeout_at(deadline, view.changed())
            .await
            .unwrap_or_else(|_| panic!("not converged in 40 s: {:?}", view.snapshot()));
        assert!(changed, "the source is gone");
    }
    assert!(view.snapshot().synced);
    assert!(
        emu.reads()
            .iter()
            .filter(|r| r.verb == "list" && r.kind == "DestinationRule")
            .count()
            >= 2,
        "DestinationRules listed again"
    );
}

/// Ensures the real `kubectl` works with the mesh kinds on the emulator: `apply` of a
/// multi-document manifest (a Namespace is cluster-scoped, the Istio kinds are not), `get`
/// across namespaces, and `label --overwrite`, the operator's relabel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_applies_gets_and_relabels() {
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kc, ADMIN_TOKEN).expect("kubeconfig");
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cases-dr\n  labels:\n    failoverd.dev/jurisdiction: ID\n\
         ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: cases-dr\nspec:\n  mtls:\n    mode: STRICT\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: records\n  namespace: ext\nspec:\n  hosts: [records.example.co.id]\n  location: MESH_EXTERNAL\n  resolution: DNS\n",
    )
    .expect("write");
    // kubectl blocks: run it off the runtime the emulator serves on.
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(chaos_tests_kubectl());
        cmd.arg("--kubeconfig")
            .arg(&kc)
            .args(["--request-timeout", "20s"])
            .args(args);
        tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("kubectl runs");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
    };
    let (ok, out) = run(&["apply", "-f", &file.to_string_lossy()])
        .await
        .expect("join");
    assert!(ok, "apply: {out}");
    for line in [
        "namespace/cases-dr created",
        "peerauthentication.security.istio.io/default created",
        "serviceentry.networking.istio.io/records created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let (ok, out) = run(&["get", "pa", "-A", "-o", "name"]).await.expect("join");
    assert!(ok, "get: {out}");
    assert_eq!(out.trim(), "peerauthentication.security.istio.io/default");
    let (ok, out) = run(&[
        "label",
        "ns",
        "cases-dr",
        "failoverd.dev/jurisdiction=SG",
        "--overwrite",
    ])
    .await
    .expect("join");
    assert!(ok, "label: {out}");
    let ns = emu.get("v1", "Namespace", "", "cases-dr").expect("stored");
    assert_eq!(ns["metadata"]["labels"]["failoverd.dev/jurisdiction"], "SG");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "cases-dr"
    );
    let (ok, out) = run(&["get", "ns", "cases-dr", "-o", "jsonpath={.status.phase}"])
        .await
        .expect("join");
    assert!(ok, "get ns: {out}");
    assert_eq!(out, "Active");
}

/// kubectl, or a failure naming the package: never a skip that checks nothing.
fn chaos_tests_kubectl() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl not found on PATH: install kubernetes-client (scripts/test.sh does)")
}
