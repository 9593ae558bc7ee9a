#![allow(clippy::unwrap_used)]
//! End-to-end scenarios against the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`). Each test runs its own daemon, stand-ins and temporary file
//! store, so they run in parallel; every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chaos_tests::{
    DEMO_PLAYBOOK, DR_HOST, Daemon, FAST_FAILBACK, Scenario, assert_audit_verifies, run_cli,
};
use failoverd::audit::Record;
use failoverd::engine::Routing;
use failoverd::routing::{ORIGINAL_ROUTE, STATE};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);
/// Budget for a failover: 3 probes at 1 s plus write, with room for a loaded machine.
const FAILOVER_WITHIN: Duration = Duration::from_secs(8);
/// Budget for the fast failback: `after: 2s` (+ `minDwell: 1s`) plus room.
const FAILBACK_WITHIN: Duration = Duration::from_secs(10);
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

fn on_primary(r: Routing) -> bool {
    r == Routing::Primary
}

fn written(records: &[Record], action: &str) -> usize {
    records
        .iter()
        .filter(|r| r.action == action && r.outcome == "written")
        .count()
}

fn actions(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{}:{}", r.action, r.outcome))
        .collect()
}

/// Runs `f`; on error, panics with the daemon's logs attached.
fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()))
}

/// The VS with the failoverd annotations and route `i` removed: what must never change.
fn untouched_part(vs: &Value, i: usize) -> Value {
    let mut v = vs.clone();
    if let Some(a) = v
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(ORIGINAL_ROUTE);
        a.remove(STATE);
    }
    if let Some(r) = v
        .pointer_mut(&format!("/spec/http/{i}"))
        .and_then(Value::as_object_mut)
    {
        r.remove("route");
    }
    v
}

/// Primary's listener closes → route moves to the DR host (exact route, original kept in the
/// annotation, nothing else touched); primary heals → failback restores the VS exactly; the
/// audit chain verifies with written failover and failback records; SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn failover_and_failback_restore_the_virtual_service_exactly() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let original = Scenario::original_vs().unwrap();
    let original_route = original.pointer("/spec/http/1/route").unwrap().clone();
    let mut d = s.spawn("failoverd").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);

    s.primary.stop();
    let (r, took) = ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    eprintln!("failover written {took:?} after the fault: {r}");
    let vs = s.read_vs().unwrap();
    assert_eq!(
        vs.pointer("/spec/http/1/route").unwrap(),
        &json!([{ "destination": { "host": DR_HOST }, "weight": 100 }]),
        "failed-over route"
    );
    let ann = vs.pointer("/metadata/annotations").unwrap();
    let recorded: Value = serde_json::from_str(
        ann[ORIGINAL_ROUTE]
            .as_str()
            .expect("original-route annotation"),
    )
    .unwrap();
    assert_eq!(recorded, original_route, "original-route annotation");
    let state: Value =
        serde_json::from_str(ann[STATE].as_str().expect("state annotation")).unwrap();
    assert_eq!(state["playbook"], "demo");
    assert_eq!(
        untouched_part(&vs, 1),
        untouched_part(&original, 1),
        "failover changed more than the primary route"
    );

    s.primary.restart().await.unwrap();
    let (_, took) = ok(s.wait_routing(on_primary, FAILBACK_WITHIN).await, &d);
    eprintln!("failback written {took:?} after healing");
    assert_eq!(
        s.read_vs().unwrap(),
        original,
        "VirtualService after failback differs from the original"
    );
    // The `written` record follows the store write.
    ok(
        s.wait_audit(
            "a written failback record",
            |r| r.action == "failback" && r.outcome == "written",
            2 * SEC,
        )
        .await,
        &d,
    );

    let status = d.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM\n{}", d.logs());
    let records = s.audit();
    assert_eq!(written(&records, "failover"), 1, "{:?}", actions(&records));
    assert_eq!(written(&records, "failback"), 1, "{:?}", actions(&records));
    assert!(
        records
            .iter()
            .all(|r| r.playbook == "demo" || r.playbook.is_empty())
    );
    assert_audit_verifies(&s.paths.audit);
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let i = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in text"));
    let before = &text[..i];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |n| n + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Two broken playbooks (an unknown field; a probe target `failover[5]`), with the
/// `file:line:col:` each problem must be reported at.
fn broken_playbooks(dir: &Path) -> Vec<(PathBuf, String)> {
    let unknown = DEMO_PLAYBOOK.replacen(
        "  route: primary",
        "  route: primary\n  surpriseField: 1",
        1,
    );
    let bad_target = DEMO_PLAYBOOK
        .replacen("name: demo", "name: demo-two", 1)
        .replacen("target: failover[0]", "target: failover[5]", 1);
    let mut out = Vec::new();
    for (name, text, needle) in [
        ("unknown-field.yaml", unknown, "surpriseField"),
        ("bad-target.yaml", bad_target, "failover[5]"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &text).unwrap();
        let (line, col) = at(&text, needle);
        out.push((path.clone(), format!("{}:{line}:{col}:", path.display())));
    }
    out
}

/// `failoverd run` on a playbook directory with two broken files refuses to start: non-zero
/// exit, and stderr names file:line:col of each problem.
#[test]
fn run_refuses_an_invalid_playbook_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pbs = dir.path().join("playbooks");
    std::fs::create_dir_all(&pbs).unwrap();
    let expected = broken_playbooks(&pbs);
    let listen = chaos_tests::free_addr().unwrap().to_string();
    let store = format!("file:{}", dir.path().join("routes").display());
    let audit = dir.path().join("audit.jsonl");
    let out = run_cli(
        [
            "run",
            "--playbooks",
            pbs.to_str().unwrap(),
            "--store",
            &store,
            "--listen",
            &listen,
            "--audit",
            audit.to_str().unwrap(),
        ],
        CLI_TIMEOUT,
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on invalid playbooks:\n{stderr}"
    );
    for (file, loc) in &expected {
        assert!(
            stderr.contains(loc),
            "stderr does not name {loc} for {}:\n{stderr}",
            file.display()
        );
    }
    assert!(stderr.contains("surpriseField"), "{stderr}");
    assert!(stderr.contains("failover[5]"), "{stderr}");
}

/// A missing VirtualService: the daemon keeps running (alive, /readyz answers), logs an
/// error naming the object, and activates the playbook once the file appears (failover works).
#[tokio::test(flavor = "multi_thread")]
async fn missing_virtual_service_keeps_running_and_activates_later() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    std::fs::remove_file(&s.vs_path).unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    tokio::time::sleep(2 * SEC).await;
    assert!(d.is_running(), "failoverd exited\n{}", d.logs());
    let (code, body) = ok(d.get("/readyz").await, &d);
    assert_eq!(code, 200, "/readyz: {body}\n{}", d.logs());
    let readyz: Value = serde_json::from_str(&body).unwrap();
    let errors = readyz["playbookErrors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["playbook"] == "demo"),
        "/readyz does not list the inactive playbook: {body}"
    );
    let logged = d
        .log_lines()
        .into_iter()
        .any(|l| l["level"] == "ERROR" && l.to_string().contains("demo/web"));
    assert!(logged, "no ERROR log naming demo/web\n{}", d.logs());

    std::fs::write(&s.vs_path, chaos_tests::DEMO_VIRTUAL_SERVICE).unwrap();
    // The store is re-read with backoff (at most 5 s between attempts).
    ok(
        async {
            let start = std::time::Instant::now();
            loop {
                let (_, body) = d.get("/readyz").await?;
                let v: Value = serde_json::from_str(&body)?;
                if v["playbookErrors"].as_array().is_some_and(Vec::is_empty) {
                    return anyhow::Ok(());
                }
                if start.elapsed() > 8 * SEC {
                    anyhow::bail!("playbook still inactive 8 s after the file appeared: {body}");
                }
                tokio::time::sleep(chaos_tests::POLL).await;
            }
        }
        .await,
        &d,
    );
    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    assert!(d.is_running());
}

/// The failover target is down too when the primary fails: the route is not touched (the
/// file stays byte-identical for 5 s) and a `stuck` audit record is written.
#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_target_means_stuck_not_moved() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let before = s.vs_bytes().unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    s.dr.stop();
    s.primary.stop();
    let start = std::time::Instant::now();
    while start.elapsed() < 5 * SEC {
        assert_eq!(
            s.vs_bytes().unwrap(),
            before,
            "the VirtualService changed {:?} after both targets failed\n{}",
            start.elapsed(),
            d.logs()
        );
        tokio::time::sleep(chaos_tests::POLL).await;
    }
    let stuck = ok(
        s.wait_audit("a stuck record", |r| r.action == "stuck", 2 * SEC)
            .await,
        &d,
    );
    assert_eq!(stuck.playbook, "demo");
    let records = s.audit();
    assert!(
        records.iter().all(|r| r.outcome != "written"),
        "a route was written: {:?}",
        actions(&records)
    );
    assert!(d.is_running());
    assert_audit_verifies(&s.paths.audit);
}

/// `failoverd validate` exits 0 on the repository's playbooks/ and 1 on a broken file,
/// with `file:line:col:` on stderr.
#[test]
fn validate_accepts_the_repo_playbooks_and_locates_errors() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks");
    let out = run_cli(["validate", repo.to_str().unwrap()], CLI_TIMEOUT).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "validate {}:\n{}{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = broken_playbooks(dir.path());
    let (file, loc) = &broken[0];
    let out = run_cli(["validate", file.to_str().unwrap()], CLI_TIMEOUT).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(loc.as_str()),
        "stderr lacks {loc}:\n{stderr}"
    );
}

/// `failoverd plan` prints a unified diff (original destination removed, DR host added) and
/// leaves the VirtualService file byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn plan_prints_the_diff_and_writes_nothing() {
    let s = Scenario::new(&[]).await.unwrap();
    let before = s.vs_bytes().unwrap();
    let store = format!("file:{}", s.paths.store.display());
    let out = run_cli(
        ["plan", s.playbook_path.to_str().unwrap(), "--store", &store],
        CLI_TIMEOUT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plan failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("@@ ")),
        "no hunk:\n{stdout}"
    );
    let removed = |needle: &str| {
        lines
            .iter()
            .any(|l| l.starts_with('-') && !l.starts_with("---") && l.contains(needle))
    };
    let added = |needle: &str| {
        lines
            .iter()
            .any(|l| l.starts_with('+') && !l.starts_with("+++") && l.contains(needle))
    };
    assert!(removed("host: web.demo.svc.cluster.local"), "{stdout}");
    assert!(removed("subset: v1"), "{stdout}");
    assert!(added(&format!("host: {DR_HOST}")), "{stdout}");
    assert!(added(ORIGINAL_ROUTE), "{stdout}");
    assert!(
        !removed("x-canary") && !removed("attempts") && !removed("owner"),
        "{stdout}"
    );
    assert_eq!(
        s.vs_bytes().unwrap(),
        before,
        "plan wrote the VirtualService"
    );
}

/// SIGKILL right after the failover write, restart: the daemon resumes failed over (from the
/// state annotation, no second write), fails back when the primary heals, and the audit
/// chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_failover_resumes_failed_over_and_fails_back() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let original = Scenario::original_vs().unwrap();
    let mut d = s.spawn("first").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    d.kill().unwrap();
    let failed_over_bytes = s.vs_bytes().unwrap();
    assert_audit_verifies(&s.paths.audit);
    let before_restart = s.audit().len();

    let mut d2 = s.spawn("second").unwrap();
    ok(d2.wait_ready(10 * SEC).await, &d2);
    // Primary still down: a resumed daemon leaves the route where it is.
    let start = std::time::Instant::now();
    while start.elapsed() < 2 * SEC {
        assert_eq!(
            s.vs_bytes().unwrap(),
            failed_over_bytes,
            "the restarted daemon rewrote the route with the primary still down\n{}",
            d2.logs()
        );
        tokio::time::sleep(chaos_tests::POLL).await;
    }
    let resumed = d2.log_lines().into_iter().any(|l| {
        l.to_string().contains("route read from the store") && l.to_string().contains("failover[0]")
    });
    assert!(resumed, "no log of resuming as failed over\n{}", d2.logs());
    let after_restart = s.audit();
    assert!(
        after_restart[before_restart..]
            .iter()
            .all(|r| (r.action != "failover"
            && r.action != "failback")
            // A kill before the `written` record: the restart records it from the store.
            || r.reason.starts_with("recovered at start")),
        "moves after restart: {:?}",
        actions(&after_restart[before_restart..])
    );

    s.primary.restart().await.unwrap();
    ok(s.wait_routing(on_primary, FAILBACK_WITHIN).await, &d2);
    assert_eq!(s.read_vs().unwrap(), original, "VS after failback");
    ok(
        s.wait_audit(
            "a written failback record",
            |r| r.action == "failback" && r.outcome == "written",
            2 * SEC,
        )
        .await,
        &d2,
    );
    let status = d2.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d2.logs());
    assert_audit_verifies(&s.paths.audit);
    let records = s.audit();
    assert!(
        written(&records, "failover") <= 1,
        "{:?}",
        actions(&records)
    );
}
