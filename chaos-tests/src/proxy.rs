//! A small L7 routing proxy on loopback that follows a VirtualService in the file store, the way
//! Envoy follows istiod: so a test measures what users feel, not just what failoverd wrote.
//!
//! The proxy polls the VirtualService file's modification time every [`POLL_EVERY`], parses it
//! with serde-saphyr, and applies the named HTTP route's destinations and weights after a
//! configurable push delay (istiod's push, default none). Each incoming request goes to one
//! destination picked by weight; `host` + `subset` map to a stand-in's loopback address through
//! a table the test supplies. An unknown destination answers 503 (Envoy's "no healthy
//! upstream"), an upstream that refuses answers 503, one that does not answer within the
//! upstream timeout answers 504. Every upstream request uses a fresh connection, so a stand-in
//! that closes its listener fails the very next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often the proxy checks the VirtualService file for a change.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// Largest request head or upstream response the proxy handles (stand-in answers are tiny).
const MAX_MESSAGE: usize = 64 * 1024;

/// One weighted destination as the proxy applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `destination.host`.
    pub host: String,
    /// `destination.subset`, if any.
    pub subset: Option<String>,
    /// `weight` (100 when the route has a single destination without one).
    pub weight: u32,
}

/// How to build a [`Proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The VirtualService file (`<store>/<namespace>/<name>.yaml`).
    pub vs_path: PathBuf,
    /// `http[].name` of the route to follow; None: the first route.
    pub route: Option<String>,
    /// `(host, subset)` to upstream address.
    pub upstreams: HashMap<(String, Option<String>), SocketAddr>,
    /// Delay between seeing a change and applying it (istiod's push).
    pub push_delay: Duration,
    /// How long an upstream may take to answer before the proxy answers 504.
    pub upstream_timeout: Duration,
}

impl ProxyConfig {
    /// A config with no push delay and a 1 s upstream timeout.
    pub fn new(vs_path: PathBuf, route: Option<String>) -> Self {
        Self {
            vs_path,
            route,
            upstreams: HashMap::new(),
            push_delay: Duration::ZERO,
            upstream_timeout: Duration::from_secs(1),
        }
    }

    /// Maps `host` (+ `subset`) to a stand-in's address.
    pub fn upstream(mut self, host: &str, subset: Option<&str>, addr: SocketAddr) -> Self {
        self.upstreams
            .insert((host.to_string(), subset.map(str::to_string)), addr);
        self
    }
}

/// The route in force and a history of when each route was applied.
#[derive(Debug, Default)]
struct Table {
    current: Vec<Destination>,
    applied: Vec<(std::time::Instant, Vec<Destination>)>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Reads the VirtualService once (it must parse), then listens on a free loopback port.
    pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Self> {
        let first = read_route(&cfg.vs_path, cfg.route.as_deref())?;
        let table = Arc::new(Mutex::new(Table {
            current: first.clone(),
            applied: vec![(std::time::Instant::now(), first)],
        }));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cfg = Arc::new(cfg);
        let watcher = tokio::spawn(watch(cfg.clone(), table.clone()));
        let t = table.clone();
        let server = tokio::spawn(async move {
            let mut seed = seed();
            while let Ok((conn, _)) = listener.accept().await {
                seed = xorshift(seed);
                tokio::spawn(handle(conn, cfg.clone(), t.clone(), seed));
            }
        });
        Ok(Self {
            addr,
            table,
            tasks: vec![watcher, server],
        })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The destinations in force now.
    pub fn current(&self) -> Vec<Destination> {
        self.table
            .lock()
            .map(|t| t.current.clone())
            .unwrap_or_default()
    }

    /// Every route applied so far, with when (the first is the one read at start).
    pub fn history(&self) -> Vec<(std::time::Instant, Vec<Destination>)> {
        self.table
            .lock()
            .map(|t| t.applied.clone())
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Parses the route's destinations out of a VirtualService file.
pub fn read_route(path: &std::path::Path, route: Option<&str>) -> anyhow::Result<Vec<Destination>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let vs: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let routes = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: no spec.http", path.display()))?;
    let r = match route {
        Some(name) => routes
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name)),
        None => routes.first(),
    }
    .with_context(|| format!("{}: no http route {route:?}", path.display()))?;
    let dests = r
        .get("route")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: http route without `route`", path.display()))?;
    let single = dests.len() == 1;
    dests
        .iter()
        .map(|d| {
            let host = d
                .pointer("/destination/host")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: destination without host", path.display()))?;
            let subset = d
                .pointer("/destination/subset")
                .and_then(Value::as_str)
                .map(str::to_string);
            let weight = match d.get("weight").and_then(Value::as_u64) {
                Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
                None if single => 100,
                None => 0,
            };
            Ok(Destination {
                host: host.to_string(),
                subset,
                weight,
            })
        })
        .collect()
}

/// Polls the file; a change is applied `push_delay` later. A file that does not parse (a
/// half-written one cannot exist: the store renames) keeps the route in force.
async fn watch(cfg: Arc<ProxyConfig>, table: Arc<Mutex<Table>>) {
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&cfg.vs_path);
    let mut seen_route = table.lock().map(|t| t.current.clone()).unwrap_or_default();
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let now = mtime(&cfg.vs_path);
        if now == seen {
            continue;
        }
        seen = now;
        let Ok(route) = read_route(&cfg.vs_path, cfg.route.as_deref()) else {
            continue;
        };
        if route == seen_route {
            continue;
        }
        seen_route = route.clone();
        let table = table.clone();
        let delay = cfg.push_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut t) = table.lock() {
                t.current = route.clone();
                t.applied.push((std::time::Instant::now(), route));
            }
        });
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    nanos | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Picks a destination by weight with `roll` (any u64).
pub fn pick(dests: &[Destination], roll: u64) -> Option<&Destination> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut r = roll % total;
    for d in dests {
        let w = u64::from(d.weight);
        if r < w {
            return Some(d);
        }
        r -= w;
    }
    None
}

async fn handle(mut conn: TcpStream, cfg: Arc<ProxyConfig>, table: Arc<Mutex<Table>>, roll: u64) {
    let Some(head) = read_head(&mut conn).await else {
        return;
    };
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let dests = table.lock().map(|t| t.current.clone()).unwrap_or_default();
    let answer = match pick(&dests, roll) {
        None => plain(503, "no healthy upstream (empty route)"),
        Some(d) => match cfg.upstreams.get(&(d.host.clone(), d.subset.clone())) {
            None => plain(
                503,
                &format!("no healthy upstream ({} {:?})", d.host, d.subset),
            ),
            Some(up) => forward(*up, &path, cfg.upstream_timeout).await,
        },
    };
    let _ = conn.write_all(&answer).await;
    let _ = conn.shutdown().await;
}

/// Reads a request head (bounded in size and time).
async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            if buf.len() > MAX_MESSAGE {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

async fn forward(up: SocketAddr, path: &str, timeout: Duration) -> Vec<u8> {
    let exchange = async {
        let mut s = match TcpStream::connect(up).await {
            Ok(s) => s,
            // Envoy answers a refused connection with 503 (upstream connect error).
            Err(e) => return plain(503, &format!("upstream connect error: {e}")),
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {up}\r\nConnection: close\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()).await {
            return plain(503, &format!("upstream reset: {e}"));
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_MESSAGE {
                        break;
                    }
                }
                Err(e) => return plain(503, &format!("upstream reset: {e}")),
            }
        }
        if buf.is_empty() {
            plain(503, "upstream closed without answering")
        } else {
            buf
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => plain(504, "upstream request timeout"),
    }
}

fn plain(code: u16, body: &str) -> Vec<u8> {
    let reason = match code {
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(host: &str, weight: u32) -> Destination {
        Destination {
            host: host.into(),
            subset: None,
            weight,
        }
    }

    #[test]
    fn pick_follows_weights() {
        let dests = [d("a", 10), d("b", 90)];
        let mut counts = [0u32; 2];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..10_000 {
            x = xorshift(x);
            let p = pick(&dests, x).unwrap();
            counts[usize::from(p.host == "b")] += 1;
        }
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert_eq!(pick(&[d("a", 0)], 7), None, "no weight: no destination");
        assert_eq!(pick(&[], 7), None);
    }

    #[test]
    fn reads_the_named_route_of_the_demo_virtual_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, crate::DEMO_VIRTUAL_SERVICE).unwrap();
        let primary = read_route(&path, Some("primary")).unwrap();
        assert_eq!(
            primary,
            vec![Destination {
                host: "web.demo.svc.cluster.local".into(),
                subset: Some("v1".into()),
                weight: 100
            }]
        );
        let first = read_route(&path, None).unwrap();
        assert_eq!(first[0].subset.as_deref(), Some("v2"), "the canary route");
        let err = read_route(&path, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("no http route"), "{err}");
    }
}
