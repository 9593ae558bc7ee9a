//! Failover latency of the real `failoverd` binary: fault → route written.
//!
//! Runs the demo playbook (probe interval 1 s, failureThreshold 3, `after: 1s`,
//! `minDwell: 1s`, `steps: [100]`) against two stand-ins and the file store, N times: stop
//! the primary's listener (at a different phase of the probe schedule each run), time until
//! the VirtualService file shows the failover (polled every 10 ms), heal, wait for the
//! failback, next run. Prints each run, then p50, p99, max and min, and the goal.
//!
//! ```text
//! cargo build --release -p failoverd && cargo bench -p chaos-tests --bench failover_latency
//! cargo bench -p chaos-tests --bench failover_latency -- --runs 5      # or RUNS=5
//! FAILOVERD_BIN=target/debug/failoverd cargo bench -p chaos-tests --bench failover_latency
//! TRACING=both cargo bench -p chaos-tests --bench failover_latency    # off, then on
//! ```
//!
//! `TRACING` = `off` (default), `on` or `both`: with tracing on, the daemon exports every
//! span (`sampleRatio: 1`) over OTLP/HTTP to `OTLP_ENDPOINT`, or to a real receiver started
//! here (rotel from PyPI, `python3 -m pip install rotel`); `OTLP_ENDPOINT=down` points it at
//! a port nothing listens on. `both` measures off then on in one run, with the same fault
//! phases, and prints the difference.
//!
//! `cargo bench` runs this from `target/release/deps`, so it uses `target/release/failoverd`
//! unless `FAILOVERD_BIN` says otherwise. Under `cargo test --all-targets` (no `--bench`
//! argument) it only checks that it was built and exits, unless `--runs`/`RUNS` is given.

use std::time::Duration;

use anyhow::{Context, bail};
use chaos_tests::{Scenario, percentile};
use failoverd::engine::Routing;

/// Default number of runs.
const DEFAULT_RUNS: usize = 20;
/// A run that has not failed over (or back) by then is aborted.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The goal: interval 1 s × threshold 3 + 300 ms.
const GOAL: Duration = Duration::from_millis(3300);

fn runs_arg() -> anyhow::Result<(Option<usize>, bool)> {
    let mut runs = None;
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--bench" {
            bench = true;
        } else if a == "--runs" {
            let v = args.next().context("--runs needs a number")?;
            runs = Some(v.parse().with_context(|| format!("--runs {v}"))?);
        } else if let Some(v) = a.strip_prefix("--runs=") {
            runs = Some(v.parse().with_context(|| format!("--runs={v}"))?);
        }
        // Anything else (cargo's filters, --nocapture, ...) is ignored.
    }
    if runs.is_none()
        && let Ok(v) = std::env::var("RUNS")
    {
        runs = Some(v.parse().with_context(|| format!("RUNS={v}"))?);
    }
    Ok((runs, bench))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let (runs, bench) = runs_arg()?;
    if !bench && runs.is_none() {
        println!(
            "failover_latency: not run (no --bench, --runs or RUNS); run it with \
             `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench failover_latency`"
        );
        return Ok(());
    }
    let runs = runs.unwrap_or(DEFAULT_RUNS);
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let modes: &[bool] = match std::env::var("TRACING").as_deref() {
        Err(_) | Ok("off") => &[false],
        Ok("on") => &[true],
        Ok("both") => &[false, true],
        Ok(other) => bail!("TRACING={other}: expected off, on or both"),
    };
    let mut s = Scenario::new(&[
        ("after: 5s", "after: 1s"),
        ("minDwell: 5s", "minDwell: 1s"),
        ("steps: [50, 100]", "steps: [100]"),
    ])
    .await?;
    println!(
        "failover_latency: {} ({runs} runs; probe interval 1s, failureThreshold 3)",
        chaos_tests::failoverd_bin().display()
    );
    let mut receiver = None;
    let mut p99s = Vec::new();
    for &traced in modes {
        let mut extra = Vec::new();
        if traced {
            let endpoint = match std::env::var("OTLP_ENDPOINT") {
                Ok(e) if e == "down" => format!("http://{}", chaos_tests::free_addr()?),
                Ok(e) => e,
                Err(_) => {
                    let (child, addr) = start_rotel(s.dir.path()).await?;
                    receiver = Some(child);
                    format!("http://{addr}")
                }
            };
            let cfg = s.dir.path().join("tracing.yaml");
            std::fs::write(
                &cfg,
                format!("tracing:\n  otlp: {{ endpoint: \"{endpoint}\" }}\n  sampleRatio: 1\n"),
            )?;
            extra = vec!["--config".to_string(), cfg.display().to_string()];
            println!("tracing on: OTLP/HTTP to {endpoint}");
        } else {
            println!("tracing off");
        }
        let p99 = measure(&mut s, runs, &extra).await?;
        p99s.push((traced, p99));
    }
    if let Some(mut r) = receiver {
        let _ = r.kill();
        let _ = r.wait();
    }
    if let [(false, off), (true, on)] = p99s[..] {
        println!(
            "tracing on - off at p99: {:+} ms",
            on.as_millis() as i128 - off.as_millis() as i128
        );
    }
    Ok(())
}

/// A real OTLP receiver (rotel's agent from its PyPI package) on a free loopback port.
async fn start_rotel(
    dir: &std::path::Path,
) -> anyhow::Result<(std::process::Child, std::net::SocketAddr)> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("running python3 to find rotel")?;
    if !out.status.success() {
        bail!("rotel is not installed: python3 -m pip install rotel (or set OTLP_ENDPOINT)");
    }
    let agent = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let http = chaos_tests::free_addr()?;
    let grpc = chaos_tests::free_addr()?;
    let child = std::process::Command::new(agent)
        .args(["start", "--exporter", "blackhole"])
        .args(["--otlp-http-endpoint", &http.to_string()])
        .args(["--otlp-grpc-endpoint", &grpc.to_string()])
        .stdout(std::fs::File::create(dir.join("rotel.out"))?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting rotel-agent")?;
    chaos_tests::wait_for("rotel to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(http).ok()
    })
    .await?;
    Ok((child, http))
}

/// `runs` failovers and failbacks on one daemon (`extra`: more `failoverd run` arguments);
/// prints each run and the percentiles; returns p99.
async fn measure(s: &mut Scenario, runs: usize, extra: &[String]) -> anyhow::Result<Duration> {
    let mut d = chaos_tests::Daemon::spawn_with(&s.paths, "failoverd", extra)?;
    if let Err(e) = d.wait_ready(RUN_TIMEOUT).await {
        bail!("{e:#}");
    }
    let mut samples = Vec::with_capacity(runs);
    let mut write_path = Vec::with_capacity(runs);
    // The audit log is the scenario's, shared by the modes: count this daemon's moves only.
    let before = s
        .audit()
        .iter()
        .filter(|r| r.action == "failover" && r.outcome == "written")
        .count();
    for run in 1..=runs {
        // Let a healthy streak build after the last failback, then fault at a different
        // phase of the 1 s probe schedule each run (failback is itself phase-locked to the
        // probes, so a fixed pause would measure one phase only): 1.5 s + a golden-ratio
        // sequence over [0, 1000) ms covers the interval evenly for any N.
        let phase = ((run as f64 * 0.618_033_988_75).fract() * 1000.0) as u64;
        tokio::time::sleep(Duration::from_millis(1500 + phase)).await;
        s.primary.stop();
        let took = match s
            .wait_routing(|r| r == Routing::Failover { target: 0 }, RUN_TIMEOUT)
            .await
        {
            Ok((_, took)) => took,
            Err(e) => bail!("run {run}: {e:#}\n{}", d.logs()),
        };
        samples.push(took);
        // The write path alone (where tracing adds its spans, the annotation and the
        // records' trace ids): the failover's intent record → its `written` record, as the
        // audit log timed them.
        let recs = chaos_tests::wait_for("the failover's written record", RUN_TIMEOUT, || {
            let recs = s.audit();
            let written = recs
                .iter()
                .filter(|r| r.action == "failover" && r.outcome == "written")
                .count();
            (written >= before + run).then_some(recs)
        })
        .await?;
        let last = |outcome: &str| {
            recs.iter()
                .rev()
                .find(|r| r.action == "failover" && r.outcome == outcome)
                .map(|r| r.time)
        };
        if let (Some(i), Some(w)) = (last("intent"), last("written")) {
            let d = w.duration_since(i);
            write_path.push(Duration::from_micros(d.as_micros().max(0) as u64));
        }
        s.primary
            .restart()
            .await
            .context("restarting the primary")?;
        let back = match s.wait_routing(|r| r == Routing::Primary, RUN_TIMEOUT).await {
            Ok((_, back)) => back,
            Err(e) => bail!("run {run}: no failback: {e:#}\n{}", d.logs()),
        };
        println!(
            "run {run:>3}: fault -> route written {:>5} ms   (heal -> failback {:>5} ms)",
            took.as_millis(),
            back.as_millis()
        );
    }
    let status = d.terminate(Duration::from_secs(10))?;
    if !status.success() {
        bail!("failoverd exited with {status} after SIGTERM\n{}", d.logs());
    }
    samples.sort();
    let ms = |p: u8| percentile(&samples, p).map_or(0, |d| d.as_millis());
    let p99 = percentile(&samples, 99).unwrap_or_default();
    write_path.sort();
    let us = |p: u8| percentile(&write_path, p).map_or(0, |d| d.as_micros());
    println!(
        "intent -> written record (the write path): p50 {} us, p99 {} us, max {} us",
        us(50),
        us(99),
        write_path.last().map_or(0, Duration::as_micros)
    );
    println!("p50 {} ms", ms(50));
    println!("p99 {} ms", ms(99));
    println!("max {} ms", samples.last().map_or(0, Duration::as_millis));
    println!("min {} ms", samples.first().map_or(0, Duration::as_millis));
    println!(
        "goal: p99 <= 3300 ms (interval 1s x threshold 3 + 300 ms): {}",
        if p99 <= GOAL { "met" } else { "MISSED" }
    );
    Ok(p99)
}
