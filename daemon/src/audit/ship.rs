//! Shipping: every record, once durable in the local file, also leaves as one JSON line on a
//! dedicated target (stdout, or a file a log pipeline tails) for long-term retention.
//!
//! The line is [`failoverd_core::audit::multi::ship_line`]: the record's exact line with
//! `"log.kind":"audit"` and `"hash"` (SHA-256 of the exact line) put first. Lines are handed
//! to one writer thread through a bounded queue, in order, so a slow or blocked target never
//! holds up an append (and so never a move); each line is one write of one whole line
//! (stdout locked per line; a file opened in append mode). A line that cannot be queued or
//! written is counted (`failoverd_audit_ship_errors_total`) and logged once per episode;
//! it stays in the local file, and `reship_since_last_checkpoint` sends the tail again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Lines waiting for the writer at most; past this a line is dropped and counted.
pub const QUEUE: usize = 10_000;
/// How long dropping the shipper waits for queued lines to be written.
const DRAIN: Duration = Duration::from_secs(2);

/// Where shipped lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ShipTarget {
    /// Not shipped.
    #[default]
    Off,
    /// The process's stdout (`log.kind=audit` selects them in the pipeline).
    Stdout,
    /// A file, opened in append mode (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for ShipTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "stdout" => Ok(Self::Stdout),
            "" => Err("empty: use `stdout`, `off` or a file path".into()),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl std::fmt::Display for ShipTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Stdout => f.write_str("stdout"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The shipping end of an audit log: a queue and its writer thread.
#[derive(Debug)]
pub struct Shipper {
    target: ShipTarget,
    tx: Option<SyncSender<Vec<u8>>>,
    done: Option<Receiver<()>>,
    /// Shipping on (a standby in a cluster keeps it off; the leader ships).
    pub on: bool,
    /// Counted by both ends; swapped in when the log gets the daemon's metrics.
    errors: Arc<Mutex<Episode>>,
}

/// Failures counted and announced once per episode.
#[derive(Debug, Default)]
struct Episode {
    counter: Counter,
    failing: bool,
}

impl Episode {
    fn failed(&mut self, target: &ShipTarget, why: &str) {
        self.counter.inc();
        if !self.failing {
            self.failing = true;
            tracing::error!(target = %target, error = why, "audit shipping fails; records stay in the local audit log (counted in failoverd_audit_ship_errors_total; logged once until it works again)");
        }
    }

    fn worked(&mut self, target: &ShipTarget) {
        if self.failing {
            self.failing = false;
            tracing::info!(target = %target, "audit shipping works again");
        }
    }
}

impl Shipper {
    /// Starts the writer for `target` (None for [`ShipTarget::Off`]); errors go to `counter`.
    pub fn start(target: ShipTarget, counter: Counter) -> Option<Self> {
        if target == ShipTarget::Off {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let errors = Arc::new(Mutex::new(Episode {
            counter,
            failing: false,
        }));
        let (t, e) = (target.clone(), errors.clone());
        let spawned = std::thread::Builder::new()
            .name("audit-ship".into())
            .spawn(move || {
                let mut file: Option<File> = None;
                for line in rx {
                    let r = write_line(&t, &mut file, &line);
                    if let Ok(mut ep) = e.lock() {
                        match r {
                            Ok(()) => ep.worked(&t),
                            Err(err) => {
                                // Reopened for the next line (a file moved or recreated).
                                file = None;
                                ep.failed(&t, &err.to_string());
                            }
                        }
                    }
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit shipping thread; records are not shipped");
            return None;
        }
        Some(Self {
            target,
            tx: Some(tx),
            done: Some(done),
            on: true,
            errors,
        })
    }

    /// The target.
    pub fn target(&self) -> &ShipTarget {
        &self.target
    }

    /// Counts errors in `counter` from now on (the daemon's metric).
    pub fn set_counter(&self, counter: Counter) {
        if let Ok(mut e) = self.errors.lock() {
            counter.inc_by(e.counter.get());
            e.counter = counter;
        }
    }

    /// Queues one shipped line (without newline); never waits. A full queue drops it, counted.
    pub fn send(&self, line: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.failed("queue full: the target takes lines slower than they are written")
            }
            Err(TrySendError::Disconnected(_)) => self.failed("the shipping thread stopped"),
        }
    }

    /// Queues one line, waiting for room (re-shipping, never a move's path).
    pub fn send_waiting(&self, line: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        if tx.send(line).is_err() {
            self.failed("the shipping thread stopped");
        }
    }

    fn failed(&self, why: &str) {
        if let Ok(mut e) = self.errors.lock() {
            e.failed(&self.target, why);
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        // Close the queue and give the writer a moment to write what is queued.
        self.tx = None;
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(DRAIN);
        }
    }
}

/// One write of one whole line.
fn write_line(target: &ShipTarget, file: &mut Option<File>, line: &[u8]) -> std::io::Result<()> {
    let mut whole = Vec::with_capacity(line.len() + 1);
    whole.extend_from_slice(line);
    whole.push(b'\n');
    match target {
        ShipTarget::Off => Ok(()),
        ShipTarget::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(&whole)?;
            out.flush()
        }
        ShipTarget::File(path) => {
            if file.is_none() {
                *file = Some(OpenOptions::new().create(true).append(true).open(path)?);
            }
            match file {
                Some(f) => f.write_all(&whole),
                None => Ok(()),
            }
        }
    }
}
