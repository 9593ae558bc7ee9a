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

pub use failoverd_core::routing::*;
pub use file::{FileStore, atomic_write};

use crate::engine::Routing;
use crate::playbook::Playbook;

/// A boxed future, so stores can be chosen at run time.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What [`RoutingStore::read_all`] returns: one read result per playbook, in order.
pub type ReadAllFuture<'a> =
    Pin<Box<dyn Future<Output = Vec<Result<RouteView, StoreError>>> + Send + 'a>>;

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
        last_move: Option<jiff::Timestamp>,
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
    /// A short description for logs (`file:/var/lib/failoverd/routes`).
    fn describe(&self) -> String;
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

#[cfg(test)]
mod tests;
