#![allow(clippy::unwrap_used)]
//! Residency and mesh policy end to end, with the real binary on the file store: the
//! cluster's facts in `<store>/_cluster/`, edited while it runs, and the real stand-ins.
//!
//! What must hold: a target the fence refuses is never written, automatically or by
//! force; a relabel lets failover happen within one round; a namespace turned PERMISSIVE is
//! refused again; one admin alone never moves traffic past the fence.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, FAST_FAILBACK, Scenario, wait_for};
use failoverd::engine::Routing;

mod support;

use support::oncall::{self, ADMIN_B, OPERATOR};

const WAIT: Duration = Duration::from_secs(30);

/// The cluster as the file store reads it: the demo's facts (namespace `demo` in ID,
/// `demo-dr` in `dr`, STRICT mTLS mesh-wide) and `extra` documents.
fn cluster(dr: &str, extra: &str) -> String {
    format!("{}{extra}", failoverd::demo::mesh_facts(dr))
}

const DR_PERMISSIVE: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: demo-dr }
spec: { mtls: { mode: PERMISSIVE } }
";

struct Rig {
    s: Scenario,
    d: Daemon,
}

impl Rig {
    async fn start(facts: &str) -> Rig {
        let s = Scenario::new(FAST_FAILBACK).await.unwrap();
        let dir = s.paths.store.join("_cluster");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mesh.yaml"), facts).unwrap();
        let tokens = s.dir.path().join("tokens.yaml");
        support::oncall::write_tokens(&tokens);
        let mut d = Daemon::spawn_with(
            &s.paths,
            "residency",
            &[
                std::ffi::OsStr::new("--tokens"),
                tokens.as_os_str(),
                std::ffi::OsStr::new("--residency-allowed"),
                std::ffi::OsStr::new("ID"),
            ],
        )
        .unwrap();
        d.wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        Rig { s, d }
    }

    fn facts(&self, text: &str) {
        // Replaced atomically, as a config-management tool would.
        let dir = self.s.paths.store.join("_cluster");
        std::fs::write(dir.join(".mesh.tmp"), text).unwrap();
        std::fs::rename(dir.join(".mesh.tmp"), dir.join("mesh.yaml")).unwrap();
    }
}

/// Ensures the whole story on the file store: refused while the DR copy is in SG (no
/// write, `stuck` naming the rule, force refused), failover within one round of the
/// relabel, refused again once the DR namespace turns PERMISSIVE, and one admin's
/// break-glass never moving traffic while two admins' does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_on_the_file_store() {
    let mut r = Rig::start(&cluster("SG", "")).await;
    let untouched = r.s.vs_bytes().unwrap();
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
    assert_eq!(
        r.s.vs_bytes().unwrap(),
        untouched,
        "a fenced target was written"
    );
    assert!(
        r.d.logs().contains("refused by the fence"),
        "no stuck alert naming the fence"
    );

    // The DR copy's namespace is relabelled ID: the next round fails over.
    let relabelled = Instant::now();
    r.facts(&cluster("ID", ""));
    r.s.wait_routing(|x| x == Routing::Failover { target: 0 }, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.d.logs()));
    eprintln!(
        "relabel to route written: {:?} (file store polled every 1 s)",
        relabelled.elapsed()
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

    // Back to the primary, then the DR namespace turns PERMISSIVE: refused again.
    r.s.primary.restart().await.unwrap();
    r.s.wait_routing(|x| x == Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.d.logs()));
    r.facts(&cluster("ID", DR_PERMISSIVE));
    oncall::explained(&r.d, "PERMISSIVE", WAIT).await;
    let back = r.s.vs_bytes().unwrap();
    r.s.primary.stop();
    oncall::explained(&r.d, "primary unhealthy", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        r.s.vs_bytes().unwrap(),
        back,
        "routed to a PERMISSIVE namespace"
    );

    // One admin alone: a request and a self-approval move nothing.
    let id = oncall::ask_and_self_approve(&r.d).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        r.s.vs_bytes().unwrap(),
        back,
        "one admin moved traffic past the fence"
    );
    // A second admin: the move, marked.
    let (code, out) = oncall::cli(&r.d, ADMIN_B.1, &["approve", &id, "--reason", "agreed"]).await;
    assert_eq!(code, 0, "{out}");
    let vs = wait_for("the break-glass routing", WAIT, || {
        let vs = r.s.read_vs().ok()?;
        (vs["metadata"]["annotations"]["failoverd.dev/break-glass"] == id.as_str()).then_some(vs)
    })
    .await
    .unwrap();
    assert!(
        vs.to_string().contains("web.demo-dr.svc.cluster.local"),
        "{vs}"
    );
    r.d.terminate(WAIT).unwrap();
    chaos_tests::assert_audit_verifies(&r.s.paths.audit);
}
