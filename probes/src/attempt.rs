//! One probe attempt, and the HTTP client the attempts share.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error_text::{describe, describe_io, io_cause, is_local_exhaustion};
use crate::plain::{Failure, PlainHttp};
use crate::tls::load_ca;
use crate::{HttpProbe, Outcome, ProbeError, ProbeKind, ProbeResult, ProbeSpec, TcpProbe};

/// Redirects followed at most when `follow_redirects` is set.
const MAX_REDIRECTS: usize = 5;

/// Client-wide connect timeout. Only a backstop: every attempt is already bounded by
/// its own `ProbeSpec::timeout`, which is normally far shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Health endpoints answer with small bodies; past this we stop reading instead of
/// downloading whatever a misconfigured URL serves (the status is already known).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Builds the shared HTTP client used by HTTP probes that need no options of their
/// own (see [`HttpProbe::needs_own_client`]).
///
/// - No connection pooling (`pool_max_idle_per_host(0)`): a pooled connection can hide
///   a listener that stopped accepting, so every attempt opens a fresh connection.
/// - No redirects followed: a redirect is an answer from the probed server; following
///   it would probe some other server. List 3xx in `expect_status` to accept it.
/// - No proxy (`no_proxy()`): an ambient `HTTP_PROXY` would make us probe the proxy.
/// - HTTP/1.1 only (no h2 by ALPN), so what is probed does not depend on the server's
///   ALPN list; probes opt into HTTP/2 with `http2`.
/// - A connect timeout as a backstop behind each attempt's own timeout.
///
/// The workspace builds reqwest with `rustls-no-provider`, and reqwest *panics* when it
/// builds a client without a process-wide rustls `CryptoProvider` — even for plain
/// `http://` use. The caller must therefore install one first, e.g.
/// `rustls::crypto::ring::default_provider().install_default()`. If none is installed
/// this returns [`ProbeError::ClientBuild`] instead of letting reqwest panic.
pub fn http_client() -> Result<reqwest::Client, ProbeError> {
    check_provider()?;
    base_builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| ProbeError::ClientBuild(describe(&e)))
}

fn check_provider() -> Result<(), ProbeError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err(ProbeError::ClientBuild(
            "no process-wide rustls CryptoProvider installed; install one \
             (rustls::crypto::ring::default_provider().install_default()) first"
                .to_owned(),
        ));
    }
    Ok(())
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        // Lets the probed service tell probe traffic apart in its access logs.
        .user_agent(concat!("failoverd-probe/", env!("CARGO_PKG_VERSION")))
}

/// Builds a client for one HTTP probe with its own TLS, redirect, pooling, protocol
/// and connect-timeout settings. The scheduler builds one per probe that
/// [needs it](HttpProbe::needs_own_client) and keeps it (and so, with
/// `fresh_connection: false`, its pooled connection) for the probe's lifetime.
pub fn http_client_for(http: &HttpProbe) -> Result<reqwest::Client, ProbeError> {
    check_provider()?;
    let url = reqwest::Url::parse(&http.url).map_err(|e| ProbeError::InvalidUrl {
        url: http.url.clone(),
        reason: e.to_string(),
    })?;
    let mut builder = base_builder()
        .redirect(if http.follow_redirects {
            reqwest::redirect::Policy::limited(MAX_REDIRECTS)
        } else {
            reqwest::redirect::Policy::none()
        })
        .connect_timeout(http.connect_timeout.unwrap_or(CONNECT_TIMEOUT));
    if http.fresh_connection {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder = match (http.http2, url.scheme()) {
        (false, _) => builder.http1_only(),
        (true, "http") => builder.http2_prior_knowledge(),
        // https: ALPN offers h2 and http/1.1; the attempt checks h2 was chosen.
        (true, _) => builder,
    };
    if let Some(path) = &http.ca_file {
        let certs = load_ca(path).map_err(|reason| ProbeError::InvalidHttpOption {
            url: http.url.clone(),
            field: "caFile",
            reason,
        })?;
        builder = builder.tls_certs_only(certs);
    }
    if http.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(name) = &http.server_name {
        // host_str brackets IPv6 literals; lookup_host wants them bare.
        let real = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        builder = builder.dns_resolver(Arc::new(SniResolver {
            server_name: name.to_ascii_lowercase(),
            real_host: real,
        }));
    }
    builder
        .build()
        .map_err(|e| ProbeError::ClientBuild(describe(&e)))
}

/// With `serverName`, the request URL carries the server name (so rustls sends it as
/// SNI and verifies the certificate against it), and this resolver sends that name to
/// the URL's real host — curl's `--connect-to`.
struct SniResolver {
    server_name: String,
    real_host: String,
}

impl reqwest::dns::Resolve for SniResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = if name.as_str().eq_ignore_ascii_case(&self.server_name) {
            self.real_host.clone()
        } else {
            name.as_str().to_owned()
        };
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.collect::<Vec<_>>().into_iter());
            Ok(addrs)
        })
    }
}

/// A probe made ready to run: client chosen, regex compiled, URL and headers built.
#[derive(Debug)]
pub(crate) enum Prepared {
    Http(Box<PreparedHttp>),
    Tcp,
    Grpc(Box<tonic::transport::Endpoint>),
}

#[derive(Debug)]
pub(crate) struct PreparedHttp {
    client: reqwest::Client,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body_re: Option<regex::Regex>,
    connect_timeout: Duration,
    want_h2: bool,
    /// The plain path (see `plain.rs`) for a probe the shared client would serve over
    /// `http://`; `None` keeps the client.
    plain: Option<PlainHttp>,
}

/// Prepares `spec` once; an error (e.g. a CA file that vanished since validation) makes
/// every attempt `Unknown` until a later prepare succeeds.
pub(crate) fn prepare(shared: &reqwest::Client, spec: &ProbeSpec) -> Result<Prepared, String> {
    let http = match &spec.kind {
        ProbeKind::Tcp(_) => return Ok(Prepared::Tcp),
        ProbeKind::Grpc(grpc) => {
            return crate::grpc::endpoint(grpc).map(|e| Prepared::Grpc(Box::new(e)));
        }
        ProbeKind::Http(http) => http,
    };
    let client = if http.needs_own_client() {
        http_client_for(http).map_err(|e| e.to_string())?
    } else {
        shared.clone()
    };
    let mut url = reqwest::Url::parse(&http.url).map_err(|e| format!("url: {e}"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(name) = &http.server_name {
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        url.set_host(Some(name))
            .map_err(|e| format!("serverName: {e}"))?;
        let value =
            reqwest::header::HeaderValue::from_str(&authority).map_err(|e| format!("host: {e}"))?;
        headers.insert(reqwest::header::HOST, value);
    }
    for (name, value) in &http.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header {name:?}: {e}"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| format!("header {name:?}: {e}"))?;
        // A user-given Host replaces the one implied by serverName.
        if name == reqwest::header::HOST {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }
    let method =
        reqwest::Method::from_bytes(http.method.as_bytes()).map_err(|e| format!("method: {e}"))?;
    let body_re = match &http.body_matches {
        Some(re) => Some(regex::Regex::new(re).map_err(|e| format!("bodyMatches: {e}"))?),
        None => None,
    };
    let plain = if http.needs_own_client() {
        None
    } else {
        PlainHttp::new(&url, &method, &headers)
    };
    Ok(Prepared::Http(Box::new(PreparedHttp {
        client,
        method,
        url,
        headers,
        body_re,
        connect_timeout: http.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
        want_h2: http.http2,
        plain,
    })))
}

/// Run one attempt now (for one-off checks; the scheduler prepares each probe once).
///
/// Never panics and never takes (much) longer than `spec.timeout`: the whole attempt
/// — connect, request and reading the body — runs under that timeout. A probe whose
/// options need its own client (see [`HttpProbe::needs_own_client`]) gets one built
/// for this attempt; `client` serves the others, except plain `http://` probes, which take
/// the plain path (see [`probe_once_via_client`] to compare).
pub async fn probe_once(client: &reqwest::Client, spec: &ProbeSpec) -> ProbeResult {
    let started = Instant::now();
    let prepared = prepare(client, spec);
    run_prepared(prepared.as_ref(), spec, started, Duration::ZERO, &[]).await
}

/// [`probe_once`] through the general HTTP client (`client`) even where the plain
/// `http://` path would serve the probe: what the plain path is compared with in tests
/// and benches. Every other probe runs as in [`probe_once`].
pub async fn probe_once_via_client(client: &reqwest::Client, spec: &ProbeSpec) -> ProbeResult {
    let started = Instant::now();
    let mut prepared = prepare(client, spec);
    if let Ok(Prepared::Http(http)) = &mut prepared {
        http.plain = None;
    }
    run_prepared(prepared.as_ref(), spec, started, Duration::ZERO, &[]).await
}

/// One attempt of a prepared probe that started (was due) at `started`.
pub(crate) async fn run_prepared(
    prepared: Result<&Prepared, &String>,
    spec: &ProbeSpec,
    started: Instant,
    lateness: Duration,
    extra: &[(String, String)],
) -> ProbeResult {
    let outcome = match (prepared, &spec.kind) {
        (Err(reason), _) => Outcome::Unknown(format!("prepare: {reason}")),
        (Ok(Prepared::Http(http)), ProbeKind::Http(def)) => {
            http_attempt(http, def, spec.timeout, extra).await
        }
        (Ok(_), ProbeKind::Tcp(tcp)) => tcp_attempt(tcp, spec.timeout).await,
        (Ok(Prepared::Grpc(endpoint)), ProbeKind::Grpc(grpc)) => {
            crate::grpc::attempt(endpoint, &grpc.service, spec.timeout).await
        }
        (Ok(_), ProbeKind::Http(_) | ProbeKind::Grpc(_)) => {
            Outcome::Unknown("prepare: probe kind changed".to_owned())
        }
    };
    ProbeResult {
        id: spec.id,
        outcome,
        started,
        latency: started.elapsed(),
        lateness,
        vantage: spec.vantage.clone(),
    }
}

async fn http_attempt(
    prepared: &PreparedHttp,
    def: &HttpProbe,
    timeout: Duration,
    extra: &[(String, String)],
) -> Outcome {
    let want_body = def.body_contains.is_some() || prepared.body_re.is_some();
    if let Some(plain) = &prepared.plain {
        // Run-time headers (a fault drill's `x-failoverd-drill`) are rare: such an attempt's
        // head is built afresh from the headers the client path would send.
        let fresh;
        let plain = match extra.is_empty() {
            true => plain,
            false => {
                let headers = with_extra(&prepared.headers, extra);
                match PlainHttp::new(&prepared.url, &prepared.method, &headers) {
                    Some(p) => {
                        fresh = p;
                        &fresh
                    }
                    None => plain,
                }
            }
        };
        return match tokio::time::timeout(timeout, plain.exchange(want_body, MAX_BODY_BYTES)).await
        {
            Err(_) => timed_out(timeout),
            Ok(Err(failure)) => classify_plain_failure(failure),
            Ok(Ok(answer)) if !def.expect_status.contains(&answer.status) => Outcome::Unhealthy(
                format!("status {} not in {:?}", answer.status, def.expect_status),
            ),
            Ok(Ok(answer)) => judge_body(def, prepared.body_re.as_ref(), &answer.body),
        };
    }
    let request = async {
        let mut response = prepared
            .client
            .request(prepared.method.clone(), prepared.url.clone())
            .headers(with_extra(&prepared.headers, extra))
            .send()
            .await?;
        let status = response.status().as_u16();
        let version = response.version();
        // Read the body too, so a server that sends headers and then stalls is caught
        // by the timeout rather than reported healthy.
        let mut body = Vec::new();
        let mut read = 0;
        while read < MAX_BODY_BYTES {
            match response.chunk().await? {
                Some(chunk) => {
                    read += chunk.len();
                    if want_body {
                        body.extend_from_slice(&chunk);
                    }
                }
                None => break,
            }
        }
        body.truncate(MAX_BODY_BYTES);
        Ok::<_, reqwest::Error>((status, version, body))
    };
    match tokio::time::timeout(timeout, request).await {
        Err(_) => timed_out(timeout),
        Ok(Err(e)) => classify_http_error(&e, prepared.connect_timeout),
        Ok(Ok((status, _, _))) if !def.expect_status.contains(&status) => {
            Outcome::Unhealthy(format!("status {status} not in {:?}", def.expect_status))
        }
        Ok(Ok((_, version, _))) if prepared.want_h2 && version != reqwest::Version::HTTP_2 => {
            Outcome::Unhealthy(format!("protocol: expected HTTP/2, got {version:?}"))
        }
        Ok(Ok((_, _, body))) => judge_body(def, prepared.body_re.as_ref(), &body),
    }
}

fn judge_body(def: &HttpProbe, re: Option<&regex::Regex>, body: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(body);
    if let Some(needle) = &def.body_contains
        && !text.contains(needle.as_str())
    {
        return Outcome::Unhealthy(format!("body does not contain {needle:?}"));
    }
    if let Some(re) = re
        && !re.is_match(&text)
    {
        return Outcome::Unhealthy(format!("body does not match /{}/", re.as_str()));
    }
    Outcome::Healthy
}

fn classify_http_error(e: &reqwest::Error, connect_timeout: Duration) -> Outcome {
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
        // Only the client-wide connect timeout can fire inside reqwest.
        Outcome::Unhealthy(format!(
            "connect: timeout after {}ms",
            connect_timeout.as_millis()
        ))
    } else if e.is_connect() {
        Outcome::Unhealthy(format!("connect: {}", describe(e)))
    } else if e.is_redirect() {
        Outcome::Unhealthy(format!("redirect: {}", describe(e)))
    } else {
        Outcome::Unhealthy(format!("request: {}", describe(e)))
    }
}

/// The reasons the client gave for the same failures (see `classify_http_error`).
fn classify_plain_failure(failure: Failure) -> Outcome {
    match failure {
        Failure::Connect(e) | Failure::Io(e) if is_local_exhaustion(&e) => {
            Outcome::Unknown(format!("local: {}", describe_io(&e)))
        }
        Failure::Connect(e) => Outcome::Unhealthy(format!("connect: {}", describe_io(&e))),
        Failure::Io(e) => Outcome::Unhealthy(format!("request: {}", describe_io(&e))),
        Failure::Malformed(text) => Outcome::Unhealthy(format!("request: {text}")),
    }
}

async fn tcp_attempt(tcp: &TcpProbe, timeout: Duration) -> Outcome {
    let exchange = async {
        let mut stream = TcpStream::connect(&tcp.address)
            .await
            .map_err(|e| ("connect", e))?;
        if let Some(send) = &tcp.send {
            stream.write_all(send).await.map_err(|e| ("send", e))?;
        }
        let Some(expect) = &tcp.expect else {
            return Ok(None);
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < MAX_BODY_BYTES {
            let n = stream.read(&mut buf).await.map_err(|e| ("read", e))?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if contains(&got, expect) {
                return Ok(None);
            }
        }
        Ok(Some(got.len()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => timed_out(timeout),
        Ok(Ok(None)) => Outcome::Healthy,
        Ok(Ok(Some(n))) => Outcome::Unhealthy(format!(
            "expect: {n} bytes received without {:?}",
            String::from_utf8_lossy(tcp.expect.as_deref().unwrap_or_default())
        )),
        Ok(Err((_, e))) if is_local_exhaustion(&e) => {
            Outcome::Unknown(format!("local: {}", describe_io(&e)))
        }
        // An unparseable address (one that skipped check_kind) is our problem, not the
        // target's.
        Ok(Err(("connect", e))) if e.kind() == io::ErrorKind::InvalidInput => {
            Outcome::Unknown(format!("address: {}", describe_io(&e)))
        }
        Ok(Err((step, e))) => Outcome::Unhealthy(format!("{step}: {}", describe_io(&e))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Unhealthy(format!("timeout after {}ms", timeout.as_millis()))
}

/// The prepared headers plus run-time ones (a name or value that is not valid HTTP is
/// skipped: the probe still runs, as it would without them).
fn with_extra(
    headers: &reqwest::header::HeaderMap,
    extra: &[(String, String)],
) -> reqwest::header::HeaderMap {
    let mut out = headers.clone();
    for (name, value) in extra {
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            out.insert(n, v);
        }
    }
    out
}
