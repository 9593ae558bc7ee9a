//! The two-person break-glass: one admin asks to route past residency or mesh policy
//! (`POST /v1/playbooks/{name}/failover` with `"breakGlass": true`), a *different* admin
//! approves within [`PENDING_TTL`] (`POST /v1/breakglass/{id}/approve`), and only then is the
//! move sent to the controller, as a forced hold of at most [`MAX_HOLD`].
//!
//! Requests are kept in the leader's memory (a standby refuses both calls with 503 naming the
//! leader): a restart or a leader handover drops the pending ones (never an approved one:
//! that is a hold in the override set). Each request,
//! approval and refusal is audited before it is answered, and pages on-call (`break-glass`,
//! critical).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::actions::send;
use super::auth::Caller;
use super::body::{Body, parse_body, read_body, require_json, target_of, ttl_of};
use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, MutatingRefusals};
use super::guard::Authn;
use super::kube_auth::Verb;
use super::operator::as_role;
use super::pending::{BreakGlassRequested, Pending};
use super::state::{ApiState, MAX_REASON};
use crate::audit::Entry;
use crate::engine::Actor;
use crate::notify::EventKind;
use crate::overrides::BreakGlassMark;
use crate::shared::ControlKind;

/// How long a request waits for its second admin.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Longest break-glass hold: past it, automation (and the fence) take over again.
pub const MAX_HOLD: Duration = Duration::from_secs(3600);
/// Pending requests kept at once (a flood of requests is refused, not stored).
pub const MAX_PENDING: usize = 64;

/// Body of `POST /v1/breakglass/{id}/approve`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    /// Why the approver agrees (goes into the audit log). Not empty, at most 1024 characters.
    #[schema(min_length = 1, max_length = 1024)]
    reason: String,
}

/// A standby writes nothing, so it keeps no requests either: both halves of a break-glass go
/// to the leader, where the approval can find the request.
fn on_the_leader(state: &ApiState) -> ApiResult<()> {
    if state.shared.leader.is_leader() {
        return Ok(());
    }
    let leader = state
        .shared
        .leader
        .holder()
        .unwrap_or_else(|| "not known yet".into());
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "this replica is a standby and keeps no break-glass requests; the leader is `{leader}`"
        ),
    ))
}

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
}

async fn record(state: &ApiState, entry: Entry) -> ApiResult<()> {
    let log = state.audit.clone();
    let res = tokio::task::spawn_blocking(move || {
        log.lock()
            .map_err(|_| ())
            .and_then(|mut l| l.append(entry).map(|_| ()).map_err(|_| ()))
    })
    .await;
    if matches!(res, Ok(Ok(()))) {
        Ok(())
    } else {
        state.shared.metrics.audit_errors.inc();
        // Nothing unaudited happens: the request is not kept, the move not made.
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log refuses appends: break-glass not recorded, nothing done",
        ))
    }
}

fn page(state: &ApiState, playbook: &str, reason: &str, actor: &str) {
    if let Some(idx) = state.shared.index(playbook) {
        state.shared.event(
            idx,
            EventKind::BreakGlass,
            None,
            None,
            reason,
            json!({}),
            actor,
        );
    }
}

/// `POST /v1/playbooks/{name}/failover`: a break-glass request when the body says
/// `"breakGlass": true`, else the ordinary operator failover (documented there).
pub(super) async fn failover(
    state: State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    name: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let break_glass = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("breakGlass").and_then(serde_json::Value::as_bool))
        == Some(true);
    if break_glass {
        return request(state.0, authn, headers, name.0, body).await;
    }
    super::actions::failover(state, authn, headers, name, body).await
}

/// `POST /v1/playbooks/{name}/failover` with `"breakGlass": true`.
async fn request(
    state: ApiState,
    authn: Authn,
    headers: HeaderMap,
    name: String,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authn.caller()?;
    let checked = async {
        on_the_leader(&state)?;
        let Some(idx) = state.shared.index(&name) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no playbook named `{name}`"),
            ));
        };
        let bytes = read_body(&body)?;
        require_json(&headers, bytes)?;
        let b: Body = parse_body(bytes)?;
        let target = target_of(&b)?
            .ok_or_else(|| unprocessable("a break-glass names its target (`failover[N]` or N)"))?;
        let n = state
            .shared
            .playbooks
            .get(idx)
            .map_or(0, |p| p.spec.failover.value.len());
        if target >= n {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("failover[{target}] does not exist ({n} failover targets)"),
            ));
        }
        let ttl = if b.ttl.is_some() {
            ttl_of(&b)?
        } else {
            MAX_HOLD
        };
        if ttl > MAX_HOLD {
            return Err(unprocessable(format!(
                "a break-glass holds for at most {}",
                humantime::format_duration(MAX_HOLD)
            )));
        }
        Ok((target, ttl, b.reason.trim().to_string()))
    };
    let (target, ttl, reason) = as_role(
        &state,
        &caller,
        Verb::Escalate,
        std::slice::from_ref(&name),
        &body,
        "break-glass-request",
        || name.clone(),
        json!({}),
        checked,
    )
    .await?;
    let now = Timestamp::now();
    let id = format!("bg-{:08x}", rand::random::<u32>());
    let expires_at = now
        .checked_add(jiff::SignedDuration::try_from(PENDING_TTL).unwrap_or_default())
        .unwrap_or(now);
    {
        let mut book = state
            .break_glass
            .lock()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?;
        book.prune(now);
        if book.pending.len() >= MAX_PENDING {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_PENDING} break-glass requests are pending already"),
            ));
        }
    }
    record(
        &state,
        Entry {
            actor: caller.identity.clone(),
            action: "break-glass-request".into(),
            playbook: name.clone(),
            reason: reason.clone(),
            inputs: json!({ "id": id, "target": target, "ttl": humantime::format_duration(ttl).to_string(), "expiresAt": expires_at }),
            outcome: format!("pending: a different admin must approve {id} before {expires_at}"),
            ..Entry::default()
        },
    )
    .await?;
    if let Ok(mut book) = state.break_glass.lock() {
        book.pending.insert(
            id.clone(),
            Pending {
                playbook: name.clone(),
                target,
                ttl,
                reason: reason.clone(),
                requested_by: caller.identity.clone(),
                expires_at,
            },
        );
    }
    page(
        &state,
        &name,
        &format!("requested {id} for failover[{target}], waiting for a second admin: {reason}"),
        &caller.identity,
    );
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BreakGlassRequested {
            id,
            expires_at,
            playbook: name,
            target,
        }),
    )
        .into_response())
}

fn approve_checks(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    body: &Result<Bytes, BytesRejection>,
    headers: &HeaderMap,
) -> ApiResult<(Pending, String)> {
    on_the_leader(state)?;
    let bytes = read_body(body)?;
    require_json(headers, bytes)?;
    let b: ApproveBody =
        serde_json::from_slice(bytes).map_err(|e| unprocessable(format!("invalid body: {e}")))?;
    let reason = b.reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(unprocessable(format!(
            "reason must be 1 to {MAX_REASON} characters"
        )));
    }
    let mut book = state
        .break_glass
        .lock()
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?;
    book.prune(Timestamp::now());
    let Some(p) = book.pending.get(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no pending break-glass `{id}` (unknown, expired after 10 minutes, or already approved)"
            ),
        ));
    };
    if p.requested_by == caller.identity {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} requested {id}: a break-glass needs a second, different admin",
                caller.identity
            ),
        ));
    }
    let p = p.clone();
    book.pending.remove(id);
    Ok((p, reason))
}

/// Approve a break-glass
///
/// A second admin (not the one who asked) approves a pending break-glass request: the
/// failover it names is made at once, past residency and mesh policy, and held for its TTL
/// (at most 1h). Refused with 403 for the requester, a viewer or an operator; 404 when the
/// request is unknown, expired (10 minutes) or already approved.
#[utoipa::path(
    post,
    path = "/v1/breakglass/{id}/approve",
    tag = "playbooks",
    operation_id = "approveBreakGlass",
    params(("id" = String, Path, description = "The request's id (`bg-...`)")),
    request_body(content = ApproveBody, description = "`reason` (required)", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved and done: the routing write completed", body = super::schema::ControlReply),
        AuthRefusals,
        MutatingRefusals,
        (status = 404, description = "No such pending request", body = ErrorBody),
        (status = 409, description = "Refused by a rule (target missing, playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit", body = ErrorBody),
        (status = 503, description = "The audit log refuses appends, or this replica is a standby: nothing done", body = ErrorBody),
        (status = 504, description = "Accepted, but the routing write did not finish in time", body = ErrorBody),
    )
)]
pub(super) async fn approve(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authn.caller()?;
    let playbook = state
        .break_glass
        .lock()
        .ok()
        .and_then(|b| b.pending.get(&id).map(|p| p.playbook.clone()))
        .unwrap_or_default();
    let checked = async { approve_checks(&state, &caller, &id, &body, &headers) };
    let (p, reason) = as_role(
        &state,
        &caller,
        Verb::Escalate,
        std::slice::from_ref(&playbook),
        &body,
        "break-glass-approve",
        || playbook.clone(),
        json!({ "id": id }),
        checked,
    )
    .await?;
    let why = format!(
        "break-glass {id} requested by {} ({}), approved by {}: {reason}",
        p.requested_by, p.reason, caller.identity
    );
    let recorded = record(
        &state,
        Entry {
            actor: caller.identity.clone(),
            action: "break-glass-approve".into(),
            playbook: p.playbook.clone(),
            reason: reason.clone(),
            inputs: json!({ "id": id, "target": p.target, "requestedBy": p.requested_by, "requestReason": p.reason }),
            outcome: format!("approved: failover[{}] past the fence", p.target),
            ..Entry::default()
        },
    )
    .await;
    if let Err(e) = recorded {
        // Nothing was done: the request waits again for an approval the log can record.
        if let Ok(mut book) = state.break_glass.lock() {
            book.pending.insert(id.clone(), p);
        }
        return Err(e);
    }
    page(&state, &p.playbook, &why, &caller.identity);
    let kind = ControlKind::Failover {
        target: Some(p.target),
        force: true,
        ttl: p.ttl,
        break_glass: Some(BreakGlassMark {
            id: id.clone(),
            requested_by: p.requested_by.clone(),
            approved_by: caller.identity.clone(),
        }),
    };
    let actor = Actor {
        identity: caller.identity.clone(),
        reason: why,
    };
    send(&state, Some(p.playbook), kind, actor).await
}
