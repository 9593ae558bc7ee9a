//! Daemon configuration: `run --config FILE` (YAML) and flags with the same names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::notify::NotifyConfig;
use crate::playbook::{Problem, yaml_problem};
use crate::routing::{FileStore, RoutingStore};

/// The config file. Every key can also be given as a flag, which wins.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory (or file) of playbooks.
    pub playbooks: Option<PathBuf>,
    /// `file:DIR` (or `kubernetes`, not available in this build).
    pub store: Option<String>,
    /// Address for the HTTP endpoints.
    pub listen: Option<String>,
    /// Audit log path.
    pub audit: Option<PathBuf>,
    /// Token file for the override API (only SHA-256 hashes of tokens).
    pub tokens: Option<PathBuf>,
    /// Where operator overrides persist (default: `overrides.json` beside the audit log).
    pub state: Option<PathBuf>,
    /// Default Prometheus server for SLOs.
    pub prometheus: Option<String>,
    /// Credentials and CAs for Prometheus.
    #[serde(rename = "prometheusClient")]
    pub prometheus_client: Option<crate::slo::ClientConfig>,
    /// Where on-call hears about moves and refusals (Alertmanager, signed webhooks).
    pub notify: Option<NotifyConfig>,
    /// The URL people reach this daemon at (links in notifications); default `http://<listen>`.
    #[serde(rename = "externalUrl")]
    pub external_url: Option<String>,
    /// Fleet blast radius: when more than this many playbooks are breaching or failed over at
    /// once, hold every automatic failover and raise one `blast-radius` event (it looks like
    /// failoverd's own network failing, not that many outages). 0 (the default) turns it off.
    #[serde(rename = "maxConcurrentFailovers")]
    pub max_concurrent_failovers: Option<usize>,
}

impl FileConfig {
    /// Reads a config file; errors are located like playbook errors.
    pub fn load(path: &Path) -> Result<Self, Problem> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Problem {
            file: file.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        serde_saphyr::from_str(&text).map_err(|e| yaml_problem(&file, &e))
    }
}

/// Where routes are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// VirtualService manifests under a directory.
    File(PathBuf),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("file:") {
            if dir.is_empty() {
                return Err(
                    "store `file:` needs a directory, e.g. `file:/var/lib/failoverd/routes`".into(),
                );
            }
            return Ok(StoreSpec::File(PathBuf::from(dir)));
        }
        if s == "kubernetes" {
            return Err("store `kubernetes` is not available in this build; use `file:DIR`".into());
        }
        Err(format!("invalid store `{s}`: expected `file:DIR`"))
    }
}

impl StoreSpec {
    /// Opens the store.
    pub fn open(&self) -> anyhow::Result<Arc<dyn RoutingStore>> {
        match self {
            StoreSpec::File(dir) => {
                if !dir.is_dir() {
                    anyhow::bail!("store directory {} does not exist", dir.display());
                }
                Ok(Arc::new(FileStore::new(dir)))
            }
        }
    }
}

/// Fully resolved settings for `run`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Playbook paths.
    pub playbooks: Vec<PathBuf>,
    /// Route store.
    pub store: StoreSpec,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Audit log path.
    pub audit: PathBuf,
    /// Token file (None: the API refuses every call but health, readiness and metrics).
    pub tokens: Option<PathBuf>,
    /// Override state file.
    pub state: PathBuf,
    /// Default Prometheus server for SLOs.
    pub prometheus: Option<String>,
    /// The Prometheus client built from `prometheusClient` (None: a plain client).
    pub prometheus_client: Option<crate::slo::PromClient>,
    /// Notification sinks (checked at load: URLs, durations, templates, secret files).
    pub notify: Option<NotifyConfig>,
    /// Base of the links in notifications (`<externalUrl>/v1/playbooks/<name>`).
    pub external_url: String,
    /// `maxConcurrentFailovers` (0: the blast-radius rule is off).
    pub max_concurrent_failovers: usize,
}
