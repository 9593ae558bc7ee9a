//! The `file` store: one VirtualService manifest per object at `<dir>/<namespace>/<name>.yaml`,
//! the same YAML `kubectl apply -f` takes. For local runs and GitOps pipelines.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fault::{FaultEdit, faults_in};
use super::{
    RouteView, RoutingStore, Stamp, StoreError, StoreFuture, WriteOutcome, apply, route_index, view,
};
use crate::engine::Routing;
use crate::playbook::Playbook;

/// VirtualService manifests in a directory, written atomically (temp file, fsync, rename,
/// fsync of the directory) so a crash leaves either the old or the new file, never half.
///
/// A write is a compare-and-swap: the new file is staged first, then, holding an exclusive
/// advisory lock (`flock(2)`) on the namespace directory, the manifest is hashed again and
/// only replaced if it is still the one that was read. A writer that takes the same lock
/// (`flock DIR/<namespace> cp new.yaml DIR/<namespace>/<name>.yaml`) can therefore never
/// have its change overwritten: its write lands either before the re-check (and failoverd
/// recomputes on top of it) or after the rename (and failoverd reads it back as drift).
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

/// Attempts at a write that keeps finding the file changed under it (a GitOps sync racing us).
const CONFLICT_RETRIES: usize = 3;

/// Longest wait for the namespace directory's lock in one attempt. Cooperating tools hold it
/// for a copy or a rename (milliseconds); a lock held longer than this is someone stuck, and
/// the write fails as a conflict to be retried with backoff rather than wait unbounded.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl FileStore {
    /// A store rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The manifest path of a playbook's VirtualService.
    pub fn path(&self, pb: &Playbook) -> PathBuf {
        let vs = &pb.spec.virtual_service;
        self.dir
            .join(&vs.namespace)
            .join(format!("{}.yaml", vs.name))
    }

    fn load(&self, pb: &Playbook) -> Result<(Value, [u8; 32]), StoreError> {
        let path = self.path(pb);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!(
                    "{} (expected at {})",
                    pb.spec.virtual_service,
                    path.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                });
            }
        };
        let value: Value = serde_saphyr::from_str(&text).map_err(|e| StoreError::Malformed {
            object: pb.spec.virtual_service.to_string(),
            message: format!(
                "{}: {}",
                path.display(),
                crate::playbook::yaml_problem("", &e).message
            ),
        })?;
        Ok((value, Sha256::digest(text.as_bytes()).into()))
    }

    fn write_sync(
        &self,
        pb: &Playbook,
        to: Routing,
        stamp: Stamp,
        traceparent: Option<&str>,
    ) -> Result<WriteOutcome, StoreError> {
        let path = self.path(pb);
        for _ in 0..CONFLICT_RETRIES {
            let (mut vs, digest) = self.load(pb)?;
            let current = view(&vs, pb)?;
            let i = route_index(&vs, pb)?;
            let before = apply(&mut vs, pb, to, stamp.clone())?;
            let after = vs
                .pointer(&format!("/spec/http/{i}/route"))
                .cloned()
                .unwrap_or(Value::Null);
            if current.routing == to && before == after {
                return Ok(WriteOutcome {
                    before,
                    after,
                    changed: false,
                });
            }
            crate::routing::annotate_trace(&mut vs, traceparent);
            let text = serde_saphyr::to_string(&vs).map_err(|e| StoreError::Malformed {
                object: pb.spec.virtual_service.to_string(),
                message: format!("cannot serialise: {e}"),
            })?;
            let io = |e| StoreError::Io {
                context: format!("writing {}", path.display()),
                source: e,
            };
            // Staged (written and fsynced) outside the lock, so the lock is held only for the
            // re-check and the rename.
            let staged = stage(&path, text.as_bytes()).map_err(io)?;
            let dir = parent_dir(&path);
            let lock = lock_dir(dir, LOCK_WAIT).map_err(io)?;
            let Some(lock) = lock else {
                return Err(StoreError::Conflict(format!(
                    "{}: {} stayed locked by another writer for {LOCK_WAIT:?}",
                    pb.spec.virtual_service,
                    dir.display()
                )));
            };
            // Optimistic concurrency, like a resourceVersion: only replace the file we read.
            // Under the lock, so a cooperating writer cannot slip in between check and rename.
            let (_, again) = self.load(pb)?;
            if again != digest {
                continue;
            }
            commit(staged, &path).map_err(io)?;
            drop(lock);
            let (read_back, _) = self.load(pb)?;
            let got = read_back
                .pointer(&format!("/spec/http/{i}/route"))
                .cloned()
                .unwrap_or(Value::Null);
            if got != after || view(&read_back, pb)?.routing != to {
                return Err(StoreError::Verify {
                    object: pb.spec.virtual_service.to_string(),
                });
            }
            return Ok(WriteOutcome {
                before,
                after: got,
                changed: true,
            });
        }
        Err(StoreError::Conflict(pb.spec.virtual_service.to_string()))
    }

    /// [`RoutingStore::write_fault`]: the same compare-and-swap as `write_sync`, checked by
    /// reading the whole object back.
    fn write_fault_sync(
        &self,
        pb: &Playbook,
        edit: &FaultEdit,
        traceparent: Option<&str>,
    ) -> Result<WriteOutcome, StoreError> {
        let path = self.path(pb);
        let object = pb.spec.virtual_service.to_string();
        for _ in 0..CONFLICT_RETRIES {
            let (mut vs, digest) = self.load(pb)?;
            let before = vs.pointer("/spec/http").cloned().unwrap_or(Value::Null);
            if !edit.apply(&mut vs, pb)? {
                return Ok(WriteOutcome {
                    after: before.clone(),
                    before,
                    changed: false,
                });
            }
            if let Err(v) = crate::routing::istio::validate_virtual_service(&vs) {
                return Err(StoreError::Invalid {
                    object,
                    message: v.join("; "),
                });
            }
            let after = vs.pointer("/spec/http").cloned().unwrap_or(Value::Null);
            crate::routing::annotate_trace(&mut vs, traceparent);
            let text = serde_saphyr::to_string(&vs).map_err(|e| StoreError::Malformed {
                object: object.clone(),
                message: format!("cannot serialise: {e}"),
            })?;
            let io = |e| StoreError::Io {
                context: format!("writing {}", path.display()),
                source: e,
            };
            let staged = stage(&path, text.as_bytes()).map_err(io)?;
            let dir = parent_dir(&path);
            let Some(lock) = lock_dir(dir, LOCK_WAIT).map_err(io)? else {
                return Err(StoreError::Conflict(format!(
                    "{object}: {} stayed locked by another writer for {LOCK_WAIT:?}",
                    dir.display()
                )));
            };
            let (_, again) = self.load(pb)?;
            if again != digest {
                continue;
            }
            commit(staged, &path).map_err(io)?;
            drop(lock);
            let (read_back, _) = self.load(pb)?;
            let got = read_back
                .pointer("/spec/http")
                .cloned()
                .unwrap_or(Value::Null);
            if got != after || faults_in(&read_back) != faults_in(&vs) {
                return Err(StoreError::Verify { object });
            }
            return Ok(WriteOutcome {
                before,
                after: got,
                changed: true,
            });
        }
        Err(StoreError::Conflict(object))
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// fsync of the directory (so the rename itself survives a power cut).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    commit(stage(path, bytes)?, path)
}

/// The directory `path` lives in (a bare file name has an empty parent: the current one).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// First half of [`atomic_write`]: the bytes in a synced temp file beside `path`, with the
/// permissions of the file it will replace. Dropped without [`commit`], it is removed.
fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".failoverd-")
        .suffix(".tmp")
        .tempfile_in(parent_dir(path))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // Keep the original file's permissions rather than the temp file's 0600.
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    Ok(tmp)
}

/// Second half of [`atomic_write`]: rename over `path`, then fsync the directory so the
/// rename itself survives a power cut.
fn commit(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(parent_dir(path))?.sync_all()
}

/// Takes the exclusive advisory lock on `dir` (the same `flock(2)` lock `flock DIR cmd`
/// takes), polling until `wait` runs out: None when someone held it all that time. The lock
/// is released when the returned handle is dropped.
fn lock_dir(dir: &Path, wait: std::time::Duration) -> std::io::Result<Option<std::fs::File>> {
    let handle = std::fs::File::open(dir)?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match handle.try_lock() {
            Ok(()) => return Ok(Some(handle)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl RoutingStore for FileStore {
    fn read<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, RouteView> {
        let this = self.clone();
        let pb = pb.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let (vs, _) = this.load(&pb)?;
                view(&vs, &pb)
            })
            .await
            .map_err(join_error)?
        })
    }

    fn write<'a>(
        &'a self,
        pb: &'a Playbook,
        to: Routing,
        stamp: Stamp,
    ) -> StoreFuture<'a, WriteOutcome> {
        let this = self.clone();
        let pb = pb.clone();
        Box::pin(async move {
            // The write's span (tracing on) is named in the object; read here, off the
            // blocking thread where it is not current.
            let tp = crate::trace::traceparent(&tracing::Span::current());
            tokio::task::spawn_blocking(move || this.write_sync(&pb, to, stamp, tp.as_deref()))
                .await
                .map_err(join_error)?
        })
    }

    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    fn faults<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, Vec<String>> {
        let this = self.clone();
        let pb = pb.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load(&pb).map(|(vs, _)| faults_in(&vs)))
                .await
                .map_err(join_error)?
        })
    }

    fn write_fault<'a>(
        &'a self,
        pb: &'a Playbook,
        edit: &'a FaultEdit,
    ) -> StoreFuture<'a, WriteOutcome> {
        let this = self.clone();
        let pb = pb.clone();
        let edit = edit.clone();
        Box::pin(async move {
            let tp = crate::trace::traceparent(&tracing::Span::current());
            tokio::task::spawn_blocking(move || this.write_fault_sync(&pb, &edit, tp.as_deref()))
                .await
                .map_err(join_error)?
        })
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        context: "store task".into(),
        source: std::io::Error::other(e.to_string()),
    }
}
