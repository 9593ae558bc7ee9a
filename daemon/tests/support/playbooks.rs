//! Playbook fixtures shared by `tests/playbooks_*.rs`: a valid playbook to derive broken
//! variants from, files written into a temporary directory, and the exact location checks
//! (`at(text, needle)` is the 1-based line and column where `needle` first occurs in the
//! fixture, i.e. where the error must point).

use std::path::{Path, PathBuf};

use failoverd::playbook::{Problem, load_file};
use tempfile::TempDir;

/// A valid playbook; the tests below derive broken variants from it.
pub const VALID: &str = r#"apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata:
  name: svc
spec:
  virtualService: { namespace: ns, name: svc }
  route: primary
  primary: { host: svc.ns.svc.cluster.local, subset: v1 }
  failover:
    - host: svc.ns-dr.svc.cluster.local
  probes:
    - name: primary-health
      target: primary
      http: { url: "http://svc.ns.svc.cluster.local:8080/healthz" }
      interval: 1s
      timeout: 500ms
    - name: dr-health
      target: failover[0]
      tcp: { address: "svc.ns-dr.svc.cluster.local:8080" }
"#;

/// `VALID` with `from` replaced by `to` (which must occur exactly once).
pub fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "fixture edit `{from}` is ambiguous"
    );
    VALID.replacen(from, to, 1)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
pub fn at(text: &str, needle: &str) -> (u64, u64) {
    let i = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in fixture"));
    at_index(text, i)
}

/// 1-based (line, column) of byte index `i` in `text` (columns count characters).
pub fn at_index(text: &str, i: usize) -> (u64, u64) {
    let before = &text[..i];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let col = before[line_start..].chars().count() + 1;
    (line as u64, col as u64)
}

/// Writes `text` to `name` inside `dir`, creating parent folders.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads `text` from a file in a fresh temporary directory; returns the file name used in
/// problems and the problems (panics when the file is accepted).
pub fn problems(text: &str) -> (String, Vec<Problem>) {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "pb.yaml", text);
    let file = path.display().to_string();
    match load_file(&path) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ps) => (file, ps),
    }
}

/// Loads `text` and expects exactly one problem.
pub fn one_problem(text: &str) -> Problem {
    let (file, ps) = problems(text);
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    let p = ps.into_iter().next().unwrap();
    assert_eq!(p.file, file);
    p
}

/// Asserts location, field and message fragments of a problem.
#[track_caller]
pub fn check(p: &Problem, (line, column): (u64, u64), field: &str, fragments: &[&str]) {
    assert_eq!(
        (p.line, p.column, p.field.as_str()),
        (line, column, field),
        "wrong location or field: {p}"
    );
    for f in fragments {
        assert!(p.message.contains(f), "`{f}` missing from: {p}");
    }
}

/// A playbook named `name` guarding VirtualService `ns/vs`, route `route` (None: first route).
pub fn playbook(name: &str, vs: &str, route: Option<&str>) -> String {
    let route_line = route.map_or(String::new(), |r| format!("  route: {r}\n"));
    edit("  name: svc\n", &format!("  name: {name}\n"))
        .replace("name: svc }", &format!("name: {vs} }}"))
        .replace("  route: primary\n", &route_line)
}
