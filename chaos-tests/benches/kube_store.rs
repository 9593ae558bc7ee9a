//! The `kubernetes` store against the API server emulator: write latency (read, update
//! guarded by resourceVersion, read back) and failing over 100 playbooks at once through the
//! client-side rate limit.
//!
//! `cargo bench -p chaos-tests --bench kube_store`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, percentile};
use failoverd::engine::Routing;
use failoverd::routing::RoutingStore;
use failoverd::routing::kube::{KubeOptions, KubeStore};
use serde_json::{Value, json};

const SEQUENTIAL: usize = 300;
const FLEET: usize = 100;

fn playbook(i: usize) -> failoverd::playbook::Playbook {
    let text = failoverd::demo::PLAYBOOK.replace(
        "virtualService: { namespace: demo, name: web }",
        &format!("virtualService: {{ namespace: demo, name: web-{i} }}"),
    );
    let text = text.replacen("name: demo", &format!("name: demo-{i}"), 1);
    failoverd::playbook::parse("bench.yaml", &text).unwrap()
}

fn vs(i: usize) -> Value {
    let mut v: Value = serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap();
    v["metadata"]["name"] = json!(format!("web-{i}"));
    v
}

async fn store(emu: &Emulator, dir: &std::path::Path, qps: u32, burst: u32) -> KubeStore {
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    KubeStore::connect(KubeOptions {
        kubeconfig: Some(kubeconfig),
        qps,
        burst,
        ..KubeOptions::default()
    })
    .await
    .unwrap()
}

fn show(label: &str, mut d: Vec<Duration>) {
    d.sort();
    let ms = |p: u8| percentile(&d, p).map_or(f64::NAN, |x| x.as_secs_f64() * 1000.0);
    println!(
        "{label}: n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        d.len(),
        ms(50),
        ms(99),
        ms(100)
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start().await.unwrap();
    for i in 0..FLEET {
        emu.seed(vs(i)).unwrap();
    }

    // 1. One playbook, moves one after another: GET, PUT with resourceVersion, GET back.
    let s = store(&emu, dir.path(), 10_000, 10_000).await;
    let pb = playbook(0);
    s.read(&pb).await.unwrap();
    let mut took = Vec::with_capacity(SEQUENTIAL);
    for n in 0..SEQUENTIAL {
        let to = if n % 2 == 0 {
            Routing::Failover { target: 0 }
        } else {
            Routing::Primary
        };
        let t = Instant::now();
        let out = s.write(&pb, to, Default::default()).await.unwrap();
        took.push(t.elapsed());
        assert!(out.changed);
    }
    show(
        "write (read + update; the update's answer is the read-back), sequential, no rate limit",
        took,
    );

    // 2. 100 playbooks fail over at once, default rate limit (50/s, burst 100).
    for (qps, burst) in [(50, 100), (20, 20)] {
        let s = Arc::new(store(&emu, dir.path(), qps, burst).await);
        // Discovery outside the measurement (done once at start in the daemon).
        s.read(&playbook(0)).await.unwrap();
        for i in 0..FLEET {
            s.write(&playbook(i), Routing::Primary, Default::default())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await; // refill the bucket
        let start = Instant::now();
        let tasks: Vec<_> = (0..FLEET)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let pb = playbook(i);
                    s.write(&pb, Routing::Failover { target: 0 }, Default::default())
                        .await
                        .map(|_| start.elapsed())
                })
            })
            .collect();
        let mut done = Vec::new();
        let mut not_sent = 0;
        for t in tasks {
            // A write that gets no rate-limit token within its budget is not sent at all (the
            // daemon decides it again on its next round); count those.
            match t.await.unwrap() {
                Ok(took) => done.push(took),
                Err(_) => not_sent += 1,
            }
        }
        let all = start.elapsed();
        println!(
            "{FLEET} playbooks at once, kubeQps {qps} kubeBurst {burst}: {} written in {:.2} s, {not_sent} not sent within the write budget",
            done.len(),
            all.as_secs_f64()
        );
        show("  per-playbook time to written", done);
    }
}
