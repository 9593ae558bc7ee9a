//! `GET /v1/audit`: filtered reads of the hash-chained audit log.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::audit::Record;

use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, ReadRefusals};
use super::guard::{Authn, authorize};
use super::kube_auth::Verb;
use super::schema;
use super::state::{AUDIT_READ_WAIT, ApiState};

/// `GET /v1/audit`: audit records, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecords {
    /// The matching records (the newest `limit` of them).
    #[schema(value_type = Vec<schema::AuditRecord>)]
    pub records: Vec<Record>,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only records about this playbook.
    playbook: Option<String>,
    /// Only records by this actor (`engine`, `failoverd` or an operator identity).
    actor: Option<String>,
    /// Only records written at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// At most this many records: the newest (default 100, at most 10000), or with
    /// `afterSeq` the first (default 1000, at most 10000).
    #[param(minimum = 0)]
    limit: Option<usize>,
    /// Only records with a greater `seq`, oldest first, the first `limit` of them: how a
    /// replica or a log pipeline copies the chain forward (read forward from that seq,
    /// never the whole log).
    #[serde(rename = "afterSeq")]
    #[param(rename = "afterSeq", minimum = 0)]
    after_seq: Option<u64>,
}

/// Read the audit log
///
/// Audit records, oldest first, optionally filtered; the newest `limit` of them, or with
/// `afterSeq=N` the first `limit` records with `seq > N` (the chain copied forward).
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    operation_id = "getAudit",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The matching records", body = AuditRecords),
        (status = 400, description = "Unknown or malformed query parameter", body = ErrorBody),
        AuthRefusals,
        ReadRefusals,
        (status = 500, description = "The audit log cannot be read", body = ErrorBody),
        (status = 503, description = "Too many audit log reads at once", body = ErrorBody),
    )
)]
pub(super) async fn get_audit(
    State(state): State<ApiState>,
    authn: Authn,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
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
    let after = q.after_seq;
    let limit = match after {
        None => q.limit.unwrap_or(100).min(10_000),
        Some(_) => {
            let (default, max) = super::audit_read::AFTER_SEQ_LIMIT;
            q.limit.unwrap_or(default).min(max)
        }
    };
    let path = state.audit_path.clone();
    let filter = super::audit_read::Filter {
        playbook: q.playbook,
        actor: q.actor,
        since,
    };
    // At most AUDIT_READS at once; the turn is held by the read itself, so a client that
    // hangs up does not free it before the read ends.
    let turn = tokio::time::timeout(AUDIT_READ_WAIT, state.audit_reads.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many audit log reads at once",
            )
            .detail(json!("retry in a few seconds"))
        })?;
    // Read backwards from the end: O(limit), whatever the (never rotated) log's size.
    let records = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        match after {
            Some(n) => super::audit_read::read_after(&path, n, limit, &filter),
            None => super::audit_read::read_last(&path, limit, &filter),
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the audit log: {e}"),
        )
    })?;
    Ok(axum::Json(AuditRecords { records }).into_response())
}
