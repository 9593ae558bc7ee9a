//! gRPC health probes: one `grpc.health.v1.Health/Check` call per attempt.
//!
//! The endpoint (URI, TLS, connect timeout, authority) is built once per probe; every
//! attempt opens a fresh HTTP/2 connection, for the same reason the HTTP probe does not
//! pool: a kept connection can hide a listener that stopped accepting.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{GrpcProbe, Outcome, ProbeError};

/// Backstop connect timeout when the probe sets none (its total timeout still applies).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Load-time checks: `host:port` address, authority and server name usable, TLS options
/// only with `tls`, CA file readable.
pub(crate) fn check(grpc: &GrpcProbe) -> Result<(), ProbeError> {
    crate::address::check_address(&grpc.address)?;
    let invalid = |field: &'static str, reason: String| ProbeError::InvalidGrpcOption {
        address: grpc.address.clone(),
        field,
        reason,
    };
    if let Some(authority) = &grpc.authority {
        authority
            .parse::<tonic::codegen::http::uri::Authority>()
            .map_err(|e| invalid("authority", format!("{authority:?}: {e}")))?;
    }
    if !grpc.tls {
        for (field, set) in [
            ("caFile", grpc.ca_file.is_some()),
            ("serverName", grpc.server_name.is_some()),
            ("insecureSkipVerify", grpc.insecure_skip_verify),
        ] {
            if set {
                return Err(invalid(field, "only applies with `tls: true`".to_owned()));
            }
        }
    }
    if let Some(path) = &grpc.ca_file {
        read_ca(path).map_err(|e| invalid("caFile", e))?;
    }
    if let Some(name) = &grpc.server_name {
        crate::tls::check_server_name(name).map_err(|e| invalid("serverName", e))?;
    }
    if grpc.insecure_skip_verify && grpc.ca_file.is_some() {
        return Err(invalid(
            "insecureSkipVerify",
            "contradicts caFile (nothing would be verified against it)".to_owned(),
        ));
    }
    Ok(())
}

fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    // The same parse as the HTTP probe's caFile, so both reject the same files.
    crate::tls::load_ca(path)?;
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds the endpoint once per probe (CA read, TLS config built).
pub(crate) fn endpoint(grpc: &GrpcProbe) -> Result<Endpoint, String> {
    let scheme = if grpc.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}", grpc.address);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("address {uri:?}: {e}"))?
        .connect_timeout(grpc.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
        .user_agent(concat!("failoverd-probe/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| format!("user agent: {e}"))?;
    if let Some(authority) = &grpc.authority {
        let origin: Uri = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| format!("authority {authority:?}: {e}"))?;
        endpoint = endpoint.origin(origin);
    }
    if grpc.tls {
        let mut tls = ClientTlsConfig::new().assume_http2(false);
        if let Some(name) = &grpc.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = if grpc.insecure_skip_verify {
            endpoint.tls_config_with_verifier(tls, Arc::new(AcceptAny::new()))
        } else if let Some(path) = &grpc.ca_file {
            let pem = read_ca(path)?;
            endpoint.tls_config(tls.ca_certificate(Certificate::from_pem(pem)))
        } else {
            endpoint.tls_config(tls.with_native_roots())
        }
        .map_err(|e| format!("tls: {}", crate::error_text::describe(&e)))?;
    }
    Ok(endpoint)
}

/// One Health/Check call on a fresh connection, bounded by `timeout` as a whole.
pub(crate) async fn attempt(endpoint: &Endpoint, service: &str, timeout: Duration) -> Outcome {
    let call = async {
        let channel = endpoint.connect().await.map_err(Failure::Connect)?;
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        client
            .check(request)
            .await
            .map(|r| r.into_inner().status)
            .map_err(Failure::Status)
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Outcome::Unhealthy(format!("timeout after {}ms", timeout.as_millis())),
        Ok(Ok(status)) => judge(service, status),
        Ok(Err(Failure::Connect(e))) => classify_connect(&e),
        Ok(Err(Failure::Status(s))) => classify_status(service, &s),
    }
}

enum Failure {
    Connect(tonic::transport::Error),
    Status(tonic::Status),
}

fn judge(service: &str, status: i32) -> Outcome {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Outcome::Healthy,
        Ok(other) => Outcome::Unhealthy(format!(
            "health of {}: {}",
            service_label(service),
            other.as_str_name()
        )),
        Err(_) => Outcome::Unhealthy(format!(
            "health of {}: unknown status {status}",
            service_label(service)
        )),
    }
}

fn service_label(service: &str) -> String {
    if service.is_empty() {
        "the server".to_owned()
    } else {
        format!("{service:?}")
    }
}

fn classify_connect(e: &tonic::transport::Error) -> Outcome {
    if let Some(io) = crate::error_text::io_cause(e)
        && crate::error_text::is_local_exhaustion(io)
    {
        return Outcome::Unknown(format!("local: {}", crate::error_text::describe_io(io)));
    }
    Outcome::Unhealthy(format!("connect: {}", crate::error_text::describe(e)))
}

fn classify_status(service: &str, s: &tonic::Status) -> Outcome {
    // A transport failure after the connect (reset, refused stream) surfaces as a status
    // with an I/O source: the target is at fault, as with HTTP.
    let reason = match s.code() {
        // The standard health server answers NOT_FOUND for a service it does not know:
        // SERVICE_UNKNOWN in the protocol's words.
        Code::NotFound => format!("health of {}: SERVICE_UNKNOWN", service_label(service)),
        Code::Unimplemented => "no grpc.health.v1.Health service (UNIMPLEMENTED)".to_owned(),
        code => {
            let message = s.message();
            if message.is_empty() {
                format!("rpc: {code:?}")
            } else {
                format!("rpc: {code:?}: {message}")
            }
        }
    };
    Outcome::Unhealthy(reason)
}

/// `insecureSkipVerify`: accepts any certificate, but still checks the handshake
/// signatures so the connection is a real TLS session.
#[derive(Debug)]
struct AcceptAny {
    provider: rustls::crypto::CryptoProvider,
}

impl AcceptAny {
    fn new() -> Self {
        Self {
            provider: rustls::crypto::ring::default_provider(),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
