//! User traffic for the fault-drill tests and bench: requests without any drill header
//! through the routing proxy (`chaos_tests::proxy`), which applies Istio's fault semantics.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request through the routing proxy without any header: the status.
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

/// A bounded user load through the routing proxy (at most `max` requests, 20 ms apart, until
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
