//! The rendered manifests shared by `tests/deploy_*.rs`: `kubectl kustomize` of each overlay
//! (rendered once per test binary), the tools the tests need (a missing one fails them), and
//! small readers of rendered objects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A tool the tests drive, or a failure naming the Debian package that provides it. Never a
/// skip: a missing tool must not turn into a green run that checked nothing.
pub fn tool(bin: &str, package: &str) -> PathBuf {
    find_in_path(bin).unwrap_or_else(|| {
        panic!(
            "{bin} not found on PATH: deploy/ cannot be checked without it. Install it with \
             `apt-get install {package}` (scripts/test.sh does)"
        )
    })
}

/// One rendered kustomization.
#[derive(Debug)]
pub struct Render {
    /// What was rendered, for messages (`deploy/overlays/example`).
    pub name: String,
    pub objects: Vec<Value>,
    /// Whether the optional component is in (the cluster-wide VirtualService binding).
    pub with_components: bool,
}

/// `kubectl kustomize` of every entry point, once per test binary.
///
/// # Panics
///
/// Without `kubectl`, naming the package to install (every test that renders fails).
pub fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS
        .get_or_init(|| {
            let kubectl = tool("kubectl", "kubernetes-client");
            let deploy = root().join("deploy");
            let targets: [(&str, PathBuf, bool); 4] = [
                ("deploy", deploy.clone(), false),
                (
                    "deploy/overlays/example",
                    deploy.join("overlays/example"),
                    false,
                ),
                ("deploy/base", deploy.join("base"), false),
                // base + every optional component
                (
                    "deploy/tests/with-components",
                    deploy.join("tests/with-components"),
                    true,
                ),
            ];
            let mut out = Vec::new();
            for (name, dir, with_components) in targets {
                let run = Command::new(&kubectl)
                    .arg("kustomize")
                    .arg(&dir)
                    .output()
                    .expect("run kubectl");
                if !run.status.success() {
                    // An old kubectl embeds a kustomize without components, generator
                    // options or directories as resources (Debian bookworm's
                    // kubernetes-client 1.20 has kustomize v2.0.3): name the version.
                    let version = Command::new(&kubectl)
                        .args(["version", "--client"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    panic!(
                        "kubectl kustomize {name} failed: {}\n{} `kubectl version --client`:\n{version}\
                         deploy/ needs the kustomize v4 or later that kubectl 1.21+ embeds",
                        String::from_utf8_lossy(&run.stderr),
                        kubectl.display()
                    );
                }
                let text = String::from_utf8(run.stdout).expect("utf-8 output");
                let objects: Vec<Value> = serde_saphyr::from_multiple(&text)
                    .unwrap_or_else(|e| panic!("{name}: rendered YAML does not parse: {e}"));
                let objects: Vec<Value> = objects.into_iter().filter(|o| !o.is_null()).collect();
                assert!(!objects.is_empty(), "{name} rendered nothing");
                out.push(Render {
                    name: name.to_string(),
                    objects,
                    with_components,
                });
            }
            out
        })
        .as_slice()
}

pub fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub fn kind(o: &Value) -> &str {
    s(o, "/kind")
}

pub fn name(o: &Value) -> &str {
    s(o, "/metadata/name")
}

pub fn ns(o: &Value) -> &str {
    s(o, "/metadata/namespace")
}

pub fn id(o: &Value) -> String {
    match ns(o) {
        "" => format!("{}/{}", kind(o), name(o)),
        n => format!("{}/{}/{}", kind(o), n, name(o)),
    }
}

pub fn of_kind<'a>(r: &'a Render, k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    r.objects.iter().filter(move |o| kind(o) == k)
}

pub fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn strs(v: Option<&Value>) -> Vec<&str> {
    arr(v).iter().filter_map(Value::as_str).collect()
}

/// The schema key of an object: `apiVersion_Kind` with `/` as `_`.
pub fn schema_key(o: &Value) -> String {
    format!("{}/{}", s(o, "/apiVersion"), kind(o)).replace('/', "_")
}

/// The vendored Kubernetes schemas and the custom-resource shapes, one `$defs` map.
pub fn schema_defs() -> &'static serde_json::Map<String, Value> {
    static DEFS: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut defs = serde_json::Map::new();
        for f in ["kubernetes-v1.33-strict.json", "crd-shapes.json"] {
            let path = root().join("deploy/schemas").join(f);
            let text = std::fs::read_to_string(&path).expect("read schema file");
            let doc: Value = serde_json::from_str(&text).expect("schema file is JSON");
            let map = doc
                .get("$defs")
                .and_then(Value::as_object)
                .expect("schema file has $defs");
            defs.extend(map.clone());
        }
        defs
    })
}

/// Schema violations of one object (empty: valid), each as `path: message`.
pub fn schema_errors(
    cache: &mut HashMap<String, jsonschema::Validator>,
    o: &Value,
) -> Result<Vec<String>, String> {
    let key = schema_key(o);
    if !cache.contains_key(&key) {
        let defs = schema_defs();
        if !defs.contains_key(&key) {
            return Err(format!(
                "no schema for {} {} (vendor it: deploy/schemas/SOURCE.md)",
                s(o, "/apiVersion"),
                kind(o)
            ));
        }
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/$defs/{key}"),
            "$defs": defs,
        });
        let v = jsonschema::draft202012::new(&schema).map_err(|e| format!("{key}: {e}"))?;
        cache.insert(key.clone(), v);
    }
    let v = &cache[&key];
    Ok(v.iter_errors(o)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect())
}

/// Checks the API server makes that the OpenAPI schema does not: names, label values, ports.
pub fn api_server_rules(o: &Value, problems: &mut Vec<String>) {
    let dns_label = |v: &str| {
        !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-')
    };
    let n = name(o);
    let name_ok = match kind(o) {
        "Namespace" | "Service" => dns_label(n),
        _ => n.len() <= 253 && n.split('.').all(dns_label),
    };
    if !name_ok {
        problems.push(format!("{}: invalid name `{n}`", id(o)));
    }
    for (k, v) in o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let v = v.as_str().unwrap_or("<not a string>");
        let ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && (v.is_empty()
                || (v.as_bytes()[0].is_ascii_alphanumeric()
                    && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
        if !ok {
            problems.push(format!("{}: label {k} has an invalid value `{v}`", id(o)));
        }
    }
    for p in arr(o.pointer("/spec/ports")) {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            problems.push(format!("{}: port {port} out of range", id(o)));
        }
    }
}

/// The one workload (StatefulSet) of a render and its pod template.
pub fn workload(r: &Render) -> (&Value, &Value) {
    let w: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "StatefulSet" | "Deployment"))
        .collect();
    assert_eq!(w.len(), 1, "{}: one workload", r.name);
    (w[0], &w[0]["spec"]["template"])
}

/// The rendered ConfigMap named `prefix` (kustomize appends a content hash).
pub fn config_map<'a>(r: &'a Render, prefix: &str) -> &'a Value {
    let found: Vec<&Value> = of_kind(r, "ConfigMap")
        .filter(|o| {
            name(o) == prefix
                || name(o)
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.len() == 10)
        })
        .collect();
    assert_eq!(found.len(), 1, "{}: ConfigMap {prefix}", r.name);
    found[0]
}

pub fn write_data(cm: &Value, dir: &Path) {
    for (k, v) in cm
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        std::fs::write(dir.join(k), v.as_str().expect("string data")).expect("write");
    }
}

/// The playbooks of a render, loaded by failoverd itself.
pub fn playbooks_of(r: &Render) -> Vec<failoverd::playbook::Loaded> {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_data(config_map(r, "failoverd-playbooks"), tmp.path());
    if std::fs::read_dir(tmp.path()).expect("dir").next().is_none() {
        return Vec::new();
    }
    failoverd::playbook::load_paths(&[tmp.path().to_path_buf()])
        .unwrap_or_else(|e| panic!("{}: playbooks do not load:\n{e}", r.name))
}

/// The rules of deploy/base's Role and ClusterRoles as the emulator's RBAC (the same reading
/// as `deploy_rbac.rs`): the Role in its own namespace, a ClusterRole bound by a
/// ClusterRoleBinding everywhere, any other ClusterRole in `guarded` (where the example
/// overlay binds it with a RoleBinding). For end-to-end tests that run the binary as the
/// ServiceAccount the manifests create.
pub fn base_rules(guarded: &str) -> Vec<chaos_tests::kube_emulator::Rule> {
    let base = renders()
        .iter()
        .find(|r| r.name == "deploy/base")
        .expect("deploy/base is rendered");
    let mut out = Vec::new();
    for role in base
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        let cluster_wide = base.objects.iter().any(|b| {
            kind(b) == "ClusterRoleBinding"
                && s(b, "/roleRef/kind") == "ClusterRole"
                && s(b, "/roleRef/name") == name(role)
        });
        let scope = if kind(role) == "Role" {
            ns(role)
        } else if cluster_wide {
            "*"
        } else {
            guarded
        };
        for rule in arr(role.get("rules")) {
            out.push(chaos_tests::kube_emulator::Rule::new(
                &strs(rule.get("verbs")),
                &strs(rule.get("apiGroups")),
                &strs(rule.get("resources")),
                &[scope],
            ));
        }
    }
    assert!(!out.is_empty(), "deploy/base grants nothing");
    out
}
