#![allow(clippy::unwrap_used)]
//! Notification latency, measured on loopback with real components:
//!
//! 1. event → webhook receiver (p50/p99 over many events; the runtime emits the event right
//!    after the routing write is read back, so this is write → receiver minus microseconds);
//! 2. event → Alertmanager → its webhook receiver (a real `prometheus-alertmanager` with
//!    `group_wait: 0s`; a new playbook per sample so each is a new alert group);
//! 3. in the whole daemon: fault → routing write, and write → webhook / → Alertmanager →
//!    receiver, with a receiver that hangs for 60 s next to the healthy one, and without.
//!
//! `cargo bench -p failoverd --bench notify_latency` (needs prometheus-alertmanager).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use failoverd::notify::{Condition, Event, EventKind, Notifier, NotifyConfig};
use serde_json::json;
use support::install_crypto;
use support::notify::{Alertmanager, Daemon, Mode, Receiver, am_alerts};

fn event(kind: EventKind, playbook: &str) -> Event {
    Event {
        traceparent: None,
        kind,
        time: jiff::Timestamp::now(),
        playbook: playbook.into(),
        service: format!("bench/{playbook}"),
        namespace: "bench".into(),
        from: Some("primary (original route)".into()),
        to: Some("failover[0] 100%".into()),
        reason: "primary unhealthy: 3 consecutive probe failures".into(),
        signals: json!({ "primary-health": "unhealthy" }),
        actor: "engine".into(),
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn summary(name: &str, v: &mut [Duration]) {
    println!(
        "{name:<52} n={:<4} p50 {:>10}  p99 {:>10}  max {:>10}",
        v.len(),
        ms(pct(v, 0.5)),
        ms(pct(v, 0.99)),
        ms(pct(v, 1.0))
    );
}

/// `a - b` in milliseconds, negative when `a` came first.
fn signed_ms(a: std::time::SystemTime, b: std::time::SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

fn fpct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn config(yaml: &str) -> NotifyConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let sf = dir.path().join("secret");
    std::fs::write(&sf, "bench-secret").unwrap();
    let sf = sf.display().to_string();

    // 1. event → webhook receiver.
    let rx = Receiver::start(Mode::Ok).await;
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - {{ name: bench, url: \"{}\", secretFile: {sf} }}\n",
            rx.url("/")
        )),
        "http://bench",
        None,
    )
    .unwrap();
    let mut lat = Vec::new();
    for i in 0..500 {
        let pb = format!("pb{i}");
        let t = Instant::now();
        n.notify(event(EventKind::Failover, &pb));
        let hit = rx
            .wait_for(Duration::from_secs(5), |h| {
                h.json()["playbook"] == pb.as_str()
            })
            .await
            .expect("webhook lost an event");
        lat.push(hit.at - t);
    }
    summary("event → webhook receiver", &mut lat);
    drop(n);

    // 2. event → Alertmanager → receiver.
    let amrx = Receiver::start(Mode::Ok).await;
    let am = Alertmanager::start(&amrx.url("/am")).await;
    let n = Notifier::start(
        &config(&format!("alertmanager: {{ urls: [\"{}\"] }}\n", am.url)),
        "http://bench",
        None,
    )
    .unwrap();
    let mut lat = Vec::new();
    for i in 0..100 {
        let pb = format!("am{i}");
        let t = Instant::now();
        n.notify(event(EventKind::Failover, &pb));
        n.condition(
            &pb,
            &format!("bench/{pb}"),
            "bench",
            Condition {
                failed_over: true,
                stuck: false,
            },
        );
        let hit = amrx
            .wait_for(Duration::from_secs(10), |h| {
                am_alerts(h).iter().any(|a| a.2 == pb && a.0 == "firing")
            })
            .await
            .expect("Alertmanager lost an alert");
        lat.push(hit.at - t);
    }
    summary("event → Alertmanager → receiver", &mut lat);
    drop(n);

    // 3. the daemon, with and without a hung receiver.
    let hung = Receiver::start(Mode::Hang(Duration::from_secs(60))).await;
    let runs = 6;
    let mut rows = Vec::new();
    for with_hung in [false, true] {
        let mut failover = Vec::new();
        let mut to_hook = Vec::new();
        let mut to_am = Vec::new();
        for _ in 0..runs {
            let fast = Receiver::start(Mode::Ok).await;
            let amrx = Receiver::start(Mode::Ok).await;
            let am = Alertmanager::start(&amrx.url("/am")).await;
            let mut hooks = format!(
                "  - {{ name: fast, url: \"{}\", secretFile: {sf} }}\n",
                fast.url("/")
            );
            if with_hung {
                hooks.push_str(&format!(
                    "  - {{ name: hung, url: \"{}\", secretFile: {sf}, timeout: 60s }}\n",
                    hung.url("/")
                ));
            }
            let cfg = config(&format!(
                "alertmanager: {{ urls: [\"{}\"], resendInterval: 1s }}\nwebhooks:\n{hooks}",
                am.url
            ));
            let mut d =
                Daemon::start(|s| Notifier::start(&cfg, "http://bench", Some(&s.metrics)).unwrap())
                    .await;
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let (fault, written) = d.fail_primary().await;
            failover.push(written - fault);
            let h = fast
                .wait_for(Duration::from_secs(5), |h| h.json()["event"] == "failover")
                .await
                .expect("no webhook");
            let write_wall = d.write_time();
            to_hook.push(signed_ms(h.wall, write_wall));
            let a = amrx
                .wait_for(Duration::from_secs(5), |h| {
                    am_alerts(h).iter().any(|a| a.0 == "firing")
                })
                .await
                .expect("no alert");
            to_am.push(signed_ms(a.wall, write_wall));
            d.shutdown().await;
        }
        rows.push((with_hung, failover, to_hook, to_am));
    }
    println!();
    println!(
        "daemon, {runs} runs each (demo playbook: 1 s probes × threshold 3; fault → write seen by polling the file every 5 ms; write → X measured from the VirtualService file's mtime, negative = before the write)"
    );
    println!(
        "{:<22} {:>26} {:>26} {:>30}",
        "",
        "fault → write p50 / max",
        "write → webhook p50 / max",
        "write → AM → receiver p50 / max"
    );
    for (with_hung, mut f, mut h, mut a) in rows {
        println!(
            "{:<22} {:>26} {:>26} {:>30}",
            if with_hung {
                "hung receiver (60 s)"
            } else {
                "no hung receiver"
            },
            format!("{} / {}", ms(pct(&mut f, 0.5)), ms(pct(&mut f, 1.0))),
            format!("{:.2} / {:.2} ms", fpct(&mut h, 0.5), fpct(&mut h, 1.0)),
            format!("{:.2} / {:.2} ms", fpct(&mut a, 0.5), fpct(&mut a, 1.0)),
        );
    }
}
