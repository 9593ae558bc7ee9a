//! The audit log: append-only JSON Lines, each record carrying the SHA-256 of the line before
//! it, fsynced before the action it records counts as done.
//!
//! The chain starts from 64 zeros. `prev` of record N is the SHA-256 (hex) of the exact bytes
//! of line N-1 without its newline, so editing, removing or reordering any record breaks every
//! link after it; [`verify`] names the first broken one.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
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
    pub inputs: Value,
    /// Route before.
    #[serde(default)]
    pub before: Value,
    /// Route after.
    #[serde(default)]
    pub after: Value,
    /// `intent` (about to write), `written`, `unchanged`, `failed: ...`, `refused: ...`, `noted`.
    pub outcome: String,
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
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O failure: the action must not proceed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The existing log is broken somewhere before its last line.
    #[error("audit log {path}: {problem}")]
    Broken {
        /// The log file.
        path: PathBuf,
        /// The first problem.
        problem: String,
    },
}

/// An open audit log, positioned at its end.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    seq: u64,
    last_hash: String,
}

fn hash_line(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Result of scanning a log: the chain's tip and a torn tail, if any.
#[derive(Debug)]
struct Scan {
    seq: u64,
    last_hash: String,
    /// Byte offset where the complete lines end.
    good_len: u64,
    /// A last line without its newline (a write cut short by a crash).
    torn: Option<Vec<u8>>,
}

fn scan(path: &Path) -> Result<Scan, (u64, String)> {
    let file = File::open(path).map_err(|e| (0, format!("cannot open: {e}")))?;
    let mut reader = BufReader::new(file);
    let mut seq = 0u64;
    let mut last_hash = GENESIS.to_string();
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| (line_no + 1, format!("read error: {e}")))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Ok(Scan {
                seq,
                last_hash,
                good_len: offset,
                torn: Some(buf.clone()),
            });
        }
        let line = &buf[..buf.len() - 1];
        let rec: Record = serde_json::from_slice(line)
            .map_err(|e| (line_no, format!("record is not valid JSON: {e}")))?;
        if rec.seq != seq + 1 {
            return Err((
                line_no,
                format!(
                    "sequence {} where {} was expected (missing or reordered record)",
                    rec.seq,
                    seq + 1
                ),
            ));
        }
        if rec.prev != last_hash {
            return Err((
                line_no,
                format!(
                    "seq {}: prev hash does not match the previous record (edited, removed or reordered)",
                    rec.seq
                ),
            ));
        }
        seq = rec.seq;
        last_hash = hash_line(line);
        offset += n as u64;
    }
    Ok(Scan {
        seq,
        last_hash,
        good_len: offset,
        torn: None,
    })
}

/// What [`verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Number of intact records.
    pub records: u64,
    /// Bytes of a torn last line, if any (reported, not an error: the write it held never
    /// completed, so the action it recorded was never performed).
    pub torn_tail: Option<usize>,
}

/// Checks the whole chain. Errors name the first broken line.
pub fn verify(path: &Path) -> Result<Verified, String> {
    match scan(path) {
        Ok(s) => Ok(Verified {
            records: s.seq,
            torn_tail: s.torn.map(|t| t.len()),
        }),
        Err((line, problem)) => Err(format!("{}:{line}: {problem}", path.display())),
    }
}

impl AuditLog {
    /// Opens (or creates) the log and checks its chain.
    ///
    /// A torn last line — a crash in the middle of an append — is cut off and recorded in an
    /// `audit-recovered` record holding its bytes, so nothing earlier is lost and the chain
    /// continues. Any other break refuses to open: failoverd will not extend a forged chain.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let s = scan(path).map_err(|(line, problem)| AuditError::Broken {
            path: path.to_path_buf(),
            problem: format!("line {line}: {problem}"),
        })?;
        if s.torn.is_some() {
            file.set_len(s.good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            seq: s.seq,
            last_hash: s.last_hash,
        };
        if let Some(torn) = s.torn {
            tracing::warn!(bytes = torn.len(), path = %path.display(), "audit log had a torn last line; recovered");
            log.append(Entry {
                actor: "failoverd".into(),
                action: "audit-recovered".into(),
                reason: format!(
                    "torn last line of {} bytes after seq {} removed (a write cut short by a crash)",
                    torn.len(),
                    s.seq
                ),
                inputs: serde_json::json!({ "tornBytesHex": hex::encode(&torn) }),
                outcome: "noted".into(),
                ..Entry::default()
            })?;
        }
        Ok(log)
    }

    /// Appends one record and fsyncs it. Only after this returns may the action count as done.
    pub fn append(&mut self, e: Entry) -> Result<Record, AuditError> {
        let rec = Record {
            seq: self.seq + 1,
            time: Timestamp::now(),
            prev: self.last_hash.clone(),
            actor: e.actor,
            action: e.action,
            playbook: e.playbook,
            reason: e.reason,
            inputs: e.inputs,
            before: e.before,
            after: e.after,
            outcome: e.outcome,
        };
        let mut line = serde_json::to_vec(&rec).map_err(|err| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(err),
        })?;
        let hash = hash_line(&line);
        line.push(b'\n');
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.seq = rec.seq;
        self.last_hash = hash;
        Ok(rec)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every intact record (a torn tail is skipped).
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str(l.trim_end()).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(action: &str) -> Entry {
        Entry {
            actor: "engine".into(),
            action: action.into(),
            playbook: "web".into(),
            reason: "test".into(),
            outcome: "written".into(),
            ..Entry::default()
        }
    }

    /// Ensures appended records chain and verify, and survive reopening.
    #[test]
    fn chain_verifies_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for a in ["failover", "failback"] {
            log.append(entry(a)).unwrap();
        }
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        let r = log.append(entry("failover")).unwrap();
        assert_eq!(r.seq, 3);
        assert_eq!(
            verify(&path),
            Ok(Verified {
                records: 3,
                torn_tail: None
            })
        );
    }

    /// Ensures an edited, a removed and a reordered record are each caught at the right line.
    #[test]
    fn tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for a in ["one", "two", "three", "four"] {
            log.append(entry(a)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                lines
                    .iter()
                    .map(|l| l.replace("\"three\"", "\"tree\""))
                    .collect(),
                ":4: seq 4: prev hash",
            ),
            (
                vec![lines[0], lines[1], lines[3]]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                ":3: sequence 4 where 3",
            ),
            (
                vec![lines[0], lines[2], lines[1], lines[3]]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                ":2: sequence 3 where 2",
            ),
        ];
        for (body, want) in cases {
            std::fs::write(&path, body.join("\n") + "\n").unwrap();
            let err = verify(&path).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(
                AuditLog::open(&path).is_err(),
                "a broken chain must not be extended"
            );
        }
    }

    /// Ensures a torn last line is reported by verify, and reopening cuts it, records the
    /// recovery and continues the chain without losing earlier records.
    #[test]
    fn torn_tail_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry("one")).unwrap();
        log.append(entry("two")).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"time\":\"20").unwrap();
        drop(f);
        assert_eq!(
            verify(&path),
            Ok(Verified {
                records: 2,
                torn_tail: Some(19)
            })
        );
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry("three")).unwrap();
        assert_eq!(
            verify(&path),
            Ok(Verified {
                records: 4,
                torn_tail: None
            })
        );
        let recs = read_all(&path).unwrap();
        let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["one", "two", "audit-recovered", "three"]);
    }
}
