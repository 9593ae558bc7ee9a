//! Reading the newest audit records without reading the whole log.
//!
//! The audit log is never rotated, so `GET /v1/audit` must not cost the log's size: this
//! reads fixed-size blocks backwards from the end of the file and parses complete lines
//! newest first until it has `limit` matching records. Time and memory are O(limit) for an
//! unfiltered read; a filter that matches rarely scans further back, but memory stays one
//! block, one line and the matches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use jiff::Timestamp;

use crate::audit::Record;

/// Bytes read per step backwards.
pub const BLOCK: usize = 64 * 1024;
/// A line longer than this is skipped (no record failoverd writes comes near it); it bounds
/// the memory a damaged or foreign file can make a read take.
pub const MAX_LINE: usize = 4 * 1024 * 1024;
/// With `since`, the scan stops at the first record older than `since` by more than this.
/// Records are appended in time order by one writer; the margin keeps a small backward step
/// of the wall clock from hiding records.
pub const SINCE_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// Which records to return.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only records about this playbook.
    pub playbook: Option<String>,
    /// Only records by this actor.
    pub actor: Option<String>,
    /// Only records written at or after this time.
    pub since: Option<Timestamp>,
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        self.playbook.as_ref().is_none_or(|p| &r.playbook == p)
            && self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self.since.is_none_or(|s| r.time >= s)
    }

    /// True when no record at or before `r` can match (the scan may stop).
    fn exhausted_at(&self, r: &Record) -> bool {
        self.since.is_some_and(|s| {
            jiff::SignedDuration::try_from(SINCE_MARGIN)
                .ok()
                .and_then(|m| s.checked_sub(m).ok())
                .is_some_and(|floor| r.time < floor)
        })
    }
}

/// The newest `limit` complete records of the log at `path` that match `filter`, oldest
/// first — what reading the whole file, filtering and keeping the last `limit` would give
/// (a torn last line and lines that do not parse are skipped the same way).
pub fn read_last(path: &Path, limit: usize, filter: &Filter) -> std::io::Result<Vec<Record>> {
    read_last_with(path, limit, filter, BLOCK)
}

/// [`read_last`] with a chosen block size (tests use tiny blocks to hit every boundary).
pub fn read_last_with(
    path: &Path,
    limit: usize,
    filter: &Filter,
    block: usize,
) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let block = block.max(1);
    let mut file = File::open(path)?;
    let mut pos = file.metadata()?.len();
    // The line whose start is not found yet, with its terminating newline.
    let mut tail: Vec<u8> = Vec::new();
    // True while dropping bytes up to the next newline backwards: the torn bytes after the
    // file's last newline, or a line longer than MAX_LINE.
    let mut skipping = true;
    let mut buf = vec![0u8; block];
    while pos > 0 {
        let n = usize::try_from(pos).unwrap_or(usize::MAX).min(block);
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        let mut chunk: &[u8] = &buf[..n];
        if skipping {
            match chunk.iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    chunk = &chunk[..=i];
                    skipping = false;
                }
                None => continue,
            }
        }
        // Complete lines are those with a newline before them inside this chunk; the first
        // segment's start may lie in an earlier block.
        let mut joined;
        let data: &[u8] = if tail.is_empty() {
            chunk
        } else {
            joined = Vec::with_capacity(chunk.len() + tail.len());
            joined.extend_from_slice(chunk);
            joined.append(&mut tail);
            &joined
        };
        let mut end = data.len();
        // Walk the newlines that end a previous line, from the back.
        let mut search = data.len().saturating_sub(1);
        while let Some(i) = data[..search].iter().rposition(|&b| b == b'\n') {
            if take(&data[i + 1..end], limit, filter, &mut out) {
                out.reverse();
                return Ok(out);
            }
            end = i + 1;
            search = i;
        }
        // data[..end] is the first line of this chunk (start unknown unless at offset 0).
        if end > MAX_LINE {
            tail.clear();
            skipping = true;
        } else {
            tail.clear();
            tail.extend_from_slice(&data[..end]);
        }
    }
    if !tail.is_empty() {
        take(&tail, limit, filter, &mut out);
    }
    out.reverse();
    Ok(out)
}

/// Parses one complete line (with its newline); pushes it when it matches. True when the
/// scan is done: `limit` reached, or nothing older can match.
fn take(line: &[u8], limit: usize, filter: &Filter, out: &mut Vec<Record>) -> bool {
    let text = line.trim_ascii_end();
    if text.is_empty() {
        return false;
    }
    let Ok(r) = serde_json::from_slice::<Record>(text) else {
        return false;
    };
    if filter.matches(&r) {
        out.push(r);
        if out.len() >= limit {
            return true;
        }
        return false;
    }
    filter.exhausted_at(&r)
}

// ---- Forward reads from a sequence number (`afterSeq`: the replica copy protocol) ----

/// Default and most records of one `afterSeq` read.
pub const AFTER_SEQ_LIMIT: (usize, usize) = (1000, 10_000);

/// The first `limit` complete records with `seq > after` that match `filter`, in file (so
/// seq) order. Finds where to start by bisecting the file on byte offsets (records are in
/// seq order), then reads forward a line at a time: O(log size) seeks plus O(limit) lines,
/// memory one line and the matches. A torn last line and lines that do not parse are
/// skipped; a line over [`MAX_LINE`] is skipped without being held.
pub fn read_after(
    path: &Path,
    after: u64,
    limit: usize,
    filter: &Filter,
) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    // Invariant: the first record at or after a line start past `lo` has seq <= after (or
    // lo = 0); past `hi` it has seq > after or there is none.
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > BLOCK as u64 {
        let mid = lo + (hi - lo) / 2;
        match first_seq_from(&mut file, mid)? {
            Some(seq) if seq <= after => lo = mid,
            _ => hi = mid,
        }
    }
    let mut r = std::io::BufReader::new(file);
    r.seek(SeekFrom::Start(lo))?;
    let mut buf = Vec::new();
    if lo > 0 {
        // Inside some line: its rest is not a whole line.
        next_line(&mut r, &mut buf)?;
    }
    while let Some(whole) = next_line(&mut r, &mut buf)? {
        if !whole {
            continue;
        }
        let Ok(rec) = serde_json::from_slice::<Record>(buf.trim_ascii_end()) else {
            continue;
        };
        if rec.seq > after && filter.matches(&rec) {
            out.push(rec);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The seq of the first parseable whole line starting after byte `pos` (at `pos` when 0).
fn first_seq_from(file: &mut File, pos: u64) -> std::io::Result<Option<u64>> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    file.seek(SeekFrom::Start(pos))?;
    let mut r = std::io::BufReader::new(&mut *file);
    let mut buf = Vec::new();
    if pos > 0 {
        next_line(&mut r, &mut buf)?;
    }
    while let Some(whole) = next_line(&mut r, &mut buf)? {
        if whole && let Ok(s) = serde_json::from_slice::<Seq>(buf.trim_ascii_end()) {
            return Ok(Some(s.seq));
        }
    }
    Ok(None)
}

/// Reads the next line into `buf` (with its newline): None at the end, Some(true) for a
/// whole line, Some(false) for a line over [`MAX_LINE`] (skipped, not held) or a last line
/// without a newline (torn).
fn next_line(r: &mut impl std::io::BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    use std::io::BufRead as _;
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        return Ok(Some(true));
    }
    if buf.len() <= MAX_LINE {
        return Ok(Some(false)); // torn last line
    }
    // Over-long: drop the rest of it a block at a time.
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(Some(false));
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(Some(false));
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn line(seq: u64, time_s: i64, actor: &str, playbook: &str) -> String {
        let t = Timestamp::from_second(time_s).unwrap();
        let v = json!({
            "seq": seq, "time": t, "prev": "0".repeat(64), "actor": actor, "action": "noted",
            "playbook": playbook, "reason": "x".repeat((seq % 7) as usize), "inputs": {},
            "before": null, "after": null, "outcome": "noted"
        });
        format!("{v}\n")
    }

    /// The oracle: the whole file read and filtered with the log's own full reader.
    fn expected(path: &Path, limit: usize, f: &Filter) -> Vec<u64> {
        let all: Vec<_> = crate::audit::read_all(path)
            .unwrap()
            .into_iter()
            .filter(|r| f.matches(r))
            .map(|r| r.seq)
            .collect();
        all[all.len().saturating_sub(limit)..].to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Ensures the backward read returns exactly the newest `limit` matching records of
        /// a full read, for any block size, with garbage lines and a torn last line.
        #[test]
        fn matches_a_full_read(
            recs in proptest::collection::vec((0usize..3, 0usize..3, any::<bool>()), 0..60),
            torn in proptest::option::of("[a-z{\" ]{0,40}"),
            limit in 0usize..70,
            block in 1usize..200,
            fp in proptest::option::of(0usize..3),
            fa in proptest::option::of(0usize..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let mut text = String::new();
            for (i, (a, p, garbage)) in recs.iter().enumerate() {
                if *garbage && i % 5 == 0 {
                    text.push_str("not json\n");
                }
                text.push_str(&line(i as u64 + 1, 1_700_000_000 + i as i64, &format!("a{a}"), &format!("p{p}")));
            }
            if let Some(t) = &torn {
                text.push_str(t);
            }
            std::fs::write(&path, &text).unwrap();
            let f = Filter {
                playbook: fp.map(|p| format!("p{p}")),
                actor: fa.map(|a| format!("a{a}")),
                since: None,
            };
            let got: Vec<u64> = read_last_with(&path, limit, &f, block).unwrap().into_iter().map(|r| r.seq).collect();
            prop_assert_eq!(got, expected(&path, limit, &f));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Ensures the forward read from `afterSeq` returns exactly the first `limit`
        /// matching records with a greater seq of a full read, at any size (bisection on and
        /// off), with garbage lines and a torn last line.
        #[test]
        fn after_seq_matches_a_full_read(
            n in 0u64..3000,
            after in 0u64..3100,
            limit in 1usize..50,
            garbage in any::<bool>(),
            torn in proptest::option::of("[a-z{\" ]{0,40}"),
            fp in proptest::option::of(0usize..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let mut text = String::new();
            for i in 1..=n {
                if garbage && i % 97 == 0 {
                    text.push_str("not json\n");
                }
                text.push_str(&line(i, 1_700_000_000 + i as i64, "engine", &format!("p{}", i % 3)));
            }
            if let Some(t) = &torn {
                text.push_str(t);
            }
            std::fs::write(&path, &text).unwrap();
            let f = Filter { playbook: fp.map(|p| format!("p{p}")), ..Filter::default() };
            let want: Vec<u64> = crate::audit::read_all(&path)
                .unwrap()
                .into_iter()
                .filter(|r| r.seq > after && f.matches(r))
                .map(|r| r.seq)
                .take(limit)
                .collect();
            let got: Vec<u64> = read_after(&path, after, limit, &f)
                .unwrap()
                .into_iter()
                .map(|r| r.seq)
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Ensures `since` returns the records at or after it and stops scanning at the first
    /// record far older (a full read agrees when times only grow).
    #[test]
    fn since_filters_and_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let text: String = (1..=500)
            .map(|i| line(i, 1_700_000_000 + 10 * i as i64, "engine", "web"))
            .collect();
        std::fs::write(&path, text).unwrap();
        let f = Filter {
            since: Some(Timestamp::from_second(1_700_000_000 + 10 * 450).unwrap()),
            ..Filter::default()
        };
        let got: Vec<u64> = read_last_with(&path, 1000, &f, 97)
            .unwrap()
            .into_iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, (450..=500).collect::<Vec<_>>());
        assert_eq!(got, expected(&path, 1000, &f));
    }

    /// Ensures an over-long line is skipped without taking its size in memory, and the
    /// records around it are still read.
    #[test]
    fn skips_over_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut text = line(1, 1_700_000_000, "engine", "web");
        text.push_str(&"y".repeat(MAX_LINE + 10));
        text.push('\n');
        text.push_str(&line(2, 1_700_000_001, "engine", "web"));
        std::fs::write(&path, text).unwrap();
        let got: Vec<u64> = read_last(&path, 10, &Filter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, vec![1, 2]);
    }
}
