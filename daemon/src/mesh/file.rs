//! The file store's cluster facts: manifests under `<store>/_cluster/`, polled every second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use failoverd_core::residency::ClusterView;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Snapshot;
use crate::screen;

/// The folder of a file store holding the cluster's objects.
pub(super) const CLUSTER_DIR: &str = "_cluster";

/// How often the folder is looked at: a change is seen within this plus one read (the
/// promise is 2 s), and reading a few small files once a second costs next to nothing.
const POLL: Duration = Duration::from_secs(1);

/// For `failoverd validate` and the start-up warning: read a file store's `_cluster/` once.
/// A missing folder is an empty view; a bad file is an error naming file:line:col.
pub fn read_file_store(store_dir: &Path) -> Result<ClusterView, String> {
    parse(&read(&store_dir.join(CLUSTER_DIR))?)
}

/// The manifests of the folder, by path, as bytes (None: no such folder).
type Files = Option<Vec<(PathBuf, Vec<u8>)>>;

/// Reads every `*.yaml` / `*.yml` file directly in `dir` (hidden entries skipped, as a
/// mounted ConfigMap's `..data` farm), each a regular file of bounded size.
fn read(dir: &Path) -> Result<Files, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read directory: {e}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = screen::read_regular(&p).map_err(|m| format!("{}:0:0: {m}", p.display()))?;
        out.push((p, bytes));
    }
    Ok(Some(out))
}

/// Each file's path and content hash (None: no folder).
type Print = Option<Vec<(PathBuf, [u8; 32])>>;

/// What changed looks like: each file's path and content hash.
fn fingerprint(files: &Files) -> Print {
    files.as_ref().map(|list| {
        list.iter()
            .map(|(p, b)| (p.clone(), Sha256::digest(b).into()))
            .collect()
    })
}

/// The view the files describe: every document of every file, screened like a
/// configuration file; the first problem (file:line:col) fails the whole read.
fn parse(files: &Files) -> Result<ClusterView, String> {
    let mut view = ClusterView::default();
    for (path, bytes) in files.iter().flatten() {
        let file = path.display().to_string();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let (line, column) =
                screen::position(&String::from_utf8_lossy(&bytes[..e.valid_up_to()]));
            format!("{file}:{line}:{column}: invalid UTF-8; YAML files must be UTF-8")
        })?;
        screen::screen_yaml(&file, text).map_err(|p| p.to_string())?;
        let docs: Vec<serde_saphyr::Spanned<Value>> = serde_saphyr::from_multiple(text)
            .map_err(|e| failoverd_core::playbook::yaml_problem(&file, &e).to_string())?;
        for doc in docs {
            if doc.value.is_null() {
                continue;
            }
            let at = &doc.referenced;
            if !doc.value.is_object() {
                return Err(format!(
                    "{file}:{}:{}: a document must be a Kubernetes object (a map)",
                    at.line(),
                    at.column()
                ));
            }
            view.insert(&doc.value)
                .map_err(|m| format!("{file}:{}:{}: {m}", at.line(), at.column()))?;
        }
    }
    Ok(view)
}

/// Reads the folder once now, then polls it on a task of the current runtime.
pub(super) fn spawn(dir: PathBuf) -> watch::Receiver<Snapshot> {
    let mut last = None;
    let first = step(&dir, &mut last, Snapshot::unsynced());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tx.closed() => return,
            }
            let current = tx.borrow().clone();
            let d = dir.clone();
            let prev = last.clone();
            // Reading files blocks: off the runtime's worker threads.
            let Ok((next, seen)) = tokio::task::spawn_blocking(move || {
                let mut seen = prev;
                let next = step(&d, &mut seen, current);
                (next, seen)
            })
            .await
            else {
                continue;
            };
            last = seen;
            tx.send_if_modified(|s| {
                let modified = !Arc::ptr_eq(&s.view, &next.view)
                    || s.synced != next.synced
                    || s.error != next.error;
                *s = next;
                modified
            });
        }
    });
    rx
}

/// One poll: reads the folder and, if its contents changed since `last` (None: never read, or
/// the folder could not be listed), the next snapshot; otherwise `current` unchanged. A bad
/// file is parsed once per change, not once per poll.
fn step(dir: &Path, last: &mut Option<Print>, current: Snapshot) -> Snapshot {
    let files = match read(dir) {
        Ok(f) => f,
        Err(e) => return failed(current, e, last),
    };
    let print = fingerprint(&files);
    if last.as_ref() == Some(&print) {
        return current;
    }
    match parse(&files) {
        Ok(view) => {
            *last = Some(print);
            info!(
                dir = %dir.display(),
                objects = view.len(),
                "mesh view: read the cluster facts"
            );
            Snapshot {
                view: Arc::new(view),
                synced: true,
                error: None,
            }
        }
        Err(e) => {
            let out = failed(current, e, last);
            // Not again until the files change: the error stands meanwhile.
            *last = Some(print);
            out
        }
    }
}

/// The last good view kept, with the error.
fn failed(current: Snapshot, error: String, last: &mut Option<Print>) -> Snapshot {
    if current.error.as_deref() != Some(error.as_str()) {
        warn!(error = %error, "mesh view: cannot read the cluster facts; keeping the last good view");
    }
    *last = None;
    Snapshot {
        error: Some(error),
        ..current
    }
}
