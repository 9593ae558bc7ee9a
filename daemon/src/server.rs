//! The HTTP side: health, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::runtime::Shared;

/// The router for the daemon's HTTP endpoints.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(shared)
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
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "reason": if ready { "first probe round complete" } else { "waiting for the first probe round" },
        "playbookErrors": errors,
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
