//! `GET /v1/playbooks` and `GET /v1/playbooks/{name}`: playbook state and the route as the store holds it.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::Routing;
use crate::overrides::OverrideRecord;
use crate::shared::PlaybookStatus;

use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, ReadRefusals};
use super::guard::{Authn, authorize, require_loaded};
use super::kube_auth::Verb;
use super::schema;
use super::state::ApiState;

/// `GET /v1/playbooks`: one line per playbook.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybookList {
    /// The playbooks, in load order.
    pub playbooks: Vec<PlaybookSummary>,
}

/// One playbook in `GET /v1/playbooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybookSummary {
    /// Playbook name.
    pub name: String,
    /// Life-cycle phase (null until the VirtualService has been read).
    #[schema(value_type = Option<schema::PhaseName>)]
    pub phase: Option<&'static str>,
    /// Current routing as failoverd knows it (null until read).
    #[schema(value_type = Option<schema::Routing>)]
    pub routing: Option<Routing>,
    /// The last decision's explanation.
    pub explain: String,
    /// The last error on this playbook (store, audit), if any.
    pub error: Option<String>,
    /// Number of active overrides (freezes and holds) on this playbook.
    pub overrides: usize,
}

/// `GET /v1/playbooks/{name}`: one playbook in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybookDetail {
    /// Playbook name.
    pub name: String,
    /// The VirtualService it rewrites, `namespace/name`.
    #[serde(rename = "virtualService")]
    pub virtual_service: String,
    /// State, signals and recent moves.
    #[schema(value_type = Option<schema::PlaybookStatus>)]
    pub status: Option<PlaybookStatus>,
    /// What the routing store holds right now.
    pub store: StoreView,
    /// Active overrides on this playbook.
    #[schema(value_type = Vec<schema::OverrideRecord>)]
    pub overrides: Vec<OverrideRecord>,
    /// This replica as a vantage point and the peers whose verdicts it weighs.
    pub vantages: crate::vantage::VantageStatus,
}

/// The route as the store holds it: `routing` and `route`, or `error`; `source` says where
/// it was read. A viewer's read never sends a request to the API server.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreView {
    /// Where this view came from: `store` (the `file` store, read just now), `watch-cache`
    /// (the `kubernetes` store's watch: the object as last delivered), or `controller` (the
    /// watch has not synced or lacks the object: the routing failoverd last read or wrote,
    /// without `route`).
    #[schema(example = "watch-cache")]
    pub source: &'static str,
    /// failoverd's routing, from the VirtualService's state annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::Routing>)]
    pub routing: Option<Routing>,
    /// The route's destinations as they stand (`http[i].route` of the VirtualService).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Value>,
    /// Why the store could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// List playbooks
///
/// Every playbook with its phase, routing, last explanation and number of active overrides.
#[utoipa::path(
    get,
    path = "/v1/playbooks",
    tag = "playbooks",
    operation_id = "listPlaybooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The playbooks", body = PlaybookList),
        AuthRefusals,
        ReadRefusals,
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
    )
)]
pub(super) async fn list_playbooks(
    State(state): State<ApiState>,
    authn: Authn,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    require_loaded(&state)?;
    // Serve the cached body while nothing the list shows has changed: with a large fleet the
    // list is ~100 KB of JSON, and dashboards poll it far more often than it changes.
    let version = state
        .shared
        .list_version
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Ok(cache) = state.list_cache.lock()
        && let Some((v, body)) = cache.as_ref()
        && *v == version
    {
        return Ok(json_bytes(body.clone()));
    }
    // Count overrides per playbook once, and read the status table in place: copying every
    // playbook's signals and history per request would dominate the cost with a large fleet.
    let mut per_playbook: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    if let Ok(o) = state.shared.overrides.read() {
        for r in o.iter() {
            *per_playbook.entry(r.playbook.clone()).or_default() += 1;
        }
    }
    let playbooks: Vec<PlaybookSummary> = state
        .shared
        .status
        .read()
        .map(|table| {
            table
                .iter()
                .map(|s| PlaybookSummary {
                    phase: s.phase.as_ref().map(|p| p.name()),
                    routing: s.routing,
                    explain: s.explain.clone(),
                    error: s.error.clone(),
                    overrides: per_playbook.get(&s.name).copied().unwrap_or(0),
                    name: s.name.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let body = axum::body::Bytes::from(
        serde_json::to_vec(&PlaybookList { playbooks })
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    if let Ok(mut cache) = state.list_cache.lock() {
        *cache = Some((version, body.clone()));
    }
    Ok(json_bytes(body))
}

pub(super) fn json_bytes(body: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Show one playbook
///
/// State, signals, recent moves, the route as the store holds it now, and active overrides.
#[utoipa::path(
    get,
    path = "/v1/playbooks/{name}",
    tag = "playbooks",
    operation_id = "getPlaybook",
    params(("name" = String, Path, description = "Playbook name (`metadata.name`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The playbook", body = PlaybookDetail),
        AuthRefusals,
        ReadRefusals,
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
    )
)]
pub(super) async fn get_playbook(
    State(state): State<ApiState>,
    authn: Authn,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::Get, Some(&name)).await?;
    require_loaded(&state)?;
    let idx = state.shared.index(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no playbook named `{name}`"))
    })?;
    let status = state.shared.snapshot().into_iter().nth(idx);
    let pb = state.shared.playbooks[idx].clone();
    // The watch cache (or, for the file store, the file): never the API server, never a
    // token a routing write needs. Without it, the controller's last-known routing.
    let store = match state.store.viewer_read(&pb).await {
        Some((source, Ok(v))) => StoreView {
            source: source.as_str(),
            routing: Some(v.routing),
            route: Some(v.route),
            error: None,
        },
        Some((source, Err(e))) => StoreView {
            source: source.as_str(),
            routing: None,
            route: None,
            error: Some(e.to_string()),
        },
        None => {
            let routing = status.as_ref().and_then(|s| s.routing);
            StoreView {
                source: crate::routing::ViewSource::Controller.as_str(),
                routing,
                route: None,
                error: routing
                    .is_none()
                    .then(|| "the route has not been read yet".to_string()),
            }
        }
    };
    let overrides: Vec<_> = state
        .shared
        .overrides
        .read()
        .map(|o| o.iter().filter(|r| r.playbook == name).cloned().collect())
        .unwrap_or_default();
    Ok(axum::Json(PlaybookDetail {
        virtual_service: pb.spec.virtual_service.to_string(),
        name,
        status,
        store,
        overrides,
        vantages: state.shared.vantage.status(),
    })
    .into_response())
}
