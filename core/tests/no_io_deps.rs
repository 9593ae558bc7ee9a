//! The core's dependency closure holds no I/O runtime, Kubernetes client or network crate.
//!
//! Reads `cargo metadata` (the workspace's resolved graph, features unified as a build of the
//! workspace resolves them) and walks the normal dependencies from `failoverd-core`. A hit
//! names the crate and the path to it, so the fix (drop the dependency, or move the code
//! that needs it to the daemon) is obvious.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crate families the core must never reach: each name and its `name-*` relatives
/// (`tokio-util`, `kube-client`, `hyper-util`, `tonic-health`, `axum-core`, ...).
const FORBIDDEN: &[&str] = &[
    "tokio",
    "kube",
    "k8s-openapi",
    "reqwest",
    "hyper",
    "axum",
    "tonic",
];

fn forbidden(name: &str) -> bool {
    FORBIDDEN
        .iter()
        .any(|f| name == *f || name.strip_prefix(f).is_some_and(|r| r.starts_with('-')))
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every forbidden crate reachable from `root` through normal dependencies, each with the
/// shortest path to it (`failoverd-core -> a -> tokio`).
fn forbidden_paths(meta: &Value, root: &str) -> Vec<String> {
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|id| names.get(id) == Some(&root))
        .unwrap_or_else(|| panic!("{root} is not a workspace member"));
    // Breadth first, so each crate is reached by a shortest path.
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([root_id]);
    let mut hits = Vec::new();
    while let Some(id) = queue.pop_front() {
        if forbidden(names[id]) {
            let mut path = vec![names[id]];
            let mut at = id;
            while let Some(p) = parent.get(at) {
                path.push(names[p]);
                at = p;
            }
            path.reverse();
            hits.push(path.join(" -> "));
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            // `kind` is null for normal dependencies ("dev" and "build" are not linked in).
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().unwrap();
            if normal && pkg != root_id && !parent.contains_key(pkg) {
                parent.insert(pkg, id);
                queue.push_back(pkg);
            }
        }
    }
    hits
}

/// Ensures no tokio, kube, k8s-openapi, reqwest, hyper, axum or tonic (nor their `-*`
/// relatives) is in failoverd-core's resolved normal dependency closure.
#[test]
fn core_closure_has_no_io_crates() {
    let hits = forbidden_paths(&metadata(), "failoverd-core");
    assert!(
        hits.is_empty(),
        "failoverd-core must stay free of I/O crates; found:\n  {}",
        hits.join("\n  ")
    );
}

/// Ensures the walk finds what it looks for: the daemon, which does I/O, reaches tokio,
/// kube and reqwest, each named with a path from `failoverd`.
#[test]
fn the_walk_finds_the_daemons_io_crates() {
    let hits = forbidden_paths(&metadata(), "failoverd");
    for name in ["tokio", "kube", "reqwest", "axum", "hyper"] {
        assert!(
            hits.iter()
                .any(|h| h.starts_with("failoverd -> ") && h.ends_with(&format!(" -> {name}"))),
            "{name} not found from failoverd: {hits:?}"
        );
    }
}

/// Ensures the name families match as intended (and no wider).
#[test]
fn forbidden_names_are_families() {
    for yes in [
        "tokio",
        "tokio-util",
        "kube-client",
        "hyper-util",
        "tonic-health",
    ] {
        assert!(forbidden(yes), "{yes}");
    }
    for no in ["tokiox", "hyperlocal", "jiff", "serde", "kubex"] {
        assert!(!forbidden(no), "{no}");
    }
}
