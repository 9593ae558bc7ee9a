//! The `kubernetes` store: VirtualServices read and written through the API server (kube-rs).
//!
//! Every write is a read-modify-write guarded by `resourceVersion` (an update that carries the
//! version it read), so a concurrent edit — a human, a GitOps sync, another controller — is
//! never overwritten blindly: on 409 Conflict the object is read again, the change recomputed
//! on what is there now, and sent again, with backoff, inside the write budget. Before any
//! request leaves, the whole new object is checked against the official Istio CRD schema and
//! istiod's webhook rules ([`super::istio`]), so failoverd never sends a VirtualService the
//! mesh would reject. After the write the object the API server stored (the update's
//! answer) is compared with what was meant.
//!
//! The object is handled as JSON (`DynamicObject`), never as a typed struct: a typed
//! VirtualService would silently drop every field it does not model on the way back.
//!
//! Here: the client, the reads and the watch; the write path is in `write.rs`, the watch
//! cache in `cache.rs`.

mod cache;
mod fault;
#[cfg(test)]
mod tests;
mod write;

use cache::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::{OnceCell, Semaphore};
use tracing::debug;

use super::{RouteView, RoutingStore, Stamp, StoreError, StoreFuture, WriteOutcome, view};
use crate::engine::Routing;
use crate::playbook::Playbook;

/// The Istio API group failoverd writes.
pub const GROUP: &str = "networking.istio.io";
/// Field manager recorded on every write (shows in `managedFields`).
pub const FIELD_MANAGER: &str = "failoverd";

/// How the `kubernetes` store connects and paces itself.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeOptions {
    /// Kubeconfig file; `None`: in-cluster config, else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the current context.
    pub context: Option<String>,
    /// Sustained API requests per second (client-side rate limit, shared by all playbooks).
    pub qps: u32,
    /// Requests allowed in a burst above `qps`.
    pub burst: u32,
    /// Timeout of one API request (connect + answer).
    pub request_timeout: Duration,
    /// Time one write may spend on conflicts and retries before it reports failure (the
    /// daemon's writer then retries on its own backoff). Kept below the writer's timeout.
    pub budget: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            // client-go's defaults are 5/10, tuned for controllers that list a lot. failoverd
            // sends 2 requests per move (read, update); 50/s lets 100 playbooks fail over in a
            // few seconds without one burst of 200 requests at an API server that may itself
            // be struggling.
            qps: 50,
            burst: 100,
            request_timeout: Duration::from_secs(3),
            budget: Duration::from_secs(8),
        }
    }
}

/// Kubernetes Events sent per second at most (burst twice that): Events tell people about a
/// move, the audit log is its record, so they never compete with writes.
const EVENT_RATE: u32 = 10;
/// Events queued for the event bucket at most (about 6 s of its rate). Past that an Event is
/// dropped and counted in `failoverd_kube_events_dropped_total`: a storm of moves keeps
/// memory flat, and the Events that are sent are about recent moves.
pub const EVENT_BACKLOG: usize = 64;

/// `failoverd_kube_events_dropped_total`: Events not sent because [`EVENT_BACKLOG`] were
/// already waiting (one process-wide counter, registered by [`crate::metrics::Metrics::new`]).
pub static EVENTS_DROPPED: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// VirtualServices in a Kubernetes cluster.
pub struct KubeStore {
    client: kube::Client,
    /// `networking.istio.io/v1`, or `v1beta1` on clusters whose Istio serves no v1 yet.
    resource: OnceCell<ApiResource>,
    /// Writes and their own reads (the read before an update).
    limiter: Arc<DefaultDirectRateLimiter>,
    /// Every other read (start, takeover, drift re-reads, the API's route views) has a bucket
    /// of its own, as large as the write bucket: a dashboard or a re-read storm can never
    /// make a failover wait for a token. The API server sees at most twice `qps`.
    read_limiter: Arc<DefaultDirectRateLimiter>,
    /// Events have their own, smaller bucket: they must never take a token a write needs.
    event_limiter: Arc<DefaultDirectRateLimiter>,
    /// Events waiting for a token or being sent, at most [`EVENT_BACKLOG`]: in a failover
    /// storm moves outpace the event bucket, and an unbounded backlog would grow the
    /// daemon's memory with every move and deliver Events minutes late.
    event_slots: Arc<Semaphore>,
    recorder: Recorder,
    options: KubeOptions,
    server: String,
    /// With leader election: checked immediately before every update is sent.
    fence: Option<Arc<crate::leader::Leadership>>,
    /// The watched VirtualServices as the watch last delivered them (the API's route views
    /// read here, never the API server). Replaced by each [`RoutingStore::watch`] call.
    cache: std::sync::RwLock<Option<Arc<WatchCache>>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("server", &self.server)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KubeStore {
    /// Connects with in-cluster config or a kubeconfig (`options.kubeconfig`, `options.context`).
    pub async fn connect(options: KubeOptions) -> anyhow::Result<Self> {
        let config = match (&options.kubeconfig, &options.context) {
            (None, None) => kube::Config::infer().await?,
            (path, context) => {
                let kcfg = match path {
                    Some(p) => kube::config::Kubeconfig::read_from(p).map_err(|e| {
                        anyhow::anyhow!("cannot read kubeconfig {}: {e}", p.display())
                    })?,
                    None => kube::config::Kubeconfig::read()?,
                };
                let opts = kube::config::KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kcfg, &opts).await?
            }
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        Ok(Self::from_client(client, server, options))
    }

    /// A store on an existing client (tests, or a client shared with leader election).
    pub fn from_client(client: kube::Client, server: String, options: KubeOptions) -> Self {
        let reporter = Reporter {
            controller: "failoverd".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            resource: OnceCell::new(),
            limiter: bucket(options.qps, options.burst),
            read_limiter: bucket(options.qps, options.burst),
            event_limiter: bucket(EVENT_RATE, 2 * EVENT_RATE),
            event_slots: Arc::new(Semaphore::new(EVENT_BACKLOG)),
            options,
            server,
            fence: None,
            cache: std::sync::RwLock::new(None),
        }
    }

    /// Checks `leadership` immediately before every write request: a replica whose lease
    /// has lapsed sends nothing, even in the middle of a retry loop.
    pub fn set_fence(&mut self, leadership: Arc<crate::leader::Leadership>) {
        self.fence = Some(leadership);
    }

    /// The client, for other parts that talk to the same cluster (leader election).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Finds which VirtualService version the cluster serves (v1, else v1beta1), once.
    async fn resource(&self, object: &str) -> Result<&ApiResource, StoreError> {
        self.resource
            .get_or_try_init(|| async {
                self.limiter.until_ready().await;
                discover(&self.client, self.options.request_timeout, object).await
            })
            .await
    }

    async fn api(&self, pb: &Playbook) -> Result<Api<DynamicObject>, StoreError> {
        let ar = self.resource(&object_name(pb)).await?;
        Ok(Api::namespaced_with(
            self.client.clone(),
            &pb.spec.virtual_service.namespace,
            ar,
        ))
    }

    /// Reads the playbook's VirtualService through `bucket`, the request bounded by `limit`
    /// (the wait for a token too).
    async fn get(
        &self,
        api: &Api<DynamicObject>,
        pb: &Playbook,
        bucket: &DefaultDirectRateLimiter,
        limit: Duration,
    ) -> Result<Value, StoreError> {
        let object = object_name(pb);
        let ns = &pb.spec.virtual_service.namespace;
        let started = Instant::now();
        paced(bucket, limit, &object, "get").await?;
        let obj = timed(
            limit.saturating_sub(started.elapsed()),
            api.get(&pb.spec.virtual_service.name),
        )
        .await
        .map_err(|e| map_err(e, &object, "get", ns))?;
        serde_json::to_value(&obj).map_err(|e| StoreError::Malformed {
            object,
            message: format!("cannot represent as JSON: {e}"),
        })
    }

    /// Every VirtualService in `ns` as JSON, by name (`pb` names the object for errors).
    async fn list_namespace(
        &self,
        pb: &Playbook,
        ns: &str,
    ) -> Result<std::collections::HashMap<String, Value>, StoreError> {
        let object = object_name(pb);
        let ar = self.resource(&object).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, ar);
        self.read_limiter.until_ready().await;
        let list = timed(
            self.options.request_timeout,
            api.list(&kube::api::ListParams::default()),
        )
        .await
        .map_err(|e| map_err(e, &object, "list", ns))?;
        let mut objects = std::collections::HashMap::with_capacity(list.items.len());
        for obj in list.items {
            let Some(name) = obj.metadata.name.clone() else {
                continue;
            };
            let json = serde_json::to_value(&obj).map_err(|e| StoreError::Malformed {
                object: format!("{ns}/{name}"),
                message: format!("cannot represent as JSON: {e}"),
            })?;
            objects.insert(name, json);
        }
        Ok(objects)
    }

    /// The playbook's VirtualService as the API server holds it now (for `plan`).
    pub async fn object(&self, pb: &Playbook) -> Result<Value, StoreError> {
        let api = self.api(pb).await?;
        self.get(&api, pb, &self.read_limiter, self.options.request_timeout)
            .await
    }
}

impl RoutingStore for KubeStore {
    fn viewer_read<'a>(&'a self, pb: &'a Playbook) -> super::ViewerFuture<'a> {
        // Never a request: the watch cache, or nothing (the API then answers from the
        // controller's state). A dashboard costs the API server nothing and takes no token.
        let cached = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.clone())
            .and_then(|c| {
                c.get(
                    &pb.spec.virtual_service.namespace,
                    &pb.spec.virtual_service.name,
                )
            });
        Box::pin(std::future::ready(
            cached.map(|vs| (super::ViewSource::WatchCache, view(&vs, pb))),
        ))
    }

    fn read<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, RouteView> {
        Box::pin(async move {
            let api = self.api(pb).await?;
            let vs = self
                .get(&api, pb, &self.read_limiter, self.options.request_timeout)
                .await?;
            view(&vs, pb)
        })
    }

    fn write<'a>(
        &'a self,
        pb: &'a Playbook,
        to: Routing,
        stamp: Stamp,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            let result = self.write_with_budget(pb, to, stamp).await;
            self.publish_event(pb, to, &result);
            result
        })
    }

    fn read_all<'a>(&'a self, pbs: &'a [Arc<Playbook>]) -> super::ReadAllFuture<'a> {
        Box::pin(async move {
            let mut out: Vec<Option<Result<RouteView, StoreError>>> =
                pbs.iter().map(|_| None).collect();
            let mut by_ns: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
            for (i, pb) in pbs.iter().enumerate() {
                by_ns
                    .entry(pb.spec.virtual_service.namespace.as_str())
                    .or_default()
                    .push(i);
            }
            for (ns, idxs) in by_ns {
                // One LIST per namespace instead of one GET per playbook: at 1,000 playbooks
                // that is one request instead of twenty seconds of the rate limit.
                match self.list_namespace(&pbs[idxs[0]], ns).await {
                    Ok(objects) => {
                        for i in idxs {
                            if let Some(vs) = objects.get(&pbs[i].spec.virtual_service.name) {
                                out[i] = Some(view(vs, &pbs[i]));
                            }
                        }
                    }
                    Err(e) => {
                        debug!(namespace = ns, error = %e, "cannot list VirtualServices; reading them one by one");
                    }
                }
            }
            // Whatever the lists did not answer (a missing object, a failed list) is read on
            // its own, so its error is exactly what a single read reports.
            let mut results = Vec::with_capacity(pbs.len());
            for (pb, got) in pbs.iter().zip(out) {
                results.push(match got {
                    Some(r) => r,
                    None => self.read(pb).await,
                });
            }
            results
        })
    }

    fn faults<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { Ok(super::fault::faults_in(&self.object(pb).await?)) })
    }

    fn write_fault<'a>(
        &'a self,
        pb: &'a Playbook,
        edit: &'a super::fault::FaultEdit,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(self.write_fault_with_budget(pb, edit))
    }

    fn describe(&self) -> String {
        format!("kubernetes:{}", self.server)
    }

    fn watch(
        &self,
        objects: Vec<(String, String)>,
    ) -> Option<tokio::sync::mpsc::Receiver<(String, String)>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut namespaces: Vec<String> = objects.iter().map(|(ns, _)| ns.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        let wanted: Arc<std::collections::HashSet<(String, String)>> =
            Arc::new(objects.into_iter().collect());
        let client = self.client.clone();
        let timeout = self.options.request_timeout;
        // A fresh cache for this set of objects; an earlier watch's tasks keep only their own
        // (unread) one and stop at their next event, their receiver being gone.
        let cache = Arc::new(WatchCache::new(wanted.clone()));
        if let Ok(mut slot) = self.cache.write() {
            *slot = Some(cache.clone());
        }
        tokio::spawn(async move {
            // Discovery again here: this task outlives no borrow of the store.
            let ar = loop {
                match discover(&client, timeout, "(watch)").await {
                    Ok(ar) => break ar,
                    Err(e) => {
                        debug!(error = %e, "watch: discovery failed; retrying");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            };
            for ns in namespaces {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                let (tx, wanted, cache, ar) =
                    (tx.clone(), wanted.clone(), cache.clone(), ar.clone());
                tokio::spawn(async move {
                    use futures::StreamExt;
                    use kube::runtime::WatchStreamExt;
                    use kube::runtime::watcher::Event;
                    // One watch per namespace; relists and backs off on errors by itself. It
                    // feeds both the cache and the change notices.
                    let mut stream = std::pin::pin!(
                        kube::runtime::watcher(api, kube::runtime::watcher::Config::default())
                            .default_backoff()
                    );
                    // Change notices the drift checker has not taken yet, one per object. The
                    // watch never waits for the checker (it reads through the API server, so
                    // a storm of changes backs it up): the cache stays current meanwhile.
                    let mut pending: std::collections::BTreeSet<(String, String)> =
                        Default::default();
                    loop {
                        while let Some(key) = pending.first().cloned() {
                            match tx.try_send(key) {
                                Ok(()) => {
                                    pending.pop_first();
                                }
                                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => break,
                                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        if tx.is_closed() {
                            return;
                        }
                        let item = if pending.is_empty() {
                            stream.next().await
                        } else {
                            // `next()` is cancel-safe: an item not yet taken stays in the stream.
                            tokio::select! {
                                item = stream.next() => item,
                                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            }
                        };
                        let Some(item) = item else { return };
                        let event = match item {
                            Ok(event) => event,
                            Err(e) => {
                                // Until the watch delivers again, what it holds may be stale.
                                debug!(namespace = ns, error = %e, "watch error; cache not synced");
                                cache.unsynced(&ns);
                                continue;
                            }
                        };
                        cache.apply(&ns, &event, &ar);
                        let obj = match event {
                            Event::Apply(obj) | Event::Delete(obj) | Event::InitApply(obj) => obj,
                            Event::Init | Event::InitDone => continue,
                        };
                        let key = (ns.clone(), obj.metadata.name.clone().unwrap_or_default());
                        if wanted.contains(&key) {
                            pending.insert(key);
                        }
                    }
                });
            }
        });
        Some(rx)
    }
}

/// The served VirtualService version: `v1`, else `v1beta1` (older Istio).
async fn discover(
    client: &kube::Client,
    timeout: Duration,
    object: &str,
) -> Result<ApiResource, StoreError> {
    let group = timed(timeout, kube::discovery::group(client, GROUP))
        .await
        .map_err(|e| map_err(e, object, "discover", "(cluster)"))?;
    let served: Vec<&str> = group.versions().collect();
    let version = ["v1", "v1beta1"]
        .into_iter()
        .find(|v| served.contains(v))
        .ok_or_else(|| StoreError::Malformed {
            object: object.to_string(),
            message: format!(
                "the cluster serves {GROUP} versions {served:?}; failoverd needs v1 or v1beta1"
            ),
        })?;
    debug!(version, "VirtualService API version discovered");
    Ok(ApiResource::from_gvk(&GroupVersionKind::gvk(
        GROUP,
        version,
        "VirtualService",
    )))
}

/// Waits for a token of `bucket`, at most `limit`: a request that cannot start in time is
/// not sent at all (so it cannot land after its write was reported failed).
async fn paced(
    bucket: &DefaultDirectRateLimiter,
    limit: Duration,
    object: &str,
    verb: &str,
) -> Result<(), StoreError> {
    tokio::time::timeout(limit, bucket.until_ready())
        .await
        .map_err(|_| StoreError::Unavailable {
            object: object.to_string(),
            message: format!("{verb} not sent: no rate-limit token within {limit:?}"),
        })
}

/// A token bucket of `per_second` with `burst` (each at least 1).
fn bucket(per_second: u32, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(
        Quota::per_second(nz(per_second)).allow_burst(nz(burst)),
    ))
}

fn object_name(pb: &Playbook) -> String {
    pb.spec.virtual_service.to_string()
}

async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, TimedError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(TimedError::Kube),
        Err(_) => Err(TimedError::Timeout(limit)),
    }
}

/// A kube error, or our own per-request timeout.
#[derive(Debug)]
enum TimedError {
    Kube(kube::Error),
    Timeout(Duration),
}

/// Maps an API error to what the daemon does about it: 404 → playbook error, 409 → re-read
/// and retry, 422/400 → never retried, 403/401 → degraded with the missing rule named,
/// 5xx/429/transport → retried inside the budget.
fn map_err(e: TimedError, object: &str, verb: &str, namespace: &str) -> StoreError {
    let object = object.to_string();
    let status = match e {
        TimedError::Timeout(d) => {
            return StoreError::Unavailable {
                object,
                message: format!("{verb} timed out after {d:?}"),
            };
        }
        TimedError::Kube(kube::Error::Api(status)) => status,
        TimedError::Kube(other) => {
            return StoreError::Unavailable {
                object,
                message: format!("{verb}: {other}"),
            };
        }
    };
    match status.code {
        404 => StoreError::NotFound(format!("{object} ({})", status.message)),
        409 => StoreError::Conflict(object),
        400 | 422 => StoreError::Rejected {
            object,
            message: status.message,
        },
        401 => StoreError::Forbidden {
            object,
            message: format!("credentials refused (401): {}", status.message),
        },
        403 => StoreError::Forbidden {
            message: format!(
                "missing RBAC rule: verb `{verb}` on resource `virtualservices` (group {GROUP}) in namespace `{namespace}`: {}",
                status.message
            ),
            object,
        },
        code => StoreError::Unavailable {
            object,
            message: format!("{verb}: {code} {}: {}", status.reason, status.message),
        },
    }
}
