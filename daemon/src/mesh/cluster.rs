//! The Kubernetes source of the cluster facts: one watcher per kind, merged into one view by
//! one task, which owns the view and publishes each change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use failoverd_core::residency::{ClusterView, Kind};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Snapshot;

/// Watch items waiting for the merger. A relist of a large cluster arrives in a burst; the
/// watchers wait on a full queue (the watch stream holds the rest), nothing is dropped.
const QUEUE: usize = 1024;

/// What the watchers tell the merger.
enum Msg {
    Event(Kind, Event<Value>),
    Error(Kind, String),
}

/// The group, version, kind and plural each kind is read at.
fn resource(kind: Kind) -> ApiResource {
    let (group, version, plural) = match kind {
        Kind::Namespace => ("", "v1", "namespaces"),
        Kind::PeerAuthentication => ("security.istio.io", "v1", "peerauthentications"),
        Kind::DestinationRule => ("networking.istio.io", "v1", "destinationrules"),
        Kind::ServiceEntry => ("networking.istio.io", "v1", "serviceentries"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind.name()), plural)
}

/// A watched object as JSON, with the apiVersion and kind list items may come without.
fn as_json(obj: DynamicObject, ar: &ApiResource) -> Option<Value> {
    let mut v = serde_json::to_value(obj).ok()?;
    if v.get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        v["apiVersion"] = Value::String(ar.api_version.clone());
    }
    if v.get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        v["kind"] = Value::String(ar.kind.clone());
    }
    Some(v)
}

/// Starts the four watchers and the merger on the current runtime.
pub(super) fn spawn(client: kube::Client) -> watch::Receiver<Snapshot> {
    let (tx, rx) = watch::channel(Snapshot::unsynced());
    let (msgs_tx, msgs_rx) = mpsc::channel(QUEUE);
    for kind in Kind::ALL {
        tokio::spawn(watch_kind(client.clone(), kind, msgs_tx.clone()));
    }
    tokio::spawn(merge(msgs_rx, tx));
    rx
}

/// One kind, cluster-wide (Namespaces) or across all namespaces (the Istio kinds). The
/// watcher relists and backs off by itself; each error is passed on and the stream goes on.
async fn watch_kind(client: kube::Client, kind: Kind, out: mpsc::Sender<Msg>) {
    let ar = resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut stream =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = out.closed() => return,
        };
        let Some(item) = item else { return };
        let msg = match item {
            Ok(ev) => {
                let ev = match ev {
                    Event::Apply(o) => as_json(o, &ar).map(Event::Apply),
                    Event::Delete(o) => as_json(o, &ar).map(Event::Delete),
                    Event::InitApply(o) => as_json(o, &ar).map(Event::InitApply),
                    Event::Init => Some(Event::Init),
                    Event::InitDone => Some(Event::InitDone),
                };
                match ev {
                    Some(ev) => Msg::Event(kind, ev),
                    None => continue,
                }
            }
            Err(e) => Msg::Error(kind, format!("watching {}: {e}", ar.plural)),
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

/// The merger's state.
#[derive(Default)]
struct Merged {
    view: ClusterView,
    /// Objects of a kind being relisted (between `Init` and `InitDone`).
    listing: BTreeMap<Kind, Vec<Value>>,
    synced: BTreeSet<Kind>,
    /// The last error of each kind whose watcher has not delivered since.
    errors: BTreeMap<Kind, String>,
}

impl Merged {
    /// Applies one message; true if the view changed.
    fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Error(kind, e) => {
                if self.errors.get(&kind) != Some(&e) {
                    warn!(kind = kind.name(), error = %e, "mesh view: watch failed; retrying with backoff");
                }
                self.errors.insert(kind, e);
                false
            }
            Msg::Event(kind, ev) => {
                self.errors.remove(&kind);
                match ev {
                    Event::Init => {
                        self.listing.insert(kind, Vec::new());
                        false
                    }
                    Event::InitApply(o) => {
                        self.listing.entry(kind).or_default().push(o);
                        false
                    }
                    Event::InitDone => {
                        let listed = self.listing.remove(&kind).unwrap_or_default();
                        self.view.clear_kind(kind);
                        for o in &listed {
                            self.insert(o);
                        }
                        self.synced.insert(kind);
                        true
                    }
                    Event::Apply(o) => {
                        self.insert(&o);
                        true
                    }
                    Event::Delete(o) => {
                        self.view.remove(&o);
                        true
                    }
                }
            }
        }
    }

    /// A malformed object is kept as unreadable by the view (it fails closed); it is logged,
    /// not reported as a read error: the watch itself is fine.
    fn insert(&mut self, o: &Value) {
        if let Err(e) = self.view.insert(o) {
            warn!(error = %e, "mesh view: malformed object; targets it may concern fail the fence");
        }
    }

    /// Whether every kind is listed, and the errors of the watchers that failed last.
    fn status(&self) -> (bool, Option<String>) {
        let error = (!self.errors.is_empty())
            .then(|| self.errors.values().cloned().collect::<Vec<_>>().join("; "));
        (self.synced.len() == Kind::ALL.len(), error)
    }
}

/// Owns the view: applies what the watchers send, and publishes once per burst (everything
/// already queued is applied before one snapshot is made).
async fn merge(mut msgs: mpsc::Receiver<Msg>, tx: watch::Sender<Snapshot>) {
    let mut m = Merged::default();
    loop {
        let first = tokio::select! {
            msg = msgs.recv() => msg,
            () = tx.closed() => return,
        };
        let Some(first) = first else { return };
        let mut view_changed = m.apply(first);
        while let Ok(msg) = msgs.try_recv() {
            view_changed |= m.apply(msg);
        }
        let (synced, error) = m.status();
        // One copy per burst, made before taking the channel's lock (readers never wait on
        // it), and shared by every reader of the snapshot.
        let view = view_changed.then(|| Arc::new(m.view.clone()));
        tx.send_if_modified(|s| {
            if view.is_none() && s.synced == synced && s.error == error {
                return false;
            }
            debug!(objects = m.view.len(), synced, "mesh view: changed");
            if let Some(view) = view {
                s.view = view;
            }
            s.synced = synced;
            s.error = error;
            true
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ns(name: &str, label: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"failoverd.dev/jurisdiction": label}}})
    }

    fn list(m: &mut Merged, kind: Kind, objects: Vec<Value>) -> bool {
        let mut changed = m.apply(Msg::Event(kind, Event::Init));
        for o in objects {
            changed |= m.apply(Msg::Event(kind, Event::InitApply(o)));
        }
        changed | m.apply(Msg::Event(kind, Event::InitDone))
    }

    /// Ensures synced needs all four kinds listed, an error stays until that kind's watcher
    /// delivers again, and a relist replaces the kind's objects (one deleted meanwhile goes).
    #[test]
    fn relists_errors_and_sync() {
        let mut m = Merged::default();
        assert!(list(
            &mut m,
            Kind::Namespace,
            vec![ns("a", "ID"), ns("b", "SG")]
        ));
        for k in [Kind::PeerAuthentication, Kind::DestinationRule] {
            list(&mut m, k, vec![]);
        }
        assert_eq!(m.status(), (false, None), "three kinds of four");
        assert!(!m.apply(Msg::Error(
            Kind::ServiceEntry,
            "watching serviceentries: 403".into()
        )));
        assert_eq!(
            m.status(),
            (false, Some("watching serviceentries: 403".into()))
        );
        list(&mut m, Kind::ServiceEntry, vec![]);
        assert_eq!(m.status(), (true, None));
        assert_eq!(m.view.len(), 2);

        // A relist without `b` (deleted while the watch was down), and `a` relabelled.
        m.apply(Msg::Error(
            Kind::Namespace,
            "watching namespaces: gone".into(),
        ));
        assert!(m.status().1.is_some());
        m.apply(Msg::Event(Kind::Namespace, Event::Init));
        assert_eq!(
            m.status(),
            (true, None),
            "delivering again clears the error"
        );
        m.apply(Msg::Event(Kind::Namespace, Event::InitApply(ns("a", "SG"))));
        assert_eq!(
            m.view.len(),
            2,
            "the old objects stand until the list is complete"
        );
        assert!(m.apply(Msg::Event(Kind::Namespace, Event::InitDone)));
        assert_eq!(m.view.len(), 1);
        let mut want = ClusterView::default();
        want.insert(&ns("a", "SG")).unwrap();
        assert_eq!(m.view, want);

        assert!(m.apply(Msg::Event(Kind::Namespace, Event::Delete(ns("a", "SG")))));
        assert!(m.view.is_empty());
        // A malformed object is kept as unreadable, not dropped.
        let bad = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c", "labels": []}});
        assert!(m.apply(Msg::Event(Kind::Namespace, Event::Apply(bad))));
        assert_eq!(m.view.problems().len(), 1);
    }

    /// Ensures list items without apiVersion and kind get them from the watched resource.
    #[test]
    fn list_items_get_their_type() {
        let ar = resource(Kind::PeerAuthentication);
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}}}))
        .unwrap();
        let v = as_json(obj, &ar).unwrap();
        assert_eq!(v["apiVersion"], "security.istio.io/v1");
        assert_eq!(v["kind"], "PeerAuthentication");
        assert_eq!(Kind::of(&v), Some(Kind::PeerAuthentication));
        assert_eq!(resource(Kind::ServiceEntry).plural, "serviceentries");
        assert_eq!(resource(Kind::Namespace).api_version, "v1");
    }
}
