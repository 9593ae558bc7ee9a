//! The bounded per-sink queues, their counts and metrics, and what every sink shares
//! (retry backoff, the HTTP client). Pushing never waits: a full queue drops the newest
//! item and counts it, so a slow receiver only ever delays itself.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::error::{NotifyError, bad};
use crate::metrics::{Metrics, labels};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bounded FIFO for one consumer task; pushing never waits.
pub(super) struct Queue<T> {
    cap: usize,
    inner: Mutex<QueueInner<T>>,
    ready: Notify,
}

struct QueueInner<T> {
    items: VecDeque<(Instant, T)>,
    inflight: Option<Instant>,
}

impl<T> Queue<T> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Mutex::new(QueueInner {
                items: VecDeque::new(),
                inflight: None,
            }),
            ready: Notify::new(),
        }
    }

    /// False (and the item dropped) when full.
    pub(super) fn try_push(&self, item: T) -> bool {
        {
            let mut q = lock(&self.inner);
            if q.items.len() >= self.cap {
                return false;
            }
            q.items.push_back((Instant::now(), item));
        }
        self.ready.notify_one();
        true
    }

    /// The next item; it counts as in flight until [`Queue::done`]. Cancel-safe.
    pub(super) async fn pop(&self) -> (Instant, T) {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some((at, item)) = q.items.pop_front() {
                    q.inflight = Some(at);
                    return (at, item);
                }
            }
            self.ready.notified().await;
        }
    }

    pub(super) fn done(&self) {
        lock(&self.inner).inflight = None;
    }

    /// (waiting + in flight, age of the oldest).
    pub(super) fn pending(&self) -> (usize, Duration) {
        let q = lock(&self.inner);
        let oldest = q.inflight.or_else(|| q.items.front().map(|(at, _)| *at));
        (
            q.items.len() + usize::from(q.inflight.is_some()),
            oldest.map(|at| at.elapsed()).unwrap_or_default(),
        )
    }
}

/// Counts of one sink, for tests and the bench.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Delivered (2xx).
    pub sent: AtomicU64,
    /// Failed attempts that were retried.
    pub retried: AtomicU64,
    /// Given up after the last attempt (or a permanent 4xx).
    pub dead_letters: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// A snapshot of one sink's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// `webhook:<name>`, `alertmanager` (the fan-out) or `alertmanager:<host:port>`.
    pub sink: String,
    /// Delivered.
    pub sent: u64,
    /// Retried attempts.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_letters: u64,
    /// Dropped (queue full).
    pub dropped: u64,
    /// Waiting or in flight now.
    pub pending: usize,
}

#[derive(Clone)]
pub(super) struct NotifyMetrics {
    pub(super) total: Family<Vec<(&'static str, String)>, Counter>,
    pub(super) depth: Family<Vec<(&'static str, String)>, Gauge>,
    pub(super) oldest: Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>,
}

impl NotifyMetrics {
    pub(super) fn new(m: &Metrics) -> Self {
        Self {
            total: m.notifications.clone(),
            depth: m.notification_queue_depth.clone(),
            oldest: m.notification_oldest_pending_seconds.clone(),
        }
    }

    pub(super) fn count(&self, sink: &str, event: &str, result: &str) {
        self.total
            .get_or_create(&labels([
                ("sink", sink),
                ("event", event),
                ("result", result),
            ]))
            .inc();
    }
}

/// One queue as the metrics ticker sees it.
pub(super) trait Pending: Send + Sync {
    fn pending(&self) -> (usize, Duration);
}

impl<T: Send> Pending for Queue<T> {
    fn pending(&self) -> (usize, Duration) {
        Queue::pending(self)
    }
}

pub(super) fn jittered(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exp = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    // Full jitter in [exp/2, exp]: spread retries of many failoverd replicas apart.
    exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

pub(super) fn http_client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("failoverd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| bad("notify", format!("cannot build an HTTP client: {e}")))
}

/// Publishes queue depth and oldest-pending age every second.
pub(super) async fn watch_queues(queues: Vec<(String, Arc<dyn Pending>)>, m: NotifyMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (sink, q) in &queues {
            let (depth, age) = q.pending();
            let l = labels([("sink", sink.as_str())]);
            m.depth
                .get_or_create(&l)
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
            m.oldest.get_or_create(&l).set(age.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queue_is_bounded_and_tracks_age() {
        let q = Queue::new(2);
        assert!(q.try_push(1));
        assert!(q.try_push(2));
        assert!(!q.try_push(3), "a full queue drops");
        assert_eq!(q.pending().0, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, v) = rt.block_on(q.pop());
        assert_eq!(v, 1);
        assert_eq!(q.pending().0, 2, "in flight still counts");
        q.done();
        assert_eq!(q.pending().0, 1);
        assert!(q.try_push(4));
        assert!(!q.try_push(5));
    }
}
