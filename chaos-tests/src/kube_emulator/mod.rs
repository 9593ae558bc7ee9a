//! A Kubernetes API server emulator for testing failoverd's Kubernetes routing store.
//!
//! It is an emulator, not an API server: an in-memory store behind plain HTTP on loopback that
//! speaks the parts of the Kubernetes REST protocol that kube-rs and `kubectl` use for the
//! resource types failoverd touches (Istio `VirtualService` / `DestinationRule`, `Lease`,
//! `Event`, `ConfigMap`, and the residency and policy facts it reads: cluster-scoped
//! `Namespace`, `PeerAuthentication`, `ServiceEntry`): discovery, create / get / list / update / patch (JSON, merge, apply) / delete,
//! watch (with bookmarks, `410 Gone`), one global etcd-like `resourceVersion`, optimistic
//! concurrency (`409 Conflict`), real `metav1.Status` bodies and messages, bearer-token
//! authentication with RBAC-like rules (401 / 403), and the validation a cluster with istiod
//! does (the official Istio CRD schema, then the `validation.istio.io` webhook rules; see
//! [`failoverd::routing::istio`]; the kinds failoverd only reads are checked by the
//! emulator's own rules, `handler/mesh_kinds.rs`).
//!
//! Tests drive it in-process: a competing writer ([`Emulator::mutate`],
//! [`Emulator::after_next_get`]), a record of every write ([`Emulator::writes`]) and fault
//! injection (latency, failed answers, dropped connections, a restart window with connection
//! refused).

mod handler;
mod resources;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

pub use handler::reviews::ReviewRecord;
pub use resources::Rule;

/// The token [`Emulator::start`] registers with full rights (identity `admin`).
pub const ADMIN_TOKEN: &str = "emulator-admin-token";
/// The identity recorded for out-of-band writes ([`Emulator::mutate`] and friends).
pub const COMPETING_WRITER: &str = "competing-writer";
/// How many watch events are kept for watches that resume from a resourceVersion; older
/// resourceVersions get `410 Gone` like a compacted etcd.
const HISTORY: usize = 2000;

/// Storage key: (group, plural, namespace, name).
pub(crate) type Key = (String, String, String, String);

/// One mutating request, as the emulator saw it.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// When the answer was produced.
    pub time: SystemTime,
    /// Who: the token's identity, or [`COMPETING_WRITER`].
    pub identity: String,
    /// `create`, `update`, `patch` or `delete`.
    pub verb: String,
    /// The request's Content-Type (None for DELETE and out-of-band writes).
    pub content_type: Option<String>,
    /// The resource's kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Object name (empty if the request named none).
    pub name: String,
    /// The object's resourceVersion after the request (None if it failed, and for deletes).
    pub resource_version: Option<String>,
    /// HTTP status code answered (injected faults included); 0 when the connection was
    /// closed without an answer ([`Emulator::drop_next`]).
    pub status: u16,
    /// The request body as sent.
    pub body: String,
}

/// A watch event as stored: the object in its storage version.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: &'static str,
    pub key: Key,
    pub object: Value,
}

type Hook = Box<dyn FnOnce(&mut Value) + Send>;

/// One reading request (`get`, `list` or `watch`) that passed authorization, as the
/// emulator saw it: tests count what a client costs the API server.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// When it arrived.
    pub time: SystemTime,
    /// `get`, `list` or `watch`.
    pub verb: String,
    /// The resource's kind.
    pub kind: String,
    /// Namespace (empty: all namespaces).
    pub namespace: String,
    /// Object name (empty for `list` and `watch`).
    pub name: String,
}

/// Identity and rules behind a token.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub user: String,
    pub rules: Vec<Rule>,
}

pub(crate) struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Arc<Event>>,
    /// Highest resourceVersion no longer in `history`.
    pub compacted: u64,
    pub tokens: HashMap<String, Identity>,
    /// Who a request without an Authorization header is (None: 401).
    pub anonymous: Option<Identity>,
    pub writes: Vec<WriteRecord>,
    pub reads: Vec<ReadRecord>,
    pub after_get: Vec<(Key, Hook)>,
    pub uid_seq: u64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("rv", &self.rv)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub latency: Duration,
    /// (remaining answers, status code, only for writes)
    pub fail: Option<(u32, u16, bool)>,
    pub drop: u32,
    /// Every request until then is answered 503 (an API server that is up but not ready).
    pub unready_until: Option<Instant>,
    /// Writes to objects of this name wait this long before they are handled (an admission
    /// webhook timing out, a lock held by another controller): the commit itself is late.
    pub stall_writes: HashMap<String, Duration>,
    /// Like `stall_writes`, but the write is handled even if its client has gone by then.
    pub stall_writes_detached: HashMap<String, Duration>,
    /// Writes to objects of this name are handled at once but answered this long after (the
    /// commit landed; its answer is late, as when a client gives up on a slow response).
    pub answer_writes_late: HashMap<String, Duration>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    pub events_tx: broadcast::Sender<Arc<Event>>,
    pub addr: SocketAddr,
    /// Bumped to close every connection and the listener (restart / shutdown).
    pub epoch: watch::Sender<u64>,
    pub stopped: watch::Sender<bool>,
    /// TokenReview and SubjectAccessReview tables (handler/reviews.rs).
    pub reviews: Mutex<handler::reviews::Reviews>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores (or deletes, with `None`) an object as a new resourceVersion and emits its watch
    /// event. Returns the stored object.
    pub(crate) fn commit(&self, st: &mut State, key: Key, object: Option<Value>) -> Value {
        st.rv += 1;
        let rv = st.rv;
        let (ev_kind, mut obj) = match object {
            Some(o) => {
                let k = if st.objects.contains_key(&key) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                (k, o)
            }
            None => ("DELETED", st.objects.remove(&key).unwrap_or(Value::Null)),
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if ev_kind != "DELETED" {
            st.objects.insert(key.clone(), obj.clone());
        }
        let ev = Arc::new(Event {
            rv,
            kind: ev_kind,
            key,
            object: obj.clone(),
        });
        st.history.push_back(ev.clone());
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.events_tx.send(ev);
        obj
    }

    pub(crate) fn new_uid(st: &mut State) -> String {
        st.uid_seq += 1;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            nanos,
            st.uid_seq & 0xffff,
            (st.uid_seq >> 16) & 0xfff,
            nanos & 0xfff,
            st.uid_seq
        )
    }
}

/// A running emulator. Dropping it stops the server and closes every connection.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stopped.send_replace(true);
        self.shared.epoch.send_modify(|e| *e += 1);
    }
}

impl Emulator {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Emulator> {
        Emulator::start_on("127.0.0.1:0".parse()?).await
    }

    /// Binds `addr` (a loopback address) and serves on the current tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Emulator> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let mut tokens = HashMap::new();
        tokens.insert(
            ADMIN_TOKEN.to_string(),
            Identity {
                user: "admin".into(),
                rules: vec![Rule::all()],
            },
        );
        let (events_tx, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1000,
                tokens,
                anonymous: Some(Identity {
                    user: "admin".into(),
                    rules: vec![Rule::all()],
                }),
                writes: Vec::new(),
                reads: Vec::new(),
                after_get: Vec::new(),
                uid_seq: 0,
            }),
            faults: Mutex::new(Faults::default()),
            events_tx,
            addr,
            epoch: watch::channel(0).0,
            stopped: watch::channel(false).0,
            reviews: Mutex::default(),
        });
        tokio::spawn(handler::accept_loop(shared.clone(), listener));
        Ok(Emulator { shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Writes a kubeconfig (cluster, user with bearer `token`, context with namespace
    /// `default`) that kube-rs and kubectl accept.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\n\
             contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    \
             namespace: default\ncurrent-context: emulator\nusers:\n- name: emulator\n  user:\n    \
             token: {}\n",
            self.url(),
            serde_json::to_string(token)?
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Registers a bearer token for `identity` (e.g. `system:serviceaccount:failoverd:failoverd`)
    /// allowed exactly what `rules` grant; anything else is answered 403. Replaces an existing
    /// token of that value.
    pub fn add_token(&self, token: &str, identity: &str, rules: Vec<Rule>) {
        self.shared.lock().tokens.insert(
            token.to_string(),
            Identity {
                user: identity.to_string(),
                rules,
            },
        );
    }

    /// Creates any supported object (apiVersion, kind, metadata.name, metadata.namespace
    /// required; namespace defaults to `default`, and is ignored for a Namespace) as an
    /// out-of-band write, without validation.
    /// Returns the stored object (with resourceVersion, uid, ...).
    pub fn seed(&self, obj: Value) -> anyhow::Result<Value> {
        let api_version = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let (res, _) = resources::by_kind(api_version, kind)
            .ok_or_else(|| anyhow!("unsupported apiVersion {api_version:?} kind {kind:?}"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("{kind}: metadata.name missing"))?
            .to_string();
        let ns = namespace_of(res, &obj);
        let key: Key = (
            res.group.into(),
            res.plural.into(),
            ns.clone(),
            name.clone(),
        );
        let mut st = self.shared.lock();
        if st.objects.contains_key(&key) {
            bail!("{} {ns}/{name} already exists", res.kind);
        }
        let mut obj = obj;
        handler::init_metadata(&mut st, &mut obj, res, &ns);
        let stored = self.shared.commit(&mut st, key, Some(obj));
        record(&mut st, "create", res.kind, &ns, &name, &stored);
        Ok(stored)
    }

    /// The object as stored (apiVersion of the storage version), if it exists. `ns` is
    /// ignored for a Namespace.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (res, version) = resources::by_kind(api_version, kind)?;
        let ns = if res.namespaced { ns } else { "" };
        let key: Key = (res.group.into(), res.plural.into(), ns.into(), name.into());
        let mut obj = self.shared.lock().objects.get(&key).cloned()?;
        obj["apiVersion"] = json!(res.api_version(&version));
        Some(obj)
    }

    /// Replaces an object wholesale as an out-of-band competing writer (keeps uid and
    /// creationTimestamp, bumps resourceVersion and generation on a spec change, emits a watch
    /// event, records a write by [`COMPETING_WRITER`]). Creates it if missing.
    pub fn set(&self, obj: Value) -> anyhow::Result<Value> {
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if self
            .get(obj["apiVersion"].as_str().unwrap_or(""), &kind, &ns, &name)
            .is_none()
        {
            return self.seed(obj);
        }
        self.mutate(&kind, &ns, &name, move |o| *o = obj)
    }

    /// Changes an object in place as an out-of-band competing writer (see [`Emulator::set`]).
    /// `kind` is any served kind (`Event` means events.k8s.io); `ns` is ignored for a
    /// Namespace.
    pub fn mutate(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        let res =
            resources::by_kind_only(kind).ok_or_else(|| anyhow!("unsupported kind {kind}"))?;
        let ns = if res.namespaced { ns } else { "" };
        let key: Key = (res.group.into(), res.plural.into(), ns.into(), name.into());
        let mut st = self.shared.lock();
        handler::competing_write(&self.shared, &mut st, res, key, f)
            .ok_or_else(|| anyhow!("{kind} {ns}/{name} not found"))
    }

    /// Deletes an object as an out-of-band writer (an operator's `kubectl delete`): emits the
    /// DELETED watch event and records a delete by [`COMPETING_WRITER`]. `ns` is ignored for a
    /// Namespace.
    pub fn remove(&self, kind: &str, ns: &str, name: &str) -> anyhow::Result<()> {
        let res =
            resources::by_kind_only(kind).ok_or_else(|| anyhow!("unsupported kind {kind}"))?;
        let ns = if res.namespaced { ns } else { "" };
        let key: Key = (res.group.into(), res.plural.into(), ns.into(), name.into());
        let mut st = self.shared.lock();
        if !st.objects.contains_key(&key) {
            bail!("{kind} {ns}/{name} not found");
        }
        let gone = self.shared.commit(&mut st, key, None);
        record(&mut st, "delete", res.kind, ns, name, &gone);
        Ok(())
    }

    /// Arms a competing write: right after the next GET of that object is served (the answer
    /// carries the old state), `f` changes it as [`Emulator::mutate`] would, so the client's
    /// following write holds a stale resourceVersion. One-shot.
    pub fn after_next_get(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value) + Send + 'static,
    ) -> anyhow::Result<()> {
        let res =
            resources::by_kind_only(kind).ok_or_else(|| anyhow!("unsupported kind {kind}"))?;
        let key: Key = (res.group.into(), res.plural.into(), ns.into(), name.into());
        self.shared.lock().after_get.push((key, Box::new(f)));
        Ok(())
    }

    /// Who a request without any `Authorization` header is. The default is `admin` with full
    /// rights, like the API server's old insecure port: kubectl (client-go) sends tokens to
    /// https servers only, and the emulator speaks plain http. `None` answers such requests
    /// 401. A wrong token is always 401.
    pub fn set_anonymous(&self, identity: Option<(&str, Vec<Rule>)>) {
        self.shared.lock().anonymous = identity.map(|(user, rules)| Identity {
            user: user.to_string(),
            rules,
        });
    }

    /// Every mutating request so far (and every out-of-band write), oldest first. Requests
    /// answered by fault injection are included with the injected status.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.shared.lock().writes.clone()
    }

    /// Every reading request so far (`get`, `list`, `watch`), oldest first: those refused
    /// before authorization (401, 403) are not included.
    pub fn reads(&self) -> Vec<ReadRecord> {
        self.shared.lock().reads.clone()
    }

    /// Every stored Event (events.k8s.io/v1 first, then core v1), as stored.
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut out: Vec<Value> = st
            .objects
            .iter()
            .filter(|(k, _)| k.1 == "events" && k.0 == "events.k8s.io")
            .map(|(_, v)| v.clone())
            .collect();
        out.extend(
            st.objects
                .iter()
                .filter(|(k, _)| k.1 == "events" && k.0.is_empty())
                .map(|(_, v)| v.clone()),
        );
        out
    }

    /// The current (highest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the watch history, like an etcd compaction: a watch resuming from any earlier
    /// resourceVersion gets `410 Gone` ("too old resource version").
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.history.clear();
        st.compacted = st.rv;
    }

    /// Delays every answer by `d` (zero turns it off).
    pub fn set_latency(&self, d: Duration) {
        self.shared.faults().latency = d;
    }

    /// Answers the next `n` API requests (discovery included) with `status_code` and a proper
    /// Status body (500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests, 504
    /// Timeout, ...) without touching the store.
    /// `n = 0` cancels what is left of an earlier call.
    pub fn fail_next(&self, n: u32, status_code: u16) {
        self.shared.faults().fail = (n > 0).then_some((n, status_code, false));
    }

    /// Like [`Emulator::fail_next`] but only for writes (POST, PUT, PATCH, DELETE): reads and
    /// watches go through.
    pub fn fail_next_writes(&self, n: u32, status_code: u16) {
        self.shared.faults().fail = (n > 0).then_some((n, status_code, true));
    }

    /// Makes every write to an object named `name` wait `d` before it is handled, so it
    /// commits late (zero turns it off).
    pub fn stall_writes_to(&self, name: &str, d: Duration) {
        let mut f = self.shared.faults();
        if d.is_zero() {
            f.stall_writes.remove(name);
        } else {
            f.stall_writes.insert(name.to_string(), d);
        }
    }

    /// Makes every write to an object named `name` wait `d` and then be handled even if its
    /// client gave up meanwhile — what an API server may do with a request whose client
    /// timed out (zero turns it off).
    pub fn stall_writes_detached_to(&self, name: &str, d: Duration) {
        let mut f = self.shared.faults();
        if d.is_zero() {
            f.stall_writes_detached.remove(name);
        } else {
            f.stall_writes_detached.insert(name.to_string(), d);
        }
    }

    /// Makes every write to an object named `name` commit at once but answer `d` later
    /// (zero turns it off).
    pub fn answer_writes_late_to(&self, name: &str, d: Duration) {
        let mut f = self.shared.faults();
        if d.is_zero() {
            f.answer_writes_late.remove(name);
        } else {
            f.answer_writes_late.insert(name.to_string(), d);
        }
    }

    /// Closes the connection without answering for the next `n` requests (a load balancer
    /// reset or an API server crash mid-request). The store is not touched.
    pub fn drop_next(&self, n: u32) {
        self.shared.faults().drop = n;
    }

    /// An API server that accepts connections but is not serving (etcd unreachable, still
    /// starting): every request is answered 503 ServiceUnavailable for `d`. kube-rs retries
    /// 503 by itself, so a short window is absorbed by the client.
    pub fn unready_for(&self, d: Duration) {
        self.shared.faults().unready_until = Some(Instant::now() + d);
    }

    /// An API server restart: closes every connection (watches included) and the listening
    /// socket, so connects are refused for `d`, then listens on the same address again. The
    /// store survives, as etcd does.
    pub fn unavailable_for(&self, d: Duration) {
        self.shared.epoch.send_modify(|e| *e += 1);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            // The old listener is dropped by its accept loop; retry briefly if the port is
            // still held.
            while Instant::now() < deadline && !*shared.stopped.borrow() {
                match TcpListener::bind(shared.addr).await {
                    Ok(l) => {
                        tokio::spawn(handler::accept_loop(shared.clone(), l));
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
}

/// Where an object given to [`Emulator::seed`] is stored: its namespace (`default` when it
/// names none), or none for a cluster-scoped kind.
fn namespace_of(res: &resources::Res, obj: &Value) -> String {
    if !res.namespaced {
        return String::new();
    }
    obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

/// Records an out-of-band write.
pub(crate) fn record(st: &mut State, verb: &str, kind: &str, ns: &str, name: &str, obj: &Value) {
    st.writes.push(WriteRecord {
        time: SystemTime::now(),
        identity: COMPETING_WRITER.into(),
        verb: verb.into(),
        content_type: None,
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        resource_version: obj["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        status: 200,
        body: obj.to_string(),
    });
}

/// Parses a multi-document YAML file of objects (used by the binary's `--seed`).
pub fn load_seed(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
