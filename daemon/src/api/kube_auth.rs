//! Cluster identities (`auth.kubernetes`): a bearer token not in the token file is sent to
//! the cluster's TokenReview (`authentication.k8s.io/v1`); the username it returns is the
//! caller's identity. Each call of such a caller is then authorised by SubjectAccessReview
//! (`authorization.k8s.io/v1`) on `playbooks.failoverd.dev` in the configured namespace, with
//! the playbook as the resource name and the call's [`Verb`].
//!
//! Both answers are cached for `cacheTTL` in bounded maps ([`TtlCache`]); tokens are cached
//! by their SHA-256, never in clear. The cluster unreachable, timing out
//! ([`REVIEW_TIMEOUT`]) or refusing failoverd fails the call closed ([`Unavailable`], 503):
//! a review that was not answered never allows anything.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use sha2::{Digest, Sha256};

use super::auth::Role;

/// Longest wait for one review (queueing for a slot included): past it the call is a 503.
/// An operator retrying after 5 s learns more than one waiting for the API's 30 s.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries each cache keeps: far more tokens and (user, verb, playbook) triples than a
/// deployment's on-call uses within one TTL, and at most a few MB.
pub const CACHE_ENTRIES: usize = 10_000;
/// Reviews in flight at once: a flood of distinct requests queues here instead of at the
/// API server (each waits at most [`REVIEW_TIMEOUT`]).
pub const REVIEWS_IN_FLIGHT: usize = 32;
/// The API group of the `playbooks` resource the reviews ask about.
pub const GROUP: &str = "failoverd.dev";
/// The resource the reviews ask about.
pub const RESOURCE: &str = "playbooks";

/// `auth.kubernetes`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeAuthConfig {
    /// Namespace of the `playbooks` resource in every SubjectAccessReview.
    pub namespace: String,
    /// `spec.audiences` of every TokenReview (empty: the API server's own).
    pub audiences: Vec<String>,
    /// How long an answer is reused.
    pub cache_ttl: Duration,
    /// Kubeconfig for the reviews when the store is not `kubernetes` (None: in-cluster,
    /// else `$KUBECONFIG`).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context (None: the current one).
    pub context: Option<String>,
}

/// What a call does, as a SubjectAccessReview verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Read one playbook.
    Get,
    /// Read the fleet (playbooks, overrides, audit, drills).
    List,
    /// Fail over, fail back, freeze, resume, delete an override, run a drill.
    Update,
    /// Request or approve a break-glass.
    Escalate,
}

impl Verb {
    /// The verb's name in a SubjectAccessReview.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Update => "update",
            Verb::Escalate => "escalate",
        }
    }

    /// The token-file role the verb needs (token-file callers keep their roles).
    pub fn role(self) -> Role {
        match self {
            Verb::Get | Verb::List => Role::Viewer,
            Verb::Update => Role::Operator,
            Verb::Escalate => Role::Admin,
        }
    }
}

/// The cluster could not answer a review; the call fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// A user the cluster's TokenReview authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUser {
    /// `status.user.username`.
    pub username: String,
    /// `status.user.groups`.
    pub groups: Vec<String>,
}

/// A map whose entries expire after `ttl` and which never holds more than `cap` entries:
/// when full, expired entries are dropped first, then the oldest one. The clock is passed
/// in, so tests need no sleeping.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    cap: usize,
    map: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            map: HashMap::new(),
        }
    }

    /// The value stored for `key` less than `ttl` before `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.map
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` for `key` as of `now`, making room first if full.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            let ttl = self.ttl;
            self.map
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.map.len() >= self.cap
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, (value, now));
    }

    /// Entries held (expired ones included until they are pushed out).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type SarKey = (String, Vec<String>, Verb, String);

/// The reviews, their caches and the client that sends them.
pub struct KubeAuth {
    client: kube::Client,
    config: KubeAuthConfig,
    /// SHA-256 of the token → the user (None: the TokenReview rejected it).
    tokens: Mutex<TtlCache<[u8; 32], Option<ClusterUser>>>,
    /// (user, groups, verb, playbook) → allowed.
    decisions: Mutex<TtlCache<SarKey, bool>>,
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl KubeAuth {
    /// Reviews through `client` (failoverd's own identity needs `create` on tokenreviews
    /// and subjectaccessreviews).
    pub fn new(client: kube::Client, config: KubeAuthConfig) -> Self {
        let ttl = config.cache_ttl;
        Self {
            client,
            config,
            tokens: Mutex::new(TtlCache::new(ttl, CACHE_ENTRIES)),
            decisions: Mutex::new(TtlCache::new(ttl, CACHE_ENTRIES)),
            slots: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &KubeAuthConfig {
        &self.config
    }

    /// The cached TokenReview answer for `token`: `Some(None)` for a rejected token, `None`
    /// when the cluster must be asked.
    pub fn cached_token(&self, token: &str) -> Option<Option<ClusterUser>> {
        let now = Instant::now();
        self.tokens
            .lock()
            .ok()
            .and_then(|c| c.get(&token_key(token), now))
    }

    /// Sends `call` within [`REVIEW_TIMEOUT`], slot wait included.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Unavailable> {
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| Unavailable("shutting down".into()))?;
            call.await.map_err(|e| match e {
                kube::Error::Api(s) if s.code == 403 => Unavailable(format!(
                    "failoverd may not create {what} (missing RBAC rule: verb create on {what}): {}",
                    s.message
                )),
                e => Unavailable(format!("{what}: {e}")),
            })
        })
        .await;
        answer.unwrap_or_else(|_| {
            Err(Unavailable(format!(
                "{what}: no answer from the Kubernetes API server within {} s",
                REVIEW_TIMEOUT.as_secs()
            )))
        })
    }

    /// Authenticates `token` through TokenReview (or the cache): `Ok(None)` when the
    /// cluster does not know it.
    pub async fn review_token(&self, token: &str) -> Result<Option<ClusterUser>, Unavailable> {
        if let Some(known) = self.cached_token(token) {
            return Ok(known);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.config.audiences.is_empty())
                    .then(|| self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let pp = kube::api::PostParams::default();
        let answer = self
            .bounded("tokenreviews", api.create(&pp, &review))
            .await?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                let username = u.username.filter(|n| !n.is_empty())?;
                Some(ClusterUser {
                    username,
                    groups: u.groups.unwrap_or_default(),
                })
            });
        if let Ok(mut c) = self.tokens.lock() {
            c.insert(token_key(token), user.clone(), Instant::now());
        }
        Ok(user)
    }

    /// Whether `user` (with `groups`) may `verb` the playbook `name` (None: the whole
    /// namespace, for fleet reads), through SubjectAccessReview (or the cache).
    pub async fn allowed(
        &self,
        user: &str,
        groups: &[String],
        verb: Verb,
        name: Option<&str>,
    ) -> Result<bool, Unavailable> {
        let key: SarKey = (
            user.to_string(),
            groups.to_vec(),
            verb,
            name.unwrap_or_default().to_string(),
        );
        let cached = self
            .decisions
            .lock()
            .ok()
            .and_then(|c| c.get(&key, Instant::now()));
        if let Some(allowed) = cached {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                groups: (!groups.is_empty()).then(|| groups.to_vec()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.config.namespace.clone()),
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    name: name.filter(|n| !n.is_empty()).map(str::to_string),
                    verb: Some(verb.as_str().into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let pp = kube::api::PostParams::default();
        let answer = self
            .bounded("subjectaccessreviews", api.create(&pp, &review))
            .await?;
        let allowed = answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true));
        if let Ok(mut c) = self.decisions.lock() {
            c.insert(key, allowed, Instant::now());
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ensures an entry is served until its TTL has passed and not after.
    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(10), 100);
        c.insert("a", 1, t0);
        assert_eq!(c.get(&"a", t0), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_millis(9_999)), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(10)), None);
        assert_eq!(c.get(&"b", t0), None);
        // A fresh answer replaces the old one and restarts its TTL.
        c.insert("a", 2, t0 + Duration::from_secs(10));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(15)), Some(2));
    }

    /// Ensures the cache never holds more than its bound: expired entries go first, then
    /// the oldest, and the newest entry is always kept.
    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut c = TtlCache::new(ttl, 3);
        for i in 0..3u32 {
            c.insert(i, i, t0 + Duration::from_secs(u64::from(i)));
        }
        assert_eq!(c.len(), 3);
        // Full and nothing expired: the oldest (0) makes room.
        c.insert(3, 3, t0 + Duration::from_secs(3));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&0, t0 + Duration::from_secs(3)), None);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(3)), Some(1));
        // Later, 1 and 2 have expired: both go, the live 3 stays.
        let later = t0 + Duration::from_secs(12) + Duration::from_millis(500);
        c.insert(4, 4, later);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&3, later), Some(3));
        assert_eq!(c.get(&4, later), Some(4));
        // A flood of distinct keys never grows it past the bound.
        for i in 100..10_000u32 {
            c.insert(i, i, later);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&9_999, later), Some(9_999));
    }

    /// Ensures each verb needs the role a token-file caller needed before cluster identities.
    #[test]
    fn verbs_map_to_the_roles_token_file_callers_need() {
        assert_eq!(Verb::Get.role(), Role::Viewer);
        assert_eq!(Verb::List.role(), Role::Viewer);
        assert_eq!(Verb::Update.role(), Role::Operator);
        assert_eq!(Verb::Escalate.role(), Role::Admin);
        assert_eq!(Verb::Escalate.as_str(), "escalate");
    }
}
