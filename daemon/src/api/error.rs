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
