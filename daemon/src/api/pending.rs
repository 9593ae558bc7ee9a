//! Break-glass requests waiting for their second admin (see `breakglass.rs`), kept in this
//! replica's memory.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

/// One request waiting for approval.
#[derive(Clone, Debug)]
pub struct Pending {
    pub(super) playbook: String,
    pub(super) target: usize,
    pub(super) ttl: Duration,
    pub(super) reason: String,
    pub(super) requested_by: String,
    pub(super) expires_at: Timestamp,
}

/// The pending requests of this replica, by id.
#[derive(Debug, Default)]
pub struct BreakGlassBook {
    pub(super) pending: BTreeMap<String, Pending>,
}

impl BreakGlassBook {
    pub(super) fn prune(&mut self, now: Timestamp) {
        self.pending.retain(|_, p| p.expires_at > now);
    }
}

/// 202 answer to a break-glass request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct BreakGlassRequested {
    /// The id a second admin approves.
    pub(super) id: String,
    /// The request lapses at this instant unless approved.
    #[schema(value_type = String, format = DateTime)]
    pub(super) expires_at: Timestamp,
    /// The playbook.
    pub(super) playbook: String,
    /// The failover target index the move would route to.
    pub(super) target: usize,
}
