//! Which credential the override API's client sends: `FAILOVERD_TOKEN` / `--token` first;
//! else a client certificate (`--client-cert` / `--client-key`, or `FAILOVERD_CLIENT_CERT`
//! / `FAILOVERD_CLIENT_KEY`); else the token of a kubeconfig's context, found as kubectl
//! finds it (`--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`; `--context`, else the
//! current context), for a user with a `token` or `tokenFile` (other auth plugins are not
//! run). A kubeconfig's token is a cluster credential: it is only sent over HTTPS or to a
//! loopback address, never in clear across a network. `--ca` adds the server's CA.

use std::path::PathBuf;
use std::time::Duration;

/// Client credentials beyond `--token`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Credentials {
    /// Kubeconfig whose context's token to send when no token is given (default:
    /// `KUBECONFIG`, else `~/.kube/config`; only `token` / `tokenFile` users).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Client certificate (PEM) for mTLS; needs --client-key.
    #[arg(
        long,
        env = "FAILOVERD_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "FAILOVERD_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that signed failoverd's server certificate, if not a
    /// system-trusted one.
    #[arg(long, env = "FAILOVERD_CA", global = true)]
    pub ca: Option<PathBuf>,
}

fn read(what: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// True for `https://` URLs and loopback hosts: where a cluster token may be sent.
fn safe_for_cluster_token(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if u.scheme() == "https" {
        return true;
    }
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Credentials {
    /// The HTTP client for `url` and the bearer token to send (the explicit `token` first).
    pub fn build(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<(reqwest::Client, Option<String>), String> {
        // Longer than the server's own 30 s wait for a routing write.
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(40));
        if let Some(ca) = &self.ca {
            for cert in reqwest::Certificate::from_pem_bundle(&read("--ca", ca)?)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let cert = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => {
                let mut pem = read("--client-cert", c)?;
                pem.push(b'\n');
                pem.extend(read("--client-key", k)?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("--client-cert {}: {e}", c.display()))?;
                b = b.identity(id);
                true
            }
            _ => false,
        };
        let client = b
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let (token, from_kubeconfig) = match token {
            Some(t) => (Some(t.to_string()), false),
            None if cert => (None, false),
            None => (self.kubeconfig_token()?, true),
        };
        if from_kubeconfig && token.is_some() && !safe_for_cluster_token(url) {
            return Err(format!(
                "not sending the kubeconfig's cluster token to {url} in clear: use an https:// URL, or set FAILOVERD_TOKEN"
            ));
        }
        Ok((client, token))
    }

    /// The token of the kubeconfig's context (None: no kubeconfig, or its user has no token).
    fn kubeconfig_token(&self) -> Result<Option<String>, String> {
        use secrecy::ExposeSecret as _;
        let kc = match &self.kubeconfig {
            Some(p) => kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("--kubeconfig {}: {e}", p.display()))?,
            None => match kube::config::Kubeconfig::read() {
                Ok(kc) => kc,
                // No kubeconfig at all is not an error: the call goes without a token.
                Err(_) if std::env::var_os("KUBECONFIG").is_none() => return Ok(None),
                Err(e) => return Err(format!("KUBECONFIG: {e}")),
            },
        };
        let Some(context) = self.context.clone().or(kc.current_context.clone()) else {
            return Ok(None);
        };
        let user = kc
            .contexts
            .iter()
            .find(|c| c.name == context)
            .ok_or_else(|| format!("kubeconfig: no context `{context}`"))?
            .context
            .as_ref()
            .and_then(|c| c.user.clone());
        let Some(auth) = user.and_then(|u| {
            kc.auth_infos
                .iter()
                .find(|a| a.name == u)
                .and_then(|a| a.auth_info.clone())
        }) else {
            return Ok(None);
        };
        if let Some(t) = auth.token {
            return Ok(Some(t.expose_secret().trim().to_string()));
        }
        if let Some(f) = auth.token_file {
            let t = std::fs::read_to_string(&f)
                .map_err(|e| format!("kubeconfig tokenFile {f}: {e}"))?;
            return Ok(Some(t.trim().to_string()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ensures a cluster token may go over HTTPS anywhere, and over plain HTTP only to a
    /// loopback address.
    #[test]
    fn cluster_tokens_travel_only_over_https_or_loopback() {
        for ok in [
            "https://failoverd.example",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(safe_for_cluster_token(ok), "{ok}");
        }
        for no in [
            "http://failoverd.failoverd:8080",
            "http://10.0.0.7",
            "not a url",
        ] {
            assert!(!safe_for_cluster_token(no), "{no}");
        }
    }

    /// Ensures the token of the named (or current) context is read, from `token` or
    /// `tokenFile`, and an explicit token wins over it.
    #[test]
    fn the_kubeconfig_token_of_the_context_is_used() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let kc = dir.path().join("config");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: [{{ name: c, cluster: {{ server: https://k }} }}]\n\
                 contexts:\n- {{ name: a, context: {{ cluster: c, user: ua }} }}\n- {{ name: b, context: {{ cluster: c, user: ub }} }}\n\
                 users:\n- {{ name: ua, user: {{ token: inline }} }}\n- {{ name: ub, user: {{ tokenFile: {} }} }}\n",
                file.display()
            ),
        )
        .unwrap();
        let mut c = Credentials {
            kubeconfig: Some(kc),
            ..Credentials::default()
        };
        let url = "http://127.0.0.1:1";
        assert_eq!(c.build(url, None).unwrap().1.as_deref(), Some("inline"));
        assert_eq!(
            c.build(url, Some("explicit")).unwrap().1.as_deref(),
            Some("explicit")
        );
        c.context = Some("b".into());
        assert_eq!(c.build(url, None).unwrap().1.as_deref(), Some("from-file"));
        let e = c.build("http://10.0.0.7:8080", None).unwrap_err();
        assert!(e.contains("in clear"), "{e}");
        c.context = Some("nope".into());
        assert!(
            c.build(url, None)
                .unwrap_err()
                .contains("no context `nope`")
        );
    }
}
