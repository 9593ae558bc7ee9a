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
mod drills;
mod error;
mod guard;
mod openapi;
mod overrides;
mod playbooks;
mod refusals;
pub mod server;
pub mod tls;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;

use crate::audit::AuditLog;
use crate::routing::RoutingStore;
use crate::runtime::{Control, Shared};
use auth::Tokens;

pub use audit::AuditRecords;
pub use drills::{DrillList, DrillRuns, DrillStarted};
pub use error::{ApiError, ErrorBody};
pub use guard::guard;
pub use openapi::{openapi_json, schema};
pub use overrides::OverrideList;
pub use playbooks::{PlaybookDetail, PlaybookList, PlaybookSummary, StoreView};
pub use refusals::RefusalLog;

use actions::{failback, failover, freeze, resume};
use audit::get_audit;
use drills::{get_drill_run, list_drill_runs, list_drills, run_drill};
use openapi::openapi_document;
use overrides::{delete_override, list_overrides};
use playbooks::{get_playbook, list_playbooks};

/// Largest request body: a reason and a few fields. Anything bigger is not an override.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest reason accepted (it lands in every audit record and alert).
pub const MAX_REASON: usize = 1024;
/// Default TTL of failover holds and freezes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest TTL: an override forgotten for weeks is an incident of its own.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time an operator call waits for its routing write before answering anyway.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest name (playbook, drill, override id, run id) accepted in a path segment: the
/// Kubernetes limit for object names. Longer segments are refused (404) before anything
/// else, so no record or log line ever carries one.
pub const MAX_NAME: usize = 253;
/// Longest request path accepted (404 beyond, before anything else).
pub const MAX_PATH: usize = 1024;
/// Refusals of one identity's mutating calls that are audited at once (a burst), before
/// [`AUDIT_REFUSALS_PER_MINUTE`] applies; beyond the budget refusals are counted and logged
/// in aggregate.
pub const AUDIT_REFUSAL_BURST: u32 = 30;
/// Audited refusals per identity per minute once the burst is spent.
pub const AUDIT_REFUSALS_PER_MINUTE: u32 = 10;
/// Failed authentications answered 401 from one source address in a burst; beyond it
/// (and [`AUTH_FAILURES_PER_SECOND`]) the address gets 429.
pub const AUTH_FAILURE_BURST: u32 = 60;
/// Failed authentications per source address per second once the burst is spent.
pub const AUTH_FAILURES_PER_SECOND: u32 = 10;
/// One aggregate log line per key (identity or address) per this window.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);
/// Most keys the aggregate refusal log keeps (stale ones are dropped first).
const REFUSAL_LOG_KEYS: usize = 4096;
/// `GET /v1/audit` reads at once: each may hold up to 10,000 records and scan far back for
/// a filter, so many at once would be a viewer's way to exhaust memory and disk time.
pub const AUDIT_READS: usize = 2;
/// How long a `GET /v1/audit` waits for a turn before answering 503.
const AUDIT_READ_WAIT: Duration = Duration::from_secs(10);
/// Source addresses the failed-authentication limiter keeps before forgetting recovered ones.
const LIMITER_KEYS: usize = 10_000;

/// Everything the API handlers need.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Shared daemon state.
    pub shared: Arc<Shared>,
    /// Accepted tokens.
    pub tokens: Arc<Tokens>,
    /// The controller's inbox.
    pub control: mpsc::Sender<Control>,
    /// The routing store (reads only, for "current routing").
    pub store: Arc<dyn RoutingStore>,
    /// The audit log (for refusals the controller never sees).
    pub audit: Arc<Mutex<AuditLog>>,
    /// The audit log's path (for `GET /v1/audit`).
    pub audit_path: PathBuf,
    /// Per-identity limit on mutating calls (checked before the role check).
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Per-source-address limit on failed authentications.
    pub auth_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Per-identity budget of audited refusals.
    pub audit_budget: Arc<DefaultKeyedRateLimiter<String>>,
    /// Refusals not audited one by one, logged in aggregate.
    pub refusals: Arc<RefusalLog>,
    /// `GET /v1/audit` reads running at once (each holds up to `limit` records).
    pub audit_reads: Arc<tokio::sync::Semaphore>,
    /// `GET /v1/playbooks` body and the `Shared::list_version` it was built at.
    pub list_cache: Arc<Mutex<Option<(u64, axum::body::Bytes)>>>,
    /// The drill service (None: no drills loaded).
    pub drills: Option<Arc<crate::drill::Drills>>,
}

impl ApiState {
    /// Builds the state with the default rate limit (5 calls/s per identity, bursts of 20:
    /// plenty for a person or a runbook script, not for a runaway loop).
    pub fn new(
        shared: Arc<Shared>,
        tokens: Arc<Tokens>,
        control: mpsc::Sender<Control>,
        store: Arc<dyn RoutingStore>,
        audit: Arc<Mutex<AuditLog>>,
        audit_path: PathBuf,
    ) -> Self {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(nz(5)).allow_burst(nz(20));
        let auth_quota =
            Quota::per_second(nz(AUTH_FAILURES_PER_SECOND)).allow_burst(nz(AUTH_FAILURE_BURST));
        let audit_quota =
            Quota::per_minute(nz(AUDIT_REFUSALS_PER_MINUTE)).allow_burst(nz(AUDIT_REFUSAL_BURST));
        Self {
            shared,
            tokens,
            control,
            store,
            audit,
            audit_path,
            limiter: Arc::new(RateLimiter::keyed(quota)),
            auth_limiter: Arc::new(RateLimiter::keyed(auth_quota)),
            audit_budget: Arc::new(RateLimiter::keyed(audit_quota)),
            refusals: Arc::new(RefusalLog::default()),
            audit_reads: Arc::new(tokio::sync::Semaphore::new(AUDIT_READS)),
            list_cache: Arc::default(),
            drills: None,
        }
    }
}

/// Every `/v1` route: method, path (axum syntax, which is also OpenAPI's) and handler.
fn table() -> Vec<(Method, &'static str, MethodRouter<ApiState>)> {
    vec![
        (Method::GET, "/v1/playbooks", get(list_playbooks)),
        (Method::GET, "/v1/playbooks/{name}", get(get_playbook)),
        (
            Method::POST,
            "/v1/playbooks/{name}/failover",
            post(failover),
        ),
        (
            Method::POST,
            "/v1/playbooks/{name}/failback",
            post(failback),
        ),
        (Method::POST, "/v1/playbooks/{name}/freeze", post(freeze)),
        (Method::POST, "/v1/playbooks/{name}/resume", post(resume)),
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
