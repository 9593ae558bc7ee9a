//! A replica's file as a copy of the deployment's one chain in the cluster (leader
//! election; the chain itself is `crate::trail`): records are placed there first and the file
//! takes the exact lines, in order.

use std::path::Path;
use std::sync::Arc;

use super::{AuditError, AuditLog, Entry, Record, hash_line, scan};

/// The deployment's one audit chain, held outside this file (in the cluster, see
/// `crate::trail`). With one attached, a record counts once the chain holds it; this file is
/// then a copy: it only ever takes lines the chain already holds, in order, so every
/// replica's file is a prefix of the one chain.
pub trait ChainStore: Send + Sync + std::fmt::Debug {
    /// Makes the chain hold a record made from `entry`, after whatever it holds already, and
    /// returns that record with the exact lines (without newline) this file lacks, oldest
    /// first, ending with the record's own line. `tip` is this file's last (seq, hash).
    /// Blocks the calling thread (the log is used from blocking threads).
    fn place(&self, tip: (u64, &str), entry: &Entry) -> Result<Placed, String>;
}

/// What [`ChainStore::place`] gives back.
#[derive(Clone, Debug)]
pub struct Placed {
    /// The record made from the entry.
    pub record: Record,
    /// Lines this file lacks, oldest first, the record's own last.
    pub lines: Vec<Vec<u8>>,
}

impl AuditLog {
    /// [`AuditLog::open`] for a file that copies the cluster's chain (see [`ChainStore`]): a
    /// torn last line is only an unfinished copy of a record the chain holds, so it is cut
    /// off without a note (a note here would be a record outside the chain); the next copy
    /// writes it whole.
    pub fn open_copy(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, false)
    }

    /// From now on, records are placed in `chain` first and copied here (see [`ChainStore`]).
    pub fn attach_chain(&mut self, chain: Arc<dyn ChainStore>) {
        self.chain = Some(chain);
    }

    /// Intents in the whole file with no outcome after them, one per playbook (read again
    /// from the file: a new leader resolves those the last leader left in the chain).
    pub fn unresolved_now(&self) -> Result<Vec<Record>, AuditError> {
        scan(&self.path)
            .map(|s| s.unresolved.into_values().collect())
            .map_err(|(line, problem)| AuditError::Broken {
                path: self.path.clone(),
                problem: format!("line {line}: {problem}"),
            })
    }

    /// This file's last record: (seq, hash of its line).
    pub fn tip(&self) -> (u64, String) {
        (self.seq, self.last_hash.clone())
    }

    pub(super) fn place_and_copy(
        &mut self,
        chain: &dyn ChainStore,
        e: Entry,
    ) -> Result<Record, AuditError> {
        let placed = chain
            .place((self.seq, &self.last_hash), &e)
            .map_err(|err| AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(format!("the cluster's audit chain: {err}")),
            })?;
        // The chain holds the record: it counts. A copy that fails here is made again by the
        // next append or the replicator (both start from this file's tip), so it is reported,
        // not returned: returning an error would place the entry a second time.
        if let Err(err) = self.copy_lines(&placed.lines) {
            tracing::error!(error = %err, path = %self.path.display(), "the cluster holds the audit record, but this replica's file could not copy it yet; retried");
        }
        self.checkpoint_after(&placed.record);
        Ok(placed.record)
    }

    /// Appends lines copied from the chain (exact bytes, without newline), fsynced. Lines this
    /// file already holds are skipped; a line that does not follow this file's tip (another
    /// `seq`, another `prev`) stops the copy with an error naming it — the file and the chain
    /// have forked. Returns how many lines were appended.
    pub fn copy_lines(&mut self, lines: &[Vec<u8>]) -> Result<usize, AuditError> {
        let broken = |path: &Path, problem: String| AuditError::Broken {
            path: path.to_path_buf(),
            problem,
        };
        let mut n = 0;
        for line in lines {
            let rec: Record = serde_json::from_slice(line)
                .map_err(|e| broken(&self.path, format!("copied line is not a record: {e}")))?;
            if rec.seq <= self.seq {
                continue;
            }
            if rec.seq != self.seq + 1 || rec.prev != self.last_hash {
                return Err(broken(
                    &self.path,
                    format!(
                        "record {} from the cluster's chain does not follow this file's record {} (a fork)",
                        rec.seq, self.seq
                    ),
                ));
            }
            self.write_line(line)?;
            self.seq = rec.seq;
            self.last_hash = hash_line(line);
            self.observed(&rec, line);
            n += 1;
        }
        Ok(n)
    }
}
