//! Memory of the probe engine alone: N HTTP probes at a 1 s interval for S seconds; prints
//! the process's peak RSS (VmHWM) and RSS now (goal at 500 probes: ≤ 32 MiB).
//! Run: `cargo bench -p failover-probes --bench probe_rss -- 500 20` (probes, seconds).
//! The loopback HTTP servers run in a child process (this binary re-executed with
//! `serve`), so the number is the probe engine's own: runtime, client, tasks, results.
//! Linux only (/proc/self/status).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use failover_probes::{
    HttpProbe, Outcome, ProbeKind, ProbeSpec, Vantage, http_client, spawn_probes,
};
use tokio::sync::{mpsc, watch};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: serve `/healthz` on 127.0.0.1, print the port, run until stdin closes.
fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        // Ends when the parent exits (stdin closed).
        let mut buf = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut buf)).await;
    });
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let first = args.next();
    if first.as_deref() == Some("serve") {
        return serve();
    }
    let n: usize = first.map_or(500, |s| s.parse().unwrap());
    let secs: u64 = args.next().map_or(20, |s| s.parse().unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().to_owned();
    let baseline = status_kib("VmRSS:");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ok, bad) = rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let specs = (0..n)
            .map(|i| ProbeSpec {
                id: i,
                kind: ProbeKind::Http(HttpProbe::new(
                    format!("http://{addr}/healthz?t={i}"),
                    vec![200],
                )),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                vantage: Vantage::local(),
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = watch::channel(false);
        let set = spawn_probes(specs, http_client().unwrap(), tx, stop_rx);
        let (mut ok, mut bad) = (0u64, 0u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if r.outcome == Outcome::Healthy {
                ok += 1;
            } else {
                bad += 1;
            }
        }
        stop_tx.send(true).unwrap();
        set.shutdown().await;
        (ok, bad)
    });
    let (hwm, rss) = (status_kib("VmHWM:"), status_kib("VmRSS:"));
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "command: cargo bench -p failover-probes --bench probe_rss -- {n} {secs}\n\
         {n} HTTP probes at 1 s for {secs} s: {ok} healthy, {bad} not\n\
         peak RSS (VmHWM) {:.1} MiB, RSS at end {:.1} MiB, RSS before the engine {:.1} MiB \
         (goal <= 32 MiB)",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        baseline as f64 / 1024.0,
    );
}
