//! Runs every probe on its own interval until shutdown.

use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

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
/// Must be called from within a tokio runtime (it uses `JoinSet::spawn`).
pub fn spawn_probes(
    specs: Vec<ProbeSpec>,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
) -> ProbeSet {
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

async fn run_probe(
    spec: ProbeSpec,
    interval: Duration,
    first: Instant,
    client: reqwest::Client,
    tx: mpsc::Sender<ProbeResult>,
    mut shutdown: watch::Receiver<bool>,
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
        let attempt = Box::pin(run_prepared(ready.as_ref(), &spec, started, lateness));
        let result = tokio::select! {
            biased;
            () = signalled(&mut shutdown) => break,
            result = attempt => result,
        };
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
mod tests {
    use super::*;

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
