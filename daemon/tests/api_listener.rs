#![allow(clippy::unwrap_used)]
//! The API's listener: TLS served and its certificate reloaded, and the header-read
//! timeouts that drop idle and slow connections (fixture: `support::api`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverd::auth::Tokens;
use failoverd::routing::FileStore;
use failoverd::shared::Shared;
use tokio::sync::watch;

mod support;

use support::api::{Fixture, VIEWER, wait_until};

// ---------------------------------------------------------------------------------------
// TLS on the listener.

/// A CA (its PEM) able to issue a server certificate for 127.0.0.1.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a leaf certificate and key for 127.0.0.1 to `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let k = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let c = params.signed_by(&k, &self.issuer).unwrap();
        // Key first, then the certificate: a reload that sees only one changed keeps the
        // old pair (the key does not match) until both are in place.
        std::fs::write(key, k.serialize_pem()).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
    }

    /// A client trusting only this CA, opening a new connection per call.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()])
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }
}

/// Ensures `--tls-cert/--tls-key` serve the API over HTTPS with the given certificate (a
/// client trusting its CA gets 200, one trusting another CA fails the handshake, plain
/// HTTP gets no answer), and that replacing the files changes the served certificate
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_reloads_the_certificate() {
    let f = Fixture::new().await;
    let (ca1, ca2) = (Ca::new("ca-one"), Ca::new("ca-two"));
    let (cert, key) = (f.dir.path().join("tls.crt"), f.dir.path().join("tls.key"));
    ca1.issue(&cert, &key);
    let loaded = support::loaded(&f.pb);
    let shared = Arc::new(Shared::new(&loaded));
    let (rt, audit_path) = support::runtime(
        loaded,
        Arc::new(FileStore::new(f.dir.path().join("routes"))),
        f.dir.path(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(failoverd::app::serve(
        rt,
        shared.clone(),
        Arc::new(Tokens::load(&f.dir.path().join("tokens.yaml")).unwrap()),
        audit_path,
        listener,
        stop_rx,
        failoverd::app::ServeOptions {
            drills: None,
            listener: failoverd::server::ListenerOptions {
                max_connections: None,
                tls: Some(failoverd::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    ));
    let url = format!("https://{addr}/v1/overrides");
    let get = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            c.get(&url)
                .bearer_auth(VIEWER.1)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    wait_until(
        "HTTPS answers with the first certificate",
        Duration::from_secs(10),
        || {
            let c = ca1.client();
            async move { get(c).await.ok() == Some(200) }
        },
    )
    .await;
    assert!(
        get(ca2.client()).await.is_err(),
        "a client trusting another CA connected"
    );
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS listener: {plain:?}"
    );

    // Rotate: the second CA's certificate replaces the first, no restart.
    ca2.issue(&cert, &key);
    wait_until(
        "the new certificate is served",
        Duration::from_secs(10),
        || {
            let c = ca2.client();
            async move { get(c).await.ok() == Some(200) }
        },
    )
    .await;
    assert!(
        get(ca1.client()).await.is_err(),
        "the old certificate is still served"
    );

    // A broken replacement keeps the one in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(ca2.client()).await.ok(), Some(200));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("daemon did not stop")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Listener timeouts.

/// Ensures the listener drops a connection that sends nothing, one that trickles its headers
/// (slowloris) and a kept-alive one left idle after an answer, once the 10 s header-read
/// timeout has passed (checked with a 20 s bound), while answering a prompt request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let addr = d.addr;
    let closed_within = |mut s: tokio::net::TcpStream, trickle: bool| async move {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return Some(start.elapsed()),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if trickle {
                        let _ = s.write_all(b"a").await;
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(20) {
                return None;
            }
        }
    };
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "a prompt request is answered");
    let (a, b, c) = tokio::join!(
        closed_within(silent, false),
        closed_within(slow, true),
        closed_within(kept, false)
    );
    for (what, t) in [("silent", a), ("slowloris", b), ("idle kept-alive", c)] {
        let t = t.unwrap_or_else(|| panic!("{what} connection still open after 20 s"));
        assert!(
            t >= Duration::from_secs(8),
            "{what} connection closed after {t:?}, before the timeout"
        );
    }
    d.shutdown().await;
}
