//! The audit log: append-only JSON Lines, each record carrying the SHA-256 of the line before
//! it, fsynced before the action it records counts as done.
//!
//! The chain starts from 64 zeros. `prev` of record N is the SHA-256 (hex) of the exact bytes
//! of line N-1 without its newline, so editing, removing or reordering any record breaks every
//! link after it; [`verify`] names the first broken one.
//!
//! The record, its hash and the chain arithmetic are [`failoverd_core::audit`] (re-exported
//! here); this module owns the file: reading, appending, fsync, cutting torn tails.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

pub use failoverd_core::audit::{
    Chain, Entry, GENESIS, Record, Verified, closes_intent, hash_line, verify_lines,
};
use jiff::Timestamp;

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
///
/// The file never holds more than whole, synced records: an append that fails (ENOSPC, EIO,
/// a failed fsync) is cut back to the end of the last whole record before the error is
/// returned, and `seq`/`prev` advance only after the fsync, so the next append retries
/// cleanly. If even the cut fails the log is *dirty*: nothing is appended until a later cut
/// succeeds.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    seq: u64,
    last_hash: String,
    /// Length of the file up to the end of the last whole, synced record.
    good_len: u64,
    /// A failed append left bytes past `good_len` that could not be cut off yet.
    dirty: bool,
    /// Records owed to the chain (see [`AuditLog::append_owed`]), oldest first: written
    /// before any later record. Small by construction: a move's intent is written only once
    /// this is empty, so at most one move's outcome is owed at a time, plus the notes of one
    /// start (a torn tail, one resolved intent per playbook).
    owed: VecDeque<Entry>,
    /// Intents found at open without an outcome after them, per playbook.
    unresolved: Vec<Record>,
    /// Where availability is published (readiness, metrics); see [`AuditHealth`].
    health: Arc<AuditHealth>,
    /// The deployment's chain in the cluster, when there is one: records are placed there
    /// first and this file copies them (see [`ChainStore`]).
    chain: Option<Arc<dyn ChainStore>>,
    /// Checkpoints and shipping (see `audit/extras.rs`).
    extras: Extras,
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
    /// Per playbook, an `intent` not followed by an outcome of the same action.
    unresolved: BTreeMap<String, Record>,
    /// Records after the last checkpoint, and its time.
    since_checkpoint: (u64, Option<Timestamp>),
}

fn scan(path: &Path) -> Result<Scan, (u64, String)> {
    let file = File::open(path).map_err(|e| (0, format!("cannot open: {e}")))?;
    let mut reader = BufReader::new(file);
    let mut chain = Chain::new();
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let mut torn = None;
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
            torn = Some(buf.clone());
            break;
        }
        chain
            .push(&buf[..buf.len() - 1])
            .map_err(|problem| (line_no, problem))?;
        offset += n as u64;
    }
    Ok(Scan {
        seq: chain.seq(),
        last_hash: chain.last_hash().to_string(),
        good_len: offset,
        torn,
        since_checkpoint: chain.since_checkpoint(),
        unresolved: chain.into_unresolved(),
    })
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
    /// A torn last line — a crash in the middle of an append, or a failed append whose cut
    /// could not be made — is cut off and recorded in an `audit-recovered` record holding its
    /// bytes, so nothing earlier is lost and the chain continues. When that record cannot be
    /// written yet (the disk is still full) it is owed (see [`AuditLog::append_owed`]) and the
    /// log opens anyway: a transient disk error must never stop a later start. Any other break
    /// refuses to open: failoverd will not extend a forged chain.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, note_torn: bool) -> Result<Self, AuditError> {
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
            // Cutting never needs free space, so a full disk does not stop it.
            file.set_len(s.good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            seq: s.seq,
            last_hash: s.last_hash,
            good_len: s.good_len,
            dirty: false,
            owed: VecDeque::new(),
            unresolved: s.unresolved.into_values().collect(),
            health: Arc::new(AuditHealth::default()),
            chain: None,
            extras: Extras::new(s.since_checkpoint),
        };
        if let Some(torn) = s.torn.filter(|t| {
            if !note_torn {
                tracing::warn!(bytes = t.len(), path = %path.display(), "audit file had an unfinished copy of a record; cut, it is copied again from the cluster");
            }
            note_torn
        }) {
            tracing::warn!(bytes = torn.len(), path = %path.display(), "audit log had a torn last line; recovered");
            let note = Entry {
                actor: "failoverd".into(),
                action: "audit-recovered".into(),
                reason: format!(
                    "torn last line of {} bytes after seq {} removed (a write cut short by a crash or a full disk)",
                    torn.len(),
                    s.seq
                ),
                inputs: serde_json::json!({ "tornBytesHex": hex::encode(&torn) }),
                outcome: "noted".into(),
                ..Entry::default()
            };
            if let Err(e) = log.append_owed(note) {
                tracing::error!(error = %e, "audit log takes no appends yet; the recovery note is kept and written first once it does");
            }
        }
        Ok(log)
    }

    /// Publishes this log's availability through `health` from now on (the daemon's
    /// readiness and metrics hold the other end).
    pub fn attach_health(&mut self, health: Arc<AuditHealth>) {
        let state = match self.health.unavailable() {
            Some(u) => Err(u.error),
            None => Ok(()),
        };
        health.set(
            state.as_ref().map(|_| ()).map_err(String::as_str),
            self.owed.len(),
        );
        self.extras.count_ship_errors_in(&health);
        self.health = health;
    }

    /// The health handle (see [`AuditHealth`]).
    pub fn health(&self) -> Arc<AuditHealth> {
        self.health.clone()
    }

    /// Intents found at open with no outcome after them (a crash between the two), one per
    /// playbook; the caller resolves each from the store. Taken once.
    pub fn take_unresolved(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.unresolved)
    }

    /// Records owed to the chain, not written yet.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Appends one record and fsyncs it. Only after this returns may the action count as done.
    ///
    /// Owed records go first; while one cannot be written, nothing else is (the error says
    /// so), so the chain keeps the order things happened in. A failed append leaves the file
    /// and the chain's tip as they were.
    pub fn append(&mut self, e: Entry) -> Result<Record, AuditError> {
        let r = self.flush_owed().and_then(|()| self.write_record(e));
        self.finish(&r);
        r
    }

    /// Appends a record that must reach the chain whatever happens: the outcome of a routing
    /// write already made. If it cannot be written now it is kept (in memory, in order) and
    /// written before any later record, once the log takes appends again; the error says it
    /// is owed. A crash while it is owed is covered at the next start by
    /// [`AuditLog::take_unresolved`].
    pub fn append_owed(&mut self, e: Entry) -> Result<Record, AuditError> {
        let r = match self.flush_owed() {
            Ok(()) => match self.write_record(e.clone()) {
                Ok(r) => Ok(r),
                Err(err) => {
                    self.owed.push_back(held(e, &err));
                    Err(err)
                }
            },
            Err(err) => {
                self.owed.push_back(held(e, &err));
                Err(err)
            }
        };
        self.finish(&r);
        r
    }

    /// Tries to write the owed records (and, after an episode of refused appends, its
    /// note; no other record). Ok when none is left.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        let r = self.flush_owed();
        self.finish(&r);
        r
    }

    fn publish<T>(&self, r: &Result<T, AuditError>) {
        let e = r.as_ref().err().map(ToString::to_string);
        self.health
            .set(e.as_deref().map_or(Ok(()), Err), self.owed.len());
    }

    fn flush_owed(&mut self) -> Result<(), AuditError> {
        while let Some(e) = self.owed.front().cloned() {
            self.write_record(e)?;
            self.owed.pop_front();
        }
        Ok(())
    }

    /// Publishes how an append went. The first one that succeeds after an episode of refused
    /// appends is followed at once by the episode's `audit-unavailable` note (from when, why);
    /// the episode ends only once the note is written too. So the chain always says when
    /// appends were refused, whatever append ended it (a move, a call, the controller's
    /// round).
    pub(super) fn finish<T>(&mut self, r: &Result<T, AuditError>) {
        if r.is_ok()
            && let Some(u) = self.health.unavailable()
        {
            let note = Entry {
                actor: "failoverd".into(),
                action: "audit-unavailable".into(),
                reason: format!(
                    "the audit log refused appends from {} until the record before this one ({}); no move was made without its intent meanwhile, other records of that time may be missing",
                    u.since, u.error
                ),
                outcome: "noted".into(),
                ..Entry::default()
            };
            if let Err(e) = self.write_record(note) {
                // Not even the note fits: the episode goes on (its start kept), and the note
                // is tried again after the next append that succeeds.
                self.publish(&Err::<(), _>(e));
                return;
            }
        }
        self.publish(r);
    }

    /// Cuts the file back to its last whole record (after a failed append).
    fn cut(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.good_len)?;
        self.file.sync_all()?;
        self.dirty = false;
        Ok(())
    }

    fn write_record(&mut self, e: Entry) -> Result<Record, AuditError> {
        let io = |path: &Path, source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(chain) = self.chain.clone() {
            return self.place_and_copy(&*chain, e);
        }
        let rec = e.into_record(self.seq + 1, Timestamp::now(), self.last_hash.clone());
        let line =
            serde_json::to_vec(&rec).map_err(|err| io(&self.path, std::io::Error::other(err)))?;
        // Part of a failed line (or all of it, unsynced) is cut off again inside, so the
        // chain on disk stays whole and the retry does not glue onto it.
        self.write_line(&line)?;
        self.seq = rec.seq;
        self.last_hash = hash_line(&line);
        self.landed(&rec, &line);
        Ok(rec)
    }

    /// Writes one whole line and fsyncs it; on failure the file is cut back (see `cut`).
    pub(super) fn write_line(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let io = |path: &Path, source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if self.dirty {
            // Never extend a file whose tail may hold a partial line.
            self.cut().map_err(|err| {
                io(
                    &self.path,
                    std::io::Error::new(
                        err.kind(),
                        format!("cannot cut a failed append off the log yet: {err}"),
                    ),
                )
            })?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            if let Err(cut) = self.cut() {
                self.dirty = true;
                tracing::error!(error = %cut, path = %self.path.display(), "cannot cut a failed audit append off the log; no append until it can be");
            }
            return Err(io(&self.path, err));
        }
        self.good_len += buf.len() as u64;
        Ok(())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An owed entry, marked with when and why it was held back (its record's `time` is when
/// it finally reached the log).
fn held(mut e: Entry, err: &AuditError) -> Entry {
    e.reason = format!(
        "{} [recorded late: held from {} while the audit log refused appends: {err}]",
        e.reason,
        Timestamp::now()
    );
    e
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

// ---- Beside the log: copying the cluster's chain (`copy.rs`), several copies, checkpoints,
// shipping (`extras.rs`, `ship.rs`) ----

mod copy;
mod health;
pub use copy::{ChainStore, Placed};
pub use health::{AuditHealth, Unavailable};

mod extras;
pub mod ship;

use extras::Extras;
pub use extras::{Lines, checkpoint_tick, read_key};
pub use ship::{ShipTarget, Shipper};

#[cfg(test)]
mod extras_tests;

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

    /// A real, small tmpfs (tests run as root). Unmounted on drop.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run mount (these tests need root and a tmpfs): {e}")
                });
            assert!(
                out.status.success(),
                "cannot mount a tmpfs at {} (these tests need root): {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Self { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Writes a filler file until the filesystem is full to the last byte.
        fn fill(&self) {
            let mut f = File::create(self.path().join("filler")).unwrap();
            let block = vec![0u8; 4096];
            loop {
                match f.write(&block) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
            // Single bytes into the filler's last page too.
            while f.write(&[0]).is_ok_and(|n| n == 1) {}
        }

        fn free(&self) {
            std::fs::remove_file(self.path().join("filler")).unwrap();
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    /// An entry too big for whatever is left of the log file's last page.
    fn big(action: &str) -> Entry {
        Entry {
            reason: "x".repeat(10_000),
            ..entry(action)
        }
    }

    /// Ensures an append that fails on a full disk (ENOSPC, part of the line written) leaves
    /// the file exactly as it was and the chain's tip unchanged, so that once space is freed
    /// the next append continues the chain with the next sequence number and the log verifies
    /// and reopens.
    #[test]
    fn failed_append_is_cut_back_and_retried() {
        let fs = Tmpfs::mount("64k");
        let path = fs.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry("one")).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let text = std::fs::read(&path).unwrap();
        fs.fill();
        for _ in 0..3 {
            let err = log.append(big("two")).unwrap_err();
            assert!(err.to_string().contains("No space left"), "{err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                text,
                "file changed after a failed append"
            );
        }
        assert!(log.health().unavailable().is_some());
        fs.free();
        let r = log.append(big("two")).unwrap();
        assert_eq!(r.seq, 2);
        assert!(log.health().unavailable().is_none());
        assert!(std::fs::metadata(&path).unwrap().len() > len);
        // The episode's note follows the append that ended it.
        assert_eq!(
            verify(&path),
            Ok(Verified {
                records: 3,
                torn_tail: None
            })
        );
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.append(entry("three")).unwrap().seq, 4);
        let recs = read_all(&path).unwrap();
        let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["one", "two", "audit-unavailable", "three"]);
        assert!(
            recs[2].reason.contains("No space left"),
            "{}",
            recs[2].reason
        );
    }

    /// Ensures an owed record (the outcome of a write already made) that cannot be written is
    /// kept and written first once the log takes appends, before the record that was asked
    /// for later: while it is owed, later appends fail rather than jump ahead of it.
    #[test]
    fn owed_record_goes_first_once_space_returns() {
        let fs = Tmpfs::mount("64k");
        let path = fs.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry("intent")).unwrap();
        fs.fill();
        assert!(log.append_owed(big("outcome")).is_err());
        assert_eq!(log.owed(), 1);
        assert_eq!(log.health().owed(), 1);
        // A small record would fit in the file's last page; it must still not jump the queue.
        assert!(log.append(entry("later")).is_err());
        assert_eq!(verify(&path).unwrap().records, 1);
        fs.free();
        log.append(entry("later")).unwrap();
        assert_eq!(log.owed(), 0);
        let recs = read_all(&path).unwrap();
        let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["intent", "outcome", "later", "audit-unavailable"]);
        assert!(
            recs[1].reason.contains("recorded late"),
            "{}",
            recs[1].reason
        );
        assert_eq!(verify(&path).unwrap().records, 4);
    }

    /// Ensures a log whose last line is torn opens on a full disk (the cut needs no space):
    /// the recovery note is owed and written once space returns, and the chain verifies.
    #[test]
    fn torn_tail_opens_on_a_full_disk() {
        let fs = Tmpfs::mount("64k");
        let path = fs.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(entry("one")).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&vec![b'{'; 9000]).unwrap();
        drop(f);
        fs.fill();
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(
            verify(&path),
            Ok(Verified {
                records: 1,
                torn_tail: None
            })
        );
        fs.free();
        log.flush().unwrap();
        let recs = read_all(&path).unwrap();
        let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["one", "audit-recovered", "audit-unavailable"]);
        assert!(recs[1].reason.contains("9000 bytes"), "{}", recs[1].reason);
    }

    /// Ensures open reports, per playbook, an intent with no outcome after it (and only that:
    /// an intent followed by its outcome, even with other records between, is resolved).
    #[test]
    fn unresolved_intents_are_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        let rec = |pb: &str, action: &str, outcome: &str| Entry {
            playbook: pb.into(),
            outcome: outcome.into(),
            ..entry(action)
        };
        log.append(rec("a", "failover", "intent")).unwrap();
        log.append(rec("", "override-freeze", "accepted")).unwrap();
        log.append(rec("a", "failover", "written")).unwrap();
        log.append(rec("b", "failover", "intent")).unwrap();
        log.append(rec("b", "drift", "noted")).unwrap();
        log.append(rec("a", "failback", "intent")).unwrap();
        log.append(rec("a", "failback", "failed: boom")).unwrap();
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        let open: Vec<(String, u64)> = log
            .take_unresolved()
            .into_iter()
            .map(|r| (r.playbook, r.seq))
            .collect();
        assert_eq!(open, [("b".to_string(), 4)]);
        assert!(log.take_unresolved().is_empty());
    }
}
