//! Optional TLS on the API listener (rustls with ring), with the certificate and key re-read
//! when their files change, so a rotated certificate (cert-manager, a mounted Secret) is
//! served without a restart.
//!
//! The files are checked at most once a second, on a handshake: when the modification time
//! or size of either changed, both are read again; a pair that does not load (half-written,
//! key not matching) is logged and the previous certificate stays in force until a good
//! pair appears.
//!
//! With `tls.clientCAFile`, clients may present a certificate signed by one of those CAs
//! (rustls `WebPkiClientVerifier`; a client without one is still served, so bearer tokens keep
//! working; a certificate from any other CA fails the handshake). The caller's identity is the
//! certificate's SPIFFE URI SAN, else its subject CN ([`identity_of`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often, at most, the files are checked for a change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Certificate chain and key files (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let (c, k) = (one(&files.cert)?, one(&files.key)?);
    Some((c.0, c.1, k.0, k.1))
}

/// Reads and checks a certificate and key pair.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("tls.certFile {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.certFile {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.certFile {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls.keyFile {}: {e}", files.key.display()))?;
    let signer = any_supported_type(&key)
        .map_err(|e| format!("tls.keyFile {}: {e}", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        format!(
            "tls: the key in {} does not match the certificate in {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(ck)
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// A [`ResolvesServerCert`] that serves the pair in force and re-reads the files when they
/// change (see the module docs).
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Current>,
}

impl ReloadingCert {
    /// Loads the pair now; an error names the file (the daemon refuses to start).
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let stamp = stamp(&files);
        let key = Arc::new(load(&files)?);
        Ok(Self {
            files,
            current: RwLock::new(Current {
                key,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn maybe_reload(&self) {
        let due = self
            .current
            .read()
            .map(|c| c.checked.elapsed() >= RECHECK)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut c) = self.current.write() else {
            return;
        };
        c.checked = Instant::now();
        let now = stamp(&self.files);
        if now == c.stamp {
            return;
        }
        c.stamp = now;
        match load(&self.files) {
            Ok(k) => {
                tracing::info!(cert = %self.files.cert.display(), "API TLS certificate reloaded");
                c.key = Arc::new(k);
            }
            Err(e) => {
                tracing::error!(
                    "API TLS certificate changed but does not load; keeping the previous one: {e}"
                );
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// The listener's TLS configuration: TLS 1.2 and 1.3 with ring, HTTP/1.1, the reloading
/// certificate.
pub fn server_config(files: TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_with(files, None)
}

/// The identity of a client whose certificate was verified at the handshake, put on each of
/// the connection's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// A certificate's identity: its first `spiffe://` URI SAN, else its subject CN (None when
/// it has neither or does not parse).
pub fn identity_of(cert: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let spiffe = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
                _ => None,
            })
        });
    spiffe.or_else(|| {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .map(str::to_string)
    })
}

/// Reads the client CA bundle (`tls.clientCAFile`, PEM) into a verifier that accepts
/// certificates chaining to it and clients without any.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let at = |e: &dyn std::fmt::Display| format!("tls.clientCAFile {}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| at(&e))? {
        roots.add(cert.map_err(|e| at(&e))?).map_err(|e| at(&e))?;
    }
    if roots.is_empty() {
        return Err(at(&"no certificate in the file"));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| at(&e))
}

/// [`server_config`], asking clients for a certificate signed by a CA in `client_ca`.
pub fn server_config_with(
    files: TlsFiles,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let resolver = ReloadingCert::new(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(cn: Option<&str>, sans: &[rcgen::SanType]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        p.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// Ensures the identity is the SPIFFE URI SAN when there is one (other URIs and DNS
    /// names are not identities), else the subject CN, else none.
    #[test]
    fn identity_is_the_spiffe_uri_else_the_cn() {
        let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
        let dns = rcgen::SanType::DnsName("bot.example".try_into().unwrap());
        let both = cert(
            Some("alice"),
            &[
                dns.clone(),
                uri("https://example.org/x"),
                uri("spiffe://cluster.local/ns/ops/sa/runbook"),
            ],
        );
        assert_eq!(
            identity_of(&both).as_deref(),
            Some("spiffe://cluster.local/ns/ops/sa/runbook")
        );
        let cn_only = cert(Some("alice@oncall"), &[dns, uri("https://example.org/x")]);
        assert_eq!(identity_of(&cn_only).as_deref(), Some("alice@oncall"));
        assert_eq!(identity_of(&cert(None, &[])), None);
        assert_eq!(identity_of(b"not a certificate"), None);
    }
}
