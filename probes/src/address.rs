//! The `host:port` rule shared by TCP and gRPC probes (a leaf module, so the gRPC
//! probe and the load-time checks do not import each other).

use std::net::{Ipv6Addr, SocketAddr};

use crate::ProbeError;

/// Checks that `address` is `host:port` with a port in `1..=65535` and a host that can
/// resolve (an IP literal, bracketed IPv6, or a DNS name without forbidden characters).
pub(crate) fn check_address(address: &str) -> Result<(), ProbeError> {
    let invalid = |reason: &str| ProbeError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    // IP literals (including bracketed IPv6) are fully handled by std.
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(invalid("port must be in 1..=65535"))
        } else {
            Ok(())
        };
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("port must be a number in 1..=65535"))?;
    if port == 0 {
        return Err(invalid("port must be in 1..=65535"));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(invalid("bracketed host is not an IPv6 address")),
        };
    }
    // A DNS name: reject what can never resolve rather than model full RFC 1123.
    let bad_char = |c: char| c.is_whitespace() || matches!(c, ':' | '/' | '[' | ']' | '@');
    if host.is_empty() {
        Err(invalid("empty host"))
    } else if host.contains(bad_char) {
        Err(invalid(
            "host contains characters not allowed in a host name (IPv6 needs [brackets])",
        ))
    } else {
        Ok(())
    }
}
