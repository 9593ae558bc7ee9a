//! The audit log's part of `failoverd run` with one chain in the cluster (leader election):
//! joining the deployment's chain at start, and shipping and checkpointing only while leading.

use std::sync::Arc;

use tracing::{info, warn};

use crate::audit::AuditLog;

/// With one chain in the cluster only the leader ships records and makes checkpoints: on
/// taking over it turns both on and ships again the records from the last checkpoint (the
/// last leader may have died with lines still queued), so the shipped stream holds every
/// record at least once.
pub(super) fn lead_the_audit(
    log: Arc<std::sync::Mutex<AuditLog>>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            let on = *leading.borrow_and_update();
            let log = log.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut l = log
                    .lock()
                    .map_err(|_| "audit log lock poisoned".to_string())?;
                l.set_leading(on);
                if on {
                    l.reship_since_last_checkpoint().map_err(|e| e.to_string())
                } else {
                    Ok(0)
                }
            })
            .await;
            match done {
                Ok(Ok(n)) if n > 0 => {
                    info!(
                        records = n,
                        "audit records from the last checkpoint on shipped again"
                    )
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot ship the audit records since the last checkpoint again")
                }
                _ => {}
            }
        }
    });
}

/// Brings the local audit file and the cluster's chain together before anything is
/// recorded: retried for a minute (the API server may be starting too), then the start fails
/// (a replica must not record outside the deployment's chain).
pub(super) async fn join_chain(
    chain: &crate::trail::ClusterChain,
    log: AuditLog,
) -> anyhow::Result<AuditLog> {
    let path = log.path().to_path_buf();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut log = Some(log);
    loop {
        let current = match log.take() {
            Some(l) => l,
            None => AuditLog::open_copy(&path)?,
        };
        match chain.reconcile(current).await {
            Ok(l) => return Ok(l),
            Err(e) if tokio::time::Instant::now() < until => {
                warn!(error = %e, chain = %chain.name(), "cannot join the cluster's audit chain yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => anyhow::bail!(
                "cannot join the cluster's audit chain {}: {e}",
                chain.name()
            ),
        }
    }
}
