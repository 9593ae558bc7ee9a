//! What runs before and around every handler: the [`guard`] middleware (path limits,
//! failed-authentication limits, per-identity rate limits), authentication (token file,
//! TokenReview, client certificate) and permission checks (role, or SubjectAccessReview
//! for cluster identities), and the audit record of a refused call.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use super::auth::{AuthError, Authority, Caller, Role, bearer};
use super::kube_auth::{self, Verb};
use crate::audit::Entry;

use super::error::{ApiError, ApiResult};
use super::state::{ApiState, LIMITER_KEYS, MAX_NAME, MAX_PATH, MAX_REASON};

pub(super) fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Runs before every `/v1` handler, in this order, so abuse is refused before it costs a
/// role check, a disk write or an fsync: (1) a path longer than [`MAX_PATH`] or with a
/// segment longer than [`MAX_NAME`] → 404; (2) the caller is identified ([`identify`]; an
/// uncached TokenReview is charged to the address's failure limit before it is sent, and a
/// cluster that does not answer is a 503 here); (3) a failed authentication is counted
/// (`failoverd_api_auth_failures_total{reason}`), logged in aggregate, and limited per
/// source address (429 beyond the limit; the handler's 401 otherwise); (4) a mutating call
/// by an authenticated caller is rate-limited per identity (429, not audited). The outcome
/// goes to the handler as [`Authn`]; the handlers then check the permission (role or
/// SubjectAccessReview) and audit refusals within the identity's audit budget.
///
/// Every call is one server span `failoverd.api` (tracing on) with the caller's identity
/// (`enduser.id`, never the token); an incoming W3C `traceparent` header becomes its parent.
pub async fn guard(state: State<ApiState>, req: Request, next: Next) -> Response {
    let span = tracing::trace_span!(
        "failoverd.api",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        enduser.id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        crate::trace::set_parent(&span, tp);
    }
    let res = guard_in(state, req, next).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    res
}

async fn guard_in(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
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
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    // Owned copies: the request body is not `Sync`, so no reference to it may be held
    // across the review.
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cert = req
        .extensions()
        .get::<crate::tls::ClientIdentity>()
        .cloned();
    let outcome = identify(&state, header.as_deref(), cert, ip).await;
    req.extensions_mut().insert(Authn(outcome.clone()));
    match outcome {
        Err(AuthError::Unavailable(why)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot check the caller's cluster identity: the Kubernetes API server did not answer",
        )
        .detail(json!(why))
        .into_response(),
        Err(e) => {
            let reason = match e {
                AuthError::NotConfigured => "not_configured",
                AuthError::Missing => "missing",
                AuthError::Invalid => "invalid",
                AuthError::Rejected => "rejected",
                AuthError::Throttled | AuthError::Unavailable(_) => "throttled",
            };
            let m = &state.shared.metrics;
            m.api_auth_failures
                .get_or_create(&crate::metrics::labels([("reason", reason)]))
                .inc();
            let key = format!("address {ip}");
            // A TokenReview rejection was charged to the address before the review was sent
            // (see `identify`); every other failure is charged here.
            let limited = match e {
                AuthError::Throttled => true,
                AuthError::Rejected => false,
                _ => !charge(&state, ip),
            };
            if limited {
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
            tracing::Span::current().record("enduser.id", caller.identity.as_str());
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

/// The console's sign-in: `token` identified exactly as a bearer token on `/v1` is (token
/// file, else TokenReview), with the same failed-authentication budget per source address,
/// so the sign-in form is no faster a way to guess tokens than the API.
pub(crate) async fn sign_in(state: &ApiState, token: &str, ip: IpAddr) -> ApiResult<Caller> {
    let header = format!("Bearer {}", token.trim());
    let outcome = identify(state, Some(&header), None, ip).await;
    if let Err(e) = &outcome {
        let charged = match e {
            AuthError::Throttled => false,
            AuthError::Rejected | AuthError::Unavailable(_) => true,
            _ => charge(state, ip),
        };
        if !charged {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed sign-ins from this address",
            ));
        }
    }
    Authn(outcome).caller()
}

/// Whether `caller` may `verb` the playbook `name` (None: the fleet): the same check the
/// `/v1` handlers make (role, or SubjectAccessReview for a cluster identity).
pub(crate) async fn may(
    state: &ApiState,
    caller: &Caller,
    verb: Verb,
    name: Option<&str>,
) -> ApiResult<()> {
    let on: Vec<String> = name.map(str::to_string).into_iter().collect();
    permit(state, caller, verb, &on).await
}

/// Takes one unit of the address's failed-authentication budget; false when it is spent.
fn charge(state: &ApiState, ip: IpAddr) -> bool {
    // One entry per address ever seen: drop the ones whose limit has recovered before the
    // map grows large.
    if state.auth_limiter.len() > LIMITER_KEYS {
        state.auth_limiter.retain_recent();
    }
    state.auth_limiter.check_key(&ip).is_ok()
}

/// Who is calling: a bearer token from the token file; else (with `auth.kubernetes`) one
/// the cluster's TokenReview authenticates; else a client certificate verified at the
/// handshake, mapped in the token file or (with `auth.kubernetes`) taken as a cluster user
/// of that name. A TokenReview not answered from the cache first takes a unit of the
/// address's failed-authentication budget, so a flood of bad tokens can never become a
/// flood of TokenReviews.
async fn identify(
    state: &ApiState,
    header: Option<&str>,
    cert: Option<crate::tls::ClientIdentity>,
    ip: IpAddr,
) -> Result<Caller, AuthError> {
    let kube = state.kube_auth.as_ref();
    let Some(token) = bearer(header) else {
        return match cert {
            Some(id) => match (state.tokens.by_certificate(&id.0), kube) {
                (Some(caller), _) => Ok(caller),
                (None, Some(_)) => Ok(Caller {
                    identity: id.0,
                    role: Role::Viewer,
                    authority: Authority::Cluster { groups: Vec::new() },
                }),
                (None, None) => Err(AuthError::Rejected),
            },
            None if !state.tokens.configured() && kube.is_none() => Err(AuthError::NotConfigured),
            None => Err(AuthError::Missing),
        };
    };
    if let Some(caller) = state.tokens.lookup(token) {
        return Ok(caller);
    }
    let Some(kube) = kube else {
        return Err(if state.tokens.configured() {
            AuthError::Invalid
        } else {
            AuthError::NotConfigured
        });
    };
    let known = match kube.cached_token(token) {
        Some(known) => known,
        None if !charge(state, ip) => return Err(AuthError::Throttled),
        None => kube
            .review_token(token)
            .await
            .map_err(|e| AuthError::Unavailable(e.0))?,
    };
    match known {
        Some(user) => Ok(Caller {
            identity: user.username,
            role: Role::Viewer,
            authority: Authority::Cluster {
                groups: user.groups,
            },
        }),
        None => Err(AuthError::Rejected),
    }
}

/// The outcome of authentication, put on the request by [`guard`] for the handler.
#[derive(Clone, Debug)]
pub(super) struct Authn(Result<Caller, AuthError>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authn {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Authn>()
            .cloned()
            .unwrap_or(Authn(Err(AuthError::Missing))))
    }
}

impl Authn {
    /// The authenticated caller, or the 401 (503 when the cluster could not be asked).
    pub(super) fn caller(&self) -> ApiResult<Caller> {
        self.0.clone().map_err(|e| match e {
            AuthError::NotConfigured => ApiError::new(StatusCode::UNAUTHORIZED, "authentication is not configured")
                .detail(json!("start failoverd with --tokens FILE (YAML: - { identity, role, sha256 }) or auth.kubernetes to enable the API")),
            AuthError::Missing => ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token")
                .detail(json!("send Authorization: Bearer <token>")),
            AuthError::Invalid => ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token"),
            AuthError::Rejected => ApiError::new(StatusCode::UNAUTHORIZED, "invalid credentials")
                .detail(json!("the cluster does not authenticate this token, or the client certificate maps to no one")),
            AuthError::Throttled => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address",
            ),
            AuthError::Unavailable(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the caller's cluster identity: the Kubernetes API server did not answer",
            )
            .detail(json!(why)),
        })
    }
}

/// Authenticates and checks that the caller may `verb` the playbook `name` (None: the
/// fleet): the token-file role for token-file callers, SubjectAccessReview for cluster
/// identities (403 when denied, 503 when the cluster does not answer). Reads use this;
/// mutating calls use the audited frame in `operator`.
pub(super) async fn authorize(
    state: &ApiState,
    authn: &Authn,
    verb: Verb,
    name: Option<&str>,
) -> ApiResult<Caller> {
    let caller = authn.caller()?;
    let on: Vec<String> = name.map(str::to_string).into_iter().collect();
    permit(state, &caller, verb, &on).await?;
    Ok(caller)
}

/// Whether `caller` may `verb` each playbook in `on` (empty: the fleet).
pub(super) async fn permit(
    state: &ApiState,
    caller: &Caller,
    verb: Verb,
    on: &[String],
) -> ApiResult<()> {
    let groups = match &caller.authority {
        Authority::Role if caller.role < verb.role() => {
            return Err(forbidden(caller, verb.role()));
        }
        Authority::Role => return Ok(()),
        Authority::Cluster { groups } => groups,
    };
    let Some(kube) = &state.kube_auth else {
        return Err(forbidden(caller, verb.role()));
    };
    let names: Vec<Option<&str>> = if on.iter().all(String::is_empty) {
        vec![None]
    } else {
        on.iter().map(|n| Some(n.as_str())).collect()
    };
    for name in names {
        let allowed = kube
            .allowed(&caller.identity, groups, verb, name)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the caller's permission: the Kubernetes API server did not answer",
                )
                .detail(json!(e.0))
            })?;
        if !allowed {
            let what = name.map_or_else(
                || {
                    format!(
                        "{} in namespace {}",
                        kube_auth::RESOURCE,
                        kube.config().namespace
                    )
                },
                |n| format!("playbook {n} (namespace {})", kube.config().namespace),
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{} may not {} {what}", caller.identity, verb.as_str()),
            )
            .detail(json!(format!(
                "grant verb {} on {}.{} through Kubernetes RBAC",
                verb.as_str(),
                kube_auth::RESOURCE,
                kube_auth::GROUP
            ))));
        }
    }
    Ok(())
}

/// 503 until the saved state (overrides) is loaded and published: before that, an empty
/// override list would read as "not frozen" while a freeze holds.
pub(super) fn require_loaded(state: &ApiState) -> ApiResult<()> {
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

pub(super) fn forbidden(caller: &Caller, need: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} has role {:?}; this call needs {:?}",
            caller.identity, caller.role, need
        ),
    )
}

/// Records the refusal of an authenticated caller's mutating call.
pub(super) async fn audit_refusal(
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
