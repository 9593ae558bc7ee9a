//! `vantage:` in the daemon config, and the settings resolved from it and the environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Identity;

/// The exchange interval when none is set: a peer's verdict is then at most about a second
/// older than the leader's own, which is what agreement adds to a failover.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Playbooks one vantage must alone see failing before `suspect-observer` is raised: one or
/// two can be a real partial outage seen from one zone; three at once looks like the
/// observer.
pub const DEFAULT_SUSPECT_AFTER: usize = 3;

/// `vantage:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VantageConfig {
    /// This replica's zone (default: `NODE_ZONE`, which the manifests set from the pod's
    /// `topology.kubernetes.io/zone` label where the cluster copies it from the node).
    pub zone: Option<String>,
    /// Base URLs of every replica's API (the same list for all: a replica drops its own
    /// entry when it answers with its own name), e.g.
    /// `http://failoverd-0.failoverd-pods.failoverd.svc:8080`. Empty: no exchange.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How often each peer is polled (default 1s; 100ms..=10s). A report counts for three.
    pub interval: Option<crate::playbook::Duration>,
    /// A file holding the bearer token sent to the peers (re-read at each exchange, so a
    /// rotated service-account token is picked up); it needs the viewer role (or `list` on
    /// playbooks with `auth.kubernetes`).
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs the peers' certificates (https peers with a private CA).
    #[serde(rename = "caFile")]
    pub ca_file: Option<PathBuf>,
    /// Playbooks one vantage must alone see failing to raise `suspect-observer` (default 3).
    pub suspect_after: Option<usize>,
}

/// The vantage settings, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct VantageSettings {
    /// Who this replica is.
    pub identity: Identity,
    /// The peers' base URLs (without a trailing slash).
    pub peers: Vec<String>,
    /// The exchange interval.
    pub interval: Duration,
    /// The token file for the peers.
    pub token_file: Option<PathBuf>,
    /// The CA bundle for https peers.
    pub ca_file: Option<PathBuf>,
    /// See [`VantageConfig::suspect_after`].
    pub suspect_after: usize,
}

impl Default for VantageSettings {
    fn default() -> Self {
        Self {
            identity: Identity {
                name: crate::leader::default_identity(),
                zone: env_zone(),
            },
            peers: Vec::new(),
            interval: DEFAULT_INTERVAL,
            token_file: None,
            ca_file: None,
            suspect_after: DEFAULT_SUSPECT_AFTER,
        }
    }
}

fn env_zone() -> Option<String> {
    std::env::var("NODE_ZONE")
        .ok()
        .map(|z| z.trim().to_string())
        .filter(|z| !z.is_empty())
}

impl VantageConfig {
    /// Resolves the settings: `election_identity` is the Lease identity when election is on
    /// (the name is `POD_NAME`, else that identity, else the host name). Errors name the key.
    pub fn resolve(&self, election_identity: Option<&str>) -> Result<VantageSettings, String> {
        let name = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| election_identity.map(str::to_string))
            .unwrap_or_else(crate::leader::default_identity);
        let interval = self.interval.as_ref().map_or(DEFAULT_INTERVAL, |d| d.0);
        if !(Duration::from_millis(100)..=Duration::from_secs(10)).contains(&interval) {
            return Err(format!(
                "vantage.interval: {} is outside 100ms..=10s",
                humantime::format_duration(interval)
            ));
        }
        let mut peers = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let u = reqwest::Url::parse(p)
                .map_err(|e| format!("vantage.peers[{i}]: `{p}` is not a URL: {e}"))?;
            if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                return Err(format!(
                    "vantage.peers[{i}]: `{p}` must be an http:// or https:// URL with a host"
                ));
            }
            peers.push(p.trim_end_matches('/').to_string());
        }
        let suspect_after = self.suspect_after.unwrap_or(DEFAULT_SUSPECT_AFTER);
        if suspect_after == 0 {
            return Err("vantage.suspectAfter: must be at least 1".into());
        }
        if !peers.is_empty() && self.token_file.is_none() {
            return Err(
                "vantage.tokenFile: needed with vantage.peers (the peers' API refuses calls without a token)"
                    .into(),
            );
        }
        Ok(VantageSettings {
            identity: Identity {
                name,
                zone: self
                    .zone
                    .clone()
                    .filter(|z| !z.trim().is_empty())
                    .or_else(env_zone),
            },
            peers,
            interval,
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            suspect_after,
        })
    }
}
