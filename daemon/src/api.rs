//! The override API under `/v1`: read state, and force, fail back, freeze or resume a
//! playbook. Every call needs a bearer token; mutating calls need the operator role, are
//! rate-limited per identity, go through the engine and the single routing writer, and are
//! audited (refusals of authenticated callers too).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, AuditLog, Entry};
use crate::auth::{AuthError, Caller, Role, Tokens};
use crate::engine::Actor;
use crate::playbook::{Duration as PbDuration, Target};
use crate::routing::RoutingStore;
use crate::runtime::{Control, ControlKind, Shared};

/// Largest request body: a reason and a few fields. Anything bigger is not an override.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest reason accepted (it lands in every audit record and alert).
pub const MAX_REASON: usize = 1024;
/// Default TTL of failover holds and freezes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest TTL: an override forgotten for weeks is an incident of its own.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time an operator call waits for its routing write before answering anyway.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the API handlers need.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Shared daemon state.
    pub shared: Arc<Shared>,
    /// Accepted tokens.
    pub tokens: Arc<Tokens>,
    /// The controller's inbox.
    pub control: mpsc::Sender<Control>,
    /// The routing store (reads only, for "current routing").
    pub store: Arc<dyn RoutingStore>,
    /// The audit log (for refusals the controller never sees).
    pub audit: Arc<Mutex<AuditLog>>,
    /// The audit log's path (for `GET /v1/audit`).
    pub audit_path: PathBuf,
    /// Per-identity limit on mutating calls.
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl ApiState {
    /// Builds the state with the default rate limit (5 calls/s per identity, bursts of 20:
    /// plenty for a person or a runbook script, not for a runaway loop).
    pub fn new(
        shared: Arc<Shared>,
        tokens: Arc<Tokens>,
        control: mpsc::Sender<Control>,
        store: Arc<dyn RoutingStore>,
        audit: Arc<Mutex<AuditLog>>,
        audit_path: PathBuf,
    ) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN));
        Self {
            shared,
            tokens,
            control,
            store,
            audit,
            audit_path,
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }
}

/// A JSON error: `{ "error": "...", "detail": ... }` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: Value,
}

impl ApiError {
    /// An error with no detail.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: Value::Null,
        }
    }

    fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({ "error": self.error, "detail": self.detail })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(v) = header::HeaderValue::from_str("Bearer realm=\"failoverd\"")
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The `/v1` routes.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/playbooks", get(list_playbooks))
        .route("/v1/playbooks/{name}", get(get_playbook))
        .route("/v1/playbooks/{name}/{action}", post(act))
        .route("/v1/overrides", get(list_overrides))
        .route("/v1/overrides/{id}", delete(delete_override))
        .route("/v1/audit", get(get_audit))
        .with_state(state)
}

fn authenticate(state: &ApiState, headers: &HeaderMap, need: Role) -> ApiResult<Caller> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = state.tokens.authenticate(h).map_err(|e| match e {
        AuthError::NotConfigured => ApiError::new(StatusCode::UNAUTHORIZED, "authentication is not configured")
            .detail(json!("start failoverd with --tokens FILE (YAML: - { identity, role, sha256 }) to enable the API")),
        AuthError::Missing => ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token")
            .detail(json!("send Authorization: Bearer <token>")),
        AuthError::Invalid => ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token"),
    })?;
    if caller.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} has role {:?}; this call needs {:?}",
                caller.identity, caller.role, need
            ),
        ));
    }
    Ok(caller)
}

async fn audit_refusal(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    playbook: &str,
    reason: &str,
    err: &ApiError,
) {
    let log = state.audit.clone();
    let entry = Entry {
        actor: caller.identity.clone(),
        action: action.to_string(),
        playbook: playbook.to_string(),
        reason: reason.to_string(),
        inputs: json!({ "status": err.status.as_u16() }),
        outcome: format!("refused: {}", err.error),
        ..Entry::default()
    };
    let res = tokio::task::spawn_blocking(move || {
        log.lock()
            .map_err(|_| ())
            .and_then(|mut l| l.append(entry).map(|_| ()).map_err(|_| ()))
    })
    .await;
    if !matches!(res, Ok(Ok(()))) {
        state.shared.metrics.audit_errors.inc();
        tracing::error!("audit append failed for a refused call");
    }
}

async fn list_playbooks(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
    let overrides = state
        .shared
        .overrides
        .read()
        .map(|o| o.clone())
        .unwrap_or_default();
    let list: Vec<Value> = state
        .shared
        .snapshot()
        .into_iter()
        .map(|s| {
            let n = overrides.iter().filter(|o| o.playbook == s.name).count();
            json!({
                "name": s.name,
                "phase": s.phase.as_ref().map(|p| p.name()),
                "routing": s.routing,
                "explain": s.explain,
                "error": s.error,
                "overrides": n,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "playbooks": list })).into_response())
}

async fn get_playbook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
    let idx = state.shared.index(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no playbook named `{name}`"))
    })?;
    let status = state.shared.snapshot().into_iter().nth(idx);
    let pb = state.shared.playbooks[idx].clone();
    let route = match state.store.read(&pb).await {
        Ok(v) => json!({ "routing": v.routing, "route": v.route }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let overrides: Vec<_> = state
        .shared
        .overrides
        .read()
        .map(|o| o.iter().filter(|r| r.playbook == name).cloned().collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({
        "name": name,
        "virtualService": pb.spec.virtual_service.to_string(),
        "status": status,
        "store": route,
        "overrides": overrides,
    }))
    .into_response())
}

/// Body of the mutating calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    reason: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    target: Option<Value>,
    #[serde(default)]
    force: bool,
}

fn parse_body(bytes: &Bytes) -> ApiResult<Body> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    let body: Body = serde_json::from_slice(bytes).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid request body").detail(json!(e.to_string()))
    })?;
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reason must not be empty").detail(
                json!("say why, e.g. an incident id: it goes into the audit log"),
            ),
        );
    }
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason longer than {MAX_REASON} characters"),
        ));
    }
    Ok(body)
}

fn ttl_of(body: &Body) -> ApiResult<Duration> {
    let Some(t) = &body.ttl else {
        return Ok(DEFAULT_TTL);
    };
    let d = PbDuration::parse(t).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid ttl").detail(json!(e))
    })?;
    if d.get().is_zero() || d.get() > MAX_TTL {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl must be greater than 0s and at most 7d",
        ));
    }
    Ok(d.get())
}

fn target_of(body: &Body) -> ApiResult<Option<usize>> {
    match &body.target {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "target must be `failover[N]` or N",
            )
        }),
        Some(Value::String(s)) => match s.parse::<Target>() {
            Ok(Target::Failover(i)) => Ok(Some(i)),
            Ok(Target::Primary) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "target `primary`: use failback to return to the primary",
            )),
            Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
        },
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "target must be `failover[N]` or N",
        )),
    }
}

fn control_kind(action: &str, body: &Body) -> ApiResult<ControlKind> {
    let only = |what: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} does not apply to {action}"),
        )
    };
    match action {
        "failover" => Ok(ControlKind::Failover {
            target: target_of(body)?,
            force: body.force,
            ttl: ttl_of(body)?,
        }),
        "failback" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.ttl.is_some() {
                return Err(only("ttl"));
            }
            Ok(ControlKind::Failback { force: body.force })
        }
        "freeze" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.force {
                return Err(only("force"));
            }
            Ok(ControlKind::Freeze { ttl: ttl_of(body)? })
        }
        "resume" => {
            if body.target.is_some() || body.ttl.is_some() || body.force {
                return Err(only("target, ttl or force"));
            }
            Ok(ControlKind::Resume)
        }
        other => Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown action `{other}`"))
                .detail(json!("one of failover, failback, freeze, resume")),
        ),
    }
}

async fn send(
    state: &ApiState,
    playbook: Option<String>,
    kind: ControlKind,
    actor: Actor,
) -> ApiResult<Response> {
    let (tx, rx) = oneshot::channel();
    state
        .control
        .send(Control {
            playbook,
            kind,
            actor,
            reply: tx,
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "failoverd is shutting down",
            )
        })?;
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => Ok(axum::Json(reply).into_response()),
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.error,
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "failoverd is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "accepted, but the routing write did not finish in time",
        )
        .detail(json!("see GET /v1/playbooks/{name} and the audit log"))),
    }
}

fn rate_limit(state: &ApiState, caller: &Caller) -> ApiResult<()> {
    state.limiter.check_key(&caller.identity).map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit for {} exceeded; retry in a second",
                caller.identity
            ),
        )
    })
}

async fn act(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers, Role::Viewer)?;
    let audit_action = format!("override-{action}");
    let result = async {
        if caller.role < Role::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} has role {:?}; this call needs Operator",
                    caller.identity, caller.role
                ),
            ));
        }
        rate_limit(&state, &caller)?;
        if state.shared.index(&name).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no playbook named `{name}`"),
            ));
        }
        let body = parse_body(&bytes)?;
        let kind = control_kind(&action, &body)?;
        Ok((kind, body.reason.trim().to_string()))
    }
    .await;
    match result {
        Ok((kind, reason)) => {
            let actor = Actor {
                identity: caller.identity.clone(),
                reason,
            };
            send(&state, Some(name), kind, actor).await
        }
        Err(e) => {
            let reason = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
                .unwrap_or_default();
            audit_refusal(&state, &caller, &audit_action, &name, &reason, &e).await;
            Err(e)
        }
    }
}

async fn list_overrides(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
    let o = state
        .shared
        .overrides
        .read()
        .map(|o| o.clone())
        .unwrap_or_default();
    Ok(axum::Json(json!({ "overrides": o })).into_response())
}

async fn delete_override(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers, Role::Viewer)?;
    let result = async {
        if caller.role < Role::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} has role {:?}; this call needs Operator",
                    caller.identity, caller.role
                ),
            ));
        }
        rate_limit(&state, &caller)?;
        let body = parse_body(&bytes)?;
        if body.target.is_some() || body.ttl.is_some() || body.force {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "only `reason` applies to deleting an override",
            ));
        }
        Ok(body.reason.trim().to_string())
    }
    .await;
    match result {
        Ok(reason) => {
            let actor = Actor {
                identity: caller.identity.clone(),
                reason,
            };
            send(&state, None, ControlKind::DeleteOverride { id }, actor).await
        }
        Err(e) => {
            audit_refusal(&state, &caller, "override-delete", "", &id, &e).await;
            Err(e)
        }
    }
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    playbook: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn get_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(json!(e.body_text()))
    })?;
    let since = q
        .since
        .as_deref()
        .map(|s| s.parse::<jiff::Timestamp>())
        .transpose()
        .map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "since must be an RFC 3339 time")
                .detail(json!(e.to_string()))
        })?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let path = state.audit_path.clone();
    let records = tokio::task::spawn_blocking(move || audit::read_all(&path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the audit log: {e}"),
            )
        })?;
    let mut out: Vec<_> = records
        .into_iter()
        .filter(|r| q.playbook.as_ref().is_none_or(|p| &r.playbook == p))
        .filter(|r| q.actor.as_ref().is_none_or(|a| &r.actor == a))
        .filter(|r| since.is_none_or(|s| r.time >= s))
        .collect();
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    Ok(axum::Json(json!({ "records": out })).into_response())
}
