#![allow(clippy::unwrap_used)]
//! Fault catalogue on the `kubernetes` routing store: the real `failoverd` binary with
//! `--store kubernetes` against the Kubernetes API server emulator, and the routing proxy
//! following the VirtualService through the emulator's list + watch, as Envoy would after
//! istiod's push. Same probes (300 ms, threshold 3), stand-ins and load (50 requests/s) as
//! `catalogue.rs`; build the binary first (`cargo build -p failoverd`).

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{ADMIN_TOKEN, COMPETING_WRITER, Emulator};
use chaos_tests::proxy::RouteSource;
use chaos_tests::rig::{Rig, actions, count, proxy_following, quick_probes, window};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, Daemon, FAST_FAILBACK, Scenario, wait_for};
use failoverd::engine::Routing;
use serde_json::Value;

const SEC: Duration = Duration::from_secs(1);
const VS_API: &str = "networking.istio.io/v1";

/// Unwraps, panicking with the daemon's logs.
fn ok<T>(rig: &Rig, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", rig.d.logs()))
}

fn vs(emu: &Emulator) -> Value {
    emu.get(VS_API, "VirtualService", "demo", "web").unwrap()
}

/// Primary's listener closes while the route lives in the (emulated) cluster: failoverd writes
/// the failover through the API server once, the proxy sees it through its watch, and users
/// see 503s only until then.
#[tokio::test(flavor = "multi_thread")]
async fn primary_down_on_the_kubernetes_store() {
    let emu = Emulator::start().await.unwrap();
    emu.seed(serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap())
        .unwrap();
    let s = Scenario::new(FAST_FAILBACK).await.unwrap();
    quick_probes(&s, "300ms", "250ms").unwrap();
    let kubeconfig = s.dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let kubeconfig: &Path = &kubeconfig;
    let mut d = Daemon::spawn_store(
        &s.paths,
        "kube-down",
        "kubernetes",
        &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
    )
    .unwrap();
    d.wait_ready(30 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    let proxy = proxy_following(&s, RouteSource::emulator(&emu, "demo", "web"))
        .await
        .unwrap();
    let mut rig = Rig { s, d, proxy };
    let pb = rig.s.playbook.clone();
    let failed_over = Routing::Failover { target: 0 };

    let load = rig.load(50, 40 * SEC);
    tokio::time::sleep(SEC).await;
    let fault = Instant::now();
    rig.s.primary.stop();
    let moved = wait_for("the failover in the emulator", 15 * SEC, || {
        let v = vs(&emu);
        (failoverd::routing::view(&v, &pb).ok()?.routing == failed_over).then_some(v)
    })
    .await;
    let moved = ok(&rig, moved);
    ok(&rig, rig.wait_proxy(DR_HOST, 5 * SEC).await);
    tokio::time::sleep(SEC).await;
    let settled = Instant::now();
    tokio::time::sleep(SEC).await;
    let report = load.stop(4 * SEC).await;
    let (w, failed, summary) = window(&report, fault);
    eprintln!("primary down (kubernetes store): {summary}");

    // The route as stored in the cluster, and as the proxy applied it.
    assert_eq!(
        moved["spec"]["http"][1]["route"][0]["destination"]["host"], DR_HOST,
        "{moved:#}"
    );
    let history = rig.proxy.history();
    let hosts: Vec<Vec<&str>> = history
        .iter()
        .map(|(_, r)| r.iter().map(|d| d.host.as_str()).collect())
        .collect();
    assert_eq!(
        hosts,
        [vec!["web.demo.svc.cluster.local"], vec![DR_HOST]],
        "the proxy started on the primary and moved once"
    );
    assert!(history[1].0 > fault, "the move followed the fault");

    // What users felt.
    assert!(
        failed > 0,
        "the fault reached users before the move: {summary}"
    );
    assert!(w < 8 * SEC, "error window {w:?}: {summary}");
    assert_eq!(report.failed_after(settled), 0, "after the move: {summary}");
    assert!(report.served_ok_by(settled, "dr") > 0, "{summary}");

    // The audit log and the API server's write log agree: one move, written once.
    ok(&rig, rig.verify_audit());
    let records = rig.audit();
    assert_eq!(
        (
            count(&records, "failover", "intent"),
            count(&records, "failover", "written")
        ),
        (1, 1),
        "one failover intent and one written record: {:?}",
        actions(&records)
    );
    let writes: Vec<_> = emu
        .writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.identity != COMPETING_WRITER)
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "exactly one VirtualService write by failoverd: {writes:?}"
    );
    assert!(
        writes[0].status < 300 && matches!(writes[0].verb.as_str(), "update" | "patch"),
        "{writes:?}"
    );
    assert_eq!(
        writes[0].resource_version.as_deref(),
        moved["metadata"]["resourceVersion"].as_str(),
        "the stored route is that write's"
    );
    rig.d.terminate(10 * SEC).unwrap();
}
