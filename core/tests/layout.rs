//! The core stays readable: no source file above [`MAX_LINES`], and the files of each folder
//! (and the crate's top modules) import each other one way, without a circle.
//!
//! A file's imports are read from its text: `super::NAME` (and `crate::FOLDER::NAME`) naming
//! a sibling file is an arrow to that sibling. The folder's root file (`mod.rs`, `lib.rs`)
//! declares and re-exports the others and is left out, which is why the files name the
//! sibling they import from instead of the re-export. Between the top modules an arrow is any
//! `crate::NAME` in any of the module's files.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The line limit of issue 20 ("no source file above ~800 lines").
const MAX_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The modules declared in `dir` (`x.rs` or `x/mod.rs`, root file left out), each with the
/// text of the file that is the module.
fn modules(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let file = if path.is_dir() {
            path.join("mod.rs")
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "mod" && stem != "lib" {
            path.clone()
        } else {
            continue;
        };
        if file.is_file() {
            out.insert(stem, std::fs::read_to_string(&file).unwrap());
        }
    }
    out
}

/// Which of the other `names` each text names right after one of `prefixes`.
fn graph(
    texts: &BTreeMap<String, String>,
    names: &BTreeSet<String>,
    prefixes: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (name, text) in texts {
        let mut deps = BTreeSet::new();
        for prefix in prefixes {
            for (at, _) in text.match_indices(prefix.as_str()) {
                let ident: String = text[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if ident != *name && names.contains(&ident) {
                    deps.insert(ident);
                }
            }
        }
        out.insert(name.clone(), deps);
    }
    out
}

/// One circle in `graph`, if there is any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

/// Ensures no core source file (tests included) is longer than [`MAX_LINES`].
#[test]
fn core_files_stay_short() {
    let long: Vec<(String, usize)> = rust_files(&src())
        .into_iter()
        .map(|p| {
            let lines = std::fs::read_to_string(&p).unwrap().lines().count();
            (p.display().to_string(), lines)
        })
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(long.is_empty(), "files above {MAX_LINES} lines: {long:?}");
}

/// Ensures the files inside each folder of the core import each other without a circle.
#[test]
fn core_folders_have_no_import_circles() {
    let mut folders = vec![src()];
    let mut checked = 0;
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            }
        }
        if dir == src() {
            continue; // the top modules: see `core_modules_depend_one_way`
        }
        let texts = modules(&dir);
        let names: BTreeSet<String> = texts.keys().cloned().collect();
        let rel = dir.strip_prefix(src()).unwrap();
        let crate_path: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let prefixes = [
            "super::".to_string(),
            format!("crate::{}::", crate_path.join("::")),
        ];
        let g = graph(&texts, &names, &prefixes);
        assert_eq!(
            find_circle(&g),
            None,
            "import circle in core/src/{}/",
            rel.display()
        );
        checked += 1;
    }
    // engine, engine/tests, playbook, routing, routing/istio, drill, audit at least.
    assert!(
        checked >= 7,
        "only {checked} folders found under {}",
        src().display()
    );
}

/// Ensures the core's top modules (engine, playbook, routing, ...) depend one way.
#[test]
fn core_modules_depend_one_way() {
    let root = src();
    let names: BTreeSet<String> = modules(&root).into_keys().collect();
    let mut texts = BTreeMap::new();
    for name in &names {
        let mut text = String::new();
        let file = root.join(format!("{name}.rs"));
        if file.is_file() {
            text.push_str(&std::fs::read_to_string(&file).unwrap());
        }
        let dir = root.join(name);
        if dir.is_dir() {
            for f in rust_files(&dir) {
                text.push_str(&std::fs::read_to_string(&f).unwrap());
            }
        }
        texts.insert(name.clone(), text);
    }
    let g = graph(&texts, &names, &["crate::".to_string()]);
    assert!(
        g.get("engine").is_some_and(|d| d.contains("playbook")),
        "the reader must see the engine's use of the playbook model: {g:?}"
    );
    assert_eq!(
        find_circle(&g),
        None,
        "import circle between core modules: {g:?}"
    );
}

/// The checker itself finds a circle where there is one (so the tests above can fail).
#[test]
fn the_checker_finds_a_planted_circle() {
    let texts: BTreeMap<String, String> = [
        ("a", "use super::b::X;"),
        ("b", "use super::c::Y;"),
        ("c", "fn f() { crate::room::a::g() }"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    let names: BTreeSet<String> = texts.keys().cloned().collect();
    let prefixes = ["super::".to_string(), "crate::room::".to_string()];
    let circle = find_circle(&graph(&texts, &names, &prefixes)).unwrap();
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4, "{circle:?}");
    let mut acyclic = texts.clone();
    acyclic.insert("c".into(), "fn f() {}".into());
    assert_eq!(find_circle(&graph(&acyclic, &names, &prefixes)), None);
}
