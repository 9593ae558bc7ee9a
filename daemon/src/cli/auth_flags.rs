//! The flags of `auth.kubernetes` and `tls.clientCAFile` (merged over the config file and
//! checked like every key), and the client the cluster-identity reviews go through.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::kube_auth::{KubeAuth, KubeAuthConfig};
use crate::config::FileConfig;
use crate::playbook::Problem;

/// Default `cacheTTL`: a revoked permission stops working within 10 s.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
/// Longest `cacheTTL`: beyond it a revoked on-call keeps acting for too long.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(600);

/// `run` flags for cluster identities and client certificates.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AuthArgs {
    /// Accept cluster identities: a bearer token not in --tokens goes to TokenReview and
    /// each call is authorised by SubjectAccessReview on playbooks.failoverd.dev
    /// (`auth.kubernetes.enabled`).
    #[arg(long)]
    pub auth_kubernetes: bool,
    /// Namespace of the playbooks resource in each SubjectAccessReview (default: the pod's
    /// namespace, else `failoverd`).
    #[arg(long)]
    pub auth_namespace: Option<String>,
    /// TokenReview audiences, comma-separated (default: the API server's own).
    #[arg(long, value_delimiter = ',')]
    pub auth_audiences: Option<Vec<String>>,
    /// How long a review's answer is reused, e.g. `10s` (default 10s, at most 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Option<Duration>,
    /// CA bundle (PEM) for client certificates on the HTTPS API (`tls.clientCAFile`).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Do not serve the on-call console under `/ui/` (`console.enabled: false`).
    #[arg(long)]
    pub no_console: bool,
}

/// A problem with a key: located in the config file, or naming the flag it came from.
pub(super) type At<'a> = &'a dyn Fn(bool, &str, &str, String) -> Problem;

impl AuthArgs {
    /// The console's settings over the config file (`--no-console` wins).
    pub(super) fn console(
        &self,
        file: Option<&crate::config::ConsoleConfig>,
    ) -> crate::console::ConsoleOptions {
        crate::console::ConsoleOptions {
            enabled: !self.no_console && file.is_none_or(|c| c.enabled),
            trace_url: file.and_then(|c| c.trace_url.clone()),
        }
    }

    /// `auth.kubernetes` resolved over the config file (None: off). `kubeconfig` and
    /// `context` are those of the store flags: the reviews use the same cluster.
    pub(super) fn kube_auth(
        &self,
        file: &FileConfig,
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        at: At<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<KubeAuthConfig> {
        let k = file
            .auth
            .as_ref()
            .and_then(|a| a.kubernetes.clone())
            .unwrap_or_default();
        if !(self.auth_kubernetes || k.enabled) {
            return None;
        }
        let cache_ttl = self
            .auth_cache_ttl
            .or(k.cache_ttl.map(|d| d.get()))
            .unwrap_or(DEFAULT_CACHE_TTL);
        if cache_ttl > MAX_CACHE_TTL {
            problems.push(at(
                self.auth_cache_ttl.is_some(),
                "auth.kubernetes.cacheTTL",
                "--auth-cache-ttl",
                format!(
                    "at most {} (a revoked permission keeps working until the cached answer expires)",
                    humantime::format_duration(MAX_CACHE_TTL)
                ),
            ));
        }
        let namespace = self
            .auth_namespace
            .clone()
            .or(k.namespace)
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "failoverd".into());
        if namespace.is_empty() {
            problems.push(at(
                self.auth_namespace.is_some(),
                "auth.kubernetes.namespace",
                "--auth-namespace",
                "must not be empty".into(),
            ));
        }
        Some(KubeAuthConfig {
            namespace,
            audiences: self.auth_audiences.clone().unwrap_or(k.audiences),
            cache_ttl,
            kubeconfig,
            context,
        })
    }

    /// `tls.clientCAFile` over the config file.
    pub(super) fn client_ca(&self, file: &FileConfig) -> Option<PathBuf> {
        self.tls_client_ca
            .clone()
            .or_else(|| file.tls.as_ref().and_then(|t| t.client_ca_file.clone()))
    }
}

/// The reviews' client: the store's when it talks to the cluster, else one from the
/// kubeconfig (or in-cluster config).
pub(super) async fn connect(
    config: &KubeAuthConfig,
    store_client: Option<kube::Client>,
) -> anyhow::Result<Arc<KubeAuth>> {
    let client = match store_client {
        Some(c) => c,
        None => crate::routing::kube::KubeStore::connect(crate::routing::kube::KubeOptions {
            kubeconfig: config.kubeconfig.clone(),
            context: config.context.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("auth.kubernetes: {e}"))?
        .client()
        .clone(),
    };
    Ok(Arc::new(KubeAuth::new(client, config.clone())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::run::RunArgs;
    use super::*;

    fn args(dir: &std::path::Path, config: &str) -> RunArgs {
        let path = dir.join("failoverd.yaml");
        std::fs::write(
            &path,
            format!(
                "playbooks: {0}\nstore: file:{0}\naudit: {0}/audit.jsonl\n{config}",
                dir.display()
            ),
        )
        .unwrap();
        RunArgs {
            config: Some(path),
            ..RunArgs::default()
        }
    }

    /// Ensures `auth.kubernetes` and `tls.clientCAFile` are read from the config file with
    /// their defaults, a flag wins over a key, and a cacheTTL above 10m is refused naming the
    /// key.
    #[test]
    fn auth_keys_resolve_with_defaults_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let off = args(dir.path(), "").checked_settings().unwrap();
        assert_eq!((off.kube_auth, off.tls_client_ca), (None, None));
        let a = args(
            dir.path(),
            "auth:\n  kubernetes: { enabled: true, namespace: ops, audiences: [failoverd], cacheTTL: 30s }\n\
             tls: { certFile: c.pem, keyFile: k.pem, clientCAFile: ca.pem }\n",
        );
        let s = a.checked_settings().unwrap();
        let k = s.kube_auth.unwrap();
        assert_eq!(
            (k.namespace.as_str(), k.audiences, k.cache_ttl),
            (
                "ops",
                vec!["failoverd".to_string()],
                Duration::from_secs(30)
            )
        );
        assert_eq!(s.tls_client_ca, Some(PathBuf::from("ca.pem")));
        let mut flags = args(dir.path(), "auth:\n  kubernetes: { enabled: true }\n");
        flags.auth.auth_cache_ttl = Some(Duration::from_secs(2));
        let k = flags.checked_settings().unwrap().kube_auth.unwrap();
        assert_eq!(k.cache_ttl, Duration::from_secs(2));
        let mut on = args(dir.path(), "");
        on.auth.auth_kubernetes = true;
        let k = on.checked_settings().unwrap().kube_auth.unwrap();
        assert_eq!(k.cache_ttl, DEFAULT_CACHE_TTL);
        let long = args(
            dir.path(),
            "auth:\n  kubernetes:\n    enabled: true\n    cacheTTL: 1h\n",
        );
        let p = long.checked_settings().unwrap_err().to_string();
        assert!(
            p.contains("auth.kubernetes.cacheTTL") && p.contains("at most 10m"),
            "{p}"
        );
    }
}
