//! Probe attempts, validation, windows and scheduling against real local servers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::get;
use failover_probes::{
    HttpProbe, Outcome, ProbeKind, ProbeSpec, ProbeWindow, TcpProbe, Vantage, check_kind,
    http_client, probe_once, spawn_probes,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// reqwest (built with `rustls-no-provider`) panics without a process-wide provider.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    http_client().expect("client builds once a provider is installed")
}

/// Serves `/ok` (200), `/down` (503) and `/moved` (307 to `/ok`) on 127.0.0.1.
async fn http_server() -> SocketAddr {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route("/moved", get(|| async { Redirect::temporary("/ok") }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn http_spec(url: String, expect_status: Vec<u16>, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        id: 7,
        kind: ProbeKind::Http(HttpProbe::new(url, expect_status)),
        interval: Duration::from_secs(10),
        timeout,
        vantage: Vantage::local(),
    }
}

fn tcp_spec(address: String) -> ProbeSpec {
    ProbeSpec {
        id: 3,
        kind: ProbeKind::Tcp(TcpProbe::new(address)),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        vantage: Vantage::local(),
    }
}

fn unhealthy_reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Unhealthy(reason) => reason,
        other => panic!("expected Unhealthy, got {other:?}"),
    }
}

/// An HTTP 200 listed in expect_status is Healthy, and the result echoes the id.
#[tokio::test]
async fn http_expected_status_is_healthy() {
    let addr = http_server().await;
    let spec = http_spec(
        format!("http://{addr}/ok"),
        vec![200],
        Duration::from_secs(2),
    );
    let result = probe_once(&client(), &spec).await;
    assert_eq!(result.outcome, Outcome::Healthy);
    assert_eq!(result.id, 7);
    assert!(result.latency < Duration::from_secs(2));
}

/// A 503 when 200 is expected is Unhealthy with the status in the reason.
#[tokio::test]
async fn http_unexpected_status_is_unhealthy() {
    let addr = http_server().await;
    let spec = http_spec(
        format!("http://{addr}/down"),
        vec![200],
        Duration::from_secs(2),
    );
    let result = probe_once(&client(), &spec).await;
    assert_eq!(unhealthy_reason(&result.outcome), "status 503 not in [200]");
}

/// A redirect is not followed: the 307 itself is judged against expect_status.
#[tokio::test]
async fn http_redirect_is_not_followed() {
    let addr = http_server().await;
    let url = format!("http://{addr}/moved");
    let result = probe_once(
        &client(),
        &http_spec(url.clone(), vec![200], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(unhealthy_reason(&result.outcome), "status 307 not in [200]");
    let result = probe_once(
        &client(),
        &http_spec(url, vec![200, 307], Duration::from_secs(2)),
    )
    .await;
    assert_eq!(result.outcome, Outcome::Healthy);
}

/// Nothing listening on the port is Unhealthy with a "connect: ..." reason.
#[tokio::test]
async fn http_connection_refused_is_unhealthy() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let result = probe_once(
        &client(),
        &http_spec(url, vec![200], Duration::from_secs(2)),
    )
    .await;
    let reason = unhealthy_reason(&result.outcome);
    assert_eq!(reason, "connect: connection refused");
}

/// A server that accepts but never answers is Unhealthy by timeout, within timeout + slack.
#[tokio::test]
async fn http_accept_then_hang_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream); // keep the connection open, never write
        }
    });
    let timeout = Duration::from_millis(300);
    let begun = Instant::now();
    let result = probe_once(
        &client(),
        &http_spec(format!("http://{addr}/"), vec![200], timeout),
    )
    .await;
    let took = begun.elapsed();
    assert_eq!(unhealthy_reason(&result.outcome), "timeout after 300ms");
    assert!(took >= timeout, "returned before the timeout: {took:?}");
    assert!(took < timeout + Duration::from_millis(250), "took {took:?}");
    assert!(result.latency >= timeout && result.latency <= took);
}

/// A TCP connect to a listening port is Healthy.
#[tokio::test]
async fn tcp_connect_is_healthy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let result = probe_once(&client(), &tcp_spec(addr.to_string())).await;
    assert_eq!(result.outcome, Outcome::Healthy);
    assert_eq!(result.id, 3);
}

/// A TCP connect to a closed port is Unhealthy "connect: connection refused".
#[tokio::test]
async fn tcp_connect_refused_is_unhealthy() {
    let spec = tcp_spec(format!("127.0.0.1:{}", closed_port()));
    let result = probe_once(&client(), &spec).await;
    assert_eq!(
        unhealthy_reason(&result.outcome),
        "connect: connection refused"
    );
}

/// An unparseable TCP address that skipped validation is Unknown, not Unhealthy.
#[tokio::test]
async fn tcp_unusable_address_is_unknown() {
    let result = probe_once(&client(), &tcp_spec("host-without-port".to_owned())).await;
    assert!(
        matches!(result.outcome, Outcome::Unknown(_)),
        "{:?}",
        result.outcome
    );
}

fn http(url: &str) -> ProbeKind {
    ProbeKind::Http(HttpProbe::new(url.to_owned(), vec![200]))
}

fn tcp(address: &str) -> ProbeKind {
    ProbeKind::Tcp(TcpProbe::new(address.to_owned()))
}

/// check_kind accepts well-formed http(s) URLs and host:port / IP:port addresses.
#[test]
fn check_kind_accepts_valid_kinds() {
    for kind in [
        http("http://svc.ns.svc.cluster.local:8080/healthz"),
        http("https://example.com"),
        http("http://[::1]:80/"),
        tcp("svc.ns:5432"),
        tcp("10.0.0.1:1"),
        tcp("[::1]:65535"),
        tcp("localhost:80"),
    ] {
        assert!(
            check_kind(&kind).is_ok(),
            "{kind:?}: {:?}",
            check_kind(&kind)
        );
    }
}

/// check_kind rejects bad schemes, non-URLs, missing ports, out-of-range ports and bad status lists.
#[test]
fn check_kind_rejects_invalid_kinds() {
    for kind in [
        http("ftp://x"),
        http("not a url"),
        http("http://"),
        http("/relative/path"),
        tcp("host-without-port"),
        tcp("host:0"),
        tcp("host:70000"),
        tcp("127.0.0.1:0"),
        tcp(":80"),
        tcp("::1:80"),
        tcp("host:http"),
        tcp("[not-ipv6]:80"),
        ProbeKind::Http(HttpProbe::new("http://x/".to_owned(), vec![])),
        ProbeKind::Http(HttpProbe::new("http://x/", vec![200, 999])),
    ] {
        assert!(check_kind(&kind).is_err(), "{kind:?} was accepted");
    }
    let err = check_kind(&tcp("host:70000")).unwrap_err().to_string();
    assert!(err.contains("host:70000"), "{err}");
}

/// The streak counts same-class outcomes (ignoring reasons), resets on a class change and records its start.
#[test]
fn window_streak_and_streak_since() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut window = ProbeWindow::new(10);
    assert_eq!(
        (window.streak(), window.streak_since(), window.last_at()),
        (0, None, None)
    );
    assert_eq!(window.last(), None);

    window.record(Outcome::Healthy, at(0));
    window.record(Outcome::Healthy, at(1));
    assert_eq!((window.streak(), window.streak_since()), (2, Some(at(0))));

    window.record(
        Outcome::Unhealthy("connect: connection refused".into()),
        at(2),
    );
    window.record(Outcome::Unhealthy("timeout after 500ms".into()), at(3));
    assert_eq!((window.streak(), window.streak_since()), (2, Some(at(2))));
    assert_eq!(
        window.last(),
        Some(&Outcome::Unhealthy("timeout after 500ms".into()))
    );
    assert_eq!(window.last_at(), Some(at(3)));

    window.record(Outcome::Unknown("local: too many open files".into()), at(4));
    assert_eq!((window.streak(), window.streak_since()), (1, Some(at(4))));
}

/// The window keeps only `capacity` outcomes, but the streak keeps counting past it.
#[test]
fn window_capacity_bounds_history_not_streak() {
    let t0 = Instant::now();
    let mut window = ProbeWindow::new(3);
    for i in 0..5 {
        window.record(Outcome::Healthy, t0 + Duration::from_secs(i));
    }
    for i in 5..25 {
        window.record(
            Outcome::Unhealthy("status 503 not in [200]".into()),
            t0 + Duration::from_secs(i),
        );
    }
    assert_eq!((window.len(), window.capacity()), (3, 3));
    assert_eq!(window.streak(), 20);
    assert_eq!(window.streak_since(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(window.success_ratio(), Some(0.0));
    assert_eq!(ProbeWindow::new(0).capacity(), 1);
}

/// success_ratio is healthy / (healthy + unhealthy) over the window; Unknown counts on neither side.
#[test]
fn window_success_ratio() {
    let t0 = Instant::now();
    let mut window = ProbeWindow::new(4);
    assert_eq!(window.success_ratio(), None);
    window.record(Outcome::Unknown("local: no buffer space".into()), t0);
    assert_eq!(window.success_ratio(), None);
    window.record(Outcome::Healthy, t0);
    window.record(Outcome::Unhealthy("x".into()), t0);
    window.record(Outcome::Healthy, t0);
    assert_eq!(window.success_ratio(), Some(2.0 / 3.0));
    window.record(Outcome::Healthy, t0); // evicts the Unknown
    assert_eq!(window.success_ratio(), Some(0.75));
}

/// Two 300 ms probes each report ≥3 results, first attempts scheduled within their first
/// interval, and the channel closes after shutdown.
#[tokio::test]
async fn spawn_probes_reports_and_shuts_down() {
    let addr = http_server().await;
    let tcp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let specs = vec![
        ProbeSpec {
            id: 0,
            kind: ProbeKind::Http(HttpProbe::new(format!("http://{addr}/ok"), vec![200])),
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            vantage: Vantage::local(),
        },
        ProbeSpec {
            id: 1,
            kind: ProbeKind::Tcp(TcpProbe::new(
                tcp_listener.local_addr().unwrap().to_string(),
            )),
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            vantage: Vantage::local(),
        },
    ];
    let (tx, mut rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let spawned = Instant::now();
    let set = spawn_probes(specs, client(), tx, stop_rx);
    assert_eq!(set.len(), 2);

    let mut counts = [0usize; 2];
    // Generous: a debug build on a busy 2-core machine; the loop ends as soon as it has 3 each.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts.iter().any(|&n| n < 3) {
        let Ok(Some(result)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        assert_eq!(result.outcome, Outcome::Healthy, "{result:?}");
        if counts[result.id] == 0 {
            // The first attempt is *scheduled* at a random offset in [0, interval); its actual
            // start may be later on a loaded machine, which `lateness` measures, so the check
            // is on the schedule itself (50 ms covers the time between `spawned` and the
            // scheduler reading its own clock).
            let scheduled = (result.started - result.lateness).saturating_duration_since(spawned);
            assert!(
                scheduled < Duration::from_millis(350),
                "first attempt scheduled {scheduled:?} after spawn (lateness {:?})",
                result.lateness
            );
        }
        counts[result.id] += 1;
    }
    assert!(counts.iter().all(|&n| n >= 3), "results per id: {counts:?}");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(1), set.shutdown())
        .await
        .expect("tasks stop");
    // Every sender is gone now: after at most a channel's worth of buffered results, recv ends.
    for _ in 0..=16 {
        if rx.recv().await.is_none() {
            return;
        }
    }
    panic!("channel still open after shutdown");
}

/// A probe task stops by itself once the result receiver is dropped.
#[tokio::test]
async fn spawn_probes_stops_when_receiver_dropped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = ProbeSpec {
        id: 0,
        kind: ProbeKind::Tcp(TcpProbe::new(listener.local_addr().unwrap().to_string())),
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(15),
        vantage: Vantage::local(),
    };
    let (tx, rx) = mpsc::channel(1);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let set = spawn_probes(vec![spec], client(), tx, stop_rx);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(1), set.shutdown())
        .await
        .expect("task stops without a shutdown signal once the receiver is gone");
}
