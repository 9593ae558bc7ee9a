#![allow(clippy::unwrap_used)]
//! Loading and validation of playbooks: every refusal names file, line, column and field.
//!
//! Fixtures are written inline into a temporary directory and read back with
//! [`load_file`] / [`load_paths`], the way the daemon and `failoverd validate` read them.
//! Locations are asserted exactly: `at(text, needle)` is the 1-based line and column where
//! `needle` first occurs in the fixture, i.e. where the error must point.

use std::path::{Path, PathBuf};

use failoverd::playbook::{self, Problem, json_schema, load_file, load_paths, parse};
use tempfile::TempDir;

/// A valid playbook; the tests below derive broken variants from it.
const VALID: &str = r#"apiVersion: failoverd.dev/v1alpha1
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
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "fixture edit `{from}` is ambiguous"
    );
    VALID.replacen(from, to, 1)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (u64, u64) {
    let i = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in fixture"));
    at_index(text, i)
}

/// 1-based (line, column) of byte index `i` in `text` (columns count characters).
fn at_index(text: &str, i: usize) -> (u64, u64) {
    let before = &text[..i];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let col = before[line_start..].chars().count() + 1;
    (line as u64, col as u64)
}

/// Writes `text` to `name` inside `dir`, creating parent folders.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads `text` from a file in a fresh temporary directory; returns the file name used in
/// problems and the problems (panics when the file is accepted).
fn problems(text: &str) -> (String, Vec<Problem>) {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "pb.yaml", text);
    let file = path.display().to_string();
    match load_file(&path) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ps) => (file, ps),
    }
}

/// Loads `text` and expects exactly one problem.
fn one_problem(text: &str) -> Problem {
    let (file, ps) = problems(text);
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    let p = ps.into_iter().next().unwrap();
    assert_eq!(p.file, file);
    p
}

/// Asserts location, field and message fragments of a problem.
#[track_caller]
fn check(p: &Problem, (line, column): (u64, u64), field: &str, fragments: &[&str]) {
    assert_eq!(
        (p.line, p.column, p.field.as_str()),
        (line, column, field),
        "wrong location or field: {p}"
    );
    for f in fragments {
        assert!(p.message.contains(f), "`{f}` missing from: {p}");
    }
}

/// The base fixture is valid, so every refusal below is caused by its one edit.
#[test]
fn valid_fixture_loads() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "pb.yaml", VALID);
    let loaded = load_file(&path).unwrap();
    assert_eq!(loaded.playbook.name(), "svc");
    assert_eq!(loaded.file, path);
}

/// A misspelt probe field (`intervl`) is refused at the key, listing the expected fields.
#[test]
fn unknown_field_is_located() {
    let text = edit("      interval: 1s\n", "      intervl: 1s\n");
    let p = one_problem(&text);
    assert_eq!((p.line, p.column), (15, 7)); // literally, once: the `at` helper agrees
    check(
        &p,
        at(&text, "intervl"),
        "",
        &["unknown field `intervl`", "interval", "timeout"],
    );
}

/// A duration with an unknown unit (`1x`) is refused at the value with an example.
#[test]
fn bad_duration_unit_is_located() {
    let text = edit("interval: 1s", "interval: 1x");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "1x"),
        "",
        &["invalid duration `1x`", "expected e.g. `500ms`, `1s`, `5m`"],
    );
}

/// A duration spelt in words (`five seconds`) is refused at the value.
#[test]
fn bad_duration_words_is_located() {
    let text = edit("timeout: 500ms", "timeout: five seconds");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "five seconds"),
        "",
        &["invalid duration `five seconds`", "expected e.g."],
    );
}

/// A playbook without `failover` is refused naming the missing field, inside `spec`.
#[test]
fn missing_required_field_is_named() {
    let text = edit("  failover:\n    - host: svc.ns-dr.svc.cluster.local\n", "");
    let p = one_problem(&text);
    // serde-saphyr reports a missing field where it finished reading the mapping: the last
    // key of `spec` (here `probes`), not `spec:` itself.
    check(&p, at(&text, "probes:"), "", &["missing field `failover`"]);
    assert!(p.line > at(&text, "spec:").0, "{p}");
}

/// An unclosed flow mapping (`{ address: ...` without `}`) is a located syntax error.
#[test]
fn yaml_unclosed_bracket_is_located() {
    let text = edit(
        r#"tcp: { address: "svc.ns-dr.svc.cluster.local:8080" }"#,
        r#"tcp: { address: "svc.ns-dr.svc.cluster.local:8080""#,
    );
    let p = one_problem(&text);
    check(&p, at(&text, "{ address"), "", &["unclosed bracket '{'"]);
}

/// A key indented deeper than its siblings is a located syntax error.
#[test]
fn yaml_bad_indentation_is_located() {
    // `route` indented under the flow mapping of `virtualService`: the error is at the key.
    let text = edit("  route: primary", "    route: primary");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "route: primary"),
        "",
        &["did not find expected key"],
    );

    // `target` indented deeper than `name` in the same list item: the error is at its `:`.
    let text = edit("      target: primary\n", "        target: primary\n");
    let p = one_problem(&text);
    let (line, col) = at(&text, "target: primary");
    check(
        &p,
        (line, col + "target".len() as u64),
        "",
        &["mapping values are not allowed"],
    );
}

/// Two probes with the same name are refused at the second name.
#[test]
fn duplicate_probe_names_are_refused() {
    let text = edit("- name: dr-health", "- name: primary-health");
    let p = one_problem(&text);
    let second = text.rfind("primary-health").unwrap();
    check(
        &p,
        at_index(&text, second),
        "spec.probes[1].name",
        &["duplicate signal name `primary-health`"],
    );
}

/// An SLO may not reuse a probe's name either: names share one namespace.
#[test]
fn slo_name_clashing_with_probe_is_refused() {
    let text = format!(
        "{VALID}  slos:\n    - name: dr-health\n      target: primary\n      prometheus: {{ query: up, above: 0.5 }}\n"
    );
    let p = one_problem(&text);
    let second = text.rfind("dr-health").unwrap();
    check(
        &p,
        at_index(&text, second),
        "spec.slos[0].name",
        &["duplicate signal name `dr-health`"],
    );
}

/// A probe target `failover[3]` that does not exist is refused at the target.
#[test]
fn probe_target_out_of_range_is_refused() {
    let text = edit("target: failover[0]", "target: failover[3]");
    let (_, ps) = problems(&text);
    assert_eq!(ps.len(), 2, "{ps:#?}");
    check(
        &ps[0],
        at(&text, "failover[3]"),
        "spec.probes[1].target",
        &["`failover[3]` does not exist", "spec.failover has 1 entry"],
    );
    // The only probe of failover[0] now points elsewhere, so failover[0] is unwatched.
    check(
        &ps[1],
        at(&text, "svc.ns-dr.svc.cluster.local\n"),
        "spec.failover[0]",
        &["no probe or SLO watches `failover[0]`"],
    );
}

/// A target that is not `primary` or `failover[N]` is refused when parsed.
#[test]
fn malformed_target_is_refused() {
    let text = edit("target: failover[0]", "target: dr");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "dr\n"),
        "",
        &["invalid target `dr`", "expected `primary` or `failover[N]`"],
    );
}

/// A timeout equal to or longer than the interval is refused at the timeout.
#[test]
fn timeout_not_shorter_than_interval_is_refused() {
    for timeout in ["1s", "2s"] {
        let text = edit("timeout: 500ms", &format!("timeout: {timeout}"));
        let p = one_problem(&text);
        check(
            &p,
            at(&text, &format!("{timeout}\n    - name: dr-health")),
            "spec.probes[0].timeout",
            &[&format!("timeout {timeout}"), "shorter than interval 1s"],
        );
    }
}

/// With the default timeout (500ms) and a 500ms interval, the error points at the probe name.
#[test]
fn default_timeout_too_long_points_at_probe() {
    let text = edit(
        "      interval: 1s\n      timeout: 500ms\n",
        "      interval: 500ms\n",
    );
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "primary-health"),
        "spec.probes[0].timeout",
        &["timeout 500ms", "shorter than interval 500ms"],
    );
}

/// `failureThreshold: 0` is refused at the value.
#[test]
fn failure_threshold_zero_is_refused() {
    let text = format!("{VALID}  trigger:\n    failureThreshold: 0\n");
    let p = one_problem(&text);
    let (line, col) = at(&text, "failureThreshold: 0");
    check(
        &p,
        (line, col + "failureThreshold: ".len() as u64),
        "spec.trigger.failureThreshold",
        &["must be at least 1"],
    );
}

/// An empty failover list is refused at the list.
#[test]
fn empty_failover_list_is_refused() {
    let text = edit(
        "  failover:\n    - host: svc.ns-dr.svc.cluster.local\n",
        "  failover: []\n",
    )
    .replace("target: failover[0]", "target: primary");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "[]"),
        "spec.failover",
        &["at least one failover target"],
    );
}

/// Hosts with a scheme, a wildcard or nothing at all are refused at the host.
#[test]
fn malformed_hosts_are_refused() {
    let cases = [
        ("http://x", "http://x", "must be a bare host name"),
        ("\"*\"", "\"*\"", "must not be a wildcard"),
        ("\"\"", "\"\"", "host must not be empty"),
        (
            "svc.ns-dr:8080",
            "svc.ns-dr:8080",
            "no scheme, port or path",
        ),
        (
            "Under_Score.example",
            "Under_Score",
            "not a valid domain name",
        ),
    ];
    for (host, needle, fragment) in cases {
        let text = edit(
            "- host: svc.ns-dr.svc.cluster.local",
            &format!("- host: {host}"),
        );
        let p = one_problem(&text);
        check(&p, at(&text, needle), "spec.failover[0].host", &[fragment]);
    }
    // The same check guards the primary.
    let text = edit(
        "host: svc.ns.svc.cluster.local",
        "host: \"*.ns.svc.cluster.local\"",
    );
    let p = one_problem(&text);
    check(&p, at(&text, "\"*.ns"), "spec.primary.host", &["wildcard"]);
}

/// A subset that is not a DNS-1123 label is refused at the subset.
#[test]
fn bad_subset_is_refused() {
    let text = edit("subset: v1", "subset: V_1");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "V_1"),
        "spec.primary.subset",
        &["`V_1` is not a DNS-1123 label"],
    );
}

/// Failback steps must rise strictly and end at 100; each bad list is refused at the list.
#[test]
fn bad_failback_steps_are_refused() {
    for steps in [
        "[10, 50, 90]",
        "[50, 10, 100]",
        "[50, 50, 100]",
        "[0, 100]",
        "[]",
    ] {
        let text = format!("{VALID}  failback:\n    steps: {steps}\n");
        let p = one_problem(&text);
        check(
            &p,
            at(&text, steps),
            "spec.failback.steps",
            &["strictly increasing", "ending at 100"],
        );
    }
}

/// A percentage above 255 does not fit the type and is refused when parsed, located.
#[test]
fn failback_step_out_of_type_range_is_refused() {
    let text = format!("{VALID}  failback:\n    steps: [50, 300]\n");
    let p = one_problem(&text);
    assert_eq!(p.line, at(&text, "300").0, "{p}");
    assert!(p.column > 0, "{p}");
}

/// A failover target that no probe or SLO watches is refused at its host.
#[test]
fn failover_target_without_probe_is_refused() {
    let text = edit(
        "    - host: svc.ns-dr.svc.cluster.local\n",
        "    - host: svc.ns-dr.svc.cluster.local\n    - host: svc.region-b.global\n",
    );
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "svc.region-b.global"),
        "spec.failover[1]",
        &["no probe or SLO watches `failover[1]`"],
    );
}

/// A primary that nothing watches is refused (failoverd could never notice it failing).
#[test]
fn primary_without_probe_is_refused() {
    let text = edit("target: primary", "target: failover[0]");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "svc\n"), // the playbook's name: the playbook as a whole
        "spec.probes",
        &["no probe or SLO watches `primary`"],
    );
}

/// A wrong apiVersion is refused at the value, naming the expected one.
#[test]
fn wrong_api_version_is_refused() {
    let text = edit("failoverd.dev/v1alpha1", "failoverd.dev/v1");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "failoverd.dev/v1"),
        "apiVersion",
        &["expected `failoverd.dev/v1alpha1`, got `failoverd.dev/v1`"],
    );
}

/// A wrong kind is refused at the value, naming the expected one.
#[test]
fn wrong_kind_is_refused() {
    let text = edit("kind: Playbook", "kind: PlayBook");
    let p = one_problem(&text);
    check(
        &p,
        at(&text, "PlayBook"),
        "kind",
        &["expected `Playbook`, got `PlayBook`"],
    );
}

/// A file of kind Drill is refused as a playbook with a clear word, located at `Drill`.
#[test]
fn drill_file_is_refused_as_playbook() {
    let text = "apiVersion: failoverd.dev/v1alpha1
kind: Drill
metadata: { name: weekly-case-records }
spec:
  playbooks: [ case-records ]
  schedule: \"0 0 3 * * Tue\"
  mode: live
";
    let p = one_problem(text);
    check(
        &p,
        at(text, "Drill"),
        "kind",
        &["expected `Playbook`, got `Drill`"],
    );
}

/// Problems display as `file:line:col: field: message`, one per line.
#[test]
fn problems_display_file_line_col_field_message() {
    let text = edit("subset: v1", "subset: V_1");
    let p = one_problem(&text);
    let (line, col) = at(&text, "V_1");
    assert_eq!(
        p.to_string(),
        format!(
            "{}:{line}:{col}: spec.primary.subset: {}",
            p.file, p.message
        )
    );
    // Parse errors have no field: `file:line:col: message`.
    let text = edit("interval: 1s", "interval: 1x");
    let p = one_problem(&text);
    let (line, col) = at(&text, "1x");
    assert!(
        p.to_string()
            .starts_with(&format!("{}:{line}:{col}: invalid duration", p.file)),
        "{p}"
    );
}

/// `parse` alone (no file) reports the same located problem with the given file name.
#[test]
fn parse_reports_given_file_name() {
    let text = edit("      interval: 1s\n", "      intervl: 1s\n");
    let p = parse("playbooks/x.yaml", &text).unwrap_err();
    assert_eq!(p.file, "playbooks/x.yaml");
    check(&p, at(&text, "intervl"), "", &["unknown field `intervl`"]);
}

/// A playbook named `name` guarding VirtualService `ns/vs`, route `route` (None: first route).
fn playbook(name: &str, vs: &str, route: Option<&str>) -> String {
    let route_line = route.map_or(String::new(), |r| format!("  route: {r}\n"));
    edit("  name: svc\n", &format!("  name: {name}\n"))
        .replace("name: svc }", &format!("name: {vs} }}"))
        .replace("  route: primary\n", &route_line)
}

/// Two files sharing a playbook name are refused, and the problem names both files.
#[test]
fn duplicate_playbook_names_across_files_are_refused() {
    let dir = TempDir::new().unwrap();
    let a = write(
        dir.path(),
        "a.yaml",
        &playbook("svc", "vs-a", Some("primary")),
    );
    let b = write(
        dir.path(),
        "team/b.yaml",
        &playbook("svc", "vs-b", Some("primary")),
    );
    let err = load_paths(&[dir.path().to_path_buf()]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    let p = &err.0[0];
    let text = std::fs::read_to_string(&b).unwrap();
    assert_eq!(p.file, b.display().to_string());
    check(
        p,
        at(&text, "svc\n"),
        "metadata.name",
        &["duplicate playbook name `svc`", &a.display().to_string()],
    );
}

/// Two playbooks on the same VirtualService route are refused: one route, one owner.
#[test]
fn two_playbooks_on_one_route_are_refused() {
    let dir = TempDir::new().unwrap();
    let a = write(
        dir.path(),
        "a.yaml",
        &playbook("first", "web", Some("primary")),
    );
    let b = write(
        dir.path(),
        "b.yaml",
        &playbook("second", "web", Some("primary")),
    );
    // A different route of the same VirtualService is fine.
    write(
        dir.path(),
        "c.yaml",
        &playbook("third", "web", Some("canary")),
    );
    let err = load_paths(&[dir.path().to_path_buf()]).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    let p = &err.0[0];
    assert_eq!(p.file, b.display().to_string());
    let text = std::fs::read_to_string(&b).unwrap();
    check(
        p,
        at(&text, "second"),
        "spec.virtualService",
        &[
            "playbook `second` rewrites the same route as `first`",
            &a.display().to_string(),
        ],
    );
}

/// One invalid file refuses the whole set, and every problem of every file is listed.
#[test]
fn load_paths_is_all_or_nothing_and_lists_every_problem() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "good.yaml", &playbook("good", "good", None));
    // Two validation problems in one file.
    let bad_text = playbook("bad", "bad", None)
        .replace("subset: v1", "subset: V_1")
        .replace("timeout: 500ms", "timeout: 1s");
    let bad = write(dir.path(), "nested/bad.yaml", &bad_text);
    // A parse problem in another.
    let broken_text = playbook("broken", "broken", None).replace("interval: 1s", "interval: 1x");
    let broken = write(dir.path(), "nested/deeper/broken.yml", &broken_text);
    // Ignored: not YAML, or hidden (like a ConfigMap's `..data`).
    write(dir.path(), "README.md", "not a playbook");
    write(dir.path(), ".hidden/x.yaml", "not: [a playbook");

    let err = load_paths(&[dir.path().to_path_buf()]).unwrap_err();
    let bad_f = bad.display().to_string();
    let broken_f = broken.display().to_string();
    let got: Vec<(&str, u64, u64, &str)> = err
        .0
        .iter()
        .map(|p| (p.file.as_str(), p.line, p.column, p.field.as_str()))
        .collect();
    let (sl, sc) = at(&bad_text, "V_1");
    let (tl, tc) = at(&bad_text, "1s\n    - name: dr-health");
    let (bl, bc) = at(&broken_text, "1x");
    assert_eq!(
        got,
        vec![
            (bad_f.as_str(), sl, sc, "spec.primary.subset"),
            (bad_f.as_str(), tl, tc, "spec.probes[0].timeout"),
            (broken_f.as_str(), bl, bc, ""),
        ],
        "{err}"
    );
    // Displayed one per line, each `file:line:col: ...`.
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    for (line, p) in shown.lines().zip(&err.0) {
        assert!(
            line.starts_with(&format!("{}:{}:{}: ", p.file, p.line, p.column)),
            "{line}"
        );
    }

    // Without the broken files the same directory loads.
    std::fs::remove_dir_all(dir.path().join("nested")).unwrap();
    let loaded = load_paths(&[dir.path().to_path_buf()]).unwrap();
    let names: Vec<&str> = loaded.iter().map(|l| l.playbook.name()).collect();
    assert_eq!(names, ["good"]);
}

/// A path that does not exist is a problem, not a silently empty set.
#[test]
fn missing_path_is_a_problem() {
    let dir = TempDir::new().unwrap();
    let gone = dir.path().join("nope");
    let err = load_paths(std::slice::from_ref(&gone)).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].file, gone.display().to_string());
    assert!(err.0[0].message.contains("no such file"), "{err}");
}

fn repo_playbooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks")
}

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// The `kind:` of a YAML document (None when absent).
fn kind_of(path: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.get("kind").and_then(|k| k.as_str()).map(str::to_owned)
}

/// Every playbook in the repository's playbooks/ folder loads and validates as one set.
#[test]
fn repository_playbooks_load() {
    let mut files = Vec::new();
    yaml_files(&repo_playbooks_dir(), &mut files);
    let (playbooks, others): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|p| kind_of(p).as_deref() == Some("Playbook"));
    // The other YAML files are drills and the demo's VirtualService, nothing unexpected.
    for p in &others {
        let kind = kind_of(p);
        assert!(
            matches!(kind.as_deref(), Some("Drill" | "VirtualService")),
            "{}: unexpected kind {kind:?}",
            p.display()
        );
    }
    let loaded = load_paths(&playbooks).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<&str> = loaded.iter().map(|l| l.playbook.name()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "case-management",
            "child-records",
            "demo",
            "emergency-hotline",
            "identity",
            "notifications"
        ]
    );
    for l in &loaded {
        let text = std::fs::read_to_string(&l.file).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("# yaml-language-server: $schema=")
                && first.ends_with("playbook.schema.json"),
            "{}: first line must point the editor at the schema",
            l.file.display()
        );
        let pb = &l.playbook;
        if pb.name() != "demo" {
            assert_eq!(pb.spec.virtual_service.namespace, "child-welfare");
            assert!(
                pb.spec
                    .failover
                    .value
                    .iter()
                    .any(|d| d.host.value.contains(".child-welfare-dr.")),
                "{}: no DR-namespace target",
                pb.name()
            );
        }
    }
    let with_slos = loaded.iter().filter(|l| !l.playbook.spec.slos.is_empty());
    assert!(with_slos.count() >= 2);
    let with_tcp = loaded
        .iter()
        .flat_map(|l| &l.playbook.spec.probes)
        .filter(|p| p.tcp.is_some());
    assert!(with_tcp.count() >= 1);
}

/// The demo playbook holds the values `failoverd demo` promises, and its route is in the demo VirtualService.
#[test]
fn demo_playbook_matches_its_virtualservice() {
    let dir = repo_playbooks_dir().join("examples");
    let demo = load_file(&dir.join("demo.yaml")).unwrap().playbook;
    assert_eq!(demo.name(), "demo");
    let s = &demo.spec;
    assert_eq!(s.virtual_service.to_string(), "demo/web");
    assert_eq!(
        s.primary.to_string(),
        "web.demo.svc.cluster.local (subset v1)"
    );
    let failover: Vec<String> = s.failover.value.iter().map(ToString::to_string).collect();
    assert_eq!(failover, ["web.demo-dr.svc.cluster.local"]);
    let probes: Vec<(String, String, String, String)> = s
        .probes
        .iter()
        .map(|p| {
            (
                p.name.value.clone(),
                p.target.value.to_string(),
                p.http
                    .as_ref()
                    .map(|h| h.url.value.clone())
                    .unwrap_or_default(),
                format!("{}/{}", p.interval, p.timeout.value),
            )
        })
        .collect();
    let expect = |n: &str, t: &str, u: &str| (n.into(), t.into(), u.into(), "1s/500ms".into());
    assert_eq!(
        probes,
        [
            expect(
                "primary-health",
                "primary",
                "http://127.0.0.1:18081/healthz"
            ),
            expect("dr-health", "failover[0]", "http://127.0.0.1:18082/healthz"),
        ]
    );
    assert_eq!(s.trigger.failure_threshold.value, 3);
    assert_eq!(s.failback.mode, playbook::FailbackMode::Automatic);
    assert_eq!(s.failback.after.to_string(), "5s");
    assert_eq!(demo.failback_steps(), [50, 100]);
    assert_eq!(s.failback.step_interval.to_string(), "3s");
    assert_eq!(s.min_dwell.to_string(), "5s");
    assert_eq!(s.on_missing, playbook::OnMissing::Hold);
    let route = s.route.as_ref().map(|r| r.value.as_str());
    assert_eq!(route, Some("primary"));

    let vs: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("demo-virtualservice.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(vs["apiVersion"], "networking.istio.io/v1");
    assert_eq!(vs["kind"], "VirtualService");
    assert_eq!(vs["metadata"]["namespace"], "demo");
    assert_eq!(vs["metadata"]["name"], "web");
    let names: Vec<&str> = vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["canary-header", "primary"]);
    let primary = &vs["spec"]["http"][1]["route"][0];
    assert_eq!(primary["destination"], s.primary.to_istio());
    assert_eq!(primary["weight"], 100);
}

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/playbook.schema.json")
}

/// The committed playbook.schema.json matches the types (`UPDATE_SCHEMA=1` rewrites it).
#[test]
fn committed_schema_is_current() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&json_schema()).unwrap()
    );
    let path = schema_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale (or missing): the playbook types changed.\n\
         Regenerate it with `UPDATE_SCHEMA=1 cargo test -p failoverd --test playbooks` \
         and commit the result.",
        path.display()
    );
}

/// The schema mirrors `deny_unknown_fields`: no unknown keys in the spec (or anywhere).
#[test]
fn schema_forbids_unknown_fields() {
    let schema = json_schema();
    let defs = schema["$defs"].as_object().unwrap();
    let spec_ref = schema["properties"]["spec"]["$ref"].as_str().unwrap();
    let spec = &defs[spec_ref.trim_start_matches("#/$defs/")];
    assert_eq!(spec["type"], "object");
    assert_eq!(spec["additionalProperties"], false, "{spec:#}");
    assert!(spec["properties"]["failover"].is_object());
    assert_eq!(schema["additionalProperties"], false);
    // Every object type in the schema is closed.
    for (name, def) in defs {
        if def["type"] == "object" {
            assert_eq!(def["additionalProperties"], false, "{name} is open");
        }
    }
}

// ---- `failoverd validate --config FILE`: the same gate as `run --config FILE` ----

/// Runs the real binary with `args`; at most 60 s (a FIFO must never make it hang).
/// Returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(args)
        .env_remove("FAILOVERD_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("failoverd {args:?} did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// A valid drill of the `svc` playbook.
const DRILL: &str = "apiVersion: failoverd.dev/v1alpha1
kind: Drill
metadata:
  name: nightly
spec:
  playbooks: [ svc ]
  schedule: \"0 15 6 * * *\"
  mode: plan
";

/// A config directory: `pb/` with the valid playbook and drill, `routes/`, and
/// `failoverd.yaml` naming them (plus `extra` appended).
fn config_set(extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "pb/svc.yaml", VALID);
    write(dir.path(), "pb/drills/nightly.yaml", DRILL);
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    let d = dir.path().display();
    let cfg = write(
        dir.path(),
        "failoverd.yaml",
        &format!("playbooks: {d}/pb\nstore: file:{d}/routes\naudit: {d}/audit.jsonl\n{extra}"),
    );
    (dir, cfg)
}

/// The valid set passes `validate --config` and lists what it checked.
#[test]
fn validate_config_accepts_a_valid_set() {
    let (_dir, cfg) = config_set("");
    let (code, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("ok (svc)") && out.contains("ok (drill nightly)"),
        "{out}"
    );
}

/// What `run` refuses, `validate --config` refuses with the same `file:line:col` (exit 1):
/// a drill naming a missing playbook, an SLO without a server (both invisible to a
/// playbook-only check), a bad config key. `run` is asserted to refuse the same set with
/// the same location, without starting (the config listens on port 0, so a wrongly
/// started daemon holds no fixed port until the 60 s limit kills it).
#[test]
fn validate_config_refuses_what_run_refuses() {
    let slo = "  slos:\n    - name: error-ratio\n      target: primary\n      prometheus: { query: vector(0), above: 0.05 }\n";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // (what, file under the dir that is at fault, config extra, needle where the
        // problem is); the faulty text is written below.
        (
            "drill naming a missing playbook",
            "pb/drills/nightly.yaml",
            "listen: 127.0.0.1:0\n".into(),
            "ghost",
        ),
        (
            "SLO without a Prometheus server",
            "pb/svc.yaml",
            "listen: 127.0.0.1:0\n".into(),
            "error-ratio",
        ),
        (
            "bad listen address",
            "failoverd.yaml",
            "listen: 127.0.0.1:notaport\n".into(),
            "listen:",
        ),
    ];
    for (what, rel, extra, needle) in cases {
        let (dir, cfg) = config_set(&extra);
        let text = match what {
            "drill naming a missing playbook" => {
                write(dir.path(), rel, &DRILL.replace("[ svc ]", "[ svc, ghost ]"));
                DRILL.replace("[ svc ]", "[ svc, ghost ]")
            }
            "SLO without a Prometheus server" => {
                let t = format!("{VALID}{slo}");
                write(dir.path(), rel, &t);
                t
            }
            _ => std::fs::read_to_string(&cfg).unwrap(),
        };
        let (line, col) = at(&text, needle);
        let located = format!("{}:{line}:{col}:", dir.path().join(rel).display());
        let (code, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
        assert_eq!(
            code, 1,
            "{what}: validate --config accepted it\n{out}\n{err}"
        );
        assert!(err.contains(&located), "{what}: `{located}` not in:\n{err}");
        // `run` refuses the same set at the same spot, before listening.
        let (code, out, err) = cli(&["run", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{what}: run started\n{out}\n{err}");
        assert!(
            err.contains("refusing to start") && err.contains(&located),
            "{what}: run's refusal lacks `{located}`:\n{err}"
        );
    }
}

/// `validate PATH...` (no config) keeps its documented form and now screens files the same
/// way: a FIFO is refused by name at once (a plain read would block forever), invalid
/// UTF-8 is located.
#[test]
fn validate_paths_refuses_special_and_non_utf8_files() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "svc.yaml", VALID);
    let pb = dir.path().to_str().unwrap();
    let (code, out, err) = cli(&["validate", pb]);
    assert_eq!(code, 0, "{out}\n{err}");
    let fifo = dir.path().join("fifo.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (code, _, err) = cli(&["validate", pb]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:0:0:", fifo.display())), "{err}");
    std::fs::remove_file(&fifo).unwrap();
    let mut bytes = VALID.as_bytes().to_vec();
    let i = VALID.find("name: svc\n").unwrap() + "name: ".len();
    bytes[i] = 0xff;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, &bytes).unwrap();
    let (line, col) = at(VALID, "svc\nspec:");
    let (code, _, err) = cli(&["validate", pb]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{}:{line}:{col}: invalid UTF-8", bad.display())),
        "{err}"
    );
}

/// A webhook secret file that is a FIFO is refused at its key at once: the secret reader
/// would otherwise block `validate`, the start and the reload gate forever.
#[test]
fn validate_config_refuses_a_fifo_secret_file() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("secret");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let extra = format!(
        "notify:\n  webhooks:\n    - name: a\n      url: \"https://hooks.example/x\"\n      secretFile: {}\n",
        fifo.display()
    );
    let (_set, cfg) = config_set(&extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (line, col) = at(&text, "secretFile:");
    let (code, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "{}:{line}:{col}: notify.webhooks[0].secretFile:",
            cfg.display()
        )) && err.contains("FIFO"),
        "{err}"
    );
}
