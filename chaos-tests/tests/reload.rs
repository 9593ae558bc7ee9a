#![allow(clippy::unwrap_used)]
//! Playbook hot reload against the real `failoverd` binary (build it first: `cargo build -p
//! failoverd`): add a playbook, break a file (the running set is kept and still fails over,
//! the error is reported in the log, `/readyz` and metrics), fix it. Every wait is bounded.

use std::time::Duration;

use chaos_tests::prometheus::sum_series;
use chaos_tests::{Daemon, FAST_FAILBACK, Scenario};
use failoverd::engine::Routing;

const SEC: Duration = Duration::from_secs(1);
/// One poll (2 s) plus the drain and restart, with room for a loaded machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

async fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    // NaN while the daemon restarts (nothing listens for a moment).
    match d.get("/metrics").await {
        Ok((200, body)) => sum_series(&body, name, labels),
        _ => f64::NAN,
    }
}

/// Polls every 100 ms until `f` holds, at most `within`; panics with the logs otherwise.
async fn until<F: AsyncFnMut(&Daemon) -> bool>(d: &Daemon, what: &str, within: Duration, mut f: F) {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if f(d).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out after {within:?} waiting for {what}\n{}",
        d.logs()
    );
}

/// A second playbook on its own VirtualService, probing the same stand-ins.
fn other_playbook(demo: &str) -> String {
    demo.replacen("name: demo #", "name: other #", 1).replacen(
        "virtualService: { namespace: demo, name: web }",
        "virtualService: { namespace: demo, name: other }",
        1,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn add_break_fix() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let mut d = s.spawn("failoverd").unwrap();
    d.wait_ready(10 * SEC).await.unwrap();
    let pid = d.pid();

    // 1. Add a playbook: applied (a restart in place, same PID), its probes run.
    let other = s.paths.playbooks.join("other.yaml");
    std::fs::write(&other, other_playbook(&s.playbook_text)).unwrap();
    until(
        &d,
        "the added playbook's probes",
        RELOAD_WITHIN,
        async |d| {
            d.get("/metrics").await.is_ok_and(|(_, body)| {
                sum_series(
                    &body,
                    "failoverd_probe_results_total",
                    &[("playbook", "other")],
                ) > 0.0
            })
        },
    )
    .await;
    assert_eq!(d.pid(), pid);
    assert!(d.is_running());
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")]
        )
        .await,
        1.0
    );

    // 2. Break the demo playbook: refused, reported with file:line:col; the old set runs on.
    let broken = s
        .playbook_text
        .replacen("failureThreshold: 3", "failureThreshold: 0", 1);
    assert_ne!(broken, s.playbook_text);
    std::fs::write(&s.playbook_path, &broken).unwrap();
    until(&d, "the refused reload", RELOAD_WITHIN, async |d| {
        metric(d, "failoverd_playbook_reload_failed", &[]).await == 1.0
    })
    .await;
    let (code, readyz) = d.get("/readyz").await.unwrap();
    assert_eq!(code, 200, "{readyz}");
    let line = s
        .playbook_text
        .lines()
        .position(|l| l.contains("failureThreshold: 3"))
        .unwrap()
        + 1;
    assert!(
        readyz.contains(&format!("demo.yaml:{line}:")) && readyz.contains("failureThreshold"),
        "/readyz should carry the refused set's problem at line {line}: {readyz}"
    );
    assert!(
        d.logs().contains("playbook reload refused"),
        "the log should say so\n{}",
        d.logs()
    );
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "invalid")]
        )
        .await,
        1.0
    );
    // The running set (threshold 3) still fails over when the primary dies.
    s.primary.stop();
    let moved = chaos_tests::wait_routing(
        &s.paths.store,
        &s.playbook,
        |r| r == Routing::Failover { target: 0 },
        RELOAD_WITHIN,
    )
    .await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert!(d.is_running());

    // 3. Put the file back as it was: the files match the running set again, so the
    //    failure clears without a restart.
    std::fs::write(&s.playbook_path, &s.playbook_text).unwrap();
    until(&d, "the refusal cleared", RELOAD_WITHIN, async |d| {
        metric(d, "failoverd_playbook_reload_failed", &[]).await == 0.0
    })
    .await;
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")]
        )
        .await,
        1.0
    );

    // 4. A real fix that changes the set: applied; the route failoverd wrote is kept.
    let fixed = s
        .playbook_text
        .replacen("failureThreshold: 3", "failureThreshold: 2", 1);
    std::fs::write(&s.playbook_path, &fixed).unwrap();
    until(&d, "the fixed set applied", RELOAD_WITHIN, async |d| {
        metric(
            d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")],
        )
        .await
            == 2.0
    })
    .await;
    d.wait_ready(20 * SEC).await.unwrap();
    assert_eq!(
        metric(&d, "failoverd_playbook_reload_failed", &[]).await,
        0.0
    );
    let (_, readyz) = d.get("/readyz").await.unwrap();
    assert!(readyz.contains("\"playbookReloadError\":null"), "{readyz}");
    let (r, _) = chaos_tests::wait_routing(&s.paths.store, &s.playbook, |_| true, SEC)
        .await
        .unwrap();
    assert_eq!(r, Routing::Failover { target: 0 }, "{}", d.logs());
    assert_eq!(d.pid(), pid);
    d.terminate(10 * SEC).unwrap();
}

/// A plan-mode drill of the demo playbook (part of the running set in
/// [`invalid_files_never_stop_the_daemon`]; plan mode writes nothing).
const DRILL: &str = "apiVersion: failoverd.dev/v1alpha1
kind: Drill
metadata:
  name: nightly
spec:
  playbooks: [ demo ]
  schedule: \"0 15 6 * * *\"
  mode: plan
";

/// The config file of the daemon in [`invalid_files_never_stop_the_daemon`] (everything
/// else comes from flags).
const CONFIG: &str = "maxConcurrentFailovers: 0\n";

/// A billion-laughs document: nine levels of nine aliases (3.9e8 strings if expanded).
fn yaml_bomb() -> String {
    let mut s = String::from("apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\n");
    s.push_str("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

/// Writes `bytes` to `dir/name` in one step (a hidden temporary file renamed into place),
/// so the watcher never sees a half-written file.
fn put(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// One kind of invalid change: what to do to the playbooks directory, how to undo it, and
/// the file the refusal must name.
struct Case {
    what: &'static str,
    /// The file the refusal must name (in `/readyz` and in an ERROR log line).
    names: &'static str,
    /// More that `/readyz` must say (a location), if anything.
    says: Option<&'static str>,
    apply: Box<dyn Fn(&Scenario)>,
    undo: Box<dyn Fn(&Scenario)>,
}

fn remove(s: &Scenario, name: &str) {
    std::fs::remove_file(s.paths.playbooks.join(name)).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "bad playbook",
            names: "bad.yaml",
            says: None,
            apply: Box::new(|s| {
                let text = other_playbook(&s.playbook_text).replacen(
                    "failureThreshold: 3",
                    "failureThreshold: 0",
                    1,
                );
                put(&s.paths.playbooks, "bad.yaml", text.as_bytes());
            }),
            undo: Box::new(|s| remove(s, "bad.yaml")),
        },
        Case {
            what: "bad drill",
            names: "baddrill.yaml",
            says: None,
            apply: Box::new(|s| {
                let text = DRILL
                    .replace("nightly", "weekly")
                    .replace("mode: plan", "mode: plan\n  holdd: 2m");
                put(&s.paths.playbooks, "baddrill.yaml", text.as_bytes());
            }),
            undo: Box::new(|s| remove(s, "baddrill.yaml")),
        },
        Case {
            what: "drill naming a missing playbook",
            names: "ghost.yaml",
            says: None,
            apply: Box::new(|s| {
                let text = DRILL
                    .replace("nightly", "ghostly")
                    .replace("[ demo ]", "[ ghost ]");
                put(&s.paths.playbooks, "ghost.yaml", text.as_bytes());
            }),
            undo: Box::new(|s| remove(s, "ghost.yaml")),
        },
        Case {
            // Every step refused: demo removed first (no playbook at all, the drill names
            // a missing one), then a playbook of another name added (the drill still names
            // a missing one); undone in the reverse order, so no valid other set is passed.
            what: "playbook removed under a drill",
            names: "nightly.yaml",
            says: None,
            apply: Box::new(|s| {
                remove(s, "demo.yaml");
                put(
                    &s.paths.playbooks,
                    "other.yaml",
                    other_playbook(&s.playbook_text).as_bytes(),
                );
            }),
            undo: Box::new(|s| {
                remove(s, "other.yaml");
                put(&s.paths.playbooks, "demo.yaml", s.playbook_text.as_bytes());
            }),
        },
        Case {
            what: "SLO without a Prometheus server",
            names: "slo.yaml",
            says: None,
            apply: Box::new(|s| {
                let mut text = other_playbook(&s.playbook_text);
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(
                    "  slos:\n    - name: error-ratio\n      target: primary\n      prometheus: { query: vector(0), above: 0.05 }\n",
                );
                put(&s.paths.playbooks, "slo.yaml", text.as_bytes());
            }),
            undo: Box::new(|s| remove(s, "slo.yaml")),
        },
        Case {
            // Unreadable even for root: a FIFO (a plain read would block the watcher
            // forever) ...
            what: "FIFO",
            names: "fifo.yaml",
            says: None,
            apply: Box::new(|s| {
                let made = std::process::Command::new("mkfifo")
                    .arg(s.paths.playbooks.join("fifo.yaml"))
                    .status()
                    .unwrap();
                assert!(made.success(), "mkfifo failed");
            }),
            undo: Box::new(|s| remove(s, "fifo.yaml")),
        },
        Case {
            // ... and a dangling symlink (a ConfigMap swap gone wrong).
            what: "dangling symlink",
            names: "gone.yaml",
            says: None,
            apply: Box::new(|s| {
                std::os::unix::fs::symlink(
                    s.paths.playbooks.join("nowhere"),
                    s.paths.playbooks.join("gone.yaml"),
                )
                .unwrap();
            }),
            undo: Box::new(|s| remove(s, "gone.yaml")),
        },
        Case {
            // Two links back to the directory: followed, the walk would be exponential.
            what: "symlink loop",
            names: "loop-a",
            says: None,
            apply: Box::new(|s| {
                for l in ["loop-a", "loop-b"] {
                    std::os::unix::fs::symlink(&s.paths.playbooks, s.paths.playbooks.join(l))
                        .unwrap();
                }
            }),
            undo: Box::new(|s| {
                remove(s, "loop-a");
                remove(s, "loop-b");
            }),
        },
        Case {
            what: "invalid UTF-8",
            names: "latin1.yaml",
            says: None,
            apply: Box::new(|s| {
                let mut bytes = other_playbook(&s.playbook_text).into_bytes();
                bytes.extend_from_slice(b"# caf\xe9\n");
                put(&s.paths.playbooks, "latin1.yaml", &bytes);
            }),
            undo: Box::new(|s| remove(s, "latin1.yaml")),
        },
        Case {
            // Not in the playbooks directory: the config file is watched too, and a key the
            // restarted process would refuse is refused at its line.
            what: "config edit start would refuse",
            names: "failoverd.yaml",
            says: Some("failoverd.yaml:2:1: externalUrl"),
            apply: Box::new(|s| {
                let text = format!("{CONFIG}externalUrl: \"ftp://failoverd.example\"\n");
                put(s.dir.path(), "failoverd.yaml", text.as_bytes());
            }),
            undo: Box::new(|s| put(s.dir.path(), "failoverd.yaml", CONFIG.as_bytes())),
        },
        Case {
            what: "YAML bomb",
            names: "bomb.yaml",
            says: None,
            apply: Box::new(|s| put(&s.paths.playbooks, "bomb.yaml", yaml_bomb().as_bytes())),
            undo: Box::new(|s| remove(s, "bomb.yaml")),
        },
    ]
}

/// Issue 13: every kind of invalid file dropped into a running daemon's playbooks
/// directory is refused before any restart: the daemon stays up with the same PID and the
/// same set (no reload applied), `/readyz` and an ERROR log line (file:line:col) name the
/// file, `failoverd_playbook_reload_failed` is 1; undone, the failure clears. Afterwards a
/// failover still works.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_files_never_stop_the_daemon() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    // A drill in the running set, so removing the playbook it names can be tried.
    let drills = s.paths.playbooks.join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    put(&drills, "nightly.yaml", DRILL.as_bytes());
    put(s.dir.path(), "failoverd.yaml", CONFIG.as_bytes());
    let config = s.dir.path().join("failoverd.yaml");
    let mut d = chaos_tests::Daemon::spawn_with(
        &s.paths,
        "failoverd",
        &["--config", config.to_str().unwrap()],
    )
    .unwrap();
    d.wait_ready(10 * SEC).await.unwrap();
    let pid = d.pid();
    let cases = cases();
    for case in &cases {
        (case.apply)(&s);
        let what = format!("{}: the refused reload naming {}", case.what, case.names);
        until(&d, &what, RELOAD_WITHIN, async |d| {
            metric(d, "failoverd_playbook_reload_failed", &[]).await == 1.0
                && d.get("/readyz")
                    .await
                    .is_ok_and(|(_, body)| body.contains(case.names))
        })
        .await;
        assert!(d.is_running(), "{}: daemon exited\n{}", case.what, d.logs());
        assert_eq!(d.pid(), pid, "{}", case.what);
        let (code, readyz) = d.get("/readyz").await.unwrap();
        assert_eq!(code, 200, "{}: {readyz}", case.what);
        if let Some(says) = case.says {
            assert!(
                readyz.contains(says),
                "{}: `{says}` not in {readyz}",
                case.what
            );
        }
        // An ERROR line naming the file, its message `path:line:col: ...`.
        let logged = d.log_lines().iter().any(|l| {
            l["level"] == "ERROR"
                && l["fields"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(case.names))
                && l["fields"]["message"].as_str().is_some_and(|m| {
                    let file = l["fields"]["file"].as_str().unwrap_or_default();
                    m.contains(&format!(
                        "{file}:{}:{}:",
                        l["fields"]["line"], l["fields"]["column"]
                    ))
                })
        });
        assert!(
            logged,
            "{}: no ERROR line with {}:line:col\n{}",
            case.what,
            case.names,
            d.logs()
        );
        (case.undo)(&s);
        until(
            &d,
            &format!("{}: the refusal cleared", case.what),
            RELOAD_WITHIN,
            async |d| metric(d, "failoverd_playbook_reload_failed", &[]).await == 0.0,
        )
        .await;
    }
    // Never restarted: every change was refused before the drain.
    assert_eq!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "applied")]
        )
        .await,
        0.0,
        "{}",
        d.logs()
    );
    assert!(
        metric(
            &d,
            "failoverd_playbook_reload_total",
            &[("result", "invalid")]
        )
        .await
            >= cases.len() as f64
    );
    // The running set still fails over when the primary dies.
    s.primary.stop();
    let moved = chaos_tests::wait_routing(
        &s.paths.store,
        &s.playbook,
        |r| r == Routing::Failover { target: 0 },
        RELOAD_WITHIN,
    )
    .await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert!(d.is_running());
    assert_eq!(d.pid(), pid);
    d.terminate(10 * SEC).unwrap();
}
