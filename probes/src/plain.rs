//! The plain `http://` HTTP/1.1 attempt: one request written on a fresh tokio
//! `TcpStream`, the response head parsed with `httparse`, the body read by its framing.
//!
//! It serves the probes the shared client would (no TLS, no HTTP/2, no redirects
//! followed, a fresh connection, no connect timeout of their own), with the same
//! request bytes, verdicts and reasons, for a fraction of the work: the request head is
//! built once per probe, and no connection pool, dispatcher task or header map is set up
//! per attempt. Everything else keeps the general client (`attempt.rs`).
//!
//! What it keeps from the client it replaces (hyper 1 behind reqwest), checked by
//! `probes/tests/plain_http.rs` against that client on the same servers:
//! - the request: `METHOD path?query HTTP/1.1`, the probe's headers in order, then
//!   `accept: */*` and `user-agent` unless the probe sets them, then `host` (the URL's
//!   host, with the port when it is not 80) unless the probe sets one; no body;
//! - the response: informational (1xx but 101) heads skipped; no body for `HEAD`, 1xx,
//!   204 and 304; `Transfer-Encoding` ending in `chunked` is chunked (other codings: read
//!   to the end; any `Transfer-Encoding` on HTTP/1.0 is an error); else
//!   `Content-Length` (all values equal, or an error); else read to the end;
//! - the limits: at most 100 headers and 417,792 bytes of head (hyper's defaults), the
//!   body read to its end or to 64 KiB, whichever comes first;
//! - the reasons: hyper's texts for a malformed answer (`invalid HTTP version parsed`,
//!   `connection closed before message completed`, ...), I/O errors as short texts.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// hyper's default limit on the response head it buffers (8 KiB + 100 × 4 KiB).
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// hyper's default limit on the number of response headers.
const MAX_HEADERS: usize = 100;

/// How a plain attempt failed, sorted the way the reasons are worded.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Resolving or connecting failed (`connect: ...`).
    Connect(io::Error),
    /// Writing the request or reading the answer failed (`request: ...`).
    Io(io::Error),
    /// The answer is not HTTP/1 as hyper accepts it; hyper's words for it.
    Malformed(&'static str),
}

/// A response as far as a probe judges it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: u16,
    /// The first `max_body` bytes of the decoded body, if it was asked for.
    pub(crate) body: Vec<u8>,
}

/// One plain probe, prepared once: where to connect and the request bytes to send.
#[derive(Debug)]
pub(crate) struct PlainHttp {
    /// Host to resolve (IPv6 literals without brackets).
    host: String,
    port: u16,
    /// The whole request head, sent as is at every attempt.
    head: Box<[u8]>,
    /// A `HEAD` request: the answer has no body, whatever its headers say.
    head_method: bool,
}

impl PlainHttp {
    /// The plain form of a request, or `None` when the URL is not `http://` with a host.
    /// `headers` are the probe's own, already validated (the caller's `HeaderMap`).
    pub(crate) fn new(
        url: &reqwest::Url,
        method: &reqwest::Method,
        headers: &reqwest::header::HeaderMap,
    ) -> Option<Self> {
        use reqwest::header::{ACCEPT, HOST, USER_AGENT};
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(url.path().as_bytes());
        if let Some(query) = url.query() {
            head.push(b'?');
            head.extend_from_slice(query.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut line = |name: &str, value: &[u8]| {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        };
        // The probe's headers in their order, then the client's defaults it does not
        // set, then `host`: the order reqwest and hyper write them in.
        for (name, value) in headers {
            line(name.as_str(), value.as_bytes());
        }
        let agent = concat!("failoverd-probe/", env!("CARGO_PKG_VERSION"));
        for (name, default) in [(ACCEPT, "*/*"), (USER_AGENT, agent)] {
            if !headers.contains_key(&name) {
                line(name.as_str(), default.as_bytes());
            }
        }
        if !headers.contains_key(HOST) {
            // The authority as the URL gives it: brackets kept, port only if not 80.
            let authority = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            line(HOST.as_str(), authority.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        Some(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            head: head.into_boxed_slice(),
            head_method: method == reqwest::Method::HEAD,
        })
    }

    /// Connects, sends the request and reads the answer: the head, then the body to its
    /// end or to `max_body` bytes (kept only when `keep_body`). The caller bounds the
    /// whole exchange with the probe's timeout.
    pub(crate) async fn exchange(
        &self,
        keep_body: bool,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        let mut stream = self.connect().await.map_err(Failure::Connect)?;
        stream.write_all(&self.head).await.map_err(Failure::Io)?;
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(1024),
            pos: 0,
        };
        let (status, framing) = loop {
            let (status, framing) = conn.read_head(self.head_method).await?;
            // Informational answers (100 Continue, 103 Early Hints) precede the real one.
            if !matches!(status, 100 | 102..=199) {
                break (status, framing);
            }
        };
        let mut body = Vec::new();
        let sink = keep_body.then_some(&mut body);
        match framing {
            Framing::None => {}
            Framing::Length(n) => conn.read_exact_body(n.min(max_body as u64), sink).await?,
            Framing::Chunked => conn.read_chunked(max_body, sink).await?,
            Framing::ToEnd => conn.read_to_end(max_body, sink).await?,
        }
        body.truncate(max_body);
        Ok(Answer { status, body })
    }

    /// Resolves (the system resolver, off the runtime, as the client did) and tries each
    /// address in turn; the last error if none accepts.
    async fn connect(&self) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // As the client did: the request goes out in one segment anyway.
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
    }
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    ToEnd,
}

const INCOMPLETE_MESSAGE: &str = "connection closed before message completed";

/// The connection and what was read from it but not yet used (`buf[pos..]`).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    /// Reads more bytes after `buf`'s end; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(4096);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Parses one response head from the stream: its status and body framing.
    async fn read_head(&mut self, head_method: bool) -> Result<(u16, Framing), Failure> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[self.pos..]) {
                Ok(httparse::Status::Complete(len)) => {
                    let judged = judge_head(&response, head_method);
                    self.pos += len;
                    return judged.map_err(Failure::Malformed);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - self.pos >= MAX_HEAD_BYTES {
                        return Err(Failure::Malformed("message head is too large"));
                    }
                }
                Err(e) => return Err(Failure::Malformed(parse_error_text(e))),
            }
            if self.fill().await.map_err(Failure::Io)? == 0 {
                return Err(Failure::Malformed(INCOMPLETE_MESSAGE));
            }
        }
    }

    /// Takes up to `want` buffered bytes (reading when none are buffered) into `sink`;
    /// how many were taken, 0 at the end of the stream.
    async fn take(&mut self, want: usize, sink: &mut Option<&mut Vec<u8>>) -> io::Result<usize> {
        if self.pos == self.buf.len() && self.fill().await? == 0 {
            return Ok(0);
        }
        let n = want.min(self.buf.len() - self.pos);
        if let Some(sink) = sink.as_deref_mut() {
            sink.extend_from_slice(&self.buf[self.pos..self.pos + n]);
        }
        self.pos += n;
        Ok(n)
    }

    async fn read_exact_body(
        &mut self,
        len: u64,
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(), Failure> {
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            match self.take(want, &mut sink).await.map_err(Failure::Io)? {
                0 => return Err(Failure::Io(incomplete_body())),
                n => left -= n as u64,
            }
        }
        Ok(())
    }

    async fn read_to_end(
        &mut self,
        max: usize,
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(), Failure> {
        let mut read = 0;
        while read < max {
            match self
                .take(max - read, &mut sink)
                .await
                .map_err(Failure::Io)?
            {
                0 => break,
                n => read += n,
            }
        }
        Ok(())
    }

    /// Chunks until the last one and its trailer section, or until `max` body bytes.
    async fn read_chunked(
        &mut self,
        max: usize,
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(), Failure> {
        let mut read = 0;
        while read < max {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.pos..]) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.pos += len;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() - self.pos >= MAX_HEAD_BYTES {
                            return Err(Failure::Io(bad_chunk(
                                "Invalid chunk size line: Invalid Size",
                            )));
                        }
                        if self.fill().await.map_err(Failure::Io)? == 0 {
                            return Err(Failure::Io(incomplete_body()));
                        }
                    }
                    Err(_) => {
                        return Err(Failure::Io(bad_chunk(
                            "Invalid chunk size line: Invalid Size",
                        )));
                    }
                }
            };
            if size == 0 {
                return self.skip_trailers().await;
            }
            // The chunk's data (only as much as the limit still allows), then its CRLF.
            let mut left = size.min((max - read) as u64);
            let whole = left == size;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX);
                match self.take(want, &mut sink).await.map_err(Failure::Io)? {
                    0 => return Err(Failure::Io(incomplete_body())),
                    n => {
                        left -= n as u64;
                        read += n;
                    }
                }
            }
            if whole {
                self.expect_crlf().await?;
            }
        }
        Ok(())
    }

    async fn expect_crlf(&mut self) -> Result<(), Failure> {
        while self.buf.len() - self.pos < 2 {
            if self.fill().await.map_err(Failure::Io)? == 0 {
                return Err(Failure::Io(incomplete_body()));
            }
        }
        if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
            return Err(Failure::Io(bad_chunk("Invalid chunk body CR")));
        }
        self.pos += 2;
        Ok(())
    }

    /// The trailer section after the last chunk: header lines up to an empty line.
    async fn skip_trailers(&mut self) -> Result<(), Failure> {
        loop {
            match self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.pos += 2;
                    return Ok(());
                }
                Some(at) => self.pos += at + 2,
                None => {
                    if self.buf.len() - self.pos >= MAX_HEAD_BYTES {
                        return Err(Failure::Io(bad_chunk("chunk trailers bytes too large")));
                    }
                    if self.fill().await.map_err(Failure::Io)? == 0 {
                        return Err(Failure::Io(incomplete_body()));
                    }
                }
            }
        }
    }
}

/// Status and framing of a parsed head, as hyper's client decides them.
fn judge_head(
    response: &httparse::Response<'_, '_>,
    head_method: bool,
) -> Result<(u16, Framing), &'static str> {
    let status = response.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err("invalid HTTP status-code parsed");
    }
    if matches!(status, 100..=199 | 204 | 304) || head_method {
        return Ok((status, Framing::None));
    }
    let named = |name: &'static str| {
        response
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    if let Some(last) = named("transfer-encoding").next_back() {
        if response.version == Some(0) {
            return Err("unexpected transfer-encoding parsed");
        }
        let chunked = last
            .value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok((
            status,
            if chunked {
                Framing::Chunked
            } else {
                Framing::ToEnd
            },
        ));
    }
    let mut length = None;
    for header in named("content-length") {
        for value in header.value.split(|b| *b == b',') {
            let parsed = std::str::from_utf8(value.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return Err("invalid content-length parsed"),
                (Some(n), Some(seen)) if n != seen => return Err("invalid content-length parsed"),
                (Some(n), _) => length = Some(n),
            }
        }
    }
    Ok((status, length.map_or(Framing::ToEnd, Framing::Length)))
}

/// hyper's words for what `httparse` rejects in a response head.
fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName
        | httparse::Error::HeaderValue
        | httparse::Error::NewLine
        | httparse::Error::Token => "invalid HTTP header parsed",
        httparse::Error::Status => "invalid HTTP status-code parsed",
        httparse::Error::TooManyHeaders => "message head is too large",
        httparse::Error::Version => "invalid HTTP version parsed",
    }
}

fn incomplete_body() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "end of file before message length reached",
    )
}

fn bad_chunk(text: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plain(url: &str, method: &str) -> PlainHttp {
        let url = reqwest::Url::parse(url).unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        PlainHttp::new(&url, &method, &reqwest::header::HeaderMap::new()).unwrap()
    }

    /// Ensures `Host` leaves out the default port 80 and keeps IPv6 brackets, while the
    /// address connected to is the bare host and the real port.
    #[test]
    fn host_header_and_address() {
        let agent = concat!("failoverd-probe/", env!("CARGO_PKG_VERSION"));
        let p = plain("http://case-api.child-welfare:80/healthz#frag", "GET");
        assert_eq!(
            String::from_utf8_lossy(&p.head),
            format!(
                "GET /healthz HTTP/1.1\r\naccept: */*\r\nuser-agent: {agent}\r\n\
                 host: case-api.child-welfare\r\n\r\n"
            )
        );
        assert_eq!((p.host.as_str(), p.port), ("case-api.child-welfare", 80));
        let p = plain("http://[::1]:8080/", "HEAD");
        assert!(String::from_utf8_lossy(&p.head).contains("\r\nhost: [::1]:8080\r\n"));
        assert_eq!(
            (p.host.as_str(), p.port, p.head_method),
            ("::1", 8080, true)
        );
    }

    /// Ensures only `http://` URLs take the plain path.
    #[test]
    fn https_is_not_plain() {
        let url = reqwest::Url::parse("https://example.test/").unwrap();
        let none = PlainHttp::new(
            &url,
            &reqwest::Method::GET,
            &reqwest::header::HeaderMap::new(),
        );
        assert!(none.is_none());
    }
}
