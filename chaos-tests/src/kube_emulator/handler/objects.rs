//! The objects: paths to keys, GET and LIST with selectors, and the writes (create,
//! update, patch, delete) with their server-side fields, conflicts and validation.

use std::sync::Arc;

use failoverd::routing::istio;
use serde_json::{Value, json};

use crate::kube_emulator::resources::Res;
use crate::kube_emulator::{Key, Shared, State, record, resources};

use super::{Status, Target};

pub(super) fn parse_target(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let res = resources::by_path(group, version, plural)?;
    if res.namespaced && ns.is_none() && name.is_some() {
        return None; // a namespaced object is named only inside its namespace
    }
    if !res.namespaced && ns.is_some() {
        return None; // `/api/v1/namespaces/x/namespaces` does not exist
    }
    Some(Target {
        res,
        version: version.to_string(),
        ns,
        name,
        subresource: sub,
    })
}

/// VirtualService and DestinationRule: the kinds whose schema and webhook rules are
/// failoverd's own Istio checks (the other kinds have the emulator's: `mesh_kinds`).
fn istio_routing(res: &Res) -> bool {
    matches!(res.kind, "VirtualService" | "DestinationRule")
}

pub(super) fn key_of(t: &Target, ns: &str, name: &str) -> Key {
    (
        t.res.group.into(),
        t.res.plural.into(),
        ns.into(),
        name.into(),
    )
}

/// The object as served in `version`.
pub(super) fn served(res: &Res, version: &str, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(res.api_version(version));
    obj["kind"] = json!(res.kind);
    obj
}

pub(super) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Server-set metadata of a new object.
pub(crate) fn init_metadata(st: &mut State, obj: &mut Value, res: &Res, ns: &str) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let uid = Shared::new_uid(st);
    if !res.namespaced {
        super::mesh_kinds::init_cluster_scoped(obj, res);
    }
    let m = &mut obj["metadata"];
    if res.namespaced {
        m["namespace"] = json!(ns);
    }
    m["uid"] = json!(uid);
    m["creationTimestamp"] = json!(now());
    m["generation"] = json!(1);
    if let Some(map) = m.as_object_mut() {
        map.remove("managedFields");
        map.remove("selfLink");
        map.remove("deletionTimestamp");
    }
    obj["apiVersion"] = json!(res.api_version(res.versions[0]));
    obj["kind"] = json!(res.kind);
}

pub(super) fn get(shared: &Arc<Shared>, t: &Target) -> Result<Value, Status> {
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, &ns, &name);
    let mut st = shared.lock();
    let obj = st
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| Status::not_found(t.res, &name))?;
    // The competing writer acts now: the answer below already holds the old state.
    if let Some(i) = st.after_get.iter().position(|(k, _)| *k == key) {
        let (_, hook) = st.after_get.remove(i);
        competing_write(shared, &mut st, t.res, key, hook);
    }
    Ok(served(t.res, &t.version, obj))
}

/// An out-of-band update by the competing writer. None if the object does not exist.
pub(crate) fn competing_write(
    shared: &Shared,
    st: &mut State,
    res: &'static Res,
    key: Key,
    f: impl FnOnce(&mut Value),
) -> Option<Value> {
    let old = st.objects.get(&key).cloned()?;
    let mut new = old.clone();
    f(&mut new);
    carry_server_fields(&old, &mut new, res);
    let stored = shared.commit(st, key.clone(), Some(new));
    record(st, "update", res.kind, &key.2, &key.3, &stored);
    Some(stored)
}

/// Keeps what clients cannot change (uid, creationTimestamp, namespace) and bumps generation
/// when the spec changed.
pub(super) fn carry_server_fields(old: &Value, new: &mut Value, res: &Res) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for f in ["uid", "creationTimestamp", "namespace", "name"] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if new.get("spec") != old.get("spec") {
        generation + 1
    } else {
        generation
    });
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = json!(res.kind);
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
}

pub(super) struct Selector {
    labels: Vec<(String, Option<String>, bool)>, // (key, value, equal) ; value None = exists
    fields: Vec<(String, String, bool)>,
}

pub(super) fn parse_selectors(q: &[(String, String)]) -> Result<Selector, Status> {
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut labels = Vec::new();
    for term in get("labelSelector")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if let Some((k, v)) = term.split_once("!=") {
            labels.push((k.trim().into(), Some(v.trim().into()), false));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.push((k.trim().into(), Some(v.trim().into()), true));
        } else if let Some(k) = term.strip_prefix('!') {
            labels.push((k.trim().into(), None, false));
        } else if term.contains(' ') || term.contains('(') {
            return Err(Status::bad_request(format!(
                "unable to parse requirement: {term:?} (set-based selectors are not emulated)"
            )));
        } else {
            labels.push((term.into(), None, true));
        }
    }
    let mut fields = Vec::new();
    for term in get("fieldSelector")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, v, true)
        } else {
            return Err(Status::bad_request(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            )));
        };
        if !matches!(k, "metadata.name" | "metadata.namespace") {
            return Err(Status::bad_request(format!(
                "field label not supported: {k}"
            )));
        }
        fields.push((k.to_string(), v.to_string(), eq));
    }
    Ok(Selector { labels, fields })
}

impl Selector {
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let lbl = &obj["metadata"]["labels"];
        self.labels.iter().all(|(k, v, eq)| {
            let have = lbl.get(k).and_then(Value::as_str);
            match v {
                None => have.is_some() == *eq,
                Some(v) => (have == Some(v.as_str())) == *eq,
            }
        }) && self.fields.iter().all(|(k, v, eq)| {
            let have = match k.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            };
            (have == Some(v.as_str())) == *eq
        })
    }
}

pub(super) fn in_scope(t: &Target, key: &Key) -> bool {
    key.0 == t.res.group && key.1 == t.res.plural && t.ns.as_deref().is_none_or(|ns| key.2 == ns)
}

pub(super) fn list(
    shared: &Arc<Shared>,
    t: &Target,
    q: &[(String, String)],
) -> Result<Value, Status> {
    let sel = parse_selectors(q)?;
    let st = shared.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|(k, v)| in_scope(t, k) && sel.matches(v))
        .map(|(_, v)| served(t.res, &t.version, v.clone()))
        .collect();
    Ok(json!({
        "apiVersion": t.res.api_version(&t.version),
        "kind": format!("{}List", t.res.kind),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    }))
}

pub(super) fn parse_body(body: &str) -> Result<Value, Status> {
    let v: Value = serde_json::from_str(body)
        .or_else(|_| serde_saphyr::from_str::<Value>(body))
        .map_err(|e| Status::bad_request(format!("the object provided is unrecognized: {e}")))?;
    if !v.is_object() {
        return Err(Status::bad_request(
            "the object provided is unrecognized (must be a JSON object)",
        ));
    }
    Ok(v)
}

/// Checks kind/apiVersion of a request body against the URL.
pub(super) fn check_type(t: &Target, obj: &Value) -> Result<(), Status> {
    let want = t.res.api_version(&t.version);
    let av = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if kind != t.res.kind || av != want {
        return Err(Status::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want}) or kind {kind:?} is not {}",
            t.res.kind
        )));
    }
    Ok(())
}

/// Schema + webhook validation of the object as served in the request's version.
/// apimachinery's `TotalAnnotationSizeLimitB`: the keys and values of one object's
/// annotations together may hold at most 256 KiB, whatever the kind.
pub(super) const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// apimachinery's `MaxSecretSize`, which also bounds a ConfigMap's data.
pub(super) const CONFIGMAP_SIZE_LIMIT: usize = 1024 * 1024;

pub(super) fn validate(t: &Target, obj: &Value, name: &str) -> Result<(), Status> {
    if let Some(a) = obj["metadata"]["annotations"].as_object() {
        let total: usize = a
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            return Err(Status::invalid(
                t.res,
                name,
                vec![(
                    "metadata.annotations".into(),
                    format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
                )],
            ));
        }
    }
    if t.res.kind == "ConfigMap" {
        // apimachinery's ValidateConfigMap: keys and values of `data` and `binaryData`
        // together at most 1 MiB.
        let total: usize = ["data", "binaryData"]
            .iter()
            .filter_map(|f| obj[f].as_object())
            .flatten()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > CONFIGMAP_SIZE_LIMIT {
            return Err(Status::invalid(
                t.res,
                name,
                vec![(
                    "".into(),
                    format!("Too long: must have at most {CONFIGMAP_SIZE_LIMIT} bytes"),
                )],
            ));
        }
    }
    if super::mesh_kinds::served_here(t.res) {
        // Checked by the emulator's own rules, not failoverd's code.
        let causes = super::mesh_kinds::check(t.res, obj, name);
        if !causes.is_empty() {
            return Err(Status::invalid(t.res, name, causes));
        }
        return Ok(());
    }
    let violations = match t.res.kind {
        "VirtualService" => istio::check_virtual_service(obj),
        "DestinationRule" => istio::check_destination_rule(obj),
        _ => {
            if istio::is_dns1123_subdomain(name) {
                Vec::new()
            } else {
                vec![istio::Violation {
                    path: "metadata.name".into(),
                    message: format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                    source: istio::Source::Schema,
                }]
            }
        }
    };
    let (schema, webhook): (Vec<_>, Vec<_>) = violations
        .into_iter()
        .partition(|v| v.source == istio::Source::Schema);
    if !schema.is_empty() {
        return Err(Status::invalid(
            t.res,
            name,
            schema.into_iter().map(|v| (v.path, v.message)).collect(),
        ));
    }
    if !webhook.is_empty() {
        // istiod joins its errors with hashicorp/go-multierror.
        let msg = if webhook.len() == 1 {
            webhook[0].message.clone()
        } else {
            let mut s = format!("{} errors occurred:", webhook.len());
            for v in &webhook {
                s.push_str(&format!("\n\t* {}", v.message));
            }
            s.push_str("\n\n");
            s
        };
        return Err(Status::new(
            400,
            "",
            format!(
                "admission webhook \"validation.istio.io\" denied the request: configuration is invalid: {msg}"
            ),
        ));
    }
    Ok(())
}

pub(super) fn create(
    shared: &Arc<Shared>,
    t: &Target,
    ns: &str,
    body: &str,
) -> Result<(u16, Value), Status> {
    let mut obj = parse_body(body)?;
    check_type(t, &obj)?;
    if t.res.namespaced
        && let Some(bns) = obj["metadata"]["namespace"].as_str()
        && bns != ns
    {
        return Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut st = shared.lock();
    if name.is_empty()
        && let Some(prefix) = obj["metadata"]["generateName"].as_str()
    {
        name = format!("{prefix}{:05x}", (st.uid_seq * 7919 + st.rv) % 0xfffff);
        obj["metadata"]["name"] = json!(name);
    }
    if name.is_empty() {
        return Err(Status::invalid(
            t.res,
            "",
            vec![(
                "metadata.name".into(),
                "Required value: name or generateName is required".into(),
            )],
        ));
    }
    if obj["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(Status::new(
            500,
            "InternalError",
            "Internal error occurred: resourceVersion should not be set on objects to be created",
        ));
    }
    if t.res.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        // A cluster-scoped object has no namespace, whatever the body says.
        m.remove("namespace");
    }
    if t.res.custom && istio_routing(t.res) {
        // Unknown fields are dropped (structural schema pruning), as on a real server.
        istio::prune(&mut obj);
    }
    validate(t, &obj, &name)?;
    let key = key_of(t, ns, &name);
    if st.objects.contains_key(&key) {
        return Err(Status::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.res.group_resource()),
        )
        .details(json!({"name": name, "group": t.res.group, "kind": t.res.plural})));
    }
    init_metadata(&mut st, &mut obj, t.res, ns);
    let stored = shared.commit(&mut st, key, Some(obj));
    Ok((201, served(t.res, &t.version, stored)))
}

/// Stores `new` over `old` (the objects as served in the request's version); no-op writes keep
/// the resourceVersion like the real server.
pub(super) fn store_update(
    shared: &Arc<Shared>,
    st: &mut State,
    t: &Target,
    key: Key,
    old: &Value,
    mut new: Value,
) -> Result<Value, Status> {
    let name = key.3.clone();
    carry_server_fields(old, &mut new, t.res);
    new["apiVersion"] = json!(t.res.api_version(&t.version));
    if t.res.custom {
        // The status subresource is on: writes to the main resource keep the old status.
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if t.res.custom && istio_routing(t.res) {
        istio::prune(&mut new);
    }
    super::mesh_kinds::keep_server_fields(t.res, old, &mut new);
    validate(t, &new, &name)?;
    let mut a = new.clone();
    let mut b = old.clone();
    for o in [&mut a, &mut b] {
        if let Some(m) = o["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
    }
    if a == b {
        return Ok(old.clone());
    }
    new["apiVersion"] = json!(t.res.api_version(t.res.versions[0]));
    let stored = shared.commit(st, key, Some(new));
    Ok(served(t.res, &t.version, stored))
}

pub(super) fn update(
    shared: &Arc<Shared>,
    t: &Target,
    ns: &str,
    body: &str,
) -> Result<(u16, Value), Status> {
    let obj = parse_body(body)?;
    check_type(t, &obj)?;
    let name = t.name.clone().unwrap_or_default();
    let bname = obj["metadata"]["name"].as_str().unwrap_or("");
    if bname != name {
        return Err(Status::bad_request(format!(
            "the name of the object ({bname}) does not match the name on the URL ({name})"
        )));
    }
    if t.res.namespaced
        && let Some(bns) = obj["metadata"]["namespace"].as_str()
        && bns != ns
    {
        return Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let key = key_of(t, ns, &name);
    let mut st = shared.lock();
    let old = st
        .objects
        .get(&key)
        .cloned()
        .map(|o| served(t.res, &t.version, o))
        .ok_or_else(|| Status::not_found(t.res, &name))?;
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(Status::conflict(t.res, &name));
    }
    if let Some(uid) = obj["metadata"]["uid"].as_str()
        && !uid.is_empty()
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                t.res.group_resource(),
                old["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    let stored = store_update(shared, &mut st, t, key, &old, obj)?;
    Ok((200, stored))
}

/// Objects merged recursively, everything else (arrays included) replaced.
pub(super) fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => deep_merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub(super) fn patch(
    shared: &Arc<Shared>,
    t: &Target,
    ns: &str,
    content_type: Option<&str>,
    body: &str,
    field_manager: Option<String>,
) -> Result<(u16, Value), Status> {
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, ns, &name);
    let ct = content_type.unwrap_or("");
    let unsupported = || {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                if t.res.custom {
                    ""
                } else {
                    ", application/strategic-merge-patch+json"
                }
            ),
        )
    };
    let mut st = shared.lock();
    let current = st
        .objects
        .get(&key)
        .cloned()
        .map(|o| served(t.res, &t.version, o));
    let patched = match ct {
        "application/json-patch+json" => {
            let old = current
                .clone()
                .ok_or_else(|| Status::not_found(t.res, &name))?;
            let ops: json_patch::Patch = serde_json::from_str(body)
                .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = old;
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                Status::new(422, "Invalid", "the server rejected our request due to an error in our request")
                    .details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": e.to_string()}]}))
            })?;
            doc
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if ct == "application/strategic-merge-patch+json" && t.res.custom {
                return Err(unsupported());
            }
            let old = current
                .clone()
                .ok_or_else(|| Status::not_found(t.res, &name))?;
            let p: Value = serde_json::from_str(body)
                .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = old;
            json_patch::merge(&mut doc, &p);
            doc
        }
        "application/apply-patch+yaml" => {
            if field_manager.as_deref().is_none_or(str::is_empty) {
                return Err(Status::bad_request(
                    "PATCH /apply requests require fieldManager to be set",
                ));
            }
            let applied = parse_body(body)?;
            check_type(t, &applied)?;
            match current.clone() {
                None => {
                    drop(st);
                    let mut obj = applied;
                    obj["metadata"]["name"] = json!(name);
                    return create(shared, t, ns, &obj.to_string());
                }
                Some(old) => {
                    let mut doc = old;
                    deep_merge(&mut doc, &applied);
                    doc
                }
            }
        }
        _ => return Err(unsupported()),
    };
    let old = current.ok_or_else(|| Status::not_found(t.res, &name))?;
    // A patch that sets resourceVersion is a precondition, like on PUT.
    if let Some(rv) = patched["metadata"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(Status::conflict(t.res, &name));
    }
    if patched["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(Status::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            patched["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    let stored = store_update(shared, &mut st, t, key, &old, patched)?;
    Ok((200, stored))
}

pub(super) fn delete(shared: &Arc<Shared>, t: &Target, ns: &str) -> Result<(u16, Value), Status> {
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, ns, &name);
    let mut st = shared.lock();
    if !st.objects.contains_key(&key) {
        return Err(Status::not_found(t.res, &name));
    }
    let gone = shared.commit(&mut st, key, None);
    if !t.res.namespaced {
        // A Namespace answers with itself, Terminating (the emulator removes it at once and
        // does not cascade to the objects inside).
        return Ok((
            200,
            super::mesh_kinds::terminating(served(t.res, &t.version, gone)),
        ));
    }
    // Custom resources, leases and events are stored without ReturnDeletedObject: an
    // immediate delete answers a Success Status naming the object.
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": t.res.group, "kind": t.res.plural,
                        "uid": gone["metadata"]["uid"]}}),
    ))
}
