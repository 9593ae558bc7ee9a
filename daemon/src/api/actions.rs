//! The operator actions on a playbook (`failover`, `failback`, `freeze`, `resume`): checked,
//! sent to the controller through its inbox, answered when the write lands.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::oneshot;

use crate::engine::Actor;
use crate::shared::{Control, ControlKind, ControlReply};

use super::auth::Caller;
use super::body::{Body, control_kind, parse_body, read_body, require_json};
use super::error::{
    ActionRefusals, ApiError, ApiResult, AuthRefusals, ErrorBody, MutatingRefusals,
};
use super::guard::Authn;
use super::operator::as_operator;
use super::schema;
use super::state::{ApiState, CALL_TIMEOUT};

pub(super) async fn send(
    state: &ApiState,
    playbook: Option<String>,
    kind: ControlKind,
    actor: Actor,
) -> ApiResult<Response> {
    send_reply(state, playbook, kind, actor)
        .await
        .map(|reply| axum::Json::<ControlReply>(reply).into_response())
}

/// [`send`], answering with the controller's reply itself (the console renders it).
async fn send_reply(
    state: &ApiState,
    playbook: Option<String>,
    kind: ControlKind,
    actor: Actor,
) -> ApiResult<ControlReply> {
    let (tx, rx) = oneshot::channel();
    state
        .control
        .send(Control {
            playbook: playbook.clone(),
            kind,
            actor,
            reply: tx,
            // The API call's span (see `guard`): the decision joins the caller's trace.
            traceparent: crate::trace::traceparent(&tracing::Span::current()),
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "failoverd is shutting down",
            )
        })?;
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => Ok(reply),
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.error,
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "failoverd is shutting down",
        )),
        Err(_) => {
            let see = match &playbook {
                Some(name) => format!("see GET /v1/playbooks/{name} and the audit log"),
                None => "see GET /v1/overrides and the audit log".to_string(),
            };
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "accepted, but the routing write did not finish in time",
            )
            .detail(json!(see)))
        }
    }
}

pub(super) async fn act(
    state: ApiState,
    authn: Authn,
    headers: HeaderMap,
    name: String,
    action: &str,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authn.caller()?;
    act_as(&state, caller, &headers, name, action, body)
        .await
        .map(|reply| axum::Json::<ControlReply>(reply).into_response())
}

/// An operator action by the console's signed-in `caller`: the same body, checks, permission,
/// audit of refusals and controller command as the `/v1` call, with `body` the JSON the API
/// would have been sent.
pub(crate) async fn console_act(
    state: &ApiState,
    caller: Caller,
    name: String,
    action: &str,
    body: serde_json::Value,
) -> ApiResult<ControlReply> {
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    act_as(
        state,
        caller,
        &headers,
        name,
        action,
        Ok(Bytes::from(bytes)),
    )
    .await
}

async fn act_as(
    state: &ApiState,
    caller: Caller,
    headers: &HeaderMap,
    name: String,
    action: &str,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<ControlReply> {
    let audit_action = format!("override-{action}");
    let checked = async {
        if state.shared.index(&name).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no playbook named `{name}`"),
            ));
        }
        let bytes = read_body(&body)?;
        require_json(headers, bytes)?;
        let body = parse_body(bytes)?;
        let kind = control_kind(action, &body)?;
        Ok((kind, body.reason.trim().to_string()))
    };
    let playbook = || name.clone();
    let (kind, reason) = as_operator(
        state,
        &caller,
        std::slice::from_ref(&name),
        &body,
        &audit_action,
        playbook,
        json!({}),
        checked,
    )
    .await?;
    let actor = Actor {
        identity: caller.identity.clone(),
        reason,
    };
    send_reply(state, Some(name), kind, actor).await
}

/// Force a failover
///
/// Routes all traffic to a failover target (`target`, or the first healthy one) and holds it
/// there for `ttl` (default 1h), even while the primary looks healthy and even while
/// automation is frozen. Refused (409) when the target does not exist or is not known
/// healthy, unless `force` is set, and always when residency or mesh policy refuses the
/// target (force cannot pass that fence). With `"breakGlass": true` (admin only, `target`
/// required, `ttl` at most 1h) nothing moves yet: the answer is 202 with a request id that
/// a *different* admin approves at `POST /v1/breakglass/{id}/approve` within 10 minutes.
#[utoipa::path(
    post,
    path = "/v1/playbooks/{name}/failover",
    tag = "playbooks",
    operation_id = "failover",
    params(("name" = String, Path, description = "Playbook name (`metadata.name`)")),
    request_body(content = Body, description = "`reason` (required), `ttl`, `target`, `force`", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done: the routing write completed (or the hold is recorded)", body = schema::ControlReply),
        (status = 202, description = "`breakGlass`: the request is pending until a different admin approves it", body = super::pending::BreakGlassRequested),
        AuthRefusals,
        MutatingRefusals,
        ActionRefusals,
        (status = 409, description = "Refused by a rule (target missing or not known healthy, playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, bad ttl or target", body = ErrorBody),
        (status = 504, description = "Accepted, but the routing write did not finish in time", body = ErrorBody),
    )
)]
pub(super) async fn failover(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, authn, headers, name, "failover", body).await
}

/// Fail back now
///
/// Returns all traffic to the original route at once (no steps, no waiting) and releases any
/// failover hold. Refused (409) when already on the primary, or when the primary is not known
/// healthy unless `force` is set.
#[utoipa::path(
    post,
    path = "/v1/playbooks/{name}/failback",
    tag = "playbooks",
    operation_id = "failback",
    params(("name" = String, Path, description = "Playbook name (`metadata.name`)")),
    request_body(content = Body, description = "`reason` (required), `force`", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done: the original route is written back", body = schema::ControlReply),
        AuthRefusals,
        MutatingRefusals,
        ActionRefusals,
        (status = 409, description = "Refused by a rule (already on the primary, primary not known healthy, playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl or target given", body = ErrorBody),
        (status = 504, description = "Accepted, but the routing write did not finish in time", body = ErrorBody),
    )
)]
pub(super) async fn failback(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, authn, headers, name, "failback", body).await
}

/// Freeze automation
///
/// No automatic moves for `ttl` (default 1h), like a silence; routing stays as it is. An
/// operator failover hold still applies.
#[utoipa::path(
    post,
    path = "/v1/playbooks/{name}/freeze",
    tag = "playbooks",
    operation_id = "freeze",
    params(("name" = String, Path, description = "Playbook name (`metadata.name`)")),
    request_body(content = Body, description = "`reason` (required), `ttl`", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Frozen", body = schema::ControlReply),
        AuthRefusals,
        MutatingRefusals,
        ActionRefusals,
        (status = 409, description = "Refused by a rule (playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, bad ttl, target or force given", body = ErrorBody),
    )
)]
pub(super) async fn freeze(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, authn, headers, name, "freeze", body).await
}

/// Resume automation
///
/// Releases the playbook's freezes and failover holds: automation is back in control (and
/// may move traffic at once if the signals say so).
#[utoipa::path(
    post,
    path = "/v1/playbooks/{name}/resume",
    tag = "playbooks",
    operation_id = "resume",
    params(("name" = String, Path, description = "Playbook name (`metadata.name`)")),
    request_body(content = Body, description = "`reason` (required) only", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released", body = schema::ControlReply),
        AuthRefusals,
        MutatingRefusals,
        ActionRefusals,
        (status = 409, description = "Refused by a rule (nothing to release, playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl, target or force given", body = ErrorBody),
    )
)]
pub(super) async fn resume(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, authn, headers, name, "resume", body).await
}
