//! Validation of Istio `VirtualService` and `DestinationRule` objects the way a real cluster
//! does it: first the CRD's official `openAPIV3Schema` (what the Kubernetes API server checks,
//! answering 422 Invalid), then the rules of istiod's validating webhook `validation.istio.io`
//! (answering 400 "admission webhook ... denied the request").
//!
//! The schemas are the ones Istio ships (`core/schemas/istio-networking-crds.yaml`, see
//! `core/schemas/SOURCE.md` for provenance), compiled once. The schema alone is loose on
//! purpose (a negative weight passes it), which is why the webhook rules are re-implemented
//! here from istio/istio `pkg/config/validation`. CEL rules (`x-kubernetes-validations`) are
//! not evaluated.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

/// The two CRDs as Istio ships them (two YAML documents).
const CRDS_YAML: &str = include_str!("../../schemas/istio-networking-crds.yaml");

/// The API group of both kinds.
pub const GROUP: &str = "networking.istio.io";
/// The served versions of both CRDs, storage version first.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Which check a [`Violation`] comes from: the API server answers them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The CRD's openAPIV3Schema (or object-level rules of the API server): 422 Invalid.
    Schema,
    /// istiod's validating webhook: 400 with `admission webhook "validation.istio.io" denied
    /// the request: configuration is invalid: ...`.
    Webhook,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong, in the words of the API server or istiod.
    pub message: String,
    /// Which check found it.
    pub source: Source,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// One compiled schema per (kind, version); versions with identical schemas share it.
type Compiled = BTreeMap<(String, String), Arc<Result<jsonschema::Validator, String>>>;

static SCHEMAS: LazyLock<Result<Compiled, String>> = LazyLock::new(compile_all);

fn compile_all() -> Result<Compiled, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(CRDS_YAML)
        .map_err(|e| format!("istio-networking-crds.yaml: {e}"))?;
    let mut out = Compiled::new();
    for crd in docs {
        let kind = crd
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .ok_or("istio-networking-crds.yaml: a CRD without spec.names.kind")?
            .to_string();
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("istio-networking-crds.yaml: {kind} has no spec.versions"))?;
        let mut seen: Vec<(Value, Arc<Result<jsonschema::Validator, String>>)> = Vec::new();
        for v in versions {
            let name = v.get("name").and_then(Value::as_str).ok_or_else(|| {
                format!("istio-networking-crds.yaml: {kind} version without name")
            })?;
            if v.get("served").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let raw = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .ok_or_else(|| format!("{kind} {name}: no openAPIV3Schema"))?;
            let compiled = match seen.iter().find(|(s, _)| *s == raw) {
                Some((_, c)) => c.clone(),
                None => {
                    let schema = to_json_schema(raw.clone());
                    let c = Arc::new(
                        jsonschema::draft4::options()
                            .should_validate_formats(false)
                            .build(&schema)
                            .map_err(|e| format!("{kind} {name}: schema does not compile: {e}")),
                    );
                    seen.push((raw, c.clone()));
                    c
                }
            };
            out.insert((kind.clone(), name.to_string()), compiled);
        }
    }
    Ok(out)
}

/// Turns an OpenAPI v3 (Kubernetes structural) schema into a JSON Schema draft 4 one with the
/// same meaning for the keywords the Istio CRDs use:
/// - `nullable: true` lets `null` through (draft 4 has no `nullable`);
/// - `format: int32` / `uint32` become bounds (the API server rejects out-of-range numbers;
///   jsonschema ignores these formats);
/// - `x-kubernetes-*` keywords are dropped (`int-or-string` fields carry an `anyOf` already).
fn to_json_schema(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let nullable = m.get("nullable") == Some(&Value::Bool(true));
            let format = m.get("format").and_then(Value::as_str).map(str::to_string);
            let mut out = Map::new();
            for (k, val) in m {
                if k.starts_with("x-kubernetes-") || k == "nullable" {
                    continue;
                }
                // Property maps hold schemas under arbitrary names; recurse into everything.
                out.insert(k, to_json_schema(val));
            }
            let (lo, hi) = match format.as_deref() {
                Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
                Some("uint32") => (0, i64::from(u32::MAX)),
                _ => (0, -1),
            };
            if lo <= hi {
                out.remove("format");
                out.entry("minimum").or_insert(Value::from(lo));
                out.entry("maximum").or_insert(Value::from(hi));
            }
            if nullable && let Some(Value::String(t)) = out.get("type").cloned() {
                out.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(t), Value::String("null".into())]),
                );
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(to_json_schema).collect()),
        other => other,
    }
}

/// `/spec/http/0/route` → `spec.http[0].route`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

/// Checks apiVersion/kind and runs the served version's schema.
fn check_schema(obj: &Value, kind: &str, out: &mut Vec<Violation>) {
    let schema_err = |path: &str, message: String| Violation {
        path: path.into(),
        message,
        source: Source::Schema,
    };
    if !obj.is_object() {
        out.push(schema_err(
            "<root>",
            "the object must be a JSON object".into(),
        ));
        return;
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k == kind => {}
        other => out.push(schema_err(
            "kind",
            format!("Unsupported value: {other:?}: supported values: \"{kind}\""),
        )),
    }
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let version = match api_version.split_once('/') {
        Some((GROUP, v)) if VERSIONS.contains(&v) => v,
        _ => {
            out.push(schema_err(
                "apiVersion",
                format!(
                    "Unsupported value: {api_version:?}: supported values: \"{GROUP}/v1\", \
                     \"{GROUP}/v1beta1\", \"{GROUP}/v1alpha3\""
                ),
            ));
            "v1"
        }
    };
    if let Some(name) = obj.pointer("/metadata/name") {
        match name.as_str() {
            Some(n) if is_dns1123_subdomain(n) => {}
            _ => out.push(schema_err(
                "metadata.name",
                format!(
                    "Invalid value: {name}: a lowercase RFC 1123 subdomain must consist of lower \
                     case alphanumeric characters, '-' or '.', and must start and end with an \
                     alphanumeric character"
                ),
            )),
        }
    }
    let schemas = match &*SCHEMAS {
        Ok(s) => s,
        Err(e) => {
            out.push(schema_err("<schema>", e.clone()));
            return;
        }
    };
    let Some(validator) = schemas.get(&(kind.to_string(), version.to_string())) else {
        out.push(schema_err(
            "<schema>",
            format!("no schema for {kind} {version}"),
        ));
        return;
    };
    let validator = match validator.as_ref() {
        Ok(v) => v,
        Err(e) => {
            out.push(schema_err("<schema>", e.clone()));
            return;
        }
    };
    // The schema only describes spec and status; metadata is the API server's business.
    for e in validator.iter_errors(obj) {
        let path = pointer_to_path(&e.instance_path().to_string());
        out.push(schema_err(&path, e.to_string()));
    }
}

/// The raw openAPIV3Schema per (kind, version), for pruning.
static RAW: LazyLock<BTreeMap<(String, String), Value>> = LazyLock::new(|| {
    let mut out = BTreeMap::new();
    let docs: Vec<Value> = serde_saphyr::from_multiple(CRDS_YAML).unwrap_or_default();
    for crd in docs {
        let kind = crd
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .unwrap_or("");
        for v in crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(schema)) = (
                v.get("name").and_then(Value::as_str),
                v.pointer("/schema/openAPIV3Schema"),
            ) {
                out.insert((kind.to_string(), name.to_string()), schema.clone());
            }
        }
    }
    out
});

/// Drops the fields the CRD's structural schema does not know, as the API server does on
/// every write (unless `x-kubernetes-preserve-unknown-fields` keeps them), and returns their
/// paths. `apiVersion`, `kind` and `metadata` are left alone. Unknown kinds or versions are
/// not touched.
pub fn prune(obj: &mut Value) -> Vec<String> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|a| a.strip_prefix("networking.istio.io/"))
        .unwrap_or("")
        .to_string();
    let mut pruned = Vec::new();
    let Some(schema) = RAW.get(&(kind, version)) else {
        return pruned;
    };
    if let Some(map) = obj.as_object_mut() {
        let props = schema.get("properties");
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(sub) => {
                    if let Some(v) = map.get_mut(&k) {
                        prune_value(v, sub, &k, &mut pruned);
                    }
                }
                None => {
                    map.remove(&k);
                    pruned.push(k);
                }
            }
        }
    }
    pruned
}

fn prune_value(v: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                let child = format!("{path}.{k}");
                match sub {
                    Some(sub) => {
                        if let Some(cv) = map.get_mut(&k) {
                            prune_value(cv, sub, &child, pruned);
                        }
                    }
                    None => {
                        map.remove(&k);
                        pruned.push(child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item, sub, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Every violation of a VirtualService, schema ones first. Empty means valid.
pub fn check_virtual_service(obj: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    check_schema(obj, "VirtualService", &mut out);
    if out.is_empty() {
        webhook_virtual_service(obj, &mut out);
    }
    out
}

/// Every violation of a DestinationRule, schema ones first. Empty means valid.
pub fn check_destination_rule(obj: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    check_schema(obj, "DestinationRule", &mut out);
    if out.is_empty() {
        let subsets = obj.pointer("/spec/subsets").and_then(Value::as_array);
        for (i, s) in subsets.into_iter().flatten().enumerate() {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            if let Err(m) = subset_name(name) {
                out.push(Violation {
                    path: format!("spec.subsets[{i}].name"),
                    message: m,
                    source: Source::Webhook,
                });
            }
        }
    }
    out
}

/// Validates a whole VirtualService object (apiVersion/kind/metadata/spec JSON) against the
/// official Istio CRD openAPIV3Schema (the served version named by apiVersion: v1, v1beta1,
/// v1alpha3) and the istiod validating-webhook rules. Ok(()) or every violation, each naming
/// the JSON path, e.g. "spec.http[0].route[1].weight: weight -3 < 0".
pub fn validate_virtual_service(obj: &Value) -> Result<(), Vec<String>> {
    to_result(check_virtual_service(obj))
}

/// Same for a DestinationRule (schema only + subset name DNS-1123 label).
pub fn validate_destination_rule(obj: &Value) -> Result<(), Vec<String>> {
    to_result(check_destination_rule(obj))
}

fn to_result(v: Vec<Violation>) -> Result<(), Vec<String>> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.iter().map(Violation::to_string).collect())
    }
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

fn subset_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("subset name cannot be empty".into())
    } else if !is_label(s) {
        Err(format!("subset name is invalid: {s}"))
    } else {
        Ok(())
    }
}

/// `ValidateWildcardDomain`: only the first label may be (or start with) a wildcard.
fn wildcard_domain(domain: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo() -> Value {
        let text = include_str!("../../../playbooks/examples/demo-virtualservice.yaml");
        serde_saphyr::from_str(text).expect("demo VS parses")
    }

    fn errs(v: &Value) -> Vec<String> {
        validate_virtual_service(v).expect_err("must be rejected")
    }

    fn has(errs: &[String], needle: &str) -> bool {
        errs.iter().any(|e| e.contains(needle))
    }

    #[test]
    fn schemas_compile_for_every_served_version() {
        let s = SCHEMAS.as_ref().expect("schemas compile");
        for kind in ["VirtualService", "DestinationRule"] {
            for v in VERSIONS {
                let c = s
                    .get(&(kind.to_string(), v.to_string()))
                    .expect("version served");
                assert!(c.as_ref().is_ok(), "{kind} {v}");
            }
        }
    }

    #[test]
    fn real_examples_validate_in_every_version() {
        let mut vs = demo();
        for v in VERSIONS {
            vs["apiVersion"] = json!(format!("{GROUP}/{v}"));
            assert_eq!(validate_virtual_service(&vs), Ok(()), "{v}");
        }
        // The routing store tests' VS: two weighted destinations with ports, an unknown field
        // (not rejected: the schema does not forbid extra fields, the API server prunes them).
        let text = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: demo }
spec:
  hosts: [web.demo.svc.cluster.local, "*.example.com"]
  gateways: [mesh]
  http:
    - name: primary
      retries: { attempts: 2, perTryTimeout: 2s }
      timeout: 10s
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1, port: { number: 8080 } }
          weight: 90
        - destination: { host: web-dr.other, subset: v3, port: { number: 8080 } }
          weight: 10
      mirror: { host: shadow }
      x-unknown-field: kept
  tcp:
    - route:
        - destination: { host: db, port: { number: 5432 } }
"#;
        let vs: Value = serde_saphyr::from_str(text).expect("yaml");
        assert_eq!(validate_virtual_service(&vs), Ok(()));
        let dr = json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"host": "web.demo.svc.cluster.local",
                     "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
                                       "connectionPool": {"http": {"http2MaxRequests": 100}}},
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                 {"name": "v2", "labels": {"version": "v2"}}]}
        });
        assert_eq!(validate_destination_rule(&dr), Ok(()));
    }

    #[test]
    fn negative_weight_names_its_path() {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"]
            .as_array_mut()
            .expect("route")
            .push(json!({"destination": {"host": "web-dr"}, "weight": -3}));
        assert_eq!(
            errs(&vs),
            vec!["spec.http[1].route[1].weight: weight -3 < 0"]
        );
    }

    #[test]
    fn all_zero_weights_with_several_destinations() {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"] = json!([
            {"destination": {"host": "a"}, "weight": 0},
            {"destination": {"host": "b"}, "weight": 0}
        ]);
        assert_eq!(
            errs(&vs),
            vec!["spec.http[1].route: total destination weight = 0"]
        );
        // One destination with weight 0 is fine (it gets everything).
        vs["spec"]["http"][1]["route"] = json!([{"destination": {"host": "a"}, "weight": 0}]);
        assert_eq!(validate_virtual_service(&vs), Ok(()));
    }

    #[test]
    fn route_redirect_direct_response_exactly_one() {
        let mut vs = demo();
        vs["spec"]["http"][0]["redirect"] = json!({"uri": "/x"});
        assert!(has(
            &errs(&vs),
            "HTTP route cannot contain both route and redirect"
        ));
        let mut vs = demo();
        vs["spec"]["http"][0]["directResponse"] = json!({"status": 503});
        assert!(has(&errs(&vs), "both route and direct_response"));
        let mut vs = demo();
        vs["spec"]["http"][0]
            .as_object_mut()
            .expect("obj")
            .remove("route");
        assert!(has(
            &errs(&vs),
            "HTTP route, redirect or direct_response is required"
        ));
        let mut vs = demo();
        vs["spec"]["http"][0]["delegate"] = json!({"name": "d", "namespace": "n"});
        assert!(has(&errs(&vs), "both route and delegate"));
    }

    #[test]
    fn mirror_and_mirrors_are_exclusive() {
        let mut vs = demo();
        vs["spec"]["http"][1]["mirror"] = json!({"host": "shadow"});
        vs["spec"]["http"][1]["mirrors"] = json!([{"destination": {"host": "shadow2"}}]);
        assert_eq!(
            errs(&vs),
            vec!["spec.http[1]: HTTP route cannot contain both mirror and mirrors"]
        );
    }

    #[test]
    fn destination_host_rules() {
        for (host, msg) in [
            ("*", "invalid destination host *"),
            ("web..demo", "invalid (label \"\" invalid)"),
            ("we_b", "invalid (label \"we_b\" invalid)"),
            ("", "empty domain name not allowed"),
        ] {
            let mut vs = demo();
            vs["spec"]["http"][1]["route"][0]["destination"]["host"] = json!(host);
            let e = errs(&vs);
            assert!(
                has(&e, "spec.http[1].route[0].destination.host: "),
                "{host}: {e:?}"
            );
            assert!(has(&e, msg), "{host}: {e:?}");
        }
        // Short names and wildcard prefixes are allowed.
        for host in ["web", "*.demo.svc", "*web.demo"] {
            let mut vs = demo();
            vs["spec"]["http"][1]["route"][0]["destination"]["host"] = json!(host);
            assert_eq!(validate_virtual_service(&vs), Ok(()), "{host}");
        }
    }

    #[test]
    fn subset_must_be_a_dns1123_label() {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["destination"]["subset"] = json!("v_1");
        assert_eq!(
            errs(&vs),
            vec!["spec.http[1].route[0].destination.subset: subset name is invalid: v_1"]
        );
        let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web"},
            "spec": {"host": "web", "subsets": [{"name": "ok"}, {"name": "-bad"}]}});
        assert_eq!(
            validate_destination_rule(&dr),
            Err(vec![
                "spec.subsets[1].name: subset name is invalid: -bad".to_string()
            ])
        );
    }

    #[test]
    fn at_least_one_of_http_tcp_tls_and_hosts() {
        let mut vs = demo();
        vs["spec"].as_object_mut().expect("obj").remove("http");
        assert!(has(
            &errs(&vs),
            "http, tcp or tls must be provided in virtual service"
        ));
        // No hosts makes a delegate VirtualService, which may not name gateways.
        let mut vs = demo();
        vs["spec"]["hosts"] = json!([]);
        assert_eq!(
            errs(&vs),
            vec!["spec.gateways: delegate virtual service must have no gateways specified"]
        );
        let mut vs = demo();
        vs["spec"]["hosts"] = json!(["*"]);
        assert!(has(&errs(&vs), "wildcard host * is not allowed"));
        vs["spec"]["gateways"] = json!(["istio-system/ingress"]);
        assert_eq!(validate_virtual_service(&vs), Ok(()));
    }

    #[test]
    fn schema_violations_name_their_path() {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["weight"] = json!("heavy");
        let e = errs(&vs);
        assert!(has(&e, "spec.http[1].route[0].weight: "), "{e:?}");
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["weight"] = json!(3_000_000_000_i64);
        assert!(has(&errs(&vs), "spec.http[1].route[0].weight: "));
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["destination"]
            .as_object_mut()
            .expect("obj")
            .remove("host");
        assert!(has(&errs(&vs), "spec.http[1].route[0].destination: "));
        let mut vs = demo();
        vs["spec"]["hosts"] = json!("web");
        assert!(has(&errs(&vs), "spec.hosts: "));
        let mut vs = demo();
        vs["apiVersion"] = json!("networking.istio.io/v2");
        assert!(has(&errs(&vs), "apiVersion: Unsupported value"));
        let mut vs = demo();
        vs["metadata"]["name"] = json!("Web");
        assert!(has(&errs(&vs), "metadata.name: Invalid value"));
        // nullable fields accept null.
        let mut vs = demo();
        vs["spec"]["http"][1]["retries"]["retryRemoteLocalities"] = json!(null);
        assert_eq!(validate_virtual_service(&vs), Ok(()));
    }

    #[test]
    fn the_source_tells_schema_from_webhook() {
        let mut vs = demo();
        vs["spec"]["http"][1]["route"][0]["weight"] = json!(-1);
        assert_eq!(check_virtual_service(&vs)[0].source, Source::Webhook);
        vs["spec"]["http"][1]["route"][0]["weight"] = json!("x");
        assert_eq!(check_virtual_service(&vs)[0].source, Source::Schema);
    }

    #[test]
    fn prune_drops_unknown_fields_only() {
        let mut vs = demo();
        vs["spec"]["http"][1]["x-unknown-field"] = json!("dropped");
        vs["spec"]["http"][1]["route"][0]["destination"]["colour"] = json!("red");
        vs["extra"] = json!(1);
        let before = demo();
        let mut pruned = prune(&mut vs);
        pruned.sort();
        assert_eq!(
            pruned,
            vec![
                "extra",
                "spec.http[1].route[0].destination.colour",
                "spec.http[1].x-unknown-field"
            ]
        );
        assert_eq!(
            vs, before,
            "known fields (headers map values included) are kept"
        );
    }

    #[test]
    fn path_conversion() {
        assert_eq!(
            pointer_to_path("/spec/http/0/route/12/weight"),
            "spec.http[0].route[12].weight"
        );
        assert_eq!(pointer_to_path(""), "<root>");
        assert_eq!(
            pointer_to_path("/metadata/annotations/a~1b"),
            "metadata.annotations.a/b"
        );
    }
}
