//! A fault drill (`spec.inject`, `scope: probes`) meets a full audit disk, against the real
//! `failoverd` binary (build it first: `cargo build -p failoverd`), the file store, the
//! routing proxy the primary's probe goes through (the drill's detection needs the probes to
//! meet the fault), and the audit log alone on a small tmpfs. Needs root to mount the tmpfs
//! (the tests and CI run as root); a test that cannot mount fails, it never skips.
//!
//! The seam: the drill writes its fault route into the VirtualService and later removes it,
//! each through the single writer with an audit intent before the write and an outcome
//! after. What must hold:
//!
//! 1. **Disk full before the fault is written** (the drill started while the audit log's
//!    filesystem is full to the last byte): no fault is written (the VirtualService file is
//!    byte-for-byte unchanged for seconds), the run ends `aborted` with a reason naming the
//!    audit error (`No space left`), the log is byte-for-byte unchanged, the daemon stays up
//!    (`/readyz` 200 `degraded`, the audit unavailable). Once space returns: nothing of that
//!    drill is in the VirtualService (never written at all), `failoverd audit verify`
//!    passes, sequence numbers run 1..n, no drill-fault record exists.
//! 2. **Disk fills while the fault is in place** (after the fault route and the failover are
//!    seen in the VirtualService file, during the hold): the removal needs its intent record,
//!    so nothing is written while the disk is full (the VirtualService and the log unchanged
//!    byte for byte, `/readyz` degraded); the run retries the removal for 30 s
//!    (`REMOVE_RETRY`), then gives up. Both paths are tested:
//!    - *full past the give-up*: the probes carry the drill header until the give-up and
//!      none after it (the proxy aborts no more probe requests; the primary is seen healthy
//!      again); the run ends `failed`, naming the removal it could not make; after the free
//!      the removal is the sweep's (`sweep_faults`, every 1 s, actor `failoverd`) and the
//!      failback the engine's (the run's own failback is refused at the give-up, the primary
//!      still failing then, and the run leaves it to the engine), in either order;
//!    - *space back during the run's retry*: the run itself removes its fault (actor
//!      `drill:fault`) within seconds of the free, then fails back.
//!
//!    Either way, once space returns: the fault is removed within seconds with one intent
//!    (dated after the free: refused attempts leave nothing) and its `written` outcome, the
//!    VirtualService equals the original exactly (as an object: the store writes its own
//!    YAML layout), every VirtualService change seen from outside has its `written` record,
//!    `failoverd audit verify` passes, sequence numbers run 1..n, every outcome names an
//!    intent before it, and SIGTERM ends the daemon with status 0.
//!
//! "Full to the last byte": before the fill the daemon's log is made to end on a page
//! boundary (refused API calls, each recorded, sized to land on it), so a full tmpfs takes
//! no append at all, not even into the last page's slack.
//!
//! The oracles are the VirtualService file's bytes (watched from outside), the audit log
//! parsed here line by line, the proxy's count of aborted requests and the `failoverd audit
//! verify` CLI; the daemon's own view (`/readyz`, the run report, its log, the playbook's
//! status) only for sequencing, the signals it must raise and the reasons it gives.
#![allow(clippy::unwrap_used)]

#[path = "support/fault_drill.rs"]
mod fault_drill;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, DaemonPaths, POLL, assert_audit_verifies, drill_events, wait_for};
use failoverd::engine::Routing;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use fault_drill::{Setup, TOKEN, WAIT, api_get, fault_routes, verdict};
use tmpfs::{PAGE, Tmpfs};

const SEC: Duration = Duration::from_secs(1);
/// How long a held write is watched to stay held.
const HOLD_FOR: Duration = Duration::from_secs(3);
/// The run's own retry of the removal (`REMOVE_RETRY` in `drill/fault.rs`).
const REMOVE_RETRY: Duration = Duration::from_secs(30);
/// After space returns, the removal is due within a second (the sweep's period) plus the
/// failback before it (retried every 250 ms); room for a loaded 2-core box.
const AFTER_FREE_WITHIN: Duration = Duration::from_secs(6);
/// A drill that holds long enough for the test to fill the disk during the hold.
const LONG_HOLD: &str = "  mode: live\n  hold: 8s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";

// ---------------------------------------------------------------------------------------
// The set-up.

/// The scenario's paths with only the audit log on the tmpfs.
fn paths_on(setup: &Setup, fs: &Tmpfs) -> DaemonPaths {
    let mut p = setup.s.paths.clone();
    p.audit = fs.path().join("audit.jsonl");
    p
}

/// A version of the VirtualService file and when it was first seen.
type Version = (Instant, Vec<u8>);

/// Every VirtualService file version seen from outside (polled every [`POLL`]), with when.
struct VsWatch {
    seen: Arc<Mutex<Vec<Version>>>,
    stop: Arc<AtomicBool>,
}

impl VsWatch {
    fn start(path: &Path) -> Self {
        let seen = Arc::new(Mutex::new(vec![(
            Instant::now(),
            std::fs::read(path).unwrap(),
        )]));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, path) = (seen.clone(), stop.clone(), path.to_path_buf());
        tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                // A file store write is a rename: a read never sees half a file.
                if let Ok(bytes) = std::fs::read(&path) {
                    let mut seen = s.lock().unwrap();
                    if seen.last().is_none_or(|(_, b)| *b != bytes) {
                        seen.push((Instant::now(), bytes));
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Self { seen, stop }
    }

    /// The versions seen, the first being the one at the start.
    fn versions(&self) -> Vec<Version> {
        self.seen.lock().unwrap().clone()
    }

    /// Every version seen, for a failure message.
    fn describe(&self) -> String {
        self.versions()
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// The changes seen at or after `since`.
    fn changes_since(&self, since: Instant) -> usize {
        self.versions()
            .iter()
            .skip(1)
            .filter(|(t, _)| *t >= since)
            .count()
    }
}

impl Drop for VsWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn summary(recs: &[Value]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            format!(
                "{}:{}:{}:{}",
                r["seq"], r["action"], r["outcome"], r["actor"]
            )
        })
        .collect()
}

/// Sequence numbers 1..=n, each once, in file order; the log ends in a whole line.
fn assert_no_sequence_reused(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "partial last line");
    let seqs: Vec<u64> = chaos_tests::json_lines(path)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "sequence numbers reused or missing");
}

/// Every write outcome names an intent that comes before it with the same action and
/// playbook, and each intent is named at most once.
fn assert_outcomes_follow_intents(recs: &[Value]) {
    let mut named = Vec::new();
    for r in recs {
        let Some(seq) = r["inputs"]["intentSeq"].as_u64() else {
            continue;
        };
        let intent = recs
            .iter()
            .find(|i| i["seq"] == seq)
            .unwrap_or_else(|| panic!("no intent {seq}: {:?}", summary(recs)));
        assert_eq!(intent["outcome"], "intent", "{:?}", summary(recs));
        assert_eq!(intent["action"], r["action"], "{:?}", summary(recs));
        assert_eq!(intent["playbook"], r["playbook"], "{:?}", summary(recs));
        assert!(intent["seq"].as_u64() < r["seq"].as_u64());
        assert!(!named.contains(&seq), "intent {seq} named twice");
        named.push(seq);
    }
}

/// A POST to the API with [`TOKEN`] and a JSON body: the status.
async fn api_post(addr: SocketAddr, path: &str, body: &Value) -> u16 {
    let body = body.to_string();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(5 * SEC, exchange)
        .await
        .unwrap()
        .unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap()
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Bytes left in the audit log's last page: appends that fit there need no new page, so a
/// full tmpfs would still take them.
fn slack(path: &Path) -> u64 {
    (PAGE - len(path) % PAGE) % PAGE
}

/// While the disk still has space: makes the daemon's log end on a page boundary, so that
/// once the tmpfs is full no append fits at all ("full to the last byte"). It appends
/// through the daemon (the only writer): each refused call (a run of a drill that does not
/// exist, 404) is recorded with the caller's reason, sized to land on the boundary.
async fn pad_log_to_page(d: &Daemon, log: &Path) {
    // Bytes of a padding record besides its reason, measured from the first one.
    let mut base: Option<u64> = None;
    for _ in 0..40 {
        let (before, n) = (len(log), chaos_tests::json_lines(log).len());
        let left = slack(log);
        if left == 0 {
            return;
        }
        let r = match base {
            None => 1,
            Some(b) => {
                // The boundary to land on: this page's, or the next if no record fits here.
                let to = if left > b { left } else { left + PAGE };
                if to - b <= 1000 {
                    to - b
                } else {
                    // Too far for one record: one that leaves room for another.
                    (to - 2 * b - 1).min(1000)
                }
            }
        };
        let reason = "x".repeat(r as usize);
        let code = api_post(
            d.addr,
            "/v1/drills/no-such-drill/run",
            &json!({ "reason": reason }),
        )
        .await;
        assert_eq!(code, 404);
        // The refusal is appended after the answer: wait for it.
        wait_for("the padding record", 5 * SEC, || {
            (chaos_tests::json_lines(log).len() > n).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        if chaos_tests::json_lines(log).len() == n + 1 {
            base = Some(len(log) - before - r);
        }
    }
    panic!(
        "could not pad the audit log to a page boundary ({} B)",
        len(log)
    );
}

async fn readyz(d: &Daemon) -> (u16, Value) {
    let (code, body) = d.get("/readyz").await.unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `/readyz` says the audit log is unavailable for lack of space, and the daemon is up:
/// degraded, not unready.
async fn assert_degraded_for_space(d: &Daemon) {
    let (code, body) = readyz(d).await;
    assert_eq!(code, 200, "{body}\n{}", d.logs());
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["audit"]["available"], false, "{body}");
    assert!(
        body["audit"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "{body}"
    );
}

/// Polls an async `f` every 50 ms until it returns `Some`, at most `within`.
async fn poll<T, F: Future<Output = Option<T>>>(
    d: &Daemon,
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "no {what} within {within:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_audit_available(d: &Daemon) {
    poll(d, "audit log available again", 4 * SEC, || async {
        let (code, body) = readyz(d).await;
        (code == 200 && body["audit"]["available"] == true).then_some(())
    })
    .await;
}

async fn report(addr: SocketAddr, id: &str) -> Value {
    let (code, body) = api_get(addr, &format!("/v1/drills/fault/runs/{id}")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The drill is started while the audit log's tmpfs is full to the last byte: no fault is
/// written, the run is aborted naming the audit error, the log and the VirtualService are
/// unchanged byte for byte, the daemon stays up (degraded); after space returns nothing of
/// the drill is in the VirtualService and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_before_the_fault_writes_nothing_and_aborts_the_run() {
    let fs = Tmpfs::mount("1m");
    let setup = Setup::new(&[("fault", LONG_HOLD)]).await;
    let paths = paths_on(&setup, &fs);
    let mut d = setup.spawn_on(&paths, "fault-full-before").await;
    pad_log_to_page(&d, &paths.audit).await;
    fs.fill_leaving(0);
    let vs_before = setup.s.vs_bytes().unwrap();
    let log_before = std::fs::read(&paths.audit).unwrap_or_default();
    let watch = VsWatch::start(&setup.s.vs_path);

    let id = setup.start(&d, "fault");
    let run = verdict(d.addr, "fault", &id).await;
    assert_eq!(run["result"], "aborted", "{run:#}\n{}", d.logs());
    let why = run["reasons"][0].as_str().unwrap();
    assert!(
        why.contains("the fault was not written")
            && why.contains("audit record")
            && why.contains("No space left"),
        "{run:#}"
    );
    eprintln!("aborted: {why}");
    let ev = drill_events(&run);
    assert!(ev.contains(&"fault-refused".to_string()), "{ev:?}");
    assert!(!ev.contains(&"fault-written".to_string()), "{ev:?}");
    // Held for seconds after the verdict too: nothing comes later.
    tokio::time::sleep(HOLD_FOR).await;
    assert_eq!(
        watch.versions().len(),
        1,
        "the VirtualService changed while no record could be written\n{}",
        d.logs()
    );
    assert_eq!(setup.s.vs_bytes().unwrap(), vs_before);
    assert_eq!(
        std::fs::read(&paths.audit).unwrap_or_default(),
        log_before,
        "the log changed on a full disk"
    );
    assert_degraded_for_space(&d).await;
    assert!(d.is_running(), "{}", d.logs());

    fs.free();
    wait_audit_available(&d).await;
    // The sweep (every 1 s) has had its rounds: there is still nothing to remove.
    tokio::time::sleep(HOLD_FOR).await;
    assert!(setup.fault_routes().is_empty());
    assert_eq!(watch.versions().len(), 1, "the VirtualService changed");
    assert_eq!(setup.s.vs_bytes().unwrap(), vs_before);
    let status = d.terminate(WAIT).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.logs());
    assert_audit_verifies(&paths.audit);
    assert_no_sequence_reused(&paths.audit);
    let recs = chaos_tests::json_lines(&paths.audit);
    assert!(
        !recs
            .iter()
            .any(|r| r["action"].as_str().unwrap().starts_with("drill-fault")),
        "{:?}",
        summary(&recs)
    );
    // The run's start and end were kept while the disk was full and written once it took
    // appends: the chain shows the aborted run, start before end.
    let of_run = |action: &str| {
        recs.iter()
            .position(|r| r["action"] == action && r["inputs"]["run"] == id.as_str())
    };
    let (start, end) = (of_run("drill-start"), of_run("drill-end"));
    assert!(
        start.is_some() && end.is_some() && start < end,
        "the run's drill-start and drill-end records: {start:?} {end:?}\n{:?}",
        summary(&recs)
    );
    assert_eq!(
        recs[end.unwrap()]["outcome"],
        "aborted",
        "{:?}",
        summary(&recs)
    );
}

/// A fault drill with its fault and failover in place, during the hold, and then the audit
/// log's tmpfs full to the last byte.
struct FaultInPlace {
    setup: Setup,
    paths: DaemonPaths,
    /// The VirtualService before the drill, as a value: the store writes its own YAML
    /// layout, so one written and restored has other bytes, the same object.
    original: Value,
    d: Daemon,
    watch: VsWatch,
    id: String,
    filled: Instant,
    full_vs: Vec<u8>,
    full_log: Vec<u8>,
    /// Dropped last (fields drop in order): unmounted once the daemon is gone.
    fs: Tmpfs,
}

impl FaultInPlace {
    async fn start(name: &str) -> Self {
        let fs = Tmpfs::mount("1m");
        let setup = Setup::new(&[("fault", LONG_HOLD)]).await;
        let paths = paths_on(&setup, &fs);
        let original = setup.vs();
        let d = setup.spawn_on(&paths, name).await;
        let watch = VsWatch::start(&setup.s.vs_path);
        let id = setup.start(&d, "fault");
        let vs_path = setup.s.vs_path.clone();
        wait_for("the fault route in the VirtualService", WAIT, || {
            (!fault_routes(&vs_path).is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        setup
            .s
            .wait_routing(|r| r != Routing::Primary, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        // During the hold (8 s): the log ends on a page, then the tmpfs is full.
        pad_log_to_page(&d, &paths.audit).await;
        fs.fill_leaving(0);
        let filled = Instant::now();
        let full_vs = setup.s.vs_bytes().unwrap();
        let full_log = std::fs::read(&paths.audit).unwrap();
        assert!(
            !fault_routes(&vs_path).is_empty(),
            "the fault was removed before the disk was full: the test did not reach the seam"
        );
        assert!(
            drill_events(&report(d.addr, &id).await)
                .iter()
                .all(|e| e != "held"),
            "the hold ended before the disk was full: the test did not reach the seam"
        );
        Self {
            setup,
            paths,
            original,
            d,
            watch,
            id,
            filled,
            full_vs,
            full_log,
            fs,
        }
    }

    fn has_fault(&self) -> bool {
        !self.setup.fault_routes().is_empty()
    }

    /// Still full: nothing written since the fill (the fault still in place), the log
    /// unchanged byte for byte, the daemon up and degraded.
    async fn assert_held(&self) {
        assert_eq!(
            self.watch.changes_since(self.filled),
            0,
            "the VirtualService changed while no record could be written: {}\n{:?}\n{}",
            self.watch.describe(),
            summary(&chaos_tests::json_lines(&self.paths.audit)),
            self.d.logs()
        );
        assert_eq!(self.setup.s.vs_bytes().unwrap(), self.full_vs);
        assert!(self.has_fault());
        assert_eq!(std::fs::read(&self.paths.audit).unwrap(), self.full_log);
        assert_degraded_for_space(&self.d).await;
    }

    /// Gives the space back; the fault is removed within seconds, then the VirtualService is
    /// the original. Returns when the space was freed.
    async fn free(&self) -> Timestamp {
        let freed_at = Timestamp::now();
        let freed = Instant::now();
        self.fs.free();
        let d = &self.d;
        wait_for("the fault route removed", AFTER_FREE_WITHIN, || {
            (!self.has_fault()).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        eprintln!("fault removed {:?} after the free", freed.elapsed());
        wait_for("the original VirtualService", AFTER_FREE_WITHIN, || {
            (self.setup.vs() == self.original).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        freed_at
    }

    /// SIGTERM ends the daemon with status 0; the VirtualService is the original; the chain
    /// verifies with every sequence once and every outcome after its intent; the removal has
    /// one intent, dated after the free (refused attempts left nothing), and its `written`
    /// outcome by `remover`; every change of the VirtualService seen from outside has its
    /// `written` record.
    async fn finish(mut self, freed_at: Timestamp, remover: &str) {
        let log = self.paths.audit.clone();
        wait_for("the removal's written record", 4 * SEC, || {
            chaos_tests::json_lines(&log)
                .into_iter()
                .find(|r| r["action"] == "drill-fault-removed" && r["outcome"] == "written")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.d.logs()));
        // The run's end is in the chain too (kept while the disk was full, if it ended then).
        let run = self.id.clone();
        wait_for("the run's drill-end record", 4 * SEC, || {
            chaos_tests::json_lines(&log)
                .into_iter()
                .find(|r| r["action"] == "drill-end" && r["inputs"]["run"] == run.as_str())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.d.logs()));
        let status = self.d.terminate(WAIT).unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.d.logs());
        assert_eq!(self.setup.vs(), self.original);
        assert_audit_verifies(&log);
        assert_no_sequence_reused(&log);
        let recs = chaos_tests::json_lines(&log);
        eprintln!("the log: {:?}", summary(&recs));
        assert_outcomes_follow_intents(&recs);
        let removal: Vec<&Value> = recs
            .iter()
            .filter(|r| r["action"] == "drill-fault-removed")
            .collect();
        let outcomes: Vec<&str> = removal
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["intent", "written"], "{:?}", summary(&recs));
        let intent_at: Timestamp = removal[0]["time"].as_str().unwrap().parse().unwrap();
        assert!(
            intent_at >= freed_at,
            "the removal's intent is dated {intent_at}, before the free at {freed_at}"
        );
        assert_eq!(removal[1]["inputs"]["intentSeq"], removal[0]["seq"]);
        assert_eq!(removal[1]["actor"], remover, "{:?}", summary(&recs));
        let written = recs
            .iter()
            .filter(|r| r["outcome"].as_str().unwrap().starts_with("written"))
            .count();
        assert_eq!(
            self.watch.versions().len() - 1,
            written,
            "VirtualService changes seen vs `written` records: {:?}",
            summary(&recs)
        );
    }
}

/// The disk fills while the fault is in place (after the failover, during the hold) and
/// stays full past the run's retry: the removal is not written without its record; the run
/// gives up and the probes stop sending the drill header (the primary seen healthy again);
/// the run fails naming the removal; once space returns the sweep removes the fault within
/// seconds, audited, the VirtualService is the original exactly, the chain verifies with
/// every sequence once, and the daemon exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_past_the_runs_retry_leaves_the_removal_to_the_sweep() {
    let f = FaultInPlace::start("fault-give-up").await;
    let (d, id) = (&f.d, &f.id);
    let aborted_at_fill = f.setup.router.stats().aborted;
    // The run gives up on the removal after its retry; the header was sent until then.
    let gave_up = poll(
        d,
        "give-up of the removal by the run",
        REMOVE_RETRY + 20 * SEC,
        || async {
            let ev = drill_events(&report(d.addr, id).await);
            ev.iter()
                .any(|e| e == "fault-not-removed")
                .then(Instant::now)
        },
    )
    .await;
    eprintln!(
        "gave up {:?} after the fill",
        gave_up.duration_since(f.filled)
    );
    let aborted_at_give_up = f.setup.router.stats().aborted;
    assert!(
        aborted_at_give_up >= aborted_at_fill + 20,
        "the probes stopped meeting the fault before the run gave up ({aborted_at_fill} → {aborted_at_give_up})"
    );
    // One probe interval for a probe already on its way; then none carries the header.
    tokio::time::sleep(SEC).await;
    let after = f.setup.router.stats().aborted;
    tokio::time::sleep(HOLD_FOR).await;
    assert_eq!(
        f.setup.router.stats().aborted,
        after,
        "the probes still send the drill header after the run gave up"
    );
    // The primary is seen healthy again (the daemon's view: what its probes report).
    let (_, body) = api_get(d.addr, "/v1/playbooks/demo").await;
    let pb: Value = serde_json::from_str(&body).unwrap();
    let primary = pb["status"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == "primary-health")
        .unwrap_or_else(|| panic!("{pb:#}"));
    let health = primary["health"].to_string().to_lowercase();
    assert!(
        health.contains("healthy") && !health.contains("unhealthy"),
        "{primary}"
    );
    f.assert_held().await;
    // Some 40 s of refused attempts (every 250 ms) made a warning per removal, not a line
    // per attempt: the run's own, and at most one from the sweep that took over.
    let logs = d.stderr_text();
    let retry_lines = logs
        .lines()
        .filter(|l| l.contains("drill fault not removed yet"))
        .count();
    let refused_lines = logs
        .lines()
        .filter(|l| l.contains("drill fault not written"))
        .count();
    assert!(
        (1..=2).contains(&retry_lines) && refused_lines == 0,
        "{retry_lines} retry warnings and {refused_lines} refusal lines for one full-disk episode\n{logs}"
    );

    let freed_at = f.free().await;
    let run = verdict(d.addr, "fault", id).await;
    assert_eq!(run["result"], "failed", "{run:#}");
    assert!(
        run["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("the fault could not be removed")),
        "{run:#}"
    );
    // The run gave up: the removal is the sweep's.
    f.finish(freed_at, "failoverd").await;
}

/// The disk fills while the fault is in place and space returns while the run still retries
/// the removal (after the hold, before the 30 s give-up): nothing is written while full (the
/// probes still meet the fault); after the free the run itself removes its fault within
/// seconds, audited, and fails back; the VirtualService is the original exactly and the
/// chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_returning_during_the_runs_retry_lets_the_run_remove_its_fault() {
    let f = FaultInPlace::start("fault-retry").await;
    let (d, id) = (&f.d, &f.id);
    // The hold ends and the run's removal is refused (its report is saved only once the
    // removal returns: its retry shows in the daemon's log).
    poll(d, "the run's removal refused", WAIT, || async {
        d.stderr_text()
            .contains("drill fault not removed yet; retrying")
            .then_some(())
    })
    .await;
    let aborted_at_hold_end = f.setup.router.stats().aborted;
    // Retried meanwhile.
    tokio::time::sleep(HOLD_FOR).await;
    f.assert_held().await;
    assert!(
        f.setup.router.stats().aborted >= aborted_at_hold_end + 3,
        "the probes stopped meeting the fault while it was still in place"
    );
    let ev = drill_events(&report(d.addr, id).await);
    assert!(!ev.iter().any(|e| e == "fault-not-removed"), "{ev:?}");

    let freed_at = f.free().await;
    let run = verdict(d.addr, "fault", id).await;
    eprintln!(
        "verdict after the free: {} {}",
        run["result"], run["reasons"]
    );
    let ev = drill_events(&run);
    assert!(ev.iter().any(|e| e == "fault-removed"), "{ev:?}");
    assert!(!ev.iter().any(|e| e == "fault-not-removed"), "{ev:?}");
    // The run removed its own fault.
    f.finish(freed_at, "drill:fault").await;
}
