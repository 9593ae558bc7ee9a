//! gRPC health probes against a real `tonic-health` server on loopback.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use failover_probes::{
    GrpcProbe, Outcome, ProbeError, ProbeKind, ProbeSpec, Vantage, check_kind, check_spec,
    http_client, probe_once,
};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    http_client().expect("client builds once a provider is installed")
}

/// Starts a standard health server on 127.0.0.1 knowing `case-management` (SERVING).
async fn health_server() -> (SocketAddr, HealthReporter, tokio::task::JoinHandle<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("case-management", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, reporter, task)
}

fn spec(probe: GrpcProbe) -> ProbeSpec {
    ProbeSpec {
        id: 11,
        kind: ProbeKind::Grpc(probe),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        vantage: Vantage::local(),
    }
}

/// Ensures SERVING is healthy, NOT_SERVING and an unknown service are unhealthy with the
/// status in the reason, and that a flip back to SERVING is seen on the next attempt
/// (every attempt asks afresh; nothing is cached).
#[tokio::test]
async fn follows_serving_status() {
    let client = client();
    let (addr, reporter, _task) = health_server().await;
    let probe = spec(GrpcProbe::new(addr.to_string(), "case-management"));
    check_spec(&probe).unwrap();
    assert_eq!(probe_once(&client, &probe).await.outcome, Outcome::Healthy);

    reporter
        .set_service_status("case-management", ServingStatus::NotServing)
        .await;
    let down = probe_once(&client, &probe).await;
    assert!(
        matches!(&down.outcome, Outcome::Unhealthy(r) if r.contains("NOT_SERVING") && r.contains("case-management")),
        "{down:?}"
    );

    reporter
        .set_service_status("case-management", ServingStatus::Serving)
        .await;
    assert_eq!(probe_once(&client, &probe).await.outcome, Outcome::Healthy);

    let other = spec(GrpcProbe::new(addr.to_string(), "no-such-service"));
    let unknown = probe_once(&client, &other).await;
    assert!(
        matches!(&unknown.outcome, Outcome::Unhealthy(r) if r.contains("SERVICE_UNKNOWN")),
        "{unknown:?}"
    );
    // The empty service name asks about the server as a whole, which the standard
    // server reports SERVING.
    let whole = spec(GrpcProbe::new(addr.to_string(), ""));
    assert_eq!(probe_once(&client, &whole).await.outcome, Outcome::Healthy);
}

/// Ensures a closed listener is unhealthy (connection refused), not unknown, and that a
/// server that stops mid-life is noticed on the next attempt.
#[tokio::test]
async fn closed_listener_is_unhealthy() {
    let client = client();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = spec(GrpcProbe::new(format!("127.0.0.1:{port}"), "x"));
    let r = probe_once(&client, &refused).await;
    assert!(
        matches!(&r.outcome, Outcome::Unhealthy(m) if m.contains("connect") && m.contains("refused")),
        "{r:?}"
    );

    let (addr, _reporter, task) = health_server().await;
    let probe = spec(GrpcProbe::new(addr.to_string(), "case-management"));
    assert_eq!(probe_once(&client, &probe).await.outcome, Outcome::Healthy);
    task.abort();
    let _ = task.await;
    let gone = probe_once(&client, &probe).await;
    assert!(
        matches!(&gone.outcome, Outcome::Unhealthy(m) if m.contains("connect")),
        "{gone:?}"
    );
}

/// Ensures a listener that accepts but never speaks HTTP/2 is cut off by the total
/// timeout (unhealthy), and the attempt does not outlive it by much.
#[tokio::test]
async fn silent_listener_times_out() {
    let client = client();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut probe = spec(GrpcProbe::new(addr.to_string(), "x"));
    probe.timeout = Duration::from_millis(300);
    let r = probe_once(&client, &probe).await;
    assert!(
        matches!(&r.outcome, Outcome::Unhealthy(m) if m.contains("timeout")),
        "{r:?}"
    );
    // Generous bound: a loaded CI box can be slow, but not 10 x the timeout.
    assert!(r.latency < Duration::from_secs(3), "{r:?}");
}

/// Ensures bad definitions are refused at load time, naming the option.
#[test]
fn validation() {
    let bad_address = GrpcProbe::new("localhost", "x");
    assert!(matches!(
        check_kind(&ProbeKind::Grpc(bad_address)),
        Err(ProbeError::InvalidAddress { .. })
    ));
    let mut plaintext_ca = GrpcProbe::new("127.0.0.1:50051", "x");
    plaintext_ca.ca_file = Some("/nonexistent.pem".into());
    assert!(matches!(
        check_kind(&ProbeKind::Grpc(plaintext_ca)),
        Err(ProbeError::InvalidGrpcOption {
            field: "caFile",
            ..
        })
    ));
    let mut bad_authority = GrpcProbe::new("127.0.0.1:50051", "x");
    bad_authority.authority = Some("a b".into());
    assert!(matches!(
        check_kind(&ProbeKind::Grpc(bad_authority)),
        Err(ProbeError::InvalidGrpcOption {
            field: "authority",
            ..
        })
    ));
    let mut slow = spec(GrpcProbe::new("127.0.0.1:50051", "x"));
    slow.timeout = slow.interval;
    assert!(matches!(
        check_spec(&slow),
        Err(ProbeError::InvalidTiming(_))
    ));
}
