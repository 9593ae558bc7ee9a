//! Load-time validation of probe definitions, so a bad URL or address is reported
//! when the playbook is read rather than discovered (or panicking) at run time.

use crate::address::check_address;
use crate::{HttpProbe, ProbeError, ProbeKind, ProbeSpec};

/// Checks a probe kind without running it.
///
/// HTTP: the URL parses, its scheme is `http` or `https`, it has a host, and
/// `expect_status` is a non-empty list of codes in `100..=599` (an empty list could
/// never be healthy); the method and headers are valid HTTP tokens, `body_matches`
/// compiles, `ca_file` is readable and holds at least one PEM certificate,
/// `server_name` is a DNS name, and the TLS options are only used with `https://`.
/// TCP: the address is `host:port` with a port in `1..=65535`.
/// gRPC: the address as for TCP, the authority parses, the TLS options only with `tls`.
/// Used by playbook validation so a bad URL is a load-time error, never a run-time
/// panic.
pub fn check_kind(kind: &ProbeKind) -> Result<(), ProbeError> {
    match kind {
        ProbeKind::Http(http) => {
            check_url(&http.url)?;
            check_statuses(&http.url, &http.expect_status)?;
            check_http_options(http)
        }
        ProbeKind::Tcp(tcp) => check_address(&tcp.address),
        ProbeKind::Grpc(grpc) => crate::grpc::check(grpc),
    }
}

/// [`check_kind`] plus timing: `0 < timeout < interval`, and a connect timeout (if
/// any) in `(0, timeout]`.
pub fn check_spec(spec: &ProbeSpec) -> Result<(), ProbeError> {
    check_kind(&spec.kind)?;
    if spec.timeout.is_zero() || spec.timeout >= spec.interval {
        return Err(ProbeError::InvalidTiming(format!(
            "timeout {:?} must be greater than 0 and shorter than interval {:?}",
            spec.timeout, spec.interval
        )));
    }
    let connect_timeout = match &spec.kind {
        ProbeKind::Http(http) => http.connect_timeout,
        ProbeKind::Grpc(grpc) => grpc.connect_timeout,
        ProbeKind::Tcp(_) => None,
    };
    if let Some(connect) = connect_timeout
        && (connect.is_zero() || connect > spec.timeout)
    {
        return Err(ProbeError::InvalidTiming(format!(
            "connectTimeout {connect:?} must be greater than 0 and at most timeout {:?}",
            spec.timeout
        )));
    }
    Ok(())
}

fn check_http_options(http: &HttpProbe) -> Result<(), ProbeError> {
    let invalid = |field: &'static str, reason: String| ProbeError::InvalidHttpOption {
        url: http.url.clone(),
        field,
        reason,
    };
    reqwest::Method::from_bytes(http.method.as_bytes())
        .map_err(|_| invalid("method", format!("{:?} is not an HTTP method", http.method)))?;
    for (name, value) in &http.headers {
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid("headers", format!("{name:?} is not a header name")))?;
        reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "headers",
                format!("value of {name:?} is not a header value"),
            )
        })?;
    }
    if let Some(re) = &http.body_matches {
        regex::Regex::new(re).map_err(|e| invalid("bodyMatches", e.to_string()))?;
    }
    let https = http.url.starts_with("https://");
    if let Some(path) = &http.ca_file {
        if !https {
            return Err(invalid(
                "caFile",
                "only applies to https:// URLs".to_owned(),
            ));
        }
        crate::tls::load_ca(path).map_err(|e| invalid("caFile", e))?;
    }
    if let Some(name) = &http.server_name {
        if !https {
            return Err(invalid(
                "serverName",
                "only applies to https:// URLs".to_owned(),
            ));
        }
        crate::tls::check_server_name(name).map_err(|e| invalid("serverName", e))?;
    }
    if http.insecure_skip_verify && http.ca_file.is_some() {
        return Err(invalid(
            "insecureSkipVerify",
            "contradicts caFile (nothing would be verified against it)".to_owned(),
        ));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), ProbeError> {
    let invalid = |reason: String| ProbeError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(format!("scheme {other:?} is not http or https"))),
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(invalid("no host".to_owned())),
    }
}

fn check_statuses(url: &str, expect_status: &[u16]) -> Result<(), ProbeError> {
    let invalid = |reason: String| ProbeError::InvalidExpectStatus {
        url: url.to_owned(),
        reason,
    };
    if expect_status.is_empty() {
        return Err(invalid(
            "empty list: the probe could never be healthy".to_owned(),
        ));
    }
    match expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        Some(bad) => Err(invalid(format!("{bad} is not an HTTP status (100..=599)"))),
        None => Ok(()),
    }
}
