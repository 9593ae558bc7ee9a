//! What every handler shares: [`ApiState`] (the daemon's shared state, the controller's
//! inbox, the stores and the limiters) and the API's limits, each with its reason.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;

use super::auth::Tokens;
use super::kube_auth::KubeAuth;
use super::refusals::RefusalLog;
use crate::audit::AuditLog;
use crate::routing::RoutingStore;
use crate::shared::{Control, Shared};

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
/// `GET /v1/audit` reads at once: each may hold up to 10,000 records and scan far back for
/// a filter, so many at once would be a viewer's way to exhaust memory and disk time.
pub const AUDIT_READS: usize = 2;
/// How long a `GET /v1/audit` waits for a turn before answering 503.
pub(super) const AUDIT_READ_WAIT: Duration = Duration::from_secs(10);
/// Source addresses the failed-authentication limiter keeps before forgetting recovered ones.
pub(super) const LIMITER_KEYS: usize = 10_000;

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
    /// Break-glass requests waiting for their second admin.
    pub break_glass: Arc<Mutex<super::pending::BreakGlassBook>>,
    /// Cluster identities (`auth.kubernetes`): TokenReview and SubjectAccessReview (None:
    /// token-file callers only).
    pub kube_auth: Option<Arc<KubeAuth>>,
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
            break_glass: Arc::default(),
            kube_auth: None,
        }
    }
}
