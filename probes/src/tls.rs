//! TLS helpers shared by the HTTP and gRPC probes and by load-time validation.
//!
//! A leaf module: the attempts (run time) and the checks (load time) both use it, so
//! neither has to import the other.

use std::path::Path;

use crate::error_text::{describe, describe_io};

/// Reads a PEM bundle of CA certificates (at least one).
pub(crate) fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("{}: {}", path.display(), describe_io(&e)))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in file", path.display()));
    }
    Ok(certs)
}

/// A TLS server name must be a DNS name (it replaces the URL's host for SNI).
pub(crate) fn check_server_name(name: &str) -> Result<(), String> {
    match rustls::pki_types::ServerName::try_from(name) {
        Ok(rustls::pki_types::ServerName::DnsName(_)) => Ok(()),
        Ok(_) => Err(format!("{name:?} is an IP address, not a DNS name")),
        Err(_) => Err(format!("{name:?} is not a valid DNS name")),
    }
}
