//! Which destination a signal watches: `primary` or `failover[N]`, as written in a playbook.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which destination a signal watches: `primary` or `failover[N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The primary destination.
    Primary,
    /// The N-th failover target (0-based).
    Failover(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Primary => f.write_str("primary"),
            Target::Failover(i) => write!(f, "failover[{i}]"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid target `{s}`: expected `primary` or `failover[N]`");
        if s == "primary" {
            return Ok(Target::Primary);
        }
        let idx = s
            .strip_prefix("failover[")
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(bad)?;
        idx.parse::<usize>()
            .map(Target::Failover)
            .map_err(|_| bad())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Target {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Target".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`primary` or `failover[N]` (0-based index into spec.failover).",
            "pattern": "^(primary|failover\\[[0-9]+\\])$"
        })
    }
}
