//! Override API under load, with the real binary and 1,000 playbooks probed every second:
//!
//! 1. `GET /v1/playbooks` at about 1,000 requests/s from a second process (wrk: 12
//!    connections, each waiting 10 ms between requests), p50/p99 as wrk reports them;
//! 2. time from an operator call to the routing store written (the API answers after the
//!    write is read back), p50/p99 over alternating failover/failback calls;
//! 3. the daemon's RSS and CPU over an idle minute-long window of probing.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench api_load`
//! (needs `wrk`: `apt-get install -y wrk`). Bounded: wrk runs 15 s, 100 calls, 30 s window.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::{failoverd_bin, free_addr, http_get, percentile, run_cli};
use failoverd::auth::hash_token;
use failoverd::standin::StandIn;

const PLAYBOOKS: usize = 1000;
/// Operator calls timed in part 2.
const CALLS: usize = 100;
const TOKEN: &str = "bench-operator-token";
const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: NAME, namespace: bench }
spec:
  hosts: [NAME.bench.svc.cluster.local]
  http:
    - name: primary
      route:
        - destination: { host: NAME.bench.svc.cluster.local }
";

fn playbook(i: usize, primary: SocketAddr, dr: SocketAddr) -> String {
    format!(
        "apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: {{ name: pb-{i:04} }}
spec:
  virtualService: {{ namespace: bench, name: web-{i:04} }}
  route: primary
  primary: {{ host: web-{i:04}.bench.svc.cluster.local }}
  failover:
    - {{ host: web-{i:04}.bench-dr.svc.cluster.local }}
  probes:
    - {{ name: primary-health, target: primary, http: {{ url: \"http://{primary}/healthz\" }}, interval: 1s, timeout: 500ms }}
    - {{ name: dr-health, target: \"failover[0]\", tcp: {{ address: \"{dr}\" }}, interval: 1s, timeout: 500ms }}
  minDwell: 1s
"
    )
}

fn proc_stat(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss_kb, ticks as f64 / 100.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().all(|a| a != "--bench") && std::env::var("RUNS").is_err() {
        println!("api_load: run with `cargo bench -p chaos-tests --bench api_load`");
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("api_load needs wrk: apt-get install -y wrk");
        std::process::exit(1);
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let primary = StandIn::start("primary", loopback).await.unwrap();
    let dr = StandIn::start("dr", loopback).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pbs = dir.path().join("playbooks");
    let routes = dir.path().join("routes/bench");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::create_dir_all(&routes).unwrap();
    for i in 0..PLAYBOOKS {
        std::fs::write(
            pbs.join(format!("pb-{i:04}.yaml")),
            playbook(i, primary.addr(), dr.addr()),
        )
        .unwrap();
        std::fs::write(
            routes.join(format!("web-{i:04}.yaml")),
            VS.replace("NAME", &format!("web-{i:04}")),
        )
        .unwrap();
    }
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: bench, role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let addr = free_addr().unwrap();
    let child = Command::new(failoverd_bin())
        .args(["run", "--playbooks"])
        .arg(&pbs)
        .arg("--store")
        .arg(format!("file:{}", dir.path().join("routes").display()))
        .args(["--listen", &addr.to_string(), "--audit"])
        .arg(dir.path().join("audit.jsonl"))
        .arg("--tokens")
        .arg(&tokens)
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed on every exit path, a failed assertion included: a bench must not leave a
    // daemon probing in the background.
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz", Duration::from_secs(2)).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "daemon not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{PLAYBOOKS} playbooks, {} probes at 1 s; ready after {:.1} s",
        PLAYBOOKS * 2,
        start.elapsed().as_secs_f64()
    );

    // 3 first, while nothing else loads the daemon: RSS and CPU of probing alone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, cpu0) = proc_stat(pid);
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let (rss, cpu1) = proc_stat(pid);
    println!(
        "idle probing: RSS {:.1} MiB, CPU {:.3} cores over {}s",
        rss as f64 / 1024.0,
        (cpu1 - cpu0) / window.as_secs_f64(),
        window.as_secs()
    );

    // 1. GET /v1/playbooks at ~1,000 req/s.
    let script = dir.path().join("get.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {TOKEN}\"\nfunction delay() return 10 end\n"
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", "12", "-d", "15s", "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/v1/playbooks"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "GET /v1/playbooks with {PLAYBOOKS} playbooks, wrk -t2 -c12 -d15s, 10 ms delay per connection:"
    );
    for l in text.lines().filter(|l| {
        l.contains('%')
            || l.contains("Requests/sec")
            || l.contains("requests in")
            || l.contains("Non-2xx")
    }) {
        println!("  {}", l.trim());
    }

    // 2. Override → store written.
    let url = format!("http://{addr}");
    let mut times = Vec::new();
    // 100 calls: with fewer, the nearest-rank p99 is simply the maximum.
    for n in 0..CALLS {
        // 4 calls/s: under the per-identity limit of 5/s, like a person or a runbook script.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let action = if n % 2 == 0 { "failover" } else { "failback" };
        let t = Instant::now();
        let out = run_cli(
            [
                action, "pb-0000", "--reason", "bench", "--url", &url, "--token", TOKEN, "-o",
                "json",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
        let took = t.elapsed();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            body.contains("\"written\": true"),
            "{action} did not write: {body}"
        );
        times.push(took);
    }
    times.sort();
    println!(
        "operator call -> routing written (CLI process included), {} calls: p50 {} ms, p99 {} ms, max {} ms",
        times.len(),
        percentile(&times, 50).unwrap().as_millis(),
        percentile(&times, 99).unwrap().as_millis(),
        times.last().unwrap().as_millis()
    );
    drop(child);
}

/// Kills and reaps the daemon when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
