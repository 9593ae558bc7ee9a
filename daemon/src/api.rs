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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::audit::{AuditLog, Entry, Record};
use crate::auth::{AuthError, Caller, Role, Tokens};
use crate::engine::{Actor, Routing};
use crate::overrides::OverrideRecord;
use crate::playbook::{Duration as PbDuration, Target};
use crate::routing::RoutingStore;
use crate::runtime::{Control, ControlKind, ControlReply, PlaybookStatus, Shared};

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

/// Refusals that are not audited one by one (rate-limited calls, failed authentications,
/// refusals beyond an identity's audit budget), logged in aggregate: the first of a window
/// at once, then one line per key per [`REFUSAL_LOG_WINDOW`] with the count, so a flood
/// costs a few log lines, not one per call.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RefusalLog {
    /// Notes one refusal of `key` (e.g. `identity alice`, `address 10.0.0.7`) for `what`
    /// (e.g. `rate limited`); logs when a window starts or has ended.
    pub fn note(&self, key: &str, what: &str) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let now = Instant::now();
        if w.len() >= REFUSAL_LOG_KEYS && !w.contains_key(key) {
            w.retain(|_, (start, _)| now.duration_since(*start) < REFUSAL_LOG_WINDOW);
            if w.len() >= REFUSAL_LOG_KEYS {
                // Still full of live keys: count this one under a shared key.
                return self.note_in(&mut w, "other callers", what, now);
            }
        }
        self.note_in(&mut w, key, what, now);
    }

    /// Logs the counts of windows that have ended with refusals not logged yet, and forgets
    /// their keys (call every [`REFUSAL_LOG_WINDOW`], so the count of a flood's last window
    /// is not lost when the flood stops).
    pub fn flush(&self) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let now = Instant::now();
        w.retain(|key, (start, n)| {
            let elapsed = now.duration_since(*start);
            if elapsed < REFUSAL_LOG_WINDOW {
                return true;
            }
            if *n > 0 {
                tracing::warn!(key = ?key, refused = *n, seconds = elapsed.as_secs(), "API calls refused in aggregate");
            }
            false
        });
    }

    fn note_in(
        &self,
        w: &mut HashMap<String, (Instant, u64)>,
        key: &str,
        what: &str,
        now: Instant,
    ) {
        match w.get_mut(key) {
            None => {
                w.insert(key.to_string(), (now, 0));
                // `?`: escaped, whatever the key holds.
                tracing::warn!(key = ?key, what, "API call refused (further refusals of this key are counted and logged every 10 s)");
            }
            Some((start, n)) => {
                *n += 1;
                let elapsed = now.duration_since(*start);
                if elapsed >= REFUSAL_LOG_WINDOW {
                    tracing::warn!(key = ?key, what, refused = *n, seconds = elapsed.as_secs(), "API calls refused in aggregate");
                    *start = now;
                    *n = 0;
                }
            }
        }
    }
}

/// Body of every JSON error: a one-line `error` and an optional `detail` (a hint, the parser's
/// message, or null).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "error": "reason must not be empty", "detail": "say why, e.g. an incident id: it goes into the audit log" }))]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// More about it (a hint or the parser's message), or null.
    pub detail: Value,
}

/// A JSON error: `{ "error": "...", "detail": ... }` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: Value,
}

impl ApiError {
    /// An error with no detail.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: Value::Null,
        }
    }

    fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(ErrorBody {
                error: self.error,
                detail: self.detail,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(v) = header::HeaderValue::from_str("Bearer realm=\"failoverd\"")
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

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

/// `GET /v1/overrides`: every active override.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverrideList {
    /// Freezes and failover holds, oldest first.
    #[schema(value_type = Vec<schema::OverrideRecord>)]
    pub overrides: Vec<OverrideRecord>,
}

/// `GET /v1/audit`: audit records, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecords {
    /// The matching records (the newest `limit` of them).
    #[schema(value_type = Vec<schema::AuditRecord>)]
    pub records: Vec<Record>,
}

/// OpenAPI mirrors of types the API returns but other modules define (the engine, the
/// runtime, the override store and the audit log). They only describe the JSON; the test
/// suite checks live answers against them, so a drift shows.
pub mod schema {
    use serde_json::Value;
    use utoipa::ToSchema;

    /// Where traffic goes: the original route, all on a failover target, or a failback step.
    #[derive(Debug, ToSchema)]
    #[serde(tag = "to", rename_all = "camelCase")]
    pub enum Routing {
        /// The original route exactly.
        Primary,
        /// All traffic on failover target `target`.
        Failover {
            /// Index into `spec.failover`.
            target: usize,
        },
        /// A failback step: `primaryPercent` on the primary, the rest on `target`.
        #[serde(rename_all = "camelCase")]
        Split {
            /// Index into `spec.failover`.
            target: usize,
            /// Percent on the primary, 1..=99.
            primary_percent: u8,
        },
    }

    /// Short name of a life-cycle phase.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub enum PhaseName {
        /// On the primary.
        Normal,
        /// On the primary, primary failing below the trigger.
        Suspect,
        /// All traffic on a failover target.
        FailedOver,
        /// Failed over, primary healthy, waiting for `failback.after`.
        Recovering,
        /// Returning to the primary in steps.
        FailingBack,
        /// Automation frozen by an operator.
        Frozen,
    }

    /// A playbook's life-cycle phase with its details.
    #[derive(Debug, ToSchema)]
    #[serde(tag = "phase", rename_all = "camelCase")]
    pub enum Phase {
        /// On the primary, primary healthy or unknown.
        Normal,
        /// On the primary, primary failing but the trigger not yet met.
        Suspect {
            /// When the primary started failing.
            #[schema(format = DateTime)]
            since: String,
        },
        /// All traffic on a failover target.
        FailedOver {
            /// Index into `spec.failover`.
            target: usize,
            /// When traffic moved there.
            #[schema(format = DateTime)]
            since: String,
        },
        /// Failed over, primary healthy, waiting for `failback.after` (or an operator).
        Recovering {
            /// Index into `spec.failover`.
            target: usize,
            /// Since when the primary has been healthy.
            #[schema(format = DateTime)]
            since: String,
        },
        /// Traffic returning to the primary in steps.
        FailingBack {
            /// Index into `spec.failover`.
            target: usize,
            /// Index into `failback.steps` of the step in force.
            step: usize,
            /// When that step was written.
            #[schema(format = DateTime)]
            since: String,
        },
        /// An operator froze automation; routing stays as it is.
        Frozen {
            /// When the freeze ends (null: until resumed).
            #[schema(format = DateTime)]
            until: Option<String>,
        },
    }

    /// A failover target in a request: `failover[N]` or the index N.
    #[derive(Debug, ToSchema)]
    #[serde(untagged)]
    pub enum TargetSpec {
        /// `failover[N]` (0-based index into `spec.failover`).
        #[schema(example = "failover[0]")]
        Name(String),
        /// N (0-based index into `spec.failover`).
        Index(u64),
    }

    /// What one signal said last.
    #[derive(Debug, ToSchema)]
    #[serde(tag = "state", content = "reason", rename_all = "camelCase")]
    pub enum Health {
        /// The signal saw its target working.
        Healthy,
        /// The signal saw its target failing, and why.
        Unhealthy(String),
        /// The signal could not tell, and why.
        Unknown(String),
    }

    /// Whether a signal is an active probe or an SLO.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub enum SignalKind {
        /// Active probe.
        Probe,
        /// SLO.
        Slo,
    }

    /// A duration as seconds and nanoseconds.
    #[derive(Debug, ToSchema)]
    pub struct StdDuration {
        /// Whole seconds.
        pub secs: u64,
        /// Nanoseconds past `secs`.
        pub nanos: u32,
    }

    /// The current summary of one signal.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Observation {
        /// Probe or SLO name from the playbook.
        pub signal: String,
        /// Probe or SLO.
        pub kind: SignalKind,
        /// The destination it speaks for: `primary` or `failover[N]`.
        #[schema(pattern = r"^(primary|failover\[[0-9]+\])$")]
        pub target: String,
        /// The latest result.
        pub health: Health,
        /// Consecutive results of the same kind as the latest, including it.
        pub streak: u32,
        /// When the current streak began.
        #[schema(format = DateTime)]
        pub streak_since: String,
        /// When the latest result arrived.
        #[schema(format = DateTime)]
        pub at: String,
        /// A result older than this is stale.
        pub max_age: StdDuration,
    }

    /// Why traffic moved.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub enum MoveKind {
        /// Primary failed; traffic to a failover target.
        Failover,
        /// The failover target failed; traffic to another healthy destination.
        Switch,
        /// One step of a stepped failback.
        FailbackStep,
        /// Traffic back on the original route.
        Failback,
        /// The primary failed during the failback ramp.
        FailbackAborted,
        /// An operator's failover hold.
        OperatorFailover,
        /// An operator's failback.
        OperatorFailback,
    }

    /// One move.
    #[derive(Debug, ToSchema)]
    pub struct Transition {
        /// When the write completed.
        #[schema(format = DateTime)]
        pub time: String,
        /// What kind of move.
        pub kind: MoveKind,
        /// Routing before.
        pub from: Routing,
        /// Routing after.
        pub to: Routing,
        /// Why.
        pub reason: String,
        /// Who (`engine` or an operator).
        pub actor: String,
    }

    /// What the daemon shows about one playbook.
    #[derive(Debug, ToSchema)]
    pub struct PlaybookStatus {
        /// Playbook name.
        pub name: String,
        /// Life-cycle phase (null until the store has been read).
        pub phase: Option<Phase>,
        /// Current routing as failoverd knows it.
        pub routing: Option<Routing>,
        /// The last decision's explanation.
        pub explain: String,
        /// The last error on this playbook, if any.
        pub error: Option<String>,
        /// Latest observation per signal.
        pub signals: Vec<Observation>,
        /// Recent moves, newest last.
        pub transitions: Vec<Transition>,
    }

    /// Kind of an override.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub enum OverrideKind {
        /// Automation frozen: no automatic moves.
        Freeze,
        /// Failover held to a target until the TTL ends.
        Failover,
    }

    /// One active override (freeze or failover hold); persisted, so it survives restarts.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct OverrideRecord {
        /// Stable id, e.g. `ov-3f9a1c2b`.
        #[schema(example = "ov-3f9a1c2b")]
        pub id: String,
        /// The playbook it applies to.
        pub playbook: String,
        /// Freeze or failover hold.
        pub kind: OverrideKind,
        /// Authenticated identity of the operator.
        pub actor: String,
        /// The operator's reason.
        pub reason: String,
        /// When it was created.
        #[schema(format = DateTime)]
        pub created: String,
        /// When it ends.
        #[schema(format = DateTime)]
        pub until: String,
        /// Failover target index (holds only).
        pub target: Option<usize>,
        /// Route to the target even if failoverd believes it unhealthy (holds only).
        pub force: bool,
    }

    /// One audit record (hash-chained JSON Lines).
    #[derive(Debug, ToSchema)]
    pub struct AuditRecord {
        /// Sequence number, from 1, without gaps.
        pub seq: u64,
        /// When it was written.
        #[schema(format = DateTime)]
        pub time: String,
        /// SHA-256 (hex) of the previous line.
        pub prev: String,
        /// `engine` for automatic moves, else the operator's identity.
        pub actor: String,
        /// What happened: `failover`, `override-freeze`, `operator-failover`, ...
        pub action: String,
        /// The playbook concerned (empty for daemon-wide records).
        pub playbook: String,
        /// Why, in words.
        pub reason: String,
        /// The observations and values that caused it.
        pub inputs: Value,
        /// Route before.
        pub before: Value,
        /// Route after.
        pub after: Value,
        /// `intent`, `written`, `unchanged`, `accepted`, `failed: ...`, `refused: ...`, `noted`.
        pub outcome: String,
    }

    /// A successful operator call.
    #[derive(Debug, ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ControlReply {
        /// What happened.
        pub message: String,
        /// The override created, if any.
        pub override_id: Option<String>,
        /// Routing after the call.
        pub routing: Option<Routing>,
        /// True when the call wrote the routing store.
        pub written: bool,
    }
}

/// The OpenAPI document of the `/v1` routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "failoverd override API",
        description = "Read the state of failoverd's playbooks and force, fail back, freeze or resume them.\n\nEvery call except this document needs `Authorization: Bearer <token>`; reads need the viewer role, mutating calls the operator role. Mutating calls are rate-limited per identity (before the role check) and audited; refusals of authenticated callers are audited within a per-identity budget (bursts of 30, then 10 a minute), never 401 or 429. Failed authentications are limited per source address. Bodies must be `Content-Type: application/json`. Errors are JSON `{ \"error\": \"...\", \"detail\": ... }`.",
        license(name = "Apache-2.0")
    ),
    paths(
        list_playbooks,
        get_playbook,
        failover,
        failback,
        freeze,
        resume,
        list_overrides,
        delete_override,
        get_audit,
        list_drills,
        list_drill_runs,
        get_drill_run,
        run_drill,
        openapi_document
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "playbooks", description = "Playbook state and operator actions"),
        (name = "overrides", description = "Active freezes and failover holds"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "drills", description = "Chaos drills: scheduled and on-demand failover exercises with reports"),
        (name = "meta", description = "This document")
    )
)]
struct ApiDoc;

/// Adds the `bearer` security scheme the paths refer to.
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the daemon's token file (`--tokens`, which holds only SHA-256 hashes of tokens).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3 document of the `/v1` routes, pretty-printed with a trailing newline (the
/// form committed as `docs/openapi.json`).
pub fn openapi_json() -> String {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(e) => format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}\n"),
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

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Runs before every `/v1` handler, in this order, so abuse is refused before it costs a
/// role check, a disk write or an fsync: (1) a path longer than [`MAX_PATH`] or with a
/// segment longer than [`MAX_NAME`] → 404; (2) a failed authentication is counted
/// (`failoverd_api_auth_failures_total{reason}`), logged in aggregate, and limited per
/// source address (429 beyond the limit; the handler's 401 otherwise); (3) a mutating call
/// by an authenticated caller is rate-limited per identity (429, not audited). The handlers
/// then check the role and audit refusals within the identity's audit budget.
pub async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/v1/openapi.json" {
        return next.run(req).await;
    }
    if path.len() > MAX_PATH || path.split('/').any(|seg| seg.len() > MAX_NAME) {
        return ApiError::new(StatusCode::NOT_FOUND, "not found")
            .detail(json!(format!(
                "names are at most {MAX_NAME} bytes and paths at most {MAX_PATH}"
            )))
            .into_response();
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.tokens.authenticate(auth) {
        Err(e) => {
            let reason = match e {
                AuthError::NotConfigured => "not_configured",
                AuthError::Missing => "missing",
                AuthError::Invalid => "invalid",
            };
            let m = &state.shared.metrics;
            m.api_auth_failures
                .get_or_create(&crate::metrics::labels([("reason", reason)]))
                .inc();
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            let key = format!("address {ip}");
            // One entry per address ever seen: drop the ones whose limit has recovered
            // before the map grows large.
            if state.auth_limiter.len() > LIMITER_KEYS {
                state.auth_limiter.retain_recent();
            }
            if state.auth_limiter.check_key(&ip).is_err() {
                m.api_rate_limited
                    .get_or_create(&crate::metrics::labels([("by", "address")]))
                    .inc();
                state
                    .refusals
                    .note(&key, "failed authentications, rate limited");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address",
                )
                .detail(json!("retry in a second with a valid bearer token"))
                .into_response();
            }
            state.refusals.note(&key, "failed authentication");
            next.run(req).await
        }
        Ok(caller) => {
            if is_mutating(req.method()) && state.limiter.check_key(&caller.identity).is_err() {
                state
                    .shared
                    .metrics
                    .api_rate_limited
                    .get_or_create(&crate::metrics::labels([("by", "identity")]))
                    .inc();
                state
                    .refusals
                    .note(&format!("identity {}", caller.identity), "rate limited");
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "rate limit for {} exceeded; retry in a second",
                        caller.identity
                    ),
                )
                .into_response();
            }
            next.run(req).await
        }
    }
}

/// 415 unless a non-empty body says it is JSON (`Content-Type: application/json`, with
/// optional parameters). An empty body needs no type (its own error, or a plain drill run).
fn require_json(headers: &HeaderMap, bytes: &Bytes) -> ApiResult<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let ok = ct.as_deref().is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "request body must be JSON (Content-Type: application/json)",
    )
    .detail(match ct {
        Some(v) => json!(format!(
            "got Content-Type `{}`",
            v.chars().take(100).collect::<String>().escape_debug()
        )),
        None => json!("no Content-Type header"),
    }))
}

/// 503 until the saved state (overrides) is loaded and published: before that, an empty
/// override list would read as "not frozen" while a freeze holds.
fn require_loaded(state: &ApiState) -> ApiResult<()> {
    if state.shared.state_loaded.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the saved overrides are not loaded yet",
        )
        .detail(json!("retry in a moment")))
    }
}

fn authenticate(state: &ApiState, headers: &HeaderMap, need: Role) -> ApiResult<Caller> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = state.tokens.authenticate(h).map_err(|e| match e {
        AuthError::NotConfigured => ApiError::new(StatusCode::UNAUTHORIZED, "authentication is not configured")
            .detail(json!("start failoverd with --tokens FILE (YAML: - { identity, role, sha256 }) to enable the API")),
        AuthError::Missing => ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token")
            .detail(json!("send Authorization: Bearer <token>")),
        AuthError::Invalid => ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token"),
    })?;
    if caller.role < need {
        return Err(forbidden(&caller, need));
    }
    Ok(caller)
}

fn forbidden(caller: &Caller, need: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} has role {:?}; this call needs {:?}",
            caller.identity, caller.role, need
        ),
    )
}

/// Records the refusal of an authenticated caller's mutating call.
async fn audit_refusal(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    playbook: &str,
    reason: &str,
    mut inputs: Value,
    err: &ApiError,
) {
    // Rate-limited calls are not audited one by one: the limit exists to bound the work a
    // runaway client causes, and an fsynced record per rejected call would defeat it. They
    // are logged instead.
    if err.status == StatusCode::TOO_MANY_REQUESTS {
        state
            .refusals
            .note(&format!("identity {}", caller.identity), "rate limited");
        return;
    }
    // Within the identity's audit budget each refusal is recorded; beyond it (a client
    // looping on a refused call) they are counted and logged in aggregate, so the number of
    // records a flood can cause is bounded per identity.
    if state.audit_budget.check_key(&caller.identity).is_err() {
        state.shared.metrics.api_refusals_unaudited.inc();
        state.refusals.note(
            &format!("identity {}", caller.identity),
            "refused, beyond the audit budget",
        );
        return;
    }
    let log = state.audit.clone();
    inputs["status"] = json!(err.status.as_u16());
    let entry = Entry {
        actor: caller.identity.clone(),
        action: action.to_string(),
        // Path-derived: at most MAX_NAME bytes ([`guard`]); cut again so a record never
        // depends on that alone.
        playbook: playbook.chars().take(MAX_NAME).collect(),
        // A refused call may carry any reason, even a huge one: keep the record bounded.
        reason: reason.chars().take(MAX_REASON).collect(),
        inputs,
        outcome: format!("refused: {}", err.error),
        ..Entry::default()
    };
    let res = tokio::task::spawn_blocking(move || {
        log.lock()
            .map_err(|_| ())
            .and_then(|mut l| l.append(entry).map(|_| ()).map_err(|_| ()))
    })
    .await;
    if !matches!(res, Ok(Ok(()))) {
        state.shared.metrics.audit_errors.inc();
        tracing::error!("audit append failed for a refused call");
    }
}

/// The `reason` of a body that was refused, if it has one (for the audit record).
fn reason_of(body: &Result<Bytes, BytesRejection>) -> String {
    body.as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
        .unwrap_or_default()
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
    )
)]
async fn list_playbooks(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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

fn json_bytes(body: axum::body::Bytes) -> Response {
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
    )
)]
async fn get_playbook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
    })
    .into_response())
}

/// Body of the mutating calls. Only `reason` is required; the other fields apply to some
/// calls only (see each call) and are refused (422) where they do not.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OverrideRequest, example = json!({ "reason": "INC-1234: eu-west primary degraded", "ttl": "1h" }))]
struct Body {
    /// Why (an incident id, a change ticket): goes into the audit log. Not empty, at most
    /// 1024 characters.
    #[schema(min_length = 1, max_length = 1024)]
    reason: String,
    /// How long a failover hold or freeze lasts (`30m`, `2h`, `1d`); default `1h`, greater
    /// than 0 and at most 7 days. Failover and freeze only.
    #[serde(default)]
    #[schema(example = "1h")]
    ttl: Option<String>,
    /// Failover target: `failover[N]` or N; default: the first healthy target. Failover only.
    #[serde(default)]
    #[schema(value_type = Option<schema::TargetSpec>)]
    target: Option<Value>,
    /// Route there even if failoverd believes the target (or, for failback, the primary)
    /// unhealthy. Failover and failback only.
    #[serde(default)]
    force: bool,
}

/// The request body, or the JSON error for one that could not be read (too large: 413).
fn read_body(body: &Result<Bytes, BytesRejection>) -> ApiResult<&Bytes> {
    body.as_ref().map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(e.status(), "cannot read the request body").detail(json!(e.body_text()))
        }
    })
}

fn parse_body(bytes: &Bytes) -> ApiResult<Body> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    let body: Body = serde_json::from_slice(bytes).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid request body").detail(json!(e.to_string()))
    })?;
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reason must not be empty").detail(
                json!("say why, e.g. an incident id: it goes into the audit log"),
            ),
        );
    }
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason longer than {MAX_REASON} characters"),
        ));
    }
    Ok(body)
}

fn ttl_of(body: &Body) -> ApiResult<Duration> {
    let Some(t) = &body.ttl else {
        return Ok(DEFAULT_TTL);
    };
    let d = PbDuration::parse(t).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid ttl").detail(json!(e))
    })?;
    if d.get().is_zero() || d.get() > MAX_TTL {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl must be greater than 0s and at most 7d",
        ));
    }
    Ok(d.get())
}

fn target_of(body: &Body) -> ApiResult<Option<usize>> {
    let bad = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "target must be `failover[N]` or N",
        )
    };
    match &body.target {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => match s.parse::<Target>() {
            Ok(Target::Failover(i)) => Ok(Some(i)),
            Ok(Target::Primary) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "target `primary`: use failback to return to the primary",
            )),
            Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
        },
        Some(_) => Err(bad()),
    }
}

fn control_kind(action: &str, body: &Body) -> ApiResult<ControlKind> {
    let only = |what: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} does not apply to {action}"),
        )
    };
    match action {
        "failover" => Ok(ControlKind::Failover {
            target: target_of(body)?,
            force: body.force,
            ttl: ttl_of(body)?,
        }),
        "failback" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.ttl.is_some() {
                return Err(only("ttl"));
            }
            Ok(ControlKind::Failback { force: body.force })
        }
        "freeze" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.force {
                return Err(only("force"));
            }
            Ok(ControlKind::Freeze { ttl: ttl_of(body)? })
        }
        "resume" => {
            if body.target.is_some() || body.ttl.is_some() || body.force {
                return Err(only("target, ttl or force"));
            }
            Ok(ControlKind::Resume)
        }
        other => Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown action `{other}`"))
                .detail(json!("one of failover, failback, freeze, resume")),
        ),
    }
}

async fn send(
    state: &ApiState,
    playbook: Option<String>,
    kind: ControlKind,
    actor: Actor,
) -> ApiResult<Response> {
    let (tx, rx) = oneshot::channel();
    state
        .control
        .send(Control {
            playbook: playbook.clone(),
            kind,
            actor,
            reply: tx,
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "failoverd is shutting down",
            )
        })?;
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(Ok(reply))) => Ok(axum::Json::<ControlReply>(reply).into_response()),
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

async fn act(
    state: ApiState,
    headers: HeaderMap,
    name: String,
    action: &str,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers, Role::Viewer)?;
    let audit_action = format!("override-{action}");
    let result = async {
        if caller.role < Role::Operator {
            return Err(forbidden(&caller, Role::Operator));
        }
        if state.shared.index(&name).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no playbook named `{name}`"),
            ));
        }
        let bytes = read_body(&body)?;
        require_json(&headers, bytes)?;
        let body = parse_body(bytes)?;
        let kind = control_kind(action, &body)?;
        Ok((kind, body.reason.trim().to_string()))
    }
    .await;
    match result {
        Ok((kind, reason)) => {
            let actor = Actor {
                identity: caller.identity.clone(),
                reason,
            };
            send(&state, Some(name), kind, actor).await
        }
        Err(e) => {
            let reason = reason_of(&body);
            audit_refusal(
                &state,
                &caller,
                &audit_action,
                &name,
                &reason,
                json!({}),
                &e,
            )
            .await;
            Err(e)
        }
    }
}

/// Force a failover
///
/// Routes all traffic to a failover target (`target`, or the first healthy one) and holds it
/// there for `ttl` (default 1h), even while the primary looks healthy and even while
/// automation is frozen. Refused (409) when the target does not exist or is not known
/// healthy, unless `force` is set.
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (target missing or not known healthy, playbook inactive)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, bad ttl or target", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is shutting down", body = ErrorBody),
        (status = 504, description = "Accepted, but the routing write did not finish in time", body = ErrorBody),
    )
)]
async fn failover(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, headers, name, "failover", body).await
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (already on the primary, primary not known healthy, playbook inactive)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl or target given", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is shutting down", body = ErrorBody),
        (status = 504, description = "Accepted, but the routing write did not finish in time", body = ErrorBody),
    )
)]
async fn failback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, headers, name, "failback", body).await
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (playbook inactive)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, bad ttl, target or force given", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is shutting down", body = ErrorBody),
    )
)]
async fn freeze(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, headers, name, "freeze", body).await
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No playbook with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (nothing to release, playbook inactive)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl, target or force given", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is shutting down", body = ErrorBody),
    )
)]
async fn resume(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    act(state, headers, name, "resume", body).await
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 503, description = "Starting: the saved overrides are not loaded yet", body = ErrorBody),
    )
)]
async fn list_overrides(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No override with that id", body = ErrorBody),
        (status = 409, description = "Refused by a rule (playbook inactive)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, missing, empty or too long reason, ttl, target or force given", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The call could not be audited or persisted, so it was not performed", body = ErrorBody),
        (status = 503, description = "failoverd is starting (saved overrides not loaded yet) or shutting down", body = ErrorBody),
    )
)]
async fn delete_override(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers, Role::Viewer)?;
    let result = async {
        if caller.role < Role::Operator {
            return Err(forbidden(&caller, Role::Operator));
        }
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
    }
    .await;
    match result {
        Ok(reason) => {
            let actor = Actor {
                identity: caller.identity.clone(),
                reason,
            };
            send(&state, None, ControlKind::DeleteOverride { id }, actor).await
        }
        Err(e) => {
            let playbook = state
                .shared
                .overrides
                .read()
                .ok()
                .and_then(|o| o.iter().find(|r| r.id == id).map(|r| r.playbook.clone()))
                .unwrap_or_default();
            let reason = reason_of(&body);
            audit_refusal(
                &state,
                &caller,
                "override-delete",
                &playbook,
                &reason,
                json!({ "id": id }),
                &e,
            )
            .await;
            Err(e)
        }
    }
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only records about this playbook.
    playbook: Option<String>,
    /// Only records by this actor (`engine`, `failoverd` or an operator identity).
    actor: Option<String>,
    /// Only records written at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// At most this many records, the newest (default 100, at most 10000).
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// Read the audit log
///
/// Audit records, oldest first, optionally filtered; the newest `limit` of them.
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 500, description = "The audit log cannot be read", body = ErrorBody),
        (status = 503, description = "Too many audit log reads at once", body = ErrorBody),
    )
)]
async fn get_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
    let limit = q.limit.unwrap_or(100).min(10_000);
    let path = state.audit_path.clone();
    let filter = crate::audit_read::Filter {
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
        crate::audit_read::read_last(&path, limit, &filter)
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

/// This document
///
/// The OpenAPI 3 description of the `/v1` API. Open: no token needed.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
    )
)]
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

// ---- Drills -------------------------------------------------------------------------

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

/// Body of `POST /v1/drills/{name}/run` (optional: an empty body is a plain run).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DrillRunRequest, example = json!({ "reason": "quarterly DR exercise CHG-881", "force": false }))]
struct DrillBody {
    /// Why (goes into the audit log and the report); default `on demand`.
    #[serde(default)]
    #[schema(max_length = 1024)]
    reason: Option<String>,
    /// Run on a blocked date or outside the allowed windows. Safety rules (a playbook
    /// failed over, frozen, held or already in a drill) are never forced.
    #[serde(default)]
    force: bool,
}

/// The drill-run body (empty: a plain run) and its reason (default `on demand`).
fn parse_drill_body(bytes: &Bytes) -> ApiResult<(DrillBody, String)> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    let b: DrillBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DrillBody::default()
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            let status = match e.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, "invalid request body").detail(json!(e.to_string()))
        })?
    };
    let reason = b
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("on demand")
        .to_string();
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason longer than {MAX_REASON} characters"),
        ));
    }
    Ok((b, reason))
}

fn drills_of(state: &ApiState) -> Option<&Arc<crate::drill::Drills>> {
    state.drills.as_ref()
}

fn no_drill(name: &str) -> ApiError {
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
    )
)]
async fn list_drills(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 404, description = "No drill with that name", body = ErrorBody),
    )
)]
async fn list_drill_runs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
struct RunQuery {
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
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 429, description = "Too many failed authentications from this address", body = ErrorBody),
        (status = 404, description = "No drill or run with that name and id", body = ErrorBody),
    )
)]
async fn get_drill_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authenticate(&state, &headers, Role::Viewer)?;
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
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No, invalid or unconfigured bearer token", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`"))),
        (status = 415, description = "A body that is not `Content-Type: application/json`", body = ErrorBody),
        (status = 403, description = "The caller's role is below operator", body = ErrorBody),
        (status = 404, description = "No drill with that name", body = ErrorBody),
        (status = 409, description = "Refused by a rule (playbook failed over, frozen, held, in another drill, primary not healthy; blocked date or outside windows without force)", body = ErrorBody),
        (status = 413, description = "Body larger than 16 KiB", body = ErrorBody),
        (status = 422, description = "Body does not fit: unknown field, reason too long", body = ErrorBody),
        (status = 429, description = "Too many mutating calls by this identity, or failed authentications from this address", body = ErrorBody),
        (status = 503, description = "This replica is a standby: drills run on the leader", body = ErrorBody),
    )
)]
async fn run_drill(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers, Role::Viewer)?;
    let result = async {
        if caller.role < Role::Operator {
            return Err(forbidden(&caller, Role::Operator));
        }
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
    }
    .await;
    match result {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(DrillStarted {
                report: format!("/v1/drills/{}/runs/{}", run.drill, run.id),
                run_id: run.id,
                drill: run.drill,
                mode: run.mode,
            }),
        )
            .into_response()),
        Err(e) => {
            audit_refusal(
                &state,
                &caller,
                "drill-run",
                &name,
                &reason_of(&body),
                json!({ "drill": name }),
                &e,
            )
            .await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Checks an error answer: a 4xx status and a JSON body `{ error: <non-empty>, detail }`.
    fn assert_json_error(e: ApiError) -> Result<(), TestCaseError> {
        let status = e.status;
        prop_assert!(status.is_client_error(), "{status}");
        let resp = e.into_response();
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        prop_assert!(v.as_object().unwrap().contains_key("detail"), "{v}");
        Ok(())
    }

    /// Runs a body through every step a mutating call takes: the drill-run parser, the
    /// override parser, then each action's fields. Never panics; every refusal is a 4xx JSON
    /// error.
    fn check_body(bytes: &[u8]) -> Result<(), TestCaseError> {
        match parse_drill_body(&Bytes::copy_from_slice(bytes)) {
            Err(e) => assert_json_error(e)?,
            Ok((_, reason)) => {
                prop_assert!(!reason.is_empty() && reason.chars().count() <= MAX_REASON);
            }
        }
        match parse_body(&Bytes::copy_from_slice(bytes)) {
            Err(e) => assert_json_error(e)?,
            Ok(body) => {
                prop_assert!(!body.reason.trim().is_empty());
                prop_assert!(body.reason.trim().chars().count() <= MAX_REASON);
                for action in ["failover", "failback", "freeze", "resume", "nonsense"] {
                    if let Err(e) = control_kind(action, &body) {
                        assert_json_error(e)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Any JSON value, a few levels deep, with the body's own keys likely.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            prop_oneof![
                Just("failover[0]"),
                Just("failover[99999999999999999999]"),
                Just("primary"),
                Just("1h"),
                Just("0s"),
                Just("8d"),
                Just("18446744073709551615s"),
                Just("\u{0}\n\r"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("reason".to_string()),
                            Just("ttl".to_string()),
                            Just("target".to_string()),
                            Just("force".to_string()),
                            "[a-z]{1,6}",
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Ensures arbitrary bytes as a request body never panic the parser and every
        /// refusal is a JSON error.
        #[test]
        fn any_bytes_are_a_json_error_or_a_body(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_body(&bytes)?;
        }

        /// Ensures arbitrary JSON (objects with the body's keys and odd values) never panics
        /// the parser or the per-action checks.
        #[test]
        fn any_json_is_a_json_error_or_a_body(v in json_value()) {
            check_body(&serde_json::to_vec(&v).unwrap())?;
        }

        /// Ensures a well-formed body with arbitrary field values never panics, whatever the
        /// ttl, target and reason hold.
        #[test]
        fn any_field_values_are_checked(
            reason in ".{0,1100}",
            ttl in proptest::option::of(".{0,12}|[0-9]{1,25}[a-z]{1,2}"),
            target in proptest::option::of(prop_oneof![
                ".{0,20}".prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                "failover\\[[0-9]{0,25}\\]".prop_map(Value::from),
            ]),
            force in any::<bool>(),
        ) {
            let v = json!({ "reason": reason, "ttl": ttl, "target": target, "force": force });
            check_body(&serde_json::to_vec(&v).unwrap())?;
        }

        /// Ensures any Content-Type value and body give Ok or a 415 JSON error, never a panic.
        #[test]
        fn any_content_type_is_checked(ct in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), body in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut headers = HeaderMap::new();
            if let Some(v) = ct.and_then(|b| header::HeaderValue::from_bytes(&b).ok()) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            if let Err(e) = require_json(&headers, &Bytes::from(body)) {
                prop_assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
                assert_json_error(e)?;
            }
        }
    }
}
