#![allow(clippy::unwrap_used)]
//! Reading one playbook file: YAML and field errors, api version and kind, each refusal
//! naming file, line, column and field (fixtures: `support::playbooks`).

use failoverd::playbook::{load_file, parse};
use tempfile::TempDir;

mod support;

use support::playbooks::{VALID, at, check, edit, one_problem, write};

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
