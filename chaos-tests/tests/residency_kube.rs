#![allow(clippy::unwrap_used)]
//! Residency and mesh policy end to end on the `kubernetes` store: the real binary with
//! `--store kubernetes` against the API server emulator, holding only the RBAC that
//! `deploy/base` grants its ServiceAccount, and the cluster's facts as real objects in the
//! emulator (Namespaces, PeerAuthentications), edited while it runs. The same story as
//! `residency.rs` (the file store); build the binary first (`cargo build -p failoverd`).
//!
//! What must hold: a target the fence refuses is never written to the VirtualService,
//! automatically or by force; a relabel of the DR namespace (one watch event) lets failover
//! happen; a PERMISSIVE PeerAuthentication in the DR namespace is refused again; one admin
//! alone never moves traffic past the fence, two do and the route is marked.

use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{COMPETING_WRITER, Emulator, WriteRecord};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, Daemon, FAST_FAILBACK, Scenario};
use failoverd::engine::Routing;
use serde_json::{Value, json};

mod support;

use support::oncall::{self, ADMIN_B, OPERATOR};

const WAIT: Duration = Duration::from_secs(30);
const VS_API: &str = "networking.istio.io/v1";
const SA: &str = "system:serviceaccount:failoverd:failoverd";
const SA_TOKEN: &str = "residency-kube-sa-token";

fn namespace(name: &str, jurisdiction: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"failoverd.dev/jurisdiction": jurisdiction}}})
}

fn peer_auth(ns: &str, mode: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns}, "spec": {"mtls": {"mode": mode}}})
}

struct Rig {
    s: Scenario,
    d: Daemon,
    emu: Emulator,
}

impl Rig {
    /// The emulator holding the demo VirtualService, `demo` (ID), `demo-dr` (SG) and a
    /// mesh-wide STRICT PeerAuthentication; the daemon as the ServiceAccount, allowed ID.
    async fn start() -> Rig {
        let emu = Emulator::start().await.unwrap();
        emu.seed(serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap())
            .unwrap();
        emu.seed(namespace("demo", "ID")).unwrap();
        emu.seed(namespace("demo-dr", "SG")).unwrap();
        emu.seed(peer_auth("istio-system", "STRICT")).unwrap();
        // Bound in `demo` as the example overlay binds the routing ClusterRole.
        emu.add_token(SA_TOKEN, SA, support::deploy::base_rules("demo"));
        let s = Scenario::new(FAST_FAILBACK).await.unwrap();
        let kubeconfig = s.dir.path().join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig, SA_TOKEN).unwrap();
        let tokens = s.dir.path().join("tokens.yaml");
        support::oncall::write_tokens(&tokens);
        let kubeconfig: &Path = &kubeconfig;
        let mut d = Daemon::spawn_store(
            &s.paths,
            "residency-kube",
            "kubernetes",
            &[
                "--kubeconfig".as_ref(),
                kubeconfig.as_os_str(),
                "--tokens".as_ref(),
                tokens.as_os_str(),
                "--residency-allowed".as_ref(),
                "ID".as_ref(),
            ],
        )
        .unwrap();
        d.wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        Rig { s, d, emu }
    }

    fn vs(&self) -> Value {
        self.emu
            .get(VS_API, "VirtualService", "demo", "web")
            .unwrap()
    }

    fn routing(&self) -> Option<Routing> {
        Some(
            failoverd::routing::view(&self.vs(), &self.s.playbook)
                .ok()?
                .routing,
        )
    }

    /// Waits until the emulator's VirtualService carries `want`.
    async fn wait_routing(&self, want: Routing) -> Value {
        let start = Instant::now();
        loop {
            if self.routing() == Some(want) {
                return self.vs();
            }
            assert!(
                start.elapsed() < WAIT,
                "routing {:?}, not {want}, after {WAIT:?}\n{}",
                self.routing(),
                self.d.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// failoverd's writes to the VirtualService (not the test's own edits).
    fn vs_writes(&self) -> Vec<WriteRecord> {
        self.emu
            .writes()
            .into_iter()
            .filter(|w| w.kind == "VirtualService" && w.identity != COMPETING_WRITER)
            .collect()
    }
}

/// Ensures the whole story on the kubernetes store, with the deploy/ RBAC only: refused
/// while `demo-dr` is labelled SG (no VirtualService write, `stuck` naming the rule, force
/// refused with a 409), failover after the relabel to ID, refused again once `demo-dr` has a
/// PERMISSIVE PeerAuthentication, one admin's break-glass never moving traffic and two
/// admins' moving it with the route marked; nothing failoverd asked was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_on_the_kubernetes_store() {
    let mut r = Rig::start().await;
    let untouched = r.vs();
    assert_eq!(r.routing(), Some(Routing::Primary), "{untouched:#}");
    r.s.primary.stop();
    // Three failed probes (1 s apart) and the primary is down: the DR copy is in SG.
    let stuck = oncall::explained(&r.d, "refused by the fence", WAIT).await;
    assert!(
        stuck.contains("residency: jurisdiction SG is outside the allowed set"),
        "{stuck}"
    );
    let (code, out) = oncall::cli(
        &r.d,
        OPERATOR.1,
        &[
            "failover", "demo", "--reason", "INC-1", "--target", "0", "--force",
        ],
    )
    .await;
    assert_eq!(code, 1, "refused (409): {out}");
    assert!(
        out.contains("409") && out.contains("residency: jurisdiction SG"),
        "{out}"
    );
    let written = r.vs_writes();
    assert!(
        written.is_empty(),
        "a fenced target was written: {written:?}"
    );
    assert_eq!(
        r.vs()["metadata"]["resourceVersion"],
        untouched["metadata"]["resourceVersion"],
        "the VirtualService changed"
    );
    assert!(
        r.d.logs().contains("refused by the fence"),
        "no stuck alert naming the fence"
    );

    // `demo-dr` relabelled ID in the cluster: one watch event, and failover.
    let relabelled = Instant::now();
    r.emu
        .mutate("Namespace", "", "demo-dr", |ns| {
            ns["metadata"]["labels"]["failoverd.dev/jurisdiction"] = json!("ID");
        })
        .unwrap();
    let moved = r.wait_routing(Routing::Failover { target: 0 }).await;
    eprintln!(
        "relabel to route written: {:?} (one watch event)",
        relabelled.elapsed()
    );
    assert_eq!(
        moved["spec"]["http"][1]["route"][0]["destination"]["host"], DR_HOST,
        "{moved:#}"
    );
    let rec =
        r.s.wait_audit(
            "the failover's record",
            |x| x.action == "failover" && !x.inputs["signals"]["observations"].is_null(),
            WAIT,
        )
        .await
        .unwrap();
    let seen = rec.inputs["signals"]["observations"].to_string();
    assert!(
        seen.contains("jurisdiction ID"),
        "the record shows the verdicts: {seen}"
    );

    // Back to the primary, then `demo-dr` gets a PERMISSIVE PeerAuthentication: refused.
    r.s.primary.restart().await.unwrap();
    r.wait_routing(Routing::Primary).await;
    r.emu.seed(peer_auth("demo-dr", "PERMISSIVE")).unwrap();
    oncall::explained(&r.d, "PERMISSIVE", WAIT).await;
    let back = r.vs();
    let writes = r.vs_writes().len();
    r.s.primary.stop();
    oncall::explained(&r.d, "primary unhealthy", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (r.vs_writes().len(), &r.vs()["metadata"]["resourceVersion"]),
        (writes, &back["metadata"]["resourceVersion"]),
        "routed to a PERMISSIVE namespace"
    );

    // One admin alone: a request and a self-approval move nothing.
    let id = oncall::ask_and_self_approve(&r.d).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        r.vs_writes().len(),
        writes,
        "one admin moved traffic past the fence"
    );
    // A second admin: the move, marked, in the cluster.
    let (code, out) = oncall::cli(&r.d, ADMIN_B.1, &["approve", &id, "--reason", "agreed"]).await;
    assert_eq!(code, 0, "{out}");
    let start = Instant::now();
    let vs = loop {
        let vs = r.vs();
        if vs["metadata"]["annotations"]["failoverd.dev/break-glass"] == id.as_str() {
            break vs;
        }
        assert!(
            start.elapsed() < WAIT,
            "no break-glass routing in the cluster: {vs:#}\n{}",
            r.d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        vs["spec"]["http"][1]["route"][0]["destination"]["host"], DR_HOST,
        "{vs:#}"
    );

    // The ServiceAccount's RBAC from deploy/ was enough: nothing refused.
    let refused: Vec<String> = r
        .emu
        .writes()
        .iter()
        .filter(|w| w.identity == SA && matches!(w.status, 401 | 403))
        .map(|w| format!("{} {} {}/{}", w.verb, w.kind, w.namespace, w.name))
        .collect();
    assert_eq!(refused, Vec::<String>::new(), "refused writes");
    let logs = r.d.logs();
    let forbidden: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "failoverd was refused by the API server:\n{}",
        forbidden.join("\n")
    );
    r.d.terminate(WAIT).unwrap();
    chaos_tests::assert_audit_verifies(&r.s.paths.audit);
}
