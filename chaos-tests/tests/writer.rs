//! The routing writer through the real binary on the Kubernetes API server emulator: writes
//! to different VirtualServices run in parallel (one stalled object delays no other), every
//! outcome in the audit log names its intent and agrees with what the API server holds, and
//! an operator command queued behind a write in flight is applied after it.
//!
//! Run `cargo build -p failoverd` first (the tests drive `target/debug/failoverd`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use chaos_tests::storm::{Storm, Timing, object_name};
use failoverd::audit::{self, Record};
use failoverd::engine::Routing;

const FAILED_OVER: Routing = Routing::Failover { target: 0 };

fn playbook_name(i: usize) -> String {
    format!("pb-{i:04}")
}

/// Waits (bounded) until `f` finds something in the storm's audit log.
async fn sc_wait<T>(
    storm: &Storm,
    what: &str,
    timeout: Duration,
    f: impl Fn(&[Record]) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = audit::read_all(&storm.paths.audit).unwrap_or_default();
        if let Some(t) = f(&records) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {records:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the pairing of intents and outcomes: every outcome of a move names an intent
/// (`inputs.intentSeq`) of the same playbook and action that came before it, and no intent
/// has two outcomes.
fn assert_outcomes_name_their_intents(records: &[Record]) {
    let by_seq: HashMap<u64, &Record> = records.iter().map(|r| (r.seq, r)).collect();
    let mut closed = HashMap::new();
    for r in records {
        let is_move_outcome = r.outcome == "written"
            || r.outcome == "unchanged"
            || (r.outcome.starts_with("failed") && r.inputs.get("to").is_some());
        if !is_move_outcome || r.reason.starts_with("recovered at start") {
            continue;
        }
        let seq = r.inputs["intentSeq"]
            .as_u64()
            .unwrap_or_else(|| panic!("outcome without intentSeq: {r:#?}"));
        let intent = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("outcome names a missing intent {seq}: {r:#?}"));
        assert_eq!(intent.outcome, "intent", "{r:#?} names {intent:#?}");
        assert_eq!(
            (&intent.playbook, &intent.action),
            (&r.playbook, &r.action),
            "{r:#?}"
        );
        assert!(intent.seq < r.seq);
        assert!(
            closed.insert(seq, r.seq).is_none(),
            "intent {seq} has two outcomes"
        );
    }
}

/// Ensures one VirtualService whose writes stall 8 s delays no other: 50 playbooks' primaries
/// fail at once and the other 49 routes are in the API server within `interval × threshold`
/// + 1 s of the fault (the issue's bound). The stalled one ends written or recorded failed,
/// and its last audit outcome agrees with the object; every outcome names its intent.
///
/// The client-side burst is raised to 200 so the bound tests the writer, not the configured
/// pace: a move is three requests (read, update, read-back), and 49 moves at the default
/// 50/s with a burst of 100 spend 0.94 s waiting for tokens by arithmetic alone
/// ((147 − 100) / 50), leaving nothing for detection. `benches/storm.rs` measures the
/// storm at the default rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_virtual_service_delays_no_other_write() {
    const N: usize = 50;
    const STALLED: usize = 17;
    let timing = Timing::FAST;
    let mut storm = Storm::new(N, timing).await.unwrap();
    let mut d = storm.spawn("stalled", &["--kube-burst", "200"]).unwrap();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();
    storm
        .emu
        .stall_writes_to(&object_name(STALLED), Duration::from_secs(8));
    // The fault starts when the primary stops answering; detection needs `threshold` failed
    // probes at `interval`, then the moves are written. The times are the API server's own
    // (when it answered each update), so watching costs the daemon nothing.
    let fault = SystemTime::now();
    storm.primary.stop();
    let budget = timing.detection() + Duration::from_secs(1);
    let missing = storm
        .wait_all(FAILED_OVER, Duration::from_secs(30), &[STALLED])
        .await;
    assert!(
        missing.is_empty(),
        "never failed over: {missing:?}\n{}",
        d.logs()
    );
    let seen = storm.first_updates(fault);
    let late: Vec<(usize, Option<Duration>)> = seen
        .iter()
        .enumerate()
        .filter(|&(i, t)| i != STALLED && t.is_none_or(|t| t > budget))
        .map(|(i, t)| (i, *t))
        .collect();
    let slowest = seen.iter().flatten().max().copied();
    println!(
        "slowest of the other {} routes: {slowest:?} (budget {budget:?})",
        N - 1
    );
    assert!(
        late.is_empty(),
        "routes not written within {budget:?} of the fault (slowest {slowest:?}): {late:?}\n{}",
        d.logs()
    );

    // The stalled object: its first attempt ends one way or the other (the API server never
    // answers an update within the client's request timeout, so the kubernetes store gives up
    // on it and reads the object to settle it)...
    let name = playbook_name(STALLED);
    let outcomes = |records: &[Record]| -> Vec<Record> {
        records
            .iter()
            .filter(|r| r.playbook == name && r.action == "failover" && r.outcome != "intent")
            .cloned()
            .collect()
    };
    let first = sc_wait(
        &storm,
        "the stalled write's first outcome",
        Duration::from_secs(30),
        |records| outcomes(records).first().cloned(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert!(
        first.outcome == "written" || first.outcome.starts_with("failed"),
        "{first:#?}"
    );
    // ... then, the API server well again, the move lands and the last outcome recorded is
    // what the API server holds.
    storm
        .emu
        .stall_writes_to(&object_name(STALLED), Duration::ZERO);
    let last = sc_wait(
        &storm,
        "the stalled playbook written",
        Duration::from_secs(30),
        |records| {
            outcomes(records)
                .last()
                .filter(|r| r.outcome == "written" || r.outcome == "unchanged")
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(storm.routing(STALLED), Some(FAILED_OVER));
    assert_eq!(last.after, storm.route(STALLED), "{last:#?}");
    d.terminate(Duration::from_secs(30)).unwrap();

    let records = audit::read_all(&storm.paths.audit).unwrap();
    audit::verify(&storm.paths.audit).unwrap();
    assert_outcomes_name_their_intents(&records);
    // The stalled playbook's record: a `failed` is followed by no `unchanged` (a write
    // recorded failed that landed after all), and its first success is its only `written`.
    let stalled: Vec<&str> = records
        .iter()
        .filter(|r| r.playbook == name && r.action == "failover" && r.outcome != "intent")
        .map(|r| r.outcome.as_str())
        .collect();
    assert!(
        !stalled
            .windows(2)
            .any(|w| w[0].starts_with("failed") && w[1] == "unchanged"),
        "a write recorded failed landed after all: {stalled:?}"
    );
    for i in (0..N).filter(|&i| i != STALLED) {
        let pb = playbook_name(i);
        let written: Vec<&Record> = records
            .iter()
            .filter(|r| r.playbook == pb && r.action == "failover" && r.outcome == "written")
            .collect();
        assert_eq!(written.len(), 1, "{pb}: {written:#?}");
        assert_eq!(written[0].after, storm.route(i), "{pb}: audit vs object");
    }
}

const TOKEN: &str = "writer-test-operator-token";

/// A token file with one operator, for `--tokens`.
fn tokens_file(storm: &Storm) -> String {
    let path = storm.dir.path().join("tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
            failoverd::auth::hash_token(TOKEN)
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `POST path` with the operator token and a JSON body (HTTP/1.0, bounded to 30 s): status
/// and body.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("POST answered within 30 s")
        .expect("POST exchange");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Ensures an operator failback accepted while a write to the playbook is in flight survives
/// the overrides being rebuilt meanwhile (an override expiring, here another playbook's 1 s
/// freeze) and is applied right after that write: the caller's answer comes once the
/// failback is written, and the audit holds it. The write in flight is a reassert of the
/// failed-over route after someone reverted it (drift), its updates answered 2.5 s late.
/// Two storm playbooks with an operator token, both failed over; then pb-0000's updates
/// answered 2.5 s late (inside the 3 s request timeout) and its route reverted by someone
/// else, so failoverd's reassert of it is in flight when this returns.
async fn reassert_in_flight(name: &str) -> (Storm, chaos_tests::Daemon) {
    let mut storm = Storm::new(2, Timing::FAST).await.unwrap();
    let tokens = tokens_file(&storm);
    let mut d = storm.spawn(name, &["--tokens", &tokens]).unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    storm.primary.stop();
    let found = |action: &'static str, outcome: &'static str| {
        move |records: &[Record]| {
            records
                .iter()
                .find(|r| r.playbook == "pb-0000" && r.action == action && r.outcome == outcome)
                .cloned()
        }
    };
    sc_wait(
        &storm,
        "pb-0000 failed over",
        Duration::from_secs(15),
        found("failover", "written"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    storm
        .emu
        .stall_writes_to(&object_name(0), Duration::from_millis(2500));
    storm
        .emu
        .mutate("VirtualService", "bench", &object_name(0), |o| {
            o["spec"]["http"][0]["route"] = serde_json::json!([{ "destination": { "host": "web-0000.bench.svc.cluster.local" } }]);
        })
        .unwrap();
    sc_wait(
        &storm,
        "the reassert in flight",
        Duration::from_secs(15),
        found("reassert", "intent"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    (storm, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_operator_command_survives_an_override_rebuild() {
    let (storm, mut d) = reassert_in_flight("queued").await;
    // A freeze on the other playbook that ends while the write is in flight: its expiry
    // rebuilds every playbook's overrides.
    let (code, body) = post(
        d.addr,
        "/v1/playbooks/pb-0001/freeze",
        r#"{"reason":"short freeze","ttl":"1s"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(
        d.addr,
        "/v1/playbooks/pb-0000/failback",
        r#"{"reason":"INC-1: back to the primary","force":true}"#,
    )
    .await;
    // However the call was answered, the reassert ends (and is recorded) first.
    sc_wait(
        &storm,
        "the reassert's outcome",
        Duration::from_secs(15),
        |records| {
            records
                .iter()
                .find(|r| {
                    r.playbook == "pb-0000" && r.action == "reassert" && r.outcome != "intent"
                })
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let records = audit::read_all(&storm.paths.audit).unwrap();
    let seq_of = |pred: &dyn Fn(&Record) -> bool| records.iter().find(|r| pred(r)).map(|r| r.seq);
    let expired = seq_of(&|r| r.action == "override-expired" && r.playbook == "pb-0001");
    let reassert_ended =
        seq_of(&|r| r.playbook == "pb-0000" && r.action == "reassert" && r.outcome != "intent");
    // The precondition: the rebuild really happened while the command waited.
    assert!(
        expired.is_some() && expired < reassert_ended,
        "the freeze must expire before the reassert ends (expired {expired:?}, reassert outcome {reassert_ended:?}); failback answered {code} {body}: {records:#?}"
    );
    assert_eq!(code, 200, "{body}\n{}", d.logs());
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["written"], true, "{reply:#}");
    assert_eq!(reply["routing"]["to"], "primary", "{reply:#}");
    let failback = records
        .iter()
        .find(|r| {
            r.playbook == "pb-0000" && r.action == "operator-failback" && r.outcome == "written"
        })
        .unwrap_or_else(|| panic!("no operator-failback written: {records:#?}"));
    assert!(
        reassert_ended < Some(failback.seq),
        "applied after the write in flight"
    );
    assert_eq!(failback.actor, "oncall@test");
    storm.emu.stall_writes_to(&object_name(0), Duration::ZERO);
    d.terminate(Duration::from_secs(30)).unwrap();
    audit::verify(&storm.paths.audit).unwrap();
}

/// Ensures a failback queued behind a write in flight that can no longer apply (failoverd is
/// shut down first) is answered with a JSON error (503), never a 200: the write in flight
/// finishes and is recorded, the failback is not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_command_that_cannot_apply_is_answered_with_an_error() {
    let (storm, mut d) = reassert_in_flight("queued-shutdown").await;
    let addr = d.addr;
    let call = tokio::spawn(async move {
        post(
            addr,
            "/v1/playbooks/pb-0000/failback",
            r#"{"reason":"INC-2: back to the primary","force":true}"#,
        )
        .await
    });
    // The call is queued (accepted and audited) before the shutdown starts.
    sc_wait(
        &storm,
        "the failback accepted",
        Duration::from_secs(10),
        |records| {
            records
                .iter()
                .find(|r| r.action == "override-failback" && r.outcome == "accepted")
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (code, body) = call.await.unwrap();
    // Wait for the exit the SIGTERM above started: a second signal (as `terminate` sends when
    // the drain is still running on a loaded machine) aborts the drain with 130.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = d.try_status().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 30 s of SIGTERM\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status}\n{}", d.logs());
    assert_eq!(code, 503, "{body}\n{}", d.logs());
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("shut down before the command applied"),
        "{err:#}"
    );
    let records = audit::read_all(&storm.paths.audit).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.playbook == "pb-0000" && r.action == "reassert" && r.outcome != "intent"),
        "the write in flight finished and was recorded: {records:#?}"
    );
    assert!(
        !records.iter().any(|r| r.action == "operator-failback"),
        "no failback was attempted: {records:#?}"
    );
    audit::verify(&storm.paths.audit).unwrap();
}
