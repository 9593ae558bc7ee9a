//! The kinds failoverd reads for residency and mesh policy (Namespace, PeerAuthentication,
//! ServiceEntry): what the API server sets on a new Namespace, and the checks a cluster
//! with the Istio CRDs makes, written here from the Kubernetes and Istio rules (never with
//! failoverd's own code, which these objects exist to test).

use serde_json::{Map, Value, json};

use crate::kube_emulator::resources::Res;

use super::objects::now;

/// Whether the kind is checked here.
pub(super) fn served_here(res: &Res) -> bool {
    matches!(
        res.kind,
        "Namespace" | "PeerAuthentication" | "ServiceEntry"
    )
}

/// What the API server adds to a new Namespace: the `kubernetes` finalizer, phase Active, and
/// the immutable label `kubernetes.io/metadata.name`.
pub(super) fn init_cluster_scoped(obj: &mut Value, res: &Res) {
    if res.kind != "Namespace" {
        return;
    }
    let name = obj["metadata"]["name"].clone();
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    obj["spec"] = json!({"finalizers": ["kubernetes"]});
    obj["status"] = json!({"phase": "Active"});
}

/// What a write to a Namespace cannot change: its name label is put back, and `spec`
/// (finalizers, changed only through `/finalize`) and `status` (a subresource) are kept.
pub(super) fn keep_server_fields(res: &Res, old: &Value, new: &mut Value) {
    if res.kind != "Namespace" {
        return;
    }
    if !new["metadata"]["labels"].is_object() {
        new["metadata"]["labels"] = json!({});
    }
    new["metadata"]["labels"]["kubernetes.io/metadata.name"] = old["metadata"]["name"].clone();
    for f in ["spec", "status"] {
        match old.get(f) {
            Some(v) => new[f] = v.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
}

/// A deleted Namespace as the DELETE answers it.
pub(super) fn terminating(mut obj: Value) -> Value {
    obj["metadata"]["deletionTimestamp"] = json!(now());
    obj["status"] = json!({"phase": "Terminating"});
    obj
}

type Causes = Vec<(String, String)>;

/// The 422 causes (field, message) for an object of a kind [`served_here`].
pub(super) fn check(res: &Res, obj: &Value, name: &str) -> Causes {
    let mut c = Causes::new();
    if res.kind == "Namespace" {
        if !is_dns1123_label(name) {
            c.push((
                "metadata.name".into(),
                format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                ),
            ));
        }
    } else if !is_dns1123_subdomain(name) {
        c.push((
            "metadata.name".into(),
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
        ));
    }
    check_labels(&obj["metadata"]["labels"], &mut c);
    match res.kind {
        "PeerAuthentication" => check_peer_authentication(obj, &mut c),
        "ServiceEntry" => check_service_entry(obj, &mut c),
        _ => {}
    }
    c
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The structural schema's type error, as the API server words it.
fn wrong_type(field: &str, v: &Value, want: &str, c: &mut Causes) {
    let got = type_name(v);
    c.push((
        field.into(),
        format!("Invalid value: \"{got}\": {field} in body must be of type {want}: \"{got}\""),
    ));
}

/// The field as an object (absent: None; another type: a cause).
fn object<'a>(v: &'a Value, field: &str, c: &mut Causes) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Null => None,
        Value::Object(m) => Some(m),
        other => {
            wrong_type(field, other, "object", c);
            None
        }
    }
}

fn enum_value(v: &Value, field: &str, allowed: &[&str], c: &mut Causes) {
    match v {
        Value::Null => {}
        Value::String(s) if allowed.contains(&s.as_str()) => {}
        Value::String(s) => {
            let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            c.push((
                field.into(),
                format!(
                    "Unsupported value: {s:?}: supported values: {}",
                    list.join(", ")
                ),
            ));
        }
        other => wrong_type(field, other, "string", c),
    }
}

const MTLS_MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

fn check_peer_authentication(obj: &Value, c: &mut Causes) {
    let Some(spec) = object(&obj["spec"], "spec", c) else {
        return;
    };
    if let Some(sel) = object(
        spec.get("selector").unwrap_or(&Value::Null),
        "spec.selector",
        c,
    ) {
        string_map(
            sel.get("matchLabels").unwrap_or(&Value::Null),
            "spec.selector.matchLabels",
            c,
        );
    }
    if let Some(m) = object(spec.get("mtls").unwrap_or(&Value::Null), "spec.mtls", c) {
        enum_value(
            m.get("mode").unwrap_or(&Value::Null),
            "spec.mtls.mode",
            MTLS_MODES,
            c,
        );
    }
    let ports = spec.get("portLevelMtls").unwrap_or(&Value::Null);
    if let Some(ports) = object(ports, "spec.portLevelMtls", c) {
        for (port, v) in ports {
            let field = format!("spec.portLevelMtls[{port}]");
            if !port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                c.push((
                    "spec.portLevelMtls".into(),
                    "Invalid value: \"object\": port must be between 1-65535".into(),
                ));
            }
            if let Some(m) = object(v, &field, c) {
                enum_value(
                    m.get("mode").unwrap_or(&Value::Null),
                    &format!("{field}.mode"),
                    MTLS_MODES,
                    c,
                );
            }
        }
        // Istio's CRD rule (x-kubernetes-validations).
        let has_selector = spec.get("selector").is_some_and(|s| !s.is_null());
        if !ports.is_empty() && !has_selector {
            c.push((
                "spec".into(),
                "Invalid value: \"object\": portLevelMtls requires selector".into(),
            ));
        }
    }
}

fn check_service_entry(obj: &Value, c: &mut Causes) {
    let Some(spec) = object(&obj["spec"], "spec", c) else {
        c.push(("spec".into(), "Required value".into()));
        return;
    };
    match spec.get("hosts") {
        None | Some(Value::Null) => c.push(("spec.hosts".into(), "Required value".into())),
        Some(Value::Array(hosts)) => {
            if hosts.is_empty() {
                c.push((
                    "spec.hosts".into(),
                    "Invalid value: 0: spec.hosts in body should have at least 1 items".into(),
                ));
            }
            for (i, h) in hosts.iter().enumerate() {
                if !h.is_string() {
                    wrong_type(&format!("spec.hosts[{i}]"), h, "string", c);
                }
            }
        }
        Some(other) => wrong_type("spec.hosts", other, "array", c),
    }
    enum_value(
        spec.get("location").unwrap_or(&Value::Null),
        "spec.location",
        &["MESH_EXTERNAL", "MESH_INTERNAL"],
        c,
    );
    enum_value(
        spec.get("resolution").unwrap_or(&Value::Null),
        "spec.resolution",
        &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"],
        c,
    );
}

/// A map of strings (label selectors).
fn string_map(v: &Value, field: &str, c: &mut Causes) {
    if let Some(m) = object(v, field, c) {
        for (k, v) in m {
            if !v.is_string() {
                wrong_type(&format!("{field}.{k}"), v, "string", c);
            }
        }
    }
}

/// Label keys and values, as apimachinery's `ValidateLabels`.
fn check_labels(labels: &Value, c: &mut Causes) {
    let Some(map) = object(labels, "metadata.labels", c) else {
        return;
    };
    for (k, v) in map {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if prefix.is_some_and(|p| !is_dns1123_subdomain(p))
            || !is_label_value(name)
            || name.is_empty()
        {
            c.push((
                "metadata.labels".into(),
                format!(
                    "Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                ),
            ));
        }
        match v.as_str() {
            Some(s) if is_label_value(s) => {}
            Some(s) => c.push((
                "metadata.labels".into(),
                format!(
                    "Invalid value: {s:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                ),
            )),
            None => wrong_type(&format!("metadata.labels.{k}"), v, "string", c),
        }
    }
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63 characters.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Dot-separated RFC 1123 labels, at most 253 characters.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}
