//! Relabel → re-evaluated decision, through the real `failoverd` binary with
//! `--residency-allowed ID`: how long after the DR namespace's jurisdiction label changes
//! does the daemon act on it.
//!
//! The demo playbook (probes 1 s, failureThreshold 3, `after: 2s`, `minDwell: 1s`,
//! `steps: [100]`), the DR namespace `demo-dr` starting in SG. Each run: the primary's
//! listener stops and the daemon is stuck (the only failover target refused by the fence);
//! then
//!
//! - `demo-dr` relabelled ID → the failover route written (the VirtualService polled every
//!   10 ms): **relabel → failover**;
//! - `demo-dr` relabelled SG while failed over there → the new `stuck` audit record (the
//!   audit log polled every 10 ms): **relabel → stuck**;
//!
//! then the primary heals and the route fails back before the next run. Each relabel lands
//! at a different phase of the probe schedule (a golden-ratio sequence over 1 s).
//!
//! Two stores: the file store (`<store>/_cluster/mesh.yaml` replaced atomically; the folder
//! is polled every 1 s) and the kubernetes store on the API server emulator (the Namespace
//! edited in place: one watch event). Prints each run, then p50, p99 and max of each.
//!
//! ```text
//! cargo build --release -p failoverd && cargo bench -p chaos-tests --bench relabel
//! cargo bench -p chaos-tests --bench relabel -- --runs 5 --store file   # or kube, both
//! ```
//!
//! `cargo bench` runs this from `target/release/deps`, so it uses `target/release/failoverd`
//! unless `FAILOVERD_BIN` says otherwise. Under `cargo test --all-targets` (no `--bench`
//! argument) it only checks that it was built and exits, unless `--runs`/`RUNS` is given.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, Daemon, FAST_FAILBACK, POLL, Scenario, percentile};
use failoverd::engine::Routing;
use serde_json::json;

/// Default number of runs per store (each is two relabels).
const DEFAULT_RUNS: usize = 20;
/// The most runs accepted: every loop here is bounded.
const MAX_RUNS: usize = 200;
/// A step that has not happened by then aborts the bench.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    File,
    Kube,
}

struct Args {
    runs: Option<usize>,
    bench: bool,
    stores: Vec<Store>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: None,
        bench: false,
        stores: vec![Store::File, Store::Kube],
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--bench" => a.bench = true,
            "--runs" => {
                let v = it.next().context("--runs needs a number")?;
                a.runs = Some(v.parse().with_context(|| format!("--runs {v}"))?);
            }
            "--store" => {
                let v = it.next().context("--store needs file, kube or both")?;
                a.stores = match v.as_str() {
                    "file" => vec![Store::File],
                    "kube" => vec![Store::Kube],
                    "both" => vec![Store::File, Store::Kube],
                    other => bail!("--store {other}: expected file, kube or both"),
                };
            }
            // Anything else (cargo's filters, --nocapture, ...) is ignored.
            _ => {}
        }
    }
    if a.runs.is_none()
        && let Ok(v) = std::env::var("RUNS")
    {
        a.runs = Some(v.parse().with_context(|| format!("RUNS={v}"))?);
    }
    Ok(a)
}

/// Where the cluster's facts live and the route is read.
enum Facts {
    File(PathBuf),
    Kube(Emulator),
}

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
";

fn namespace(name: &str, code: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"failoverd.dev/jurisdiction": code}}})
}

impl Facts {
    /// `demo-dr`'s jurisdiction becomes `code`, as an operator would change it.
    fn relabel(&self, code: &str) -> anyhow::Result<()> {
        match self {
            Facts::File(dir) => {
                let text = format!(
                    "apiVersion: v1
kind: Namespace
metadata: {{ name: demo, labels: {{ failoverd.dev/jurisdiction: ID }} }}
---
apiVersion: v1
kind: Namespace
metadata: {{ name: demo-dr, labels: {{ failoverd.dev/jurisdiction: {code} }} }}
{STRICT}"
                );
                std::fs::write(dir.join(".mesh.tmp"), text)?;
                std::fs::rename(dir.join(".mesh.tmp"), dir.join("mesh.yaml"))?;
            }
            Facts::Kube(emu) => {
                emu.mutate("Namespace", "", "demo-dr", |ns| {
                    ns["metadata"]["labels"]["failoverd.dev/jurisdiction"] = json!(code);
                })?;
            }
        }
        Ok(())
    }
}

struct Run {
    s: Scenario,
    d: Daemon,
    facts: Facts,
}

impl Run {
    async fn start(store: Store) -> anyhow::Result<Run> {
        let s = Scenario::new(FAST_FAILBACK).await?;
        let (facts, d) = match store {
            Store::File => {
                let dir = s.paths.store.join("_cluster");
                std::fs::create_dir_all(&dir)?;
                let facts = Facts::File(dir);
                facts.relabel("SG")?;
                let d = Daemon::spawn_with(&s.paths, "relabel", &["--residency-allowed", "ID"])?;
                (facts, d)
            }
            Store::Kube => {
                let emu = Emulator::start().await?;
                emu.seed(serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE)?)?;
                emu.seed(namespace("demo", "ID"))?;
                emu.seed(namespace("demo-dr", "SG"))?;
                emu.seed(serde_saphyr::from_str(STRICT.trim_start_matches("---\n"))?)?;
                let kubeconfig = s.dir.path().join("kubeconfig");
                emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN)?;
                let d = Daemon::spawn_store(
                    &s.paths,
                    "relabel",
                    "kubernetes",
                    &[
                        "--kubeconfig".as_ref(),
                        kubeconfig.as_os_str(),
                        "--residency-allowed".as_ref(),
                        "ID".as_ref(),
                    ],
                )?;
                (Facts::Kube(emu), d)
            }
        };
        let mut r = Run { s, d, facts };
        if let Err(e) = r.d.wait_ready(STEP_TIMEOUT).await {
            bail!("{e:#}\n{}", r.d.logs());
        }
        Ok(r)
    }

    /// The route as stored (None: unreadable right now).
    async fn routing(&self) -> Option<Routing> {
        match &self.facts {
            Facts::File(_) => {
                let store = failoverd::routing::FileStore::new(&self.s.paths.store);
                use failoverd::routing::RoutingStore;
                store.read(&self.s.playbook).await.ok().map(|v| v.routing)
            }
            Facts::Kube(emu) => {
                let vs = emu.get("networking.istio.io/v1", "VirtualService", "demo", "web")?;
                Some(
                    failoverd::routing::view(&vs, &self.s.playbook)
                        .ok()?
                        .routing,
                )
            }
        }
    }

    async fn wait_routing(&self, want: Routing, what: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.routing().await == Some(want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > STEP_TIMEOUT {
                bail!(
                    "{what}: routing {:?} after {STEP_TIMEOUT:?}\n{}",
                    self.routing().await,
                    self.d.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `stuck` records naming the SG label (the fence's refusal, not another cause).
    fn stuck_records(&self) -> usize {
        self.s
            .audit()
            .iter()
            .filter(|r| r.action == "stuck" && r.reason.contains("jurisdiction SG"))
            .count()
    }

    /// Waits for the `n`th `stuck` record; returns the time waited.
    async fn wait_stuck(&self, n: usize, what: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while self.stuck_records() < n {
            if start.elapsed() > STEP_TIMEOUT {
                bail!("{what}: no stuck record #{n}\n{}", self.d.logs());
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(start.elapsed())
    }
}

async fn bench(store: Store, runs: usize) -> anyhow::Result<()> {
    let mut r = Run::start(store).await?;
    println!(
        "relabel ({store:?} store): {} ({runs} runs; probes 1s, failureThreshold 3)",
        chaos_tests::failoverd_bin().display()
    );
    let mut to_failover = Vec::with_capacity(runs);
    let mut to_stuck = Vec::with_capacity(runs);
    for run in 1..=runs {
        // Primary down with demo-dr in SG: stuck (the only target is fenced out).
        let stuck = r.stuck_records();
        r.s.primary.stop();
        r.wait_stuck(stuck + 1, "primary down, DR in SG").await?;
        // A different phase of the 1 s probe schedule for each relabel.
        let phase = ((run as f64 * 0.618_033_988_75).fract() * 1000.0) as u64;
        tokio::time::sleep(Duration::from_millis(phase)).await;
        r.facts.relabel("ID")?;
        let a = r
            .wait_routing(Routing::Failover { target: 0 }, "relabel to ID")
            .await?;
        to_failover.push(a);
        tokio::time::sleep(Duration::from_millis(1000 - phase)).await;
        let stuck = r.stuck_records();
        r.facts.relabel("SG")?;
        let b = r.wait_stuck(stuck + 1, "relabel to SG on the DR").await?;
        to_stuck.push(b);
        println!(
            "run {run:>3}: relabel -> failover written {:>5} ms   relabel -> stuck {:>5} ms",
            a.as_millis(),
            b.as_millis()
        );
        // Heal; the primary takes the traffic back. The next run relabels from SG again.
        r.s.primary
            .restart()
            .await
            .context("restarting the primary")?;
        r.wait_routing(Routing::Primary, "failback").await?;
    }
    let status = r.d.terminate(Duration::from_secs(10))?;
    if !status.success() {
        bail!(
            "failoverd exited with {status} after SIGTERM\n{}",
            r.d.logs()
        );
    }
    for (what, mut v) in [
        ("relabel -> failover written", to_failover),
        ("relabel -> stuck record", to_stuck),
    ] {
        v.sort();
        let ms = |p: u8| percentile(&v, p).map_or(0, |d| d.as_millis());
        println!(
            "{store:?} store, {what}: p50 {} ms   p99 {} ms   max {} ms   min {} ms",
            ms(50),
            ms(99),
            v.last().map_or(0, Duration::as_millis),
            v.first().map_or(0, Duration::as_millis)
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if !a.bench && a.runs.is_none() {
        println!(
            "relabel: not run (no --bench, --runs or RUNS); run it with \
             `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench relabel`"
        );
        return Ok(());
    }
    let runs = a.runs.unwrap_or(DEFAULT_RUNS);
    if !(1..=MAX_RUNS).contains(&runs) {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    for store in a.stores {
        bench(store, runs).await?;
    }
    Ok(())
}
