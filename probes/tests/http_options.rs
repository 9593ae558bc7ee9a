//! HTTP(S) and TCP probe options against real local servers: HTTP/1.1, h2c, TLS with a
//! CA made in the test, and misbehaving listeners.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Redirect;
use axum::routing::{any, get};
use failover_probes::{
    HttpProbe, Outcome, ProbeError, ProbeKind, ProbeSpec, TcpProbe, Vantage, check_kind,
    check_spec, http_client, probe_once, spawn_probes,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    http_client().unwrap()
}

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "status: ok" }))
        .route("/down", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/moved", get(|| async { Redirect::temporary("/ok") }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/version",
            get(|req: Request| async move { format!("{:?}", req.version()) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        )
        .route(
            "/echo",
            any(|method: Method, headers: HeaderMap| async move {
                let tagged = headers.get("x-probe").is_some_and(|v| v == "yes");
                let host = headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if method == Method::POST && tagged {
                    (StatusCode::OK, format!("host={host}"))
                } else {
                    (StatusCode::BAD_REQUEST, String::new())
                }
            }),
        )
}

/// Serves `app()` over HTTP/1.1 and h2c (or TLS with ALPN h2/http1.1), counting accepted connections.
async fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(app());
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// A CA written to a PEM file, able to issue server certificates.
struct TestCa {
    _dir: tempfile::TempDir,
    file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, cert.pem()).unwrap();
        Self {
            _dir: dir,
            file,
            issuer: Issuer::new(params, key),
        }
    }

    /// A TLS server config for `name`, expired when `expired`.
    fn server(&self, name: &str, expired: bool) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

fn spec(http: HttpProbe, timeout_ms: u64) -> ProbeSpec {
    ProbeSpec {
        id: 1,
        kind: ProbeKind::Http(http),
        interval: Duration::from_secs(10),
        timeout: Duration::from_millis(timeout_ms),
        vantage: Vantage::local(),
    }
}

async fn run(http: HttpProbe) -> Outcome {
    probe_once(&client(), &spec(http, 2000)).await.outcome
}

fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Unhealthy(r) => r,
        other => panic!("expected Unhealthy, got {other:?}"),
    }
}

/// Method and headers are sent as configured; the response time is recorded.
#[tokio::test]
async fn http_method_and_headers() {
    let (addr, _) = serve(None).await;
    let mut http = HttpProbe::new(format!("http://{addr}/echo"), vec![200]);
    assert_eq!(reason(&run(http.clone()).await), "status 400 not in [200]");
    http.method = "POST".to_owned();
    http.headers = vec![("X-Probe".to_owned(), "yes".to_owned())];
    let result = probe_once(&client(), &spec(http, 2000)).await;
    assert_eq!(result.outcome, Outcome::Healthy);
    assert!(result.latency > Duration::ZERO && result.latency < Duration::from_secs(2));
    assert_eq!(result.lateness, Duration::ZERO);
    assert_eq!(result.vantage.as_str(), "local");
}

/// A 5xx is Unhealthy even when the body would match.
#[tokio::test]
async fn http_5xx_is_unhealthy() {
    let (addr, _) = serve(None).await;
    let http = HttpProbe::new(format!("http://{addr}/down"), vec![200, 204]);
    assert_eq!(reason(&run(http).await), "status 500 not in [200, 204]");
}

/// bodyContains and bodyMatches judge the body: a wrong body is Unhealthy with the reason.
#[tokio::test]
async fn http_body_match() {
    let (addr, _) = serve(None).await;
    let mut http = HttpProbe::new(format!("http://{addr}/ok"), vec![200]);
    http.body_contains = Some("status: ok".to_owned());
    http.body_matches = Some(r"^status: (ok|degraded)$".to_owned());
    assert_eq!(run(http.clone()).await, Outcome::Healthy);
    http.body_contains = Some("status: green".to_owned());
    assert_eq!(
        reason(&run(http.clone()).await),
        "body does not contain \"status: green\""
    );
    http.body_contains = None;
    http.body_matches = Some(r"^status: green$".to_owned());
    assert_eq!(
        reason(&run(http).await),
        "body does not match /^status: green$/"
    );
}

/// followRedirects follows to the final answer; a redirect loop is Unhealthy, bounded.
#[tokio::test]
async fn http_follow_redirects() {
    let (addr, _) = serve(None).await;
    let mut http = HttpProbe::new(format!("http://{addr}/moved"), vec![200]);
    assert_eq!(reason(&run(http.clone()).await), "status 307 not in [200]");
    http.follow_redirects = true;
    assert_eq!(run(http).await, Outcome::Healthy);
    let mut looping = HttpProbe::new(format!("http://{addr}/loop"), vec![200]);
    looping.follow_redirects = true;
    assert!(reason(&run(looping).await).starts_with("redirect: "));
}

/// A slow answer is Unhealthy by the total timeout, which returns on time.
#[tokio::test]
async fn http_slow_answer_times_out() {
    let (addr, _) = serve(None).await;
    let begun = Instant::now();
    let http = HttpProbe::new(format!("http://{addr}/slow"), vec![200]);
    let result = probe_once(&client(), &spec(http, 200)).await;
    assert_eq!(reason(&result.outcome), "timeout after 200ms");
    // Well under the server's 2 s: the attempt was cut at its timeout (slack for a busy CI).
    assert!(begun.elapsed() < Duration::from_millis(1500));
}

/// freshConnection opens one connection per attempt; false reuses one pooled connection.
#[tokio::test]
async fn http_fresh_connection_vs_reuse() {
    for (fresh, expected) in [(true, 3), (false, 1)] {
        let (addr, conns) = serve(None).await;
        let mut http = HttpProbe::new(format!("http://{addr}/ok"), vec![200]);
        http.fresh_connection = fresh;
        let s = ProbeSpec {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            ..spec(http, 40)
        };
        let (tx, mut rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let set = spawn_probes(vec![s], client(), tx, stop_rx);
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.outcome, Outcome::Healthy);
        }
        stop_tx.send(true).unwrap();
        set.shutdown().await;
        assert_eq!(conns.load(Ordering::SeqCst), expected, "fresh={fresh}");
    }
}

/// http2 over cleartext uses prior knowledge (h2c); without it the probe speaks HTTP/1.1.
#[tokio::test]
async fn http2_prior_knowledge() {
    let (addr, _) = serve(None).await;
    let mut http = HttpProbe::new(format!("http://{addr}/version"), vec![200]);
    http.body_contains = Some("HTTP/1.1".to_owned());
    assert_eq!(run(http.clone()).await, Outcome::Healthy);
    http.http2 = true;
    http.body_contains = Some("HTTP/2.0".to_owned());
    assert_eq!(run(http).await, Outcome::Healthy);
}

/// HTTPS with the test CA and serverName (SNI) is Healthy over h2 (ALPN) and HTTP/1.1; Host stays the URL's.
#[tokio::test]
async fn https_custom_ca_and_sni() {
    let ca = TestCa::new();
    let (addr, _) = serve(Some(ca.server("backend.test", false))).await;
    let mut http = HttpProbe::new(format!("https://{addr}/version"), vec![200]);
    http.ca_file = Some(ca.file.clone());
    http.server_name = Some("backend.test".to_owned());
    http.body_contains = Some("HTTP/1.1".to_owned());
    assert_eq!(run(http.clone()).await, Outcome::Healthy);
    http.http2 = true;
    http.body_contains = Some("HTTP/2.0".to_owned());
    assert_eq!(run(http.clone()).await, Outcome::Healthy);

    let mut echo = HttpProbe::new(format!("https://{addr}/echo"), vec![200]);
    echo.ca_file = Some(ca.file.clone());
    echo.server_name = Some("backend.test".to_owned());
    echo.method = "POST".to_owned();
    echo.headers = vec![("x-probe".to_owned(), "yes".to_owned())];
    echo.body_contains = Some(format!("host={addr}"));
    assert_eq!(run(echo).await, Outcome::Healthy);
}

/// A certificate for another host, or from a CA not trusted, is Unhealthy.
#[tokio::test]
async fn https_wrong_host_or_untrusted_is_unhealthy() {
    let ca = TestCa::new();
    let (addr, _) = serve(Some(ca.server("backend.test", false))).await;
    let mut http = HttpProbe::new(format!("https://{addr}/ok"), vec![200]);
    http.ca_file = Some(ca.file.clone());
    http.server_name = Some("other.test".to_owned());
    let r = run(http.clone()).await;
    assert!(reason(&r).starts_with("connect: "), "{r:?}");
    // The system roots do not trust the test CA.
    http.ca_file = None;
    http.server_name = Some("backend.test".to_owned());
    let r = run(http).await;
    assert!(reason(&r).starts_with("connect: "), "{r:?}");
}

/// An expired certificate is Unhealthy, unless insecureSkipVerify is set explicitly.
#[tokio::test]
async fn https_expired_certificate() {
    let ca = TestCa::new();
    let (addr, _) = serve(Some(ca.server("backend.test", true))).await;
    let mut http = HttpProbe::new(format!("https://{addr}/ok"), vec![200]);
    http.ca_file = Some(ca.file.clone());
    http.server_name = Some("backend.test".to_owned());
    let r = run(http.clone()).await;
    assert!(reason(&r).contains("xpired"), "{r:?}");
    http.ca_file = None;
    http.insecure_skip_verify = true;
    assert_eq!(run(http).await, Outcome::Healthy);
}

/// A listener that accepts but never completes the TLS handshake trips the connect timeout, not the total one.
#[tokio::test]
async fn https_handshake_hang_hits_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut http = HttpProbe::new(format!("https://{addr}/"), vec![200]);
    http.insecure_skip_verify = true;
    http.connect_timeout = Some(Duration::from_millis(150));
    let begun = Instant::now();
    let r = probe_once(&client(), &spec(http, 1500)).await;
    assert_eq!(reason(&r.outcome), "connect: timeout after 150ms");
    // Under the 1.5 s total timeout: the connect timeout fired first.
    assert!(begun.elapsed() < Duration::from_millis(1400));
}

/// A CA file removed after validation makes attempts Unknown, never a panic.
#[tokio::test]
async fn http_unreadable_ca_at_run_time_is_unknown() {
    let mut http = HttpProbe::new("https://127.0.0.1:1/", vec![200]);
    http.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
    assert!(matches!(run(http).await, Outcome::Unknown(_)));
}

/// A TCP server with a scripted answer: reads one line, replies `answer`.
async fn tcp_server(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

fn tcp_spec(tcp: TcpProbe) -> ProbeSpec {
    ProbeSpec {
        id: 2,
        kind: ProbeKind::Tcp(tcp),
        interval: Duration::from_secs(10),
        timeout: Duration::from_millis(300),
        vantage: Vantage::new("eu-west"),
    }
}

/// TCP send/expect: the expected answer is Healthy, a wrong one Unhealthy, silence a timeout.
#[tokio::test]
async fn tcp_send_expect() {
    let good = tcp_server(b"+PONG\r\n").await;
    let bad = tcp_server(b"-ERR loading\r\n").await;
    let mut probe = TcpProbe::new(good.to_string());
    probe.send = Some(b"PING\r\n".to_vec());
    probe.expect = Some(b"+PONG".to_vec());
    let r = probe_once(&client(), &tcp_spec(probe.clone())).await;
    assert_eq!(r.outcome, Outcome::Healthy);
    assert_eq!(r.vantage.as_str(), "eu-west");
    probe.address = bad.to_string();
    let r = probe_once(&client(), &tcp_spec(probe.clone())).await;
    assert_eq!(
        reason(&r.outcome),
        "expect: 14 bytes received without \"+PONG\""
    );
    // A listener that never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    probe.address = silent.local_addr().unwrap().to_string();
    let r = probe_once(&client(), &tcp_spec(probe)).await;
    assert_eq!(reason(&r.outcome), "timeout after 300ms");
}

/// The scheduler measures each attempt's lateness against its schedule; an idle runtime keeps it small.
#[tokio::test]
async fn scheduler_reports_lateness() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = ProbeSpec {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(10),
        ..tcp_spec(TcpProbe::new(listener.local_addr().unwrap().to_string()))
    };
    let (tx, mut rx) = mpsc::channel(8);
    let (stop_tx, stop_rx) = watch::channel(false);
    let set = spawn_probes(vec![s], client(), tx, stop_rx);
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        // Measured against each tick, so it stays small; 80 ms leaves room for a busy 2-core
        // CI machine, while a measure counted from the spawn would grow with every attempt.
        assert!(r.lateness < Duration::from_millis(80), "{:?}", r.lateness);
        assert_eq!(r.vantage, Vantage::new("eu-west"));
    }
    stop_tx.send(true).unwrap();
    set.shutdown().await;
}

fn http_kind(f: impl FnOnce(&mut HttpProbe)) -> ProbeKind {
    let mut http = HttpProbe::new("https://svc.ns:8443/healthz", vec![200]);
    f(&mut http);
    ProbeKind::Http(http)
}

/// Load-time validation names the bad option: method, header, regex, CA file, server name, TLS on http.
#[test]
fn check_kind_rejects_bad_options() {
    let field_of = |kind: ProbeKind| match check_kind(&kind) {
        Err(ProbeError::InvalidHttpOption { field, .. }) => field,
        other => panic!("{kind:?}: {other:?}"),
    };
    assert_eq!(field_of(http_kind(|h| h.method = "GE T".into())), "method");
    assert_eq!(
        field_of(http_kind(
            |h| h.headers = vec![("bad name".into(), "v".into())]
        )),
        "headers"
    );
    assert_eq!(
        field_of(http_kind(|h| h.headers = vec![("x".into(), "a\nb".into())])),
        "headers"
    );
    assert_eq!(
        field_of(http_kind(|h| h.body_matches = Some("(unclosed".into()))),
        "bodyMatches"
    );
    assert_eq!(
        field_of(http_kind(|h| h.ca_file = Some("/nonexistent/ca.pem".into()))),
        "caFile"
    );
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    assert_eq!(field_of(http_kind(|h| h.ca_file = Some(not_pem))), "caFile");
    assert_eq!(
        field_of(http_kind(|h| h.server_name = Some("10.0.0.1".into()))),
        "serverName"
    );
    assert_eq!(
        field_of(http_kind(|h| h.server_name = Some("bad name".into()))),
        "serverName"
    );
    assert_eq!(
        field_of(http_kind(|h| {
            h.url = "http://svc/".into();
            h.server_name = Some("svc".into());
        })),
        "serverName"
    );
    assert!(
        check_kind(&http_kind(|h| {
            h.url = "gopher://svc/".into();
        }))
        .is_err()
    );
    // Explicit insecureSkipVerify is accepted.
    assert!(check_kind(&http_kind(|h| h.insecure_skip_verify = true)).is_ok());
}

/// check_spec rejects timeout ≥ interval, a zero timeout, and a connect timeout above the total.
#[test]
fn check_spec_rejects_bad_timing() {
    let base = spec(HttpProbe::new("http://svc/", vec![200]), 500);
    assert!(check_spec(&base).is_ok());
    for bad in [
        ProbeSpec {
            timeout: Duration::from_secs(10),
            ..base.clone()
        },
        ProbeSpec {
            timeout: Duration::ZERO,
            ..base.clone()
        },
        ProbeSpec {
            kind: http_kind(|h| h.connect_timeout = Some(Duration::from_secs(1))),
            ..base.clone()
        },
    ] {
        assert!(
            matches!(check_spec(&bad), Err(ProbeError::InvalidTiming(_))),
            "{bad:?}"
        );
    }
}
