//! Serving one request: match it against the `http[]` in force, apply the chosen route's
//! fault, then forward it to a destination picked by weight.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::fault::Abort;
use super::matching::Request;
use super::{MAX_MESSAGE, Shared, pick};

pub(super) async fn handle(mut conn: TcpStream, shared: std::sync::Arc<Shared>, roll: u64) {
    let Some(head) = read_head(&mut conn).await else {
        return;
    };
    let req = Request::parse_head(&head);
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let routes = shared
        .table
        .lock()
        .map(|t| t.routes.clone())
        .unwrap_or_default();
    let answer = match routes.select(&req) {
        // Envoy answers a request no route matches with 404 (response flag NR).
        None => {
            shared.stats.unmatched.fetch_add(1, Ordering::Relaxed);
            plain(404, "no route matched")
        }
        Some(route) => {
            let decision = route
                .fault
                .as_ref()
                .map(|f| roll_fault(&shared.rng, f))
                .unwrap_or_default();
            if let Some(d) = decision.delay {
                shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(d).await;
            }
            match decision.abort {
                Some(abort) => {
                    shared.stats.aborted.fetch_add(1, Ordering::Relaxed);
                    abort_answer(&abort)
                }
                None => match pick(&route.destinations, roll) {
                    None => plain(503, "no healthy upstream (empty route)"),
                    Some(d) => match shared
                        .cfg
                        .upstreams
                        .get(&(d.host.clone(), d.subset.clone()))
                    {
                        None => plain(
                            503,
                            &format!("no healthy upstream ({} {:?})", d.host, d.subset),
                        ),
                        Some(up) => forward(*up, &req.path, shared.cfg.upstream_timeout).await,
                    },
                },
            }
        }
    };
    let _ = conn.write_all(&answer).await;
    let _ = conn.shutdown().await;
}

fn roll_fault(rng: &Mutex<StdRng>, f: &super::fault::Fault) -> super::fault::Decision {
    match rng.lock() {
        Ok(mut r) => f.roll(&mut *r),
        // A poisoned lock only means another request panicked mid-roll; the RNG is still usable.
        Err(p) => f.roll(&mut *p.into_inner()),
    }
}

/// Reads a request head (bounded in size and time).
pub(super) async fn read_head(conn: &mut TcpStream) -> Option<String> {
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

pub(super) async fn forward(up: SocketAddr, path: &str, timeout: Duration) -> Vec<u8> {
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

pub(super) fn plain(code: u16, body: &str) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

/// The HTTP/1.1 answer for an abort: the status with a short text body, or a gRPC
/// trailers-only answer (HTTP 200, `content-type: application/grpc`, `grpc-status`).
pub(super) fn abort_answer(abort: &Abort) -> Vec<u8> {
    match abort {
        Abort::Http(code) => plain(*code, "fault filter abort"),
        Abort::Grpc { code, .. } => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: {code}\r\ngrpc-message: fault filter abort\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
    }
}
