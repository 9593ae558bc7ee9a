//! Direct scrapes: fetch a `/metrics` page, select series, turn counters into
//! per-interval increases and derive an error-ratio signal over a window of scrapes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::exposition::{Format, Sample, parse};
use crate::{Outcome, ProbeError};

/// Largest page read; a bigger one is refused (Unknown) rather than buffered.
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// How a label is compared.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// `label="value"` (an absent label equals "").
    Eq(String),
    /// `label!="value"`.
    Ne(String),
    /// `label=~"regex"` (anchored, as in PromQL).
    Re(regex::Regex),
    /// `label!~"regex"` (anchored).
    NotRe(regex::Regex),
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// Comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// `label=~regex`, anchored like PromQL; an invalid regex is a load-time error.
    pub fn regex(label: &str, re: &str, negate: bool) -> Result<Self, ProbeError> {
        let compiled = regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
            ProbeError::InvalidSelector(format!("label {label}: bad regex {re:?}: {e}"))
        })?;
        Ok(Self {
            label: label.to_owned(),
            op: if negate {
                MatchOp::NotRe(compiled)
            } else {
                MatchOp::Re(compiled)
            },
        })
    }

    /// Reads the playbook form of a matcher: `value` matches exactly, `=~re` is an
    /// anchored regex, `!=value` and `!~re` negate. A bad regex is an error naming the
    /// label.
    pub fn parse(label: &str, spec: &str) -> Result<Self, ProbeError> {
        if let Some(re) = spec.strip_prefix("=~") {
            Self::regex(label, re, false)
        } else if let Some(re) = spec.strip_prefix("!~") {
            Self::regex(label, re, true)
        } else if let Some(value) = spec.strip_prefix("!=") {
            Ok(Self::equal(label, value, true))
        } else {
            Ok(Self::equal(label, spec, false))
        }
    }

    /// `label="value"` or, negated, `label!="value"`.
    pub fn equal(label: &str, value: &str, negate: bool) -> Self {
        Self {
            label: label.to_owned(),
            op: if negate {
                MatchOp::Ne(value.to_owned())
            } else {
                MatchOp::Eq(value.to_owned())
            },
        }
    }

    fn matches(&self, sample: &Sample) -> bool {
        let value = sample.label(&self.label).unwrap_or("");
        match &self.op {
            MatchOp::Eq(v) => value == v,
            MatchOp::Ne(v) => value != v,
            MatchOp::Re(re) => re.is_match(value),
            MatchOp::NotRe(re) => !re.is_match(value),
        }
    }
}

/// Selects series by metric name and label matchers.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Exact sample name (e.g. `envoy_cluster_upstream_rq_total`).
    pub name: String,
    /// Every matcher must hold.
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// Whether `sample` is selected.
    pub fn matches(&self, sample: &Sample) -> bool {
        *sample.name == *self.name && self.matchers.iter().all(|m| m.matches(sample))
    }
}

/// Identity of a series: name and labels sorted by name.
type SeriesKey = (Arc<str>, Vec<(Arc<str>, String)>);

fn key_of(sample: &Sample) -> SeriesKey {
    let mut labels = sample.labels.clone();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    (sample.name.clone(), labels)
}

/// Turns successive counter readings of the series a selector picks into increases.
///
/// A value below the previous one is a counter reset: the increase is the new value
/// (the counter restarted from 0). A series seen before and missing now makes the
/// interval `Err` (unknown, never zero); a series seen for the first time contributes
/// nothing until its second reading (as PromQL's `rate`).
#[derive(Debug, Clone)]
pub struct CounterTracker {
    selector: Selector,
    last: HashMap<SeriesKey, f64>,
    primed: bool,
}

impl CounterTracker {
    /// A tracker for the series `selector` picks.
    pub fn new(selector: Selector) -> Self {
        Self {
            selector,
            last: HashMap::new(),
            primed: false,
        }
    }

    /// Feeds one scrape; returns the summed increase since the previous scrape, `None`
    /// on the first scrape, or `Err(reason)` when a series vanished, nothing matched, or a
    /// matched series is not a counter value (NaN, ±Inf or negative).
    pub fn observe(&mut self, samples: &[Sample]) -> Result<Option<f64>, String> {
        let mut now: HashMap<SeriesKey, f64> = HashMap::new();
        for s in samples.iter().filter(|s| self.selector.matches(s)) {
            // NaN, ±Inf or a negative value is no counter reading. Skipping it would make
            // an error series read as "no errors" (0), and Inf increases turn the ratio into
            // NaN or 0, both of which compare as healthy. So the whole reading is Unknown, and
            // the tracker starts over (the next rate needs two good readings again).
            if !(s.value.is_finite() && s.value >= 0.0) {
                self.last.clear();
                self.primed = false;
                return Err(format!(
                    "series {} has value {}: not a counter reading",
                    s.name, s.value
                ));
            }
            now.insert(key_of(s), s.value);
        }
        let vanished = self.last.keys().find(|k| !now.contains_key(*k)).cloned();
        let mut increase = 0.0;
        for (key, value) in &now {
            if let Some(prev) = self.last.get(key) {
                increase += if value >= prev { value - prev } else { *value };
            }
        }
        let was_primed = self.primed;
        let empty = now.is_empty();
        self.last = now;
        self.primed = true;
        if let Some((name, labels)) = vanished {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            return Err(format!("series vanished: {name}{{{}}}", labels.join(",")));
        }
        if empty {
            return Err(format!("no series match {}", self.selector.name));
        }
        Ok(was_primed.then_some(increase))
    }
}

/// An error-ratio signal: `errors / total` increases summed over the last `window`
/// scrape intervals, healthy while at or below `max_ratio`.
#[derive(Debug)]
pub struct ErrorRatio {
    errors: CounterTracker,
    total: CounterTracker,
    window: VecDeque<(f64, f64)>,
    capacity: usize,
    min_intervals: usize,
    max_ratio: f64,
}

impl ErrorRatio {
    /// Tracks `errors` over `total`, over `window` intervals (at least 1).
    pub fn new(errors: Selector, total: Selector, window: usize, max_ratio: f64) -> Self {
        Self {
            errors: CounterTracker::new(errors),
            total: CounterTracker::new(total),
            window: VecDeque::new(),
            capacity: window.max(1),
            min_intervals: 1,
            max_ratio,
        }
    }

    /// Stays Unknown until the window holds at least `n` intervals (capped at the window
    /// size): a ratio over one short interval is noise, not a verdict.
    pub fn with_min_intervals(mut self, n: usize) -> Self {
        self.min_intervals = n.clamp(1, self.capacity);
        self
    }

    /// Feeds one scrape and judges: Unknown on the first scrape, when a series
    /// vanished, when nothing matched or when the window saw no traffic.
    pub fn observe(&mut self, samples: &[Sample]) -> (Outcome, Option<f64>) {
        // An error series that never appeared (no 5xx yet) is normal: count it as 0.
        let errors = match self.errors.observe(samples) {
            Err(e) if e.starts_with("no series match") => Ok(Some(0.0)),
            other => other,
        };
        let total = self.total.observe(samples);
        let (errors, total) = match (errors, total) {
            (Err(e), _) | (_, Err(e)) => return (Outcome::Unknown(e), None),
            (Ok(Some(e)), Ok(Some(t))) => (e, t),
            _ => {
                return (
                    Outcome::Unknown("first scrape: no rate yet".to_owned()),
                    None,
                );
            }
        };
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back((errors, total));
        if self.window.len() < self.min_intervals {
            return (
                Outcome::Unknown(format!(
                    "too few samples: {} of {} scrape intervals",
                    self.window.len(),
                    self.min_intervals
                )),
                None,
            );
        }
        let (e, t) = self
            .window
            .iter()
            .fold((0.0, 0.0), |(e, t), (de, dt)| (e + de, t + dt));
        // Finite readings can still sum past f64::MAX: Inf / Inf is NaN, which compares as
        // healthy. No verdict from numbers that overflowed.
        if !(e.is_finite() && t.is_finite()) {
            return (
                Outcome::Unknown(format!(
                    "counter increases overflow (errors {e}, total {t})"
                )),
                None,
            );
        }
        if t <= 0.0 {
            return (
                Outcome::Unknown("no requests in the window".to_owned()),
                None,
            );
        }
        let ratio = e / t;
        let outcome = if ratio > self.max_ratio {
            Outcome::Unhealthy(format!("error ratio {ratio:.4} above {}", self.max_ratio))
        } else {
            Outcome::Healthy
        };
        (outcome, Some(ratio))
    }
}

/// Fetches and parses one page. Errors (connect, status, timeout, size, parse) are
/// returned as a reason for an Unknown signal: a failed scrape says nothing about the
/// error ratio.
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(Vec<Sample>, Instant), String> {
    let fetch = async {
        let mut response = client
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .map_err(|e| format!("scrape: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("scrape: status {}", response.status().as_u16()));
        }
        let format = Format::from_content_type(
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("scrape: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_PAGE_BYTES {
                return Err(format!("scrape: page larger than {MAX_PAGE_BYTES} bytes"));
            }
        }
        Ok((body, format))
    };
    let (body, format) = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("scrape: timeout after {}ms", timeout.as_millis()))??;
    let at = Instant::now();
    let text = std::str::from_utf8(&body).map_err(|e| format!("scrape: not UTF-8: {e}"))?;
    let samples = parse(text, format).map_err(|e| e.to_string())?;
    Ok((samples, at))
}
