//! `failoverd demo`: the whole loop on one machine, in about half a minute.
//!
//! Two stand-in services on loopback play the primary and the DR copy; the daemon runs on the
//! bundled example playbook with a temporary file store; the demo breaks the primary (its
//! listener closes), waits for the failover, heals it, waits for the stepped failback, checks
//! that the original route came back exactly and that the audit chain is whole.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::watch;

use crate::app::ServeOptions;
use crate::audit::{self, AuditLog};
use crate::auth::Tokens;
use crate::config::FenceConfig;
use crate::control::Runtime;
use crate::engine::Routing;
use crate::mesh::MeshView;
use crate::overrides::OverrideStore;
use crate::playbook;
use crate::playbook::Validate;
use crate::routing::{FileStore, RoutingStore};
use crate::shared::Shared;
use crate::standin::StandIn;

/// The example playbook the demo runs (ports are replaced with free ones at start).
pub const PLAYBOOK: &str = include_str!("../../../playbooks/examples/demo.yaml");
/// The VirtualService the demo starts from.
pub const VIRTUAL_SERVICE: &str =
    include_str!("../../../playbooks/examples/demo-virtualservice.yaml");

/// Longest the demo waits for any one stage before it gives up (exit 1).
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, msg: &str) {
        println!("[{:>6.2}s] {msg}", self.start.elapsed().as_secs_f64());
    }
}

async fn wait_for(
    store: &FileStore,
    pb: &playbook::Playbook,
    want: impl Fn(Routing) -> bool,
) -> anyhow::Result<Routing> {
    let deadline = Instant::now() + STAGE_TIMEOUT;
    loop {
        if let Ok(v) = store.read(pb).await
            && want(v.routing)
        {
            return Ok(v.routing);
        }
        if Instant::now() > deadline {
            bail!("timed out after {STAGE_TIMEOUT:?} waiting for the route to change");
        }
        // Poll the file like a GitOps agent or istiod would see it; 10 ms keeps timing honest.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the demo.
pub async fn run() -> anyhow::Result<()> {
    let t = Timeline {
        start: Instant::now(),
    };
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut primary = StandIn::start("primary", loopback)
        .await
        .context("starting the primary stand-in")?;
    let dr = StandIn::start("dr", loopback)
        .await
        .context("starting the DR stand-in")?;
    let text = PLAYBOOK
        .replace("127.0.0.1:18081", &primary.addr().to_string())
        .replace("127.0.0.1:18082", &dr.addr().to_string());
    let mut pb = playbook::parse("playbooks/examples/demo.yaml", &text)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    // Residency on, as in production: only targets the cluster places in Indonesia, under
    // strict mTLS, may take the traffic.
    pb.fenced = true;
    let problems = pb.validate("playbooks/examples/demo.yaml");
    if !problems.is_empty() {
        bail!("{}", playbook::Problems(problems));
    }
    let dir = tempfile::tempdir()?;
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(routes.join("demo"))?;
    let store = FileStore::new(&routes);
    let vs_path = store.path(&pb);
    std::fs::write(&vs_path, VIRTUAL_SERVICE)?;
    std::fs::create_dir_all(routes.join("_cluster"))?;
    std::fs::write(routes.join("_cluster/mesh.yaml"), mesh_facts("ID"))?;
    let original: Value = serde_saphyr::from_str(VIRTUAL_SERVICE)?;
    let audit_path = dir.path().join("audit.jsonl");
    let loaded = vec![playbook::Loaded {
        file: "playbooks/examples/demo.yaml".into(),
        playbook: pb.clone(),
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let listener = tokio::net::TcpListener::bind(loopback).await?;
    let api = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let rt = Runtime {
        playbooks: loaded,
        store: Arc::new(store.clone()),
        audit: Arc::new(Mutex::new(AuditLog::open(&audit_path)?)),
        overrides: OverrideStore::open(&dir.path().join("overrides.json"))?,
        prometheus: None,
        prometheus_client: None,
        fence: FenceConfig {
            allowed: Some(vec!["ID".into()]),
            require_strict_mtls: None,
        },
        mesh: Some(MeshView::file(&routes)),
    };
    // The demo drives no operator calls, so the API runs without tokens (refusing all).
    let daemon = tokio::spawn(crate::app::serve(
        rt,
        shared.clone(),
        Arc::new(Tokens::none()),
        audit_path.clone(),
        listener,
        stop_rx,
        ServeOptions::default(),
    ));

    println!(
        "failoverd demo — playbook `demo`: probes every 1s, failureThreshold 3, failback after 5s in steps [50, 100]"
    );
    println!("  primary stand-in  http://{}/healthz", primary.addr());
    println!("  DR stand-in       http://{}/healthz", dr.addr());
    println!("  VirtualService    {}", vs_path.display());
    println!("  audit log         {}", audit_path.display());
    println!(
        "  cluster facts     {} (residency allowed: [ID])",
        routes.join("_cluster/mesh.yaml").display()
    );
    println!("  daemon            http://{api}/metrics  /readyz");
    t.say("daemon started");
    let deadline = Instant::now() + STAGE_TIMEOUT;
    while !shared.ready.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            bail!("daemon never became ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.say("ready: first probe round in, all healthy, traffic on the primary (subset v1)");
    tokio::time::sleep(Duration::from_secs(2)).await;

    primary.stop();
    let fault = Instant::now();
    t.say("FAULT: the primary's listener is closed");
    let r = wait_for(&store, &pb, |r| r != Routing::Primary).await?;
    let detect = fault.elapsed();
    t.say(&format!(
        "FAILOVER written: {r} ({:.2}s after the fault; budget interval 1s × threshold 3 = 3s)",
        detect.as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    primary
        .restart()
        .await
        .context("restarting the primary stand-in")?;
    let healed = Instant::now();
    t.say("HEAL: the primary listens again");
    let r = wait_for(&store, &pb, |r| matches!(r, Routing::Split { .. })).await?;
    t.say(&format!(
        "FAILBACK step 1 written: {r} ({:.2}s after healing; waits failback.after 5s and minDwell 5s)",
        healed.elapsed().as_secs_f64()
    ));
    wait_for(&store, &pb, |r| r == Routing::Primary).await?;
    t.say(&format!(
        "FAILBACK complete: original route restored ({:.2}s after healing)",
        healed.elapsed().as_secs_f64()
    ));
    let now: Value = serde_saphyr::from_str(&std::fs::read_to_string(&vs_path)?)?;
    if now != original {
        bail!("the VirtualService differs from the original after failback");
    }
    t.say("checked: the VirtualService equals the original exactly (other routes, retries, labels, annotations kept)");

    // The DR copy moves out of the country: failoverd must refuse it, even with the primary down.
    let tmp = routes.join("_cluster/.mesh.yaml.tmp");
    std::fs::write(&tmp, mesh_facts("SG"))?;
    std::fs::rename(&tmp, routes.join("_cluster/mesh.yaml"))?;
    t.say("RESIDENCY: namespace demo-dr relabelled failoverd.dev/jurisdiction=SG");
    primary.stop();
    t.say("FAULT: the primary's listener is closed again");
    let deadline = Instant::now() + STAGE_TIMEOUT;
    let why = loop {
        let explain = shared
            .snapshot()
            .first()
            .map(|s| s.explain.clone())
            .unwrap_or_default();
        if explain.contains("refused by the fence") {
            break explain;
        }
        if Instant::now() > deadline {
            bail!("the fence never refused the DR copy (last: {explain})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let now: Value = serde_saphyr::from_str(&std::fs::read_to_string(&vs_path)?)?;
    if now != original {
        bail!("the VirtualService was written to a target outside the fence");
    }
    t.say(&format!("REFUSED, nothing written: {why}"));

    let _ = stop_tx.send(true);
    daemon.await??;
    drop(dr);
    let v = audit::verify(&audit_path).map_err(|e| anyhow::anyhow!(e))?;
    t.say(&format!("audit chain verified: {} records", v.records));
    for r in audit::read_all(&audit_path)? {
        if r.outcome == "written" {
            println!("    #{:<3} {:<15} {}", r.seq, r.action, r.reason);
        }
    }
    println!(
        "demo passed: failover {:.2}s after the fault, failback restored the route exactly, the fence refused a DR copy outside Indonesia",
        detect.as_secs_f64()
    );
    Ok(())
}

/// The demo's cluster facts (the file store's `_cluster/`): the primary's namespace in
/// Indonesia, the DR copy's namespace in `dr`, strict mTLS mesh-wide.
pub fn mesh_facts(dr: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{ name: demo, labels: {{ failoverd.dev/jurisdiction: ID }} }}
---
apiVersion: v1
kind: Namespace
metadata: {{ name: demo-dr, labels: {{ failoverd.dev/jurisdiction: {dr} }} }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec: {{ mtls: {{ mode: STRICT }} }}
"
    )
}
