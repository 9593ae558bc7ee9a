//! The Kubernetes API server emulator against real clients: kube-rs (the client failoverd's
//! Kubernetes store uses) and the real `kubectl` binary. Every answer checked here is the
//! real API server's (status codes, Status reasons and message formats).

use std::path::Path;
use std::time::Duration;

use chaos_tests::kube_emulator::{ADMIN_TOKEN, COMPETING_WRITER, Emulator, Rule};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Discovery};
use serde_json::{Value, json};

const VS_YAML: &str = include_str!("../../playbooks/examples/demo-virtualservice.yaml");

fn vs_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

fn demo_vs() -> Value {
    serde_saphyr::from_str(VS_YAML).expect("demo VS parses")
}

async fn client_for(emu: &Emulator, dir: &Path, token: &str) -> Client {
    // kube and reqwest share rustls: one process-wide provider (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = dir.join(format!("kubeconfig-{}", token.len()));
    emu.write_kubeconfig(&path, token).expect("kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// An emulator with the demo VirtualService `demo/web` and an admin client.
async fn setup() -> (Emulator, tempfile::TempDir, Client, Api<DynamicObject>) {
    let emu = Emulator::start().await.expect("emulator starts");
    emu.seed(demo_vs()).expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client_for(&emu, dir.path(), ADMIN_TOKEN).await;
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), "demo", &vs_resource());
    (emu, dir, client, api)
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovery_finds_istio_leases_and_events() {
    let (_emu, _dir, client, _) = setup().await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    let discovery = Discovery::new(client).run().await.expect("discovery runs");
    let istio = discovery
        .get("networking.istio.io")
        .expect("istio group discovered");
    assert_eq!(istio.preferred_version(), Some("v1"));
    let versions: Vec<&str> = istio.versions().collect();
    assert_eq!(versions, ["v1", "v1beta1", "v1alpha3"]);
    let (ar, caps) = istio
        .recommended_kind("VirtualService")
        .expect("VirtualService served");
    assert_eq!(ar.plural, "virtualservices");
    assert!(caps.supports_operation("watch") && caps.supports_operation("patch"));
    assert!(discovery.has_group("coordination.k8s.io"));
    assert!(discovery.has_group("events.k8s.io"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_replace_gets_the_real_409() {
    let (emu, _dir, _client, api) = setup().await;
    let mut vs = api.get("web").await.expect("get");
    let rv = vs.metadata.resource_version.clone().expect("rv");
    // Someone else writes in between.
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["metadata"]["labels"]["touched"] = json!("yes");
    })
    .expect("competing write");
    vs.data["spec"]["http"][1]["route"][0]["weight"] = json!(100);
    let err = api_err(
        api.replace("web", &PostParams::default(), &vs)
            .await
            .expect_err("stale resourceVersion"),
    );
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "Conflict");
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on virtualservices.networking.istio.io \"web\": the object \
         has been modified; please apply your changes to the latest version and try again"
    );
    // Re-read, replace: it lands, with a new resourceVersion and generation.
    let mut fresh = api.get("web").await.expect("get");
    assert_ne!(
        fresh.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    fresh.data["spec"]["http"][1]["route"][0]["weight"] = json!(90);
    let put = api
        .replace("web", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(
        put.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );
    // A PUT without resourceVersion is unconditional, like on a real server.
    let mut blind = put.clone();
    blind.metadata.resource_version = None;
    blind.data["spec"]["http"][1]["timeout"] = json!("5s");
    api.replace("web", &PostParams::default(), &blind)
        .await
        .expect("unconditional replace");
    let writes = emu.writes();
    assert!(
        writes
            .iter()
            .any(|w| w.identity == COMPETING_WRITER && w.verb == "update")
    );
    assert!(writes.iter().any(|w| w.verb == "update" && w.status == 409));
    // Not found has the real message too.
    let err = api_err(api.get("nope").await.expect_err("missing"));
    assert_eq!(err.code, 404);
    assert_eq!(
        err.message,
        "virtualservices.networking.istio.io \"nope\" not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_next_get_provokes_a_conflict_between_read_and_write() {
    let (emu, _dir, _client, api) = setup().await;
    emu.after_next_get("VirtualService", "demo", "web", |o| {
        o["spec"]["http"][1]["timeout"] = json!("3s");
    })
    .expect("armed");
    let mut vs = api.get("web").await.expect("get");
    assert_eq!(
        vs.data["spec"]["http"][1]["timeout"], "10s",
        "the read sees the old state"
    );
    vs.data["spec"]["http"][1]["route"][0]["weight"] = json!(100);
    let err = api_err(
        api.replace("web", &PostParams::default(), &vs)
            .await
            .expect_err("conflict"),
    );
    assert_eq!(err.code, 409);
    // One-shot: the next read-modify-write goes through.
    let mut vs = api.get("web").await.expect("get");
    assert_eq!(vs.data["spec"]["http"][1]["timeout"], "3s");
    vs.data["spec"]["http"][1]["route"][0]["weight"] = json!(100);
    api.replace("web", &PostParams::default(), &vs)
        .await
        .expect("replace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_with_test_op_and_merge_patch() {
    let (emu, _dir, _client, api) = setup().await;
    let vs = api.get("web").await.expect("get");
    let rv = vs.metadata.resource_version.clone().expect("rv");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 50},
        {"op": "add", "path": "/spec/http/1/route/-",
         "value": {"destination": {"host": "web.dr.svc.cluster.local"}, "weight": 50}}
    ]))
    .expect("patch");
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(ops.clone()),
        )
        .await
        .expect("json patch");
    assert_eq!(
        patched.data["spec"]["http"][1]["route"][1]["destination"]["host"],
        "web.dr.svc.cluster.local"
    );
    // The same patch again: its test op now fails (the resourceVersion moved on): 422.
    let err = api_err(
        api.patch("web", &PatchParams::default(), &Patch::Json::<()>(ops))
            .await
            .expect_err("test op fails"),
    );
    assert_eq!(err.code, 422);
    assert_eq!(err.reason, "Invalid");
    // Fields the CRD schema does not know are pruned, as on a real server.
    let unknown = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"colour": "red"}})),
        )
        .await
        .expect("merge patch");
    assert!(unknown.data["spec"].get("colour").is_none());
    // A merge patch keeps every field it does not name.
    let merged = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"failoverd.dev/state": "dr"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.metadata.annotations.as_ref().expect("annotations")["owner"],
        "platform-team"
    );
    assert_eq!(
        merged.data["spec"]["http"][1]["route"][1]["weight"], 50,
        "spec untouched"
    );
    // Strategic merge patch on a custom resource: 415 like the real server.
    let err = api_err(
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect_err("415"),
    );
    assert_eq!(err.code, 415);
    let ct: Vec<Option<String>> = emu
        .writes()
        .iter()
        .filter(|w| w.verb == "patch")
        .map(|w| w.content_type.clone())
        .collect();
    assert_eq!(ct[0].as_deref(), Some("application/json-patch+json"));
    assert_eq!(ct[3].as_deref(), Some("application/merge-patch+json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_virtual_services_are_rejected_like_a_cluster_with_istiod() {
    let (_emu, _dir, _client, api) = setup().await;
    // Schema violation: 422 Invalid with causes naming the field.
    let bad_type: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": "heavy"}
    ]))
    .expect("patch");
    let err = api_err(
        api.patch("web", &PatchParams::default(), &Patch::Json::<()>(bad_type))
            .await
            .expect_err("422"),
    );
    assert_eq!(err.code, 422);
    assert_eq!(err.reason, "Invalid");
    assert!(
        err.message.starts_with(
            "VirtualService.networking.istio.io \"web\" is invalid: spec.http[1].route[0].weight"
        ),
        "{}",
        err.message
    );
    // Webhook rule: 400 with istiod's message.
    let negative: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": -3}
    ]))
    .expect("patch");
    let err = api_err(
        api.patch("web", &PatchParams::default(), &Patch::Json::<()>(negative))
            .await
            .expect_err("400"),
    );
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "admission webhook \"validation.istio.io\" denied the request: configuration is invalid: weight -3 < 0"
    );
    // Creating an invalid one is refused too, and nothing is stored.
    let mut vs = demo_vs();
    vs["metadata"]["name"] = json!("web2");
    vs["spec"]["http"][0]["route"][0]["destination"]["host"] = json!("*");
    let obj: DynamicObject = serde_json::from_value(vs).expect("object");
    let err = api_err(
        api.create(&PostParams::default(), &obj)
            .await
            .expect_err("invalid"),
    );
    assert_eq!(err.code, 400);
    assert!(err.message.contains("invalid destination host *"));
    assert!(api.get_opt("web2").await.expect("get").is_none());
    // Deleting answers a Success Status (no ReturnDeletedObject for custom resources).
    let gone = api
        .delete("web", &Default::default())
        .await
        .expect("delete");
    let status = gone.right().expect("a Status, not the object");
    assert_eq!(status.details.expect("details").name, "web");
    let err = api_err(
        api.delete("web", &Default::default())
            .await
            .expect_err("404"),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_403_and_unknown_token_401() {
    let (emu, dir, _client, _) = setup().await;
    let sa = "system:serviceaccount:failoverd:failoverd";
    emu.add_token(
        "reader",
        sa,
        vec![Rule::new(
            &["get", "list", "watch"],
            &["networking.istio.io"],
            &["virtualservices"],
            &["demo"],
        )],
    );
    let client = client_for(&emu, dir.path(), "reader").await;
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), "demo", &vs_resource());
    api.get("web").await.expect("get allowed");
    let err = api_err(
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect_err("patch forbidden"),
    );
    assert_eq!(err.code, 403);
    assert_eq!(err.reason, "Forbidden");
    assert_eq!(
        err.message,
        "virtualservices.networking.istio.io \"web\" is forbidden: User \
         \"system:serviceaccount:failoverd:failoverd\" cannot patch resource \"virtualservices\" \
         in API group \"networking.istio.io\" in the namespace \"demo\""
    );
    let other_ns = Api::<DynamicObject>::namespaced_with(client, "prod", &vs_resource());
    assert_eq!(
        api_err(other_ns.get("web").await.expect_err("403")).code,
        403
    );
    let stranger = client_for(&emu, dir.path(), "not-a-token").await;
    let api = Api::<DynamicObject>::namespaced_with(stranger, "demo", &vs_resource());
    assert_eq!(api_err(api.get("web").await.expect_err("401")).code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_sees_modified_and_410_after_compaction() {
    let (emu, _dir, _client, api) = setup().await;
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.clone().expect("list rv");
    let mut stream = api
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .expect("watch")
        .boxed();
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["spec"]["http"][1]["route"][0]["weight"] = json!(80);
    })
    .expect("write");
    let ev = tokio::time::timeout(Duration::from_secs(15), stream.try_next())
        .await
        .expect("an event within 15 s")
        .expect("stream ok")
        .expect("not ended");
    match ev {
        WatchEvent::Modified(o) => {
            assert_eq!(o.data["spec"]["http"][1]["route"][0]["weight"], 80);
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    drop(stream);
    // kube-rs' watcher (list + watch) keeps up with changes too.
    let mut w =
        kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default()).boxed();
    let mut seen_weight_70 = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut wrote = false;
    while tokio::time::Instant::now() < deadline && !seen_weight_70 {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .expect("watcher event within 5 s")
        else {
            break;
        };
        match ev {
            kube::runtime::watcher::Event::InitDone if !wrote => {
                wrote = true;
                emu.mutate("VirtualService", "demo", "web", |o| {
                    o["spec"]["http"][1]["route"][0]["weight"] = json!(70);
                })
                .expect("write");
            }
            kube::runtime::watcher::Event::Apply(o) => {
                seen_weight_70 = o.data["spec"]["http"][1]["route"][0]["weight"] == 70;
            }
            _ => {}
        }
    }
    assert!(seen_weight_70, "watcher saw the competing write");
    // After a compaction, resuming from the old resourceVersion is 410 Gone.
    emu.compact();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    match stream.try_next().await.expect("ok").expect("an event") {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_failures_drops_and_a_restart() {
    let (emu, _dir, _client, api) = setup().await;
    emu.fail_next(1, 500);
    let err = api_err(api.get("web").await.expect_err("500"));
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    // kube-rs 5 retries 503/429/504 by default (15 times, exponential from 5 ms): two in a
    // row are absorbed by the client.
    emu.fail_next(2, 503);
    api.get("web").await.expect("read after kube-rs' retries");
    api.get("web").await.expect("third read passes");
    emu.fail_next_writes(1, 500);
    api.get("web").await.expect("reads pass");
    let merge = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    let err = api_err(
        api.patch("web", &PatchParams::default(), &merge)
            .await
            .expect_err("500"),
    );
    assert_eq!(err.code, 500);
    let last = emu.writes().pop().expect("the failed write is recorded");
    assert_eq!(
        (last.verb.as_str(), last.status, last.name.as_str()),
        ("patch", 500, "web")
    );
    assert_eq!(last.resource_version, None);
    emu.drop_next(1);
    let e = api.get("web").await.expect_err("connection dropped");
    assert!(!matches!(e, kube::Error::Api(_)), "no HTTP answer: {e:?}");
    api.get("web").await.expect("next request passes");
    // A restart: connections refused for a while, then the same store answers again.
    emu.unavailable_for(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = std::net::TcpStream::connect(emu.addr());
    assert!(refused.is_err(), "connect refused during the restart");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match api.get("web").await {
            Ok(vs) => {
                assert_eq!(vs.metadata.name.as_deref(), Some("web"));
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Up but not ready: 503s for a while; kube-rs' own retries ride it out.
    emu.unready_for(Duration::from_millis(300));
    let t = std::time::Instant::now();
    api.get("web")
        .await
        .expect("read after the not-ready window");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "answered inside the window"
    );
    // Latency is applied to every answer.
    emu.set_latency(Duration::from_millis(200));
    let t = std::time::Instant::now();
    api.get("web").await.expect("slow read");
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_events() {
    let (emu, _dir, client, _) = setup().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "failoverd");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "failoverd-leader", "namespace": "failoverd"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let err = api_err(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .expect_err("exists"),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let mut mine = created.clone();
    mine.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("failoverd-leader", &PostParams::default(), &mine)
        .await
        .expect("take over");
    // The other replica still holds the old resourceVersion: fenced.
    let err = api_err(
        leases
            .replace("failoverd-leader", &PostParams::default(), &created)
            .await
            .expect_err("fenced"),
    );
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"failoverd-leader\": the \
         object has been modified; please apply your changes to the latest version and try again"
    );
    let ev_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
        "events",
    );
    let events = Api::<DynamicObject>::namespaced_with(client, "demo", &ev_ar);
    let ev: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"generateName": "web.", "namespace": "demo"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Failover", "action": "Rewrite",
        "type": "Normal", "reportingController": "failoverd", "reportingInstance": "failoverd-0",
        "regarding": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                      "namespace": "demo", "name": "web"},
        "note": "failed over to dr"
    }))
    .expect("event");
    let made = events
        .create(&PostParams::default(), &ev)
        .await
        .expect("event");
    assert!(made.metadata.name.expect("generated").starts_with("web."));
    let all = emu.events();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["reason"], "Failover");
}

/// Runs kubectl with the emulator's kubeconfig; (success, stdout, stderr).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_apply_get_patch() {
    let has_kubectl = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_kubectl {
        // SAFETY-free check for root: scripts/test.sh installs kubectl when run as root.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        assert!(
            !root,
            "kubectl missing although running as root: run scripts/test.sh"
        );
        eprintln!(
            "SKIPPED real_kubectl_apply_get_patch: no kubectl on PATH (not root, cannot install)"
        );
        return;
    }
    let emu = Emulator::start().await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kc, ADMIN_TOKEN).expect("kubeconfig");
    let file = dir.path().join("vs.yaml");
    std::fs::write(&file, VS_YAML).expect("write");
    let file_s = file.to_string_lossy().into_owned();
    let kc2 = kc.clone();
    // kubectl blocks: run it off the runtime the emulator serves on.
    let run = move |args: Vec<String>| {
        let kc = kc2.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kc, &a)
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ok, out, err) = run(s(&["apply", "-f", &file_s])).await.expect("join");
    assert!(ok, "apply: {out} {err}");
    assert!(
        out.contains("virtualservice.networking.istio.io/web created"),
        "{out}"
    );
    let (ok, out, err) = run(s(&["-n", "demo", "get", "vs", "web", "-o", "yaml"]))
        .await
        .expect("join");
    assert!(ok, "get: {err}");
    assert!(
        out.contains("kind: VirtualService") && out.contains("subset: v1"),
        "{out}"
    );
    let patch = r#"[{"op":"replace","path":"/spec/http/1/route/0/weight","value":60},{"op":"add","path":"/spec/http/1/route/-","value":{"destination":{"host":"web.dr.svc.cluster.local"},"weight":40}}]"#;
    let (ok, out, err) = run(s(&[
        "-n",
        "demo",
        "patch",
        "vs",
        "web",
        "--type=json",
        "-p",
        patch,
    ]))
    .await
    .expect("join");
    assert!(ok, "patch: {out} {err}");
    let (ok, out, err) = run(s(&["-n", "demo", "get", "vs", "-o", "json"]))
        .await
        .expect("join");
    assert!(ok, "get -o json: {err}");
    let list: Value = serde_json::from_str(&out).expect("json");
    let route = &list["items"][0]["spec"]["http"][1]["route"];
    assert_eq!(route[0]["weight"], 60);
    assert_eq!(route[1]["destination"]["host"], "web.dr.svc.cluster.local");
    // Re-applying the file (kubectl's client-side apply: merge patch for custom resources)
    // restores the weights.
    let (ok, out, err) = run(s(&["apply", "-f", &file_s])).await.expect("join");
    assert!(ok, "re-apply: {out} {err}");
    let vs = emu
        .get("networking.istio.io/v1", "VirtualService", "demo", "web")
        .expect("stored");
    assert_eq!(vs["spec"]["http"][1]["route"][0]["weight"], 100);
    // An invalid patch is refused with istiod's message.
    let bad = r#"[{"op":"replace","path":"/spec/http/1/route/0/weight","value":-1}]"#;
    let (ok, _out, err) = run(s(&[
        "-n",
        "demo",
        "patch",
        "vs",
        "web",
        "--type=json",
        "-p",
        bad,
    ]))
    .await
    .expect("join");
    assert!(!ok);
    assert!(
        err.contains("admission webhook \"validation.istio.io\" denied the request"),
        "{err}"
    );
    let writes = emu.writes();
    assert!(writes.iter().any(|w| w.verb == "create" && w.status == 201));
    assert!(writes.iter().any(|w| w.verb == "patch"
        && w.content_type.as_deref() == Some("application/json-patch+json")
        && w.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_seeds_prints_its_url_and_writes_a_kubeconfig() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    let seed = dir.path().join("seed.yaml");
    let mut dr = demo_vs();
    dr["metadata"]["name"] = json!("second");
    std::fs::write(
        &seed,
        format!(
            "{VS_YAML}\n---\n{}",
            serde_json::to_string(&dr).expect("json")
        ),
    )
    .expect("seed file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .arg("--seed")
        .arg(&seed)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("URL printed within 20 s")
        .expect("join")
        .expect("read");
    assert!(line.starts_with("http://127.0.0.1:"), "{line}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kc).expect("kubeconfig written"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = Client::try_from(config).expect("client");
    let api = Api::<DynamicObject>::namespaced_with(client, "demo", &vs_resource());
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(names, ["second", "web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_streaming_list_watcher() {
    let (emu, _dir, _client, api) = setup().await;
    let config = kube::runtime::watcher::Config::default().streaming_lists();
    let mut w = kube::runtime::watcher(api, config).boxed();
    let mut initial = Vec::new();
    let mut done = false;
    // sendInitialEvents: the current objects, then the initial-events-end bookmark.
    for _ in 0..10 {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .expect("event within 10 s")
            .expect("ok")
            .expect("not ended");
        match ev {
            kube::runtime::watcher::Event::InitApply(o) => initial.extend(o.metadata.name),
            kube::runtime::watcher::Event::InitDone => {
                done = true;
                break;
            }
            _ => {}
        }
    }
    assert!(done, "initial events ended");
    assert_eq!(initial, ["web"]);
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["metadata"]["labels"]["seen"] = json!("yes");
    })
    .expect("write");
    let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
        .await
        .expect("event within 10 s")
        .expect("ok")
        .expect("not ended");
    match ev {
        kube::runtime::watcher::Event::Apply(o) => {
            assert_eq!(o.metadata.labels.expect("labels")["seen"], "yes");
        }
        other => panic!("expected Apply, got {other:?}"),
    }
}
