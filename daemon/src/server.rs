//! The HTTP side: health, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::ApiState;
use crate::runtime::Shared;

/// The router for the daemon's HTTP endpoints: open health, readiness and metrics, and the
/// authenticated `/v1` API.
pub fn router(shared: Arc<Shared>, api: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
        .merge(crate::api::routes(api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The handlers enforce the real limit with a JSON error; this caps what is buffered.
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_BODY * 4,
        ))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once the first probe round is in; the body lists playbooks with errors, which
/// stay visible without failing readiness (one missing VirtualService must not take the
/// whole controller out of its Service).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.ready.load(Ordering::Relaxed);
    let errors: Vec<_> = shared
        .snapshot()
        .into_iter()
        .filter_map(|s| s.error.map(|e| json!({ "playbook": s.name, "error": e })))
        .collect();
    // An audit log that refuses appends (full disk, I/O error) stops every move, yet leaves
    // readiness at 200 ("degraded"): a 503 would take the API out of its Service exactly when
    // on-call needs it (to read status, freeze), and restarting or moving the pod does not
    // free the volume. The signal is here, in `failoverd_audit_available` and its alert, and
    // in the `audit-unavailable` event.
    let audit_down = shared.audit_health.unavailable();
    let audit = json!({
        "available": audit_down.is_none(),
        "error": audit_down.as_ref().map(|u| u.error.clone()),
        "since": audit_down.as_ref().map(|u| u.since),
        "owedRecords": shared.audit_health.owed(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        // Degraded: some playbook cannot act (a missing VirtualService, a missing RBAC rule);
        // still ready, so the API and the other playbooks stay reachable.
        "status": if errors.is_empty() && audit_down.is_none() { "ok" } else { "degraded" },
        "reason": if ready { "first probe round complete" } else { "waiting for the first probe round" },
        "playbookErrors": errors,
        // A refused playbook reload: the running set stays in force until the files are fixed.
        "playbookReloadError": shared.reload.error(),
        // Whether the audit log takes appends: while not, no move is made (see above).
        "audit": audit,
    });
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "not found", "detail": null })),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(json!({ "error": "method not allowed", "detail": null })),
    )
        .into_response()
}
