//! The frame every mutating call shares: the caller is authenticated first (a bad token is a
//! 401 and is not audited), must hold the operator role, and any refusal — by the role or by
//! the call's own checks — is audited with the call's reason before it is answered.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde_json::Value;

use super::auth::{Caller, Role};
use super::body::reason_of;
use super::error::ApiResult;
use super::guard::{audit_refusal, forbidden};
use super::state::ApiState;

/// Runs `call` for an operator (or admin) `caller`; a refusal is audited as `action` on the
/// playbook `playbook` names (worked out only when there is a refusal to record), with
/// `inputs`, and returned. `call` is not run at all for a caller below the operator role.
pub(super) async fn as_operator<T>(
    state: &ApiState,
    caller: &Caller,
    body: &Result<Bytes, BytesRejection>,
    action: &str,
    playbook: impl FnOnce() -> String,
    inputs: Value,
    call: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    as_role(
        state,
        caller,
        Role::Operator,
        body,
        action,
        playbook,
        inputs,
        call,
    )
    .await
}

/// [`as_operator`] for a call that needs `need` (a break-glass needs an admin).
#[allow(clippy::too_many_arguments)]
pub(super) async fn as_role<T>(
    state: &ApiState,
    caller: &Caller,
    need: Role,
    body: &Result<Bytes, BytesRejection>,
    action: &str,
    playbook: impl FnOnce() -> String,
    inputs: Value,
    call: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    let result = if caller.role < need {
        Err(forbidden(caller, need))
    } else {
        call.await
    };
    if let Err(e) = &result {
        let reason = reason_of(body);
        audit_refusal(state, caller, action, &playbook(), &reason, inputs, e).await;
    }
    result
}
