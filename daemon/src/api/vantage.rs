//! `GET /v1/vantage`: this replica's verdicts on every target, as the other replicas poll
//! them to agree before a failover (see `crate::vantage`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use crate::vantage::Report;

use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, ReadRefusals};
use super::guard::{Authn, authorize};
use super::kube_auth::Verb;
use super::state::ApiState;

/// `GET /v1/vantage` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct VantageQuery {
    /// The `version` last seen: the answer waits (at most one exchange interval) until the
    /// verdicts differ from it. Absent: answered at once.
    #[param(minimum = 0)]
    wait: Option<u64>,
}

/// This replica's verdicts (for the other vantages)
///
/// Per playbook and target: `healthy`, `suspect` (failing below its trigger), `unhealthy` or
/// `unknown`, as this replica's own probes and SLOs see it. A replica whose controller has
/// not evaluated for three exchange intervals reports every target unknown.
#[utoipa::path(
    get,
    path = "/v1/vantage",
    tag = "vantage",
    operation_id = "getVantage",
    params(VantageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This replica's verdicts", body = Report),
        (status = 400, description = "Unknown or malformed query parameter", body = ErrorBody),
        AuthRefusals,
        ReadRefusals,
    )
)]
pub(super) async fn get_vantage(
    State(state): State<ApiState>,
    authn: Authn,
    query: Result<Query<VantageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(json!(e.body_text()))
    })?;
    let report = match q.wait {
        // Held at most one exchange interval (bounded; the connection cap applies).
        Some(seen) => state.shared.vantage.report_after(seen).await,
        None => state.shared.vantage.report(),
    };
    Ok(axum::Json(report).into_response())
}
