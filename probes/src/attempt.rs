//! One probe attempt, and the HTTP client the attempts share.

use std::error::Error;
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{Outcome, ProbeError, ProbeKind, ProbeResult, ProbeSpec};

/// Client-wide connect timeout. Only a backstop: every attempt is already bounded by
/// its own `ProbeSpec::timeout`, which is normally far shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Health endpoints answer with small bodies; past this we stop reading instead of
/// downloading whatever a misconfigured URL serves (the status is already known).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Builds the shared HTTP client used by HTTP probes.
///
/// - No connection pooling (`pool_max_idle_per_host(0)`): a pooled connection can hide
///   a listener that stopped accepting, so every attempt opens a fresh connection.
/// - No redirects followed: a redirect is an answer from the probed server; following
///   it would probe some other server. List 3xx in `expect_status` to accept it.
/// - No proxy (`no_proxy()`): an ambient `HTTP_PROXY` would make us probe the proxy.
/// - A connect timeout as a backstop behind each attempt's own timeout.
///
/// The workspace builds reqwest with `rustls-no-provider`, and reqwest *panics* when it
/// builds a client without a process-wide rustls `CryptoProvider` — even for plain
/// `http://` use. The caller must therefore install one first, e.g.
/// `rustls::crypto::ring::default_provider().install_default()`. If none is installed
/// this returns [`ProbeError::ClientBuild`] instead of letting reqwest panic.
pub fn http_client() -> Result<reqwest::Client, ProbeError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err(ProbeError::ClientBuild(
            "no process-wide rustls CryptoProvider installed; install one \
             (rustls::crypto::ring::default_provider().install_default()) first"
                .to_owned(),
        ));
    }
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        // Lets the probed service tell probe traffic apart in its access logs.
        .user_agent(concat!("failoverd-probe/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProbeError::ClientBuild(describe(&e)))
}

/// Run one attempt now (used by the scheduler, and by `failoverd` for one-off checks).
///
/// Never panics and never takes (much) longer than `spec.timeout`: the whole attempt
/// — connect, request and reading the body — runs under that timeout.
pub async fn probe_once(client: &reqwest::Client, spec: &ProbeSpec) -> ProbeResult {
    let started = Instant::now();
    let outcome = match &spec.kind {
        ProbeKind::Http { url, expect_status } => {
            http_attempt(client, url, expect_status, spec.timeout).await
        }
        ProbeKind::Tcp { address } => tcp_attempt(address, spec.timeout).await,
    };
    ProbeResult {
        id: spec.id,
        outcome,
        started,
        latency: started.elapsed(),
    }
}

async fn http_attempt(
    client: &reqwest::Client,
    url: &str,
    expect_status: &[u16],
    timeout: Duration,
) -> Outcome {
    let request = async {
        let mut response = client.get(url).send().await?;
        let status = response.status().as_u16();
        // Read the body too, so a server that sends headers and then stalls is caught
        // by the timeout rather than reported healthy.
        let mut read = 0;
        while read < MAX_BODY_BYTES {
            match response.chunk().await? {
                Some(chunk) => read += chunk.len(),
                None => break,
            }
        }
        Ok::<_, reqwest::Error>(status)
    };
    match tokio::time::timeout(timeout, request).await {
        Err(_) => timed_out(timeout),
        Ok(Ok(status)) if expect_status.contains(&status) => Outcome::Healthy,
        Ok(Ok(status)) => Outcome::Unhealthy(format!("status {status} not in {expect_status:?}")),
        Ok(Err(e)) => classify_http_error(&e),
    }
}

fn classify_http_error(e: &reqwest::Error) -> Outcome {
    if let Some(io) = io_cause(e)
        && is_local_exhaustion(io)
    {
        return Outcome::Unknown(format!("local: {}", describe_io(io)));
    }
    if e.is_builder() {
        // The request could not even be formed (e.g. a URL that skipped check_kind):
        // that says nothing about the target.
        Outcome::Unknown(format!("request: {}", describe(e)))
    } else if e.is_timeout() {
        // Only the client-wide connect backstop can fire inside reqwest.
        Outcome::Unhealthy(format!(
            "connect: timeout after {}ms",
            CONNECT_TIMEOUT.as_millis()
        ))
    } else if e.is_connect() {
        Outcome::Unhealthy(format!("connect: {}", describe(e)))
    } else {
        Outcome::Unhealthy(format!("request: {}", describe(e)))
    }
}

async fn tcp_attempt(address: &str, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => timed_out(timeout),
        // Connect succeeded; dropping the stream closes it straight away.
        Ok(Ok(_stream)) => Outcome::Healthy,
        Ok(Err(e)) if is_local_exhaustion(&e) => {
            Outcome::Unknown(format!("local: {}", describe_io(&e)))
        }
        // An unparseable address (one that skipped check_kind) is our problem, not the
        // target's.
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidInput => {
            Outcome::Unknown(format!("address: {}", describe_io(&e)))
        }
        Ok(Err(e)) => Outcome::Unhealthy(format!("connect: {}", describe_io(&e))),
    }
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Unhealthy(format!("timeout after {}ms", timeout.as_millis()))
}

/// Errors that mean this host ran out of something (file descriptors, buffers, memory,
/// ephemeral ports): the attempt did not really happen, so the target must not be
/// blamed for it.
fn is_local_exhaustion(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::AddrNotAvailable
    ) {
        return true;
    }
    // ENFILE and EMFILE have these values on Linux, macOS and the BSDs; ENOBUFS differs.
    #[cfg(unix)]
    {
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        #[cfg(target_os = "linux")]
        const ENOBUFS: i32 = 105;
        #[cfg(not(target_os = "linux"))]
        const ENOBUFS: i32 = 55;
        matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS))
    }
    #[cfg(not(unix))]
    false
}

/// The first `io::Error` in an error's source chain, if any.
fn io_cause<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

/// A short reason for a reqwest error. Its own `Display` is "error sending request for
/// url (...)", which hides the cause, so use the I/O cause or the innermost source.
fn describe(e: &(dyn Error + 'static)) -> String {
    if let Some(io) = io_cause(e) {
        return describe_io(io);
    }
    let mut innermost = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// "Connection refused (os error 111)" → "connection refused".
fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_lowercase(),
        _ => text,
    }
}
