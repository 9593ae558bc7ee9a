//! The watch cache: the watched VirtualServices as the namespace watches last delivered
//! them, trimmed to what a route view reads, so viewers cost the API server nothing.

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

/// The watched VirtualServices as the namespace watches last delivered them: what the API
/// shows a viewer, at no cost to the API server. Only the objects a playbook names are kept.
#[derive(Debug)]
pub(super) struct WatchCache {
    /// `(namespace, name)` of every object a playbook names.
    wanted: Arc<std::collections::HashSet<(String, String)>>,
    state: std::sync::RwLock<CacheState>,
}

#[derive(Debug, Default)]
pub(super) struct CacheState {
    /// The objects, as JSON, by `(namespace, name)`.
    objects: std::collections::HashMap<(String, String), Arc<Value>>,
    /// Namespaces whose watch has listed and is delivering (not erroring).
    synced: std::collections::HashSet<String>,
    /// A (re)list in progress, per namespace: swapped in whole when it is done, so a relist
    /// never shows half a namespace and an object deleted meanwhile does not linger.
    listing: std::collections::HashMap<String, std::collections::HashMap<String, Arc<Value>>>,
}

impl WatchCache {
    pub(super) fn new(wanted: Arc<std::collections::HashSet<(String, String)>>) -> Self {
        Self {
            wanted,
            state: std::sync::RwLock::new(CacheState::default()),
        }
    }

    /// The object, if its namespace's watch is synced and holds it.
    pub(super) fn get(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
        let state = self.state.read().ok()?;
        if !state.synced.contains(ns) {
            return None;
        }
        state
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The namespace's watch failed: serve nothing from it until it delivers again.
    pub(super) fn unsynced(&self, ns: &str) {
        if let Ok(mut state) = self.state.write() {
            state.synced.remove(ns);
        }
    }

    /// Applies one watch event of namespace `ns`.
    pub(super) fn apply(
        &self,
        ns: &str,
        event: &kube::runtime::watcher::Event<DynamicObject>,
        ar: &ApiResource,
    ) {
        use kube::runtime::watcher::Event;
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let wanted = |obj: &DynamicObject| {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let key = (ns.to_string(), name);
            self.wanted.contains(&key).then_some(key)
        };
        match event {
            Event::Init => {
                state.listing.insert(ns.to_string(), Default::default());
            }
            Event::InitApply(obj) => {
                if let Some(key) = wanted(obj)
                    && let Some(json) = as_json(obj, ar)
                {
                    state
                        .listing
                        .entry(ns.to_string())
                        .or_default()
                        .insert(key.1, json);
                }
            }
            Event::InitDone => {
                let listed = state.listing.remove(ns).unwrap_or_default();
                state.objects.retain(|(n, _), _| n != ns);
                for (name, json) in listed {
                    state.objects.insert((ns.to_string(), name), json);
                }
                state.synced.insert(ns.to_string());
            }
            Event::Apply(obj) => {
                if let Some(key) = wanted(obj) {
                    match as_json(obj, ar) {
                        Some(json) => state.objects.insert(key, json),
                        None => state.objects.remove(&key),
                    };
                }
                state.synced.insert(ns.to_string());
            }
            Event::Delete(obj) => {
                if let Some(key) = wanted(obj) {
                    state.objects.remove(&key);
                }
                state.synced.insert(ns.to_string());
            }
        }
    }
}

/// A watched object reduced to what [`super::view_at`] reads: `apiVersion`, `kind`,
/// failoverd's annotations and each http route's `name` and `route` (list items may come
/// without `apiVersion` and `kind`: they are the watched resource's). The view computed from
/// it is the one a GET of the whole object gives; kept whole, 1,000 objects (managedFields,
/// other routes' matches and retries) cost the daemon over 10 MiB.
pub(super) fn as_json(obj: &DynamicObject, ar: &ApiResource) -> Option<Arc<Value>> {
    let (api_version, kind) = match &obj.types {
        Some(t) => (t.api_version.clone(), t.kind.clone()),
        None => (ar.api_version.clone(), ar.kind.clone()),
    };
    let annotations: serde_json::Map<String, Value> = obj
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| *k == crate::routing::STATE || *k == crate::routing::ORIGINAL_ROUTE)
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut spec = serde_json::Map::new();
    match obj.data.pointer("/spec/http") {
        Some(Value::Array(routes)) => {
            let slim = routes
                .iter()
                .map(|r| match r.as_object() {
                    Some(r) => Value::Object(
                        r.iter()
                            .filter(|(k, _)| *k == "name" || *k == "route")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    None => r.clone(),
                })
                .collect();
            spec.insert("http".into(), Value::Array(slim));
        }
        // Not a list: kept as it is, so the view reports it exactly as a read would.
        Some(other) => {
            spec.insert("http".into(), other.clone());
        }
        None => {}
    }
    Some(Arc::new(serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": { "annotations": annotations },
        "spec": spec,
    })))
}
