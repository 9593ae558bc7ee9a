#![allow(clippy::unwrap_used)]
//! `failoverd validate --config`: the real binary refuses what `run` refuses, special and
//! non-UTF-8 files and a FIFO secret file (fixtures: `support::playbooks`).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

mod support;

use support::playbooks::{VALID, at, write};

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

/// Makes a FIFO at `path` (with the real `mkfifo`): a file a reader would block on.
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
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
    mkfifo(&fifo);
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
    mkfifo(&fifo);
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

// ---- the fence seen statically: every failover target outside the allowed set ----

/// The file store's cluster facts: namespace `ns` in ID, `ns-dr` labelled `dr` (None: no
/// label at all).
fn cluster_facts(dir: &Path, dr: Option<&str>) {
    let label = dr.map_or_else(String::new, |c| {
        format!(", labels: {{ failoverd.dev/jurisdiction: {c} }}")
    });
    write(
        dir,
        "routes/_cluster/mesh.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: ns, labels: {{ failoverd.dev/jurisdiction: ID }} }}\n\
             ---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: ns-dr{label} }}\n"
        ),
    );
}

/// A fenced playbook whose only failover target is, by `_cluster/`, in SG while only ID is
/// allowed: `validate --config` still accepts the set (exit 0) but warns, naming the
/// playbook, its file and the target with its jurisdiction. No warning once the target is in
/// ID, nor when its jurisdiction is unknown (a missing label is not a static refusal), nor
/// without a residency rule.
#[test]
fn validate_config_warns_when_every_failover_target_is_outside_the_allowed_set() {
    let (dir, cfg) = config_set("residency: { allowed: [ID] }\n");
    cluster_facts(dir.path(), Some("SG"));
    let (code, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "a warning, not a problem\n{out}\n{err}");
    assert!(out.contains("ok (svc)"), "{out}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    let file = dir.path().join("pb/svc.yaml");
    for part in [
        file.display().to_string().as_str(),
        "playbook `svc`",
        "[ID]",
        "svc.ns-dr.svc.cluster.local (SG)",
    ] {
        assert!(warning.contains(part), "`{part}` not in: {warning}");
    }

    for (what, dr, extra) in [
        ("target in ID", Some("ID"), "residency: { allowed: [ID] }\n"),
        (
            "jurisdiction unknown",
            None,
            "residency: { allowed: [ID] }\n",
        ),
        ("no residency rule", Some("SG"), ""),
    ] {
        let (dir, cfg) = config_set(extra);
        cluster_facts(dir.path(), dr);
        let (code, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{what}\n{out}\n{err}");
        assert!(!err.contains("warning:"), "{what}: {err}");
    }
}
