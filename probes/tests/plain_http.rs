//! The plain `http://` path (probes/src/plain.rs) against real loopback servers written
//! here: for each server, the verdict and reason it gives are those the general client
//! (reqwest/hyper, `probe_once_via_client`) gives for the same server, and both are the
//! verdict the server's answer calls for.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use failover_probes::{
    HttpProbe, Outcome, ProbeKind, ProbeSpec, Vantage, http_client, probe_once,
    probe_once_via_client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What the scripted server does after writing its answer.
#[derive(Clone, Copy)]
enum After {
    /// Close the connection (a clean FIN).
    Close,
    /// Keep the connection open, sending nothing more, until the client goes away.
    Hold,
}

/// Request heads the server received, in order.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// A loopback server that reads each request head (so closing never resets the
/// connection over unread bytes), writes `answer` and then closes or holds.
async fn scripted(answer: Vec<u8>, after: After) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock().unwrap().push(head);
                if sock.write_all(&answer).await.is_err() {
                    return;
                }
                if let After::Hold = after {
                    // Until the client closes (read returns 0) or 10 s at most.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await;
                }
            });
        }
    });
    (addr, seen)
}

fn spec(probe: HttpProbe, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        id: 1,
        kind: ProbeKind::Http(probe),
        interval: Duration::from_secs(10),
        timeout,
        vantage: Vantage::local(),
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    http_client().unwrap()
}

/// (plain path, general client) for the same probe.
async fn both(probe: HttpProbe, timeout: Duration) -> (Outcome, Outcome) {
    let client = client();
    let spec = spec(probe, timeout);
    let plain = probe_once(&client, &spec).await.outcome;
    let general = probe_once_via_client(&client, &spec).await.outcome;
    (plain, general)
}

/// Asserts both paths give `want` (the reason's exact text included).
async fn assert_both(probe: HttpProbe, timeout: Duration, want: Outcome) {
    let (plain, general) = both(probe, timeout).await;
    assert_eq!(general, want, "the general client");
    assert_eq!(plain, want, "the plain path");
}

fn probe(addr: SocketAddr, path: &str) -> HttpProbe {
    HttpProbe::new(format!("http://{addr}{path}"), vec![200])
}

const T: Duration = Duration::from_secs(3);

/// Ensures a Content-Length body is read and judged.
#[tokio::test]
async fn content_length_body_is_read_and_judged() {
    let (addr, _) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nstatus=up".to_vec(),
        After::Hold,
    )
    .await;
    let mut p = probe(addr, "/healthz");
    p.body_contains = Some("=up".to_owned());
    assert_both(p.clone(), T, Outcome::Healthy).await;
    p.body_contains = Some("down".to_owned());
    assert_both(
        p,
        T,
        Outcome::Unhealthy("body does not contain \"down\"".to_owned()),
    )
    .await;
}

/// Ensures a chunked body (with a chunk extension and a trailer) is decoded before it
/// is matched: the text only appears across chunks.
#[tokio::test]
async fn chunked_body_is_decoded() {
    let (addr, _) = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nall \r\n6;name=v\r\nsystem\r\n4\r\ns go\r\n0\r\nx-trailer: 1\r\n\r\n"
            .to_vec(),
        After::Hold,
    )
    .await;
    let mut p = probe(addr, "/");
    p.body_matches = Some("^all systems go$".to_owned());
    assert_both(p.clone(), T, Outcome::Healthy).await;
    p.body_matches = Some("4\\r\\n".to_owned());
    assert_both(
        p,
        T,
        Outcome::Unhealthy("body does not match /4\\r\\n/".to_owned()),
    )
    .await;
}

/// Ensures a body that ends with the connection (no length, no chunks) is read to the
/// end.
#[tokio::test]
async fn close_delimited_body_is_read_to_the_end() {
    let (addr, _) = scripted(b"HTTP/1.1 200 OK\r\n\r\nready".to_vec(), After::Close).await;
    let mut p = probe(addr, "/");
    p.body_contains = Some("ready".to_owned());
    assert_both(p, T, Outcome::Healthy).await;
}

/// Ensures reading stops at 64 KiB: text past the limit is not seen, text before it
/// is, and a server that then stalls with most of its declared body unsent is judged
/// on what was read instead of timing out.
#[tokio::test]
async fn body_past_the_limit_is_not_read() {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nEARLY".to_vec();
    answer.resize(answer.len() + 70 * 1024, b'.');
    answer.extend_from_slice(b"LATE");
    let (addr, _) = scripted(answer, After::Hold).await;
    let mut p = probe(addr, "/");
    p.body_contains = Some("EARLY".to_owned());
    assert_both(p.clone(), T, Outcome::Healthy).await;
    p.body_contains = Some("LATE".to_owned());
    assert_both(
        p,
        T,
        Outcome::Unhealthy("body does not contain \"LATE\"".to_owned()),
    )
    .await;
}

/// Ensures a server that closes in the middle of the head is unhealthy, with hyper's
/// reason.
#[tokio::test]
async fn close_mid_head_is_unhealthy() {
    let (addr, _) = scripted(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(), After::Close).await;
    assert_both(
        probe(addr, "/"),
        T,
        Outcome::Unhealthy("request: connection closed before message completed".to_owned()),
    )
    .await;
}

/// Ensures a body cut short of its Content-Length is unhealthy.
#[tokio::test]
async fn body_cut_short_is_unhealthy() {
    let (addr, _) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
        After::Close,
    )
    .await;
    assert_both(
        probe(addr, "/"),
        T,
        Outcome::Unhealthy("request: end of file before message length reached".to_owned()),
    )
    .await;
}

/// Ensures a server that accepts and never answers is caught by the probe's timeout,
/// and that the attempt ends close to it (not at some client-wide backstop).
#[tokio::test]
async fn server_that_never_answers_times_out() {
    let (addr, _) = scripted(Vec::new(), After::Hold).await;
    let client = client();
    let spec = spec(probe(addr, "/"), Duration::from_millis(300));
    let started = Instant::now();
    let plain = probe_once(&client, &spec).await.outcome;
    let took = started.elapsed();
    let general = probe_once_via_client(&client, &spec).await.outcome;
    let want = Outcome::Unhealthy("timeout after 300ms".to_owned());
    assert_eq!(general, want);
    assert_eq!(plain, want);
    assert!(took < Duration::from_secs(2), "plain attempt took {took:?}");
}

/// Ensures a 3xx is the probed server's answer: not followed, healthy only if listed.
#[tokio::test]
async fn redirect_is_an_answer_not_followed() {
    let (addr, seen) = scripted(
        b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    assert_both(
        probe(addr, "/"),
        T,
        Outcome::Unhealthy("status 302 not in [200]".to_owned()),
    )
    .await;
    let mut listed = probe(addr, "/");
    listed.expect_status = vec![200, 302];
    assert_both(listed, T, Outcome::Healthy).await;
    // Four attempts, four requests: none went to /elsewhere.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|h| h.starts_with(b"GET / HTTP/1.1\r\n")));
}

/// Ensures an answer that is not HTTP is unhealthy, with hyper's reason.
#[tokio::test]
async fn non_http_answer_is_unhealthy() {
    let (addr, _) = scripted(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), After::Close).await;
    assert_both(
        probe(addr, "/"),
        T,
        Outcome::Unhealthy("request: invalid HTTP version parsed".to_owned()),
    )
    .await;
}

/// Ensures a refused connection is unhealthy with the same reason.
#[tokio::test]
async fn refused_connection_is_unhealthy() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_both(
        HttpProbe::new(format!("http://127.0.0.1:{port}/"), vec![200]),
        T,
        Outcome::Unhealthy("connect: connection refused".to_owned()),
    )
    .await;
}

/// Ensures a 100 Continue before the real answer is skipped, and that 204 and HEAD
/// answers have no body to wait for (the server holds the connection open).
#[tokio::test]
async fn informational_and_bodiless_answers() {
    let (addr, _) = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    let mut p = probe(addr, "/");
    p.expect_status = vec![204];
    assert_both(p, T, Outcome::Healthy).await;
    let (addr, seen) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    let mut head = probe(addr, "/");
    head.method = "HEAD".to_owned();
    assert_both(head, T, Outcome::Healthy).await;
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|h| h.starts_with(b"HEAD / HTTP/1.1\r\n"))
    );
}

/// Ensures the request bytes are exactly the general client's: method, path and query,
/// the default headers, repeated and mixed-case extra headers (such as a drill's
/// `x-failoverd-drill` marker) in order, and `Host` with its port.
#[tokio::test]
async fn request_bytes_are_the_clients() {
    let (addr, seen) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    let mut p = probe(addr, "/health/ready?deep=1&x=%20y");
    p.method = "POST".to_owned();
    p.headers = vec![
        ("X-Failoverd-Drill".to_owned(), "run-42".to_owned()),
        ("x-tenant".to_owned(), "a".to_owned()),
        ("X-Tenant".to_owned(), "b".to_owned()),
        ("Accept".to_owned(), "application/health+json".to_owned()),
    ];
    assert_both(p, T, Outcome::Healthy).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let (plain, general) = (
        String::from_utf8_lossy(&seen[0]),
        String::from_utf8_lossy(&seen[1]),
    );
    assert_eq!(plain, general);
    // And what they are, independently of either implementation.
    assert!(
        plain.starts_with("POST /health/ready?deep=1&x=%20y HTTP/1.1\r\n"),
        "{plain}"
    );
    for line in [
        "accept: application/health+json\r\n",
        "x-failoverd-drill: run-42\r\n",
        "x-tenant: a\r\nx-tenant: b\r\n",
        &format!("host: {addr}\r\n"),
    ] {
        assert!(plain.contains(line), "{line:?} not in {plain}");
    }
    assert!(
        !plain.contains("*/*"),
        "the probe's accept replaces the default: {plain}"
    );
}

/// Ensures a probe's own `Host` replaces the URL's, sent once. (Port 80 left out of the
/// URL's `Host` is checked in `plain.rs`'s unit tests: nothing listens on port 80 here.)
#[tokio::test]
async fn host_header_set_by_the_probe() {
    let (addr, seen) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    let mut p = probe(addr, "/");
    p.headers = vec![("Host".to_owned(), "case-api.child-welfare:8443".to_owned())];
    assert_both(p, T, Outcome::Healthy).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], seen[1]);
    let text = String::from_utf8_lossy(&seen[0]);
    assert!(
        text.contains("host: case-api.child-welfare:8443\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("host:").count(), 1, "{text}");
}

/// Ensures malformed framing is unhealthy on both paths: conflicting Content-Length
/// values, a bad chunk size, and Transfer-Encoding on HTTP/1.0.
#[tokio::test]
async fn malformed_framing_is_unhealthy() {
    for (answer, want) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"[..],
            "request: invalid content-length parsed",
        ),
        (
            &b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            "request: unexpected transfer-encoding parsed",
        ),
    ] {
        let (addr, _) = scripted(answer.to_vec(), After::Close).await;
        assert_both(probe(addr, "/"), T, Outcome::Unhealthy(want.to_owned())).await;
    }
    // A chunk size that is not hex: unhealthy and a request error on both paths (the
    // wording of a chunk error is the decoder's own).
    let (addr, _) = scripted(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
        After::Close,
    )
    .await;
    let (plain, general) = both(probe(addr, "/"), T).await;
    for outcome in [&plain, &general] {
        assert!(
            matches!(outcome, Outcome::Unhealthy(r) if r.starts_with("request: ")),
            "plain {plain:?}, client {general:?}"
        );
    }
}

/// Ensures a host name is resolved (the system resolver; `localhost` comes from the
/// hosts file, so nothing leaves the machine) and sent as `Host` with its port.
#[tokio::test]
async fn host_name_is_resolved() {
    let (addr, seen) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        After::Hold,
    )
    .await;
    let url = format!("http://localhost:{}/", addr.port());
    assert_both(HttpProbe::new(url, vec![200]), T, Outcome::Healthy).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], seen[1]);
    let host = format!("\r\nhost: localhost:{}\r\n", addr.port());
    assert!(String::from_utf8_lossy(&seen[0]).contains(&host));
}

/// Ensures run-time headers (a fault drill's `x-failoverd-drill`, set while the probe runs)
/// reach the server on the plain path too, replacing a probe header of the same name as the
/// client path does, and stop once cleared: a drill whose header never left would never
/// reach its fault route, and one whose header stayed would keep harming the probe.
#[tokio::test]
async fn run_time_headers_are_sent_on_the_plain_path_until_cleared() {
    let (addr, seen) = scripted(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        After::Close,
    )
    .await;
    let mut p = probe(addr, "/healthz");
    p.headers
        .push(("x-failoverd-drill".to_owned(), "stale".to_owned()));
    let mut s = spec(p, T);
    s.interval = Duration::from_millis(100);
    let extra = failover_probes::RuntimeHeaders::default();
    extra.set(
        1,
        vec![("x-failoverd-drill".to_owned(), "run-7".to_owned())],
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let _set =
        failover_probes::spawn_probes_with_headers(vec![s], client(), tx, stop, extra.clone());
    let first = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(
        matches!(first.outcome, Outcome::Healthy),
        "{:?}",
        first.outcome
    );
    let head = |i: usize| String::from_utf8_lossy(&seen.lock().unwrap()[i]).to_lowercase();
    let h = head(0);
    assert!(h.contains("x-failoverd-drill: run-7\r\n"), "{h}");
    assert!(
        !h.contains("stale"),
        "the run-time value replaces the probe's: {h}"
    );
    extra.clear(1);
    // The attempt after the clear sends the probe's own header again.
    let before = seen.lock().unwrap().len();
    let deadline = Instant::now() + T;
    loop {
        let _ = tokio::time::timeout(T, rx.recv()).await;
        let n = seen.lock().unwrap().len();
        if n > before + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no attempt after the clear");
    }
    let n = seen.lock().unwrap().len();
    let last = head(n - 1);
    assert!(last.contains("x-failoverd-drill: stale\r\n"), "{last}");
    assert!(!last.contains("run-7"), "{last}");
}
