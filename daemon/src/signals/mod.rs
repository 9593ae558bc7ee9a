//! SLO signals from Prometheus: instant queries over the HTTP API, threshold and
//! multiwindow burn-rate evaluation, and Unknown kept apart from healthy and unhealthy.
//! `scrape` SLOs skip Prometheus: each reads its metrics page directly on its own timer
//! (see [`spawn`]) and reports through the same [`SloResult`] channel.
//!
//! Every SLO is evaluated on a grid aligned to its `evaluationInterval`, so SLOs with the
//! same interval are due in the same tick, and an expression shared by many playbooks is
//! queried once per tick.

mod evaluate;
mod prometheus;
mod scrape;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::playbook::{Loaded, SloSpec};

pub use evaluate::*;
pub use prometheus::*;
pub use scrape::*;

/// Queries in flight at once: enough to finish a tick of a large fleet quickly, few enough
/// not to look like an attack to a shared Prometheus.
const MAX_CONCURRENT_QUERIES: usize = 16;

/// One SLO evaluation result for the controller.
#[derive(Clone, Debug)]
pub struct SloResult {
    /// Playbook index.
    pub playbook: usize,
    /// SLO index within the playbook.
    pub slo: usize,
    /// The evaluation.
    pub eval: Evaluation,
    /// When it finished.
    pub at: Instant,
}

struct Entry {
    playbook: usize,
    slo: usize,
    spec: SloSpec,
    server: String,
    interval: Duration,
    next: Instant,
}

/// The Prometheus server each SLO uses (its own `server`, else the default); always None
/// for a `scrape` SLO, which needs none (see [`needs_server`]).
pub fn server_for(slo: &SloSpec, default: Option<&str>) -> Option<String> {
    if slo.scrape.is_some() {
        return None;
    }
    slo.server
        .as_ref()
        .map(|s| s.value.clone())
        .or_else(|| default.map(String::from))
}

/// Whether an SLO is read through Prometheus (and so needs a server).
pub fn needs_server(slo: &SloSpec) -> bool {
    slo.scrape.is_none()
}

/// Spawns the SLO evaluators: one task for every Prometheus SLO, one per `scrape` SLO.
/// Returns None when no playbook has SLOs; the handle finishes once all have stopped.
pub fn spawn(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: PromClient,
    tx: mpsc::Sender<SloResult>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut scrapes = tokio::task::JoinSet::new();
    for (pi, l) in playbooks.iter().enumerate() {
        for (si, s) in l.playbook.spec.slos.iter().enumerate() {
            if s.scrape.is_some() {
                scrapes.spawn(run_scrape(pi, si, s.clone(), tx.clone(), shutdown.clone()));
            }
        }
    }
    let prom = spawn_prometheus(playbooks, default_server, client, tx, shutdown);
    if prom.is_none() && scrapes.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        if let Some(p) = prom {
            let _ = p.await;
        }
        while scrapes.join_next().await.is_some() {}
    }))
}

/// Spawns the Prometheus evaluator. Returns None when no SLO reads Prometheus.
fn spawn_prometheus(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: PromClient,
    tx: mpsc::Sender<SloResult>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let start = Instant::now();
    let mut entries: Vec<Entry> = Vec::new();
    for (pi, l) in playbooks.iter().enumerate() {
        for (si, s) in l.playbook.spec.slos.iter().enumerate() {
            let Some(server) = server_for(s, default_server) else {
                continue;
            };
            entries.push(Entry {
                playbook: pi,
                slo: si,
                spec: s.clone(),
                server,
                interval: s.evaluation_interval.get(),
                next: start,
            });
        }
    }
    if entries.is_empty() {
        return None;
    }
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES));
    Some(tokio::spawn(async move {
        loop {
            let Some(due_at) = entries.iter().map(|e| e.next).min() else {
                return;
            };
            tokio::select! {
                _ = shutdown.changed() => { if *shutdown.borrow() { return; } continue; }
                _ = tokio::time::sleep_until(due_at) => {}
            }
            let now = Instant::now();
            let due: Vec<usize> = (0..entries.len())
                .filter(|i| entries[*i].next <= now)
                .collect();
            // Deduplicate: one query per (server, expression) per tick.
            let mut wanted: HashMap<(String, String), (bool, Duration, Duration)> = HashMap::new();
            for &i in &due {
                let e = &entries[i];
                for (q, zero) in queries(&e.spec) {
                    let slot = wanted.entry((e.server.clone(), q)).or_insert((
                        zero,
                        e.spec.timeout.get(),
                        e.interval,
                    ));
                    slot.1 = slot.1.max(e.spec.timeout.get());
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for ((server, q), (zero, timeout, budget)) in wanted {
                let client = client.clone();
                let sem = sem.clone();
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let r = client
                        .query_with_retry(&server, &q, timeout, budget, zero)
                        .await;
                    ((server, q), r)
                });
            }
            let mut results: HashMap<(String, String), Result<Sample, QueryError>> = HashMap::new();
            while let Some(r) = set.join_next().await {
                if let Ok((k, v)) = r {
                    results.insert(k, v);
                }
            }
            for &i in &due {
                let e = &mut entries[i];
                let per: HashMap<String, Result<Sample, QueryError>> = queries(&e.spec)
                    .into_iter()
                    .filter_map(|(q, _)| {
                        results
                            .get(&(e.server.clone(), q.clone()))
                            .map(|r| (q, r.clone()))
                    })
                    .collect();
                let eval = evaluate(&e.spec, &per);
                // Stay on the grid (start + k × interval) so equal intervals share ticks.
                while e.next <= now {
                    e.next += e.interval;
                }
                let r = SloResult {
                    playbook: e.playbook,
                    slo: e.slo,
                    eval,
                    at: Instant::now(),
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// Checks every query of every SLO against a live Prometheus (for `validate --prometheus`).
/// Returns `(playbook, slo, problem)` for each query Prometheus rejects or cannot run.
pub async fn check_live(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: &PromClient,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in playbooks {
        for s in l.playbook.spec.slos.iter().filter(|s| needs_server(s)) {
            let Some(server) = server_for(s, default_server) else {
                out.push((
                    l.playbook.name().to_string(),
                    s.name.value.clone(),
                    "no Prometheus server: set `server` or pass --prometheus".into(),
                ));
                continue;
            };
            for (q, zero) in queries(s) {
                // Empty, NaN or many series are run-time conditions (no traffic yet, a
                // label not present); only a refused or unrunnable query is a playbook problem.
                let r = client
                    .query(&server, &q, Duration::from_secs(5), zero)
                    .await;
                if let Err(
                    e @ (QueryError::BadData(_)
                    | QueryError::Unreachable(_)
                    | QueryError::Timeout
                    | QueryError::Http(_)
                    | QueryError::Prometheus(_)
                    | QueryError::Malformed(_)),
                ) = r
                {
                    out.push((
                        l.playbook.name().to_string(),
                        s.name.value.clone(),
                        format!("{e}; query: {q}"),
                    ));
                }
            }
        }
    }
    out
}
