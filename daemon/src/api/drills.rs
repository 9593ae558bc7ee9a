//! `/v1/drills`: list drills and their runs, show a run report, start a run.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::body::{DrillBody, parse_drill_body, read_body, require_json};
use super::error::{ApiError, ApiResult, AuthRefusals, ErrorBody, MutatingRefusals, ReadRefusals};
use super::guard::{Authn, authorize};
use super::kube_auth::Verb;
use super::operator::as_operator;
use super::state::ApiState;

/// `GET /v1/drills`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrillList {
    /// Every loaded drill, with its next scheduled time and last result.
    pub drills: Vec<crate::drill::DrillSummary>,
}

/// `GET /v1/drills/{name}/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrillRuns {
    /// The drill.
    pub drill: String,
    /// Its kept runs, newest first.
    pub runs: Vec<crate::drill::report::Run>,
}

/// `POST /v1/drills/{name}/run` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillStarted {
    /// The run id.
    pub run_id: String,
    /// The drill.
    pub drill: String,
    /// `plan` or `live`.
    pub mode: String,
    /// Where the report is (JSON; add `?format=md` for Markdown).
    pub report: String,
}

pub(super) fn drills_of(state: &ApiState) -> Option<&Arc<crate::drill::Drills>> {
    state.drills.as_ref()
}

pub(super) fn no_drill(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no drill named `{name}`"))
}

/// List drills
///
/// Every loaded drill with its schedule, next scheduled run, whether a run now would be
/// skipped, and the newest run's verdict.
#[utoipa::path(
    get,
    path = "/v1/drills",
    tag = "drills",
    operation_id = "listDrills",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The drills", body = DrillList),
        AuthRefusals,
        ReadRefusals,
    )
)]
pub(super) async fn list_drills(
    State(state): State<ApiState>,
    authn: Authn,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    let drills = drills_of(&state).map(|d| d.list()).unwrap_or_default();
    Ok(axum::Json(DrillList { drills }).into_response())
}

/// List a drill's runs
///
/// The kept runs of one drill (the last 20), newest first, with verdicts, timelines and
/// measured durations.
#[utoipa::path(
    get,
    path = "/v1/drills/{name}/runs",
    tag = "drills",
    operation_id = "listDrillRuns",
    params(("name" = String, Path, description = "Drill name (`metadata.name`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The runs", body = DrillRuns),
        AuthRefusals,
        ReadRefusals,
        (status = 404, description = "No drill with that name", body = ErrorBody),
    )
)]
pub(super) async fn list_drill_runs(
    State(state): State<ApiState>,
    authn: Authn,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    let d = drills_of(&state)
        .filter(|d| d.exists(&name))
        .ok_or_else(|| no_drill(&name))?;
    Ok(axum::Json(DrillRuns {
        runs: d.runs(&name),
        drill: name,
    })
    .into_response())
}

/// Format of `GET /v1/drills/{name}/runs/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunQuery {
    /// `json` (default) or `md` for a readable Markdown page.
    format: Option<String>,
}

/// Show a drill run
///
/// One run's report: verdict and reasons, timeline (started, written, verified, held,
/// restored) and measured durations. `?format=md` gives the same as a Markdown page.
#[utoipa::path(
    get,
    path = "/v1/drills/{name}/runs/{id}",
    tag = "drills",
    operation_id = "getDrillRun",
    params(
        ("name" = String, Path, description = "Drill name (`metadata.name`)"),
        ("id" = String, Path, description = "Run id"),
        RunQuery
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The report (JSON, or Markdown with `format=md`)",
            content((crate::drill::report::Run = "application/json"), (String = "text/markdown"))),
        (status = 400, description = "Unknown query parameter or format", body = ErrorBody),
        AuthRefusals,
        ReadRefusals,
        (status = 404, description = "No drill or run with that name and id", body = ErrorBody),
    )
)]
pub(super) async fn get_drill_run(
    State(state): State<ApiState>,
    authn: Authn,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize(&state, &authn, Verb::List, None).await?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(json!(e.body_text()))
    })?;
    let md = match q.format.as_deref() {
        None | Some("json") => false,
        Some("md" | "markdown") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown format `{other}`"),
            )
            .detail(json!("json or md")));
        }
    };
    let d = drills_of(&state)
        .filter(|d| d.exists(&name))
        .ok_or_else(|| no_drill(&name))?;
    let run = d.run(&name, &id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("drill `{name}` has no run `{id}`"),
        )
    })?;
    if md {
        return Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            run.markdown(),
        )
            .into_response());
    }
    Ok(axum::Json(run).into_response())
}

/// Run a drill now
///
/// Starts a run in the background and answers at once with its id (202); follow it at
/// `GET /v1/drills/{name}/runs/{id}`. Refused (409) when a rule forbids it: a playbook in
/// scope is failed over, failing over, frozen, held, already in a drill, or its primary is
/// not known healthy (live); or today is a blocked date or outside the allowed windows
/// (unless `force`).
#[utoipa::path(
    post,
    path = "/v1/drills/{name}/run",
    tag = "drills",
    operation_id = "runDrill",
    params(("name" = String, Path, description = "Drill name (`metadata.name`)")),
    request_body(content = DrillBody, description = "Optional: `reason`, `force`", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Started", body = DrillStarted),
        AuthRefusals,
        MutatingRefusals,
        (status = 404, description = "No drill with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (playbook failed over, frozen, held, in another drill, primary not healthy; blocked date or outside windows without force)", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, reason too long", body = ErrorBody),
        (status = 503, description = "This replica is a standby: drills run on the leader", body = ErrorBody),
    )
)]
pub(super) async fn run_drill(
    State(state): State<ApiState>,
    authn: Authn,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authn.caller()?;
    let started = async {
        let d = drills_of(&state)
            .filter(|d| d.exists(&name))
            .ok_or_else(|| no_drill(&name))?;
        let bytes = read_body(&body)?;
        require_json(&headers, bytes)?;
        let (b, reason) = parse_drill_body(bytes)?;
        d.request(
            &name,
            crate::drill::Trigger::Manual {
                identity: caller.identity.clone(),
                reason,
                force: b.force,
            },
        )
        .await
        .map_err(|r| {
            ApiError::new(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::CONFLICT),
                r.error,
            )
        })
    };
    let playbook = || name.clone();
    let inputs = json!({ "drill": name });
    // `update` on every playbook the drill moves.
    let on: Vec<String> = drills_of(&state)
        .and_then(|d| d.list().into_iter().find(|s| s.name == name))
        .map(|s| s.playbooks)
        .unwrap_or_default();
    let run = as_operator(
        &state,
        &caller,
        &on,
        &body,
        "drill-run",
        playbook,
        inputs,
        started,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DrillStarted {
            report: format!("/v1/drills/{}/runs/{}", run.drill, run.id),
            run_id: run.id,
            drill: run.drill,
            mode: run.mode,
        }),
    )
        .into_response())
}
