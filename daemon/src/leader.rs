//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! Every replica probes, evaluates and serves reads; only the lease holder writes routing.
//! The election is client-go's protocol (GET the Lease, take it over only when its holder
//! has not renewed for `leaseDuration` *as observed on our own clock*, every update carrying
//! the `resourceVersion` it read), with one addition client-go lacks: **fencing**. The holder
//! knows until when its lease is safe — the start of its last successful renewal plus
//! `renewDeadline`, which is shorter than `leaseDuration` by a margin that absorbs clock
//! drift and a slow request — and [`Leadership::is_leader`] turns false at that instant even
//! if the renewal task is stuck. The writer checks it immediately before every routing write.
//! A replica that loses the lease stops writing at once and exits so it restarts clean.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Election timing and identity.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionConfig {
    /// Namespace of the Lease (failoverd's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long others wait after the holder's last renewal before taking over.
    pub lease_duration: Duration,
    /// The holder stops writing when it has not renewed for this long (< `lease_duration`:
    /// the difference is the fencing margin).
    pub renew_deadline: Duration,
    /// How often the holder renews and the others check.
    pub retry_period: Duration,
    /// How long sealed segments of the audit chain stay in the cluster (see
    /// `crate::trail`).
    pub audit_retention: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            namespace: "failoverd".into(),
            name: "failoverd-leader".into(),
            identity: default_identity(),
            // client-go's 15 s / 10 s / 2 s eat half the 30 s failover budget on a takeover.
            lease_duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(5),
            retry_period: Duration::from_secs(1),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

impl ElectionConfig {
    /// Checks the timing relations the fencing relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() || self.renew_deadline <= self.retry_period {
            return Err("leader election: renewDeadline must be longer than retryPeriod".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(
                "leader election: leaseDuration must be longer than renewDeadline (the difference is the fencing margin)".into(),
            );
        }
        if self.lease_duration.as_secs() < 1 {
            return Err("leader election: leaseDuration must be at least 1s".into());
        }
        if self.audit_retention < Duration::from_secs(24 * 3600) {
            return Err("leader election: auditRetention must be at least 1d".into());
        }
        if self.identity.is_empty() {
            return Err("leader election: identity is empty (set POD_NAME)".into());
        }
        Ok(())
    }
}

/// The pod name (`POD_NAME`, set from the downward API), else the host name.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| format!("failoverd-{}", std::process::id()))
}

#[derive(Debug)]
struct Held {
    /// Writing is safe until this instant (`None`: not the holder).
    until: Option<Instant>,
    /// Who holds the lease as last seen.
    holder: Option<String>,
}

/// Whether this replica may write. Without election (the `file` store, one replica), it
/// always may.
#[derive(Debug)]
pub struct Leadership {
    elected: bool,
    held: Mutex<Held>,
    tx: watch::Sender<bool>,
}

impl Leadership {
    /// No election: this replica is the only writer.
    pub fn always() -> Self {
        Self::new(false)
    }

    /// Election enabled; not the leader until the lease is won.
    pub fn elected() -> Self {
        Self::new(true)
    }

    fn new(elected: bool) -> Self {
        Self {
            elected,
            held: Mutex::new(Held {
                until: None,
                holder: None,
            }),
            tx: watch::channel(!elected).0,
        }
    }

    /// True when leader election is on.
    pub fn is_elected(&self) -> bool {
        self.elected
    }

    /// The fence: true only while the lease is held with margin, checked against the clock
    /// now (not against the last thing the renewal task said).
    pub fn is_leader(&self) -> bool {
        if !self.elected {
            return true;
        }
        self.held
            .lock()
            .map(|h| h.until.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }

    /// The holder as last seen (for "not the leader; the leader is X" answers).
    pub fn holder(&self) -> Option<String> {
        self.held.lock().ok().and_then(|h| h.holder.clone())
    }

    /// Turns true when this replica becomes the leader.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn set(&self, until: Option<Instant>, holder: Option<String>) {
        if let Ok(mut h) = self.held.lock() {
            h.until = until;
            h.holder = holder;
        }
        // Notify only on a change: every renewal lands here, and a subscriber treats a
        // notification as "became the leader" (the runtime re-reads every route then).
        let leading = until.is_some();
        self.tx
            .send_if_modified(|v| std::mem::replace(v, leading) != leading);
    }
}

/// Runs the election until leadership is lost (returns `Err` naming why) or `shutdown`.
/// The caller exits the process on `Err`: a replica that lost the lease must not keep any
/// in-memory belief about routing.
pub async fn run(
    client: kube::Client,
    config: ElectionConfig,
    leadership: Arc<Leadership>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    // The record as last seen and when it last changed, on our clock.
    let mut observed: Option<(String, Instant)> = None;
    let mut leading = false;
    let mut tick = tokio::time::interval(config.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    if leading {
                        release(&api, &config).await;
                    }
                    leadership.set(None, None);
                    return Ok(());
                }
            }
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::time::timeout(
            config.retry_period.max(Duration::from_secs(1)),
            attempt(&api, &config, &mut observed, started),
        )
        .await
        .unwrap_or_else(|_| Err("lease request timed out".into()));
        match result {
            Ok(Some(holder)) if holder == config.identity => {
                if !leading {
                    info!(identity = %config.identity, lease = %config.name, "became the leader");
                }
                leading = true;
                leadership.set(Some(started + config.renew_deadline), Some(holder));
            }
            Ok(holder) => {
                if leading {
                    leadership.set(None, holder.clone());
                    return Err(format!(
                        "lost the lease to {}",
                        holder.unwrap_or_else(|| "nobody".into())
                    ));
                }
                leadership.set(None, holder);
            }
            Err(e) => {
                if leading {
                    if leadership.is_leader() {
                        warn!(error = %e, "cannot renew the lease; still within renewDeadline");
                    } else {
                        leadership.set(None, None);
                        return Err(format!(
                            "could not renew the lease within renewDeadline ({:?}): {e}",
                            config.renew_deadline
                        ));
                    }
                } else {
                    warn!(error = %e, "leader election: cannot read the lease");
                }
            }
        }
    }
}

/// One round: renew if ours, take over if expired, else observe. Returns the holder after.
async fn attempt(
    api: &Api<Lease>,
    config: &ElectionConfig,
    observed: &mut Option<(String, Instant)>,
    now: Instant,
) -> Result<Option<String>, String> {
    let pp = PostParams {
        dry_run: false,
        field_manager: Some("failoverd".into()),
    };
    let current = match api.get_opt(&config.name).await {
        Ok(l) => l,
        Err(e) => return Err(e.to_string()),
    };
    let wall = jiff::Timestamp::now();
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(spec_for(config, wall, 0, Some(wall))),
        };
        return match api.create(&pp, &lease).await {
            Ok(_) => Ok(Some(config.identity.clone())),
            // Someone else created it first: observe it next round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e.to_string()),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    // Change detection by resourceVersion: any write to the lease is a sign of life.
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    match observed {
        Some((v, _)) if *v == version => {}
        _ => *observed = Some((version, now)),
    }
    let ours = holder.as_deref() == Some(config.identity.as_str());
    let lease_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    let expired = holder.is_none()
        || observed
            .as_ref()
            .is_some_and(|(_, since)| now.duration_since(*since) >= lease_for);
    if !ours && !expired {
        return Ok(holder);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours {
        spec.acquire_time.map(|t| t.0)
    } else {
        Some(wall)
    };
    lease.spec = Some(spec_for(config, wall, transitions, acquired));
    // `metadata.resourceVersion` is the one read: a concurrent takeover makes this a 409.
    match api.replace(&config.name, &pp, &lease).await {
        Ok(_) => {
            if !ours {
                info!(previous = ?holder, "took over the expired lease");
            }
            Ok(Some(config.identity.clone()))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            if ours {
                error!("lease renewal conflicted: another replica wrote the lease");
            }
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn spec_for(
    config: &ElectionConfig,
    now: jiff::Timestamp,
    transitions: i32,
    acquired: Option<jiff::Timestamp>,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        acquire_time: acquired.map(MicroTime),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// On a clean shutdown the holder hands the lease back, so the standby takes over at once
/// instead of after `leaseDuration`.
async fn release(api: &Api<Lease>, config: &ElectionConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    let pp = PostParams::default();
    match api.replace(&config.name, &pp, &lease).await {
        Ok(_) => info!("released the lease"),
        Err(e) => warn!(error = %e, "could not release the lease; the standby waits leaseDuration"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timing_relations_are_checked() {
        assert!(ElectionConfig::default().validate().is_ok());
        let bad = ElectionConfig {
            renew_deadline: Duration::from_secs(8),
            ..ElectionConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("fencing margin"));
        let bad = ElectionConfig {
            retry_period: Duration::from_secs(5),
            ..ElectionConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[tokio::test]
    async fn without_election_this_replica_always_leads() {
        let l = Leadership::always();
        assert!(l.is_leader());
        let e = Leadership::elected();
        assert!(!e.is_leader());
        // The fence looks at the clock: a lease held until a past instant is not held.
        e.set(
            Some(Instant::now() + Duration::from_millis(30)),
            Some("me".into()),
        );
        assert!(e.is_leader());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!e.is_leader(), "fence must expire without the renewal task");
    }
}
