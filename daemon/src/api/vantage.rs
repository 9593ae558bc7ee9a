//! `GET /v1/vantage`: this replica's verdicts on every target, as the other replicas poll
//! them to agree before a failover (see `crate::vantage`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::vantage::Report;

use super::error::{ApiResult, AuthRefusals, ReadRefusals};
use super::guard::{Authn, authorize};
use super::kube_auth::Verb;
use super::state::ApiState;

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
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This replica's verdicts", body = Report),
        AuthRefusals,
        ReadRefusals,
    )
)]
pub(super) async fn get_vantage(
    State(state): State<ApiState>,
    authn: Authn,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    Ok(axum::Json(state.shared.vantage.report()).into_response())
}
