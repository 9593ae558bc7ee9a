//! CPU per probe attempt: N HTTP probes at a 1 s interval against one local server.
//! Run: `cargo bench -p failover-probes --bench probe_cpu -- http://127.0.0.1:18090 500 30`
//! (base URL, number of targets (distinct paths), seconds). Linux only (/proc/self/stat).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use failover_probes::{
    HttpProbe, Outcome, ProbeKind, ProbeSpec, Vantage, http_client, spawn_probes,
};
use tokio::sync::{mpsc, watch};

/// utime + stime of this process, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the ")" of the command name: state is field 3; utime, stime are 14, 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18090".to_owned());
    let n: usize = args.next().map_or(500, |s| s.parse().unwrap());
    let secs: u64 = args.next().map_or(30, |s| s.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let specs = (0..n)
            .map(|i| ProbeSpec {
                id: i,
                kind: ProbeKind::Http(HttpProbe::new(format!("{base}/t/{i}"), vec![200])),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                vantage: Vantage::local(),
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = watch::channel(false);
        let before = cpu_ticks();
        let set = spawn_probes(specs, http_client().unwrap(), tx, stop_rx);
        let (mut ok, mut bad, mut max_late) = (0u64, 0u64, Duration::ZERO);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if r.outcome == Outcome::Healthy {
                ok += 1;
            } else {
                bad += 1;
            }
            max_late = max_late.max(r.lateness);
        }
        let ticks = cpu_ticks() - before;
        stop_tx.send(true).unwrap();
        set.shutdown().await;
        let cpu_ms = ticks as f64 * 10.0;
        println!(
            "failoverd probes: {n} targets x {secs}s: {ok} healthy, {bad} not; CPU {cpu_ms:.0} ms \
             = {:.1}% of a core, {:.3} ms per attempt; max lateness {max_late:?}",
            cpu_ms / (secs as f64 * 10.0),
            cpu_ms / (ok + bad).max(1) as f64
        );
    });
}
