//! The cluster's copy of the chain as data, pure (time passed in): the head object's fields,
//! its open records, sealing a full open part into a segment, pruning old segments, and
//! checking a copy read back.
//!
//! The head object holds `head` (JSON [`Head`]) and `records` (the exact lines of the
//! records after the last sealed segment, each ending in a newline). A sealed segment holds
//! `records` only; the head lists the segments (first, last, the last line's hash and time)
//! so a reader never trusts a segment the head does not name.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::audit::{GENESIS, Record, hash_line};

/// Data key of the head (JSON [`Head`]).
pub const HEAD_KEY: &str = "head";
/// Data key of the records (JSON Lines, exact bytes).
pub const RECORDS_KEY: &str = "records";
/// At most this many records stay in the head object before they are sealed into a segment:
/// every append rewrites the head object, so its size is what each record costs etcd.
pub const OPEN_RECORDS: usize = 32;
/// ... and at most this many bytes (a ConfigMap holds at most 1 MiB).
pub const OPEN_BYTES: usize = 256 * 1024;

/// Where the chain stands, as the cluster holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    /// The last record's sequence number (0: none yet).
    pub seq: u64,
    /// SHA-256 of the last record's line ([`GENESIS`] before the first).
    pub hash: String,
    /// Raised by each new leader on its first append: a leader that sees a higher term than
    /// its own has been deposed.
    pub term: u64,
    /// The identity that holds `term`.
    pub leader: String,
    /// Sealed segments, oldest first, contiguous.
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// The last record removed from the cluster by retention; the records up to it live in
    /// the replicas' files and in exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Mark>,
}

/// A sealed run of records, held in its own object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    /// First record's seq.
    pub first: u64,
    /// Last record's seq.
    pub last: u64,
    /// Hash of the last record's line.
    pub last_hash: String,
    /// Time of the last record (retention is counted from it).
    pub last_time: Timestamp,
}

/// One point of the chain: a record's seq and the hash of its line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The record's seq.
    pub seq: u64,
    /// The hash of its line.
    pub hash: String,
}

/// The head object's content: the head and the records not sealed yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Open {
    /// The head.
    pub head: Head,
    /// Lines (without newline) of records `base()+1 ..= head.seq`.
    pub lines: Vec<Vec<u8>>,
}

/// A sealed segment as read back: what the head says of it, and its lines.
pub type SegmentCopy = (Segment, Vec<Vec<u8>>);

/// What one append does to the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Next {
    /// The head object's new content.
    pub open: Open,
    /// A segment to create first (its description and its records), when the open part was
    /// full.
    pub seal: Option<(Segment, Vec<u8>)>,
    /// Segments dropped from the head by retention (their objects go after the head update).
    pub pruned: Vec<Segment>,
}

impl Open {
    /// A chain with no records.
    pub fn empty() -> Self {
        Self {
            head: Head {
                seq: 0,
                hash: GENESIS.to_string(),
                term: 0,
                leader: String::new(),
                segments: Vec::new(),
                pruned: None,
            },
            lines: Vec::new(),
        }
    }

    /// The seq and hash of the last record not in `lines` (sealed or pruned).
    pub fn base(&self) -> Mark {
        self.head
            .segments
            .last()
            .map(|s| Mark {
                seq: s.last,
                hash: s.last_hash.clone(),
            })
            .or_else(|| self.head.pruned.clone())
            .unwrap_or(Mark {
                seq: 0,
                hash: GENESIS.to_string(),
            })
    }

    /// Reads the head object's data and checks it: the records follow the base without a gap
    /// and each links to the one before, and the last is the head.
    pub fn decode(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let head: Head = serde_json::from_str(
            data.get(HEAD_KEY)
                .ok_or_else(|| format!("no `{HEAD_KEY}` key"))?,
        )
        .map_err(|e| format!("`{HEAD_KEY}` is not a chain head: {e}"))?;
        let lines = split_lines(data.get(RECORDS_KEY).map_or("", String::as_str));
        let open = Self { head, lines };
        let base = open.base();
        let tip = check_run(&open.lines, &base).map_err(|e| format!("`{RECORDS_KEY}`: {e}"))?;
        if tip.seq != open.head.seq || tip.hash != open.head.hash {
            return Err(format!(
                "the head says seq {} but the records end at seq {}",
                open.head.seq, tip.seq
            ));
        }
        check_segments(&open.head)?;
        Ok(open)
    }

    /// The head object's data.
    pub fn encode(&self) -> BTreeMap<String, String> {
        let mut records = String::new();
        for l in &self.lines {
            records.push_str(&String::from_utf8_lossy(l));
            records.push('\n');
        }
        BTreeMap::from([
            (
                HEAD_KEY.to_string(),
                serde_json::to_string(&self.head).unwrap_or_default(),
            ),
            (RECORDS_KEY.to_string(), records),
        ])
    }

    /// The line of record `seq`, if the open part holds it.
    pub fn line(&self, seq: u64) -> Option<&[u8]> {
        let base = self.base().seq;
        let i = seq.checked_sub(base + 1)?;
        self.lines.get(usize::try_from(i).ok()?).map(Vec::as_slice)
    }

    /// The content after appending `line` (the record `head.seq + 1`, written at `time`) under
    /// `term` held by `leader`: the open part is sealed first when full, and segments whose
    /// last record is older than `retention` before `now` are dropped from the head.
    pub fn next(
        &self,
        line: Vec<u8>,
        term: u64,
        leader: &str,
        retention: SignedDuration,
        now: Timestamp,
    ) -> Next {
        let mut open = self.clone();
        let mut seal = None;
        let bytes: usize = open.lines.iter().map(|l| l.len() + 1).sum();
        if !open.lines.is_empty()
            && (open.lines.len() >= OPEN_RECORDS || bytes + line.len() + 1 > OPEN_BYTES)
        {
            let base = open.base();
            let last_time = open
                .lines
                .last()
                .and_then(|l| serde_json::from_slice::<Record>(l).ok())
                .map_or(now, |r| r.time);
            let segment = Segment {
                first: base.seq + 1,
                last: open.head.seq,
                last_hash: open.head.hash.clone(),
                last_time,
            };
            let mut records = Vec::with_capacity(bytes);
            for l in open.lines.drain(..) {
                records.extend_from_slice(&l);
                records.push(b'\n');
            }
            open.head.segments.push(segment.clone());
            seal = Some((segment, records));
        }
        let mut pruned = Vec::new();
        let cutoff = now.checked_sub(retention).unwrap_or(now);
        // Never the newest segment: its hash is the base the open part links to.
        while open.head.segments.len() > 1 && open.head.segments[0].last_time < cutoff {
            let s = open.head.segments.remove(0);
            open.head.pruned = Some(Mark {
                seq: s.last,
                hash: s.last_hash.clone(),
            });
            pruned.push(s);
        }
        open.head.seq += 1;
        open.head.hash = hash_line(&line);
        open.head.term = term;
        open.head.leader = leader.to_string();
        open.lines.push(line);
        Next { open, seal, pruned }
    }
}

/// The lines of a `records` value (without newlines; a missing last newline is tolerated).
pub fn split_lines(records: &str) -> Vec<Vec<u8>> {
    records
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// Checks that `lines` continue the chain after `base` (seq + 1 onwards, each `prev` the
/// hash of the line before, the first's `prev` the base's hash); returns the last mark.
pub fn check_run(lines: &[Vec<u8>], base: &Mark) -> Result<Mark, String> {
    let mut tip = base.clone();
    for line in lines {
        let rec: Record = serde_json::from_slice(line)
            .map_err(|e| format!("after seq {}: not a record: {e}", tip.seq))?;
        if rec.seq != tip.seq + 1 {
            return Err(format!(
                "seq {} where {} was expected (missing or reordered record)",
                rec.seq,
                tip.seq + 1
            ));
        }
        if rec.prev != tip.hash {
            return Err(format!(
                "seq {}: prev hash does not match the previous record (edited, removed or reordered)",
                rec.seq
            ));
        }
        tip = Mark {
            seq: rec.seq,
            hash: hash_line(line),
        };
    }
    Ok(tip)
}

/// The segments the head names tile the chain after the pruned mark without gaps.
fn check_segments(head: &Head) -> Result<(), String> {
    let mut next = head.pruned.as_ref().map_or(1, |p| p.seq + 1);
    for s in &head.segments {
        if s.first != next || s.last < s.first {
            return Err(format!(
                "segment {}..{} does not follow seq {}",
                s.first,
                s.last,
                next - 1
            ));
        }
        next = s.last + 1;
    }
    Ok(())
}

/// Walks a whole cluster copy (the sealed segments' lines in order, then the open part) as
/// one chain from the pruned mark (or the start), checking that every segment ends where the
/// head says. Errors name the segment or the open part and what is wrong.
pub fn verify_copy(open: &Open, segments: &[SegmentCopy]) -> Result<Mark, String> {
    let mut tip = open.head.pruned.clone().unwrap_or(Mark {
        seq: 0,
        hash: GENESIS.to_string(),
    });
    if segments.len() != open.head.segments.len() {
        return Err(format!(
            "the head names {} segments, {} were read",
            open.head.segments.len(),
            segments.len()
        ));
    }
    for (s, lines) in segments {
        tip =
            check_run(lines, &tip).map_err(|e| format!("segment {}..{}: {e}", s.first, s.last))?;
        if tip.seq != s.last || tip.hash != s.last_hash {
            return Err(format!(
                "segment {}..{}: ends at seq {} with another hash than the head names",
                s.first, s.last, tip.seq
            ));
        }
    }
    check_run(&open.lines, &tip).map_err(|e| format!("open records: {e}"))
}

#[cfg(test)]
mod tests;
