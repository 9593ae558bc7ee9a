//! The audit record and its hash chain, as arithmetic on bytes and values: the daemon's
//! audit log reads, writes, fsyncs and locks the file around it.
//!
//! The chain starts from [`GENESIS`]. `prev` of record N is the SHA-256 (hex) of the exact
//! bytes of line N-1 without its newline, so editing, removing or reordering any record
//! breaks every link after it; [`Chain::push`] names what broke.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AuditRecord))]
pub struct Record {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub time: Timestamp,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
    /// `engine` for automatic moves, else the operator's identity.
    pub actor: String,
    /// What happened: `failover`, `failback`, `failback-step`, `stuck`, `audit-recovered`, ...
    pub action: String,
    /// The playbook concerned (empty for daemon-wide records).
    pub playbook: String,
    /// Why, in words.
    pub reason: String,
    /// The observations and values that caused it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub inputs: Value,
    /// Route before.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub before: Value,
    /// Route after.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub after: Value,
    /// `intent` (about to write), `written`, `unchanged`, `failed: ...`, `refused: ...`, `noted`.
    pub outcome: String,
    /// The OpenTelemetry trace (32 hex digits) of the decision or call that caused it, when
    /// tracing is on; absent in records written without it.
    #[serde(default, rename = "traceId", skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What a caller fills in; the log adds `seq`, `time` and `prev`.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// See [`Record::actor`].
    pub actor: String,
    /// See [`Record::action`].
    pub action: String,
    /// See [`Record::playbook`].
    pub playbook: String,
    /// See [`Record::reason`].
    pub reason: String,
    /// See [`Record::inputs`].
    pub inputs: Value,
    /// See [`Record::before`].
    pub before: Value,
    /// See [`Record::after`].
    pub after: Value,
    /// See [`Record::outcome`].
    pub outcome: String,
    /// The W3C `traceparent` of the span that caused it (tracing on): the record keeps its
    /// trace id, and the append's own span is its child.
    pub traceparent: Option<String>,
}

impl Entry {
    /// The record this entry becomes at `seq`, written at `time`, after the line hashing to
    /// `prev`.
    pub fn into_record(self, seq: u64, time: Timestamp, prev: String) -> Record {
        Record {
            seq,
            time,
            prev,
            actor: self.actor,
            action: self.action,
            playbook: self.playbook,
            reason: self.reason,
            inputs: self.inputs,
            before: self.before,
            after: self.after,
            outcome: self.outcome,
            trace_id: self
                .traceparent
                .as_deref()
                .and_then(|t| t.split('-').nth(1))
                .map(str::to_string),
        }
    }
}

/// What verifying a log found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Number of intact records.
    pub records: u64,
    /// Bytes of a torn last line, if any (reported, not an error: the write it held never
    /// completed, so the action it recorded was never performed).
    pub torn_tail: Option<usize>,
}

/// SHA-256 (hex) of a record's line without its newline: the next record's `prev`.
pub fn hash_line(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// True when `rec` says what became of `intent` (same playbook and action, not an intent).
pub fn closes_intent(intent: &Record, rec: &Record) -> bool {
    rec.playbook == intent.playbook && rec.action == intent.action && rec.outcome != "intent"
}

/// A chain walked so far: its tip, and the intents still waiting for their outcome.
#[derive(Clone, Debug)]
pub struct Chain {
    seq: u64,
    last_hash: String,
    unresolved: BTreeMap<String, Record>,
    /// Records after the last `audit-checkpoint` (all, when there is none).
    since_checkpoint: u64,
    /// The last `audit-checkpoint` record's time.
    last_checkpoint: Option<Timestamp>,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            seq: 0,
            last_hash: GENESIS.to_string(),
            unresolved: BTreeMap::new(),
            since_checkpoint: 0,
            last_checkpoint: None,
        }
    }
}

impl Chain {
    /// An empty chain: the next record is seq 1 with `prev` [`GENESIS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain taken up after record `seq` whose line hashes to `last_hash`: the next record
    /// is `seq + 1`. For a part of a chain (an export made with `--since`) whose first
    /// record's `prev` can only be taken on trust unless another copy holds record `seq`.
    pub fn after(seq: u64, last_hash: &str) -> Self {
        Self {
            seq,
            last_hash: last_hash.to_string(),
            unresolved: BTreeMap::new(),
            since_checkpoint: 0,
            last_checkpoint: None,
        }
    }

    /// Records after the last checkpoint (every record walked, when there was none), and
    /// that checkpoint's time: where [`checkpoint::Checkpointer`] takes up the count.
    pub fn since_checkpoint(&self) -> (u64, Option<Timestamp>) {
        (self.since_checkpoint, self.last_checkpoint)
    }

    /// Sequence number of the last record (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Hash of the last line: the next record's `prev`.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Per playbook, an `intent` not (yet) followed by an outcome of the same action.
    pub fn into_unresolved(self) -> BTreeMap<String, Record> {
        self.unresolved
    }

    /// Checks one whole line (without its newline) as the next record and, when it holds,
    /// advances the chain past it. Errors say what is wrong with this line; the chain is
    /// then unchanged.
    pub fn push(&mut self, line: &[u8]) -> Result<(), String> {
        let rec: Record =
            serde_json::from_slice(line).map_err(|e| format!("record is not valid JSON: {e}"))?;
        let Some(next) = self.seq.checked_add(1) else {
            return Err(format!(
                "sequence {} after the largest sequence number",
                rec.seq
            ));
        };
        if rec.seq != next {
            return Err(format!(
                "sequence {} where {next} was expected (missing or reordered record)",
                rec.seq
            ));
        }
        if rec.prev != self.last_hash {
            return Err(format!(
                "seq {}: prev hash does not match the previous record (edited, removed or reordered)",
                rec.seq
            ));
        }
        self.seq = rec.seq;
        self.last_hash = hash_line(line);
        if rec.action == checkpoint::ACTION {
            self.since_checkpoint = 0;
            self.last_checkpoint = Some(rec.time);
        } else {
            self.since_checkpoint += 1;
        }
        if rec.outcome == "intent" && !rec.playbook.is_empty() {
            self.unresolved.insert(rec.playbook.clone(), rec);
        } else if self
            .unresolved
            .get(&rec.playbook)
            .is_some_and(|i| closes_intent(i, &rec))
        {
            self.unresolved.remove(&rec.playbook);
        }
        Ok(())
    }
}

/// Verifies a sequence of whole lines (without newlines) from the start of a log. Errors name
/// the first broken line (1-based) and what is wrong with it; Ok is the number of records.
pub fn verify_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Result<u64, (u64, String)> {
    let mut chain = Chain::new();
    for (i, line) in lines.into_iter().enumerate() {
        chain.push(line).map_err(|e| (i as u64 + 1, e))?;
    }
    Ok(chain.seq())
}

pub mod checkpoint;
pub mod multi;

#[cfg(test)]
mod tests;
