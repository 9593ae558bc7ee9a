//! istiod's webhook rules for a VirtualService (`validateVirtualService` and the route,
//! destination and domain checks it calls), run after the schema check passes.

use serde_json::Value;

use super::names::{subset_name, wildcard_domain};
use super::schema::check_schema;
use super::{Source, Violation};

/// Every violation of a VirtualService, schema ones first. Empty means valid.
pub fn check_virtual_service(obj: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    check_schema(obj, "VirtualService", &mut out);
    if out.is_empty() {
        webhook_virtual_service(obj, &mut out);
    }
    out
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// istiod's `validateVirtualService`, the parts that matter for routing.
fn webhook_virtual_service(obj: &Value, out: &mut Vec<Violation>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut err = |path: String, message: String| {
        out.push(Violation {
            path,
            message,
            source: Source::Webhook,
        })
    };
    let hosts = arr(spec, "hosts");
    let gateways = arr(spec, "gateways");
    let (http, tcp, tls) = (arr(spec, "http"), arr(spec, "tcp"), arr(spec, "tls"));
    // A VirtualService without hosts is a delegate (istiod's PILOT_ENABLE_VIRTUAL_SERVICE_DELEGATE
    // is on by default): it may only carry http routes and is bound to no gateway.
    let delegate = hosts.is_empty();
    if delegate {
        if !gateways.is_empty() {
            err(
                "spec.gateways".into(),
                "delegate virtual service must have no gateways specified".into(),
            );
        }
        if !tls.is_empty() {
            err(
                "spec.tls".into(),
                "delegate virtual service must have no tls route specified".into(),
            );
        }
        if !tcp.is_empty() {
            err(
                "spec.tcp".into(),
                "delegate virtual service must have no tcp route specified".into(),
            );
        }
    }
    // No gateways means the mesh gateway.
    let mesh = gateways.is_empty() || gateways.iter().any(|g| g.as_str() == Some("mesh"));
    for (i, h) in hosts.iter().enumerate() {
        let h = h.as_str().unwrap_or("");
        let path = format!("spec.hosts[{i}]");
        if h == "*" {
            if mesh {
                err(
                    path,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway"
                        .into(),
                );
            }
        } else if h.parse::<std::net::IpAddr>().is_err()
            && let Err(m) = wildcard_domain(h)
        {
            err(path, m);
        }
    }
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        err(
            "spec".into(),
            "http, tcp or tls must be provided in virtual service".into(),
        );
    }
    for (i, r) in http.iter().enumerate() {
        let p = format!("spec.http[{i}]");
        let route = arr(r, "route");
        let has = |k: &str| r.get(k).is_some_and(|v| !v.is_null());
        if has("redirect") {
            if !route.is_empty() {
                err(
                    p.clone(),
                    "HTTP route cannot contain both route and redirect".into(),
                );
            }
            if has("fault") {
                err(
                    p.clone(),
                    "HTTP route cannot contain both fault and redirect".into(),
                );
            }
            if has("rewrite") {
                err(
                    p.clone(),
                    "HTTP route rule cannot contain both rewrite and redirect".into(),
                );
            }
        }
        if has("directResponse") {
            if !route.is_empty() {
                err(
                    p.clone(),
                    "HTTP route cannot contain both route and direct_response".into(),
                );
            }
            if has("redirect") {
                err(
                    p.clone(),
                    "HTTP route cannot contain both redirect and direct_response".into(),
                );
            }
        }
        if has("delegate") {
            if delegate {
                err(
                    format!("{p}.delegate"),
                    "http delegate only allowed in root virtual service".into(),
                );
            }
            if !route.is_empty() {
                err(
                    p.clone(),
                    "HTTP route cannot contain both route and delegate".into(),
                );
            }
            if has("redirect") {
                err(
                    p.clone(),
                    "HTTP route cannot contain both redirect and delegate".into(),
                );
            }
        }
        if !has("redirect") && !has("directResponse") && !has("delegate") && route.is_empty() {
            err(
                p.clone(),
                "HTTP route, redirect or direct_response is required".into(),
            );
        }
        if has("mirror") && !arr(r, "mirrors").is_empty() {
            err(
                p.clone(),
                "HTTP route cannot contain both mirror and mirrors".into(),
            );
        }
        if let Some(m) = r.get("mirror").filter(|m| m.is_object()) {
            destination(m, &format!("{p}.mirror"), &mut err);
        }
        for (k, m) in arr(r, "mirrors").iter().enumerate() {
            if let Some(d) = m.get("destination") {
                destination(d, &format!("{p}.mirrors[{k}].destination"), &mut err);
            }
        }
        weighted(route, &format!("{p}.route"), &mut err);
    }
    for (key, list) in [("tcp", tcp), ("tls", tls)] {
        for (i, r) in list.iter().enumerate() {
            let p = format!("spec.{key}[{i}].route");
            if arr(r, "route").is_empty() {
                err(p.clone(), "route is required".into());
            }
            weighted(arr(r, "route"), &p, &mut err);
        }
    }
}

/// `validateHTTPRouteDestinations` / `validateRouteDestinations`: each destination valid,
/// weights >= 0 and, with more than one destination, not all 0.
fn weighted(route: &[Value], p: &str, err: &mut impl FnMut(String, String)) {
    let mut total: i64 = 0;
    for (j, rd) in route.iter().enumerate() {
        match rd.get("destination") {
            Some(d) if d.is_object() => destination(d, &format!("{p}[{j}].destination"), err),
            _ => err(
                format!("{p}[{j}].destination"),
                "destination is required".into(),
            ),
        }
        let w = rd.get("weight").and_then(Value::as_i64).unwrap_or(0);
        if w < 0 {
            err(format!("{p}[{j}].weight"), format!("weight {w} < 0"));
        }
        // Saturating: weights come from whoever wrote the object; two huge ones must not
        // overflow the sum.
        total = total.saturating_add(w);
    }
    if route.len() > 1 && total == 0 {
        err(p.to_string(), "total destination weight = 0".into());
    }
}

/// `validateDestination`: host not `*` and a (wildcard) domain; subset a DNS-1123 label.
fn destination(d: &Value, p: &str, err: &mut impl FnMut(String, String)) {
    let host = d.get("host").and_then(Value::as_str).unwrap_or("");
    if host == "*" {
        err(format!("{p}.host"), "invalid destination host *".into());
    } else if let Err(m) = wildcard_domain(host) {
        err(format!("{p}.host"), m);
    }
    if let Some(s) = d.get("subset").and_then(Value::as_str)
        && !s.is_empty()
        && let Err(m) = subset_name(s)
    {
        err(format!("{p}.subset"), m);
    }
}
