//! The HTTP side: connections, faults, authentication, routing and the REST verbs.

mod mesh_kinds;
mod objects;
pub mod reviews;
mod watch;

use objects::*;
pub(crate) use objects::{competing_write, init_metadata};
use watch::*;

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::resources::{self, Res};
use super::{Shared, WriteRecord};

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
    if reviews::is_review(&segs) {
        return reviews::serve(shared, &identity, &segs, req).await;
    }
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
