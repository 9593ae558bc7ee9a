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

    /// Parses `500ms`, `1s`, `5m`, `1h 30m`, ... (humantime's grammar).
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err("empty duration; expected e.g. `500ms`, `1s`, `5m`".to_string());
        }
        humantime::parse_duration(trimmed)
            .map(Duration)
            .map_err(|e| format!("invalid duration `{s}`: {e}; expected e.g. `500ms`, `1s`, `5m`"))
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
            "description": "A duration such as `500ms`, `1s`, `5m` or `1h 30m`.",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$"
        })
    }
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
