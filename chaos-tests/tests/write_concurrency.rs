//! `writeConcurrency` through the real binary on the Kubernetes API server emulator: a write
//! stalled on its object gives its permit up after the per-request timeout, so even with a
//! single permit the other objects' writes do not wait for the stalled one's whole budget.
//!
//! Run `cargo build -p failoverd` first (the test drives `target/debug/failoverd`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chaos_tests::storm::{Storm, Timing, object_name};
use failoverd::audit::{self, Record};
use failoverd::engine::Routing;

const N: usize = 5;
const FAILED_OVER: Routing = Routing::Failover { target: 0 };
const TOKEN: &str = "write-concurrency-operator-token";

/// `POST path` with the operator token and a JSON body (HTTP/1.0, bounded to 30 s): the
/// status code.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> u16 {
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
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `f` finds something in the storm's audit log.
async fn wait_audit<T>(
    storm: &Storm,
    what: &str,
    timeout: Duration,
    f: impl Fn(&[Record]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let records = audit::read_all(&storm.paths.audit).unwrap_or_default();
        if let Some(t) = f(&records) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ensures a stalled write does not hold its permit for its whole budget: with
/// `--write-concurrency 1`, pb-0000's failover is sent first (an operator call) to an object
/// whose updates stall 8 s, then the other four primaries fail. Every other playbook's
/// `written` record comes before pb-0000's outcome in the audit chain: they were written
/// while the stalled write was still running (a write holding its permit to its end would
/// put all four after it). Ordering in the one audit chain, not a timing budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_gives_its_permit_up() {
    let mut storm = Storm::new(N, Timing::FAST).await.unwrap();
    let tokens = storm.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
            failoverd::auth::hash_token(TOKEN)
        ),
    )
    .unwrap();
    let mut d = storm
        .spawn(
            "permit",
            &[
                "--write-concurrency",
                "1",
                "--tokens",
                tokens.to_str().unwrap(),
            ],
        )
        .unwrap();
    d.wait_ready(Duration::from_secs(60)).await.unwrap();
    storm
        .emu
        .stall_writes_to(&object_name(0), Duration::from_secs(8));
    let addr = d.addr;
    let call = tokio::spawn(async move {
        post(
            addr,
            "/v1/playbooks/pb-0000/failover",
            r#"{"reason":"INC-3: move it first","target":"failover[0]"}"#,
        )
        .await
    });
    // pb-0000's write has started (its intent is recorded) before any other fails.
    let intent = wait_audit(&storm, "pb-0000's intent", Duration::from_secs(15), |rs| {
        rs.iter()
            .find(|r| r.playbook == "pb-0000" && r.outcome == "intent")
            .map(|r| r.seq)
    })
    .await;
    storm.primary.stop();
    let missing = storm
        .wait_all(FAILED_OVER, Duration::from_secs(30), &[0])
        .await;
    assert!(
        missing.is_empty(),
        "never failed over: {missing:?}\n{}",
        d.logs()
    );
    let stalled_outcome = wait_audit(&storm, "pb-0000's outcome", Duration::from_secs(30), |rs| {
        rs.iter()
            .find(|r| r.playbook == "pb-0000" && r.seq > intent && r.outcome != "intent")
            .map(|r| (r.seq, r.outcome.clone()))
    })
    .await;
    let records = audit::read_all(&storm.paths.audit).unwrap();
    for i in 1..N {
        let pb = format!("pb-{i:04}");
        let written = records
            .iter()
            .find(|r| r.playbook == pb && r.action == "failover" && r.outcome == "written")
            .unwrap_or_else(|| panic!("{pb} has no `written` record: {records:#?}"));
        assert!(
            written.seq < stalled_outcome.0,
            "{pb} was written (seq {}) only after the stalled write ended (seq {}, {}): the stalled write held the only permit",
            written.seq,
            stalled_outcome.0,
            stalled_outcome.1
        );
    }
    let code = call.await.unwrap();
    println!(
        "pb-0000: {} (operator call answered {code})",
        stalled_outcome.1
    );
    storm.emu.stall_writes_to(&object_name(0), Duration::ZERO);
    d.terminate(Duration::from_secs(30)).unwrap();
    audit::verify(&storm.paths.audit).unwrap();
}
