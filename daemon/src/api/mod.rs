//! The override API under `/v1`: read state, and force, fail back, freeze or resume a
//! playbook. Every call needs a bearer token; mutating calls need the operator role, are
//! rate-limited per identity, go through the engine and the single routing writer, and are
//! audited (refusals of authenticated callers too, within a per-identity audit budget).
//!
//! Abuse is bounded before any work that costs disk: [`guard`] runs first on every `/v1`
//! call and refuses over-long names in the path (404), counts failed authentications and
//! limits them per source address, and rate-limits mutating calls per identity — all before
//! the role check, so a viewer token cannot make fsynced 403 records at line rate. Refusals
//! beyond the limits are counted (metrics) and logged in aggregate ([`RefusalLog`]), never
//! audited one by one.
//!
//! The OpenAPI 3 description of these routes is generated from the handlers and the types
//! below ([`openapi_json`]), served open at `GET /v1/openapi.json`, and kept as
//! `docs/openapi.json` (a test fails when that copy is stale).
//!
//! One concern per file: `guard` (the middleware, authentication, refusal audit),
//! `error`, `body` (request bodies), one file per resource (`playbooks`, `actions`,
//! `overrides`, `audit`, `drills`), `openapi`, and the serving side (`server` for the
//! listener and health endpoints, `tls`, `auth` for tokens, `audit_read` for audit reads).

mod actions;
mod audit;
pub mod audit_read;
pub mod auth;
mod body;
mod breakglass;
mod drills;
mod error;
mod guard;
pub mod kube_auth;
mod openapi;
mod operator;
mod overrides;
mod pending;
mod playbooks;
mod refusals;
pub mod schema;
pub mod server;
mod state;
pub mod tls;
mod vantage;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post};

pub(crate) use actions::console_act;
pub use audit::AuditRecords;
pub use drills::{DrillList, DrillRuns, DrillStarted};
pub use error::{ApiError, ErrorBody};
pub use guard::guard;
pub(crate) use guard::{may, sign_in};
pub use openapi::openapi_json;
pub use overrides::OverrideList;
pub use playbooks::{PlaybookDetail, PlaybookList, PlaybookSummary, StoreView};
pub use refusals::RefusalLog;
pub use state::{
    AUDIT_READS, AUDIT_REFUSAL_BURST, AUDIT_REFUSALS_PER_MINUTE, AUTH_FAILURE_BURST,
    AUTH_FAILURES_PER_SECOND, ApiState, CALL_TIMEOUT, DEFAULT_TTL, MAX_BODY, MAX_NAME, MAX_PATH,
    MAX_REASON, MAX_TTL,
};

use actions::{failback, freeze, resume};
use audit::get_audit;
use drills::{get_drill_run, list_drill_runs, list_drills, run_drill};
use openapi::openapi_document;
use overrides::{delete_override, list_overrides};
use playbooks::{get_playbook, list_playbooks};

/// Every `/v1` route: method, path (axum syntax, which is also OpenAPI's) and handler.
fn table() -> Vec<(Method, &'static str, MethodRouter<ApiState>)> {
    vec![
        (Method::GET, "/v1/playbooks", get(list_playbooks)),
        (Method::GET, "/v1/playbooks/{name}", get(get_playbook)),
        (
            Method::POST,
            "/v1/playbooks/{name}/failover",
            post(breakglass::failover),
        ),
        (
            Method::POST,
            "/v1/playbooks/{name}/failback",
            post(failback),
        ),
        (Method::POST, "/v1/playbooks/{name}/freeze", post(freeze)),
        (Method::POST, "/v1/playbooks/{name}/resume", post(resume)),
        (
            Method::POST,
            "/v1/breakglass/{id}/approve",
            post(breakglass::approve),
        ),
        (Method::GET, "/v1/overrides", get(list_overrides)),
        (
            Method::DELETE,
            "/v1/overrides/{id}",
            delete(delete_override),
        ),
        (Method::GET, "/v1/audit", get(get_audit)),
        (Method::GET, "/v1/drills", get(list_drills)),
        (Method::GET, "/v1/drills/{name}/runs", get(list_drill_runs)),
        (
            Method::GET,
            "/v1/drills/{name}/runs/{id}",
            get(get_drill_run),
        ),
        (Method::POST, "/v1/drills/{name}/run", post(run_drill)),
        (Method::GET, "/v1/openapi.json", get(openapi_document)),
        (Method::GET, "/v1/vantage", get(vantage::get_vantage)),
    ]
}

/// The routes [`routes`] registers, as (method, path): the OpenAPI test checks each one is
/// documented.
pub fn registered_routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The `/v1` routes, behind [`guard`].
pub fn routes(state: ApiState) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}
