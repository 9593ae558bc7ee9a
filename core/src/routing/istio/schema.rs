//! The CRD schemas: loaded from the YAML Istio ships, turned into JSON Schema and compiled
//! once; the schema check (what the API server answers 422 for) and the API server's pruning
//! of unknown fields.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use super::names::is_dns1123_subdomain;
use super::{GROUP, Source, VERSIONS, Violation};

/// The two CRDs as Istio ships them (two YAML documents).
const CRDS_YAML: &str = include_str!("../../../schemas/istio-networking-crds.yaml");

/// One compiled schema per (kind, version); versions with identical schemas share it.
type Compiled = BTreeMap<(String, String), Arc<Result<jsonschema::Validator, String>>>;

pub(super) static SCHEMAS: LazyLock<Result<Compiled, String>> = LazyLock::new(compile_all);

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
pub(super) fn pointer_to_path(pointer: &str) -> String {
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
pub(super) fn check_schema(obj: &Value, kind: &str, out: &mut Vec<Violation>) {
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
