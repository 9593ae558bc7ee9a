//! A loopback HTTP router that follows a VirtualService file the way Envoy does for what the
//! fault-drill tests and bench use: `http[]` in order, first match wins, header `exact`
//! matches, `fault.abort.httpStatus` at 100 %; one destination per route (the demo's primary
//! `web.demo.svc.cluster.local/v1` or DR `web.demo-dr.svc.cluster.local`). Deliberately
//! minimal: the routing proxy in `chaos_tests::proxy` follows one named route and has no fault
//! semantics on this branch (issue 17 item 4 is another branch's). Anything it does not
//! understand in a route it meets fails the caller (`unsupported`) rather than being guessed.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback HTTP router following the VirtualService file on every request.
pub struct Router {
    pub addr: SocketAddr,
    /// Routes it met that it could not honour (a test fails on any).
    pub unsupported: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Upstreams {
    vs: PathBuf,
    primary: SocketAddr,
    dr: SocketAddr,
}

impl Router {
    pub async fn start(vs: PathBuf, primary: SocketAddr, dr: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let unsupported = Arc::new(Mutex::new(Vec::new()));
        let up = Upstreams { vs, primary, dr };
        let u = unsupported.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (up, u) = (up.clone(), u.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, &up, &u).await;
                });
            }
        });
        Self {
            addr,
            unsupported,
            task,
        }
    }
}

/// Which `http[]` route a request with these headers takes (first match wins), or why the
/// route list cannot be honoured.
fn choose<'a>(
    http: &'a [Value],
    headers: &[(String, String)],
) -> Result<Option<&'a Value>, String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for r in http {
        let Some(ms) = r.get("match").and_then(Value::as_array) else {
            return Ok(Some(r));
        };
        for m in ms {
            let m = m.as_object().ok_or("a match entry is not an object")?;
            if let Some(k) = m.keys().find(|k| *k != "headers") {
                return Err(format!("match field `{k}` is not supported by this router"));
            }
            let hs = m
                .get("headers")
                .and_then(Value::as_object)
                .ok_or("headers is not an object")?;
            let mut all = true;
            for (name, cond) in hs {
                let exact = cond
                    .get("exact")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("header match {cond} is not `exact`"))?;
                all &= header(name) == Some(exact);
            }
            if all {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

async fn serve(
    mut sock: TcpStream,
    up: &Upstreams,
    unsupported: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await??;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let reply = |status: u16| {
        format!("HTTP/1.1 {status} Router\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    };
    let text = std::fs::read_to_string(&up.vs)?;
    let vs: Value = serde_saphyr::from_str(&text)?;
    let http = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    let route = match choose(&http, &headers) {
        Ok(Some(r)) => r.clone(),
        Ok(None) => {
            sock.write_all(reply(404).as_bytes()).await?;
            return Ok(());
        }
        Err(e) => {
            unsupported.lock().unwrap().push(e);
            sock.write_all(reply(500).as_bytes()).await?;
            return Ok(());
        }
    };
    if let Some(f) = route.get("fault") {
        let status = f.pointer("/abort/httpStatus").and_then(Value::as_u64);
        let pct = f
            .pointer("/abort/percentage/value")
            .and_then(Value::as_f64)
            .unwrap_or(100.0);
        match status {
            Some(s) if pct >= 100.0 && f.get("delay").is_none() => {
                sock.write_all(reply(s as u16).as_bytes()).await?;
                return Ok(());
            }
            _ => {
                unsupported
                    .lock()
                    .unwrap()
                    .push(format!("fault {f} is not supported by this router"));
                sock.write_all(reply(500).as_bytes()).await?;
                return Ok(());
            }
        }
    }
    // One destination at 100 % in every route these tests write or failoverd writes there.
    let dests = route["route"].as_array().cloned().unwrap_or_default();
    let dest = dests
        .iter()
        .find(|d| d.get("weight").and_then(Value::as_u64).unwrap_or(100) > 0)
        .cloned()
        .unwrap_or(Value::Null);
    let target = match (
        dest.pointer("/destination/host").and_then(Value::as_str),
        dest.pointer("/destination/subset").and_then(Value::as_str),
    ) {
        (Some("web.demo.svc.cluster.local"), Some("v1")) => up.primary,
        (Some("web.demo-dr.svc.cluster.local"), None) => up.dr,
        _ => {
            sock.write_all(reply(503).as_bytes()).await?;
            return Ok(());
        }
    };
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        sock.write_all(reply(503).as_bytes()).await?;
        return Ok(());
    };
    upstream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(2), upstream.read_to_end(&mut answer)).await {
        Ok(Ok(_)) if !answer.is_empty() => sock.write_all(&answer).await?,
        _ => sock.write_all(reply(504).as_bytes()).await?,
    }
    Ok(())
}

/// One request through the router without any header: the status.
pub async fn user_request(addr: SocketAddr) -> u16 {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /orders HTTP/1.0\r\nHost: web\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(t)) => t
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// What a user load saw: requests sent, and each non-200 answer (seconds since its start,
/// status; 0 when no answer came).
pub type Load = (u64, Vec<(f64, u16)>);

/// A bounded user load through the router (at most `max` requests, 20 ms apart, until
/// stopped): returns (requests, non-200 answers with their time since start).
pub fn user_load(addr: SocketAddr, max: u64) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Load>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let sent = AtomicU64::new(0);
        let mut errors = Vec::new();
        while !s.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < max {
            sent.fetch_add(1, Ordering::Relaxed);
            let code = user_request(addr).await;
            if code != 200 {
                errors.push((start.elapsed().as_secs_f64(), code));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sent.load(Ordering::Relaxed), errors)
    });
    (stop, task)
}
