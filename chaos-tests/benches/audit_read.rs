//! `GET /v1/audit?limit=50` on a 1,000,000-record audit log, against the real binary:
//! p50/p99 of the call and the daemon's RSS before and after (VmRSS, and the peak VmHWM).
//! Goal (issue 13): p99 ≤ 50 ms, RSS growth ≤ 16 MiB, whatever the log's size.
//!
//! The log is fixture data: 1,000,000 valid, hash-chained records (~600 bytes each, an
//! operator's record every 1,000th) written directly, then opened by the daemon as usual
//! (its start-up scan verifies the chain). Also timed: a filtered read (`actor=` an operator,
//! who made one record in 1,000) and `limit=1000`.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench audit_read`.
//! Bounded: 200 calls per query, each at most 10 s; start-up at most 180 s.
#![allow(clippy::unwrap_used)]

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, Scenario, percentile};
use failoverd::auth::hash_token;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECORDS: u64 = 1_000_000;
const CALLS: usize = 200;
const TOKEN: &str = "bench-viewer-token";

/// Writes `n` chained records the way the audit log does: `prev` is the SHA-256 (hex) of the
/// previous line's bytes (without its newline), 64 zeros for the first.
fn write_log(path: &std::path::Path, n: u64) -> u64 {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut prev = "0".repeat(64);
    let start = 1_700_000_000i64;
    let mut bytes = 0u64;
    for seq in 1..=n {
        let operator = seq % 1000 == 0;
        let rec = json!({
            "seq": seq,
            "time": jiff::Timestamp::from_second(start + seq as i64).unwrap(),
            "prev": prev,
            "actor": if operator { "alice@oncall" } else { "engine" },
            "action": if operator { "override-freeze" } else { "failover" },
            "playbook": format!("pb-{:04}", seq % 1000),
            "reason": "primary-health: 3 consecutive failures (connection refused)",
            "inputs": {
                "signals": [
                    { "signal": "primary-health", "target": "primary", "health": "unhealthy", "streak": 3 },
                    { "signal": "dr-health", "target": "failover[0]", "health": "healthy", "streak": 120 }
                ]
            },
            "before": { "to": "primary" },
            "after": { "to": "failover", "target": 0 },
            "outcome": "written",
        });
        let line = serde_json::to_string(&rec).unwrap();
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        bytes += line.len() as u64 + 1;
    }
    w.flush().unwrap();
    bytes
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One authenticated GET over a fresh connection: status and JSON body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("no answer within 10 s");
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn measure(addr: SocketAddr, path: &str, expect: usize) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        let (code, body) = get(addr, path).await;
        samples.push(t.elapsed());
        assert_eq!(code, 200, "{path}: {body}");
        let records = body["records"].as_array().unwrap();
        assert_eq!(records.len(), expect, "{path}");
    }
    samples.sort();
    (
        percentile(&samples, 50).unwrap(),
        percentile(&samples, 99).unwrap(),
    )
}

#[tokio::main]
async fn main() {
    let s = Scenario::new(&[]).await.unwrap();
    let t = Instant::now();
    let bytes = write_log(&s.paths.audit, RECORDS);
    println!(
        "audit log: {RECORDS} records, {:.0} MB, written in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let tokens = s.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: bench, role: viewer, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_with(
        &s.paths,
        "audit-read",
        &["--tokens", tokens.to_str().unwrap()],
    )
    .unwrap();
    let ready = d.wait_ready(Duration::from_secs(180)).await.unwrap();
    println!(
        "daemon ready in {:.1} s (start-up verifies the chain)",
        ready.as_secs_f64()
    );
    let addr = d.addr;
    // One call first: the newest 50, oldest first, ending at the last record.
    let (code, body) = get(addr, "/v1/audit?limit=50").await;
    assert_eq!(code, 200);
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 50);
    let last = recs.last().unwrap()["seq"].as_u64().unwrap();
    assert!(last >= RECORDS, "newest record {last}");
    let pid = d.pid();
    let rss_before = status_kb(pid, "VmRSS:");
    let hwm_before = status_kb(pid, "VmHWM:");

    let (p50, p99) = measure(addr, "/v1/audit?limit=50", 50).await;
    let rss_after = status_kb(pid, "VmRSS:");
    let hwm_after = status_kb(pid, "VmHWM:");
    println!(
        "GET /v1/audit?limit=50, {CALLS} calls: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "daemon RSS: {:.1} MiB before, {:.1} MiB after (growth {:+.1} MiB); peak RSS (VmHWM) {:.1} -> {:.1} MiB",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / 1024.0,
        hwm_before as f64 / 1024.0,
        hwm_after as f64 / 1024.0,
    );
    let (p50, p99) = measure(addr, "/v1/audit?actor=alice@oncall&limit=50", 50).await;
    println!(
        "GET /v1/audit?actor=alice@oncall&limit=50 (1 record in 1,000 matches): p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let (p50, p99) = measure(addr, "/v1/audit?limit=1000", 1000).await;
    println!(
        "GET /v1/audit?limit=1000: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let rss_end = status_kb(pid, "VmRSS:");
    let hwm_end = status_kb(pid, "VmHWM:");
    println!(
        "daemon RSS after all queries: {:.1} MiB (growth {:+.1} MiB since before the first), peak {:.1} MiB",
        rss_end as f64 / 1024.0,
        (rss_end as f64 - rss_before as f64) / 1024.0,
        hwm_end as f64 / 1024.0,
    );
    d.terminate(Duration::from_secs(20)).unwrap();
}
