//! What the audit log does besides appending: signed checkpoints after every N
//! records or M minutes, shipping each durable record to a log pipeline, re-shipping after
//! a takeover, and the forward line reader `audit verify` streams files with. The rule of
//! when a checkpoint is due and the entry itself are [`failoverd_core::audit::checkpoint`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use failoverd_core::audit::checkpoint::{self, Checkpointer};
use jiff::Timestamp;

use super::ship::{ShipTarget, Shipper};
use super::{AuditError, AuditHealth, AuditLog, Record, hash_line};

/// What the log does besides appending: signed checkpoints and shipping.
#[derive(Debug)]
pub(super) struct Extras {
    /// Records after the last checkpoint and its time, kept while no key is set.
    since_checkpoint: (u64, Option<Timestamp>),
    /// Set with a key: checkpoints are made (never without one).
    checkpointer: Option<Checkpointer>,
    /// Set with a target other than `off`.
    shipper: Option<Shipper>,
    /// False on a standby of a deployment that keeps its chain in the cluster: the leader
    /// makes the checkpoints (see [`AuditLog::set_leading`]).
    checkpointing: bool,
}

impl Extras {
    pub(super) fn new(since_checkpoint: (u64, Option<Timestamp>)) -> Self {
        Self {
            since_checkpoint,
            checkpointer: None,
            shipper: None,
            checkpointing: true,
        }
    }

    /// Shipping errors go to `health`'s counter from now on (the daemon's metric).
    pub(super) fn count_ship_errors_in(&self, health: &AuditHealth) {
        if let Some(s) = &self.shipper {
            s.set_counter(health.ship_errors.clone());
        }
    }
}

impl AuditLog {
    /// Makes signed checkpoints from now on, with `key`, as `policy` says (see
    /// [`failoverd_core::audit::checkpoint`]); the count since the log's last checkpoint
    /// carries over.
    pub fn set_checkpoints(&mut self, key: checkpoint::Key, policy: checkpoint::Policy) {
        self.extras.checkpointer = Some(Checkpointer::new(
            key,
            policy,
            self.extras.since_checkpoint,
            Timestamp::now(),
        ));
    }

    /// True when the log held a checkpoint when it was opened (or one was written since
    /// while no key was set): re-shipping from it is then a bounded tail, not the whole log.
    pub fn had_checkpoint_at_open(&self) -> bool {
        self.extras.since_checkpoint.1.is_some()
    }

    /// Ships every record from now on to `target` (`off`: none); shipping starts on.
    pub fn set_ship_target(&mut self, target: ShipTarget) {
        self.extras.shipper = Shipper::start(target, self.health.ship_errors.clone());
    }

    /// Turns shipping on or off (only the leader ships in a cluster); no-op without a target.
    pub fn set_shipping(&mut self, on: bool) {
        if let Some(s) = &mut self.extras.shipper {
            s.on = on;
        }
    }

    /// With one chain in the cluster, only the leader ships and makes checkpoints: turns
    /// both on (this replica leads) or off.
    pub fn set_leading(&mut self, on: bool) {
        self.set_shipping(on);
        self.extras.checkpointing = on;
    }

    /// True when records are shipped.
    pub fn shipping(&self) -> bool {
        self.extras.shipper.as_ref().is_some_and(|s| s.on)
    }

    /// Called once a record's line (without newline) is durable in the file: ships it,
    /// counts it towards the next checkpoint and, when one is due, appends it right after.
    /// A checkpoint that cannot be written is retried at the next append or
    /// [`AuditLog::checkpoint_if_due`]; it never fails the append that made it due.
    pub(super) fn landed(&mut self, rec: &Record, line: &[u8]) {
        self.observed(rec, line);
        self.checkpoint_after(rec);
    }

    /// [`AuditLog::landed`] without the checkpoint: ships the line and counts it (for lines
    /// copied from the cluster's chain; the checkpoint follows the whole copy).
    pub(super) fn observed(&mut self, rec: &Record, line: &[u8]) {
        if let Some(s) = self.extras.shipper.as_ref().filter(|s| s.on) {
            s.send(failoverd_core::audit::multi::ship_line(
                line,
                &self.last_hash,
            ));
        }
        match &mut self.extras.checkpointer {
            Some(cp) => cp.observe(&rec.action, rec.time),
            None => {
                let (n, t) = &mut self.extras.since_checkpoint;
                if rec.action == checkpoint::ACTION {
                    (*n, *t) = (0, Some(rec.time));
                } else {
                    *n += 1;
                }
            }
        }
    }

    /// After `rec` (this replica's own record) is durable: appends a checkpoint when one is
    /// due. A checkpoint that cannot be written is retried at the next append or tick; it
    /// never fails the append that made it due.
    pub(super) fn checkpoint_after(&mut self, rec: &Record) {
        let now = Timestamp::now();
        if !self.extras.checkpointing {
            return;
        }
        let Some(cp) = &self.extras.checkpointer else {
            return;
        };
        if rec.action != checkpoint::ACTION && cp.due(now) {
            let entry = cp.entry(self.seq, &self.last_hash, now);
            if let Err(e) = self.write_record(entry) {
                tracing::warn!(error = %e, "cannot append the audit checkpoint now; retried at the next append or tick");
            }
        }
    }

    /// Appends a checkpoint when one is due at `now` (the controller calls this once per
    /// tick, for the time rule); owed records are written first. Ok(None) when none is due
    /// or no key is set.
    pub fn checkpoint_if_due(&mut self, now: Timestamp) -> Result<Option<Record>, AuditError> {
        if !self.extras.checkpointing
            || !self
                .extras
                .checkpointer
                .as_ref()
                .is_some_and(|c| c.due(now))
        {
            return Ok(None);
        }
        let r = self.flush_owed().and_then(|()| {
            match self.extras.checkpointer.as_ref().filter(|c| c.due(now)) {
                Some(c) => {
                    let e = c.entry(self.seq, &self.last_hash, now);
                    self.write_record(e).map(Some)
                }
                // Flushing the owed records made one already.
                None => Ok(None),
            }
        });
        self.finish(&r);
        r
    }

    /// Ships again the records from the last `audit-checkpoint` in the file (that one
    /// included, so the receiver has the signed anchor) to its end, or every record when
    /// there is none: what a new leader does, since the old one may not have shipped its
    /// last records. Reads the file forward twice, a line at a time; waits for room in the
    /// queue. Returns how many lines were queued (0 without a target or with shipping off).
    pub fn reship_since_last_checkpoint(&mut self) -> Result<u64, AuditError> {
        let Some(s) = self.extras.shipper.as_ref().filter(|s| s.on) else {
            return Ok(0);
        };
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        #[derive(serde::Deserialize)]
        struct Action {
            #[serde(default)]
            action: String,
        }
        let lines = |f: &mut dyn FnMut(u64, &[u8])| -> std::io::Result<()> {
            let mut r = BufReader::new(File::open(&self.path)?).take(self.good_len);
            let (mut off, mut buf) = (0u64, Vec::new());
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf)?;
                if n == 0 || buf.last() != Some(&b'\n') {
                    return Ok(());
                }
                f(off, &buf[..n - 1]);
                off += n as u64;
            }
        };
        let mut from = 0u64;
        lines(&mut |off, line| {
            if serde_json::from_slice::<Action>(line).is_ok_and(|a| a.action == checkpoint::ACTION)
            {
                from = off;
            }
        })
        .map_err(io)?;
        let mut sent = 0u64;
        lines(&mut |off, line| {
            if off >= from {
                s.send_waiting(failoverd_core::audit::multi::ship_line(
                    line,
                    &hash_line(line),
                ));
                sent += 1;
            }
        })
        .map_err(io)?;
        Ok(sent)
    }
}

/// Reads a checkpoint key file (a Secret mounted as a file), used byte for byte.
pub fn read_key(path: &Path) -> Result<checkpoint::Key, String> {
    // Screened like every configuration file: a FIFO never blocks, a huge file is refused.
    let bytes =
        crate::screen::read_regular(path).map_err(|e| format!("{}: {e}", path.display()))?;
    checkpoint::Key::new(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Once per controller tick: [`AuditLog::checkpoint_if_due`] off the async threads. A
/// failure is left to the log's health (the controller's audit watch announces episodes).
pub async fn checkpoint_tick(log: &Arc<Mutex<AuditLog>>) {
    let log = log.clone();
    let done = tokio::task::spawn_blocking(move || {
        log.lock()
            .map_err(|_| "audit log lock poisoned".to_string())
            .and_then(|mut l| {
                l.checkpoint_if_due(Timestamp::now())
                    .map_err(|e| e.to_string())
            })
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::debug!(error = %e, "audit checkpoint not written this tick");
    }
}

/// A log's whole lines (without newlines), read forward one at a time; a torn last line
/// (bytes after the last newline) is not yielded but measured, and a read error ends the
/// stream and is kept (check both once it ends).
#[derive(Debug)]
pub struct Lines {
    reader: BufReader<File>,
    /// Bytes after the last newline, once the end is reached.
    pub torn: Option<usize>,
    /// The read error that ended the stream, if any.
    pub error: Option<std::io::Error>,
}

impl Lines {
    /// Opens `path` for reading forward.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, File::open(path)?),
            torn: None,
            error: None,
        })
    }
}

impl Iterator for Lines {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) if buf.last() == Some(&b'\n') => {
                buf.pop();
                Some(buf)
            }
            Ok(n) => {
                self.torn = Some(n);
                None
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}
