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
//! Either way, the whole `http[]` is compiled ([`http_routes_of`]) and applied after a
//! configurable push delay (istiod's push, default none). Each incoming request is served the
//! way Envoy serves it: the first `http[]` route it matches ([`matching`]: `uri`, `method`,
//! `authority`, `headers` with exact/prefix/regex; an entry with a field this proxy does not
//! implement never matches and is listed in [`Proxy::unsupported`]); no match answers 404. The
//! route's `fault` ([`fault`]) delays and/or aborts the request (`httpStatus`, or `grpcStatus`
//! as a gRPC trailers-only answer), each for its own percentage, rolled with a seedable RNG
//! ([`ProxyConfig::fault_seed`]). Otherwise the request goes to one of the route's
//! destinations picked by weight; `host` + `subset` map to a stand-in's loopback address
//! through a table the test supplies. The configured route ([`ProxyConfig::route`], the one
//! failoverd rewrites) is what [`Proxy::current`] and [`Proxy::history`] report; every applied
//! `http[]` is kept in [`Proxy::http_history`]. An unknown destination answers 503 (Envoy's
//! "no healthy upstream"), an upstream that refuses answers 503, one that does not answer
//! within the upstream timeout answers 504. Every upstream request uses a fresh connection, so a stand-in
//! that closes its listener fails the very next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod fault;
mod kube;
pub mod matching;
pub mod routes;
mod serve;

pub use fault::{Abort, Decision, Fault, grpc_code};
pub use matching::{MatchEntry, Request, StringMatch};
pub use routes::{HttpRoute, HttpRoutes, http_routes_of};

/// How often the proxy checks the VirtualService file for a change, and how long it waits
/// before re-listing after a failed Kubernetes list or watch.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// A watch that delivers nothing (not even a bookmark, which the emulator sends every 10 s) for
/// this long is treated as dead and replaced by a re-list.
pub const WATCH_IDLE: Duration = Duration::from_secs(30);
/// Largest request head or upstream response the proxy handles (stand-in answers are tiny).
const MAX_MESSAGE: usize = 64 * 1024;

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
    /// `http[].name` of the route failoverd rewrites, reported by [`Proxy::current`] and
    /// [`Proxy::history`] (None: the first route). Requests are routed by the whole `http[]`.
    pub route: Option<String>,
    /// `(host, subset)` to upstream address.
    pub upstreams: HashMap<(String, Option<String>), SocketAddr>,
    /// Delay between seeing a change and applying it (istiod's push).
    pub push_delay: Duration,
    /// How long an upstream may take to answer before the proxy answers 504.
    pub upstream_timeout: Duration,
    /// Seed of the RNG that rolls fault percentages (None: seeded from the clock).
    pub fault_seed: Option<u64>,
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
            fault_seed: None,
        }
    }

    /// Rolls fault percentages with an RNG seeded with `seed` (a repeatable sequence).
    pub fn fault_seed(mut self, seed: u64) -> Self {
        self.fault_seed = Some(seed);
        self
    }

    /// Maps `host` (+ `subset`) to a stand-in's address.
    pub fn upstream(mut self, host: &str, subset: Option<&str>, addr: SocketAddr) -> Self {
        self.upstreams
            .insert((host.to_string(), subset.map(str::to_string)), addr);
        self
    }
}

/// The routes in force and their history.
#[derive(Debug, Default)]
struct Table {
    /// The configured route's destinations in force.
    current: Vec<Destination>,
    /// Each configured route applied, with when (a change elsewhere in `http[]` is not one).
    applied: Vec<(Instant, Vec<Destination>)>,
    /// The whole `http[]` in force.
    routes: Arc<HttpRoutes>,
    /// Each `http[]` applied, with when.
    http_applied: Vec<(Instant, Arc<HttpRoutes>)>,
    /// Every unsupported field met in an applied `http[]`, each once.
    unsupported: Vec<String>,
    /// Why objects read from the source were refused (the routes in force were kept).
    rejected: Vec<String>,
}

impl Table {
    fn apply(&mut self, routes: Arc<HttpRoutes>, named: Option<Vec<Destination>>) {
        let now = Instant::now();
        for u in &routes.unsupported {
            if !self.unsupported.contains(u) {
                self.unsupported.push(u.clone());
            }
        }
        self.routes = routes.clone();
        self.http_applied.push((now, routes));
        if let Some(named) = named {
            self.current = named.clone();
            self.applied.push((now, named));
        }
    }
}

/// Requests the proxy answered, by outcome (counted since start).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    unmatched: AtomicU64,
    delayed: AtomicU64,
    aborted: AtomicU64,
}

/// A snapshot of [`Proxy::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests whose head was read.
    pub requests: u64,
    /// Answered 404 because no `http[]` route matched.
    pub unmatched: u64,
    /// Delayed by a fault.
    pub delayed: u64,
    /// Aborted by a fault.
    pub aborted: u64,
}

/// What the request handlers share.
#[derive(Debug)]
struct Shared {
    cfg: Arc<ProxyConfig>,
    table: Arc<Mutex<Table>>,
    rng: Mutex<StdRng>,
    stats: Counters,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Reads the VirtualService once (it must exist, parse, compile and have the configured
    /// route), then listens on a free loopback port and follows the source.
    pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Self> {
        // For the Kubernetes source, the list's resourceVersion is where the watch starts, so
        // no change between this read and the watch is missed.
        // For the file source, the file's stamp is taken before the read, so a change made
        // between this read and the follower's first poll is seen by that poll.
        let stamp_before = match &cfg.source {
            RouteSource::File(path) => file_stamp(path),
            RouteSource::Kube { .. } => None,
        };
        let (obj, list_rv) = match &cfg.source {
            RouteSource::File(path) => (read_virtual_service(path)?, None),
            RouteSource::Kube { .. } => {
                let (obj, rv) = kube::kube_list(&cfg.source).await?;
                let obj = obj.with_context(|| format!("{} not found", describe(&cfg.source)))?;
                (obj, Some(rv))
            }
        };
        let (routes, first) = compile(&obj, cfg.route.as_deref())
            .with_context(|| format!("parsing {}", describe(&cfg.source)))?;
        let mut table = Table::default();
        table.apply(Arc::new(routes), Some(first.clone()));
        let table = Arc::new(Mutex::new(table));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cfg = Arc::new(cfg);
        let follower = Follower {
            cfg: cfg.clone(),
            table: table.clone(),
            seen_http: obj.pointer("/spec/http").cloned(),
            seen: first,
        };
        let watcher = match list_rv {
            None => tokio::spawn(follow_file(follower, stamp_before)),
            Some(rv) => tokio::spawn(follow_kube(follower, rv)),
        };
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(cfg.fault_seed.unwrap_or_else(seed))),
            cfg,
            table,
            stats: Counters::default(),
        });
        let s = shared.clone();
        let server = tokio::spawn(async move {
            let mut seed = seed();
            while let Ok((conn, _)) = listener.accept().await {
                seed = xorshift(seed);
                tokio::spawn(serve::handle(conn, s.clone(), seed));
            }
        });
        Ok(Self {
            addr,
            shared,
            tasks: vec![watcher, server],
        })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn read<T: Default>(&self, f: impl FnOnce(&Table) -> T) -> T {
        self.shared.table.lock().map(|t| f(&t)).unwrap_or_default()
    }

    /// The configured route's destinations in force now.
    pub fn current(&self) -> Vec<Destination> {
        self.read(|t| t.current.clone())
    }

    /// Every configured route applied so far, with when (the first is the one read at start).
    /// A change elsewhere in `http[]` (a fault route added or removed) is not an entry.
    pub fn history(&self) -> Vec<(Instant, Vec<Destination>)> {
        self.read(|t| t.applied.clone())
    }

    /// The whole `http[]` in force now.
    pub fn routes(&self) -> Arc<HttpRoutes> {
        self.read(|t| t.routes.clone())
    }

    /// Every `http[]` applied so far, with when (the first is the one read at start).
    pub fn http_history(&self) -> Vec<(Instant, Arc<HttpRoutes>)> {
        self.read(|t| t.http_applied.clone())
    }

    /// Every match field this proxy does not implement met in an applied `http[]`, by path
    /// (`http[0].match[0].queryParams`), each once: a test asserts this is empty.
    pub fn unsupported(&self) -> Vec<String> {
        self.read(|t| t.unsupported.clone())
    }

    /// Why objects read from the source were refused (bad regex, bad fault, missing route...);
    /// the routes in force were kept each time.
    pub fn rejected(&self) -> Vec<String> {
        self.read(|t| t.rejected.clone())
    }

    /// Requests answered so far, by outcome.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            aborted: c.aborted.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads and parses a VirtualService file (YAML).
pub fn read_virtual_service(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Parses the route's destinations out of a VirtualService file.
pub fn read_route(path: &std::path::Path, route: Option<&str>) -> anyhow::Result<Vec<Destination>> {
    let vs = read_virtual_service(path)?;
    route_of(&vs, route).with_context(|| format!("{}", path.display()))
}

/// The destinations of the HTTP route named `route` (None: the first) of a VirtualService
/// object, however it was read (YAML file or API server JSON). With several routes of that
/// name, the first.
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
    destinations(r)
}

/// The weighted destinations of one `http[]` route object.
fn destinations(r: &Value) -> anyhow::Result<Vec<Destination>> {
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

/// The compiled `http[]` and the configured route's destinations of one object.
fn compile(vs: &Value, route: Option<&str>) -> anyhow::Result<(HttpRoutes, Vec<Destination>)> {
    Ok((http_routes_of(vs)?, route_of(vs, route)?))
}

/// What both followers share: the config, the table, and the last `http[]` and configured
/// route seen at the source (which may not be applied yet while its push delay runs).
struct Follower {
    cfg: Arc<ProxyConfig>,
    table: Arc<Mutex<Table>>,
    seen_http: Option<Value>,
    seen: Vec<Destination>,
}

impl Follower {
    /// Takes a VirtualService read from the source: a changed `http[]` is applied
    /// `push_delay` later (recorded in the histories); the same again is ignored. One that
    /// does not compile or lacks the configured route keeps the routes in force (as Envoy
    /// keeps its last good config when a push is rejected) and is noted in `rejected`.
    fn offer_object(&mut self, vs: &Value) {
        let http = vs.pointer("/spec/http").cloned();
        if http == self.seen_http {
            return;
        }
        let (routes, named) = match compile(vs, self.cfg.route.as_deref()) {
            Ok(c) => c,
            Err(e) => return self.reject(&e),
        };
        self.seen_http = http;
        let named = (named != self.seen).then(|| {
            self.seen = named.clone();
            named
        });
        let table = self.table.clone();
        let delay = self.cfg.push_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut t) = table.lock() {
                t.apply(Arc::new(routes), named);
            }
        });
    }
}

impl Follower {
    /// Notes why an object was refused (once per run of the same reason).
    fn reject(&self, e: &anyhow::Error) {
        if let Ok(mut t) = self.table.lock() {
            let why = format!("{e:#}");
            if t.rejected.last() != Some(&why) {
                t.rejected.push(why);
            }
        }
    }
}

/// What tells one version of the route file from the next: its modification time, size and
/// inode. The time alone is not enough: it ticks coarsely (a jiffy), and two writes renamed
/// into place within one tick differ in inode.
type FileStamp = (SystemTime, u64, u64);

fn file_stamp(p: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Polls the file; a file that does not parse keeps the routes in force. `seen`: the stamp
/// of the version [`Proxy::start`] read (taken before that read).
async fn follow_file(mut f: Follower, mut seen: Option<FileStamp>) {
    let RouteSource::File(path) = f.cfg.source.clone() else {
        return;
    };
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        let now = file_stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match read_virtual_service(&path) {
            Ok(vs) => f.offer_object(&vs),
            Err(e) => f.reject(&e),
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
                match kube::kube_list(&source).await {
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
        rv = kube::kube_watch(&source, &from, &mut f).await.ok();
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

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
