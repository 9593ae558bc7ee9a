//! A small L7 routing proxy on loopback that follows a VirtualService in a routing store, the
//! way Envoy follows istiod: so a test measures what users feel, not just what failoverd wrote.
//!
//! It follows either store failoverd writes ([`RouteSource`]):
//!
//! - the file store: the proxy polls the VirtualService file's modification time every
//!   [`POLL_EVERY`] and parses it with serde-saphyr (the store renames a complete file into
//!   place, so a poll never sees half a write);
//! - a Kubernetes API server (the emulator, `crate::kube_emulator`): the proxy does what istiod
//!   does, over the emulator's real HTTP API rather than its in-process handle: a list of the
//!   VirtualService (`fieldSelector=metadata.name=NAME`) for the current object and its
//!   resourceVersion, then a watch from that resourceVersion (with bookmarks). A watch that
//!   ends cleanly (its `timeoutSeconds`) is resumed from the last resourceVersion seen; any
//!   error (connection refused or reset, an `ERROR` event such as `410 Gone`, a bad answer,
//!   no data for [`WATCH_IDLE`]) is followed by a re-list after [`POLL_EVERY`]. A watch rather
//!   than polling `Emulator::get`: a change reaches the proxy when the API server emits it, the
//!   way a mesh learns of it, and the API server's own faults (restart, compaction) reach the
//!   proxy too.
//!
//! Either way, the named HTTP route's destinations and weights ([`route_of`], shared by both
//! sources) are applied after a configurable push delay (istiod's push, default none), and
//! every applied route is kept in the proxy's [`Proxy::history`]. Each incoming request goes to
//! one destination picked by weight; `host` + `subset` map to a stand-in's loopback address
//! through a table the test supplies. An unknown destination answers 503 (Envoy's "no healthy
//! upstream"), an upstream that refuses answers 503, one that does not answer within the
//! upstream timeout answers 504. Every upstream request uses a fresh connection, so a stand-in
//! that closes its listener fails the very next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often the proxy checks the VirtualService file for a change, and how long it waits
/// before re-listing after a failed Kubernetes list or watch.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// A watch that delivers nothing (not even a bookmark, which the emulator sends every 10 s) for
/// this long is treated as dead and replaced by a re-list.
pub const WATCH_IDLE: Duration = Duration::from_secs(30);
/// Largest request head or upstream response the proxy handles (stand-in answers are tiny).
const MAX_MESSAGE: usize = 64 * 1024;
/// Largest list answer or single watch line read from the API server.
const MAX_API_BODY: usize = 8 * 1024 * 1024;
/// Bound on connecting to the API server and reading an answer's head.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// `timeoutSeconds` asked of each watch (the server ends it then; the proxy resumes it).
const WATCH_SECONDS: u64 = 300;
/// The VirtualService API path prefix (the version the daemon writes).
const VS_API: &str = "/apis/networking.istio.io/v1";

/// One weighted destination as the proxy applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `destination.host`.
    pub host: String,
    /// `destination.subset`, if any.
    pub subset: Option<String>,
    /// `weight` (100 when the route has a single destination without one).
    pub weight: u32,
}

/// Where the proxy reads the VirtualService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteSource {
    /// The file store's VirtualService file (`<store>/<namespace>/<name>.yaml`), polled.
    File(PathBuf),
    /// A VirtualService in a Kubernetes API server speaking plain HTTP (the emulator), listed
    /// and watched.
    Kube {
        /// `http://HOST:PORT`, e.g. [`crate::kube_emulator::Emulator::url`].
        base_url: String,
        /// Bearer token sent with every request; None sends no `Authorization` header.
        token: Option<String>,
        /// The VirtualService's namespace.
        namespace: String,
        /// The VirtualService's name.
        name: String,
    },
}

impl RouteSource {
    /// The VirtualService `namespace/name` in `emu`, read with the emulator's admin token.
    pub fn emulator(emu: &crate::kube_emulator::Emulator, namespace: &str, name: &str) -> Self {
        RouteSource::Kube {
            base_url: emu.url(),
            token: Some(crate::kube_emulator::ADMIN_TOKEN.to_string()),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// How to build a [`Proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the VirtualService is read.
    pub source: RouteSource,
    /// `http[].name` of the route to follow; None: the first route.
    pub route: Option<String>,
    /// `(host, subset)` to upstream address.
    pub upstreams: HashMap<(String, Option<String>), SocketAddr>,
    /// Delay between seeing a change and applying it (istiod's push).
    pub push_delay: Duration,
    /// How long an upstream may take to answer before the proxy answers 504.
    pub upstream_timeout: Duration,
}

impl ProxyConfig {
    /// A config following the VirtualService file `vs_path`, with no push delay and a 1 s
    /// upstream timeout.
    pub fn new(vs_path: PathBuf, route: Option<String>) -> Self {
        Self::with_source(RouteSource::File(vs_path), route)
    }

    /// A config following `source`, with no push delay and a 1 s upstream timeout.
    pub fn with_source(source: RouteSource, route: Option<String>) -> Self {
        Self {
            source,
            route,
            upstreams: HashMap::new(),
            push_delay: Duration::ZERO,
            upstream_timeout: Duration::from_secs(1),
        }
    }

    /// Maps `host` (+ `subset`) to a stand-in's address.
    pub fn upstream(mut self, host: &str, subset: Option<&str>, addr: SocketAddr) -> Self {
        self.upstreams
            .insert((host.to_string(), subset.map(str::to_string)), addr);
        self
    }
}

/// The route in force and a history of when each route was applied.
#[derive(Debug, Default)]
struct Table {
    current: Vec<Destination>,
    applied: Vec<(std::time::Instant, Vec<Destination>)>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Reads the VirtualService once (it must exist and parse), then listens on a free
    /// loopback port and follows the source.
    pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Self> {
        let route = cfg.route.as_deref();
        // For the Kubernetes source, the list's resourceVersion is where the watch starts, so
        // no change between this read and the watch is missed.
        let (first, list_rv) = match &cfg.source {
            RouteSource::File(path) => (read_route(path, route)?, None),
            RouteSource::Kube { .. } => {
                let (obj, rv) = kube_list(&cfg.source).await?;
                let obj = obj.with_context(|| format!("{} not found", describe(&cfg.source)))?;
                let first = route_of(&obj, route)
                    .with_context(|| format!("parsing {}", describe(&cfg.source)))?;
                (first, Some(rv))
            }
        };
        let table = Arc::new(Mutex::new(Table {
            current: first.clone(),
            applied: vec![(std::time::Instant::now(), first.clone())],
        }));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cfg = Arc::new(cfg);
        let follower = Follower {
            cfg: cfg.clone(),
            table: table.clone(),
            seen: first,
        };
        let watcher = match list_rv {
            None => tokio::spawn(follow_file(follower)),
            Some(rv) => tokio::spawn(follow_kube(follower, rv)),
        };
        let t = table.clone();
        let server = tokio::spawn(async move {
            let mut seed = seed();
            while let Ok((conn, _)) = listener.accept().await {
                seed = xorshift(seed);
                tokio::spawn(handle(conn, cfg.clone(), t.clone(), seed));
            }
        });
        Ok(Self {
            addr,
            table,
            tasks: vec![watcher, server],
        })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The destinations in force now.
    pub fn current(&self) -> Vec<Destination> {
        self.table
            .lock()
            .map(|t| t.current.clone())
            .unwrap_or_default()
    }

    /// Every route applied so far, with when (the first is the one read at start).
    pub fn history(&self) -> Vec<(std::time::Instant, Vec<Destination>)> {
        self.table
            .lock()
            .map(|t| t.applied.clone())
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Parses the route's destinations out of a VirtualService file.
pub fn read_route(path: &std::path::Path, route: Option<&str>) -> anyhow::Result<Vec<Destination>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let vs: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    route_of(&vs, route).with_context(|| format!("{}", path.display()))
}

/// The destinations of the HTTP route named `route` (None: the first) of a VirtualService
/// object, however it was read (YAML file or API server JSON).
pub fn route_of(vs: &Value, route: Option<&str>) -> anyhow::Result<Vec<Destination>> {
    let routes = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .context("no spec.http")?;
    let r = match route {
        Some(name) => routes
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name)),
        None => routes.first(),
    }
    .with_context(|| format!("no http route {route:?}"))?;
    let dests = r
        .get("route")
        .and_then(Value::as_array)
        .context("http route without `route`")?;
    let single = dests.len() == 1;
    dests
        .iter()
        .map(|d| {
            let host = d
                .pointer("/destination/host")
                .and_then(Value::as_str)
                .context("destination without host")?;
            let subset = d
                .pointer("/destination/subset")
                .and_then(Value::as_str)
                .map(str::to_string);
            let weight = match d.get("weight").and_then(Value::as_u64) {
                Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
                None if single => 100,
                None => 0,
            };
            Ok(Destination {
                host: host.to_string(),
                subset,
                weight,
            })
        })
        .collect()
}

/// What both followers share: the config, the table, and the last route seen at the source
/// (which may not be applied yet while its push delay runs).
struct Follower {
    cfg: Arc<ProxyConfig>,
    table: Arc<Mutex<Table>>,
    seen: Vec<Destination>,
}

impl Follower {
    /// Takes a route read from the source: a new one is applied `push_delay` later (and
    /// recorded in the history); the same one again is ignored.
    fn offer(&mut self, route: Vec<Destination>) {
        if route == self.seen {
            return;
        }
        self.seen = route.clone();
        let table = self.table.clone();
        let delay = self.cfg.push_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut t) = table.lock() {
                t.current = route.clone();
                t.applied.push((std::time::Instant::now(), route));
            }
        });
    }

    /// Offers the route of a VirtualService object; one without a usable route keeps the
    /// route in force (as Envoy keeps its last good config when a push is rejected).
    fn offer_object(&mut self, vs: &Value) {
        if let Ok(route) = route_of(vs, self.cfg.route.as_deref()) {
            self.offer(route);
        }
    }
}

/// Polls the file; a file that does not parse keeps the route in force.
async fn follow_file(mut f: Follower) {
    let RouteSource::File(path) = f.cfg.source.clone() else {
        return;
    };
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&path);
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        if let Ok(route) = read_route(&path, f.cfg.route.as_deref()) {
            f.offer(route);
        }
    }
}

/// Lists and watches the VirtualService, starting with a watch from `rv` (the resourceVersion
/// of the list [`Proxy::start`] read).
async fn follow_kube(mut f: Follower, rv: String) {
    let source = f.cfg.source.clone();
    let mut rv = Some(rv);
    loop {
        let from = match rv.take() {
            Some(rv) => rv,
            None => {
                tokio::time::sleep(POLL_EVERY).await;
                match kube_list(&source).await {
                    Ok((obj, list_rv)) => {
                        // Deleted while nobody watched: keep the route in force.
                        if let Some(obj) = obj {
                            f.offer_object(&obj);
                        }
                        list_rv
                    }
                    Err(_) => continue,
                }
            }
        };
        // A clean end resumes from the last resourceVersion; anything else re-lists.
        rv = kube_watch(&source, &from, &mut f).await.ok();
    }
}

fn describe(source: &RouteSource) -> String {
    match source {
        RouteSource::File(p) => p.display().to_string(),
        RouteSource::Kube {
            base_url,
            namespace,
            name,
            ..
        } => format!("VirtualService {namespace}/{name} at {base_url}"),
    }
}

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
async fn kube_list(source: &RouteSource) -> anyhow::Result<(Option<Value>, String)> {
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
async fn kube_watch(source: &RouteSource, from: &str, f: &mut Follower) -> anyhow::Result<String> {
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

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    nanos | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Picks a destination by weight with `roll` (any u64).
pub fn pick(dests: &[Destination], roll: u64) -> Option<&Destination> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut r = roll % total;
    for d in dests {
        let w = u64::from(d.weight);
        if r < w {
            return Some(d);
        }
        r -= w;
    }
    None
}

async fn handle(mut conn: TcpStream, cfg: Arc<ProxyConfig>, table: Arc<Mutex<Table>>, roll: u64) {
    let Some(head) = read_head(&mut conn).await else {
        return;
    };
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let dests = table.lock().map(|t| t.current.clone()).unwrap_or_default();
    let answer = match pick(&dests, roll) {
        None => plain(503, "no healthy upstream (empty route)"),
        Some(d) => match cfg.upstreams.get(&(d.host.clone(), d.subset.clone())) {
            None => plain(
                503,
                &format!("no healthy upstream ({} {:?})", d.host, d.subset),
            ),
            Some(up) => forward(*up, &path, cfg.upstream_timeout).await,
        },
    };
    let _ = conn.write_all(&answer).await;
    let _ = conn.shutdown().await;
}

/// Reads a request head (bounded in size and time).
async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            if buf.len() > MAX_MESSAGE {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

async fn forward(up: SocketAddr, path: &str, timeout: Duration) -> Vec<u8> {
    let exchange = async {
        let mut s = match TcpStream::connect(up).await {
            Ok(s) => s,
            // Envoy answers a refused connection with 503 (upstream connect error).
            Err(e) => return plain(503, &format!("upstream connect error: {e}")),
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {up}\r\nConnection: close\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()).await {
            return plain(503, &format!("upstream reset: {e}"));
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_MESSAGE {
                        break;
                    }
                }
                Err(e) => return plain(503, &format!("upstream reset: {e}")),
            }
        }
        if buf.is_empty() {
            plain(503, "upstream closed without answering")
        } else {
            buf
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => plain(504, "upstream request timeout"),
    }
}

fn plain(code: u16, body: &str) -> Vec<u8> {
    let reason = match code {
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
