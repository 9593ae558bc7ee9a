//! One replica's cost at fleet size: the real release binary with 1,000 playbooks (2,000 HTTP
//! probes at 1 s against four loopback stand-ins), the `kubernetes` store on the API server
//! emulator (1,000 VirtualServices, watched) and leader election on, as in production. After
//! a warm-up, RSS (VmRSS, VmHWM from `/proc/PID/status`) and CPU (utime + stime from
//! `/proc/PID/stat`) over a steady window → cores used. Goals: RSS ≤ 64 MiB, ≤ 0.25 core.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench fleet_cost`
//! (`WINDOW_SECS` changes the 60 s window). Bounded: 20 s warm-up + the window.
//!
//! To see where the cost goes, parts can be taken away: `STORE=file` (the file store
//! instead of the emulator), `LEADER=0` (no leader election). (Two probes per playbook is
//! the least a playbook can have: failoverd refuses a failover target nothing watches.) The child inherits the environment, so allocator
//! settings such as `MALLOC_ARENA_MAX` reach it too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use chaos_tests::{failoverd_bin, free_addr, http_get};
use failoverd::standin::StandIn;
use serde_json::json;

const PLAYBOOKS: usize = 1000;
const WARM_UP: Duration = Duration::from_secs(20);

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
    - {{ name: dr-health, target: \"failover[0]\", http: {{ url: \"http://{dr}/healthz\" }}, interval: 1s, timeout: 500ms }}
"
    )
}

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn virtual_service(i: usize) -> serde_json::Value {
    let host = format!("web-{i:04}.bench.svc.cluster.local");
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": { "name": format!("web-{i:04}"), "namespace": "bench" },
        "spec": {
            "hosts": [host],
            "http": [{ "name": "primary", "route": [{ "destination": { "host": host } }] }]
        }
    })
}

/// (VmRSS KiB, VmHWM KiB, utime + stime seconds).
fn proc_stat(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime (fields 14 and 15) are at 11 and 12 after the command name.
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (kb("VmRSS:"), kb("VmHWM:"), ticks as f64 / 100.0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().all(|a| a != "--bench") {
        println!("fleet_cost: run with `cargo bench -p chaos-tests --bench fleet_cost`");
        return;
    }
    let window = Duration::from_secs(
        std::env::var("WINDOW_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let kube = knob("STORE", "kubernetes") == "kubernetes";
    let elect = knob("LEADER", "1") != "0";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut standins = Vec::new();
    for name in ["primary-1", "primary-2", "dr-1", "dr-2"] {
        standins.push(StandIn::start(name, loopback).await.unwrap());
    }
    let emu = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pbs = dir.path().join("playbooks");
    std::fs::create_dir_all(&pbs).unwrap();
    for i in 0..PLAYBOOKS {
        let (p, d) = (&standins[i % 2], &standins[2 + i % 2]);
        std::fs::write(
            pbs.join(format!("pb-{i:04}.yaml")),
            playbook(i, p.addr(), d.addr()),
        )
        .unwrap();
        let vs = virtual_service(i);
        if kube {
            emu.seed(vs).unwrap();
        } else {
            let path = dir.path().join(format!("store/bench/web-{i:04}.yaml"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, serde_saphyr::to_string(&vs).unwrap()).unwrap();
        }
    }
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        if kube && elect {
            "leaderElection: { enabled: true, namespace: failoverd }\n"
        } else {
            "{}\n"
        },
    )
    .unwrap();
    let mut store_args: Vec<std::ffi::OsString> = vec!["--store".into()];
    if kube {
        store_args.extend([
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
        ]);
    } else {
        store_args.push(format!("file:{}", dir.path().join("store").display()).into());
    }
    let addr = free_addr().unwrap();
    let child = Command::new(failoverd_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--playbooks")
        .arg(&pbs)
        .args(&store_args)
        .args(["--listen", &addr.to_string(), "--audit"])
        .arg(dir.path().join("audit.jsonl"))
        .args(["--log", "warn"])
        .env("POD_NAME", "bench-replica")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning failoverd");
    let child = Kill(child);
    let pid = child.0.id();
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz", Duration::from_secs(2)).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "failoverd not ready in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = start.elapsed();
    let (_, metrics) = http_get(addr, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    let leader = metrics
        .lines()
        .find(|l| l.starts_with("failoverd_leader "))
        .unwrap_or("failoverd_leader ?")
        .to_string();
    println!(
        "fleet_cost: {PLAYBOOKS} playbooks, {} HTTP probes at 1 s, {} store{}; ready after \
         {ready:.1?}; {leader}",
        2 * PLAYBOOKS,
        if kube {
            "kubernetes (emulator)"
        } else {
            "file"
        },
        if kube && elect {
            ", leader election on"
        } else {
            ""
        },
    );
    tokio::time::sleep(WARM_UP).await;
    let writes_before = emu.writes().len();
    let (_, _, cpu0) = proc_stat(pid);
    let t0 = Instant::now();
    let mut rss_max = 0u64;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_stat(pid).0);
    }
    let (rss, hwm, cpu1) = proc_stat(pid);
    let secs = t0.elapsed().as_secs_f64();
    let cores = (cpu1 - cpu0) / secs;
    let writes = emu.writes().len() - writes_before;
    println!(
        "fleet_cost: {secs:.0} s window after {WARM_UP:?} warm-up: VmRSS {:.1} MiB (max \
         {:.1} MiB in the window), VmHWM {:.1} MiB; CPU {:.2} s = {cores:.3} cores; {writes} \
         API writes in the window (lease renewals)",
        rss as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu1 - cpu0
    );
    println!(
        "fleet_cost: goals RSS <= 64 MiB: {}; CPU <= 0.25 core: {}",
        if hwm <= 64 * 1024 { "met" } else { "MISSED" },
        if cores <= 0.25 { "met" } else { "MISSED" }
    );
    drop(child);
}
