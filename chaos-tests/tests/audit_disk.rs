#![allow(clippy::unwrap_used)]
//! The audit log on a real, small, full tmpfs, against the real `failoverd` binary (build it
//! first: `cargo build -p failoverd`). Needs root to mount the tmpfs (the tests and CI run as
//! root); a test that cannot mount fails and says why, it never passes without checking.
//!
//! The rule under test: no move without a durable intent record. A full disk holds the move
//! (route file unchanged) and raises a loud signal (`/readyz` detail, metric, log line); once
//! space is freed the move happens within one round with no operator action, `failoverd audit
//! verify` passes, no sequence is reused and every record is present. A kill -9 while the disk
//! is full does not stop the next start. A route written whose outcome record did not fit is
//! recorded once space returns, so the log and the store agree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/tmpfs.rs"]
mod tmpfs;

use chaos_tests::{Daemon, DaemonPaths, POLL, Scenario, assert_audit_verifies, wait_for};
use failoverd::audit::{AuditLog, Entry, Record};
use failoverd::engine::Routing;
use serde_json::Value;
use tmpfs::{PAGE, Tmpfs};

const SEC: Duration = Duration::from_secs(1);
/// Failover due: 3 probes at 1 s after the primary stops, plus the write; room for a loaded
/// 2-core box.
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);
/// After space is freed, the held move is decided again at the next tick (250 ms) and written;
/// "within one round", with room for a loaded box.
const AFTER_FREE_WITHIN: Duration = Duration::from_secs(4);
/// How long a held move is watched to stay held.
const HOLD_FOR: Duration = Duration::from_secs(3);

/// A webhook receiver on loopback: the `event` of every body it was sent.
struct Hook {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    async fn start() -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let event = v["event"].as_str().unwrap_or("?").to_string();
                    seen.lock().unwrap().push(event);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, events }
    }

    fn count(&self, event: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == event)
            .count()
    }

    /// A `--config` file (outside the tmpfs) sending the audit events to this receiver.
    fn config(&self, dir: &Path) -> PathBuf {
        let secret = dir.join("hook-secret");
        std::fs::write(&secret, "test-secret").unwrap();
        let path = dir.join("failoverd.yaml");
        std::fs::write(
            &path,
            format!(
                "notify:\n  webhooks:\n    - {{ name: oncall, url: \"http://{}/hook\", events: [audit-unavailable, audit-recovered], secretFile: {} }}\n",
                self.addr,
                secret.display()
            ),
        )
        .unwrap();
        path
    }
}

/// Starts the audit log at `path` with set-up records so that its last page has exactly
/// `slack` bytes left (0: the file ends on a page boundary, so any append needs a new page).
fn log_with_slack(path: &Path, slack: u64) {
    let want = (PAGE - slack % PAGE) % PAGE;
    let setup = |reason: String| Entry {
        actor: "test".into(),
        action: "setup".into(),
        reason,
        outcome: "noted".into(),
        ..Entry::default()
    };
    // Timestamps vary by a few bytes; measure one record, pad a second, retry if a timestamp
    // came out another length.
    for _ in 0..50 {
        let _ = std::fs::remove_file(path);
        let mut log = AuditLog::open(path).unwrap();
        log.append(setup(String::new())).unwrap();
        let first = std::fs::metadata(path).unwrap().len();
        // A second record with an empty reason is about `first` long again.
        let base = 2 * first;
        let pad = (want + 2 * PAGE - base % PAGE) % PAGE;
        log.append(setup("p".repeat(pad as usize))).unwrap();
        if std::fs::metadata(path).unwrap().len() % PAGE == want {
            return;
        }
    }
    panic!("could not size the set-up audit log");
}

fn paths_on(s: &Scenario, fs: &Tmpfs) -> DaemonPaths {
    let mut p = s.paths.clone();
    p.audit = fs.path().join("audit.jsonl");
    p
}

fn records(p: &DaemonPaths) -> Vec<Record> {
    failoverd::audit::read_all(&p.audit).unwrap_or_default()
}

fn summary(recs: &[Record]) -> Vec<String> {
    recs.iter()
        .map(|r| format!("{}:{}:{}", r.seq, r.action, r.outcome))
        .collect()
}

/// Sequence numbers 1..=n, each once, in file order (read here, not through the daemon).
fn assert_no_sequence_reused(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "log ends in a partial line");
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "sequence numbers reused or missing");
}

async fn readyz(d: &Daemon) -> (u16, Value) {
    let (code, body) = d.get("/readyz").await.unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let (_, body) = d.get("/metrics").await.ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits until `/readyz` answers 200 with a body for which `pred` holds.
async fn wait_readyz(d: &Daemon, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let (code, body) = readyz(d).await;
        if code == 200 && pred(&body) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "/readyz did not show {what} within {within:?} (last: {code} {body})\n{}",
            d.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `/readyz` reports the audit log unavailable; returns its body.
async fn wait_audit_unavailable(d: &Daemon, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (code, body) = readyz(d).await;
        if body["audit"]["available"] == Value::Bool(false) {
            // Degraded, not unready: the API stays reachable for on-call.
            assert_eq!(code, 200, "{body}");
            assert_eq!(body["status"], "degraded", "{body}");
            return body;
        }
        assert!(
            start.elapsed() < within,
            "/readyz never reported the audit log unavailable (last: {code} {body})\n{}",
            d.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Watches the route file for `HOLD_FOR`: it must not change.
async fn assert_route_held(s: &Scenario, d: &Daemon) {
    let bytes = s.vs_bytes().unwrap();
    let start = Instant::now();
    while start.elapsed() < HOLD_FOR {
        assert_eq!(
            s.vs_bytes().unwrap(),
            bytes,
            "the route moved without its intent record\n{}",
            d.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()))
}

/// The failover's records after the set-up: exactly one intent and one `written`, in that
/// order, and nothing else about a move.
fn assert_one_failover_recorded(recs: &[Record]) {
    let moves: Vec<&Record> = recs.iter().filter(|r| r.action == "failover").collect();
    let outcomes: Vec<&str> = moves.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes.len(), 2, "{:?}", summary(recs));
    assert_eq!(outcomes[0], "intent", "{:?}", summary(recs));
    assert!(outcomes[1].starts_with("written"), "{:?}", summary(recs));
    assert!(moves[0].seq < moves[1].seq);
}

/// Ensures a failover due while the audit log's tmpfs is full to the last byte is not made
/// (route file unchanged for seconds, the log unchanged byte for byte) and is signalled
/// (`/readyz` audit detail with the error, `failoverd_audit_available 0`, failed appends
/// counted, one error line, one `audit-unavailable` webhook event); once the filler is deleted the move is written within one round,
/// the signal clears, `failoverd audit verify` passes, sequences run 1..n, the intent and its
/// outcome are both in the log, one `audit-unavailable` record notes the episode and one
/// `audit-recovered` event is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_holds_the_move_until_space_returns() {
    let fs = Tmpfs::mount("1m");
    let mut s = Scenario::new(&[]).await.unwrap();
    let paths = paths_on(&s, &fs);
    log_with_slack(&paths.audit, 0);
    let hook = Hook::start().await;
    let config = hook.config(s.dir.path());
    let mut d = Daemon::spawn_with(&paths, "full", &[Path::new("--config"), &config]).unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    fs.fill_leaving(0);
    let log_before = std::fs::read(&paths.audit).unwrap();

    s.primary.stop();
    let body = wait_audit_unavailable(&d, FAILOVER_WITHIN).await;
    let error = body["audit"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "{body}");
    assert_route_held(&s, &d).await;
    assert_eq!(
        std::fs::read(&paths.audit).unwrap(),
        log_before,
        "a failed append left bytes in the log"
    );
    assert_audit_verifies(&paths.audit);
    assert_eq!(metric(&d, "failoverd_audit_available").await, Some(0.0));
    assert!(
        metric(&d, "failoverd_audit_write_errors_total")
            .await
            .is_some_and(|n| n >= 2.0),
        "the move is retried every round, each refused append counted"
    );
    wait_readyz(&d, SEC, "the held move in the playbook's error", |b| {
        b["playbookErrors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not made") && e.contains("No space left"))
    })
    .await;
    // One error line for the episode, not one per round.
    let logs = d.stderr_text();
    let episode_lines = logs
        .lines()
        .filter(|l| {
            l.contains("ERROR") && l.contains("moves are not made until the log takes appends")
        })
        .count();
    assert_eq!(episode_lines, 1, "error lines for the episode\n{logs}");
    ok(
        wait_for("the audit-unavailable event", 2 * SEC, || {
            (hook.count("audit-unavailable") > 0).then_some(())
        })
        .await,
        &d,
    );

    let freed = Instant::now();
    fs.free();
    let (_, took) = ok(s.wait_routing(failed_over, AFTER_FREE_WITHIN).await, &d);
    eprintln!(
        "failover written {took:?} after space was freed ({:?} since the free)",
        freed.elapsed()
    );
    ok(
        wait_for("a written failover record", 2 * SEC, || {
            records(&paths)
                .into_iter()
                .find(|r| r.action == "failover" && r.outcome == "written")
        })
        .await,
        &d,
    );
    wait_readyz(&d, 2 * SEC, "the audit log available again", |b| {
        b["audit"]["available"] == Value::Bool(true) && b["status"] == "ok"
    })
    .await;
    assert_eq!(metric(&d, "failoverd_audit_available").await, Some(1.0));
    ok(
        wait_for("the audit-recovered event", 2 * SEC, || {
            (hook.count("audit-recovered") > 0).then_some(())
        })
        .await,
        &d,
    );
    // Once per episode, not once per round.
    assert_eq!(hook.count("audit-unavailable"), 1);
    assert_eq!(hook.count("audit-recovered"), 1);
    let status = d.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.logs());
    assert_audit_verifies(&paths.audit);
    assert_no_sequence_reused(&paths.audit);
    let recs = records(&paths);
    assert_one_failover_recorded(&recs);
    // The chain says when appends were refused, once.
    let notes: Vec<&Record> = recs
        .iter()
        .filter(|r| r.action == "audit-unavailable")
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", summary(&recs));
    assert!(
        notes[0].reason.contains("No space left"),
        "{}",
        notes[0].reason
    );
}

/// Ensures a kill -9 while the audit log's tmpfs is full and a failover is held does not stop
/// the next start (still full: the daemon starts, is ready, holds the move and signals it),
/// and once space is freed the move is written within one round and the chain verifies with
/// no sequence reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_on_a_full_disk_starts_again() {
    let fs = Tmpfs::mount("1m");
    let mut s = Scenario::new(&[]).await.unwrap();
    let paths = paths_on(&s, &fs);
    log_with_slack(&paths.audit, 0);
    let mut d = Daemon::spawn(&paths, "first").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    fs.fill_leaving(0);
    s.primary.stop();
    wait_audit_unavailable(&d, FAILOVER_WITHIN).await;
    d.kill().unwrap();
    assert_audit_verifies(&paths.audit);

    let mut d2 = Daemon::spawn(&paths, "second").unwrap();
    ok(d2.wait_ready(10 * SEC).await, &d2);
    wait_audit_unavailable(&d2, FAILOVER_WITHIN).await;
    assert_route_held(&s, &d2).await;

    fs.free();
    ok(s.wait_routing(failed_over, AFTER_FREE_WITHIN).await, &d2);
    ok(
        wait_for("a written failover record", 2 * SEC, || {
            records(&paths)
                .into_iter()
                .find(|r| r.action == "failover" && r.outcome == "written")
        })
        .await,
        &d2,
    );
    let status = d2.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d2.logs());
    assert_audit_verifies(&paths.audit);
    assert_no_sequence_reused(&paths.audit);
    assert_one_failover_recorded(&records(&paths));
}

/// Sizes (bytes with newline) of a failover's intent and `written` records, measured on a
/// daemon with plenty of space.
async fn measure_failover_records() -> (u64, u64) {
    let mut s = Scenario::new(&[]).await.unwrap();
    let mut d = s.spawn("measure").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    ok(
        wait_for("a written failover record", 2 * SEC, || {
            s.audit()
                .into_iter()
                .find(|r| r.action == "failover" && r.outcome == "written")
        })
        .await,
        &d,
    );
    d.kill().unwrap();
    let text = std::fs::read_to_string(&s.paths.audit).unwrap();
    let size = |outcome: &str| {
        text.lines()
            .find(|l| l.contains(&format!("\"outcome\":\"{outcome}\"")))
            .map(|l| l.len() as u64 + 1)
            .unwrap()
    };
    (size("intent"), size("written"))
}

/// Ensures that when a failover's intent fits on the full tmpfs but its outcome does not
/// (the partial outcome line is cut off), the route is written, `/readyz` says the move's
/// record is owed, and once space is freed the `written` record is appended right after
/// its intent without an operator: the log agrees with the store and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_that_did_not_fit_is_recorded_once_space_returns() {
    let (intent, written) = measure_failover_records().await;
    assert!(written > intent, "intent {intent} B, written {written} B");
    // Room for the intent and half the outcome: the intent fits, the outcome does not.
    let room = intent + written / 2;
    let fs = Tmpfs::mount("1m");
    let mut s = Scenario::new(&[]).await.unwrap();
    let paths = paths_on(&s, &fs);
    log_with_slack(&paths.audit, room % PAGE);
    let mut d = Daemon::spawn(&paths, "outcome").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    fs.fill_leaving(room / PAGE);

    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    wait_audit_unavailable(&d, 2 * SEC).await;
    // The move is written but not reported as recorded.
    wait_readyz(&d, 2 * SEC, "the owed outcome in /readyz", |b| {
        b["audit"]["owedRecords"] == 1
            && b["playbookErrors"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("audit record is not yet"))
    })
    .await;
    let recs = records(&paths);
    assert_eq!(
        recs.last().map(|r| (r.action.as_str(), r.outcome.as_str())),
        Some(("failover", "intent")),
        "{:?}",
        summary(&recs)
    );
    assert_audit_verifies(&paths.audit);

    fs.free();
    ok(
        wait_for("the owed written record", AFTER_FREE_WITHIN, || {
            records(&paths)
                .into_iter()
                .find(|r| r.action == "failover" && r.outcome == "written")
        })
        .await,
        &d,
    );
    let status = d.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.logs());
    assert_audit_verifies(&paths.audit);
    assert_no_sequence_reused(&paths.audit);
    let recs = records(&paths);
    assert_one_failover_recorded(&recs);
    // The log agrees with the store: its last move's `after` is the route the file holds.
    let last = recs
        .iter()
        .rev()
        .find(|r| r.action == "failover" && r.outcome == "written")
        .unwrap();
    assert!(last.reason.contains("recorded late"), "{}", last.reason);
    let vs = s.read_vs().unwrap();
    assert_eq!(&last.after, vs.pointer("/spec/http/1/route").unwrap());
}

/// Ensures a kill -9 while a written route's outcome record is owed (it did not fit) is
/// resolved at the next start from the store: the restarted daemon records the failover as
/// `written` (its reason: recovered at start) once space returns, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_an_owed_outcome_is_resolved_from_the_store() {
    let (intent, written) = measure_failover_records().await;
    let room = intent + written / 2;
    let fs = Tmpfs::mount("1m");
    let mut s = Scenario::new(&[]).await.unwrap();
    let paths = paths_on(&s, &fs);
    log_with_slack(&paths.audit, room % PAGE);
    let mut d = Daemon::spawn(&paths, "first").unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    fs.fill_leaving(room / PAGE);
    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    wait_audit_unavailable(&d, 2 * SEC).await;
    d.kill().unwrap();

    let mut d2 = Daemon::spawn(&paths, "second").unwrap();
    ok(d2.wait_ready(10 * SEC).await, &d2);
    fs.free();
    let rec = ok(
        wait_for("the failover resolved at start", AFTER_FREE_WITHIN, || {
            records(&paths)
                .into_iter()
                .find(|r| r.action == "failover" && r.outcome != "intent")
        })
        .await,
        &d2,
    );
    assert_eq!(rec.outcome, "written", "{rec:?}");
    assert!(rec.reason.contains("recovered at start"), "{}", rec.reason);
    assert_eq!(rec.actor, "failoverd");
    let status = d2.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d2.logs());
    assert_audit_verifies(&paths.audit);
    assert_no_sequence_reused(&paths.audit);
    assert_one_failover_recorded(&records(&paths));
}
