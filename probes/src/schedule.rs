//! Runs every probe on its own interval until shutdown.

use std::time::Duration;

use rand::Rng;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::RuntimeHeaders;
use crate::attempt::{Prepared, prepare, run_prepared};
use crate::{ProbeResult, ProbeSpec};

/// `tokio::time::interval_at` panics on a zero period; the daemon validates
/// `timeout < interval` (so the interval is positive), this only keeps a bad spec from
/// panicking the scheduler.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Start offsets are drawn on this grid. Probes due in the same slot wake the runtime once
/// instead of once each: at 2,000 probes/s, random offsets woke it ~1,000 times a second
/// and the context switches cost about a fifth of the daemon's CPU. Ten milliseconds keeps
/// the spread (at most interval / 10 ms probes share a slot, never the whole fleet) and is
/// small against the 50 ms lateness budget.
pub const START_GRID: Duration = Duration::from_millis(10);

/// Attempts in flight at once, over all probes (each probe has at most one). Every attempt
/// holds a socket: when thousands of targets hang at once, this keeps the process under a
/// typical 1,024 file-descriptor limit with room for the API, the store and the audit log.
/// An attempt that waits for a slot starts late, and the wait shows in its lateness.
pub const MAX_IN_FLIGHT: usize = 768;

/// The running probe tasks returned by [`spawn_probes`].
///
/// Dropping it aborts every task; [`ProbeSet::shutdown`] lets them finish instead.
#[derive(Debug)]
pub struct ProbeSet {
    tasks: JoinSet<()>,
}

impl ProbeSet {
    /// Number of probe tasks still held.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are no probe tasks.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for every probe task to stop.
    ///
    /// Tasks stop on their own once the shutdown watch turns `true` (or its sender is
    /// dropped), so signal it first: otherwise this waits as long as the probes run.
    /// A task that panicked is logged, not propagated, so shutdown always completes.
    pub async fn shutdown(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "probe task ended abnormally");
            }
        }
    }
}

/// Spawns every probe on the current tokio runtime, each on its own interval.
///
/// Start times are spread: each probe's first attempt is delayed by a random offset in
/// `[0, interval)`, on a [`START_GRID`], so thousands of probes do not fire in one burst;
/// later attempts follow at `start + k * interval`. Results go to `tx` (the caller's bounded channel);
/// a full channel slows that probe down rather than dropping results, and a probe
/// whose receiver is gone stops. All tasks stop when `shutdown` becomes `true` — or
/// when its sender is dropped, since nothing could ever signal them after that.
///
/// Must be called from within a tokio runtime (it uses `JoinSet::spawn`). At most
/// [`MAX_IN_FLIGHT`] attempts run at once.
///
/// `client` serves the HTTP probes that need no client of their own, except plain
/// `http://` ones: those take the plain path (one request on a fresh `TcpStream`, same
/// bytes and verdicts as [`http_client`](crate::http_client)), so settings of a
/// different client (a proxy, say) do not reach them.
pub fn spawn_probes(
    specs: Vec<ProbeSpec>,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
) -> ProbeSet {
    spawn_probes_limited(specs, client, tx, shutdown, MAX_IN_FLIGHT)
}

/// [`spawn_probes`] with at most `max_in_flight` attempts running at once (at least one).
pub fn spawn_probes_limited(
    specs: Vec<ProbeSpec>,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
    max_in_flight: usize,
) -> ProbeSet {
    spawn(
        specs,
        client,
        tx,
        shutdown,
        max_in_flight,
        RuntimeHeaders::default(),
    )
}

/// [`spawn_probes`] whose HTTP probes also send the headers `extra` holds for their id at
/// each attempt (see [`RuntimeHeaders`]).
pub fn spawn_probes_with_headers(
    specs: Vec<ProbeSpec>,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
    extra: RuntimeHeaders,
) -> ProbeSet {
    spawn(specs, client, tx, shutdown, MAX_IN_FLIGHT, extra)
}

fn spawn(
    specs: Vec<ProbeSpec>,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
    max_in_flight: usize,
    extra: RuntimeHeaders,
) -> ProbeSet {
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut rng = rand::rng();
    let now = Instant::now();
    for spec in specs {
        let interval = spec.interval.max(MIN_INTERVAL);
        let first = now + start_offset(&mut rng, interval);
        tasks.spawn(run_probe(
            spec,
            interval,
            first,
            client.clone(),
            tx.clone(),
            shutdown.clone(),
            slots.clone(),
            extra.clone(),
        ));
    }
    ProbeSet { tasks }
}

/// A random offset in `[0, interval)` on the [`START_GRID`] (or anywhere in it when the
/// interval is shorter than one grid step).
fn start_offset(rng: &mut impl Rng, interval: Duration) -> Duration {
    let grid = START_GRID.as_nanos();
    let span = interval.as_nanos();
    if span <= grid {
        let nanos = u64::try_from(span).unwrap_or(u64::MAX);
        return Duration::from_nanos(rng.random_range(0..nanos));
    }
    let slots = u64::try_from(span.div_ceil(grid)).unwrap_or(u64::MAX);
    // (slots - 1) × grid < span: every slot starts inside the interval.
    let slot = rng.random_range(0..slots);
    let nanos = u64::try_from(u128::from(slot) * grid).unwrap_or(0);
    Duration::from_nanos(nanos)
}

#[allow(clippy::too_many_arguments)]
async fn run_probe(
    spec: ProbeSpec,
    interval: Duration,
    first: Instant,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    mut shutdown: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
    extra: RuntimeHeaders,
) {
    let mut ticker = tokio::time::interval_at(first, interval);
    // Skip, not Delay or Burst: if an attempt overruns or the runtime stalls, Burst
    // would fire catch-up probes back to back (no new information, a load spike on the
    // target), and Delay would shift this probe's phase for good, slowly undoing the
    // start-time spread. Skip drops the missed ticks and stays on start + k * interval.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Prepared once (own client, compiled regex) and kept, so a pooled connection
    // survives between attempts when the probe asks for reuse.
    let mut prepared: Option<Result<Prepared, String>> = None;
    loop {
        // `biased`: once shutdown is signalled, never start another attempt.
        let due = tokio::select! {
            biased;
            () = signalled(&mut shutdown) => break,
            due = ticker.tick() => due,
        };
        let slot = tokio::select! {
            biased;
            () = signalled(&mut shutdown) => break,
            slot = slots.acquire() => slot,
        };
        // The semaphore is never closed; if it were, probing without a bound is worse
        // than stopping this probe.
        let Ok(held) = slot else { break };
        let started = Instant::now();
        let lateness = started.saturating_duration_since(due);
        // A failed preparation (e.g. a CA file gone since validation) is retried at
        // every attempt; until it succeeds, attempts are Unknown.
        if !matches!(prepared, Some(Ok(_))) {
            prepared = Some(prepare(&client, &spec));
        }
        let Some(ready) = prepared.as_ref() else {
            break;
        };
        // Boxed: an HTTP attempt's future is several KiB, and held inline it would sit in
        // every idle probe task between attempts (11 MB at 2,000 probes); boxed, it exists
        // only while the attempt runs.
        let headers = extra.get(spec.id);
        let attempt = Box::pin(run_prepared(
            ready.as_ref(),
            &spec,
            started,
            lateness,
            &headers,
        ));
        let result = tokio::select! {
            biased;
            () = signalled(&mut shutdown) => break,
            result = attempt => result,
        };
        // The slot is for the socket: free it before waiting on a full result queue.
        drop(held);
        tokio::select! {
            biased;
            () = signalled(&mut shutdown) => break,
            sent = tx.send(result) => if sent.is_err() {
                tracing::debug!(id = spec.id, "probe result receiver gone; stopping probe");
                break;
            },
        }
    }
}

/// Resolves once shutdown is requested, or when the sender is dropped.
async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    // Err means the sender is gone: treat it as shutdown (see `spawn_probes`).
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;

    use crate::{Outcome, ProbeKind, TcpProbe, Vantage};

    /// Ensures no more than the cap of attempts hold a connection at once: six TCP probes
    /// that each wait 900 ms for bytes that never come, in one 1 s interval, with room for
    /// two. The server counts open connections; attempts that waited for a slot start late,
    /// and say so in their lateness.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_in_flight_never_exceed_the_cap() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (o, p) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (open, peak) = (o.clone(), p.clone());
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let specs = (0..6)
            .map(|id| ProbeSpec {
                id,
                kind: ProbeKind::Tcp(TcpProbe {
                    address: addr.to_string(),
                    send: None,
                    expect: Some(b"never sent".to_vec()),
                }),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(900),
                vantage: Vantage::local(),
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = watch::channel(false);
        let client = crate::http_client().unwrap();
        let set = spawn_probes_limited(specs, client, tx, shutdown, 2);
        let mut results = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while results.len() < 6 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => results.push(r),
                _ => break,
            }
        }
        let _ = stop.send(true);
        set.shutdown().await;
        assert_eq!(results.len(), 6, "{results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Unhealthy(_))),
            "{results:?}"
        );
        // The server sees a close a moment after the client's slot is free again: allow one.
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 3, "{peak} connections open at once with room for 2");
        // Six 900 ms attempts through two slots take at least 2.7 s: the last ones waited.
        let latest = results.iter().map(|r| r.lateness).max().unwrap();
        assert!(
            latest >= Duration::from_millis(800),
            "latest start {latest:?} late"
        );
    }

    /// Ensures offsets stay inside the interval, sit on the grid, and spread over it.
    #[test]
    fn start_offsets_sit_on_the_grid_inside_the_interval() {
        let mut rng = rand::rng();
        for ms in [1u64, 7, 10, 15, 100, 995, 1000, 30_000] {
            let interval = Duration::from_millis(ms);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..2000 {
                let o = start_offset(&mut rng, interval);
                assert!(o < interval, "{o:?} not inside {interval:?}");
                if interval > START_GRID {
                    assert_eq!(
                        o.as_nanos() % START_GRID.as_nanos(),
                        0,
                        "{o:?} off the grid"
                    );
                }
                seen.insert(o);
            }
            let slots = (interval.as_nanos().div_ceil(START_GRID.as_nanos())).min(2000) as usize;
            if interval > START_GRID {
                // 2,000 draws over at most 3,000 slots reach well over a third of them.
                assert!(
                    seen.len() * 3 >= slots.min(1000),
                    "{ms} ms: only {} offsets",
                    seen.len()
                );
            } else {
                assert!(seen.len() > 1, "{ms} ms: offsets must still vary");
            }
        }
    }
}
