#![allow(clippy::unwrap_used)]
//! What users feel when a primary goes down: the user-visible error window, measured through a
//! routing proxy that follows the VirtualService (as Envoy follows istiod) under a steady load.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench error_window`
//!
//! Each run: the demo playbook as shipped (probes every 1 s, `failureThreshold: 3`), the real
//! release binary, the file store, two stand-ins, the proxy (no push delay, 1 s upstream
//! timeout) and 50 requests/s through it. After 1 s of clean traffic the primary's listener
//! closes; the run ends once the proxy routes to the DR stand-in and one more second of
//! traffic is served. Prints each run's error window (first failed request's start to the last
//! one's end) and failed-request count, then p50/p99 over the runs. Goal: p99 <= 5 s.
//! `RUNS=N` changes the number of runs (default 20).

use std::time::{Duration, Instant};

use chaos_tests::rig::{Rig, window};
use chaos_tests::{DR_HOST, percentile};
use failoverd::engine::Routing;

const SEC: Duration = Duration::from_secs(1);
const RATE: u32 = 50;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "error_window: {runs} runs of `primary down`, probes 1 s x threshold 3, {RATE} req/s through the routing proxy ({})",
        chaos_tests::failoverd_bin().display()
    );
    let mut windows = Vec::new();
    let mut failed_counts = Vec::new();
    let mut moved_after = Vec::new();
    for run in 1..=runs {
        let mut rig = Rig::start(&format!("run{run}"), &[], "1s", "500ms", &[])
            .await
            .unwrap();
        let load = rig.load(RATE, 60 * SEC);
        tokio::time::sleep(SEC).await;
        let fault = Instant::now();
        rig.s.primary.stop();
        rig.wait_routing(|r| r == Routing::Failover { target: 0 }, 30 * SEC)
            .await
            .unwrap();
        let written = fault.elapsed();
        rig.wait_proxy(DR_HOST, 5 * SEC).await.unwrap();
        tokio::time::sleep(SEC).await;
        let report = load.stop(5 * SEC).await;
        let (w, failed, _) = window(&report, fault);
        println!(
            "run {run:>2}: route written {:>6.0} ms after the fault; error window {:>6.0} ms; {failed:>3} of {} requests failed",
            written.as_secs_f64() * 1000.0,
            w.as_secs_f64() * 1000.0,
            report.after(fault).count()
        );
        windows.push(w);
        failed_counts.push(failed);
        moved_after.push(written);
        rig.d.terminate(10 * SEC).unwrap();
    }
    windows.sort();
    moved_after.sort();
    failed_counts.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let p = |v: &[usize], q: u8| percentile(v, q).unwrap_or(0);
    println!(
        "error window: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (goal p99 <= 5000 ms)",
        ms(percentile(&windows, 50)),
        ms(percentile(&windows, 99)),
        ms(windows.last().copied())
    );
    println!(
        "route written after the fault: p50 {:.0} ms, p99 {:.0} ms",
        ms(percentile(&moved_after, 50)),
        ms(percentile(&moved_after, 99))
    );
    println!(
        "failed requests per run: p50 {}, p99 {}, max {} (at {RATE} req/s)",
        p(&failed_counts, 50),
        p(&failed_counts, 99),
        failed_counts.last().copied().unwrap_or(0)
    );
}
