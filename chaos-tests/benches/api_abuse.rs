//! An operator's call during a flood of refused calls, against the real binary: p50/p99 of
//! `POST /v1/playbooks/demo/freeze|resume` (alternating; each persisted and audited before
//! the answer) with no flood, with a flood paced at 1,000 calls/s (the 10,000-call flood of
//! `tests/api_abuse.rs` in 10 s), and with an unpaced flood (as fast as 32 connections
//! go, client and daemon sharing the machine's cores) of bad-token, no-token and
//! viewer-on-mutation calls, half of them with a 60 KB playbook name. Goal (issue 13):
//! p99 ≤ 50 ms during the flood.
//!
//! `cargo build --release -p failoverd && cargo bench -p chaos-tests --bench api_abuse`.
//! Bounded: 100 operator calls per phase at 4 a second (under the 5/s per-identity limit);
//! the flood stops with them, at most 60 s.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, Scenario, percentile};
use failoverd::auth::hash_token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR: &str = "bench-operator-token";
const VIEWER: &str = "bench-viewer-token";
const CALLS: usize = 100;
const FLOODERS: usize = 32;

async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf[..buf.len().min(32)])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// 100 alternating freeze/resume calls at 4/s; p50 and p99.
async fn operator_calls(addr: SocketAddr) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(CALLS);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for i in 0..CALLS {
        tick.tick().await;
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/playbooks/demo/freeze",
                r#"{"reason":"bench freeze","ttl":"5m"}"#,
            )
        } else {
            ("/v1/playbooks/demo/resume", r#"{"reason":"bench resume"}"#)
        };
        let t = Instant::now();
        let code = call(addr, "POST", path, Some(OPERATOR), body).await;
        samples.push(t.elapsed());
        assert_eq!(code, 200, "operator call {i} ({path})");
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
    let tokens = s.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: op, role: operator, sha256: \"{}\" }}\n- {{ identity: viewer, role: viewer, sha256: \"{}\" }}\n",
            hash_token(OPERATOR),
            hash_token(VIEWER)
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_with(
        &s.paths,
        "api-abuse",
        &["--tokens", tokens.to_str().unwrap()],
    )
    .unwrap();
    d.wait_ready(Duration::from_secs(30)).await.unwrap();
    let addr = d.addr;

    let (p50, p99) = operator_calls(addr).await;
    println!(
        "operator call, no flood ({CALLS} calls): p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    for rate in [Some(1000u32), None] {
        flood_phase(&s, addr, rate).await;
    }
    d.terminate(Duration::from_secs(20)).unwrap();
}

/// Operator calls during a flood at `rate` calls/s (None: unpaced).
async fn flood_phase(s: &Scenario, addr: SocketAddr, rate: Option<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let long = Arc::new("x".repeat(60 * 1024));
    let start = Instant::now();
    let mut flooders = Vec::new();
    for w in 0..FLOODERS {
        let (stop, sent, long) = (stop.clone(), sent.clone(), long.clone());
        flooders.push(tokio::spawn(async move {
            let mut i = w;
            let mut pace = rate.map(|r| {
                let mut t =
                    tokio::time::interval(Duration::from_secs_f64(FLOODERS as f64 / f64::from(r)));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                let (method, path, token) = match i % 4 {
                    0 => (
                        "POST",
                        format!("/v1/playbooks/{long}/freeze"),
                        Some("not-a-token"),
                    ),
                    1 => (
                        "POST",
                        "/v1/playbooks/demo/failover".to_string(),
                        Some(VIEWER),
                    ),
                    2 => (
                        "POST",
                        format!("/v1/playbooks/{long}/failover"),
                        Some(VIEWER),
                    ),
                    _ => ("DELETE", "/v1/overrides/ov-1".to_string(), None),
                };
                call(addr, method, &path, token, r#"{"reason":"flood"}"#).await;
                sent.fetch_add(1, Ordering::Relaxed);
                i += FLOODERS;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit_before = std::fs::metadata(&s.paths.audit).map_or(0, |m| m.len());
    let (p50, p99) = operator_calls(addr).await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let audit_after = std::fs::metadata(&s.paths.audit).map_or(0, |m| m.len());
    println!(
        "operator call during a {} flood of {} refused calls in {secs:.1} s ({:.0}/s, {FLOODERS} at a time): p50 {:.2} ms, p99 {:.2} ms",
        rate.map_or("unpaced".to_string(), |r| format!("{r}/s")),
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / secs,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "audit log grew {} bytes during the flood (operator calls included)",
        audit_after - audit_before
    );
}
