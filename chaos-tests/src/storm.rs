//! A failover storm through the real daemon: `n` playbooks, each with its own VirtualService
//! (`bench/web-NNNN`) on the Kubernetes API server emulator, all probing one primary
//! stand-in and one DR stand-in. Stopping the primary stand-in fails every primary at once.
//!
//! Used by `tests/writer.rs` (the must-hold bounds) and `benches/storm.rs` (the numbers).
//! The routes are observed in the emulator itself (what the API server holds), never
//! through the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use failoverd::engine::Routing;
use failoverd::playbook::Playbook;
use serde_json::{Value, json};

use crate::kube_emulator::{ADMIN_TOKEN, Emulator};
use crate::{Daemon, DaemonPaths, StandIn};

/// The VirtualServices' API version in the emulator.
pub const VS_API: &str = "networking.istio.io/v1";
/// The namespace every storm VirtualService lives in.
pub const NAMESPACE: &str = "bench";

/// Probe timing of every playbook in a storm.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Probe interval.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Failed results in a row before the primary is unhealthy.
    pub threshold: u32,
}

impl Timing {
    /// Fast probes for tests: 250 ms × 2, 200 ms timeout.
    pub const FAST: Timing = Timing {
        interval: Duration::from_millis(250),
        timeout: Duration::from_millis(200),
        threshold: 2,
    };

    /// `interval × threshold`: the detection time the bounds start from.
    pub fn detection(&self) -> Duration {
        self.interval * self.threshold
    }
}

/// The storm's parts; everything stops when it is dropped.
#[derive(Debug)]
pub struct Storm {
    /// The temporary directory (playbooks, audit log, kubeconfig, logs).
    pub dir: tempfile::TempDir,
    /// Daemon paths inside `dir` (`store` unused: the store is the emulator).
    pub paths: DaemonPaths,
    /// The kubeconfig pointing at the emulator (admin token).
    pub kubeconfig: PathBuf,
    /// The API server emulator holding the VirtualServices.
    pub emu: Emulator,
    /// The primary stand-in every playbook probes.
    pub primary: StandIn,
    /// The DR stand-in every playbook probes (`failover[0]`).
    pub dr: StandIn,
    /// The playbooks, `pb-NNNN` for VirtualService `web-NNNN`, in order.
    pub playbooks: Vec<Playbook>,
}

/// The name of storm playbook `i`'s VirtualService.
pub fn object_name(i: usize) -> String {
    format!("web-{i:04}")
}

fn playbook_text(i: usize, primary: SocketAddr, dr: SocketAddr, t: Timing) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let (iv, to, th) = (ms(t.interval), ms(t.timeout), t.threshold);
    format!(
        "apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: {{ name: pb-{i:04} }}
spec:
  virtualService: {{ namespace: {NAMESPACE}, name: web-{i:04} }}
  route: primary
  primary: {{ host: web-{i:04}.bench.svc.cluster.local }}
  failover:
    - {{ host: web-{i:04}.bench-dr.svc.cluster.local }}
  probes:
    - {{ name: primary-health, target: primary, http: {{ url: \"http://{primary}/healthz\" }}, interval: {iv}, timeout: {to} }}
    - {{ name: dr-health, target: \"failover[0]\", http: {{ url: \"http://{dr}/healthz\" }}, interval: {iv}, timeout: {to} }}
  trigger:
    failureThreshold: {th}
  failback:
    mode: manual
"
    )
}

fn virtual_service(i: usize) -> Value {
    let host = format!("web-{i:04}.bench.svc.cluster.local");
    json!({
        "apiVersion": VS_API,
        "kind": "VirtualService",
        "metadata": { "name": object_name(i), "namespace": NAMESPACE },
        "spec": {
            "hosts": [host],
            "http": [{ "name": "primary", "route": [{ "destination": { "host": host } }] }]
        }
    })
}

impl Storm {
    /// Sets up `n` playbooks and their VirtualServices (all on the primary route) and the two
    /// stand-ins, both healthy. Needs a tokio runtime (the stand-ins and the emulator serve
    /// on it).
    pub async fn new(n: usize, timing: Timing) -> anyhow::Result<Self> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await?;
        let dr = StandIn::start("dr", loopback).await?;
        let emu = Emulator::start().await?;
        let dir = tempfile::tempdir()?;
        let paths = DaemonPaths {
            playbooks: dir.path().join("playbooks"),
            store: dir.path().join("unused"),
            audit: dir.path().join("audit.jsonl"),
            logs: dir.path().join("logs"),
        };
        std::fs::create_dir_all(&paths.playbooks)?;
        let mut playbooks = Vec::with_capacity(n);
        for i in 0..n {
            let text = playbook_text(i, primary.addr(), dr.addr(), timing);
            let file = format!("pb-{i:04}.yaml");
            std::fs::write(paths.playbooks.join(&file), &text)?;
            playbooks.push(
                failoverd::playbook::parse(&file, &text)
                    .map_err(|p| anyhow::anyhow!("storm playbook {i}: {p}"))?,
            );
            emu.seed(virtual_service(i))?;
        }
        let kubeconfig = dir.path().join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN)?;
        Ok(Self {
            dir,
            paths,
            kubeconfig,
            emu,
            primary,
            dr,
            playbooks,
        })
    }

    /// Starts `failoverd run --store kubernetes` on the emulator with `extra` arguments;
    /// `name` names the log files.
    pub fn spawn(&self, name: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        let kubeconfig = self
            .kubeconfig
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        let mut args = vec!["--kubeconfig", kubeconfig];
        args.extend_from_slice(extra);
        Daemon::spawn_store(&self.paths, name, "kubernetes", &args)
    }

    /// Playbook `i`'s VirtualService as the API server holds it.
    pub fn object(&self, i: usize) -> Option<Value> {
        self.emu
            .get(VS_API, "VirtualService", NAMESPACE, &object_name(i))
    }

    /// Playbook `i`'s routing as the API server holds it (None: unreadable).
    pub fn routing(&self, i: usize) -> Option<Routing> {
        let v = self.object(i)?;
        let pb = self.playbooks.get(i)?;
        failoverd::routing::view(&v, pb).ok().map(|v| v.routing)
    }

    /// Playbook `i`'s `http[0].route` as the API server holds it.
    pub fn route(&self, i: usize) -> Value {
        self.object(i)
            .map(|v| v["spec"]["http"][0]["route"].clone())
            .unwrap_or(Value::Null)
    }

    /// When each playbook's VirtualService first took a successful update at or after
    /// `since`, as the API server recorded it (its answer's time), measured from `since`;
    /// None: no such update. Read from the emulator's write log, so measuring costs the
    /// daemon nothing.
    pub fn first_updates(&self, since: SystemTime) -> Vec<Option<Duration>> {
        let mut first: Vec<Option<Duration>> = vec![None; self.playbooks.len()];
        for w in self.emu.writes() {
            if w.kind != "VirtualService" || w.verb != "update" || !(200..300).contains(&w.status) {
                continue;
            }
            let Some(i) = w
                .name
                .strip_prefix("web-")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let Ok(after) = w.time.duration_since(since) else {
                continue;
            };
            if let Some(slot) = first.get_mut(i)
                && slot.is_none_or(|t| after < t)
            {
                *slot = Some(after);
            }
        }
        first
    }

    /// Waits (polling every 100 ms, at most `timeout`) until every playbook but those in
    /// `skip` is on `want` in the API server; the ones that are not, on timeout.
    pub async fn wait_all(&self, want: Routing, timeout: Duration, skip: &[usize]) -> Vec<usize> {
        let start = Instant::now();
        loop {
            let waiting: Vec<usize> = (0..self.playbooks.len())
                .filter(|i| !skip.contains(i) && self.routing(*i) != Some(want))
                .collect();
            if waiting.is_empty() || start.elapsed() > timeout {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
