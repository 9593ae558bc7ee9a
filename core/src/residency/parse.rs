//! Reading the four kinds of object into the facts [`ClusterView`](super::ClusterView) keeps:
//! only the fields the residency and policy rules look at, each checked for its shape.
//!
//! Enum defaults follow Istio's protobuf definitions: a PeerAuthentication `mtls` without
//! `mode` is `UNSET` (inherit), and a DestinationRule `tls` block without `mode` is `DISABLE`
//! (the zero value of `ClientTLSSettings.TLSmode`), so `tls: {}` counts as disabling TLS.

use serde_json::Value;

use super::{
    DestRule, JURISDICTION_LABEL, Kind, MtlsMode, ObjKey, PeerAuth, SvcEntry, TlsOff,
    normalize_host,
};

/// Which of the four kinds an object is, by apiVersion and kind (any version of the Istio
/// groups: clusters still serve v1beta1 beside v1).
pub(super) fn kind_of(obj: &Value) -> Option<Kind> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    match (group, api_version, kind) {
        ("", "v1", "Namespace") => Some(Kind::Namespace),
        ("security.istio.io", _, "PeerAuthentication") => Some(Kind::PeerAuthentication),
        ("networking.istio.io", _, "DestinationRule") => Some(Kind::DestinationRule),
        ("networking.istio.io", _, "ServiceEntry") => Some(Kind::ServiceEntry),
        _ => None,
    }
}

/// The object's key: its kind, namespace (empty for Namespaces; `default` when a manifest
/// names none, as `kubectl apply` would) and name.
pub(super) fn key_of(kind: Kind, obj: &Value) -> Result<ObjKey, String> {
    let meta = &obj["metadata"];
    let ns = match kind {
        Kind::Namespace => String::new(),
        _ => match meta.get("namespace") {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                return Err(format!(
                    "{}: metadata.namespace is not a non-empty string",
                    kind.name()
                ));
            }
        },
    };
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            let at = if ns.is_empty() {
                String::new()
            } else {
                format!(" in namespace {ns}")
            };
            return Err(format!("{}{at}: metadata.name is missing", kind.name()));
        }
    };
    Ok(ObjKey { kind, ns, name })
}

/// An error naming the object and the field.
fn bad(key: &ObjKey, field: &str, what: &str) -> String {
    format!("{} {}: {field} {what}", key.kind.name(), key.display())
}

/// The jurisdiction label's raw value (None: no label).
pub(super) fn jurisdiction_label(key: &ObjKey, obj: &Value) -> Result<Option<String>, String> {
    match obj["metadata"].get("labels") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(labels)) => match labels.get(JURISDICTION_LABEL) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(
                key,
                &format!("metadata.labels.{JURISDICTION_LABEL}"),
                "is not a string",
            )),
        },
        Some(_) => Err(bad(key, "metadata.labels", "is not a map")),
    }
}

/// `spec` as an object (missing or null: empty).
fn spec<'a>(
    key: &ObjKey,
    obj: &'a Value,
) -> Result<Option<&'a serde_json::Map<String, Value>>, String> {
    match obj.get("spec") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(key, "spec", "is not a map")),
    }
}

fn mtls_mode(key: &ObjKey, field: &str, v: Option<&Value>) -> Result<MtlsMode, String> {
    let block = match v {
        None | Some(Value::Null) => return Ok(MtlsMode::Unset),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(key, field, "is not a map")),
    };
    match block.get("mode") {
        None | Some(Value::Null) => Ok(MtlsMode::Unset),
        Some(Value::String(s)) => match s.as_str() {
            "UNSET" => Ok(MtlsMode::Unset),
            "DISABLE" => Ok(MtlsMode::Disable),
            "PERMISSIVE" => Ok(MtlsMode::Permissive),
            "STRICT" => Ok(MtlsMode::Strict),
            other => Err(bad(
                key,
                &format!("{field}.mode"),
                &format!("is {other:?}, not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
            )),
        },
        Some(_) => Err(bad(key, &format!("{field}.mode"), "is not a string")),
    }
}

pub(super) fn peer_authentication(key: &ObjKey, obj: &Value) -> Result<PeerAuth, String> {
    let Some(spec) = spec(key, obj)? else {
        return Ok(PeerAuth::default());
    };
    // A selector with no labels selects every workload: Istio treats it as namespace-wide.
    let workload = match spec.get("selector") {
        None | Some(Value::Null) => false,
        Some(Value::Object(sel)) => match sel.get("matchLabels") {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(_) => return Err(bad(key, "spec.selector.matchLabels", "is not a map")),
        },
        Some(_) => return Err(bad(key, "spec.selector", "is not a map")),
    };
    let mode = mtls_mode(key, "spec.mtls", spec.get("mtls"))?;
    let mut ports = Vec::new();
    match spec.get("portLevelMtls") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (port, block) in m {
                let field = format!("spec.portLevelMtls.{port}");
                ports.push((port.clone(), mtls_mode(key, &field, Some(block))?));
            }
        }
        Some(_) => return Err(bad(key, "spec.portLevelMtls", "is not a map")),
    }
    Ok(PeerAuth {
        workload,
        mode,
        ports,
    })
}

/// Whether a `tls` block disables TLS (a missing block does not; a block without `mode` does).
fn tls_disabled(key: &ObjKey, field: &str, v: Option<&Value>) -> Result<bool, String> {
    let block = match v {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(key, field, "is not a map")),
    };
    match block.get("mode") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(s)) => match s.as_str() {
            "DISABLE" => Ok(true),
            "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL" => Ok(false),
            other => Err(bad(
                key,
                &format!("{field}.mode"),
                &format!("is {other:?}, not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            )),
        },
        Some(_) => Err(bad(key, &format!("{field}.mode"), "is not a string")),
    }
}

/// The places in one `trafficPolicy` that disable TLS.
fn traffic_policy(
    key: &ObjKey,
    field: &str,
    v: Option<&Value>,
    subset: Option<&str>,
    out: &mut Vec<TlsOff>,
) -> Result<(), String> {
    let tp = match v {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad(key, field, "is not a map")),
    };
    if tls_disabled(key, &format!("{field}.tls"), tp.get("tls"))? {
        out.push(TlsOff {
            subset: subset.map(str::to_string),
            port: None,
        });
    }
    match tp.get("portLevelSettings") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, p) in list.iter().enumerate() {
                let f = format!("{field}.portLevelSettings[{i}]");
                if !p.is_object() {
                    return Err(bad(key, &f, "is not a map"));
                }
                if tls_disabled(key, &format!("{f}.tls"), p.get("tls"))? {
                    let port = match &p["port"]["number"] {
                        Value::Number(n) => n.to_string(),
                        _ => format!("#{i}"),
                    };
                    out.push(TlsOff {
                        subset: subset.map(str::to_string),
                        port: Some(port),
                    });
                }
            }
        }
        Some(_) => {
            return Err(bad(
                key,
                &format!("{field}.portLevelSettings"),
                "is not a list",
            ));
        }
    }
    Ok(())
}

pub(super) fn destination_rule(key: &ObjKey, obj: &Value) -> Result<DestRule, String> {
    let spec = spec(key, obj)?.ok_or_else(|| bad(key, "spec.host", "is missing"))?;
    let host = match spec.get("host") {
        Some(Value::String(s)) if !s.is_empty() => normalize_host(s, Some(&key.ns)),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(bad(key, "spec.host", "is missing"));
        }
        Some(_) => return Err(bad(key, "spec.host", "is not a string")),
    };
    let mut off = Vec::new();
    traffic_policy(
        key,
        "spec.trafficPolicy",
        spec.get("trafficPolicy"),
        None,
        &mut off,
    )?;
    match spec.get("subsets") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.iter().enumerate() {
                let f = format!("spec.subsets[{i}]");
                let name = match s.get("name") {
                    Some(Value::String(n)) if !n.is_empty() => n.as_str(),
                    _ => return Err(bad(key, &format!("{f}.name"), "is missing")),
                };
                traffic_policy(
                    key,
                    &format!("{f}.trafficPolicy"),
                    s.get("trafficPolicy"),
                    Some(name),
                    &mut off,
                )?;
            }
        }
        Some(_) => return Err(bad(key, "spec.subsets", "is not a list")),
    }
    Ok(DestRule { host, off })
}

pub(super) fn service_entry(key: &ObjKey, obj: &Value) -> Result<SvcEntry, String> {
    let spec = spec(key, obj)?.ok_or_else(|| bad(key, "spec.hosts", "is missing"))?;
    let hosts = match spec.get("hosts") {
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut hosts = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                match h.as_str() {
                    Some(s) if !s.is_empty() => hosts.push(normalize_host(s, None)),
                    _ => {
                        return Err(bad(
                            key,
                            &format!("spec.hosts[{i}]"),
                            "is not a non-empty string",
                        ));
                    }
                }
            }
            hosts
        }
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(bad(key, "spec.hosts", "is missing or empty"));
        }
        Some(_) => return Err(bad(key, "spec.hosts", "is not a list")),
    };
    Ok(SvcEntry {
        hosts,
        jurisdiction: jurisdiction_label(key, obj)?,
    })
}

/// Best effort for an object that failed to parse: the hosts it seems to name (None when
/// even that cannot be read, so the judge assumes it may name any host).
pub(super) fn hosts_hint(kind: Kind, ns: &str, obj: &Value) -> Option<Vec<String>> {
    match kind {
        Kind::DestinationRule => obj["spec"]["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(|h| vec![normalize_host(h, Some(ns))]),
        Kind::ServiceEntry => {
            let list = obj["spec"]["hosts"].as_array()?;
            let hosts: Option<Vec<String>> = list
                .iter()
                .map(|h| {
                    h.as_str()
                        .filter(|s| !s.is_empty())
                        .map(|s| normalize_host(s, None))
                })
                .collect();
            hosts.filter(|h| !h.is_empty())
        }
        _ => None,
    }
}
