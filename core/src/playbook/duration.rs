//! Durations written as strings in playbooks (`500ms`, `1s`, `5m`, `1h 30m`).

use std::fmt;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from a human string such as `500ms`, `1s`, `5m` or `1h30m`.
///
/// Strings rather than integers because a bare `30` in a playbook is ambiguous at 3 a.m.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    /// The wrapped standard duration.
    pub const fn get(self) -> StdDuration {
        self.0
    }

    /// Parses `500ms`, `1s`, `5m`, `1h 30m`, ... (humantime's grammar), at most [`MAX`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err("empty duration; expected e.g. `500ms`, `1s`, `5m`".to_string());
        }
        let d = humantime::parse_duration(trimmed).map_err(|e| {
            format!("invalid duration `{s}`: {e}; expected e.g. `500ms`, `1s`, `5m`")
        })?;
        if d > MAX.0 {
            return Err(format!(
                "duration `{s}` is longer than {MAX}, the most failoverd accepts anywhere"
            ));
        }
        Ok(Duration(d))
    }

    /// Fails with a message naming the bound when `self` is longer than `max`.
    pub fn at_most(self, max: Duration) -> Result<Self, String> {
        if self > max {
            Err(format!("{self} is longer than the maximum {max}"))
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Self(d)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as `500ms`, `1s`, `5m` or `1h 30m` (at most 1y; each field documents its own bound).",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$"
        })
    }
}

/// The longest duration accepted anywhere (a year, `1y` as written: 365.25 days): every
/// duration failoverd reads is far below it, and with it no sum or small multiple of durations
/// can overflow.
pub const MAX: Duration = Duration::from_secs(31_557_600);

/// Upper bounds of the playbook's duration fields, checked at load. Each is far above any
/// sensible value and keeps derived values (`interval × 3` staleness, timers, windows) small.
pub mod bounds {
    use super::Duration;

    /// Probe `interval`, SLO `evaluationInterval`: 1h.
    pub const INTERVAL: Duration = Duration::from_secs(3600);
    /// Probe `timeout` and `connectTimeout`, SLO `timeout`: 5m.
    pub const TIMEOUT: Duration = Duration::from_secs(300);
    /// `trigger.for`, `failback.after`, `failback.stepInterval`, `minDwell`: 7d.
    pub const WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `scrape.window`: 1d (the samples of a scrape window are held in memory).
    pub const SCRAPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
    /// Burn-rate `long` and `short` windows: 30d (an SLO period).
    pub const BURN_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
}

/// A `deserialize_with` reader of a duration field bounded by `MAX_SECS` seconds: an over-long
/// value is a deserialisation error, so the YAML parser reports it at its file:line:col.
pub fn at_most<'de, const MAX_SECS: u64, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Duration::deserialize(d)?
        .at_most(Duration::from_secs(MAX_SECS))
        .map_err(serde::de::Error::custom)
}

/// Reads a field bounded by [`bounds::INTERVAL`].
pub fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_most::<{ bounds::INTERVAL.0.as_secs() }, D>(d)
}

/// Reads a field bounded by [`bounds::TIMEOUT`].
pub fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_most::<{ bounds::TIMEOUT.0.as_secs() }, D>(d)
}

/// Reads a field bounded by [`bounds::WAIT`].
pub fn wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_most::<{ bounds::WAIT.0.as_secs() }, D>(d)
}

/// Reads a field bounded by [`bounds::SCRAPE_WINDOW`].
pub fn scrape_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_most::<{ bounds::SCRAPE_WINDOW.0.as_secs() }, D>(d)
}

/// Reads a field bounded by [`bounds::BURN_WINDOW`].
pub fn burn_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    at_most::<{ bounds::BURN_WINDOW.0.as_secs() }, D>(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures the documented spellings parse and garbage is refused with a hint.
    #[test]
    fn parses_and_refuses() {
        assert_eq!(Duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(Duration::parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(Duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(Duration::parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(Duration::parse("0s"), Ok(Duration::from_secs(0)));
        for bad in ["", "5", "five seconds", "1x", "-1s"] {
            let err = Duration::parse(bad).expect_err(bad);
            assert!(err.contains("expected e.g."), "{err}");
        }
    }
}
