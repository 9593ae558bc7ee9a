//! Leader takeover at the default election timings (lease 8 s, renew deadline 5 s, retry
//! 1 s): two real replicas on the API server emulator; the primary stand-in is stopped and
//! the leader SIGKILLed at the same moment (a failover pending, not yet written). Measured
//! from the kill: until the standby holds the Lease (`failoverd_leader 1` on its `/metrics`),
//! and until the VirtualService is failed over (written by the new leader). p50/p99.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench takeover`
//! (`RUNS` changes the 10 runs). Bounded: each wait ≤ 60 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::{
    DEMO_VIRTUAL_SERVICE, DR_HOST, Scenario, free_addr, http_get, kube_replica_command,
};
use chaos_tests::{percentile, wait_for};
use serde_json::Value;

struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn spawn(sc: &Scenario, emu: &Emulator, name: &str) -> Replica {
        let dir = sc.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token = format!("{name}-token");
        emu.add_token(&token, name, vec![Rule::all()]);
        let kubeconfig = dir.join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig, &token).unwrap();
        let config = dir.join("config.yaml");
        // The default timings: only `enabled` and the namespace.
        std::fs::write(
            &config,
            "leaderElection: { enabled: true, namespace: failoverd }\n",
        )
        .unwrap();
        let addr = free_addr().unwrap();
        let audit = dir.join("audit.jsonl");
        let playbooks = &sc.paths.playbooks;
        let child = kube_replica_command(&config, playbooks, &kubeconfig, addr, &audit, name)
            .arg("--state")
            .arg(dir.join("overrides.json"))
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("spawning failoverd");
        Replica { child, addr }
    }

    async fn gauge(&self) -> Option<i64> {
        let (_, body) = http_get(self.addr, "/metrics", Duration::from_secs(2))
            .await
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("failoverd_leader "))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn wait_gauge(&self, want: i64, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.gauge().await != Some(want) {
            assert!(start.elapsed() < timeout, "failoverd_leader never {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }
}

fn failed_over(emu: &Emulator) -> bool {
    emu.get("networking.istio.io/v1", "VirtualService", "demo", "web")
        .is_some_and(|v| v["spec"]["http"][1]["route"][0]["destination"]["host"] == DR_HOST)
}

fn print(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
    println!(
        "takeover: {what}: n {} p50 {} ms p99 {} ms min {} ms max {} ms",
        v.len(),
        ms(percentile(&v, 50)),
        ms(percentile(&v, 99)),
        ms(v.first().copied()),
        ms(v.last().copied())
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().all(|a| a != "--bench") {
        println!("takeover: run with `cargo bench -p chaos-tests --bench takeover`");
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let limit = Duration::from_secs(60);
    let (mut lease, mut route) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let emu = Emulator::start().await.unwrap();
        emu.seed(serde_saphyr::from_str::<Value>(DEMO_VIRTUAL_SERVICE).unwrap())
            .unwrap();
        let mut sc = Scenario::new(&[]).await.unwrap();
        let mut a = Replica::spawn(&sc, &emu, "replica-a");
        a.wait_gauge(1, limit).await;
        let b = Replica::spawn(&sc, &emu, "replica-b");
        let start = Instant::now();
        while !matches!(
            http_get(b.addr, "/readyz", Duration::from_secs(2)).await,
            Ok((200, _))
        ) {
            assert!(start.elapsed() < limit, "replica-b not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A couple of renewals seen by the standby, at a random phase of the lease.
        tokio::time::sleep(Duration::from_millis(2000 + 137 * run as u64 % 1000)).await;
        sc.primary.stop();
        let killed = Instant::now();
        a.child.kill().unwrap();
        let _ = a.child.wait();
        b.wait_gauge(1, limit).await;
        let held = killed.elapsed();
        wait_for("the failover written", limit, || {
            failed_over(&emu).then_some(())
        })
        .await
        .unwrap();
        let written = killed.elapsed();
        println!(
            "takeover: run {run}: lease held by the standby after {} ms, route written after {} ms",
            held.as_millis(),
            written.as_millis()
        );
        lease.push(held);
        route.push(written);
    }
    print("kill -> standby holds the lease", lease);
    print("kill (with a failover pending) -> route written", route);
}
