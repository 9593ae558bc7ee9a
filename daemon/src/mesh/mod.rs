//! The mesh view: the residency and policy facts ([`ClusterView`]: Namespaces' labels,
//! PeerAuthentications, DestinationRules, ServiceEntries) kept current from the routing
//! store's side of the world, for the controller to judge targets with
//! ([`failoverd_core::residency::judge`]).
//!
//! Two sources, one shape ([`MeshView`], a `tokio::sync::watch` of [`Snapshot`]):
//!
//! - the file store: `<store>/_cluster/*.yaml` (and `*.yml`), multi-document manifests,
//!   re-read within 2 s of a change ([`MeshView::file`], in `file.rs`);
//! - Kubernetes: one watch per kind, merged ([`MeshView::kubernetes`], in `cluster.rs`).
//!
//! A snapshot is trusted only when `synced` (every kind read at least once); until then a
//! consumer must treat every fenced target as unknown. A read that fails keeps the last good
//! view and says why in `error`.

mod cluster;
mod file;

use std::sync::Arc;

use failoverd_core::residency::qualify;
/// The facts and the verdict, re-exported beside the live view that feeds them.
pub use failoverd_core::residency::{ClusterView, Fence, TargetPolicy, judge};
pub use file::read_file_store;
use tokio::sync::watch;

use crate::playbook::{Destination, Playbook};

/// Judges one of `pb`'s destinations with its host as Istio resolves it in the
/// VirtualService's namespace (a short name is a Service there).
pub fn judge_destination(
    view: &ClusterView,
    pb: &Playbook,
    dest: &Destination,
    fence: &Fence,
) -> TargetPolicy {
    let host = qualify(&dest.host.value, &pb.spec.virtual_service.namespace);
    let subset = dest.subset.as_ref().map(|s| s.value.as_str());
    judge(view, &host, subset, fence)
}

/// The current facts and whether they can be trusted yet.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The facts.
    pub view: Arc<ClusterView>,
    /// True once every kind has been read (listed) at least once.
    pub synced: bool,
    /// The latest read error (bad YAML in _cluster/, API refused), if the last read failed.
    pub error: Option<String>,
}

impl Snapshot {
    /// An empty view, not read yet.
    fn unsynced() -> Snapshot {
        Snapshot {
            view: Arc::new(ClusterView::default()),
            synced: false,
            error: None,
        }
    }
}

/// A live view: a `tokio::sync::watch` of [`Snapshot`] underneath. Clones share the source;
/// the source's task ends once every clone is dropped.
#[derive(Clone, Debug)]
pub struct MeshView {
    rx: watch::Receiver<Snapshot>,
}

impl MeshView {
    /// File store: reads `<store_dir>/_cluster/*.yaml` (multi-document YAML, screened through
    /// [`crate::screen`] like every configuration file) once now, then polls every second
    /// (content hashes, so a same-size rewrite within one mtime tick is seen) and re-reads on
    /// a change. A bad file keeps the last good view and sets `error` naming file:line:col. A
    /// missing `_cluster/` directory is a synced, empty view. Must be called from within a
    /// tokio runtime.
    pub fn file(store_dir: &std::path::Path) -> MeshView {
        MeshView {
            rx: file::spawn(store_dir.join(file::CLUSTER_DIR)),
        }
    }

    /// Kubernetes: one `kube::runtime::watcher` per kind (Namespaces cluster-wide, the three
    /// Istio kinds in all namespaces; security.istio.io/v1 and networking.istio.io/v1),
    /// merged into one view; `synced` once each kind's initial list completed; a watch error
    /// sets `error` and that watcher retries with backoff. Needs get/list/watch only. Must be
    /// called from within a tokio runtime.
    pub fn kubernetes(client: kube::Client) -> MeshView {
        MeshView {
            rx: cluster::spawn(client),
        }
    }

    /// A fixed view (tests, `validate`): synced, no error, never changes.
    pub fn fixed(view: ClusterView) -> MeshView {
        let (_tx, rx) = watch::channel(Snapshot {
            view: Arc::new(view),
            synced: true,
            error: None,
        });
        MeshView { rx }
    }

    /// The current snapshot (cheap: the view is shared).
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    /// Resolves when the view changed since the last call (for the controller to re-decide);
    /// false when the source is gone (a [`MeshView::fixed`] view, or a source that stopped).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
