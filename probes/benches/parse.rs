//! Exposition parsing throughput on a ~10 MB Envoy-style page.
//! Run: `cargo bench -p failover-probes --bench parse`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/envoy.rs"]
mod envoy;

use std::time::Instant;

use failover_probes::exposition::{Format, parse};

fn main() {
    // About 3.5 KB per cluster: 2850 clusters ≈ 10 MB.
    let page = envoy::envoy_page(2850, 123_456, 789);
    let mb = page.len() as f64 / 1e6;
    let series = parse(&page, Format::PrometheusText).unwrap().len();
    let rounds = 10;
    let mut best = f64::INFINITY;
    let begun = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let samples = parse(&page, Format::PrometheusText).unwrap();
        std::hint::black_box(&samples);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mean = begun.elapsed().as_secs_f64() / f64::from(rounds);
    println!(
        "page {mb:.2} MB, {series} series; {rounds} rounds: mean {:.1} ms ({:.0} MB/s, {:.2} M series/s), best {:.1} ms ({:.0} MB/s)",
        mean * 1e3,
        mb / mean,
        series as f64 / mean / 1e6,
        best * 1e3,
        mb / best
    );
}
