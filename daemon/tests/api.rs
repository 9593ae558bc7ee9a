#![allow(clippy::unwrap_used)]
//! The override API over real HTTP on 127.0.0.1, against the daemon run in-process
//! (`failoverd::cli::serve`) with stand-in primary and DR services, a temporary file store
//! holding the demo VirtualService, and the demo playbook pointed at the stand-ins.
//!
//! Every JSON answer of a documented operation is checked against the OpenAPI document
//! (`failoverd::api::openapi_json`): its status must be documented for that operation and its
//! body must fit the documented schema. Refusals are checked to change nothing: the
//! VirtualService file stays byte-identical and the override list stays the same.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::audit::AuditLog;
use failoverd::auth::{Tokens, hash_token};
use failoverd::overrides::OverrideStore;
use failoverd::playbook::Validate;
use failoverd::playbook::{self, Loaded, Playbook};
use failoverd::routing::FileStore;
use failoverd::runtime::{Runtime, Shared};
use failoverd::standin::StandIn;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const OPERATOR: (&str, &str) = ("alice@oncall", "operator-token-alice");
const VIEWER: (&str, &str) = ("bob@readonly", "viewer-token-bob");
const ADMIN: (&str, &str) = ("root@platform", "admin-token-root");
const DR_HOST: &str = "web.demo-dr.svc.cluster.local";
const PRIMARY_HOST: &str = "web.demo.svc.cluster.local";

/// The mutating endpoints as (method, path) for playbook `demo`.
const MUTATING: [(&str, &str); 5] = [
    ("POST", "/v1/playbooks/demo/failover"),
    ("POST", "/v1/playbooks/demo/failback"),
    ("POST", "/v1/playbooks/demo/freeze"),
    ("POST", "/v1/playbooks/demo/resume"),
    ("DELETE", "/v1/overrides/ov-00000000"),
];
/// The authenticated read endpoints.
const READS: [&str; 4] = [
    "/v1/playbooks",
    "/v1/playbooks/demo",
    "/v1/overrides",
    "/v1/audit",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/examples")
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Stand-ins, temporary directory (store, audit, state, tokens) and the playbook: what
/// outlives one daemon run.
struct Fixture {
    dir: TempDir,
    primary: StandIn,
    dr: StandIn,
    pb: Playbook,
    vs_path: PathBuf,
    original_vs: String,
}

impl Fixture {
    async fn new() -> Self {
        install_crypto();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await.unwrap();
        let dr = StandIn::start("dr", loopback).await.unwrap();
        let text = std::fs::read_to_string(examples().join("demo.yaml"))
            .unwrap()
            .replace("127.0.0.1:18081", &primary.addr().to_string())
            .replace("127.0.0.1:18082", &dr.addr().to_string());
        let pb = playbook::parse("demo.yaml", &text).unwrap();
        assert!(pb.validate("demo.yaml").is_empty());
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("routes"));
        let vs_path = store.path(&pb);
        std::fs::create_dir_all(vs_path.parent().unwrap()).unwrap();
        let original_vs =
            std::fs::read_to_string(examples().join("demo-virtualservice.yaml")).unwrap();
        std::fs::write(&vs_path, &original_vs).unwrap();
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

    fn vs(&self) -> String {
        std::fs::read_to_string(&self.vs_path).unwrap()
    }

    /// Host of the `primary` route's (single, or first) destination.
    fn routed_host(&self) -> String {
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

    /// Starts the daemon (with the token file, or without any) and waits until it is ready.
    async fn start(&self, with_tokens: bool) -> Daemon {
        let loaded = vec![Loaded {
            file: "demo.yaml".into(),
            playbook: self.pb.clone(),
        }];
        let shared = Arc::new(Shared::new(&loaded));
        let audit_path = self.dir.path().join("audit.jsonl");
        let rt = Runtime {
            playbooks: loaded,
            store: Arc::new(FileStore::new(self.dir.path().join("routes"))),
            audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
            overrides: OverrideStore::open(&self.dir.path().join("overrides.json")).unwrap(),
            prometheus: None,
            prometheus_client: None,
        };
        let tokens = if with_tokens {
            Tokens::load(&self.dir.path().join("tokens.yaml")).unwrap()
        } else {
            Tokens::none()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(failoverd::cli::serve(
            rt,
            shared.clone(),
            Arc::new(tokens),
            audit_path,
            listener,
            stop_rx,
        ));
        let d = Daemon {
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
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "daemon never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }
}

/// One answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    /// Asserts the status and a JSON error body `{ error: <non-empty string>, detail }`.
    fn assert_error(&self, status: u16, what: &str) {
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

    fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
    }
}

/// What a request carries.
enum Payload {
    None,
    Json(Value),
    Raw(String),
}

/// A running in-process daemon.
struct Daemon {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
    doc: Value,
}

impl Daemon {
    async fn call(&self, method: &str, path: &str, auth: Option<&str>, payload: Payload) -> Resp {
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

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(&format!("Bearer {token}")), Payload::None)
            .await
    }

    async fn send(&self, method: &str, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            method,
            path,
            Some(&format!("Bearer {token}")),
            Payload::Json(body),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, OPERATOR.1, body).await
    }

    async fn overrides(&self) -> Value {
        let r = self.get("/v1/overrides", VIEWER.1).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["overrides"].clone()
    }

    async fn phase(&self) -> Value {
        let r = self.get("/v1/playbooks", VIEWER.1).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["playbooks"][0]["phase"].clone()
    }

    async fn audit(&self, actor: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/audit?actor={actor}&limit=10000"), VIEWER.1)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["records"].as_array().unwrap().clone()
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("daemon did not stop")
            .unwrap()
            .unwrap();
    }
}

/// The state a refusal must leave alone.
struct Unchanged {
    vs: String,
    overrides: Value,
}

impl Unchanged {
    async fn take(f: &Fixture, d: &Daemon) -> Self {
        Self {
            vs: f.vs(),
            overrides: d.overrides().await,
        }
    }

    async fn check(&self, f: &Fixture, d: &Daemon, what: &str) {
        assert!(f.vs() == self.vs, "{what}: the VirtualService changed");
        assert_eq!(
            d.overrides().await,
            self.overrides,
            "{what}: the overrides changed"
        );
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
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
fn operation<'a>(doc: &'a Value, method: &Method, path: &str) -> Option<&'a Value> {
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

fn check_against_doc(doc: &Value, method: &Method, path: &str, status: u16, body: &Value) {
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
fn fits(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------
// Method, authentication and role.

/// Ensures a wrong method on every endpoint answers 405 with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let cases = [
        ("POST", "/v1/playbooks"),
        ("DELETE", "/v1/playbooks"),
        ("POST", "/v1/playbooks/demo"),
        ("PUT", "/v1/playbooks/demo"),
        ("GET", "/v1/playbooks/demo/failover"),
        ("PUT", "/v1/playbooks/demo/failback"),
        ("GET", "/v1/playbooks/demo/freeze"),
        ("DELETE", "/v1/playbooks/demo/resume"),
        ("POST", "/v1/overrides"),
        ("GET", "/v1/overrides/ov-00000000"),
        ("POST", "/v1/audit"),
        ("POST", "/v1/openapi.json"),
        ("POST", "/healthz"),
    ];
    let before = Unchanged::take(&f, &d).await;
    for (m, p) in cases {
        let r = d
            .call(
                m,
                p,
                Some(&format!("Bearer {}", OPERATOR.1)),
                Payload::Json(json!({ "reason": "x" })),
            )
            .await;
        r.assert_error(405, &format!("{m} {p}"));
    }
    before.check(&f, &d, "wrong methods").await;
    // Unknown paths are JSON 404s.
    d.call("GET", "/v1/nope", None, Payload::None)
        .await
        .assert_error(404, "unknown path");
    d.call(
        "POST",
        "/v1/playbooks/demo/explode",
        Some(&format!("Bearer {}", OPERATOR.1)),
        Payload::Json(json!({ "reason": "x" })),
    )
    .await
    .assert_error(404, "unknown action");
    d.shutdown().await;
}

/// Ensures every protected endpoint answers 401 with `WWW-Authenticate` for a missing,
/// malformed or unknown token, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_token_is_401() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let mut all: Vec<(&str, &str)> = READS.iter().map(|p| ("GET", *p)).collect();
    all.extend(MUTATING);
    for (m, p) in all {
        for auth in [
            None,
            Some("Bearer not-a-token"),
            Some("Bearer "),
            Some(&format!("Basic {}", OPERATOR.1) as &str),
        ] {
            let r = d
                .call(m, p, auth, Payload::Json(json!({ "reason": "INC-1" })))
                .await;
            r.assert_error(401, &format!("{m} {p} with {auth:?}"));
            assert_eq!(
                r.www_authenticate(),
                Some("Bearer realm=\"failoverd\""),
                "{m} {p}: {r:?}"
            );
        }
    }
    before.check(&f, &d, "unauthenticated calls").await;
    d.shutdown().await;
}

/// Ensures a viewer may read but gets 403 on every mutating endpoint, each refusal audited
/// with outcome `refused…`; an admin may do what an operator may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_is_403_on_mutations_and_audited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    for p in READS {
        assert_eq!(d.get(p, VIEWER.1).await.status, 200, "viewer GET {p}");
        assert_eq!(d.get(p, ADMIN.1).await.status, 200, "admin GET {p}");
    }
    let before = Unchanged::take(&f, &d).await;
    for (m, p) in MUTATING {
        d.send(m, p, VIEWER.1, json!({ "reason": "INC-1 viewer tries" }))
            .await
            .assert_error(403, &format!("viewer {m} {p}"));
    }
    before.check(&f, &d, "viewer calls").await;
    let refused: Vec<_> = d
        .audit(VIEWER.0)
        .await
        .into_iter()
        .filter(|r| r["outcome"].as_str().unwrap().starts_with("refused"))
        .collect();
    assert_eq!(refused.len(), MUTATING.len(), "{refused:#?}");
    for (r, action) in refused.iter().zip([
        "override-failover",
        "override-failback",
        "override-freeze",
        "override-resume",
        "override-delete",
    ]) {
        assert_eq!(r["action"], action, "{r:#}");
        assert_eq!(r["inputs"]["status"], 403, "{r:#}");
        assert_eq!(r["reason"], "INC-1 viewer tries", "{r:#}");
    }
    // Admin outranks operator.
    let r = d
        .send(
            "POST",
            "/v1/playbooks/demo/freeze",
            ADMIN.1,
            json!({ "reason": "INC-1 admin freeze", "ttl": "5m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    d.shutdown().await;
}

/// Ensures a daemon started without a token file refuses every `/v1` call (401) while
/// `/healthz`, `/readyz`, `/metrics` and the OpenAPI document answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_token_file_api_is_closed_but_health_open() {
    let f = Fixture::new().await;
    let d = f.start(false).await;
    let vs = f.vs();
    for p in READS {
        for auth in [None, Some(format!("Bearer {}", OPERATOR.1))] {
            let r = d.call("GET", p, auth.as_deref(), Payload::None).await;
            r.assert_error(401, &format!("GET {p} without token file"));
            assert!(r.www_authenticate().is_some());
        }
    }
    for (m, p) in MUTATING {
        let r = d
            .send(m, p, OPERATOR.1, json!({ "reason": "INC-1", "ttl": "5m" }))
            .await;
        r.assert_error(401, &format!("{m} {p} without token file"));
        assert_eq!(r.body["error"], "authentication is not configured");
    }
    assert_eq!(f.vs(), vs);
    for p in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let r = d.call("GET", p, None, Payload::None).await;
        assert_eq!(r.status, 200, "GET {p}: {r:?}");
    }
    let m = d.call("GET", "/metrics", None, Payload::None).await;
    assert!(m.body.as_str().unwrap().contains("# EOF"), "{m:?}");
    d.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Bodies.

/// Sends `cases` (what, body, expected status) to `method path` as the operator and checks
/// each is a JSON error with nothing changed, and each is audited as refused.
async fn refuse_all(
    f: &Fixture,
    d: &Daemon,
    method: &str,
    path: &str,
    cases: &[(&str, Payload, u16)],
) {
    let before = Unchanged::take(f, d).await;
    let audited_before = d.audit(OPERATOR.0).await.len();
    for (what, payload, status) in cases {
        let payload = match payload {
            Payload::None => Payload::None,
            Payload::Json(v) => Payload::Json(v.clone()),
            Payload::Raw(s) => Payload::Raw(s.clone()),
        };
        let r = d
            .call(
                method,
                path,
                Some(&format!("Bearer {}", OPERATOR.1)),
                payload,
            )
            .await;
        r.assert_error(*status, &format!("{method} {path}: {what}"));
        before
            .check(f, d, &format!("{method} {path}: {what}"))
            .await;
    }
    let records = d.audit(OPERATOR.0).await;
    let new = &records[audited_before..];
    assert_eq!(
        new.len(),
        cases.len(),
        "one audit record per refusal: {new:#?}"
    );
    for (r, (what, _, status)) in new.iter().zip(cases) {
        assert!(
            r["outcome"].as_str().unwrap().starts_with("refused"),
            "{what}: {r:#}"
        );
        // Refusals by the API carry the status; the controller's (409) carry the request.
        if *status != 409 {
            assert_eq!(r["inputs"]["status"], *status, "{what}: {r:#}");
        }
        assert!(
            r["reason"].as_str().unwrap().chars().count() <= failoverd::api::MAX_REASON,
            "{what}: audited reason not bounded"
        );
    }
}

/// The body refusals every mutating endpoint shares.
fn common_bad_bodies() -> Vec<(&'static str, Payload, u16)> {
    vec![
        ("malformed JSON", Payload::Raw("{\"reason\": ".into()), 400),
        ("not JSON at all", Payload::Raw("reason=INC-1".into()), 400),
        ("empty body", Payload::None, 400),
        (
            "unknown field",
            Payload::Json(json!({ "reason": "INC-1", "because": "x" })),
            422,
        ),
        ("missing reason", Payload::Json(json!({})), 422),
        (
            "reason not a string",
            Payload::Json(json!({ "reason": 5 })),
            422,
        ),
        ("empty reason", Payload::Json(json!({ "reason": "" })), 422),
        (
            "blank reason",
            Payload::Json(json!({ "reason": "   " })),
            422,
        ),
        (
            "too long reason",
            Payload::Json(json!({ "reason": "r".repeat(failoverd::api::MAX_REASON + 1) })),
            422,
        ),
        (
            "oversized body",
            Payload::Json(json!({ "reason": "r".repeat(failoverd::api::MAX_BODY + 1) })),
            413,
        ),
    ]
}

fn bad_ttls() -> Vec<(&'static str, Payload, u16)> {
    ["0s", "8d", "soon"]
        .into_iter()
        .map(|t| {
            (
                t,
                Payload::Json(json!({ "reason": "INC-1", "ttl": t })),
                422,
            )
        })
        .collect()
}

/// Ensures failover refuses bad bodies (400/413/422), bad ttls and targets (422) and an
/// unknown playbook (404), changing nothing and auditing each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.extend(bad_ttls());
    for (what, t) in [
        ("target primary", json!("primary")),
        ("target garbage", json!("failover[x]")),
        ("negative target", json!(-1)),
        ("boolean target", json!(true)),
    ] {
        cases.push((
            what,
            Payload::Json(json!({ "reason": "INC-1", "target": t })),
            422,
        ));
    }
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/failover", &cases).await;
    refuse_all(
        &f,
        &d,
        "POST",
        "/v1/playbooks/nope/failover",
        &[(
            "unknown playbook",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    d.shutdown().await;
}

/// Ensures failback refuses bad bodies, a ttl or target (422) and an unknown playbook (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.push((
        "ttl on failback",
        Payload::Json(json!({ "reason": "INC-1", "ttl": "1h" })),
        422,
    ));
    cases.push((
        "target on failback",
        Payload::Json(json!({ "reason": "INC-1", "target": "failover[0]" })),
        422,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/failback", &cases).await;
    refuse_all(
        &f,
        &d,
        "POST",
        "/v1/playbooks/nope/failback",
        &[(
            "unknown playbook",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    d.shutdown().await;
}

/// Ensures freeze refuses bad bodies, bad ttls, a target or force (422) and an unknown
/// playbook (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.extend(bad_ttls());
    cases.push((
        "target on freeze",
        Payload::Json(json!({ "reason": "INC-1", "target": "failover[0]" })),
        422,
    ));
    cases.push((
        "force on freeze",
        Payload::Json(json!({ "reason": "INC-1", "force": true })),
        422,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/freeze", &cases).await;
    refuse_all(
        &f,
        &d,
        "POST",
        "/v1/playbooks/nope/freeze",
        &[(
            "unknown playbook",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    d.shutdown().await;
}

/// Ensures resume refuses bad bodies, any ttl/target/force (422), an unknown playbook (404),
/// and with nothing to release answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    for (what, b) in [
        ("ttl on resume", json!({ "reason": "INC-1", "ttl": "1h" })),
        (
            "target on resume",
            json!({ "reason": "INC-1", "target": 0 }),
        ),
        (
            "force on resume",
            json!({ "reason": "INC-1", "force": true }),
        ),
    ] {
        cases.push((what, Payload::Json(b), 422));
    }
    cases.push((
        "nothing to release",
        Payload::Json(json!({ "reason": "INC-1" })),
        409,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/resume", &cases).await;
    refuse_all(
        &f,
        &d,
        "POST",
        "/v1/playbooks/nope/resume",
        &[(
            "unknown playbook",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    d.shutdown().await;
}

/// Ensures deleting an override refuses bad bodies, any ttl/target/force (422) and an
/// unknown id (404), changing nothing and auditing each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_override_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "INC-1 freeze to delete later", "ttl": "10m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    let mut cases = common_bad_bodies();
    for (what, b) in [
        ("ttl on delete", json!({ "reason": "INC-1", "ttl": "1h" })),
        (
            "target on delete",
            json!({ "reason": "INC-1", "target": "failover[0]" }),
        ),
        (
            "force on delete",
            json!({ "reason": "INC-1", "force": true }),
        ),
    ] {
        cases.push((what, Payload::Json(b), 422));
    }
    refuse_all(&f, &d, "DELETE", &format!("/v1/overrides/{id}"), &cases).await;
    refuse_all(
        &f,
        &d,
        "DELETE",
        "/v1/overrides/ov-does-not-exist",
        &[(
            "unknown id",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    assert_eq!(d.overrides().await.as_array().unwrap().len(), 1);
    d.shutdown().await;
}

/// Ensures GET of an unknown playbook is 404 and bad audit queries are 400, as JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_refuse_unknown_names_and_bad_queries() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    d.get("/v1/playbooks/nope", VIEWER.1)
        .await
        .assert_error(404, "unknown playbook");
    for q in ["since=yesterday", "limit=-1", "color=blue"] {
        d.get(&format!("/v1/audit?{q}"), VIEWER.1)
            .await
            .assert_error(400, q);
    }
    let r = d.get("/v1/playbooks/demo", VIEWER.1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["virtualService"], "demo/web");
    assert_eq!(r.body["store"]["routing"]["to"], "primary");
    d.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Happy paths and rules.

/// Ensures an operator failover routes to the DR host, is listed as an override, holds while
/// the primary is healthy, and a failback restores the original route exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_holds_then_failback_restores_original() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    assert_eq!(f.routed_host(), PRIMARY_HOST);
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-7 move traffic off eu-west", "ttl": "10m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["routing"]["to"], "failover", "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    assert_eq!(f.routed_host(), DR_HOST);
    let ov = d.overrides().await;
    assert_eq!(ov.as_array().unwrap().len(), 1, "{ov:#}");
    assert_eq!(ov[0]["id"], id.as_str());
    assert_eq!(ov[0]["kind"], "failover");
    assert_eq!(ov[0]["actor"], OPERATOR.0);
    assert_eq!(ov[0]["target"], 0);
    // The primary is healthy all along; the hold keeps traffic on DR.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.routed_host(), DR_HOST);
    assert_eq!(d.phase().await, "failedOver");
    let detail = d.get("/v1/playbooks/demo", VIEWER.1).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.body["store"]["routing"]["to"], "failover");
    assert_eq!(
        detail.body["status"]["transitions"][0]["kind"],
        "operatorFailover"
    );

    let r = d
        .post(
            "/v1/playbooks/demo/failback",
            json!({ "reason": "INC-7 resolved" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let now: Value = serde_saphyr::from_str(&f.vs()).unwrap();
    let original: Value = serde_saphyr::from_str(&f.original_vs).unwrap();
    assert_eq!(now, original, "failback did not restore the original route");
    assert_eq!(d.overrides().await, json!([]), "failback releases the hold");
    // Failback again: already on the primary.
    let before = Unchanged::take(&f, &d).await;
    d.post(
        "/v1/playbooks/demo/failback",
        json!({ "reason": "INC-7 again" }),
    )
    .await
    .assert_error(409, "failback on primary");
    before.check(&f, &d, "failback on primary").await;
    let writes: Vec<_> = d
        .audit(OPERATOR.0)
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "written")
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(writes, ["operator-failover", "operator-failback"]);
    d.shutdown().await;
}

/// Ensures a frozen playbook shows phase `frozen` and does not fail over when the primary
/// goes down, and fails over automatically once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_blocks_automatic_failover_until_resume() {
    let mut f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-42 maintenance", "ttl": "30m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["written"], false);
    assert!(r.body["overrideId"].as_str().unwrap().starts_with("ov-"));
    wait_until("phase frozen", Duration::from_secs(3), || async {
        d.phase().await == "frozen"
    })
    .await;
    let vs = f.vs();
    f.primary.stop();
    // 1 s probes x threshold 3: unfrozen, this would have failed over by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(f.vs() == vs, "a frozen playbook moved traffic");
    assert_eq!(d.phase().await, "frozen");
    let r = d
        .post(
            "/v1/playbooks/demo/resume",
            json!({ "reason": "CHG-42 done" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.overrides().await, json!([]));
    wait_until("automatic failover", Duration::from_secs(10), || async {
        f.routed_host() == DR_HOST
    })
    .await;
    let auto = d.audit("engine").await;
    assert!(
        auto.iter()
            .any(|r| r["action"] == "failover" && r["outcome"] == "written"),
        "{auto:#?}"
    );
    d.shutdown().await;
}

/// Ensures DELETE /v1/overrides/{id} removes a freeze and automation is back in control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_override_removes_it() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-43", "ttl": "1h" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    assert_eq!(d.overrides().await[0]["id"], id.as_str());
    let r = d
        .send(
            "DELETE",
            &format!("/v1/overrides/{id}"),
            OPERATOR.1,
            json!({ "reason": "CHG-43 cancelled" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.overrides().await, json!([]));
    wait_until("phase normal", Duration::from_secs(3), || async {
        d.phase().await == "normal"
    })
    .await;
    let del: Vec<_> = d
        .audit(OPERATOR.0)
        .await
        .into_iter()
        .filter(|r| r["action"] == "override-delete")
        .collect();
    assert_eq!(del.len(), 1, "{del:#?}");
    assert_eq!(del[0]["outcome"], "accepted");
    assert_eq!(del[0]["reason"], "CHG-43 cancelled");
    d.shutdown().await;
}

/// Ensures a failover to a target that does not exist is refused with 409 and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_missing_target_is_409() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-8", "target": "failover[5]" }),
        )
        .await;
    r.assert_error(409, "failover[5]");
    assert!(
        r.body["error"].as_str().unwrap().contains("does not exist"),
        "{r:?}"
    );
    before.check(&f, &d, "failover[5]").await;
    let audit = d.audit(OPERATOR.0).await;
    assert!(
        audit.iter().any(|r| r["action"] == "override-failover"
            && r["outcome"].as_str().unwrap().starts_with("refused")),
        "{audit:#?}"
    );
    d.shutdown().await;
}

/// Ensures a failover to a down target is refused (409) without force and done with force,
/// the write's audit record saying `forced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_down_target_needs_force() {
    let mut f = Fixture::new().await;
    let d = f.start(true).await;
    f.dr.stop();
    wait_until("DR seen unhealthy", Duration::from_secs(10), || async {
        let r = d.get("/v1/playbooks/demo", VIEWER.1).await;
        r.body["status"]["signals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["signal"] == "dr-health"
                    && s["health"]["state"] == "unhealthy"
                    && s["streak"].as_u64().unwrap() >= 3
            })
    })
    .await;
    let before = Unchanged::take(&f, &d).await;
    for body in [
        json!({ "reason": "INC-9" }),
        json!({ "reason": "INC-9", "target": "failover[0]" }),
        json!({ "reason": "INC-9", "target": 0 }),
    ] {
        d.post("/v1/playbooks/demo/failover", body.clone())
            .await
            .assert_error(409, &format!("down target: {body}"));
        before.check(&f, &d, "down target").await;
    }
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-9 DR is fine, its probe is not", "target": "failover[0]", "force": true }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(f.routed_host(), DR_HOST);
    let audit = d.audit(OPERATOR.0).await;
    let write = audit
        .iter()
        .find(|r| r["action"] == "operator-failover" && r["outcome"] == "written")
        .unwrap_or_else(|| panic!("no written operator-failover: {audit:#?}"));
    assert_eq!(write["inputs"]["forced"], true, "{write:#}");
    assert_eq!(d.overrides().await[0]["force"], true);
    d.shutdown().await;
}

/// Ensures a freeze survives a daemon restart on the same state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_restart() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-44 across a restart", "ttl": "2h" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    let before = d.overrides().await;
    d.shutdown().await;
    let d = f.start(true).await;
    let after = d.overrides().await;
    assert_eq!(after, before);
    assert_eq!(after[0]["id"], id.as_str());
    wait_until(
        "phase frozen after restart",
        Duration::from_secs(3),
        || async { d.phase().await == "frozen" },
    )
    .await;
    d.shutdown().await;
}

/// Ensures more than 20 rapid mutating calls by one identity get 429 JSON errors (not
/// audited, so a loop cannot grow the audit log), and other identities are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_mutations_are_rate_limited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut limited = 0;
    for i in 0..40 {
        let r = d
            .post(
                "/v1/playbooks/demo/resume",
                json!({ "reason": format!("loop {i}") }),
            )
            .await;
        match r.status {
            409 => r.assert_error(409, "nothing to resume"),
            429 => {
                r.assert_error(429, "rate limited");
                limited += 1;
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert!(limited >= 10, "only {limited} of 40 calls were limited");
    let r = d
        .send(
            "POST",
            "/v1/playbooks/demo/resume",
            ADMIN.1,
            json!({ "reason": "another identity" }),
        )
        .await;
    assert_eq!(r.status, 409, "another identity is not limited: {r:?}");
    let refused_429 = d
        .audit(OPERATOR.0)
        .await
        .iter()
        .filter(|r| r["inputs"]["status"] == 429)
        .count();
    assert_eq!(
        refused_429, 0,
        "429s are logged, not audited: a runaway client must not grow the audit log"
    );
    d.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The OpenAPI document.

/// Ensures `docs/openapi.json` is the generated document (regenerate with
/// `UPDATE_OPENAPI=1 cargo test -p failoverd --test api openapi`).
#[test]
fn openapi_copy_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let now = failoverd::api::openapi_json();
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == now,
        "docs/openapi.json is stale; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p failoverd --test api openapi`"
    );
}

/// Ensures every route registered under /v1 is in the OpenAPI document and vice versa, every
/// protected operation names the `bearer` scheme, and all `$ref`s resolve.
#[test]
fn openapi_documents_every_route() {
    let doc: Value = serde_json::from_str(&failoverd::api::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer")
    );
    let registered = failoverd::api::registered_routes();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    for (m, p) in &registered {
        assert!(p.starts_with("/v1/"), "{p}");
        let op = &doc["paths"][*p][m.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{m} {p} is registered but not documented");
        let security = op.get("security");
        if *p == "/v1/openapi.json" {
            assert!(security.is_none(), "the document itself is open");
        } else {
            assert_eq!(security, Some(&json!([{ "bearer": [] }])), "{m} {p}");
            assert!(op["responses"]["401"].is_object(), "{m} {p}: no 401");
        }
        // 202: a call that starts work in the background (a drill run).
        assert!(
            op["responses"]["200"].is_object() || op["responses"]["202"].is_object(),
            "{m} {p}: no 200 (or 202)"
        );
    }
    for (m, p) in &documented {
        assert!(
            registered
                .iter()
                .any(|(rm, rp)| rm.as_str() == m && rp == p),
            "{m} {p} is documented but not registered"
        );
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
}

/// Ensures every registered route answers on its method (401 without a token, 200 for the
/// open document), and GET /v1/openapi.json serves the generated document without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_route_is_served() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    for (m, p) in failoverd::api::registered_routes() {
        let concrete = p.replace("{name}", "demo").replace("{id}", "ov-00000000");
        let r = d.call(m.as_str(), &concrete, None, Payload::None).await;
        if p == "/v1/openapi.json" {
            assert_eq!(r.status, 200, "{r:?}");
            let served: Value = r.body;
            let generated: Value = serde_json::from_str(&failoverd::api::openapi_json()).unwrap();
            assert_eq!(served, generated);
            assert!(
                r.headers[reqwest::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
        } else {
            r.assert_error(401, &format!("{m} {p}"));
        }
    }
    d.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Abuse: limits before the role check, bounded records, content type, readiness of state.

/// Reads one sample of the daemon's `/metrics` (0 when the series does not exist yet).
async fn metric(d: &Daemon, series: &str) -> f64 {
    let r = d.call("GET", "/metrics", None, Payload::None).await;
    let text = r.body.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Ensures a mutating call with a non-JSON body is refused with a 415 JSON error (audited
/// like any refusal), changing nothing; a JSON one with parameters in the type is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_body_is_415() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let url = format!("http://{}/v1/playbooks/demo/freeze", d.addr);
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = d
            .client
            .post(&url)
            .bearer_auth(OPERATOR.1)
            .body(r#"{"reason":"INC-1","ttl":"5m"}"#);
        if let Some(ct) = ct {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 415, "{ct:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
        assert!(body.get("detail").is_some(), "{body}");
    }
    before.check(&f, &d, "415").await;
    let audited = d.audit(OPERATOR.0).await;
    assert_eq!(
        audited
            .iter()
            .filter(|r| r["inputs"]["status"] == 415)
            .count(),
        3,
        "{audited:#?}"
    );
    let ok = d
        .client
        .post(&url)
        .bearer_auth(OPERATOR.1)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(r#"{"reason":"INC-1","ttl":"5m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    d.shutdown().await;
}

/// Ensures a 60 KB name in the path is refused with 404 before authentication, the role
/// check or the audit: nothing is recorded and nothing changes, whoever calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_names_are_refused_before_anything() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let all_before = d.get("/v1/audit?limit=10000", VIEWER.1).await.body["records"]
        .as_array()
        .unwrap()
        .len();
    let long = "x".repeat(60 * 1024);
    let just_over = "y".repeat(failoverd::api::MAX_NAME + 1);
    for name in [&long, &just_over] {
        for (auth, m, p) in [
            (None, "POST", format!("/v1/playbooks/{name}/freeze")),
            (
                Some(VIEWER.1),
                "POST",
                format!("/v1/playbooks/{name}/failover"),
            ),
            (
                Some(OPERATOR.1),
                "POST",
                format!("/v1/playbooks/{name}/freeze"),
            ),
            (Some(OPERATOR.1), "DELETE", format!("/v1/overrides/{name}")),
            (Some(VIEWER.1), "GET", format!("/v1/playbooks/{name}")),
        ] {
            let auth = auth.map(|t| format!("Bearer {t}"));
            let r = d
                .call(
                    m,
                    &p,
                    auth.as_deref(),
                    Payload::Json(json!({ "reason": "INC-1" })),
                )
                .await;
            r.assert_error(404, &format!("{m} {} bytes", p.len()));
            assert!(
                r.body.to_string().len() < 1024,
                "the answer echoes the name"
            );
        }
    }
    before.check(&f, &d, "long names").await;
    let all_after = d.get("/v1/audit?limit=10000", VIEWER.1).await.body["records"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(all_after, all_before, "a long-name call was audited");
    d.shutdown().await;
}

/// Ensures a viewer looping on mutating calls is rate-limited before the role check, and the
/// audit records it causes stay within its audit budget however many calls it makes; the
/// 429s and the unaudited refusals are counted in metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_flood_makes_a_bounded_number_of_records() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let start = Instant::now();
    let (mut forbidden, mut limited) = (0, 0);
    for i in 0..300 {
        let r = d
            .send(
                "POST",
                "/v1/playbooks/demo/failover",
                VIEWER.1,
                json!({ "reason": format!("flood {i}") }),
            )
            .await;
        match r.status {
            403 => forbidden += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        limited > 0 && forbidden > 0,
        "403: {forbidden}, 429: {limited}"
    );
    // The rate limit (bursts of 20, 5/s) bounds the 403s; the audit budget (bursts of
    // AUDIT_REFUSAL_BURST, AUDIT_REFUSALS_PER_MINUTE/min) bounds the records.
    assert!(
        f64::from(forbidden) <= 20.0 + 5.0 * secs + 1.0,
        "{forbidden} 403s in {secs:.1} s"
    );
    let audited = d.audit(VIEWER.0).await.len() as f64;
    let budget = f64::from(failoverd::api::AUDIT_REFUSAL_BURST)
        + f64::from(failoverd::api::AUDIT_REFUSALS_PER_MINUTE) * secs / 60.0
        + 1.0;
    assert!(audited <= budget, "{audited} records, budget {budget:.1}");
    assert!(audited >= 20.0, "the first refusals are audited: {audited}");
    assert_eq!(
        metric(&d, "failoverd_api_rate_limited_total{by=\"identity\"}").await,
        f64::from(limited)
    );
    assert_eq!(
        metric(&d, "failoverd_api_refusals_unaudited_total").await,
        f64::from(forbidden) - audited
    );
    d.shutdown().await;
}

/// Ensures failed authentications are counted by reason, and beyond a burst one source
/// address gets 429 (still JSON) instead of 401, while a valid token from the same address
/// still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_and_limited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let (mut unauthorized, mut limited) = (0u32, 0u32);
    let n = failoverd::api::AUTH_FAILURE_BURST + 40;
    for i in 0..n {
        let auth = if i % 2 == 0 {
            Some("Bearer wrong".to_string())
        } else {
            None
        };
        let r = d
            .call("GET", "/v1/overrides", auth.as_deref(), Payload::None)
            .await;
        match r.status {
            401 => unauthorized += 1,
            429 => {
                r.assert_error(429, "auth flood");
                limited += 1;
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert!(
        unauthorized >= failoverd::api::AUTH_FAILURE_BURST,
        "{unauthorized}"
    );
    assert!(limited > 0, "no 429 after {n} failed authentications");
    assert_eq!(
        metric(&d, "failoverd_api_auth_failures_total{reason=\"invalid\"}").await
            + metric(&d, "failoverd_api_auth_failures_total{reason=\"missing\"}").await,
        f64::from(n)
    );
    assert_eq!(d.get("/v1/overrides", VIEWER.1).await.status, 200);
    d.shutdown().await;
}

/// Ensures the API reports no state before the saved overrides are published: 503 (JSON)
/// for the override list and the playbooks, then the real list once loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_not_reported_before_it_is_loaded() {
    use tower::Service;
    let f = Fixture::new().await;
    let loaded = vec![Loaded {
        file: "demo.yaml".into(),
        playbook: f.pb.clone(),
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let audit_path = f.dir.path().join("audit.jsonl");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let api = failoverd::api::ApiState::new(
        shared.clone(),
        Arc::new(Tokens::load(&f.dir.path().join("tokens.yaml")).unwrap()),
        tx,
        Arc::new(FileStore::new(f.dir.path().join("routes"))),
        Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        audit_path,
    );
    let mut app = failoverd::server::router(shared.clone(), api);
    let mut get = async |path: &str| {
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
    };
    for p in ["/v1/overrides", "/v1/playbooks", "/v1/playbooks/demo"] {
        let (status, body) = get(p).await;
        assert_eq!(status, 503, "{p}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("not loaded"),
            "{body}"
        );
    }
    shared
        .state_loaded
        .store(true, std::sync::atomic::Ordering::Release);
    let (status, body) = get("/v1/overrides").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overrides"], json!([]));
}

// ---------------------------------------------------------------------------------------
// TLS on the listener.

/// A CA (its PEM) able to issue a server certificate for 127.0.0.1.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a leaf certificate and key for 127.0.0.1 to `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let k = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let c = params.signed_by(&k, &self.issuer).unwrap();
        // Key first, then the certificate: a reload that sees only one changed keeps the
        // old pair (the key does not match) until both are in place.
        std::fs::write(key, k.serialize_pem()).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
    }

    /// A client trusting only this CA, opening a new connection per call.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()])
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }
}

/// Ensures `--tls-cert/--tls-key` serve the API over HTTPS with the given certificate (a
/// client trusting its CA gets 200, one trusting another CA fails the handshake, plain
/// HTTP gets no answer), and that replacing the files changes the served certificate
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_reloads_the_certificate() {
    let f = Fixture::new().await;
    let (ca1, ca2) = (Ca::new("ca-one"), Ca::new("ca-two"));
    let (cert, key) = (f.dir.path().join("tls.crt"), f.dir.path().join("tls.key"));
    ca1.issue(&cert, &key);
    let loaded = vec![Loaded {
        file: "demo.yaml".into(),
        playbook: f.pb.clone(),
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let audit_path = f.dir.path().join("audit.jsonl");
    let rt = Runtime {
        playbooks: loaded,
        store: Arc::new(FileStore::new(f.dir.path().join("routes"))),
        audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        overrides: OverrideStore::open(&f.dir.path().join("overrides.json")).unwrap(),
        prometheus: None,
        prometheus_client: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(failoverd::cli::serve_with_limits(
        rt,
        shared.clone(),
        Arc::new(Tokens::load(&f.dir.path().join("tokens.yaml")).unwrap()),
        audit_path,
        listener,
        stop_rx,
        None,
        failoverd::server::ListenerOptions {
            max_connections: None,
            tls: Some(failoverd::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
        },
    ));
    let url = format!("https://{addr}/v1/overrides");
    let get = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            c.get(&url)
                .bearer_auth(VIEWER.1)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    wait_until(
        "HTTPS answers with the first certificate",
        Duration::from_secs(10),
        || {
            let c = ca1.client();
            async move { get(c).await.ok() == Some(200) }
        },
    )
    .await;
    assert!(
        get(ca2.client()).await.is_err(),
        "a client trusting another CA connected"
    );
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS listener: {plain:?}"
    );

    // Rotate: the second CA's certificate replaces the first, no restart.
    ca2.issue(&cert, &key);
    wait_until(
        "the new certificate is served",
        Duration::from_secs(10),
        || {
            let c = ca2.client();
            async move { get(c).await.ok() == Some(200) }
        },
    )
    .await;
    assert!(
        get(ca1.client()).await.is_err(),
        "the old certificate is still served"
    );

    // A broken replacement keeps the one in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(ca2.client()).await.ok(), Some(200));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("daemon did not stop")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Listener timeouts.

/// Ensures the listener drops a connection that sends nothing, one that trickles its headers
/// (slowloris) and a kept-alive one left idle after an answer, once the 10 s header-read
/// timeout has passed (checked with a 20 s bound), while answering a prompt request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let addr = d.addr;
    let closed_within = |mut s: tokio::net::TcpStream, trickle: bool| async move {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return Some(start.elapsed()),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if trickle {
                        let _ = s.write_all(b"a").await;
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(20) {
                return None;
            }
        }
    };
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "a prompt request is answered");
    let (a, b, c) = tokio::join!(
        closed_within(silent, false),
        closed_within(slow, true),
        closed_within(kept, false)
    );
    for (what, t) in [("silent", a), ("slowloris", b), ("idle kept-alive", c)] {
        let t = t.unwrap_or_else(|| panic!("{what} connection still open after 20 s"));
        assert!(
            t >= Duration::from_secs(8),
            "{what} connection closed after {t:?}, before the timeout"
        );
    }
    d.shutdown().await;
}

/// Ensures `GET /v1/audit` reads run at most `AUDIT_READS` at once: with every turn taken a
/// read waits, then answers 503 (JSON); once a turn is free it answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_are_bounded_in_number() {
    use tower::Service;
    let f = Fixture::new().await;
    let loaded = vec![Loaded {
        file: "demo.yaml".into(),
        playbook: f.pb.clone(),
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let audit_path = f.dir.path().join("audit.jsonl");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let api = failoverd::api::ApiState::new(
        shared.clone(),
        Arc::new(Tokens::load(&f.dir.path().join("tokens.yaml")).unwrap()),
        tx,
        Arc::new(FileStore::new(f.dir.path().join("routes"))),
        Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        audit_path,
    );
    let turns = api.audit_reads.clone();
    let mut app = failoverd::server::router(shared, api);
    let mut get = async || {
        let req = axum::http::Request::get("/v1/audit?limit=5")
            .header("authorization", format!("Bearer {}", VIEWER.1))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.call(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let held = turns
        .clone()
        .try_acquire_many_owned(u32::try_from(failoverd::api::AUDIT_READS).unwrap())
        .unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("audit log reads"),
        "{body}"
    );
    drop(held);
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert!(body["records"].is_array(), "{body}");
}
