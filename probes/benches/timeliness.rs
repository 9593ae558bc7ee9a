//! Schedule timeliness: 1,000 HTTP probes at a 1 s interval against loopback servers for
//! 20 s; prints p50/p99/max lateness of attempt starts (goal: p99 ≤ 50 ms) and checks that
//! every first attempt was *due* within one interval of the spawn (the random start offset).
//! Run: `cargo bench -p failover-probes --bench timeliness -- 1000 20`
//! (probes, seconds). The servers run in this process on a separate runtime, so probe
//! tasks and server tasks do not share worker threads.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use failover_probes::{
    HttpProbe, Outcome, ProbeKind, ProbeSpec, Vantage, http_client, spawn_probes,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const SERVERS: usize = 4;
const INTERVAL: Duration = Duration::from_secs(1);

// The benches' one percentile helper. failover-probes cannot depend on chaos-tests (which
// depends on failoverd, which depends on failover-probes), so the file is included by path.
#[path = "../../chaos-tests/src/percentile.rs"]
mod percentile;
use percentile::percentile;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let n: usize = args.next().map_or(1000, |s| s.parse().unwrap());
    let secs: u64 = args.next().map_or(20, |s| s.parse().unwrap());
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<SocketAddr> = servers.block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..SERVERS {
            let app = Router::new().route("/healthz", get(|| async { "ok" }));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(l, app).await });
        }
        addrs
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let specs = (0..n)
            .map(|i| ProbeSpec {
                id: i,
                kind: ProbeKind::Http(HttpProbe::new(
                    format!("http://{}/healthz", addrs[i % SERVERS]),
                    vec![200],
                )),
                interval: INTERVAL,
                timeout: Duration::from_millis(500),
                vantage: Vantage::local(),
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(4096);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Built before the clock starts: building the client (it reads the system trust
        // store) takes tens of milliseconds, which the random start offset does not cover.
        let client = http_client().unwrap();
        let spawned = Instant::now();
        let set = spawn_probes(specs, client, tx, stop_rx);
        let mut late = Vec::new();
        let mut first_seen = vec![false; n];
        let (mut max_first_due, mut max_first_start) = (Duration::ZERO, Duration::ZERO);
        let (mut ok, mut bad) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if r.outcome == Outcome::Healthy {
                ok += 1;
            } else {
                bad += 1;
            }
            late.push(r.lateness);
            if !first_seen[r.id] {
                first_seen[r.id] = true;
                let start = r.started.saturating_duration_since(spawned);
                max_first_start = max_first_start.max(start);
                max_first_due = max_first_due.max(start.saturating_sub(r.lateness));
                if start.saturating_sub(r.lateness) >= INTERVAL {
                    eprintln!(
                        "DEBUG id {} first result due {:?} late {:?} lat {:?}",
                        r.id,
                        start.saturating_sub(r.lateness),
                        r.lateness,
                        r.latency
                    );
                }
            }
        }
        stop_tx.send(true).unwrap();
        set.shutdown().await;
        late.sort();
        println!(
            "command: cargo bench -p failover-probes --bench timeliness -- {n} {secs}\n\
             {n} HTTP probes at 1 s for {secs} s against {SERVERS} loopback servers: \
             {} attempts ({ok} healthy, {bad} not)\n\
             lateness of attempt start: p50 {:?}, p99 {:?}, max {:?} (goal p99 <= 50 ms)\n\
             first attempts: latest due {:?} after spawn (must be < interval {:?}), \
             latest actual start {:?}",
            late.len(),
            percentile(&late, 50).unwrap_or_default(),
            percentile(&late, 99).unwrap_or_default(),
            late.last().copied().unwrap_or_default(),
            max_first_due,
            INTERVAL,
            max_first_start,
        );
        assert!(
            max_first_due < INTERVAL,
            "a first attempt was due after one interval"
        );
    });
}
