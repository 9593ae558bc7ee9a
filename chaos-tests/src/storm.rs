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

    /// Turns every playbook's failback automatic, quick and in one step (`after: 1s`,
    /// `minDwell: 1s`): a primary toggled unhealthy and healthy again then keeps the whole
    /// fleet moving back and forth without an operator. Call before [`Storm::spawn`].
    pub fn automatic_failback(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.paths.playbooks)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            let text = text.replace(
                "  failback:\n    mode: manual\n",
                "  failback:\n    mode: automatic\n    after: 1s\n    steps: [100]\n  minDwell: 1s\n",
            );
            anyhow::ensure!(
                text.contains("mode: automatic"),
                "{}: no manual failback to replace",
                path.display()
            );
            std::fs::write(&path, text)?;
        }
        Ok(())
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

    /// [`Storm::spawn`] as one replica under leader election (`POD_NAME` = `identity`, Lease
    /// `failoverd/failoverd-leader`, default timings) with its own audit file `audit`.
    pub fn spawn_replica(
        &self,
        identity: &str,
        audit: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        let config = self.dir.path().join("election.yaml");
        std::fs::write(
            &config,
            "leaderElection:\n  enabled: true\n  namespace: failoverd\n",
        )?;
        let kubeconfig = self
            .kubeconfig
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        let config = config.to_str().context("config path is not UTF-8")?;
        let mut args = vec!["--kubeconfig", kubeconfig, "--config", config];
        args.extend_from_slice(extra);
        let paths = DaemonPaths {
            audit: audit.to_path_buf(),
            ..self.paths.clone()
        };
        Daemon::spawn_store_env(
            &paths,
            identity,
            "kubernetes",
            &args,
            &[("POD_NAME", identity)],
        )
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

/// The viewer token [`Storm::viewer_tokens`] writes (role `viewer`: reads only).
pub const VIEWER_TOKEN: &str = "dashboard-viewer-token";

impl Storm {
    /// Writes a token file with one viewer ([`VIEWER_TOKEN`]) into the storm's directory and
    /// returns its path, for `--tokens`.
    pub fn viewer_tokens(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            format!(
                "- {{ identity: \"dashboard@readonly\", role: viewer, sha256: \"{}\" }}\n",
                failoverd::auth::hash_token(VIEWER_TOKEN)
            ),
        )?;
        Ok(path)
    }
}

/// One dashboard request: `GET /v1/playbooks/pb-NNNN` for playbook `idx`.
#[derive(Clone, Debug)]
pub struct DashboardAnswer {
    /// Which playbook was asked for.
    pub idx: usize,
    /// When it was sent.
    pub sent: SystemTime,
    /// HTTP status (0: no answer within the client's timeout, or a connection error).
    pub status: u16,
    /// The JSON body, if it parsed.
    pub body: Option<Value>,
}

/// A dashboard: `rate` requests per second of `GET /v1/playbooks/{name}` across `n`
/// playbooks in turn, with a viewer token, each on its own connection and in its own task
/// (a slow answer does not slow the rate). Bounded: at most `max` requests, none sent after
/// `for_at_most`, and each answer waited for at most 2 s.
#[derive(Debug)]
pub struct Dashboard {
    task: tokio::task::JoinHandle<Vec<DashboardAnswer>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Dashboard {
    /// Starts the load on the daemon listening at `addr`.
    pub fn start(addr: SocketAddr, n: usize, rate: u32, max: usize, for_at_most: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let deadline = Instant::now() + for_at_most;
            let mut tasks = tokio::task::JoinSet::new();
            for k in 0..max {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                if Instant::now() > deadline || *stopped.borrow() {
                    break;
                }
                let idx = k % n.max(1);
                tasks.spawn(async move {
                    let sent = SystemTime::now();
                    let path = format!("/v1/playbooks/pb-{idx:04}");
                    let (status, body) = viewer_get(addr, &path, Duration::from_secs(2))
                        .await
                        .unwrap_or((0, String::new()));
                    DashboardAnswer {
                        idx,
                        sent,
                        status,
                        body: serde_json::from_str(&body).ok(),
                    }
                });
            }
            let mut answers = Vec::with_capacity(tasks.len());
            while let Some(a) = tasks.join_next().await {
                if let Ok(a) = a {
                    answers.push(a);
                }
            }
            answers.sort_by_key(|a| a.sent);
            answers
        });
        Self { task, stop }
    }

    /// Stops sending and returns every answer (each waited for at most 2 s), in send order.
    pub async fn stop(self) -> Vec<DashboardAnswer> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// `GET path` with the viewer token over a fresh HTTP/1.1 connection (`Connection: close`),
/// bounded by `timeout`: the status and the body.
pub async fn viewer_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path}: no answer within {timeout:?}"))??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
