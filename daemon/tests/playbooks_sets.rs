#![allow(clippy::unwrap_used)]
//! Sets of playbooks read with `load_paths`: names and routes unique across files, all or
//! nothing with every problem listed, and the repository's own playbooks and demo loading
//! (fixtures: `support::playbooks`).

use std::path::{Path, PathBuf};

use failoverd::playbook::{self, load_file, load_paths};
use tempfile::TempDir;

mod support;

use support::playbooks::{at, check, playbook, write};

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
