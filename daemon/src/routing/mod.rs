//! Routing stores: where failoverd reads and writes VirtualServices.
//!
//! The rewrite itself ([`apply`]) is shared and pure: it is [`failoverd_core::routing`],
//! re-exported here (with [`istio`] validation) so `crate::routing::...` paths hold. This
//! module owns the stores: the [`RoutingStore`] trait, the `file` store and the `kubernetes`
//! store.

mod file;
pub mod kube;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use failoverd_core::routing::fault;
pub use failoverd_core::routing::*;
pub use file::{FileStore, atomic_write};

use crate::engine::Routing;
use crate::playbook::Playbook;

/// A boxed future, so stores can be chosen at run time.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What [`RoutingStore::read_all`] returns: one read result per playbook, in order.
pub type ReadAllFuture<'a> =
    Pin<Box<dyn Future<Output = Vec<Result<RouteView, StoreError>>> + Send + 'a>>;

/// Where a route shown to a viewer (`GET /v1/playbooks/{name}`) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewSource {
    /// Read from the store just now (the `file` store: a local file).
    Store,
    /// The `kubernetes` store's watch cache: the object as the watch last delivered it.
    WatchCache,
    /// Not from the store at all: the controller's last-known routing (the cache has not
    /// synced or lacks the object).
    Controller,
}

impl ViewSource {
    /// The name the API reports (`"store"`, `"watch-cache"`, `"controller"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ViewSource::Store => "store",
            ViewSource::WatchCache => "watch-cache",
            ViewSource::Controller => "controller",
        }
    }
}

/// What [`RoutingStore::viewer_read`] returns: the view and where it came from, or `None`
/// when the store has nothing to show without a request to a remote backend.
pub type ViewerFuture<'a> =
    Pin<Box<dyn Future<Output = Option<(ViewSource, Result<RouteView, StoreError>)>> + Send + 'a>>;

/// Where VirtualServices live. Implementations must never overwrite a concurrent change
/// blindly and must read back what they wrote.
pub trait RoutingStore: Send + Sync + std::fmt::Debug {
    /// Reads the playbook's route.
    fn read<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, RouteView>;
    /// Writes `to` into the playbook's route, recording when the move started.
    fn write<'a>(
        &'a self,
        pb: &'a Playbook,
        to: Routing,
        stamp: Stamp,
    ) -> StoreFuture<'a, WriteOutcome>;
    /// Reads several playbooks' routes: one result per playbook, in order. The default
    /// reads them one by one; a store with a cheaper bulk read (the `kubernetes` store lists
    /// a namespace in one request instead of one GET per playbook) overrides it, so a start
    /// or a takeover with a thousand playbooks does not wait on a thousand requests.
    fn read_all<'a>(&'a self, pbs: &'a [Arc<Playbook>]) -> ReadAllFuture<'a> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(pbs.len());
            for pb in pbs {
                out.push(self.read(pb).await);
            }
            out
        })
    }
    /// The route for a viewer (the API), never at the cost of a routing write: no token of
    /// the write bucket, no request to a remote backend. The default reads the store (the
    /// `file` store reads a local file, without the writer's lock); the `kubernetes` store
    /// answers from its watch cache, or `None` (the caller then shows the controller's state).
    fn viewer_read<'a>(&'a self, pb: &'a Playbook) -> ViewerFuture<'a> {
        Box::pin(async move { Some((ViewSource::Store, self.read(pb).await)) })
    }
    /// A short description for logs (`file:/var/lib/failoverd/routes`).
    fn describe(&self) -> String;
    /// The run ids of the drill faults the playbook's VirtualService holds (see
    /// [`fault::faults_in`]). The default: this store cannot hold drill faults.
    fn faults<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, Vec<String>> {
        let _ = pb;
        Box::pin(async move { Err(no_faults(self.describe())) })
    }
    /// Writes a drill's fault edit into the playbook's VirtualService with the same
    /// compare-and-swap and read-back as [`RoutingStore::write`]; `before`/`after` are the
    /// whole `spec.http`. The default: this store cannot write drill faults.
    fn write_fault<'a>(
        &'a self,
        pb: &'a Playbook,
        edit: &'a fault::FaultEdit,
    ) -> StoreFuture<'a, WriteOutcome> {
        let _ = (pb, edit);
        Box::pin(async move { Err(no_faults(self.describe())) })
    }
    /// Change notices for these `(namespace, name)` objects, for stores that can watch
    /// (`kubernetes`): drift is then found within a second instead of at the next periodic
    /// check. The default (`file`) has none.
    fn watch(
        &self,
        objects: Vec<(String, String)>,
    ) -> Option<tokio::sync::mpsc::Receiver<(String, String)>> {
        let _ = objects;
        None
    }
}

fn no_faults(store: String) -> StoreError {
    StoreError::Invalid {
        object: store.clone(),
        message: format!("the store {store} does not support fault drills"),
    }
}

#[cfg(test)]
mod tests;

/// Sets the annotation [`crate::trace::ANNOTATION`] of `vs` to the W3C `traceparent` of the
/// span current where the write is made (tracing on; nothing otherwise), so the object names
/// the trace of the move that last wrote it. Not part of the route: a write that changes
/// nothing else is still `unchanged`.
pub fn annotate_trace(vs: &mut serde_json::Value, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    if let Some(meta) = vs
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
        && let Some(ann) = meta
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
    {
        ann.insert(crate::trace::ANNOTATION.into(), tp.into());
    }
}
