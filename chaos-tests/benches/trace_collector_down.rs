//! Tracing on, the collector down for the whole run: does the daemon's memory grow?
//!
//! The real daemon (`kubernetes` store on the API server emulator, audit on) with N
//! playbooks (default 50), probes 250 ms × 2, automatic failback after 1 s in one step, and
//! `tracing.otlp.endpoint` at a loopback port nothing listens on (`sampleRatio: 1`, timeout
//! 1 s). A failover storm for `MINUTES` (default 3, at most 30): the shared primary is made
//! unhealthy and healthy again every `TOGGLE_MS` (default 3,000 ms), so every playbook fails
//! over and back again and again, and every move's spans are exported to nobody.
//!
//! Prints the daemon's RSS (`VmRSS`, `/proc/PID/status`) once ready, every 30 s and at the
//! end, with the moves so far (`failoverd_failovers_total` + `failoverd_failbacks_total`) and
//! `failoverd_trace_spans_dropped_total` (and `failoverd_kube_events_dropped_total`: the
//! storm's moves outpace the Kubernetes Event rate limit). Bounded: the storm stops after `MINUTES`.
//! `TRACING=off` runs the same storm without tracing: the baseline the growth compares to.
//!
//! `cargo build -p failoverd && MINUTES=10 cargo bench --profile dev -p chaos-tests --bench trace_collector_down`
//! (the debug binary; `FAILOVERD_BIN=$PWD/target/release/failoverd` for a release one)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chaos_tests::free_addr;
use chaos_tests::storm::{Storm, Timing};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's resident set in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text exposition.
fn sum(metrics: &str, name: &str) -> f64 {
    chaos_tests::prometheus::sum_series(metrics, name, &[])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = knob("N", 50) as usize;
    let minutes = knob("MINUTES", 3).clamp(1, 30);
    let toggle = Duration::from_millis(knob("TOGGLE_MS", 3_000).max(500));
    let storm = Storm::new(n, Timing::FAST).await.unwrap();
    // Automatic failback, quick, so the storm keeps moving without an operator.
    storm.automatic_failback().unwrap();
    let dead = free_addr().unwrap();
    let cfg = storm.dir.path().join("failoverd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tracing:\n  otlp: {{ endpoint: \"http://{dead}\", timeout: 1s }}\n  sampleRatio: 1\n"
        ),
    )
    .unwrap();
    let traced = std::env::var("TRACING").map_or(true, |v| v != "off");
    let args: &[&str] = if traced {
        &["--config", cfg.to_str().unwrap()]
    } else {
        &[]
    };
    let mut d = storm.spawn("collector-down", args).unwrap();
    d.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let pid = d.pid();
    let report = |label: &str, metrics: &str, started: Instant| {
        let moves =
            sum(metrics, "failoverd_failovers_total") + sum(metrics, "failoverd_failbacks_total");
        let dropped = sum(metrics, "failoverd_trace_spans_dropped_total");
        let events = sum(metrics, "failoverd_kube_events_dropped_total");
        println!(
            "{label:>6} t={:>4}s rss={} KiB moves={moves} spans_dropped={dropped} events_dropped={events}",
            started.elapsed().as_secs(),
            rss_kib(pid)
        );
    };
    let started = Instant::now();
    let (_, m) = d.get("/metrics").await.unwrap();
    println!(
        "{n} playbooks, tracing {}, storm for {minutes} min, primary toggled every {toggle:?}",
        if traced {
            format!("on, collector down ({dead})")
        } else {
            "off".to_string()
        }
    );
    report("start", &m, started);
    let end = started + Duration::from_secs(minutes * 60);
    let mut next_report = started + Duration::from_secs(30);
    let mut unhealthy = false;
    while Instant::now() < end {
        unhealthy = !unhealthy;
        storm
            .primary
            .set_health_status(if unhealthy { 503 } else { 200 });
        tokio::time::sleep(toggle).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            if let Ok((_, m)) = d.get("/metrics").await {
                report("", &m, started);
            }
        }
        assert!(d.is_running(), "the daemon died:\n{}", d.logs());
    }
    storm.primary.set_health_status(200);
    let (_, m) = d.get("/metrics").await.unwrap();
    report("end", &m, started);
    d.terminate(Duration::from_secs(20)).unwrap();
}
