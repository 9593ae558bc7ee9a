//! Per-probe summary of recent outcomes, the view the failover engine decides on.

use std::collections::VecDeque;
use std::mem::discriminant;

use tokio::time::Instant;

use crate::Outcome;

/// A per-probe sliding window of outcomes, the summary the engine reads.
///
/// Keeps the last `capacity` outcomes (for [`success_ratio`](Self::success_ratio)) and,
/// separately, the current streak, which is not bounded by the capacity: "failing for
/// 40 attempts since 10:02" must stay true after the window has filled.
#[derive(Debug, Clone)]
pub struct ProbeWindow {
    outcomes: VecDeque<Outcome>,
    capacity: usize,
    streak: u32,
    streak_since: Option<Instant>,
    last_at: Option<Instant>,
}

impl ProbeWindow {
    /// An empty window keeping the last `capacity` outcomes. A capacity of 0 is raised
    /// to 1, so the window always knows the last outcome.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            outcomes: VecDeque::with_capacity(capacity),
            capacity,
            streak: 0,
            streak_since: None,
            last_at: None,
        }
    }

    /// Record a result finished at `at` (the caller's monotonic clock).
    pub fn record(&mut self, outcome: Outcome, at: Instant) {
        let same_class = self
            .outcomes
            .back()
            .is_some_and(|last| discriminant(last) == discriminant(&outcome));
        if same_class {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 1;
            self.streak_since = Some(at);
        }
        if self.outcomes.len() == self.capacity {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(outcome);
        self.last_at = Some(at);
    }

    /// The most recent outcome, if any.
    pub fn last(&self) -> Option<&Outcome> {
        self.outcomes.back()
    }

    /// Number of consecutive most-recent outcomes in the same class (Healthy /
    /// Unhealthy / Unknown) as the last one; saturating, not bounded by the capacity.
    /// Reasons are ignored: "refused" then "timeout" is a streak of two failures.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// When the current streak began (time of its first result).
    pub fn streak_since(&self) -> Option<Instant> {
        self.streak_since
    }

    /// When the last result was recorded.
    pub fn last_at(&self) -> Option<Instant> {
        self.last_at
    }

    /// Share of healthy outcomes among the Healthy and Unhealthy outcomes in the window.
    ///
    /// Unknown outcomes are left out of both sides because they say nothing about the
    /// target (counting them would read "could not probe" as "unhealthy"). `None` when
    /// the window holds no Healthy or Unhealthy outcome (including when it is empty).
    pub fn success_ratio(&self) -> Option<f64> {
        let (healthy, judged) =
            self.outcomes
                .iter()
                .fold((0u32, 0u32), |(healthy, judged), outcome| match outcome {
                    Outcome::Healthy => (healthy + 1, judged + 1),
                    Outcome::Unhealthy(_) => (healthy, judged + 1),
                    Outcome::Unknown(_) => (healthy, judged),
                });
        (judged > 0).then(|| f64::from(healthy) / f64::from(judged))
    }

    /// Number of outcomes currently held (at most the capacity).
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// How many outcomes the window keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
