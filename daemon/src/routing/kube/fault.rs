//! A fault drill's fault on the `kubernetes` store: one read-modify-write guarded by
//! `resourceVersion` (a conflict is retried within the store's budget), checked against the
//! Istio schema and webhook rules before it is sent, the update's answer as the read-back.
//! Both edits are idempotent (the same run's fault found is `unchanged`; a removal with no
//! fault left is `unchanged`), so an update whose answer was lost is settled by the next
//! attempt reading the object.

use std::time::{Duration, Instant};

use kube::api::{DynamicObject, PostParams};
use serde_json::Value;
use tracing::warn;

use crate::playbook::Playbook;
use crate::routing::fault::{FaultEdit, faults_in};
use crate::routing::{StoreError, WriteOutcome};

use super::{FIELD_MANAGER, KubeStore, TimedError, map_err, object_name, paced, timed};

impl KubeStore {
    /// [`crate::routing::RoutingStore::write_fault`] on the cluster.
    pub(super) async fn write_fault_with_budget(
        &self,
        pb: &Playbook,
        edit: &FaultEdit,
    ) -> Result<WriteOutcome, StoreError> {
        let deadline = Instant::now() + self.options.budget;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_write_fault(pb, edit, deadline).await {
                Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                    warn!(playbook = pb.name(), error = %e, "drill fault write did not land; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                r => return r,
            }
        }
    }

    async fn try_write_fault(
        &self,
        pb: &Playbook,
        edit: &FaultEdit,
        deadline: Instant,
    ) -> Result<WriteOutcome, StoreError> {
        let object = object_name(pb);
        let ns = &pb.spec.virtual_service.namespace;
        let limit = || {
            deadline
                .saturating_duration_since(Instant::now())
                .min(self.options.request_timeout)
        };
        let api = self.api(pb).await?;
        let mut vs = self.get(&api, pb, &self.limiter, limit()).await?;
        let before = vs.pointer("/spec/http").cloned().unwrap_or(Value::Null);
        if !edit.apply(&mut vs, pb)? {
            return Ok(WriteOutcome {
                after: before.clone(),
                before,
                changed: false,
            });
        }
        crate::routing::istio::validate_virtual_service(&vs).map_err(|problems| {
            StoreError::Invalid {
                object: object.clone(),
                message: problems.join("; "),
            }
        })?;
        let after = vs.pointer("/spec/http").cloned().unwrap_or(Value::Null);
        let want = faults_in(&vs);
        let obj: DynamicObject = serde_json::from_value(vs).map_err(|e| StoreError::Malformed {
            object: object.clone(),
            message: format!("cannot build the update: {e}"),
        })?;
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        paced(&self.limiter, limit(), &object, "update").await?;
        if self.fence.as_ref().is_some_and(|f| !f.is_leader()) {
            return Err(StoreError::Fenced);
        }
        let stored = timed(
            limit(),
            api.replace(&pb.spec.virtual_service.name, &params, &obj),
        )
        .await
        .map_err(|e: TimedError| map_err(e, &object, "update", ns))?;
        let read_back = serde_json::to_value(&stored).map_err(|e| StoreError::Malformed {
            object: object.clone(),
            message: format!("cannot represent the update's answer as JSON: {e}"),
        })?;
        let got = read_back
            .pointer("/spec/http")
            .cloned()
            .unwrap_or(Value::Null);
        if got != after || faults_in(&read_back) != want {
            return Err(StoreError::Verify { object });
        }
        Ok(WriteOutcome {
            before,
            after: got,
            changed: true,
        })
    }
}
