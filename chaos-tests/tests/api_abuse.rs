#![allow(clippy::unwrap_used)]
//! The API under abuse, against the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`): a flood of refused calls must not grow the audit log without
//! bound, block an operator or stop probing; idle and slowloris clients under a 1,024
//! open-file limit must not stop a failover or `/healthz`. Every load loop is bounded in
//! count and time, and talks only to 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, Scenario, assert_audit_verifies, failoverd_bin, free_addr, http_get};
use failoverd::auth::hash_token;
use failoverd::engine::Routing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEC: Duration = Duration::from_secs(1);
/// Budget for a failover: 3 probes at 1 s plus the write, with room for a loaded machine
/// (the same budget as the other end-to-end tests).
const FAILOVER_WITHIN: Duration = Duration::from_secs(8);
const OPERATOR: (&str, &str) = ("alice@oncall", "operator-token-alice");
const VIEWER: (&str, &str) = ("bob@readonly", "viewer-token-bob");

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

/// Writes the token file (an operator and a viewer) beside the scenario; returns its path.
fn tokens(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.yaml");
    let text: String = [(OPERATOR, "operator"), (VIEWER, "viewer")]
        .iter()
        .map(|((id, tok), role)| {
            format!(
                "- {{ identity: \"{id}\", role: {role}, sha256: \"{}\" }}\n",
                hash_token(tok)
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// One HTTP/1.1 call over a fresh connection (`Connection: close`), bounded to `timeout`:
/// the status code.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path}: no answer within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {text:?}"))
}

/// Sum of every sample of a metric family in the daemon's `/metrics`.
async fn metric_sum(addr: SocketAddr, family: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics", 5 * SEC).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A flood of 10,000 refused calls (bad tokens, no token, a viewer on mutating calls, 60 KB
/// names in the path; 32 at a time, at most 120 s): every one is refused with a JSON error
/// status, the audit log grows by at most the viewer's audit budget, an operator's call made
/// during the flood succeeds, probes keep running, and a failover due right after the flood
/// happens within its budget; the chain verifies and the daemon is still up.
#[tokio::test(flavor = "multi_thread")]
async fn flood_of_refused_calls_is_bounded() {
    let mut s = Scenario::new(&[]).await.unwrap();
    let tokens = tokens(s.dir.path());
    let mut d =
        Daemon::spawn_with(&s.paths, "flood", &["--tokens", tokens.to_str().unwrap()]).unwrap();
    d.wait_ready(10 * SEC).await.unwrap();
    let addr = d.addr;
    let records_before = s.audit().len();
    let probes_before = metric_sum(addr, "failoverd_probe_results_total").await;
    let long = "x".repeat(60 * 1024);
    let reason = r#"{"reason":"flood"}"#;

    const CALLS: usize = 10_000;
    const CONCURRENCY: usize = 32;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, long) = (next.clone(), long.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS || start.elapsed() > 120 * SEC {
                    break;
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
                        Some(VIEWER.1),
                    ),
                    2 => (
                        "POST",
                        format!("/v1/playbooks/{long}/failover"),
                        Some(VIEWER.1),
                    ),
                    _ => ("DELETE", "/v1/overrides/ov-1".to_string(), None),
                };
                let r = call(addr, method, &path, token, reason, 10 * SEC).await;
                statuses.push((i % 4, r.map_err(|e| e.to_string())));
            }
            statuses
        }));
    }
    // An operator's calls in the middle of the flood.
    tokio::time::sleep(SEC).await;
    let freeze = call(
        addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(OPERATOR.1),
        r#"{"reason":"INC-7 freeze during flood","ttl":"5m"}"#,
        30 * SEC,
    )
    .await
    .unwrap();
    let resume = call(
        addr,
        "POST",
        "/v1/playbooks/demo/resume",
        Some(OPERATOR.1),
        r#"{"reason":"INC-7 resume during flood"}"#,
        30 * SEC,
    )
    .await
    .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    let mut made = 0;
    for w in workers {
        for (kind, r) in w.await.unwrap() {
            made += 1;
            match r {
                Ok(code) => *counts.entry((kind, code)).or_insert(0) += 1,
                Err(e) => panic!("flood call of kind {kind} failed: {e}\n{}", d.logs()),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{made} calls in {secs:.1} s: {counts:?}");
    assert_eq!(made, CALLS, "the flood did not finish within 120 s");
    assert_eq!(
        (freeze, resume),
        (200, 200),
        "operator calls during the flood"
    );
    for ((kind, code), n) in &counts {
        let allowed: &[u16] = match kind {
            0 | 2 => &[404],
            1 => &[403, 429],
            _ => &[401, 429],
        };
        assert!(
            allowed.contains(code),
            "kind {kind} answered {code} ({n} times)"
        );
    }
    assert!(
        counts.contains_key(&(1, 429)),
        "the viewer was never rate-limited"
    );
    assert!(
        counts.contains_key(&(3, 429)),
        "failed authentications never limited"
    );

    // Bounded records: the viewer's refusals within its audit budget; the operator's two
    // calls; nothing for 401, 404 or 429.
    let records = s.audit();
    let new = &records[records_before..];
    let by_viewer = new.iter().filter(|r| r.actor == VIEWER.0).count() as f64;
    let budget = f64::from(failoverd::api::AUDIT_REFUSAL_BURST)
        + f64::from(failoverd::api::AUDIT_REFUSALS_PER_MINUTE) * (secs / 60.0 + 1.0);
    assert!(
        by_viewer <= budget,
        "{by_viewer} records by the viewer, budget {budget:.0}"
    );
    let others: Vec<_> = new.iter().filter(|r| r.actor != VIEWER.0).collect();
    assert!(
        others.iter().all(|r| r.actor == OPERATOR.0),
        "unexpected records: {others:#?}"
    );
    assert!(others.len() <= 4, "{others:#?}");

    // Refusals are logged in aggregate (one line per identity or address per 10 s), not
    // one line per call.
    let refusal_lines = d
        .log_lines()
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("API call"))
        })
        .count();
    assert!(
        (1..=20).contains(&refusal_lines),
        "{refusal_lines} refusal log lines for {CALLS} refused calls"
    );

    // Probes kept running through the flood (2 probes at 1 s: about 2 results a second).
    let probes = metric_sum(addr, "failoverd_probe_results_total").await - probes_before;
    assert!(
        probes >= secs,
        "{probes} probe results in {secs:.1} s of flood"
    );

    // A failover due right after the flood happens within its budget.
    s.primary.stop();
    let (_, took) = s
        .wait_routing(failed_over, FAILOVER_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    eprintln!("failover written {took:?} after the fault");
    assert!(d.is_running());
    assert_eq!(http_get(addr, "/healthz", 5 * SEC).await.unwrap().0, 200);
    assert_audit_verifies(&s.paths.audit);
}

/// `failoverd run` started through `sh -c 'ulimit -n 1024; exec ...'` (soft and hard limit
/// 1,024, so the daemon cannot raise it); killed when dropped.
struct Limited {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Limited {
    fn spawn(s: &Scenario, tokens: &Path) -> Self {
        let addr = free_addr().unwrap();
        let stderr = s.dir.path().join("limited.stderr");
        let child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 1024 || exit 97; exec \"$0\" \"$@\"")
            .arg(failoverd_bin())
            .arg("run")
            .arg("--playbooks")
            .arg(&s.paths.playbooks)
            .arg("--store")
            .arg(format!("file:{}", s.paths.store.display()))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--audit")
            .arg(&s.paths.audit)
            .arg("--tokens")
            .arg(tokens)
            .args(["--log-format", "json"])
            .env_remove("FAILOVERD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            addr,
            stderr,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Holds a connection that sends nothing; reconnects 2 s after the server closes it, until
/// `stop`.
async fn idle_client(addr: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let mut b = [0u8; 256];
            loop {
                tokio::select! {
                    r = s.read(&mut b) => if matches!(r, Ok(0) | Err(_)) { break },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(Ordering::Relaxed) { return; }
                    }
                }
            }
        }
        tokio::time::sleep(2 * SEC).await;
    }
}

/// Sends a request line, then one header byte every 2 s (slowloris); reconnects 2 s after
/// the server closes it, until `stop`. Returns how many times the server closed it.
async fn slowloris_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> u32 {
    let mut dropped = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(addr).await
            && s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                .await
                .is_ok()
        {
            loop {
                tokio::time::sleep(2 * SEC).await;
                if stop.load(Ordering::Relaxed) {
                    return dropped;
                }
                if s.write_all(b"a").await.is_err() {
                    dropped += 1;
                    break;
                }
                // A closed connection shows on read: EOF or an error.
                let mut b = [0u8; 256];
                if tokio::time::timeout(Duration::from_millis(1), s.read(&mut b))
                    .await
                    .is_ok()
                {
                    dropped += 1;
                    break;
                }
            }
        }
        tokio::time::sleep(2 * SEC).await;
    }
    dropped
}

/// Under `ulimit -n 1024` (soft and hard), 1,500 idle connections and 200 slowloris clients
/// held open against the API: a failover due meanwhile happens within its budget, `/healthz`
/// answers throughout, and slowloris clients are dropped by the server. Bounded: the attack
/// lasts at most 40 s.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slowloris_clients_cannot_starve_probes() {
    // The attack needs ~1,800 descriptors on the test's side.
    let _ = rlimit::increase_nofile_limit(8192);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        soft >= 2048,
        "the test process needs 2,048 descriptors, has {soft}"
    );
    let mut s = Scenario::new(&[]).await.unwrap();
    let tokens = tokens(s.dir.path());
    let d = Limited::spawn(&s, &tokens);
    let addr = d.addr;
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz", 2 * SEC).await {
            break;
        }
        assert!(
            started.elapsed() < 20 * SEC,
            "not ready within 20 s\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The limit is really in force on the daemon.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["1024", "1024"], "{line}");

    let stop = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(tokio::spawn(idle_client(addr, stop.clone())));
    }
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(tokio::spawn(slowloris_client(addr, stop.clone())));
    }
    // Let the attack build up, then check health while it holds.
    tokio::time::sleep(3 * SEC).await;
    for _ in 0..3 {
        let t = Instant::now();
        let (code, _) = http_get(addr, "/healthz", 5 * SEC)
            .await
            .unwrap_or_else(|e| panic!("/healthz under attack: {e:#}\n{}", d.logs()));
        assert_eq!(code, 200);
        eprintln!("/healthz under attack answered in {:?}", t.elapsed());
        tokio::time::sleep(SEC).await;
    }
    // A failover due during the attack.
    s.primary.stop();
    let (_, took) = s
        .wait_routing(failed_over, FAILOVER_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    eprintln!("failover written {took:?} after the fault, under attack");
    // Slowloris clients are dropped by the header-read timeout (10 s) or evicted.
    tokio::time::sleep(12 * SEC).await;
    assert_eq!(
        http_get(addr, "/healthz", 5 * SEC).await.unwrap().0,
        200,
        "{}",
        d.logs()
    );
    stop.store(true, Ordering::Relaxed);
    let mut dropped = 0;
    for t in slow {
        dropped += tokio::time::timeout(10 * SEC, t).await.unwrap().unwrap();
    }
    for t in idle {
        tokio::time::timeout(10 * SEC, t).await.unwrap().unwrap();
    }
    assert!(
        dropped >= 200,
        "slowloris connections dropped by the server: {dropped} (each was held for 12 s or more)"
    );
    assert!(
        !d.logs().contains("Too many open files"),
        "the daemon ran out of descriptors:\n{}",
        d.logs()
    );
    assert!(started.elapsed() < 90 * SEC);
}
