//! Failover storm through the real daemon: N playbooks (default 100), each with its own
//! VirtualService on the Kubernetes API server emulator, all primaries down at once (one
//! primary stand-in stopped), the `kubernetes` store at its default rate limit (50/s, burst
//! 100), audit log on (an fsync per record). Then the same storm with one object whose
//! updates stall 8 s.
//!
//! Per playbook, from the fault (the stand-in stopped):
//! - `update`: the API server answered the route's update (the emulator's write log);
//! - `written`: the daemon's `written` audit record (after the read-back and the fsync).
//!
//! p50/p99/max of each, and the whole storm (the last `written`). Goal (issue 14) for 100:
//! every route within `interval × threshold` + 3 s.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench storm`
//! (`N=1000` for a larger fleet; `INTERVAL_MS`, `THRESHOLD` change the probes, default
//! 250 ms × 2; `KUBE_QPS`, `KUBE_BURST` the client-side rate limit). Bounded: each storm
//! waits at most 120 s.
//!
//! `DASHBOARD=1` adds a third storm with a dashboard polling `GET /v1/playbooks/{name}`
//! at 200 req/s across the playbooks (a viewer token; from 1 s before the fault until every
//! route is written, at most 60,000 calls): its p50/p99 against the plain storm's show
//! whether viewer reads slow failover writes. `DASHBOARD=only` runs just the plain storm
//! and the dashboard storm.
//!
//! `ELECTION=1` adds a storm with two replicas under leader election, so every audit record
//! is first placed in the cluster's audit chain (issue 15): its fault → written against the
//! plain storm's is what the chain costs a move; it also prints the standby's replication
//! lag (most records behind, sampled every 50 ms, and how long after the leader's last
//! record the standby held it) and what the chain cost etcd (bytes sent and held per
//! record). `ELECTION=only` runs just the plain storm and that one.
//!
//! A move is two requests (read, update; the update's answer is the read-back) from one
//! write bucket: at the default 50/s with a burst of 100, N moves need at least
//! (2N − 100) / 50 s of tokens (2 s for N = 100, 38 s for N = 1,000), whatever the writer
//! does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use chaos_tests::percentile;
use chaos_tests::storm::{Storm, Timing, object_name};
use failoverd::engine::Routing;

const FAILED_OVER: Routing = Routing::Failover { target: 0 };
const STALL: Duration = Duration::from_secs(8);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(what: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q| percentile(&v, q).map_or("-".to_string(), |d| format!("{d:.2?}"));
    format!(
        "{what}: n={} p50 {} p99 {} max {}",
        v.len(),
        p(50),
        p(99),
        p(100)
    )
}

/// One storm; `stalled`: the playbook whose object's updates stall; `dashboard`: viewer
/// load at 200 req/s during it.
async fn storm(
    n: usize,
    timing: Timing,
    stalled: Option<usize>,
    dashboard: bool,
    election: bool,
) -> Vec<Duration> {
    let mut storm = Storm::new(n, timing).await.unwrap();
    // `KUBE_QPS` / `KUBE_BURST` change the client-side rate limit (default 50 / 100).
    let mut extra: Vec<String> = Vec::new();
    for (var, flag) in [("KUBE_QPS", "--kube-qps"), ("KUBE_BURST", "--kube-burst")] {
        if let Ok(v) = std::env::var(var) {
            extra.extend([flag.to_string(), v]);
        }
    }
    if dashboard {
        let tokens = storm.viewer_tokens().unwrap();
        extra.extend(["--tokens".to_string(), tokens.display().to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let name = match (stalled.is_some(), dashboard) {
        (true, _) => "stalled",
        (false, true) => "dashboard",
        (false, false) => "storm",
    };
    let (mut d, standby) = if election {
        // Two replicas: the leader (its audit file is the one read below) and a standby
        // with its own file, copying the chain.
        let mut leader = storm
            .spawn_replica("replica-a", &storm.paths.audit, &extra)
            .unwrap();
        leader.wait_ready(Duration::from_secs(120)).await.unwrap();
        wait_metric(&leader, "failoverd_leader", |v| v == 1).await;
        let standby_audit = storm.dir.path().join("standby").join("audit.jsonl");
        let mut standby = storm
            .spawn_replica("replica-b", &standby_audit, &extra)
            .unwrap();
        standby.wait_ready(Duration::from_secs(120)).await.unwrap();
        (leader, Some((standby, standby_audit)))
    } else {
        (storm.spawn(name, &extra).unwrap(), None)
    };
    d.wait_ready(Duration::from_secs(120)).await.unwrap();
    // Let the first probe round and the start-up reads settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(i) = stalled {
        storm.emu.stall_writes_to(&object_name(i), STALL);
    }
    let load = dashboard.then(|| {
        chaos_tests::storm::Dashboard::start(d.addr, n, 200, 60_000, Duration::from_secs(300))
    });
    if load.is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The standby's replication lag, sampled every 50 ms through the storm.
    let lag = standby.as_ref().map(|(s, _)| {
        let addr = s.addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0u64;
            // Bounded: at most 120 s of samples.
            for _ in 0..2400 {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if let Some(v) = metric(addr, "failoverd_audit_replica_lag_records").await {
                    max = max.max(v);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        });
        (stop, task)
    });
    let fault = SystemTime::now();
    storm.primary.stop();
    let skip: Vec<usize> = stalled.into_iter().collect();
    let missing = storm
        .wait_all(FAILED_OVER, Duration::from_secs(120), &skip)
        .await;
    assert!(missing.is_empty(), "never failed over: {missing:?}");
    // The `written` records follow the read-back; wait for all of them (bounded).
    let written = |records: &[failoverd::audit::Record]| -> Vec<Option<Duration>> {
        (0..n)
            .map(|i| {
                let pb = format!("pb-{i:04}");
                records
                    .iter()
                    .find(|r| r.playbook == pb && r.action == "failover" && r.outcome == "written")
                    .and_then(|r| {
                        let at = SystemTime::UNIX_EPOCH
                            + Duration::from_nanos(r.time.as_nanosecond() as u64);
                        at.duration_since(fault).ok()
                    })
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let records_written = loop {
        let records = failoverd::audit::read_all(&storm.paths.audit).unwrap_or_default();
        let w = written(&records);
        let done = w
            .iter()
            .enumerate()
            .all(|(i, t)| t.is_some() || skip.contains(&i));
        if done || std::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(load) = load {
        let answers = load.stop().await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let from_cache = answers
            .iter()
            .filter(|a| {
                a.body
                    .as_ref()
                    .is_some_and(|b| b["store"]["source"] == "watch-cache")
            })
            .count();
        let gets = storm
            .emu
            .reads()
            .iter()
            .filter(|r| r.kind == "VirtualService" && r.verb == "get" && r.time >= fault)
            .count();
        println!(
            "  dashboard: {} calls, {ok} answered 200, {from_cache} from the watch cache; VirtualService GETs the API server saw since the fault: {gets}",
            answers.len()
        );
    }
    let updates = storm.first_updates(fault);
    {
        // Playbooks whose move is in the API server but has no `written` record: what the
        // audit says about them instead (a seam if it is `failed` or `unchanged`).
        let records = failoverd::audit::read_all(&storm.paths.audit).unwrap_or_default();
        for (i, t) in records_written.iter().enumerate() {
            if t.is_none() && !skip.contains(&i) {
                let pb = format!("pb-{i:04}");
                let outcomes: Vec<String> = records
                    .iter()
                    .filter(|r| r.playbook == pb)
                    .map(|r| format!("{}: {}", r.action, r.outcome))
                    .collect();
                println!("  {pb} has no `written` record: {outcomes:?}");
            }
        }
    }
    {
        let records = failoverd::audit::read_all(&storm.paths.audit).unwrap_or_default();
        let intents: Vec<Duration> = records
            .iter()
            .filter(|r| r.action == "failover" && r.outcome == "intent")
            .filter_map(|r| {
                (SystemTime::UNIX_EPOCH + Duration::from_nanos(r.time.as_nanosecond() as u64))
                    .duration_since(fault)
                    .ok()
            })
            .collect();
        println!("  {}", summary("fault → intent recorded", intents));
    }
    let others = |v: &[Option<Duration>]| -> Vec<Duration> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .filter_map(|(_, t)| *t)
            .collect()
    };
    println!("  {}", summary("fault → update answered", others(&updates)));
    println!(
        "  {}",
        summary("fault → written (audit)", others(&records_written))
    );
    if let (Some((standby, standby_audit)), Some((stop, task))) = (&standby, lag) {
        let leader_lines = line_count(&storm.paths.audit);
        let last = SystemTime::now();
        let mut caught_up = None;
        for _ in 0..600 {
            if line_count(standby_audit) >= leader_lines {
                caught_up = Some(last.elapsed().unwrap_or_default());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let max_lag = task.await.unwrap_or(0);
        println!(
            "  standby: most records behind at a replicator round (failoverd_audit_replica_lag_records, sampled every 50 ms) {max_lag}; once the leader's file held all {leader_lines} records, the standby's held them {} later (its replicator runs every second)",
            caught_up.map_or("30 s: NOT caught up".to_string(), |d| format!("{d:.2?}"))
        );
        let _ = standby;
        etcd_use(&storm);
    }
    if let Some(i) = stalled {
        let pb = format!("pb-{i:04}");
        let records = failoverd::audit::read_all(&storm.paths.audit).unwrap_or_default();
        let outcomes: Vec<String> = records
            .iter()
            .filter(|r| r.playbook == pb && r.action == "failover")
            .map(|r| r.outcome.chars().take(60).collect())
            .collect();
        println!("  stalled {pb}: outcomes so far {outcomes:?}");
        storm.emu.stall_writes_to(&object_name(i), Duration::ZERO);
    }
    d.kill().unwrap();
    if let Some((mut s, _)) = standby {
        s.kill().unwrap();
    }
    others(&records_written)
}

/// A gauge or counter from a daemon's `/metrics` (None when the page cannot be read).
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (code, body) = chaos_tests::http_get(addr, "/metrics", Duration::from_secs(2))
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (at most 60 s) until `name` on the daemon's `/metrics` satisfies `ok`.
async fn wait_metric(d: &chaos_tests::Daemon, name: &str, ok: impl Fn(u64) -> bool) {
    for _ in 0..1200 {
        if metric(d.addr, name).await.is_some_and(&ok) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached the wanted value\n{}", d.logs());
}

fn line_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// What the audit chain cost the API server (etcd): bytes of every ConfigMap update and
/// create it took, and bytes the chain's objects hold now, per record.
fn etcd_use(storm: &Storm) {
    let writes: Vec<_> = storm
        .emu
        .writes()
        .into_iter()
        .filter(|w| w.kind == "ConfigMap" && w.status < 300)
        .collect();
    let written: usize = writes.iter().map(|w| w.body.len()).sum();
    let Some(head) = storm
        .emu
        .get("v1", "ConfigMap", "failoverd", "failoverd-leader-audit")
    else {
        println!("  etcd: no audit chain head object");
        return;
    };
    let h: serde_json::Value =
        serde_json::from_str(head["data"]["head"].as_str().unwrap_or("{}")).unwrap_or_default();
    let records = h["seq"].as_u64().unwrap_or(0).max(1) as usize;
    let mut held = head.to_string().len();
    for s in h["segments"].as_array().into_iter().flatten() {
        let name = format!(
            "failoverd-leader-audit-{:012}-{:012}",
            s["first"].as_u64().unwrap_or(0),
            s["last"].as_u64().unwrap_or(0)
        );
        held += storm
            .emu
            .get("v1", "ConfigMap", "failoverd", &name)
            .map_or(0, |o| o.to_string().len());
    }
    println!(
        "  etcd: {records} records; {} writes of the chain's ConfigMaps, {written} bytes sent ({} per record); objects now hold {held} bytes ({} per record)",
        writes.len(),
        written / records,
        held / records
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().all(|a| a != "--bench") {
        println!("storm: run with `cargo bench -p chaos-tests --bench storm`");
        return;
    }
    let n = knob("N", 100) as usize;
    let timing = Timing {
        interval: Duration::from_millis(knob("INTERVAL_MS", 250)),
        timeout: Duration::from_millis(knob("INTERVAL_MS", 250).min(200)),
        threshold: knob("THRESHOLD", 2) as u32,
    };
    let goal = timing.detection() + Duration::from_secs(3);
    println!(
        "storm: {n} playbooks, probes {:?} × {}, kubernetes store (emulator), rate limit {}/s burst {}, audit on; goal: every route within {goal:?}",
        timing.interval,
        timing.threshold,
        std::env::var("KUBE_QPS").unwrap_or_else(|_| "50".into()),
        std::env::var("KUBE_BURST").unwrap_or_else(|_| "100".into())
    );
    let dashboard = std::env::var("DASHBOARD").ok();
    println!("all primaries down:");
    let plain = storm(n, timing, None, false, false).await;
    let whole = plain.iter().max().copied().unwrap_or_default();
    println!(
        "  whole storm (last written): {whole:.2?} (goal {goal:?}: {})",
        if plain.len() == n && whole <= goal {
            "met"
        } else {
            "NOT met"
        }
    );
    if dashboard.is_some() {
        println!("all primaries down, dashboard 200 req/s of GET /v1/playbooks/{{name}}:");
        let loaded = storm(n, timing, None, true, false).await;
        let whole = loaded.iter().max().copied().unwrap_or_default();
        println!("  whole storm (last written): {whole:.2?}");
    }
    if std::env::var("ELECTION").is_ok() {
        println!(
            "all primaries down, two replicas under leader election (the audit chain in the cluster):"
        );
        let chained = storm(n, timing, None, false, true).await;
        let whole = chained.iter().max().copied().unwrap_or_default();
        println!("  whole storm (last written): {whole:.2?}");
        if std::env::var("ELECTION").as_deref() == Ok("only") {
            return;
        }
    }
    if dashboard.as_deref() == Some("only") {
        return;
    }
    println!("all primaries down, pb-0000's updates stalled {STALL:?}:");
    let stalled = storm(n, timing, Some(0), false, false).await;
    let whole = stalled.iter().max().copied().unwrap_or_default();
    println!("  whole storm but the stalled one (last written): {whole:.2?}");
}
