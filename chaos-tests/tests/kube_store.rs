//! The `kubernetes` routing store against the Kubernetes API server emulator
//! (`chaos_tests::kube_emulator`: the real REST protocol, resourceVersion conflicts, Status
//! bodies, RBAC, the Istio schema and webhook rules). In-process store tests first, then the
//! real `failoverd` binary with `--store kubernetes`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chaos_tests::kube_emulator::{ADMIN_TOKEN, COMPETING_WRITER, Emulator, Rule};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, Daemon, Scenario, wait_for};
use failoverd::audit;
use failoverd::engine::Routing;
use failoverd::routing::kube::{KubeOptions, KubeStore};
use failoverd::routing::{RoutingStore, StoreError};
use serde_json::{Value, json};

const VS_API: &str = "networking.istio.io/v1";

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn original() -> Value {
    serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap()
}

/// An emulator holding the demo VirtualService, and a kubeconfig for `token`.
async fn cluster(token: &str) -> (Emulator, tempfile::TempDir, std::path::PathBuf) {
    provider();
    let emu = Emulator::start().await.unwrap();
    emu.seed(original()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, token).unwrap();
    (emu, dir, kubeconfig)
}

async fn store(kubeconfig: &std::path::Path) -> KubeStore {
    KubeStore::connect(KubeOptions {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        ..KubeOptions::default()
    })
    .await
    .unwrap()
}

fn playbook() -> failoverd::playbook::Playbook {
    // The demo playbook's addresses do not matter here: nothing probes.
    failoverd::playbook::parse("demo.yaml", failoverd::demo::PLAYBOOK).unwrap()
}

fn vs(emu: &Emulator) -> Value {
    emu.get(VS_API, "VirtualService", "demo", "web").unwrap()
}

fn primary_route(v: &Value) -> Value {
    v["spec"]["http"][1]["route"].clone()
}

/// Ensures a change made between failoverd's read and its write is not lost: the update is
/// refused with 409, failoverd re-reads, recomputes and writes again, and the object ends with
/// both changes.
#[tokio::test]
async fn competing_writer_between_read_and_write_loses_nothing() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = store(&kubeconfig).await;
    let pb = playbook();
    // Discovery and the first read happen before the race is armed.
    assert_eq!(store.read(&pb).await.unwrap().routing, Routing::Primary);
    emu.after_next_get("VirtualService", "demo", "web", |o| {
        o["metadata"]["labels"]["team"] = json!("gitops");
        o["spec"]["http"][0]["timeout"] = json!("3s");
    })
    .unwrap();
    let out = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    assert!(out.changed);
    let now = vs(&emu);
    assert_eq!(now["metadata"]["labels"]["team"], "gitops", "{now:#}");
    assert_eq!(now["spec"]["http"][0]["timeout"], "3s", "{now:#}");
    assert_eq!(
        primary_route(&now)[0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local"
    );
    let writes = emu.writes();
    let ours: Vec<_> = writes
        .iter()
        .filter(|w| w.kind == "VirtualService" && w.identity != COMPETING_WRITER)
        .collect();
    assert!(
        ours.iter().any(|w| w.status == 409),
        "the first update must have been refused: {ours:?}"
    );
    assert_eq!(
        ours.iter().filter(|w| w.status < 300).count(),
        1,
        "exactly one successful update: {ours:?}"
    );
    assert!(
        writes.iter().any(|w| w.identity == COMPETING_WRITER),
        "the competing write happened"
    );
}

/// Ensures failover, a new store instance (a restarted daemon), then failback restores the
/// original object exactly from the annotation.
#[tokio::test]
async fn failback_after_restart_restores_the_original_route_exactly() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let pb = playbook();
    let before = vs(&emu);
    {
        let first = store(&kubeconfig).await;
        first
            .write(&pb, Routing::Failover { target: 0 }, Default::default())
            .await
            .unwrap();
    }
    let second = store(&kubeconfig).await;
    let view = second.read(&pb).await.unwrap();
    assert_eq!(view.routing, Routing::Failover { target: 0 });
    assert_eq!(view.drift, None);
    second
        .write(&pb, Routing::Primary, Default::default())
        .await
        .unwrap();
    let after = vs(&emu);
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["annotations"],
        before["metadata"]["annotations"]
    );
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
}

/// Ensures a write the same as what is stored sends no update ("no change, no write").
#[tokio::test]
async fn an_unchanged_route_is_not_written() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = store(&kubeconfig).await;
    let pb = playbook();
    let out = store
        .write(&pb, Routing::Primary, Default::default())
        .await
        .unwrap();
    assert!(!out.changed);
    assert!(
        emu.writes()
            .iter()
            .all(|w| w.verb == "create" && w.identity != "admin"),
        "{:?}",
        emu.writes()
    );
}

/// Ensures 5xx answers are retried inside the budget and the write lands.
#[tokio::test]
async fn server_errors_are_retried_within_the_budget() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = store(&kubeconfig).await;
    let pb = playbook();
    store.read(&pb).await.unwrap();
    emu.fail_next_writes(2, 503);
    store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    let updates: Vec<u16> = emu
        .writes()
        .iter()
        .filter(|w| w.verb == "update")
        .map(|w| w.status)
        .collect();
    assert_eq!(updates, vec![503, 503, 200], "{updates:?}");
    assert_eq!(
        primary_route(&vs(&emu))[0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local"
    );
}

/// Ensures a 422 is reported with the server's message and never retried.
#[tokio::test]
async fn an_invalid_answer_is_not_retried() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = store(&kubeconfig).await;
    let pb = playbook();
    store.read(&pb).await.unwrap();
    emu.fail_next_writes(1, 422);
    let err = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let updates = emu.writes().iter().filter(|w| w.verb == "update").count();
    assert_eq!(updates, 1, "sent once, not retried");
    assert_eq!(primary_route(&vs(&emu)), primary_route(&original()));
}

/// Ensures a token without the update rule gets a Forbidden error naming the verb, the
/// resource and the namespace, and nothing is written.
#[tokio::test]
async fn forbidden_names_the_missing_rule() {
    let (emu, _dir, kubeconfig) = cluster("read-only").await;
    emu.add_token(
        "read-only",
        "system:serviceaccount:failoverd:failoverd",
        vec![Rule::new(
            &["get", "list", "watch"],
            &["networking.istio.io"],
            &["virtualservices"],
            &["*"],
        )],
    );
    let store = store(&kubeconfig).await;
    let pb = playbook();
    assert_eq!(store.read(&pb).await.unwrap().routing, Routing::Primary);
    let err = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err:?}");
    for needle in ["update", "virtualservices", "demo", "forbidden"] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
    assert_eq!(primary_route(&vs(&emu)), primary_route(&original()));
}

/// Ensures a missing VirtualService is a NotFound error (a playbook error), not a crash.
#[tokio::test]
async fn a_missing_virtual_service_is_not_found() {
    provider();
    let emu = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let store = store(&kubeconfig).await;
    let err = store.read(&playbook()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// Ensures a bulk read (start, takeover) answers a namespace's playbooks from one LIST, and
/// falls back to single reads for the rest: with a token that may list VirtualServices but
/// not get them, the existing object is read and the missing one reports the forbidden GET;
/// with a token that may get but not list, every object is still read one by one.
#[tokio::test]
async fn read_all_lists_each_namespace_once() {
    let (emu, _dir, kubeconfig) = cluster("lister").await;
    let sa = "system:serviceaccount:failoverd:failoverd";
    let only = |verb: &str| {
        vec![Rule::new(
            &[verb],
            &["networking.istio.io"],
            &["virtualservices"],
            &["*"],
        )]
    };
    emu.add_token("lister", sa, only("list"));
    let mut absent = playbook();
    absent.spec.virtual_service.name = "absent".into();
    let pbs = vec![std::sync::Arc::new(playbook()), std::sync::Arc::new(absent)];
    let got = store(&kubeconfig).await.read_all(&pbs).await;
    assert_eq!(got[0].as_ref().unwrap().routing, Routing::Primary);
    assert!(
        matches!(&got[1], Err(StoreError::Forbidden { .. })),
        "the missing object is read on its own (and its GET is forbidden): {:?}",
        got[1]
    );
    let getter = _dir.path().join("getter");
    emu.write_kubeconfig(&getter, "getter").unwrap();
    emu.add_token("getter", sa, only("get"));
    let got = store(&getter).await.read_all(&pbs[..1]).await;
    assert_eq!(got[0].as_ref().unwrap().routing, Routing::Primary);
}

/// Ensures every move publishes a Kubernetes Event on the VirtualService.
#[tokio::test]
async fn each_move_publishes_an_event() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = store(&kubeconfig).await;
    let pb = playbook();
    store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    let event = wait_for(
        "an Event on the VirtualService",
        Duration::from_secs(10),
        || {
            emu.events().into_iter().find(|e| {
                let regarding = e.get("regarding").or_else(|| e.get("involvedObject"));
                regarding.is_some_and(|r| r["kind"] == "VirtualService" && r["name"] == "web")
                    && e["reason"] == "RouteChanged"
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(event["type"], "Normal", "{event:#}");
}

async fn kube_daemon(
    sc: &Scenario,
    kubeconfig: &std::path::Path,
    name: &str,
) -> anyhow::Result<Daemon> {
    Daemon::spawn_store(
        &sc.paths,
        name,
        "kubernetes",
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
    )
}

async fn wait_vs_routing(
    emu: &Emulator,
    pb: &failoverd::playbook::Playbook,
    want: Routing,
    timeout: Duration,
) -> anyhow::Result<Value> {
    wait_for(&format!("routing {want}"), timeout, || {
        let v = vs(emu);
        (failoverd::routing::view(&v, pb).ok()?.routing == want).then_some(v)
    })
    .await
}

/// Ensures the API server being down for 10 s in the middle of a failover only delays it:
/// the route is written once the server is back, and the audit log says what happened.
#[tokio::test]
async fn api_server_down_for_10s_during_a_failover() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    // Fast probes: the failover is decided within about a second of the outage's start, so
    // the first write's 8 s budget runs out while the server is still down (with the demo's
    // 1 s x 3 probes a late decision could land the first write inside its own budget).
    let fast: &[(&str, &str)] = &[
        ("interval: 1s # one attempt per second", "interval: 250ms"),
        (
            "timeout: 500ms # an attempt without an answer after 500 ms is a failure",
            "timeout: 200ms",
        ),
        ("interval: 1s\n", "interval: 250ms\n"),
        ("timeout: 500ms\n", "timeout: 200ms\n"),
        ("failureThreshold: 3", "failureThreshold: 2"),
    ];
    let mut sc = Scenario::new(fast).await.unwrap();
    let mut d = kube_daemon(&sc, &kubeconfig, "unavailable").await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    emu.unavailable_for(Duration::from_secs(10));
    let outage = std::time::Instant::now();
    sc.primary.stop();
    let written = wait_vs_routing(
        &emu,
        &sc.playbook,
        Routing::Failover { target: 0 },
        Duration::from_secs(60),
    )
    .await;
    let logs = d.logs();
    let v = written.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    assert!(
        outage.elapsed() >= Duration::from_secs(9),
        "written while the API server was down?"
    );
    assert_eq!(
        primary_route(&v)[0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local"
    );
    sc.wait_audit(
        "a `written` record",
        |r| r.action == "failover" && r.outcome == "written",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let records = sc.audit();
    let failed = records
        .iter()
        .filter(|r| r.action == "failover" && r.outcome.starts_with("failed"))
        .count();
    assert!(failed >= 1, "the failed attempts are audited: {records:#?}");
    let written = records
        .iter()
        .filter(|r| r.action == "failover" && r.outcome == "written")
        .count();
    assert_eq!(written, 1, "one failover written");
    assert!(audit::verify(&sc.paths.audit).is_ok());
    d.terminate(Duration::from_secs(10)).unwrap();
}

/// Ensures a GitOps-style revert of the route while failed over is seen through the watch,
/// audited as drift and reasserted (`onDrift: reassert`, the default).
#[tokio::test]
async fn drift_while_failed_over_is_reasserted() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let mut d = kube_daemon(&sc, &kubeconfig, "drift").await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    sc.primary.stop();
    let failed_over = Routing::Failover { target: 0 };
    wait_vs_routing(&emu, &sc.playbook, failed_over, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // The move is complete (written, read back, audited) before anyone else touches it.
    sc.wait_audit(
        "the failover audited",
        |r| r.action == "failover" && r.outcome == "written",
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    // A sync puts the original route back but leaves failoverd's annotations.
    let original_route = primary_route(&original());
    emu.mutate("VirtualService", "demo", "web", move |o| {
        o["spec"]["http"][1]["route"] = original_route;
    })
    .unwrap();
    sc.wait_audit(
        "the drift audited",
        |r| r.action == "drift",
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    wait_for("the route reasserted", Duration::from_secs(15), || {
        let v = vs(&emu);
        (primary_route(&v)[0]["destination"]["host"] == "web.demo-dr.svc.cluster.local")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // The route is back before the writer's `written` record follows it.
    sc.wait_audit(
        "the reassert audited",
        |r| r.action == "reassert" && r.outcome == "written",
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    d.terminate(Duration::from_secs(10)).unwrap();
}

/// Ensures `onDrift: respect` leaves a changed route alone and freezes the playbook.
#[tokio::test]
async fn drift_is_respected_when_the_playbook_says_so() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let mut sc = Scenario::new(&[("onMissing: hold", "onMissing: hold\n  onDrift: respect")])
        .await
        .unwrap();
    let mut d = kube_daemon(&sc, &kubeconfig, "respect").await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    sc.primary.stop();
    sc.wait_audit(
        "the failover audited",
        |r| r.action == "failover" && r.outcome == "written",
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // Someone sends 20 % back to the primary by hand.
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["spec"]["http"][1]["route"] = json!([
            { "destination": { "host": "web.demo.svc.cluster.local", "subset": "v1" }, "weight": 20 },
            { "destination": { "host": "web.demo-dr.svc.cluster.local" }, "weight": 80 },
        ]);
    })
    .unwrap();
    let hand = primary_route(&vs(&emu));
    sc.wait_audit(
        "the playbook frozen",
        |r| r.action == "override-freeze" && r.actor == "failoverd",
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // Left alone: give the checker and the controller time to (not) act.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(primary_route(&vs(&emu)), hand);
    let records = sc.audit();
    assert!(records.iter().any(|r| r.action == "drift"));
    assert!(!records.iter().any(|r| r.action == "reassert"));
    d.terminate(Duration::from_secs(10)).unwrap();
}

/// Ensures a missing RBAC rule shows in `/readyz` as a degraded playbook naming the verb,
/// while the daemon stays ready.
#[tokio::test]
async fn missing_update_permission_degrades_the_playbook_in_readyz() {
    let (emu, _dir, kubeconfig) = cluster("read-only").await;
    emu.add_token(
        "read-only",
        "system:serviceaccount:failoverd:failoverd",
        vec![
            Rule::new(
                &["get", "list", "watch"],
                &["networking.istio.io"],
                &["virtualservices"],
                &["*"],
            ),
            Rule::new(
                &["create", "patch"],
                &["events.k8s.io", ""],
                &["events"],
                &["*"],
            ),
        ],
    );
    let mut sc = Scenario::new(&[]).await.unwrap();
    let mut d = kube_daemon(&sc, &kubeconfig, "forbidden").await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    sc.primary.stop();
    let body = {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = d.get("/readyz").await.unwrap();
            assert_eq!(code, 200, "degraded, still ready: {body}");
            if body.contains("\"degraded\"") {
                break body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never degraded: {last}\n{}",
                d.logs()
            );
            last = body;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    for needle in ["update", "virtualservices", "demo"] {
        assert!(
            body.contains(needle),
            "`{needle}` missing from /readyz: {body}"
        );
    }
    assert_eq!(primary_route(&vs(&emu)), primary_route(&original()));
    d.terminate(Duration::from_secs(10)).unwrap();
}

/// Ensures an update that the API server commits but answers only after the client gave up
/// on it (4 s late, past the 3 s request timeout) is recorded as `written` — not `failed`
/// and then `unchanged` — with its RouteChanged Event, and is not sent a second time.
#[tokio::test]
async fn an_update_answered_too_late_is_recorded_as_written() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let mut d = kube_daemon(&sc, &kubeconfig, "late-answer").await.unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    emu.answer_writes_late_to("web", Duration::from_secs(4));
    sc.primary.stop();
    let record = sc
        .wait_audit(
            "the failover's outcome",
            |r| r.action == "failover" && r.outcome != "intent",
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(record.outcome, "written", "{record:#?}\n{}", d.logs());
    let v = vs(&emu);
    assert_eq!(
        primary_route(&v)[0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local",
        "the audit agrees with the object"
    );
    assert_eq!(
        primary_route(&v),
        record.after,
        "the record's route is the object's"
    );
    let updates = emu
        .writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.name == "web" && w.verb == "update")
        .count();
    assert_eq!(updates, 1, "one update, no second write");
    wait_for("a RouteChanged Event", Duration::from_secs(10), || {
        emu.events()
            .into_iter()
            .find(|e| e["reason"] == "RouteChanged")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // Nothing after it says otherwise.
    let records = sc.audit();
    assert!(
        records
            .iter()
            .all(|r| r.action != "failover" || matches!(r.outcome.as_str(), "intent" | "written")),
        "{records:#?}"
    );
    assert!(audit::verify(&sc.paths.audit).is_ok());
    d.terminate(Duration::from_secs(10)).unwrap();
}

/// Ensures reads never take a write's rate-limit token: with the buckets at 1 request/s
/// and bursts of 4, discovery and three reads empty a shared bucket, and the write (read and
/// update: two requests) would then wait two seconds for tokens; with its own bucket it goes
/// through at once.
#[tokio::test]
async fn reads_never_delay_a_write() {
    let (emu, _dir, kubeconfig) = cluster(ADMIN_TOKEN).await;
    let store = KubeStore::connect(KubeOptions {
        kubeconfig: Some(kubeconfig.clone()),
        qps: 1,
        burst: 4,
        ..KubeOptions::default()
    })
    .await
    .unwrap();
    let pb = playbook();
    // Discovery (one write token) with the first read, then the read burst is used up.
    for _ in 0..3 {
        store.read(&pb).await.unwrap();
    }
    let started = std::time::Instant::now();
    let out = store
        .write(&pb, Routing::Failover { target: 0 }, Default::default())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(out.changed);
    assert!(
        took < Duration::from_secs(1),
        "the write waited {took:?}: behind the reads' tokens?"
    );
    assert_eq!(
        primary_route(&vs(&emu))[0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local"
    );
}
