//! The HTTP side: connections, faults, authentication, routing and the REST verbs.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use failoverd::routing::istio;
use http_body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use super::resources::{self, Res};
use super::{Event, Key, Shared, State, WriteRecord, record};

/// Largest request body accepted.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = epoch.changed() => return,
        };
        let shared = shared.clone();
        let mut conn_epoch = shared.epoch.subscribe();
        conn_epoch.mark_unchanged();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = hyper::service::service_fn(move |req| {
                let s = svc_shared.clone();
                async move { serve(s, req).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = conn_epoch.changed() => {}
            }
        });
    }
}

/// Why a connection is closed without an answer.
#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

fn respond(code: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `metav1.Status` failure.
#[derive(Debug)]
pub(crate) struct Status {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl Status {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Status {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn details(mut self, d: Value) -> Status {
        self.details = Some(d);
        self
    }
    fn body(&self) -> Value {
        let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "code": self.code});
        if !self.reason.is_empty() {
            v["reason"] = json!(self.reason);
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
    fn injected(code: u16) -> Status {
        let (reason, message) = match code {
            400 => (
                "BadRequest",
                "the server rejected our request for an unknown reason",
            ),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden: injected fault"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => ("Conflict", "the server reported a conflict"),
            410 => ("Expired", "the resource version is too old"),
            415 => (
                "UnsupportedMediaType",
                "the server does not support the request's media type",
            ),
            422 => (
                "Invalid",
                "the server rejected our request due to an error in our request",
            ),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            500 => ("InternalError", "Internal error occurred: injected fault"),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            _ => ("", "injected fault"),
        };
        Status::new(code, reason, message)
    }
    fn not_found(res: &Res, name: &str) -> Status {
        Status::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.group_resource()),
        )
        .details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }
    fn conflict(res: &Res, name: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.group_resource()
            ),
        )
        .details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }
    fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }
    fn invalid(res: &Res, name: &str, causes: Vec<(String, String)>) -> Status {
        let texts: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let joined = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        Status::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", res.group_kind()),
        )
        .details(json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}))
    }
}

/// What the request targets.
struct Target {
    res: &'static Res,
    version: String,
    /// None = all namespaces.
    ns: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn serve(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Dropped> {
    let write = !matches!(req.method().as_str(), "GET" | "HEAD");
    let (latency, drop, fail) = {
        let mut f = shared.faults();
        let drop = if f.drop > 0 {
            f.drop -= 1;
            true
        } else {
            false
        };
        let mut fail = None;
        if !drop
            && let Some((n, code, writes_only)) = f.fail
            && (!writes_only || write)
        {
            fail = Some(code);
            f.fail = if n > 1 {
                Some((n - 1, code, writes_only))
            } else {
                None
            };
        }
        if fail.is_none()
            && !drop
            && f.unready_until
                .is_some_and(|t| std::time::Instant::now() < t)
        {
            fail = Some(503);
        }
        (f.latency, drop, fail)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if drop {
        if write {
            record_fault(&shared, req, 0).await;
        }
        return Err(Dropped);
    }
    if let Some(code) = fail {
        if write {
            record_fault(&shared, req, code).await;
        }
        let mut r = respond(code, &Status::injected(code).body());
        if matches!(code, 429 | 503) {
            // What the real server sends with these (priority and fairness, not-ready).
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        return Ok(r);
    }
    // Per-object write faults, looked up by the name in the path.
    let (stall, late, detached) = if write {
        let segs: Vec<&str> = req.uri().path().split('/').skip(1).collect();
        let name = parse_target(&segs).and_then(|t| t.name);
        let f = shared.faults();
        name.map_or((None, None, None), |n| {
            (
                f.stall_writes.get(&n).copied(),
                f.answer_writes_late.get(&n).copied(),
                f.stall_writes_detached.get(&n).copied(),
            )
        })
    } else {
        (None, None, None)
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    let answer = if let Some(d) = detached {
        // Handled on its own task: a client that gives up does not cancel it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let answer = match route(&shared, req).await {
                Ok(r) => r,
                Err(s) => respond(s.code, &s.body()),
            };
            let _ = tx.send(answer);
        });
        rx.await.map_err(|_| Dropped)?
    } else {
        match route(&shared, req).await {
            Ok(r) => r,
            Err(s) => respond(s.code, &s.body()),
        }
    };
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    Ok(answer)
}

/// Records a write answered by fault injection (`status` 0: dropped without an answer).
async fn record_fault(shared: &Shared, req: Request<hyper::body::Incoming>, status: u16) {
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let target = parse_target(&segs);
    let verb = match (
        req.method().as_str(),
        target.as_ref().is_some_and(|t| t.name.is_some()),
    ) {
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    };
    let body = axum::body::to_bytes(Body::new(req.into_body()), MAX_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let name = target
        .as_ref()
        .and_then(|t| t.name.clone())
        .unwrap_or_else(|| {
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_default()
        });
    let mut st = shared.lock();
    let identity = match token {
        Some(t) => st.tokens.get(&t).map(|i| i.user.clone()),
        None => st.anonymous.as_ref().map(|i| i.user.clone()),
    }
    .unwrap_or_else(|| "system:anonymous".to_string());
    st.writes.push(WriteRecord {
        time: SystemTime::now(),
        identity,
        verb: verb.to_string(),
        content_type,
        kind: target
            .as_ref()
            .map(|t| t.res.kind.to_string())
            .unwrap_or_default(),
        namespace: target
            .as_ref()
            .and_then(|t| t.ns.clone())
            .unwrap_or_default(),
        name,
        resource_version: None,
        status,
        body,
    });
}

fn query_pairs(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Status> {
    // Authentication first, like the real server (even discovery needs a valid token here).
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let identity = {
        let st = shared.lock();
        match token {
            Some(t) => st.tokens.get(&t).cloned(),
            // kubectl (client-go) sends credentials to https servers only; a request without
            // any is what the old insecure port saw (see Emulator::set_anonymous).
            None => st.anonymous.clone(),
        }
    };
    let Some(identity) = identity else {
        return Err(Status::new(401, "Unauthorized", "Unauthorized"));
    };
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let q = query_pairs(&req);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match segs.as_slice() {
        ["version"] => {
            return Ok(respond(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                "gitCommit": "emulator", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            ));
        }
        ["api"] => {
            return Ok(respond(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]}),
            ));
        }
        ["apis"] => return Ok(respond(200, &resources::api_group_list())),
        ["api", "v1"] => {
            return resources::api_resource_list("", "v1")
                .map(|l| respond(200, &l))
                .ok_or_else(|| {
                    Status::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["apis", g, v] => {
            return resources::api_resource_list(g, v)
                .map(|l| respond(200, &l))
                .ok_or_else(|| {
                    Status::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["openapi", "v2"] => {
            let mut r = Response::new(Body::from(resources::openapi_v2_protobuf()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return Ok(r);
        }
        _ => {}
    }
    let target = parse_target(&segs).ok_or_else(|| {
        Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    })?;
    if target.subresource.is_some() {
        return Err(Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let watch = matches!(param("watch").as_deref(), Some("true" | "1"));
    let method = req.method().as_str().to_string();
    let verb = match (method.as_str(), target.name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(Status::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    let res = target.res;
    if !identity
        .rules
        .iter()
        .any(|r| r.allows(verb, res.group, res.plural, target.ns.as_deref()))
    {
        let what = match (&target.name, verb) {
            (Some(n), _) => format!("{} \"{n}\"", res.group_resource()),
            (None, _) => res.group_resource(),
        };
        let scope = match &target.ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        return Err(Status::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"{}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
                identity.user, res.plural, res.group
            ),
        )
        .details(json!({"name": target.name.clone().unwrap_or_default(), "group": res.group, "kind": res.plural})));
    }
    if matches!(verb, "get" | "list" | "watch") {
        shared.lock().reads.push(super::ReadRecord {
            time: std::time::SystemTime::now(),
            verb: verb.to_string(),
            kind: res.kind.to_string(),
            namespace: target.ns.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
        });
    }
    match verb {
        "watch" => return Ok(start_watch(shared, &target, &q)),
        "get" => return get(shared, &target).map(|v| respond(200, &v)),
        "list" => return list(shared, &target, &q).map(|v| respond(200, &v)),
        "deletecollection" => {
            return Err(Status::new(
                405,
                "MethodNotAllowed",
                "deletecollection is not emulated",
            ));
        }
        _ => {}
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
    let bytes = axum::body::to_bytes(Body::new(req.into_body()), MAX_BODY)
        .await
        .map_err(|e| Status::bad_request(format!("reading the request body: {e}")))?;
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let ns = target.ns.clone().unwrap_or_default();
    let result = match verb {
        "create" => create(shared, &target, &ns, &body),
        "update" => update(shared, &target, &ns, &body),
        "patch" => patch(
            shared,
            &target,
            &ns,
            content_type.as_deref(),
            &body,
            param("fieldManager"),
        ),
        _ => delete(shared, &target, &ns),
    };
    let mut st = shared.lock();
    let (status, rv, name) = match &result {
        Ok((code, v)) => (
            *code,
            v["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
            v["metadata"]["name"].as_str().unwrap_or("").to_string(),
        ),
        Err(s) => (s.code, None, target.name.clone().unwrap_or_default()),
    };
    let name = if name.is_empty() {
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
            .unwrap_or_default()
    } else {
        name
    };
    st.writes.push(WriteRecord {
        time: SystemTime::now(),
        identity: identity.user.clone(),
        verb: verb.to_string(),
        content_type,
        kind: res.kind.to_string(),
        namespace: ns,
        name,
        resource_version: rv,
        status,
        body,
    });
    drop(st);
    match result {
        Ok((code, v)) => Ok(respond(code, &v)),
        Err(s) => Err(s),
    }
}

fn parse_target(segs: &[&str]) -> Option<Target> {
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
    if ns.is_none() && name.is_some() {
        return None; // every served type is namespaced
    }
    Some(Target {
        res,
        version: version.to_string(),
        ns,
        name,
        subresource: sub,
    })
}

fn key_of(t: &Target, ns: &str, name: &str) -> Key {
    (
        t.res.group.into(),
        t.res.plural.into(),
        ns.into(),
        name.into(),
    )
}

/// The object as served in `version`.
fn served(res: &Res, version: &str, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(res.api_version(version));
    obj["kind"] = json!(res.kind);
    obj
}

fn now() -> String {
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
    let m = &mut obj["metadata"];
    m["namespace"] = json!(ns);
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

fn get(shared: &Arc<Shared>, t: &Target) -> Result<Value, Status> {
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
fn carry_server_fields(old: &Value, new: &mut Value, res: &Res) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for f in ["uid", "creationTimestamp", "namespace", "name"] {
        new["metadata"][f] = old["metadata"][f].clone();
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

struct Selector {
    labels: Vec<(String, Option<String>, bool)>, // (key, value, equal) ; value None = exists
    fields: Vec<(String, String, bool)>,
}

fn parse_selectors(q: &[(String, String)]) -> Result<Selector, Status> {
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
    fn matches(&self, obj: &Value) -> bool {
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

fn in_scope(t: &Target, key: &Key) -> bool {
    key.0 == t.res.group && key.1 == t.res.plural && t.ns.as_deref().is_none_or(|ns| key.2 == ns)
}

fn list(shared: &Arc<Shared>, t: &Target, q: &[(String, String)]) -> Result<Value, Status> {
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

fn parse_body(body: &str) -> Result<Value, Status> {
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
fn check_type(t: &Target, obj: &Value) -> Result<(), Status> {
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
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn validate(t: &Target, obj: &Value, name: &str) -> Result<(), Status> {
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

fn create(shared: &Arc<Shared>, t: &Target, ns: &str, body: &str) -> Result<(u16, Value), Status> {
    let mut obj = parse_body(body)?;
    check_type(t, &obj)?;
    if let Some(bns) = obj["metadata"]["namespace"].as_str()
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
    obj["metadata"]["namespace"] = json!(ns);
    if t.res.custom {
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
fn store_update(
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
    if t.res.custom {
        istio::prune(&mut new);
    }
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

fn update(shared: &Arc<Shared>, t: &Target, ns: &str, body: &str) -> Result<(u16, Value), Status> {
    let obj = parse_body(body)?;
    check_type(t, &obj)?;
    let name = t.name.clone().unwrap_or_default();
    let bname = obj["metadata"]["name"].as_str().unwrap_or("");
    if bname != name {
        return Err(Status::bad_request(format!(
            "the name of the object ({bname}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(bns) = obj["metadata"]["namespace"].as_str()
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
fn deep_merge(base: &mut Value, over: &Value) {
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

fn patch(
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

fn delete(shared: &Arc<Shared>, t: &Target, ns: &str) -> Result<(u16, Value), Status> {
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, ns, &name);
    let mut st = shared.lock();
    if !st.objects.contains_key(&key) {
        return Err(Status::not_found(t.res, &name));
    }
    let gone = shared.commit(&mut st, key, None);
    // Custom resources, leases and events are stored without ReturnDeletedObject: an
    // immediate delete answers a Success Status naming the object.
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": t.res.group, "kind": t.res.plural,
                        "uid": gone["metadata"]["uid"]}}),
    ))
}

/// A response body fed from a channel (one chunk per watch event).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn watch_line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn start_watch(shared: &Arc<Shared>, t: &Target, q: &[(String, String)]) -> Response<Body> {
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut r = Response::new(Body::new(ChannelBody(rx)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let sel = match parse_selectors(q) {
        Ok(s) => s,
        Err(s) => return respond(s.code, &s.body()),
    };
    let bookmarks = matches!(param("allowWatchBookmarks").as_deref(), Some("true" | "1"));
    let initial = matches!(param("sendInitialEvents").as_deref(), Some("true" | "1"));
    let timeout = param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(1800);
    let rv: Option<u64> = param("resourceVersion")
        .filter(|s| !s.is_empty() && s != "0")
        .and_then(|s| s.parse().ok());
    let res = t.res;
    let version = t.version.clone();
    let ns = t.ns.clone();
    let scope = Target {
        res,
        version: version.clone(),
        ns,
        name: None,
        subresource: None,
    };
    // Under the lock: the backlog and the subscription start at the same point.
    let mut first: Vec<Bytes> = Vec::new();
    let mut rx_events;
    let current_rv;
    {
        let st = shared.lock();
        rx_events = shared.events_tx.subscribe();
        current_rv = st.rv;
        match rv {
            Some(from) if !initial => {
                if from < st.compacted {
                    let status = Status::new(
                        410,
                        "Expired",
                        format!("too old resource version: {from} ({})", st.compacted + 1),
                    );
                    first.push(watch_line("ERROR", status.body()));
                } else {
                    for ev in st.history.iter().filter(|e| e.rv > from) {
                        if in_scope(&scope, &ev.key) && sel.matches(&ev.object) {
                            first.push(watch_line(
                                ev.kind,
                                served(res, &version, ev.object.clone()),
                            ));
                        }
                    }
                }
            }
            _ => {
                // No resourceVersion (or "0", or sendInitialEvents): synthetic ADDED for the
                // current state, then live events.
                for (k, v) in &st.objects {
                    if in_scope(&scope, k) && sel.matches(v) {
                        first.push(watch_line("ADDED", served(res, &version, v.clone())));
                    }
                }
                if initial && bookmarks {
                    first.push(watch_line(
                        "BOOKMARK",
                        json!({"kind": res.kind, "apiVersion": res.api_version(&version),
                            "metadata": {"resourceVersion": st.rv.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"}}}),
                    ));
                }
            }
        }
    }
    let gone = first.iter().any(|b| b.starts_with(b"{\"type\":\"ERROR\""));
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let mut last_rv = current_rv;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": res.kind, "apiVersion": res.api_version(&version),
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(watch_line("BOOKMARK", bm)).await.is_err() { return; }
                }
                ev = rx_events.recv() => match ev {
                    Ok(ev) => {
                        let ev: Arc<Event> = ev;
                        last_rv = ev.rv;
                        if in_scope(&scope, &ev.key) && sel.matches(&ev.object) {
                            let line = watch_line(ev.kind, served(res, &version, ev.object.clone()));
                            if tx.send(line).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let s = Status::new(410, "Expired", "too old resource version: watch fell behind");
                        let _ = tx.send(watch_line("ERROR", s.body())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    r
}
