//! The frame every mutating call shares: the caller is authenticated first (a bad token is a
//! 401 and is not audited), must be allowed the call's verb on its playbooks (the operator
//! role, or `update` through SubjectAccessReview for a cluster identity), and any refusal —
//! by the permission check or by the call's own checks — is audited with the call's reason
//! before it is answered.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde_json::Value;

use super::auth::Caller;
use super::body::reason_of;
use super::error::ApiResult;
use super::guard::{audit_refusal, permit};
use super::kube_auth::Verb;
use super::state::ApiState;

/// Runs `call` for a `caller` allowed `update` on every playbook in `on` (an operator or
/// admin from the token file); a refusal is audited as `action` on the playbook `playbook`
/// names (worked out only when there is a refusal to record), with `inputs`, and returned.
/// `call` is not run at all for a caller not allowed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn as_operator<T>(
    state: &ApiState,
    caller: &Caller,
    on: &[String],
    body: &Result<Bytes, BytesRejection>,
    action: &str,
    playbook: impl FnOnce() -> String,
    inputs: Value,
    call: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    as_role(
        state,
        caller,
        Verb::Update,
        on,
        body,
        action,
        playbook,
        inputs,
        call,
    )
    .await
}

/// [`as_operator`] for a call that needs `verb` (a break-glass needs `escalate`: an admin).
#[allow(clippy::too_many_arguments)]
pub(super) async fn as_role<T>(
    state: &ApiState,
    caller: &Caller,
    verb: Verb,
    on: &[String],
    body: &Result<Bytes, BytesRejection>,
    action: &str,
    playbook: impl FnOnce() -> String,
    inputs: Value,
    call: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    let result = match permit(state, caller, verb, on).await {
        Err(e) => Err(e),
        Ok(()) => call.await,
    };
    if let Err(e) = &result {
        let reason = reason_of(body);
        audit_refusal(state, caller, action, &playbook(), &reason, inputs, e).await;
    }
    result
}
