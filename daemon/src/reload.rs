//! Playbook reload: the daemon watches its playbook files and directories and its config
//! file (every 2 s, by content hash, and at once on SIGHUP) and reloads when they change.
//! The token file is not watched here (it is re-read on its own, without a restart), nor
//! are secret, CA or kubeconfig files; they are still checked whenever the gate runs, and a
//! SIGHUP runs it again after fixing one.
//!
//! A changed set goes through the same gate as a start ([`crate::validate::check`], from
//! the same arguments) before anything happens, so a set the restarted process would
//! refuse is never applied. An invalid set is refused: every problem is logged at ERROR
//! with file:line:col, counted in
//! `failoverd_playbook_reload_total{result="invalid"}`, flagged by
//! `failoverd_playbook_reload_failed` and shown in the `/readyz` body, and the running set
//! keeps running untouched. A valid set is applied by a graceful restart in place: the
//! controller drains (a write in flight completes and is audited), then the process
//! re-executes itself with the same arguments and PID. Routing, minDwell, failback progress
//! and overrides live in the store and the state file, so they carry over exactly as after
//! any restart; a removed playbook's route is left as it is; probes start afresh.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::playbook::Problems;
pub use crate::shared::ReloadStatus;
use crate::shared::{APPLIED_ENV, result_label};

/// How often the files are compared: cheap (a few small files), and quick enough that an
/// operator sees the result of an edit at once.
pub const POLL: Duration = Duration::from_secs(2);

/// Set when a valid changed set was found and the daemon is draining to restart with it.
static RESTART: AtomicBool = AtomicBool::new(false);

/// A hash of the names and contents of every playbook file: changes whenever a file is
/// added, removed, renamed or edited (mtimes alone miss same-second edits and ConfigMap
/// symlink swaps).
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    // The same walk as the gate's (a symlink loop is cut, not followed); a path that cannot
    // be walked changes the hash through its problem.
    let (files, problems) = crate::screen::files(paths);
    for p in problems {
        p.to_string().hash(&mut h);
    }
    for f in files {
        f.hash(&mut h);
        // Never blocks: a FIFO or device dropped in is hashed by its refusal, not read.
        match crate::screen::read_regular(&f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.hash(&mut h),
        }
    }
    h.finish()
}

/// Whether a valid new set was accepted and the daemon should re-execute once drained.
pub fn restart_requested() -> bool {
    RESTART.load(Ordering::SeqCst)
}

/// The start gate, run on a changed set: the count of playbooks `run` would start with, or
/// every problem that would refuse the start (see [`crate::validate::check`]).
pub type Gate = Arc<dyn Fn() -> Result<usize, Problems> + Send + Sync>;

/// Checks the files every [`POLL`] (and on SIGHUP) until shutdown. `paths` are what the
/// fingerprint covers (the playbook paths and the config file); `gate` is the same check
/// `run` makes at start. A refused set is reported and the running set kept; a set the gate
/// passes sets [`restart_requested`] and signals `stop`, so the daemon drains and
/// re-executes with it.
pub fn spawn_watcher(
    paths: Vec<PathBuf>,
    gate: Gate,
    status: Arc<ReloadStatus>,
    stop: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let running = fingerprint(&paths);
        // The last refused fingerprint: a broken file is reported once, not every 2 s.
        let mut refused: Option<u64> = None;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut shutdown = stop.subscribe();
        loop {
            let forced = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(POLL) => false,
                Some(()) = async {
                    #[cfg(unix)]
                    if let Some(h) = hup.as_mut() { return h.recv().await; }
                    std::future::pending::<Option<()>>().await
                } => true,
            };
            let now = fingerprint(&paths);
            if now == running && !forced {
                if refused.is_some() {
                    // Put back as it was: the running set is the files' set again.
                    refused = None;
                    clear(&status);
                }
                continue;
            }
            if now == running && forced {
                info!("SIGHUP: playbook files unchanged; nothing to reload");
                continue;
            }
            if refused == Some(now) && !forced {
                continue;
            }
            let checked = {
                let gate = gate.clone();
                tokio::task::spawn_blocking(move || gate()).await
            };
            match checked {
                Ok(Ok(n)) if n > 0 => {
                    info!(
                        playbooks = n,
                        "configuration set changed and is valid: draining to restart with it"
                    );
                    clear(&status);
                    status.total.get_or_create(&result_label("applied")).inc();
                    let applied = status.total.get_or_create(&result_label("applied")).get();
                    APPLIED.store(applied, Ordering::SeqCst);
                    RESTART.store(true, Ordering::SeqCst);
                    let _ = stop.send(true);
                    return;
                }
                Ok(Ok(_)) => refuse(&status, "the new set holds no playbooks".into()),
                Ok(Err(problems)) => {
                    for p in &problems.0 {
                        error!(file = %p.file, line = p.line, column = p.column, field = %p.field, "playbook reload refused (a restart would refuse to start): {p}");
                    }
                    refuse(&status, problems.to_string());
                }
                Err(e) => refuse(&status, format!("reload check failed: {e}")),
            }
            refused = Some(now);
        }
    })
}

fn clear(status: &ReloadStatus) {
    status.failed.set(0);
    if let Ok(mut e) = status.last_error.write() {
        *e = None;
    }
}

fn refuse(status: &ReloadStatus, why: String) {
    warn!("playbook reload refused; the running set stays in force:\n{why}");
    status.total.get_or_create(&result_label("invalid")).inc();
    status.failed.set(1);
    if let Ok(mut e) = status.last_error.write() {
        *e = Some(why);
    }
}

/// Applied reloads so far, handed to the re-executed process in [`APPLIED_ENV`].
static APPLIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Replaces this process with a fresh copy of itself (same arguments, same PID), carrying
/// the applied-reload count. Returns only on failure.
#[cfg(unix)]
pub fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(APPLIED_ENV, APPLIED.load(Ordering::SeqCst).to_string())
        .exec()
}

/// Re-execution needs Unix `exec`; elsewhere the daemon exits and its supervisor restarts it.
#[cfg(not(unix))]
pub fn reexec() -> std::io::Error {
    std::io::Error::other("re-exec is only supported on Unix")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A directory holding one playbook file `a.yaml`, as the watched paths, with their
    /// fingerprint.
    fn one_file_dir() -> (tempfile::TempDir, Vec<PathBuf>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![dir.path().to_path_buf()];
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n").unwrap();
        let first = fingerprint(&paths);
        (dir, paths, first)
    }

    /// Ensures the fingerprint changes with an edit, an added file and a removal, and not
    /// with hidden files or other extensions.
    #[test]
    fn fingerprint_follows_playbook_files() {
        let (dir, paths, first) = one_file_dir();
        std::fs::write(dir.path().join(".hidden.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(fingerprint(&paths), first);
        std::fs::write(dir.path().join("a.yaml"), "a: 2\n").unwrap();
        let edited = fingerprint(&paths);
        assert_ne!(edited, first);
        std::fs::write(dir.path().join("b.yml"), "b: 1\n").unwrap();
        assert_ne!(fingerprint(&paths), edited);
        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        assert_eq!(fingerprint(&paths), edited);
    }

    /// A FIFO (no writer) or a directory symlink loop changes the fingerprint without
    /// blocking the watcher or being followed; removed, the fingerprint is as before.
    #[test]
    fn fingerprint_never_blocks_or_loops() {
        let (dir, paths, first) = one_file_dir();
        let fifo = dir.path().join("f.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert_ne!(fingerprint(&paths), first);
        std::fs::remove_file(&fifo).unwrap();
        assert_eq!(fingerprint(&paths), first);
        std::os::unix::fs::symlink(dir.path(), dir.path().join("x")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("y")).unwrap();
        assert_ne!(fingerprint(&paths), first);
    }
}
