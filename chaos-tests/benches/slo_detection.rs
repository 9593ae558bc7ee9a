#![allow(clippy::unwrap_used)]
//! SLO signals end to end: the real `failoverd` binary against a real Prometheus (1 s scrape,
//! 1 s evaluation) scraping stand-in services. Two measurements:
//!
//! **detection** — time from an error-rate change (a stand-in's error share 0 → 100 %) to the
//! failover written in the file store (polled every 10 ms), for `--runs` runs (default 10),
//! p50/p99. Each run has its own stand-in `svcN` and two playbooks on it, so two SLO forms are
//! measured on the same change:
//! - `threshold`: `prometheus: { query: <error ratio over [3s]>, above: 0.1 }` — the pipeline
//!   (scrape, evaluation tick, query, engine, write) with almost no window arithmetic;
//! - `burn-rate`: `ratio: { objective: 95, burnRates: [{ long: 20s, short: 5s, factor: 5 }] }`
//!   — the 20 s window must fill past 0.25 first (≈ 5 s of 100 % errors), plus the pipeline.
//!
//! All playbooks run in one daemon; run N's error change comes 1.37 s after run N−1's, so the
//! changes fall at evenly spread phases of the 1 s scrape and evaluation grids. The first
//! change waits until Prometheus holds a full 20 s of history.
//!
//! **load** — 1,000 playbooks (`--playbooks`) sharing 10 expressions, each with an SLO on its
//! primary and one on its failover target (evaluationInterval 1 s): the queries per second
//! Prometheus itself counts, i.e. the increase of
//! `prometheus_http_requests_total{handler="/api/v1/query"}` (all codes) on Prometheus's own
//! `/metrics` over a measured window (`--measure-secs`, default 60), cross-checked with
//! `prometheus_engine_query_duration_seconds_count{slice="inner_eval"}`. Two phases:
//! threshold SLOs (10 expressions × 1 window → expected 10/s) and ratio SLOs (10 services ×
//! 2 windows × 2 queries, errors and total → expected 40/s). The harness sends no queries
//! while it measures.
//!
//! ```text
//! cargo build --release -p failoverd && cargo bench -p chaos-tests --bench slo_detection
//! cargo bench -p chaos-tests --bench slo_detection -- --part detection --runs 20
//! cargo bench -p chaos-tests --bench slo_detection -- --part load --measure-secs 30
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench`) it only checks that it was built.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos_tests::prometheus::{ratio_expr, ratio_slo_item, sum_series, write_file};
use chaos_tests::{
    DEMO_VIRTUAL_SERVICE, Daemon, DaemonPaths, Prometheus, StandIn, percentile, wait_routing,
};
use failoverd::engine::Routing;
use failoverd::playbook::{self, Playbook};

const RUN_TIMEOUT: Duration = Duration::from_secs(40);
const STAGGER: Duration = Duration::from_millis(1370);

struct Args {
    bench: bool,
    part: String,
    runs: usize,
    measure: Duration,
    playbooks: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        bench: false,
        part: "all".into(),
        runs: 10,
        measure: Duration::from_secs(60),
        playbooks: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match x.as_str() {
            "--bench" => a.bench = true,
            "--part" => a.part = val("--part")?,
            "--runs" => a.runs = val("--runs")?.parse()?,
            "--measure-secs" => a.measure = Duration::from_secs(val("--measure-secs")?.parse()?),
            "--playbooks" => a.playbooks = val("--playbooks")?.parse()?,
            _ => {} // cargo's filters, --nocapture, ...
        }
    }
    if !["all", "detection", "load"].contains(&a.part.as_str()) {
        bail!("--part must be all, detection or load");
    }
    if a.runs == 0 || a.playbooks == 0 {
        bail!("--runs and --playbooks must be at least 1");
    }
    Ok(a)
}

/// One playbook: primary `web.demo` route in VS `demo/<vs>`, failover to `web.demo-dr`,
/// the given `probes:` and `slos:` items, manual failback, `onMissing: hold`.
fn playbook_yaml(name: &str, vs: &str, probes: &str, slos: &str) -> String {
    format!(
        "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: {name} }}\nspec:\n  \
         virtualService: {{ namespace: demo, name: {vs} }}\n  route: primary\n  \
         primary: {{ host: web.demo.svc.cluster.local, subset: v1 }}\n  failover:\n    \
         - {{ host: web.demo-dr.svc.cluster.local }}\n{probes}  slos:\n{slos}  \
         failback: {{ mode: manual }}\n  minDwell: 1s\n  onMissing: hold\n"
    )
}

fn threshold_slo_item(name: &str, target: &str, expr: &str, above: f64) -> String {
    format!(
        "    - name: {name}\n      target: {target}\n      evaluationInterval: 1s\n      \
         timeout: 500ms\n      prometheus:\n        query: '{expr}'\n        above: {above}\n"
    )
}

fn dr_probe(dr: SocketAddr) -> String {
    format!(
        "  probes:\n    - name: dr-health\n      target: failover[0]\n      \
         http: {{ url: \"http://{dr}/healthz\" }}\n      interval: 1s\n      timeout: 500ms\n"
    )
}

/// Writes playbook `name` (and its VirtualService `demo/<name>` in the store); returns it parsed.
fn write_playbook(paths: &DaemonPaths, name: &str, text: &str) -> anyhow::Result<Playbook> {
    let file = paths.playbooks.join(format!("{name}.yaml"));
    write_file(&file, text)?;
    let vs = DEMO_VIRTUAL_SERVICE.replacen("  name: web\n", &format!("  name: {name}\n"), 1);
    write_file(&paths.store.join("demo").join(format!("{name}.yaml")), &vs)?;
    Ok(playbook::load_file(&file)
        .map_err(|p| anyhow::anyhow!("{}", playbook::Problems(p)))?
        .playbook)
}

fn daemon_paths(dir: &Path) -> DaemonPaths {
    DaemonPaths {
        playbooks: dir.join("playbooks"),
        store: dir.join("routes"),
        audit: dir.join("audit.jsonl"),
        logs: dir.join("logs"),
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |p: u8| percentile(samples, p).map_or(0, |d| d.as_millis());
    println!(
        "{label:<10} n={:<3} p50 {:>5} ms   p99 {:>5} ms   min {:>5} ms   max {:>5} ms",
        samples.len(),
        ms(50),
        ms(99),
        samples.first().map_or(0, |d| d.as_millis()),
        samples.last().map_or(0, |d| d.as_millis()),
    );
}

async fn detection(runs: usize) -> anyhow::Result<()> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let dr = StandIn::start("dr", loopback).await?;
    let mut svcs = Vec::new();
    for i in 0..runs {
        svcs.push(StandIn::start(&format!("svc{i}"), loopback).await?);
    }
    let mut targets: Vec<SocketAddr> = svcs.iter().map(StandIn::addr).collect();
    targets.push(dr.addr());
    let prom = Prometheus::start(&targets).await?;
    let dir = tempfile::tempdir()?;
    let paths = daemon_paths(dir.path());
    let mut pbs = Vec::new();
    for i in 0..runs {
        let svc = format!("svc{i}");
        let thr = threshold_slo_item("errors-3s", "primary", &ratio_expr(&svc, "3s"), 0.1);
        let burn = ratio_slo_item("burn", "primary", &svc, 95.0, ("20s", "5s", 5.0));
        let a = write_playbook(
            &paths,
            &format!("thr{i}"),
            &playbook_yaml(
                &format!("thr{i}"),
                &format!("thr{i}"),
                &dr_probe(dr.addr()),
                &thr,
            ),
        )?;
        let b = write_playbook(
            &paths,
            &format!("burn{i}"),
            &playbook_yaml(
                &format!("burn{i}"),
                &format!("burn{i}"),
                &dr_probe(dr.addr()),
                &burn,
            ),
        )?;
        pbs.push((a, b));
    }
    let mut d = Daemon::spawn_with(&paths, "failoverd", &["--prometheus", &prom.url()])?;
    d.wait_ready(RUN_TIMEOUT).await?;
    println!(
        "detection: {} and {} ({runs} runs; scrape 1s, evaluation 1s); waiting for 20 s of history",
        chaos_tests::failoverd_bin().display(),
        chaos_tests::prometheus::prometheus_bin()?.display()
    );
    let last = format!("svc{}", runs - 1);
    prom.wait_value(
        &format!(
            "count_over_time(istio_requests_total{{destination_service=\"{last}\",response_code=\"500\"}}[20s])"
        ),
        |n| n >= 19.0,
        Duration::from_secs(60),
    )
    .await?;
    // Every playbook has evaluated healthy by now; any early move would spoil the run.
    for (a, b) in &pbs {
        for pb in [a, b] {
            wait_routing(
                &paths.store,
                pb,
                |r| r == Routing::Primary,
                Duration::from_secs(1),
            )
            .await
            .with_context(|| format!("{} is not on its primary", pb.name()))?;
        }
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, (a, b)) in pbs.into_iter().enumerate() {
        tokio::time::sleep_until((t0 + STAGGER * i as u32).into()).await;
        svcs[i].set_error_share(1.0);
        for pb in [a, b] {
            let store = paths.store.clone();
            tasks.push(tokio::spawn(async move {
                let failed = |r| r == Routing::Failover { target: 0 };
                (
                    i,
                    pb.name().to_string(),
                    wait_routing(&store, &pb, failed, RUN_TIMEOUT).await,
                )
            }));
        }
    }
    let (mut thr, mut burn) = (Vec::new(), Vec::new());
    let mut lines = Vec::new();
    for t in tasks {
        let (i, name, r) = t.await?;
        let took = match r {
            Ok((_, took)) => took,
            Err(e) => bail!("run {i} ({name}): {e:#}\n{}", d.logs()),
        };
        lines.push((i, name.clone(), took));
        if name.starts_with("thr") {
            thr.push(took);
        } else {
            burn.push(took);
        }
    }
    lines.sort_by_key(|(i, n, _)| (*i, n.clone()));
    for (i, name, took) in &lines {
        println!(
            "run {i:>3} {:<10} error share 0 -> 100 %: route written after {:>5} ms",
            if name.starts_with("thr") {
                "threshold"
            } else {
                "burn-rate"
            },
            took.as_millis()
        );
    }
    report("threshold", &mut thr);
    report("burn-rate", &mut burn);
    let status = d.terminate(Duration::from_secs(10))?;
    if !status.success() {
        bail!("failoverd exited with {status} after SIGTERM\n{}", d.logs());
    }
    Ok(())
}

async fn load_phase(
    prom: &Prometheus,
    services: &[String],
    n: usize,
    ratio: bool,
    measure: Duration,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = daemon_paths(dir.path());
    let slo = |name: &str, target: &str, svc: &str| {
        if ratio {
            ratio_slo_item(name, target, svc, 95.0, ("20s", "5s", 5.0))
        } else {
            threshold_slo_item(name, target, &ratio_expr(svc, "5s"), 0.5)
        }
    };
    for i in 0..n {
        let k = services.len();
        let slos = slo("primary-errors", "primary", &services[i % k])
            + &slo("dr-errors", "failover[0]", &services[(i + 1) % k]);
        let name = format!("pb{i}");
        let text = playbook_yaml(&name, &name, "", &slos);
        write_file(&paths.playbooks.join(format!("{name}.yaml")), &text)?;
        let vs = DEMO_VIRTUAL_SERVICE.replacen("  name: web\n", &format!("  name: {name}\n"), 1);
        write_file(&paths.store.join("demo").join(format!("{name}.yaml")), &vs)?;
    }
    let (form, expected) = if ratio {
        ("ratio SLOs (20s/5s burn rate)", services.len() * 2 * 2)
    } else {
        ("threshold SLOs", services.len())
    };
    let mut d = Daemon::spawn_with(&paths, "failoverd", &["--prometheus", &prom.url()])?;
    d.wait_ready(RUN_TIMEOUT).await?;
    // Past the daemon's start-up and Prometheus's first scrapes: steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let http = |t: &str| {
        sum_series(
            t,
            "prometheus_http_requests_total",
            &[("handler", "/api/v1/query")],
        )
    };
    let engine = |t: &str| {
        sum_series(
            t,
            "prometheus_engine_query_duration_seconds_count",
            &[("slice", "inner_eval")],
        )
    };
    let unknown = |t: &str| sum_series(t, "failoverd_signal_unknown_total", &[]);
    let (_, m0) = prom.get("/metrics").await?;
    let (_, u0) = d.get("/metrics").await?;
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let (_, m1) = prom.get("/metrics").await?;
    let (_, u1) = d.get("/metrics").await?;
    let secs = t0.elapsed().as_secs_f64();
    let qps = (http(&m1) - http(&m0)) / secs;
    let eps = (engine(&m1) - engine(&m0)) / secs;
    println!(
        "load: {n} playbooks × 2 {form} over {} services, evaluationInterval 1s, measured {secs:.1} s",
        services.len()
    );
    println!(
        "  /api/v1/query requests: {qps:.2}/s (prometheus_http_requests_total{{handler=\"/api/v1/query\"}})"
    );
    println!(
        "  engine queries:         {eps:.2}/s (prometheus_engine_query_duration_seconds_count{{slice=\"inner_eval\"}})"
    );
    println!(
        "  expected with deduplication: {expected}/s; without: {}/s",
        n * 2 * (expected / services.len())
    );
    println!(
        "  failoverd_signal_unknown_total increase while measured: {}",
        unknown(&u1) - unknown(&u0)
    );
    let status = d.terminate(Duration::from_secs(20))?;
    if !status.success() {
        bail!("failoverd exited with {status} after SIGTERM\n{}", d.logs());
    }
    Ok(())
}

async fn load(n: usize, measure: Duration) -> anyhow::Result<()> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut svcs = Vec::new();
    for i in 0..10 {
        svcs.push(StandIn::start(&format!("load{i}"), loopback).await?);
    }
    let names: Vec<String> = (0..10).map(|i| format!("load{i}")).collect();
    let targets: Vec<SocketAddr> = svcs.iter().map(StandIn::addr).collect();
    let prom = Prometheus::start(&targets).await?;
    prom.wait_value(
        &ratio_expr("load9", "5s"),
        |v| v == 0.0,
        Duration::from_secs(30),
    )
    .await?;
    load_phase(&prom, &names, n, false, measure).await?;
    load_phase(&prom, &names, n, true, measure).await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if !a.bench {
        println!(
            "slo_detection: not run (no --bench); run it with \
             `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench slo_detection`"
        );
        return Ok(());
    }
    if a.part != "load" {
        detection(a.runs).await?;
    }
    if a.part != "detection" {
        load(a.playbooks, a.measure).await?;
    }
    Ok(())
}
