//! Name checks: DNS-1123 labels and subdomains, and destination hosts as Istio's webhook
//! checks them.

/// Checks a DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a DNS-1123 label (lowercase letters, digits and `-`, at most 63, starting and ending alphanumeric)"
        ))
    }
}

/// Checks a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(format!("`{s}` is not a DNS-1123 subdomain"));
    }
    Ok(())
}

/// Checks a destination host the way Istio's webhook does: a valid domain name, not `*`,
/// not empty (an empty host black-holes traffic), no scheme or port.
pub fn check_host(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("host must not be empty".into());
    }
    if s == "*" || s.contains('*') {
        return Err(format!("host `{s}` must not be a wildcard"));
    }
    if s.contains("://") || s.contains(':') || s.contains('/') {
        return Err(format!(
            "host `{s}` must be a bare host name (no scheme, port or path; put the port in `port`)"
        ));
    }
    let lower = s.to_ascii_lowercase();
    check_dns_subdomain(&lower).map_err(|_| format!("host `{s}` is not a valid domain name"))
}
