//! The aggregate log of refusals that are not audited one by one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One aggregate log line per key (identity or address) per this window.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);
/// Most keys the aggregate refusal log keeps (stale ones are dropped first).
const REFUSAL_LOG_KEYS: usize = 4096;

/// Refusals that are not audited one by one (rate-limited calls, failed authentications,
/// refusals beyond an identity's audit budget), logged in aggregate: the first of a window
/// at once, then one line per key per [`REFUSAL_LOG_WINDOW`] with the count, so a flood
/// costs a few log lines, not one per call.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RefusalLog {
    /// Notes one refusal of `key` (e.g. `identity alice`, `address 10.0.0.7`) for `what`
    /// (e.g. `rate limited`); logs when a window starts or has ended.
    pub fn note(&self, key: &str, what: &str) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let now = Instant::now();
        if w.len() >= REFUSAL_LOG_KEYS && !w.contains_key(key) {
            w.retain(|_, (start, _)| now.duration_since(*start) < REFUSAL_LOG_WINDOW);
            if w.len() >= REFUSAL_LOG_KEYS {
                // Still full of live keys: count this one under a shared key.
                return self.note_in(&mut w, "other callers", what, now);
            }
        }
        self.note_in(&mut w, key, what, now);
    }

    /// Logs the counts of windows that have ended with refusals not logged yet, and forgets
    /// their keys (call every [`REFUSAL_LOG_WINDOW`], so the count of a flood's last window
    /// is not lost when the flood stops).
    pub fn flush(&self) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let now = Instant::now();
        w.retain(|key, (start, n)| {
            let elapsed = now.duration_since(*start);
            if elapsed < REFUSAL_LOG_WINDOW {
                return true;
            }
            if *n > 0 {
                tracing::warn!(key = ?key, refused = *n, seconds = elapsed.as_secs(), "API calls refused in aggregate");
            }
            false
        });
    }

    fn note_in(
        &self,
        w: &mut HashMap<String, (Instant, u64)>,
        key: &str,
        what: &str,
        now: Instant,
    ) {
        match w.get_mut(key) {
            None => {
                w.insert(key.to_string(), (now, 0));
                // `?`: escaped, whatever the key holds.
                tracing::warn!(key = ?key, what, "API call refused (further refusals of this key are counted and logged every 10 s)");
            }
            Some((start, n)) => {
                *n += 1;
                let elapsed = now.duration_since(*start);
                if elapsed >= REFUSAL_LOG_WINDOW {
                    tracing::warn!(key = ?key, what, refused = *n, seconds = elapsed.as_secs(), "API calls refused in aggregate");
                    *start = now;
                    *n = 0;
                }
            }
        }
    }
}
