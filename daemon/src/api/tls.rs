//! Optional TLS on the API listener (rustls with ring), with the certificate and key re-read
//! when their files change, so a rotated certificate (cert-manager, a mounted Secret) is
//! served without a restart.
//!
//! The files are checked at most once a second, on a handshake: when the modification time
//! or size of either changed, both are read again; a pair that does not load (half-written,
//! key not matching) is logged and the previous certificate stays in force until a good
//! pair appears.

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
    let resolver = ReloadingCert::new(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("tls: {e}"))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
