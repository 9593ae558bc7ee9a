//! The proxy's Kubernetes client: list and watch one VirtualService over the API server's
//! plain HTTP/1.1 API (the emulator), the way istiod does.

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Follower, MAX_MESSAGE, RouteSource, WATCH_IDLE};

/// Largest list answer or single watch line read from the API server.
const MAX_API_BODY: usize = 8 * 1024 * 1024;
/// Bound on connecting to the API server and reading an answer's head.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// `timeoutSeconds` asked of each watch (the server ends it then; the proxy resumes it).
const WATCH_SECONDS: u64 = 300;
/// The VirtualService API path prefix (the version the daemon writes).
const VS_API: &str = "/apis/networking.istio.io/v1";

/// The collection path and query for `source` (a Kube source), with `extra` query pairs.
fn kube_path(source: &RouteSource, extra: &[(&str, &str)]) -> anyhow::Result<String> {
    let RouteSource::Kube {
        namespace, name, ..
    } = source
    else {
        bail!("not a Kubernetes source");
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("fieldSelector", &format!("metadata.name={name}"));
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    let ns: String = form_urlencoded::byte_serialize(namespace.as_bytes()).collect();
    Ok(format!(
        "{VS_API}/namespaces/{ns}/virtualservices?{}",
        q.finish()
    ))
}

/// Lists the VirtualService: the object (None when it does not exist) and the list's
/// resourceVersion.
pub(super) async fn kube_list(source: &RouteSource) -> anyhow::Result<(Option<Value>, String)> {
    let path = kube_path(source, &[])?;
    let mut body = api_get(source, &path).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_API_BODY {
            bail!("list answer larger than {MAX_API_BODY} bytes");
        }
    }
    let list: Value = serde_json::from_slice(&bytes).context("parsing the list answer")?;
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .context("list without metadata.resourceVersion")?
        .to_string();
    let item = list
        .get("items")
        .and_then(Value::as_array)
        .context("list without items")?
        .first()
        .cloned();
    Ok((item, rv))
}

/// Watches from `from` and offers every ADDED / MODIFIED object. Returns the last
/// resourceVersion seen when the server ends the watch cleanly; an error otherwise.
pub(super) async fn kube_watch(
    source: &RouteSource,
    from: &str,
    f: &mut Follower,
) -> anyhow::Result<String> {
    let timeout = WATCH_SECONDS.to_string();
    let path = kube_path(
        source,
        &[
            ("watch", "true"),
            ("resourceVersion", from),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", &timeout),
        ],
    )?;
    let mut body = api_get(source, &path).await?;
    let mut rv = from.to_string();
    let mut line = Vec::new();
    loop {
        let chunk = tokio::time::timeout(WATCH_IDLE, body.next())
            .await
            .map_err(|_| anyhow!("watch idle for {WATCH_IDLE:?}"))??;
        let Some(chunk) = chunk else {
            return Ok(rv);
        };
        line.extend_from_slice(&chunk);
        while let Some(end) = line.iter().position(|b| *b == b'\n') {
            let one: Vec<u8> = line.drain(..=end).collect();
            if one.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: Value = serde_json::from_slice(&one).context("parsing a watch event")?;
            let object = &ev["object"];
            if let Some(v) = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                rv = v.to_string();
            }
            match ev["type"].as_str() {
                Some("ADDED" | "MODIFIED") => f.offer_object(object),
                // Deleted: keep the route in force; a later ADDED brings a new one.
                Some("DELETED" | "BOOKMARK") => {}
                Some("ERROR") => bail!(
                    "watch error: {}",
                    object["message"].as_str().unwrap_or("(no message)")
                ),
                other => bail!("unknown watch event type {other:?}"),
            }
        }
        if line.len() > MAX_API_BODY {
            bail!("watch line larger than {MAX_API_BODY} bytes");
        }
    }
}

/// Sends `GET path` to the source's API server; fails unless it answers 200.
async fn api_get(source: &RouteSource, path: &str) -> anyhow::Result<ApiBody> {
    let RouteSource::Kube {
        base_url, token, ..
    } = source
    else {
        bail!("not a Kubernetes source");
    };
    let host = base_url
        .strip_prefix("http://")
        .with_context(|| format!("{base_url}: only plain http:// is supported"))?
        .trim_end_matches('/');
    let head = async {
        let mut s = TcpStream::connect(host)
            .await
            .with_context(|| format!("connecting to {host}"))?;
        let auth = token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_MESSAGE {
                bail!("answer head larger than {MAX_MESSAGE} bytes");
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the answer's head");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let rest = buf.split_off(end + 4);
        anyhow::Ok((s, head, rest))
    };
    let (stream, head, rest) = tokio::time::timeout(API_TIMEOUT, head)
        .await
        .map_err(|_| anyhow!("no answer from {host} within {API_TIMEOUT:?}"))??;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .context("malformed status line")?;
    let mut framing = Framing::Close;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            framing = Framing::Chunked;
        } else if k == "content-length" && !matches!(framing, Framing::Chunked) {
            framing = Framing::Length(v.parse().context("bad content-length")?);
        }
    }
    let mut body = ApiBody {
        stream,
        buf: rest,
        framing,
    };
    if status != 200 {
        let mut text = Vec::new();
        while let Ok(Some(c)) = body.next().await {
            text.extend_from_slice(&c);
            if text.len() > MAX_MESSAGE {
                break;
            }
        }
        bail!(
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    Ok(body)
}

/// How an answer's body ends.
#[derive(Debug)]
enum Framing {
    /// `Transfer-Encoding: chunked` (a watch, and most API answers).
    Chunked,
    /// `Content-Length` bytes still to read.
    Length(usize),
    /// Until the connection closes.
    Close,
}

/// An HTTP/1.1 answer's body, read as it arrives (a watch never ends on its own).
#[derive(Debug)]
struct ApiBody {
    stream: TcpStream,
    /// Bytes read but not yet returned.
    buf: Vec<u8>,
    framing: Framing,
}

impl ApiBody {
    /// Reads more into `buf`; false at end of stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next piece of the body; None at its end. A chunked body cut short is an error.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        match self.framing {
            Framing::Close => {
                if self.buf.is_empty() && !self.fill().await? {
                    return Ok(None);
                }
                Ok(Some(std::mem::take(&mut self.buf)))
            }
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                if self.buf.is_empty() && !self.fill().await? {
                    bail!("body cut short ({left} bytes missing)");
                }
                let n = left.min(self.buf.len());
                self.framing = Framing::Length(left - n);
                Ok(Some(self.buf.drain(..n).collect()))
            }
            Framing::Chunked => {
                let eol = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if self.buf.len() > MAX_MESSAGE {
                        bail!("chunk size line too long");
                    }
                    if !self.fill().await? {
                        bail!("chunked body cut short");
                    }
                };
                let size_line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .with_context(|| format!("bad chunk size {hex:?}"))?;
                if size > MAX_API_BODY {
                    bail!("chunk of {size} bytes");
                }
                if size == 0 {
                    // Trailers are not used by the API server; the body is complete.
                    self.framing = Framing::Length(0);
                    return Ok(None);
                }
                while self.buf.len() < eol + 2 + size + 2 {
                    if !self.fill().await? {
                        bail!("chunked body cut short");
                    }
                }
                let data = self.buf[eol + 2..eol + 2 + size].to_vec();
                self.buf.drain(..eol + 2 + size + 2);
                Ok(Some(data))
            }
        }
    }
}
