//! A steady load generator: N requests per second through the routing proxy, bounded in count
//! and time, recording each request's start, outcome, latency and the upstream that served it
//! (the stand-in's `x-served-by` header). From the samples it derives what users felt: the
//! error window after a fault, how many requests failed, and the failover target's share of
//! traffic over time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No HTTP answer (connect error, reset, client timeout), and why.
    Error(String),
}

/// One request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent.
    pub start: Instant,
    /// How long until the answer (or the error).
    pub latency: Duration,
    /// What came back.
    pub outcome: Outcome,
    /// The `x-served-by` header, if any.
    pub served_by: Option<String>,
}

impl Sample {
    /// True when the user saw a failure: no answer, or a 5xx.
    pub fn failed(&self) -> bool {
        match self.outcome {
            Outcome::Status(s) => s >= 500,
            Outcome::Error(_) => true,
        }
    }

    /// When the answer (or the error) arrived.
    pub fn end(&self) -> Instant {
        self.start + self.latency
    }
}

/// A running load; [`Load::stop`] returns the samples.
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
    started: Instant,
}

/// How much load, for how long.
#[derive(Clone, Copy, Debug)]
pub struct LoadConfig {
    /// Requests per second.
    pub rate: u32,
    /// Stop after this long at the latest.
    pub max_duration: Duration,
    /// Client timeout per request.
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            rate: 50,
            max_duration: Duration::from_secs(60),
            timeout: Duration::from_secs(3),
        }
    }
}

impl Load {
    /// Starts sending `GET /` to `addr` at `cfg.rate` per second (each on its own connection).
    pub fn start(addr: SocketAddr, cfg: LoadConfig) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = sent.clone();
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
        let max_count = (cfg.max_duration.as_secs_f64() * f64::from(cfg.rate)).ceil() as u64;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            // A stalled scheduler does not produce a burst afterwards: the rate stays steady.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut inflight = Vec::new();
            for _ in 0..max_count {
                tick.tick().await;
                if started.elapsed() > cfg.max_duration {
                    break;
                }
                let s = s.clone();
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                inflight.push(tokio::spawn(async move {
                    let sample = request(addr, cfg.timeout).await;
                    if let Ok(mut v) = s.lock() {
                        v.push(sample);
                    }
                }));
                inflight.retain(|t: &JoinHandle<()>| !t.is_finished());
            }
            for t in inflight {
                let _ = t.await;
            }
        });
        Self {
            samples,
            sent,
            task,
            started,
        }
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Samples so far (sorted by start).
    pub fn snapshot(&self) -> Report {
        let mut v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by_key(|s| s.start);
        Report {
            samples: v,
            started: self.started,
        }
    }

    /// Stops sending, waits (bounded by the client timeout) for requests in flight, and
    /// returns every sample.
    pub async fn stop(self, timeout: Duration) -> Report {
        self.task.abort();
        // Requests in flight were spawned apart and finish within their own timeout.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let done = self.samples.lock().map(|v| v.len()).unwrap_or(0);
            if done >= self.sent.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.snapshot()
    }
}

/// The samples of a load run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every request, by start time.
    pub samples: Vec<Sample>,
    /// When the load started.
    pub started: Instant,
}

impl Report {
    /// Requests that started at or after `t`.
    pub fn after(&self, t: Instant) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.start >= t)
    }

    /// Failed requests that started at or after `t`.
    pub fn failed_after(&self, t: Instant) -> usize {
        self.after(t).filter(|s| s.failed()).count()
    }

    /// The user-visible error window after `t`: from the start of the first failed request to
    /// the end of the last one. Zero when none failed.
    pub fn error_window(&self, t: Instant) -> Duration {
        let mut failed = self.after(t).filter(|s| s.failed());
        let Some(first) = failed.next() else {
            return Duration::ZERO;
        };
        let last = failed.map(Sample::end).max().unwrap_or(first.end());
        last.max(first.end()).saturating_duration_since(first.start)
    }

    /// Share (0.0..=1.0) of requests served by `name` per `bucket`, from the load's start;
    /// `None` for a bucket without requests.
    pub fn share_over_time(&self, name: &str, bucket: Duration) -> Vec<Option<f64>> {
        let width = bucket.as_secs_f64().max(0.001);
        let mut counts: Vec<(u32, u32)> = Vec::new();
        for s in &self.samples {
            let i = (s
                .start
                .saturating_duration_since(self.started)
                .as_secs_f64()
                / width) as usize;
            if counts.len() <= i {
                counts.resize(i + 1, (0, 0));
            }
            if let Some(c) = counts.get_mut(i) {
                c.1 += 1;
                if s.served_by.as_deref() == Some(name) {
                    c.0 += 1;
                }
            }
        }
        counts
            .into_iter()
            .map(|(n, total)| (total > 0).then(|| f64::from(n) / f64::from(total)))
            .collect()
    }

    /// Requests after `t` served by `name` and answered 2xx.
    pub fn served_ok_by(&self, t: Instant, name: &str) -> usize {
        self.after(t)
            .filter(|s| !s.failed() && s.served_by.as_deref() == Some(name))
            .count()
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self, t: Instant) -> String {
        let mut by_outcome = std::collections::BTreeMap::<String, usize>::new();
        for s in self.after(t) {
            let k = match &s.outcome {
                Outcome::Status(c) => format!("{c} {}", s.served_by.as_deref().unwrap_or("-")),
                Outcome::Error(e) => format!("error {e}"),
            };
            *by_outcome.entry(k).or_default() += 1;
        }
        format!(
            "{} requests after the fault, {} failed, error window {:?}: {by_outcome:?}",
            self.after(t).count(),
            self.failed_after(t),
            self.error_window(t)
        )
    }
}

async fn request(addr: SocketAddr, timeout: Duration) -> Sample {
    let start = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let (outcome, served_by) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => (Outcome::Error("client timeout".into()), None),
        Ok(Err(e)) => (Outcome::Error(e.kind().to_string()), None),
        Ok(Ok(buf)) => parse(&buf),
    };
    Sample {
        start,
        latency: start.elapsed(),
        outcome,
        served_by,
    }
}

fn parse(buf: &[u8]) -> (Outcome, Option<String>) {
    let text = String::from_utf8_lossy(buf);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let Some(code) = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
    else {
        return (Outcome::Error("not an HTTP answer".into()), None);
    };
    let served_by = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-served-by")
            .then(|| v.trim().to_string())
    });
    (Outcome::Status(code), served_by)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_window_spans_first_failure_to_last_failure_end() {
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let s = |at: u64, lat: u64, code: u16, by: &str| Sample {
            start: t0 + ms(at),
            latency: ms(lat),
            outcome: Outcome::Status(code),
            served_by: Some(by.into()),
        };
        let r = Report {
            samples: vec![
                s(0, 5, 200, "primary"),
                s(100, 5, 503, "-"),
                s(200, 1000, 504, "-"),
                s(300, 5, 200, "dr"),
                s(600, 5, 200, "dr"),
            ],
            started: t0,
        };
        assert_eq!(r.failed_after(t0), 2);
        assert_eq!(r.error_window(t0), ms(1100));
        assert_eq!(r.error_window(t0 + ms(250)), Duration::ZERO);
        assert_eq!(
            r.share_over_time("dr", ms(500)),
            vec![Some(0.25), Some(1.0)]
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nX-Served-By: dr\r\n\r\nhello"),
            (Outcome::Status(200), Some("dr".into()))
        );
    }
}
