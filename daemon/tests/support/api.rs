//! The override API's test fixture: the in-process daemon on the demo playbook with three
//! tokens (operator, viewer, admin), its answers checked against the OpenAPI document, and
//! the state a refusal must leave alone. Shared by `tests/api_*.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::audit::AuditLog;
use failoverd::auth::{Tokens, hash_token};
use failoverd::playbook::Playbook;
use failoverd::routing::FileStore;
use failoverd::shared::Shared;
use failoverd::standin::StandIn;
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const OPERATOR: (&str, &str) = ("alice@oncall", "operator-token-alice");
pub const VIEWER: (&str, &str) = ("bob@readonly", "viewer-token-bob");
pub const ADMIN: (&str, &str) = ("root@platform", "admin-token-root");
pub const DR_HOST: &str = "web.demo-dr.svc.cluster.local";
pub const PRIMARY_HOST: &str = "web.demo.svc.cluster.local";

/// The mutating endpoints as (method, path) for playbook `demo`.
pub const MUTATING: [(&str, &str); 5] = [
    ("POST", "/v1/playbooks/demo/failover"),
    ("POST", "/v1/playbooks/demo/failback"),
    ("POST", "/v1/playbooks/demo/freeze"),
    ("POST", "/v1/playbooks/demo/resume"),
    ("DELETE", "/v1/overrides/ov-00000000"),
];

/// The authenticated read endpoints.
pub const READS: [&str; 4] = [
    "/v1/playbooks",
    "/v1/playbooks/demo",
    "/v1/overrides",
    "/v1/audit",
];

/// Stand-ins, temporary directory (store, audit, state, tokens) and the playbook: what
/// outlives one daemon run.
pub struct Fixture {
    pub dir: TempDir,
    pub primary: StandIn,
    pub dr: StandIn,
    pub pb: Playbook,
    pub vs_path: PathBuf,
    pub original_vs: String,
}

impl Fixture {
    pub async fn new() -> Self {
        let super::Demo {
            dir,
            primary,
            dr,
            pb,
            vs_path,
            ..
        } = super::Demo::new().await;
        let original_vs = failoverd::demo::VIRTUAL_SERVICE.to_string();
        let tokens: String = [(OPERATOR, "operator"), (VIEWER, "viewer"), (ADMIN, "admin")]
            .iter()
            .map(|((id, tok), role)| {
                format!(
                    "- {{ identity: \"{id}\", role: {role}, sha256: \"{}\" }}\n",
                    hash_token(tok)
                )
            })
            .collect();
        std::fs::write(dir.path().join("tokens.yaml"), tokens).unwrap();
        Self {
            dir,
            primary,
            dr,
            pb,
            vs_path,
            original_vs,
        }
    }

    pub fn vs(&self) -> String {
        std::fs::read_to_string(&self.vs_path).unwrap()
    }

    /// Host of the `primary` route's (single, or first) destination.
    pub fn routed_host(&self) -> String {
        let vs: Value = serde_saphyr::from_str(&self.vs()).unwrap();
        let route = vs["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "primary")
            .unwrap()
            .clone();
        let dests = route["route"].as_array().unwrap();
        assert_eq!(dests.len(), 1, "expected one destination: {route}");
        dests[0]["destination"]["host"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The API's state on this fixture without a running controller (its inbox is dropped):
    /// for tests that call the router directly.
    pub fn api_state(&self) -> (Arc<Shared>, failoverd::api::ApiState) {
        let shared = Arc::new(Shared::new(&super::loaded(&self.pb)));
        let audit_path = self.dir.path().join("audit.jsonl");
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let api = failoverd::api::ApiState::new(
            shared.clone(),
            Arc::new(Tokens::load(&self.dir.path().join("tokens.yaml")).unwrap()),
            tx,
            Arc::new(FileStore::new(self.dir.path().join("routes"))),
            Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
            audit_path,
        );
        (shared, api)
    }

    /// Starts the daemon (with the token file, or without any) and waits until it is ready.
    pub async fn start(&self, with_tokens: bool) -> Daemon {
        let loaded = super::loaded(&self.pb);
        let shared = Arc::new(Shared::new(&loaded));
        let (rt, audit_path) = super::runtime(
            loaded,
            Arc::new(FileStore::new(self.dir.path().join("routes"))),
            self.dir.path(),
        );
        let tokens = if with_tokens {
            Tokens::load(&self.dir.path().join("tokens.yaml")).unwrap()
        } else {
            Tokens::none()
        };
        let super::Served { addr, stop, task } =
            super::serve_ready(rt, &shared, tokens, audit_path, Duration::from_secs(10)).await;
        Daemon {
            addr,
            stop,
            task,
            client: reqwest::Client::builder()
                // A correct daemon answers every call here in milliseconds (a local file
                // write); this bounds a hung call instead of waiting for the API's 30 s.
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            doc: serde_json::from_str(&failoverd::api::openapi_json()).unwrap(),
        }
    }
}

/// One answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts the status and a JSON error body `{ error: <non-empty string>, detail }`.
    pub fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        let e = self.body["error"].as_str();
        assert!(
            e.is_some_and(|e| !e.is_empty()),
            "{what}: no `error` string: {self:?}"
        );
        assert!(
            self.body.as_object().unwrap().contains_key("detail"),
            "{what}: no `detail`: {self:?}"
        );
    }

    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
    }
}

/// What a request carries.
pub enum Payload {
    None,
    Json(Value),
    Raw(String),
}

/// A running in-process daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub client: reqwest::Client,
    pub doc: Value,
}

impl Daemon {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        payload: Payload,
    ) -> Resp {
        let method: Method = method.parse().unwrap();
        let mut req = self
            .client
            .request(method.clone(), format!("http://{}{path}", self.addr));
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req = match payload {
            Payload::None => req,
            Payload::Json(v) => req.json(&v),
            Payload::Raw(s) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(s),
        };
        let resp = req.send().await.unwrap_or_else(|e| {
            let why = if e.is_timeout() {
                "no answer within 10 s"
            } else {
                "no answer"
            };
            panic!("{method} {path}: {why}: {e:?}")
        });
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        check_against_doc(&self.doc, &method, path, status, &body);
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(&format!("Bearer {token}")), Payload::None)
            .await
    }

    pub async fn send(&self, method: &str, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            method,
            path,
            Some(&format!("Bearer {token}")),
            Payload::Json(body),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, OPERATOR.1, body).await
    }

    pub async fn overrides(&self) -> Value {
        let r = self.get("/v1/overrides", VIEWER.1).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["overrides"].clone()
    }

    pub async fn phase(&self) -> Value {
        let r = self.get("/v1/playbooks", VIEWER.1).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["playbooks"][0]["phase"].clone()
    }

    pub async fn audit(&self, actor: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/audit?actor={actor}&limit=10000"), VIEWER.1)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["records"].as_array().unwrap().clone()
    }

    pub async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("daemon did not stop")
            .unwrap()
            .unwrap();
    }
}

/// The state a refusal must leave alone.
pub struct Unchanged {
    pub vs: String,
    pub overrides: Value,
}

impl Unchanged {
    pub async fn take(f: &Fixture, d: &Daemon) -> Self {
        Self {
            vs: f.vs(),
            overrides: d.overrides().await,
        }
    }

    pub async fn check(&self, f: &Fixture, d: &Daemon, what: &str) {
        assert!(f.vs() == self.vs, "{what}: the VirtualService changed");
        assert_eq!(
            d.overrides().await,
            self.overrides,
            "{what}: the overrides changed"
        );
    }
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Checking answers against the OpenAPI document.

/// The documented operation for a concrete path, if any.
pub fn operation<'a>(doc: &'a Value, method: &Method, path: &str) -> Option<&'a Value> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.iter().find_map(|(tpl, item)| {
        let t: Vec<&str> = tpl.split('/').collect();
        let fits = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')));
        fits.then(|| item.get(method.as_str().to_ascii_lowercase()))
            .flatten()
    })
}

pub fn check_against_doc(doc: &Value, method: &Method, path: &str, status: u16, body: &Value) {
    let Some(op) = operation(doc, method, path) else {
        return;
    };
    let Some(resp) = op["responses"].get(status.to_string()) else {
        panic!("{method} {path} answered {status}, which the OpenAPI document does not list");
    };
    if let Some(schema) = resp["content"]["application/json"].get("schema")
        && let Err(e) = fits(doc, schema, body, "$")
    {
        panic!("{method} {path} {status}: body does not fit the documented schema: {e}\n{body:#}");
    }
}

/// Checks a JSON value against the subset of JSON Schema utoipa emits. Objects may not carry
/// properties the schema does not list (so a drifted mirror type shows).
pub fn fits(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        let s = &doc["components"]["schemas"][name];
        if s.is_null() {
            return Err(format!("{at}: dangling $ref {r}"));
        }
        return fits(doc, s, v, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            let errs: Vec<String> = alts
                .iter()
                .filter_map(|s| fits(doc, s, v, at).err())
                .collect();
            if errs.len() == alts.len() {
                return Err(format!("{at}: fits no alternative: {}", errs.join(" | ")));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            fits(doc, s, v, at)?;
        }
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        return Err(format!("{at}: {v} not in {en:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (
        v.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(req) {
                return Err(format!("{at}: required `{req}` missing"));
            }
        }
        for (k, val) in obj {
            match props.get(k) {
                Some(s) => fits(doc, s, val, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties").is_some() => {}
                None => return Err(format!("{at}: `{k}` is not in the schema")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            fits(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// `GET path` as the viewer, sent to the router directly (no listener): the status and the
/// JSON body.
pub async fn viewer_get(app: &mut axum::Router, path: &str) -> (u16, Value) {
    use tower::Service;
    let req = axum::http::Request::get(path)
        .header("authorization", format!("Bearer {}", VIEWER.1))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.call(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice::<Value>(&bytes).unwrap())
}
