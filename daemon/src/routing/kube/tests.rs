#![allow(clippy::unwrap_used)]
use super::*;
use kube::runtime::watcher::Event;
use serde_json::json;

fn ar() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, "v1", "VirtualService"))
}

/// A list item as the API server sends it: no `apiVersion`/`kind`.
fn obj(name: &str, host: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "ns" },
        "spec": { "http": [{ "route": [{ "destination": { "host": host } }] }] }
    }))
    .unwrap()
}

fn host(cache: &WatchCache, name: &str) -> Option<String> {
    cache.get("ns", name).map(|v| {
        v.pointer("/spec/http/0/route/0/destination/host")
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    })
}

fn cache() -> WatchCache {
    let wanted = [("ns", "a"), ("ns", "b")]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect();
    WatchCache::new(Arc::new(wanted))
}

/// Nothing is served before the first list is complete; then the wanted objects are,
/// with the resource's `apiVersion` and `kind`, and objects no playbook names are not kept.
#[test]
fn serves_only_after_the_list_and_only_wanted_objects() {
    let (c, ar) = (cache(), ar());
    c.apply("ns", &Event::Init, &ar);
    c.apply("ns", &Event::InitApply(obj("a", "a1")), &ar);
    c.apply("ns", &Event::InitApply(obj("other", "o1")), &ar);
    assert_eq!(host(&c, "a"), None, "served before the list was complete");
    c.apply("ns", &Event::InitDone, &ar);
    assert_eq!(host(&c, "a").as_deref(), Some("a1"));
    assert_eq!(host(&c, "other"), None);
    assert_eq!(host(&c, "b"), None, "an object not in the list");
    let a = c.get("ns", "a").unwrap();
    assert_eq!(a["apiVersion"], "networking.istio.io/v1");
    assert_eq!(a["kind"], "VirtualService");
    assert_eq!(c.get("other-ns", "a"), None);
}

/// The reduced object gives exactly the view the whole object gives (failed over with a
/// drifted route, another playbook's route beside it, managedFields and other fields).
#[test]
fn the_cached_object_gives_the_view_of_the_whole_object() {
    let pb = crate::playbook::parse(
        "pb.yaml",
        "apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: web }
spec:
  virtualService: { namespace: ns, name: a }
  route: primary
  primary: { host: web.ns.svc.cluster.local }
  failover:
    - { host: web.dr.svc.cluster.local }
  probes:
    - { name: p, target: primary, http: { url: \"http://127.0.0.1:1/\" } }
    - { name: d, target: \"failover[0]\", http: { url: \"http://127.0.0.1:1/\" } }
",
    )
    .unwrap();
    let mut whole = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "a", "namespace": "ns", "resourceVersion": "7",
            "labels": { "app": "web" },
            "annotations": { "other": "x" },
            "managedFields": [{ "manager": "kubectl", "fieldsV1": { "f:spec": {} } }]
        },
        "spec": {
            "hosts": ["web.ns.svc.cluster.local"],
            "http": [
                { "name": "other", "match": [{ "uri": { "prefix": "/x" } }],
                  "route": [{ "destination": { "host": "x" } }] },
                { "name": "primary", "retries": { "attempts": 3 },
                  "route": [{ "destination": { "host": "web.ns.svc.cluster.local" } }] }
            ]
        }
    });
    let now = jiff::Timestamp::now();
    let moved = crate::engine::Routing::Failover { target: 0 };
    super::super::apply(&mut whole, &pb, moved, Some(now)).unwrap();
    // Someone edits the route afterwards: the view reports drift.
    whole["spec"]["http"][1]["route"][0]["destination"]["host"] = json!("elsewhere");
    let obj: DynamicObject = serde_json::from_value(whole.clone()).unwrap();
    let cached = as_json(&obj, &ar()).unwrap();
    let full = super::super::view_at(&whole, &pb, now).unwrap();
    assert!(full.drift.is_some() && full.routing == moved, "{full:?}");
    assert_eq!(super::super::view_at(&cached, &pb, now).unwrap(), full);
    assert!(cached["metadata"].get("managedFields").is_none());
    // No http list at all: the same error either way.
    whole["spec"].as_object_mut().unwrap().remove("http");
    let obj: DynamicObject = serde_json::from_value(whole.clone()).unwrap();
    assert_eq!(
        super::super::view_at(&as_json(&obj, &ar()).unwrap(), &pb, now)
            .unwrap_err()
            .to_string(),
        super::super::view_at(&whole, &pb, now)
            .unwrap_err()
            .to_string()
    );
}

/// Changes and deletions apply; a relist replaces the namespace whole (an object gone
/// meanwhile is gone); a watch error stops serving until the watch delivers again.
#[test]
fn follows_changes_relists_and_errors() {
    let (c, ar) = (cache(), ar());
    c.apply("ns", &Event::Init, &ar);
    c.apply("ns", &Event::InitApply(obj("a", "a1")), &ar);
    c.apply("ns", &Event::InitApply(obj("b", "b1")), &ar);
    c.apply("ns", &Event::InitDone, &ar);
    c.apply("ns", &Event::Apply(obj("a", "a2")), &ar);
    assert_eq!(host(&c, "a").as_deref(), Some("a2"));
    c.apply("ns", &Event::Delete(obj("b", "b1")), &ar);
    assert_eq!(host(&c, "b"), None);
    c.apply("ns", &Event::Apply(obj("b", "b2")), &ar);
    // Relist: the old contents are served until it is done, then replaced whole.
    c.apply("ns", &Event::Init, &ar);
    c.apply("ns", &Event::InitApply(obj("b", "b3")), &ar);
    assert_eq!(host(&c, "a").as_deref(), Some("a2"));
    c.apply("ns", &Event::InitDone, &ar);
    assert_eq!(
        host(&c, "a"),
        None,
        "deleted during the relist, still served"
    );
    assert_eq!(host(&c, "b").as_deref(), Some("b3"));
    c.unsynced("ns");
    assert_eq!(host(&c, "b"), None, "served while the watch is failing");
    c.apply("ns", &Event::Apply(obj("b", "b4")), &ar);
    assert_eq!(host(&c, "b").as_deref(), Some("b4"));
}
