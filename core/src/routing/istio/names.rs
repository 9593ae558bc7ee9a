//! Name rules shared by both kinds: DNS-1123 labels and subdomains, subset names and
//! (wildcard) domains, as Istio and Kubernetes define them.

/// Istio's DNS-1123 label (`pkg/config/labels`): letters of either case, digits, inner `-`.
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Kubernetes object names (lowercase RFC 1123 subdomain, at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

pub(super) fn subset_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("subset name cannot be empty".into())
    } else if !is_label(s) {
        Err(format!("subset name is invalid: {s}"))
    } else {
        Ok(())
    }
}

/// `ValidateWildcardDomain`: only the first label may be (or start with) a wildcard.
pub(super) fn wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    let wildcard_ok = first == "*"
        || (first.len() <= 63
            && is_label(
                first
                    .strip_prefix("*-")
                    .or_else(|| first.strip_prefix('*'))
                    .unwrap_or(first),
            ));
    if !wildcard_ok {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    if let Some(rest) = rest {
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        for label in rest.split('.') {
            if !is_label(label) {
                return Err(format!(
                    "domain name {domain:?} invalid (label {label:?} invalid)"
                ));
            }
        }
    }
    Ok(())
}
