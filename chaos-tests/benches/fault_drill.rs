#![allow(clippy::unwrap_used)]
//! Fault drills end to end: how long failoverd takes to detect a fault Istio injects on the
//! primary and to fail over, measured through the routing proxy (`chaos_tests::proxy`), which applies the fault the way
//! Envoy does.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench fault_drill`
//!
//! One release daemon on the demo playbook with the primary's probe (500 ms, threshold 2)
//! through the proxy and a `scope: probes` drill (`abort.httpStatus: 503`, hold 1 s); `RUNS`
//! runs (default 20) one after the other. Per run, from the drill's report: fault written →
//! detected (the result that met the threshold), detected → failover written, fault written
//! → failover written; and from outside: the fault route seen in the file → the failover
//! seen in the file. Prints p50 / p99 / max of each.

// The tests' fast-probe playbook edits (one list for the tests and this bench).
#[path = "../tests/support/fault_drill.rs"]
mod fault_drill;

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, Scenario, percentile, run_cli};
use failoverd::auth::hash_token;
use fault_drill::FAST;
use serde_json::Value;

const TOKEN: &str = "fault-drill-bench-token";
const WAIT: Duration = Duration::from_secs(30);
const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: demo }
spec:
  hosts: [ web.demo.svc.cluster.local ]
  http:
    - name: probe-primary
      match:
        - headers:
            x-probe: { exact: primary }
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1 }
    - name: primary
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1 }
          weight: 100
";

fn fault_routes(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("failoverd-drill-"))
}

fn routed_away(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("web.demo-dr.svc.cluster.local"))
}

async fn api_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn stats(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "{name:<40} n={:>3}  p50={:>6} ms  p99={:>6} ms  max={:>6} ms",
        v.len(),
        percentile(&v, 50).unwrap_or(0),
        percentile(&v, 99).unwrap_or(0),
        v.last().copied().unwrap_or(0)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "fault_drill: {runs} runs, probes 500 ms x threshold 2 through the routing proxy ({})",
        chaos_tests::failoverd_bin().display()
    );
    let s = Scenario::new(FAST).await.unwrap();
    std::fs::write(&s.vs_path, VS).unwrap();
    let router = chaos_tests::proxy::Proxy::start(
        chaos_tests::proxy::ProxyConfig::new(s.vs_path.clone(), Some("primary".into()))
            .upstream("web.demo.svc.cluster.local", Some("v1"), s.primary.addr())
            .upstream(chaos_tests::DR_HOST, None, s.dr.addr()),
    )
    .await
    .unwrap();
    let primary_url = format!("http://{}/healthz", s.primary.addr());
    let text = s.playbook_text.replace(
        &format!("url: \"{primary_url}\" }}"),
        &format!(
            "url: \"http://{}/healthz\", headers: {{ x-probe: primary }} }}",
            router.addr()
        ),
    );
    assert_ne!(text, s.playbook_text);
    std::fs::write(&s.playbook_path, text).unwrap();
    let dir = s.paths.playbooks.join("drills");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("fault.yaml"),
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: fault }\nspec:\n  playbooks: [ demo ]\n  mode: live\n  hold: 1s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n",
    )
    .unwrap();
    let tokens = s.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"bench@oncall\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_with(
        &s.paths,
        "fault-bench",
        &[std::ffi::OsStr::new("--tokens"), tokens.as_os_str()],
    )
    .unwrap();
    d.wait_ready(WAIT).await.unwrap();
    let url = format!("http://{}", d.addr);
    let (mut detect, mut move_ms, mut total, mut outside) = (vec![], vec![], vec![], vec![]);
    let mut verdicts = Vec::new();
    for run in 1..=runs {
        let out = run_cli(
            [
                "drill", "run", "fault", "--wait", "--url", &url, "--token", TOKEN,
            ],
            Duration::from_secs(90),
        )
        .unwrap();
        assert!(
            out.status.code().is_some_and(|c| c == 0 || c == 2),
            "run {run}: {out:?}"
        );
        // The --wait run is over; its JSON report is the newest run.
        let body = api_get(d.addr, "/v1/drills/fault/runs").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let r = &v["runs"][0];
        verdicts.push(r["result"].as_str().unwrap_or("?").to_string());
        let ivs = r["playbooks"][0]["fault"]["intervals"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let get = |n: &str| {
            ivs.iter()
                .find(|i| i["name"] == n)
                .and_then(|i| i["seconds"].as_f64())
                .map(|s| (s * 1000.0).round() as u64)
        };
        let (a, b) = (
            get("fault-written → detected"),
            get("detected → failover written"),
        );
        if let (Some(a), Some(b)) = (a, b) {
            detect.push(a);
            move_ms.push(b);
            total.push(a + b);
        }
        println!(
            "run {run:>2}: {} detect {a:?} ms, failover {b:?} ms",
            r["result"]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The outside view, in separate runs: the fault route seen → the failover seen (file polls
    // every 5 ms).
    for _ in 1..=runs {
        let started = Instant::now();
        let _ = run_cli(
            ["drill", "run", "fault", "--url", &url, "--token", TOKEN],
            Duration::from_secs(30),
        );
        while !fault_routes(&s.vs_path) && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen = Instant::now();
        while !routed_away(&s.vs_path) && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        outside.push(seen.elapsed().as_millis() as u64);
        // Wait for the run to end and the route to be back (hold 1 s + failback).
        while (routed_away(&s.vs_path) || fault_routes(&s.vs_path)) && started.elapsed() < WAIT * 2
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    println!();
    stats("fault written -> detected (report)", detect);
    stats("detected -> failover written (report)", move_ms);
    stats("fault written -> failover written (report)", total);
    stats("fault route seen -> failover seen (file)", outside);
    let passed = verdicts.iter().filter(|v| *v == "passed").count();
    println!("verdicts: {passed}/{} passed {verdicts:?}", verdicts.len());
    d.terminate(WAIT).unwrap();
}
