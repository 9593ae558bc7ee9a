//! The API's one error shape: `{ "error": "...", "detail": ... }` with its status.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

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
    pub(super) status: StatusCode,
    pub(super) error: String,
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

    pub(super) fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The one-line error (what the console shows of a refusal).
    pub fn message(&self) -> &str {
        &self.error
    }

    /// The detail (null when none).
    pub fn detail_value(&self) -> &Value {
        &self.detail
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

pub(super) type ApiResult<T> = Result<T, ApiError>;

// The refusals many operations share, documented once. These types only describe
// responses in the OpenAPI document (`responses(...)` of a handler); the answers
// themselves are [`ApiError`]s.

/// The refusal of every call without a valid token.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes responses
pub(super) enum AuthRefusals {
    #[response(status = 401, description = "No, invalid or unconfigured bearer token",
        headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"failoverd\"`")))]
    Unauthenticated(ErrorBody),
}

/// The further refusal of every viewer read: the per-address limit on failed
/// authentications.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes responses
pub(super) enum ReadRefusals {
    #[response(
        status = 429,
        description = "Too many failed authentications from this address"
    )]
    TooManyFailures(ErrorBody),
}

/// Further refusals of every mutating call: body, role and rate limits.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes responses
pub(super) enum MutatingRefusals {
    #[response(status = 400, description = "Body is not JSON")]
    NotJson(ErrorBody),
    #[response(status = 403, description = "The caller's role is below operator")]
    Forbidden(ErrorBody),
    #[response(status = 413, description = "Body larger than 16 KiB")]
    TooLarge(ErrorBody),
    #[response(
        status = 415,
        description = "A body that is not `Content-Type: application/json`"
    )]
    NotJsonType(ErrorBody),
    #[response(
        status = 429,
        description = "Too many mutating calls by this identity, or failed authentications from this address"
    )]
    TooMany(ErrorBody),
}

/// Further refusals of the playbook actions (failover, failback, freeze, resume).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: it only describes responses
pub(super) enum ActionRefusals {
    #[response(status = 404, description = "No playbook with that name")]
    NoPlaybook(ErrorBody),
    #[response(
        status = 500,
        description = "The call could not be audited or persisted, so it was not performed"
    )]
    NotRecorded(ErrorBody),
    #[response(
        status = 503,
        description = "failoverd is shutting down, this replica is a standby, or (leader election) the cluster did not keep the change"
    )]
    ShuttingDown(ErrorBody),
    #[response(
        status = 507,
        description = "Leader election: the cluster's override storage is full (delete overrides or resume playbooks first)"
    )]
    StorageFull(ErrorBody),
}
