//! What runs before and around every handler: the [`guard`] middleware (path limits,
//! failed-authentication limits, per-identity rate limits), authentication and role
//! checks, and the audit record of a refused call.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use super::auth::{AuthError, Caller, Role};
use crate::audit::Entry;

use super::error::{ApiError, ApiResult};
use super::state::{ApiState, LIMITER_KEYS, MAX_NAME, MAX_PATH, MAX_REASON};

pub(super) fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Runs before every `/v1` handler, in this order, so abuse is refused before it costs a
/// role check, a disk write or an fsync: (1) a path longer than [`MAX_PATH`] or with a
/// segment longer than [`MAX_NAME`] → 404; (2) a failed authentication is counted
/// (`failoverd_api_auth_failures_total{reason}`), logged in aggregate, and limited per
/// source address (429 beyond the limit; the handler's 401 otherwise); (3) a mutating call
/// by an authenticated caller is rate-limited per identity (429, not audited). The handlers
/// then check the role and audit refusals within the identity's audit budget.
///
/// Every call is one server span `failoverd.api` (tracing on) with the caller's identity
/// (`enduser.id`, never the token); an incoming W3C `traceparent` header becomes its parent.
pub async fn guard(state: State<ApiState>, req: Request, next: Next) -> Response {
    let span = tracing::trace_span!(
        "failoverd.api",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        enduser.id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        crate::trace::set_parent(&span, tp);
    }
    let res = guard_in(state, req, next).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    res
}

async fn guard_in(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/v1/openapi.json" {
        return next.run(req).await;
    }
    if path.len() > MAX_PATH || path.split('/').any(|seg| seg.len() > MAX_NAME) {
        return ApiError::new(StatusCode::NOT_FOUND, "not found")
            .detail(json!(format!(
                "names are at most {MAX_NAME} bytes and paths at most {MAX_PATH}"
            )))
            .into_response();
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.tokens.authenticate(auth) {
        Err(e) => {
            let reason = match e {
                AuthError::NotConfigured => "not_configured",
                AuthError::Missing => "missing",
                AuthError::Invalid => "invalid",
            };
            let m = &state.shared.metrics;
            m.api_auth_failures
                .get_or_create(&crate::metrics::labels([("reason", reason)]))
                .inc();
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            let key = format!("address {ip}");
            // One entry per address ever seen: drop the ones whose limit has recovered
            // before the map grows large.
            if state.auth_limiter.len() > LIMITER_KEYS {
                state.auth_limiter.retain_recent();
            }
            if state.auth_limiter.check_key(&ip).is_err() {
                m.api_rate_limited
                    .get_or_create(&crate::metrics::labels([("by", "address")]))
                    .inc();
                state
                    .refusals
                    .note(&key, "failed authentications, rate limited");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address",
                )
                .detail(json!("retry in a second with a valid bearer token"))
                .into_response();
            }
            state.refusals.note(&key, "failed authentication");
            next.run(req).await
        }
        Ok(caller) => {
            tracing::Span::current().record("enduser.id", caller.identity.as_str());
            if is_mutating(req.method()) && state.limiter.check_key(&caller.identity).is_err() {
                state
                    .shared
                    .metrics
                    .api_rate_limited
                    .get_or_create(&crate::metrics::labels([("by", "identity")]))
                    .inc();
                state
                    .refusals
                    .note(&format!("identity {}", caller.identity), "rate limited");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "rate limit for {} exceeded; retry in a second",
                        caller.identity
                    ),
                )
                .into_response();
            }
            next.run(req).await
        }
    }
}

/// 503 until the saved state (overrides) is loaded and published: before that, an empty
/// override list would read as "not frozen" while a freeze holds.
pub(super) fn require_loaded(state: &ApiState) -> ApiResult<()> {
    if state.shared.state_loaded.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the saved overrides are not loaded yet",
        )
        .detail(json!("retry in a moment")))
    }
}

pub(super) fn authenticate(state: &ApiState, headers: &HeaderMap, need: Role) -> ApiResult<Caller> {
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
        return Err(forbidden(&caller, need));
    }
    Ok(caller)
}

pub(super) fn forbidden(caller: &Caller, need: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} has role {:?}; this call needs {:?}",
            caller.identity, caller.role, need
        ),
    )
}

/// Records the refusal of an authenticated caller's mutating call.
pub(super) async fn audit_refusal(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    playbook: &str,
    reason: &str,
    mut inputs: Value,
    err: &ApiError,
) {
    // Rate-limited calls are not audited one by one: the limit exists to bound the work a
    // runaway client causes, and an fsynced record per rejected call would defeat it. They
    // are logged instead.
    if err.status == StatusCode::TOO_MANY_REQUESTS {
        state
            .refusals
            .note(&format!("identity {}", caller.identity), "rate limited");
        return;
    }
    // Within the identity's audit budget each refusal is recorded; beyond it (a client
    // looping on a refused call) they are counted and logged in aggregate, so the number of
    // records a flood can cause is bounded per identity.
    if state.audit_budget.check_key(&caller.identity).is_err() {
        state.shared.metrics.api_refusals_unaudited.inc();
        state.refusals.note(
            &format!("identity {}", caller.identity),
            "refused, beyond the audit budget",
        );
        return;
    }
    let log = state.audit.clone();
    inputs["status"] = json!(err.status.as_u16());
    let entry = Entry {
        actor: caller.identity.clone(),
        action: action.to_string(),
        // Path-derived: at most MAX_NAME bytes ([`guard`]); cut again so a record never
        // depends on that alone.
        playbook: playbook.chars().take(MAX_NAME).collect(),
        // A refused call may carry any reason, even a huge one: keep the record bounded.
        reason: reason.chars().take(MAX_REASON).collect(),
        inputs,
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
