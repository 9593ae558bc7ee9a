//! `GET /v1/overrides` and `DELETE /v1/overrides/{id}`: active freezes and failover holds.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::engine::Actor;
use crate::overrides::OverrideRecord;
use crate::shared::ControlKind;

use super::actions::send;
use super::body::{Body, parse_body, read_body, require_json};
use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, MutatingRefusals, ReadRefusals};
use super::guard::{Authn, authorize, require_loaded};
use super::kube_auth::Verb;
use super::operator::as_operator;
use super::schema;
use super::state::ApiState;

/// `GET /v1/overrides`: every active override.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideList {
    /// Freezes and failover holds, oldest first.
    #[schema(value_type = Vec<schema::OverrideRecord>)]
    pub overrides: Vec<OverrideRecord>,
}

/// List overrides
///
/// Every active freeze and failover hold, on every playbook.
#[utoipa::path(
    get,
    path = "/v1/overrides",
    tag = "overrides",
    operation_id = "listOverrides",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The active overrides", body = OverrideList),
        AuthRefusals,
        ReadRefusals,
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
    )
)]
pub(super) async fn list_overrides(
    State(state): State<ApiState>,
    authn: Authn,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    require_loaded(&state)?;
    let overrides = state
        .shared
        .overrides
        .read()
        .map(|o| o.clone())
        .unwrap_or_default();
    Ok(axum::Json(OverrideList { overrides }).into_response())
}

/// Remove an override
///
/// Ends one freeze or failover hold now; automation takes over from where routing stands.
/// The body carries only the `reason`.
#[utoipa::path(
    delete,
    path = "/v1/overrides/{id}",
    tag = "overrides",
    operation_id = "deleteOverride",
    params(("id" = String, Path, description = "Override id, e.g. `ov-3f9a1c2b`")),
    request_body(content = Body, description = "`reason` (required) only", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed", body = schema::ControlReply),
        AuthRefusals,
        MutatingRefusals,
        (status = 404, description = "No override with that id", body = ErrorBody),
        (status = 409, description = "Refused by a rule (playbook inactive)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl, target or force given", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is starting (saved overrides not loaded yet) or shutting down, this replica is a standby, or (leader election) the cluster did not keep the change", body = ErrorBody),
        (status = 507, description = "Leader election: the cluster's override storage is full (delete overrides or resume playbooks first)", body = ErrorBody),
    )
)]
pub(super) async fn delete_override(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authn.caller()?;
    let checked = async {
        require_loaded(&state)?;
        // Checked here too (the controller checks again) so the refusal is audited.
        let known = state
            .shared
            .overrides
            .read()
            .map(|o| o.iter().any(|r| r.id == id))
            .unwrap_or(true);
        if !known {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no override with id `{id}`"),
            ));
        }
        let bytes = read_body(&body)?;
        require_json(&headers, bytes)?;
        let body = parse_body(bytes)?;
        if body.target.is_some() || body.ttl.is_some() || body.force {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "only `reason` applies to deleting an override",
            ));
        }
        Ok(body.reason.trim().to_string())
    };
    let playbook = || {
        state
            .shared
            .overrides
            .read()
            .ok()
            .and_then(|o| o.iter().find(|r| r.id == id).map(|r| r.playbook.clone()))
            .unwrap_or_default()
    };
    let inputs = json!({ "id": id });
    let reason = as_operator(
        &state,
        &caller,
        &[playbook()],
        &body,
        "override-delete",
        playbook,
        inputs,
        checked,
    )
    .await?;
    let actor = Actor {
        identity: caller.identity.clone(),
        reason,
    };
    send(&state, None, ControlKind::DeleteOverride { id }, actor).await
}
