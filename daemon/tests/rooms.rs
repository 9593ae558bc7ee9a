#![allow(clippy::unwrap_used)]
//! The layout rules of the workspace, read from the source text (one checker for the daemon,
//! the core and the probes):
//!
//! - inside each folder (a room of the daemon, every folder of the core, the flat `probes`
//!   crate) the files' imports of each other form no circle: a file's `super::NAME` (or
//!   `crate::FOLDER::NAME`) naming a sibling is an arrow to it. A circle means two files that
//!   cannot be read or changed apart; the fix is to move the shared piece into a leaf file;
//! - the top modules of the daemon (its rooms) and of the core depend on each other one way:
//!   an arrow is any `crate::NAME` in any of the module's files;
//! - no source file is longer than [`MAX_LINES`];
//! - no file outside the tests imports all of its parent (`use super::*`), which would hide
//!   its arrows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file a crate may hold (issue 20: "no source file above ~800 lines").
const MAX_LINES: usize = 800;

/// The daemon's folder rooms checked here (add a room once it is split).
const DAEMON_ROOMS: [&str; 7] = [
    "api", "notify", "cli", "control", "signals", "mesh", "console",
];

fn daemon_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src")
}

/// A file's text up to its unit tests (a test module may import anything from its parent).
fn code_of(text: &str) -> String {
    text.split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The modules of one folder (`x.rs`, or `x/mod.rs` for a subfolder), by name, each with its
/// file's text up to the unit tests.
fn room_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = if path.is_dir() {
            path.join("mod.rs")
        } else if path.extension().is_some_and(|e| e == "rs") {
            path.clone()
        } else {
            continue;
        };
        if file.is_file() {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.insert(name, code_of(&std::fs::read_to_string(&file).unwrap()));
        }
    }
    out
}

/// Which sibling modules each file names through one of `prefixes` (`super::`,
/// `crate::api::`, ...). The folder's root file (`mod.rs` / `lib.rs`) declares the others
/// and is left out.
fn sibling_graph(
    files: &BTreeMap<String, String>,
    root: &str,
    prefixes: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    let mut graph = BTreeMap::new();
    for (name, text) in files.iter().filter(|(n, _)| n.as_str() != root) {
        let mut deps = BTreeSet::new();
        for prefix in prefixes {
            for (at, _) in text.match_indices(prefix.as_str()) {
                let rest = &text[at + prefix.len()..];
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if ident != *name && ident != root && names.contains(ident.as_str()) {
                    deps.insert(ident);
                }
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// One circle in `graph`, if there is any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
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

/// Ensures the files inside each daemon room import each other without a circle.
#[test]
fn daemon_rooms_have_no_import_circles() {
    for room in DAEMON_ROOMS {
        let files = room_files(&daemon_src().join(room));
        assert!(
            files.len() > 2,
            "room {room} has too few files to be a folder"
        );
        let prefixes = ["super::".to_string(), format!("crate::{room}::")];
        let graph = sibling_graph(&files, "mod", &prefixes);
        assert_eq!(
            find_circle(&graph),
            None,
            "import circle in daemon/src/{room}/"
        );
    }
}

/// Ensures the probes crate's modules import each other without a circle.
#[test]
fn probes_modules_have_no_import_circles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes/src");
    let files = room_files(&dir);
    let graph = sibling_graph(&files, "lib", &["crate::".to_string()]);
    assert_eq!(find_circle(&graph), None, "import circle in probes/src/");
}

/// Every folder under `dir`, recursively (`dir` itself left out).
fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(folders(&path));
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Ensures the files inside each folder of the core import each other without a circle.
#[test]
fn core_folders_have_no_import_circles() {
    let root = core_src();
    let mut checked = 0;
    for dir in folders(&root) {
        let files = room_files(&dir);
        if files.is_empty() {
            continue; // test data
        }
        let rel = dir.strip_prefix(&root).unwrap();
        let path: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let prefixes = [
            "super::".to_string(),
            format!("crate::{}::", path.join("::")),
        ];
        let graph = sibling_graph(&files, "mod", &prefixes);
        assert_eq!(
            find_circle(&graph),
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
        root.display()
    );
}

/// Ensures no source file of the workspace's crates (daemon, core, probes, chaos-tests; unit
/// tests included) is longer than [`MAX_LINES`].
#[test]
fn source_files_stay_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<PathBuf> = SOURCE_ROOTS
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .collect();
    assert!(files.len() > 100, "only {} source files found", files.len());
    let long: Vec<(String, usize)> = files
        .iter()
        .map(|p| {
            let lines = std::fs::read_to_string(p).unwrap().lines().count();
            (p.display().to_string(), lines)
        })
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(long.is_empty(), "files above {MAX_LINES} lines: {long:?}");
}

/// The checker itself finds a circle where there is one (so the tests above can fail).
#[test]
fn the_checker_finds_a_planted_circle() {
    let files: BTreeMap<String, String> = [
        ("mod", "mod a; mod b; mod c;"),
        ("a", "use super::b::X;"),
        ("b", "use super::c::Y;"),
        ("c", "fn f() { crate::room::a::g() }"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    let prefixes = ["super::".to_string(), "crate::room::".to_string()];
    let circle = find_circle(&sibling_graph(&files, "mod", &prefixes)).unwrap();
    assert_eq!(circle, ["a", "b", "c", "a"]);
    let mut acyclic = files.clone();
    acyclic.insert("c".into(), "fn f() {}".into());
    assert_eq!(
        find_circle(&sibling_graph(&acyclic, "mod", &prefixes)),
        None
    );
}

/// The source folders of the workspace's crates, from the daemon's manifest folder.
const SOURCE_ROOTS: [&str; 4] = ["src", "../core/src", "../probes/src", "../chaos-tests/src"];

/// Every `.rs` file under `dir`, recursively, sorted.
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

/// Whether a source file is a unit-test file (`tests.rs`, `*_tests.rs`, or under a `tests/`
/// folder of a module), where `use super::*` is the idiom.
fn is_test_file(path: &Path) -> bool {
    let name = path.file_stem().unwrap().to_string_lossy();
    name == "tests"
        || name.ends_with("_tests")
        || path
            .parent()
            .is_some_and(|d| d.components().any(|c| c.as_os_str() == "tests"))
}

/// The lines (1-based) of `text` that import everything from the parent module, outside the
/// unit-test module at the end of the file.
fn parent_globs(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut after_cfg_test = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if after_cfg_test && line.starts_with("mod ") && line.ends_with('{') {
            break; // the unit tests: they may take all their parent has
        }
        // `#[cfg(test)]`, possibly followed by more attributes, then the module.
        after_cfg_test = line == "#[cfg(test)]" || (after_cfg_test && line.starts_with("#["));
        let import = line.strip_prefix("pub ").unwrap_or(line);
        let import = import.strip_prefix("pub(crate) ").unwrap_or(import);
        let import = import.strip_prefix("pub(super) ").unwrap_or(import);
        if import.starts_with("use super::*") {
            out.push(n + 1);
        }
    }
    out
}

/// Ensures no non-test source file imports its parent with `use super::*`: a file says what it
/// takes from its room, so its arrows (and any circle) show in the text.
#[test]
fn no_file_imports_all_of_its_parent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut read = 0;
    for dir in SOURCE_ROOTS {
        for path in rust_files(&root.join(dir)) {
            read += 1;
            if is_test_file(&path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in parent_globs(&text) {
                found.push(format!("{}:{line}", path.display()));
            }
        }
    }
    assert!(read > 100, "only {read} source files found");
    assert!(found.is_empty(), "`use super::*` outside tests: {found:?}");
}

/// The glob check finds a planted glob, and leaves the unit tests and test files alone.
#[test]
fn the_glob_check_finds_a_planted_glob() {
    let planted = "//! A room file.\nuse std::sync::Arc;\nuse super::*;\n\nfn f() {}\n";
    assert_eq!(parent_globs(planted), [3]);
    assert_eq!(parent_globs("    pub(crate) use super::*;\n"), [1]);
    let in_tests = "use super::Job;\n\n#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests {\n    use super::*;\n}\n";
    assert_eq!(parent_globs(in_tests), Vec::<usize>::new());
    assert!(is_test_file(Path::new("daemon/src/control/tests.rs")));
    assert!(is_test_file(Path::new("core/src/engine/tests/explain.rs")));
    assert!(is_test_file(Path::new("daemon/src/api/auth_tests.rs")));
    assert!(!is_test_file(Path::new("daemon/src/control/step.rs")));
}

/// Old paths the daemon keeps as re-exports, and the room each one is.
const ALIASES: [(&str, &str); 8] = [
    ("slo", "signals"),
    ("server", "api"),
    ("tls", "api"),
    ("auth", "api"),
    ("audit_read", "api"),
    ("client", "cli"),
    ("demo", "cli"),
    ("runtime", "control"),
];

/// The top-level modules a piece of source names through `crate::`, including
/// `crate::{a, b::c}` groups; comments (a doc link is not a dependency) are left out.
fn modules_named(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') {
                    item.push(c);
                } else if depth == 0 && c == ':' {
                    // The room is the first segment only.
                    if !item.is_empty() {
                        out.insert(std::mem::take(&mut item));
                    }
                    depth = 100;
                }
                if depth == 100 && c == ',' {
                    depth = 0;
                }
            }
            if !item.is_empty() {
                out.insert(item);
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(ident);
        }
    }
    out
}

/// The daemon rooms a piece of source names (an old path counts as the room it is).
fn rooms_named(text: &str) -> BTreeSet<String> {
    modules_named(text)
        .into_iter()
        .map(|r| {
            ALIASES
                .iter()
                .find(|(a, _)| *a == r)
                .map_or(r, |(_, room)| room.to_string())
        })
        .collect()
}

/// The top modules of a crate's `src` (a file `x.rs`, a folder `x/`, or both), each with the
/// source of all its non-test files, without unit tests.
fn top_modules(src: &Path) -> BTreeMap<String, String> {
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            vec![path]
        } else {
            continue;
        };
        let text = modules.entry(name).or_default();
        for file in files.iter().filter(|f| !is_test_file(f)) {
            text.push_str(&code_of(&std::fs::read_to_string(file).unwrap()));
            text.push('\n');
        }
    }
    modules
}

/// The arrows between `modules`: which others each one's text names (through `named`).
fn module_graph(
    modules: &BTreeMap<String, String>,
    named: fn(&str) -> BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    modules
        .iter()
        .map(|(name, text)| {
            let deps = named(text)
                .into_iter()
                .filter(|r| r != name && modules.contains_key(r))
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// Ensures the daemon's rooms depend on each other one way (no circle between rooms):
/// entry points → wiring → concerns → the shared types → core.
#[test]
fn daemon_rooms_depend_one_way() {
    let graph = module_graph(&top_modules(&daemon_src()), rooms_named);
    assert_eq!(
        find_circle(&graph),
        None,
        "rooms of daemon/src import each other in a circle; graph: {graph:#?}"
    );
}

/// Ensures the core's top modules (engine, playbook, routing, ...) depend one way.
#[test]
fn core_modules_depend_one_way() {
    let graph = module_graph(&top_modules(&core_src()), modules_named);
    assert!(
        graph.get("engine").is_some_and(|d| d.contains("playbook")),
        "the reader must see the engine's use of the playbook model: {graph:?}"
    );
    assert_eq!(
        find_circle(&graph),
        None,
        "import circle between core modules: {graph:?}"
    );
}

#[test]
fn rooms_named_reads_paths_and_groups() {
    let named = rooms_named(
        "use crate::engine::{self, X};\nuse crate::{audit::Entry, shared::{Control, Shared}, metrics};\nlet t = crate::slo::spawn();\n/// See [`crate::api`].",
    );
    let want: BTreeSet<String> = ["audit", "engine", "metrics", "shared", "signals"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(named, want);
}
