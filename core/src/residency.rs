//! Residency and mesh policy: the facts read from the cluster ([`ClusterView`]: Namespaces'
//! labels, PeerAuthentications, DestinationRules, ServiceEntries) and the verdict on one
//! failover target against a [`Fence`] ([`judge`]).
//!
//! The rules (DESIGN.md, "Residency and policy"), and where they are conservative:
//!
//! - **Jurisdiction.** A host `<svc>.<ns>.svc.cluster.local` takes the label
//!   [`JURISDICTION_LABEL`] of Namespace `<ns>`; any other host the same label of every
//!   ServiceEntry whose `spec.hosts` names it (exactly, or by a wildcard such as
//!   `*.example.com`). Missing label, missing object, a value that is not an upper-case
//!   ISO 3166-1 alpha-2 code (`id` is not `ID`), or objects that disagree make it unknown,
//!   and unknown is outside every allowed set. Every matching ServiceEntry counts, exact and
//!   wildcard alike, whatever its `exportTo`: one unlabelled or differently labelled entry
//!   makes the host unknown.
//! - **mTLS** (when [`Fence::require_strict_mtls`]). The target's namespace (for a
//!   ServiceEntry host: the namespace of every entry naming it) must be covered by STRICT:
//!   its namespace-wide PeerAuthentications (no selector, or one with no labels) if any has a
//!   mode other than `UNSET`, else the mesh-wide ones in [`ROOT_NAMESPACE`]; none at all is
//!   Istio's default, PERMISSIVE. Several namespace-wide (or mesh-wide) ones must all be
//!   STRICT (Istio would pick the oldest; failoverd does not guess which). Any workload-level
//!   PeerAuthentication in the namespace with PERMISSIVE or DISABLE, or any `portLevelMtls`
//!   entry that is not STRICT, breaks it: failoverd does not watch pods, so it cannot tell
//!   which workloads a selector picks.
//! - **TLS to the host.** No DestinationRule for the host (its `spec.host`, a short name
//!   meaning `<name>.<dr-namespace>.svc.cluster.local`, or a wildcard covering it) may set
//!   `tls.mode: DISABLE` (or a `tls` block without a mode, which is DISABLE in Istio's API)
//!   at the top, per port, or in a subset: the target's subset, or every subset when the
//!   target names none. Every matching DestinationRule counts, not only the most specific.
//! - **Unreadable objects.** An object of a known kind that [`ClusterView::insert`] refused
//!   is kept as unreadable: an unreadable Namespace makes its jurisdiction unknown; an
//!   unreadable ServiceEntry makes every host it may name unknown; an unreadable
//!   PeerAuthentication in the target's or the root namespace, or an unreadable
//!   DestinationRule that may name the host, fails the policy.

mod parse;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The label naming a Namespace's (or ServiceEntry's) jurisdiction.
pub const JURISDICTION_LABEL: &str = "failoverd.dev/jurisdiction";
/// Istio's root namespace, where a PeerAuthentication without a selector is mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The cluster domain of `<svc>.<ns>.svc.cluster.local` hosts.
const CLUSTER_SUFFIX: &str = ".svc.cluster.local";

/// The kinds of object the view holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Namespace (cluster-scoped).
    Namespace,
    /// security.istio.io PeerAuthentication.
    PeerAuthentication,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// networking.istio.io ServiceEntry.
    ServiceEntry,
}

impl Kind {
    /// Every kind, in the order the stores read them.
    pub const ALL: [Kind; 4] = [
        Kind::Namespace,
        Kind::PeerAuthentication,
        Kind::DestinationRule,
        Kind::ServiceEntry,
    ];

    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
        }
    }

    /// Which of the kinds `obj` is, by apiVersion and kind (None: not one the view holds).
    pub fn of(obj: &Value) -> Option<Kind> {
        parse::kind_of(obj)
    }
}

/// One object's identity: kind, namespace (empty for a Namespace) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjKey {
    kind: Kind,
    ns: String,
    name: String,
}

impl ObjKey {
    /// `ns/name`, or the name of a Namespace.
    fn display(&self) -> String {
        if self.ns.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.ns, self.name)
        }
    }
}

/// A PeerAuthentication's mTLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    fn name(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

/// What the policy rule reads from a PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PeerAuth {
    /// Has a selector with labels (applies to some workloads only).
    workload: bool,
    mode: MtlsMode,
    /// `portLevelMtls`: (port, mode).
    ports: Vec<(String, MtlsMode)>,
}

/// One place in a DestinationRule that disables TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TlsOff {
    /// None: the top-level traffic policy (every subset).
    subset: Option<String>,
    /// None: the whole policy; Some: one port.
    port: Option<String>,
}

/// What the policy rule reads from a DestinationRule.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DestRule {
    /// `spec.host`, normalized (short names made fully qualified).
    host: String,
    off: Vec<TlsOff>,
}

/// What the residency rule reads from a ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SvcEntry {
    hosts: Vec<String>,
    jurisdiction: Option<String>,
}

/// An object of a known kind that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unreadable {
    error: String,
    /// The hosts it seems to name; None: unknown (it may name any host).
    hosts: Option<Vec<String>>,
}

/// (namespace, name) of a namespaced object.
type NsName = (String, String);

/// Facts read from the cluster (or the file store's `_cluster/`): Namespaces' labels,
/// PeerAuthentications, DestinationRules, ServiceEntries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Namespace name → its jurisdiction label's raw value.
    namespaces: BTreeMap<String, Option<String>>,
    peer_auths: BTreeMap<NsName, PeerAuth>,
    dest_rules: BTreeMap<NsName, DestRule>,
    /// Normalized `spec.host` → the DestinationRules naming it (wildcards as written).
    dr_by_host: BTreeMap<String, BTreeSet<NsName>>,
    service_entries: BTreeMap<NsName, SvcEntry>,
    /// Normalized host → the ServiceEntries listing it (wildcards as written).
    se_by_host: BTreeMap<String, BTreeSet<NsName>>,
    unreadable: BTreeMap<ObjKey, Unreadable>,
}

impl ClusterView {
    /// Adds one object by its apiVersion/kind: v1 Namespace, security.istio.io/* PeerAuthentication,
    /// networking.istio.io/* DestinationRule and ServiceEntry; any other kind is ignored (Ok).
    /// A malformed object of a known kind is Err(message naming kind/namespace/name and the field).
    ///
    /// An object replaces the earlier version of the same kind/namespace/name. A malformed
    /// one replaces it too, as unreadable (see the module notes): its old facts are not kept,
    /// since they are no longer what the cluster says.
    pub fn insert(&mut self, obj: &Value) -> Result<(), String> {
        let Some(kind) = parse::kind_of(obj) else {
            return Ok(());
        };
        let key = parse::key_of(kind, obj)?;
        self.forget(&key);
        let parsed = match kind {
            Kind::Namespace => parse::jurisdiction_label(&key, obj).map(|label| {
                self.namespaces.insert(key.name.clone(), label);
            }),
            Kind::PeerAuthentication => parse::peer_authentication(&key, obj).map(|pa| {
                self.peer_auths
                    .insert((key.ns.clone(), key.name.clone()), pa);
            }),
            Kind::DestinationRule => parse::destination_rule(&key, obj).map(|dr| {
                let id = (key.ns.clone(), key.name.clone());
                self.dr_by_host
                    .entry(dr.host.clone())
                    .or_default()
                    .insert(id.clone());
                self.dest_rules.insert(id, dr);
            }),
            Kind::ServiceEntry => parse::service_entry(&key, obj).map(|se| {
                let id = (key.ns.clone(), key.name.clone());
                for h in &se.hosts {
                    self.se_by_host
                        .entry(h.clone())
                        .or_default()
                        .insert(id.clone());
                }
                self.service_entries.insert(id, se);
            }),
        };
        if let Err(error) = &parsed {
            let hosts = parse::hosts_hint(kind, &key.ns, obj);
            self.unreadable.insert(
                key,
                Unreadable {
                    error: error.clone(),
                    hosts,
                },
            );
        }
        parsed
    }

    /// Removes an object (watch DELETED), by kind/namespace/name.
    pub fn remove(&mut self, obj: &Value) {
        if let Some(kind) = parse::kind_of(obj)
            && let Ok(key) = parse::key_of(kind, obj)
        {
            self.forget(&key);
        }
    }

    /// Removes every object of one kind (a store re-listing that kind from scratch).
    pub fn clear_kind(&mut self, kind: Kind) {
        let keys: Vec<ObjKey> = self.keys().filter(|k| k.kind == kind).collect();
        for key in keys {
            self.forget(&key);
        }
    }

    /// How many objects the view holds (unreadable ones included).
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.peer_auths.len()
            + self.dest_rules.len()
            + self.service_entries.len()
            + self.unreadable.len()
    }

    /// Whether the view holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why each unreadable object could not be read, one message each.
    pub fn problems(&self) -> Vec<String> {
        self.unreadable.values().map(|u| u.error.clone()).collect()
    }

    fn keys(&self) -> impl Iterator<Item = ObjKey> + '_ {
        let nsd = |kind: Kind| {
            move |(ns, name): &NsName| ObjKey {
                kind,
                ns: ns.clone(),
                name: name.clone(),
            }
        };
        self.namespaces
            .keys()
            .map(|n| ObjKey {
                kind: Kind::Namespace,
                ns: String::new(),
                name: n.clone(),
            })
            .chain(self.peer_auths.keys().map(nsd(Kind::PeerAuthentication)))
            .chain(self.dest_rules.keys().map(nsd(Kind::DestinationRule)))
            .chain(self.service_entries.keys().map(nsd(Kind::ServiceEntry)))
            .chain(self.unreadable.keys().cloned())
    }

    /// Drops everything known about one object.
    fn forget(&mut self, key: &ObjKey) {
        self.unreadable.remove(key);
        let id = (key.ns.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => {
                self.namespaces.remove(&key.name);
            }
            Kind::PeerAuthentication => {
                self.peer_auths.remove(&id);
            }
            Kind::DestinationRule => {
                if let Some(dr) = self.dest_rules.remove(&id) {
                    unindex(&mut self.dr_by_host, &dr.host, &id);
                }
            }
            Kind::ServiceEntry => {
                if let Some(se) = self.service_entries.remove(&id) {
                    for h in &se.hosts {
                        unindex(&mut self.se_by_host, h, &id);
                    }
                }
            }
        }
    }
}

fn unindex(index: &mut BTreeMap<String, BTreeSet<NsName>>, host: &str, id: &NsName) {
    if let Some(set) = index.get_mut(host) {
        set.remove(id);
        if set.is_empty() {
            index.remove(host);
        }
    }
}

/// The effective constraint for one playbook (daemon config narrowed by the playbook).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// Allowed jurisdictions (ISO 3166-1 alpha-2, upper case); None = no residency rule.
    pub allowed: Option<BTreeSet<String>>,
    /// The target must be covered by STRICT mTLS and no DestinationRule may disable TLS to it.
    pub require_strict_mtls: bool,
}

impl Fence {
    /// Whether the fence constrains anything.
    pub fn is_active(&self) -> bool {
        self.allowed.is_some() || self.require_strict_mtls
    }
}

/// The verdict on one target.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicy {
    /// The target host as the playbook names it.
    pub host: String,
    /// The target's jurisdiction as the cluster says it; None = unknown (missing label,
    /// missing object, or two objects disagreeing).
    pub jurisdiction: Option<String>,
    /// None: routing there keeps the fence. Some: the rule it breaks, beginning with
    /// `residency: ` or `policy: `.
    pub violation: Option<String>,
    /// One line: where the jurisdiction came from and which PeerAuthentication covers it.
    pub detail: String,
}

/// True for two upper-case ASCII letters (the shape of ISO 3166-1 alpha-2).
pub fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Lower case, no trailing dot; a short name (no dot) in a DestinationRule of namespace `ns`
/// means `<name>.<ns>.svc.cluster.local`, as Istio resolves it.
fn normalize_host(host: &str, ns: Option<&str>) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    match ns {
        Some(ns) if !h.contains('.') && h != "*" && !ns.is_empty() => {
            format!("{h}.{ns}{CLUSTER_SUFFIX}")
        }
        _ => h,
    }
}

/// A destination host as Istio resolves it in a VirtualService of namespace `ns`: a short
/// name (no dot) is `<name>.<ns>.svc.cluster.local`; any other host is taken as written
/// (lower case, no trailing dot). [`judge`] takes hosts as written, so a short target name
/// must be qualified with this first, or it is judged as an external host (unknown unless a
/// ServiceEntry lists it).
pub fn qualify(host: &str, ns: &str) -> String {
    normalize_host(host, Some(ns))
}

/// The namespace of a `<svc>.<ns>.svc.cluster.local` host.
fn cluster_namespace(host: &str) -> Option<&str> {
    let (svc, ns) = host.strip_suffix(CLUSTER_SUFFIX)?.split_once('.')?;
    (!svc.is_empty() && !ns.is_empty() && !ns.contains('.')).then_some(ns)
}

/// The host itself and every wildcard that covers it (`*.b.c`, `*.c`, `*`).
fn host_patterns(host: &str) -> Vec<String> {
    let mut out = vec![host.to_string()];
    for (i, _) in host.match_indices('.') {
        out.push(format!("*{}", &host[i..]));
    }
    out.push("*".to_string());
    out
}

/// Where a host lives, as far as the view tells.
struct Place {
    /// The code, or why it is unknown.
    jurisdiction: Result<String, String>,
    /// Where the code came from (for the detail line).
    source: String,
    /// The namespaces whose PeerAuthentications must cover it, or why there are none.
    namespaces: Result<Vec<String>, String>,
}

impl ClusterView {
    fn place(&self, host: &str) -> Place {
        match cluster_namespace(host) {
            Some(ns) => self.place_in_namespace(ns),
            None => self.place_by_service_entries(host),
        }
    }

    fn place_in_namespace(&self, ns: &str) -> Place {
        let unreadable = self.unreadable.get(&ObjKey {
            kind: Kind::Namespace,
            ns: String::new(),
            name: ns.to_string(),
        });
        let jurisdiction = match (unreadable, self.namespaces.get(ns)) {
            (Some(u), _) => Err(format!("namespace {ns} could not be read: {}", u.error)),
            (None, None) => Err(format!("namespace {ns} does not exist")),
            (None, Some(None)) => Err(format!("namespace {ns} has no {JURISDICTION_LABEL} label")),
            (None, Some(Some(v))) if !is_country_code(v) => Err(format!(
                "namespace {ns} has {JURISDICTION_LABEL}={v:?}, not an ISO 3166-1 alpha-2 code"
            )),
            (None, Some(Some(v))) => Ok(v.clone()),
        };
        Place {
            jurisdiction,
            source: format!("the {JURISDICTION_LABEL} label of Namespace {ns}"),
            namespaces: Ok(vec![ns.to_string()]),
        }
    }

    fn place_by_service_entries(&self, host: &str) -> Place {
        let patterns = host_patterns(host);
        let entries: BTreeSet<&NsName> = patterns
            .iter()
            .filter_map(|p| self.se_by_host.get(p))
            .flatten()
            .collect();
        let unread: Vec<(&ObjKey, &Unreadable)> = self
            .unreadable
            .iter()
            .filter(|(k, u)| k.kind == Kind::ServiceEntry && may_name(u, &patterns))
            .collect();
        let mut namespaces: BTreeSet<String> = entries.iter().map(|(ns, _)| ns.clone()).collect();
        namespaces.extend(unread.iter().map(|(k, _)| k.ns.clone()));
        let names: Vec<String> = entries.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        let jurisdiction = self.entries_jurisdiction(host, &entries, &unread);
        Place {
            jurisdiction,
            source: format!(
                "the {JURISDICTION_LABEL} label of ServiceEntry {}",
                names.join(", ")
            ),
            namespaces: if namespaces.is_empty() {
                Err(format!(
                    "policy: no ServiceEntry lists {host}, so no namespace's PeerAuthentication covers it"
                ))
            } else {
                Ok(namespaces.into_iter().collect())
            },
        }
    }

    fn entries_jurisdiction(
        &self,
        host: &str,
        entries: &BTreeSet<&NsName>,
        unread: &[(&ObjKey, &Unreadable)],
    ) -> Result<String, String> {
        if let Some((k, u)) = unread.first() {
            return Err(format!(
                "ServiceEntry {} could not be read: {}",
                k.display(),
                u.error
            ));
        }
        if entries.is_empty() {
            return Err(format!("no ServiceEntry lists {host}"));
        }
        let mut codes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for id in entries {
            let (ns, name) = id;
            let label = self
                .service_entries
                .get(*id)
                .and_then(|se| se.jurisdiction.as_deref());
            match label {
                None => {
                    return Err(format!(
                        "ServiceEntry {ns}/{name} has no {JURISDICTION_LABEL} label"
                    ));
                }
                Some(v) if !is_country_code(v) => {
                    return Err(format!(
                        "ServiceEntry {ns}/{name} has {JURISDICTION_LABEL}={v:?}, not an ISO 3166-1 alpha-2 code"
                    ));
                }
                Some(v) => codes.entry(v).or_default().push(format!("{ns}/{name}")),
            }
        }
        if codes.len() > 1 {
            let said: Vec<String> = codes
                .iter()
                .map(|(code, who)| format!("{} says {code}", who.join(", ")))
                .collect();
            return Err(format!(
                "ServiceEntries listing {host} disagree: {}",
                said.join("; ")
            ));
        }
        Ok(codes
            .keys()
            .next()
            .map(|c| c.to_string())
            .unwrap_or_default())
    }

    /// The PeerAuthentications of one namespace, by name.
    fn peer_auths_in<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a PeerAuth)> + 'a {
        self.peer_auths
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
            .map(|((_, name), pa)| (name.as_str(), pa))
    }

    /// Ok(which PeerAuthentication makes `ns` STRICT) or Err(the policy violation).
    fn strict_coverage(&self, ns: &str) -> Result<String, String> {
        if let Some((k, u)) = self.unreadable.iter().find(|(k, _)| {
            k.kind == Kind::PeerAuthentication && (k.ns == ns || k.ns == ROOT_NAMESPACE)
        }) {
            return Err(format!(
                "policy: PeerAuthentication {} could not be read ({})",
                k.display(),
                u.error
            ));
        }
        for (name, pa) in self.peer_auths_in(ns) {
            if pa.workload && matches!(pa.mode, MtlsMode::Permissive | MtlsMode::Disable) {
                return Err(format!(
                    "policy: workload-level PeerAuthentication {ns}/{name} sets {} in namespace {ns}",
                    pa.mode.name()
                ));
            }
            if let Some((port, mode)) = pa.ports.iter().find(|(_, m)| *m != MtlsMode::Strict) {
                return Err(format!(
                    "policy: PeerAuthentication {ns}/{name} sets port {port} to {}",
                    mode.name()
                ));
            }
        }
        let not_covered = |why: String| {
            Err(format!(
                "policy: namespace {ns} is not covered by a STRICT PeerAuthentication ({why})"
            ))
        };
        for (scope, at) in [("namespace-wide", ns), ("mesh-wide", ROOT_NAMESPACE)] {
            let wide: Vec<(&str, &PeerAuth)> = self
                .peer_auths_in(at)
                .filter(|(_, pa)| !pa.workload && pa.mode != MtlsMode::Unset)
                .collect();
            if wide.is_empty() {
                continue;
            }
            if let Some((name, pa)) = wide.iter().find(|(_, pa)| pa.mode != MtlsMode::Strict) {
                return not_covered(format!("{scope} {at}/{name} is {}", pa.mode.name()));
            }
            let names: Vec<String> = wide.iter().map(|(n, _)| format!("{at}/{n}")).collect();
            return Ok(format!(
                "STRICT by {scope} PeerAuthentication {}",
                names.join(", ")
            ));
        }
        not_covered(format!(
            "no namespace-wide or mesh-wide ({ROOT_NAMESPACE}) one sets a mode: Istio's default is PERMISSIVE"
        ))
    }

    /// The first DestinationRule that disables TLS to `host` (for `subset`, or any subset).
    fn tls_disabled(&self, host: &str, subset: Option<&str>) -> Option<String> {
        let patterns = host_patterns(host);
        if let Some((k, u)) = self
            .unreadable
            .iter()
            .find(|(k, u)| k.kind == Kind::DestinationRule && may_name(u, &patterns))
        {
            return Some(format!(
                "policy: DestinationRule {} could not be read ({})",
                k.display(),
                u.error
            ));
        }
        for id in patterns
            .iter()
            .filter_map(|p| self.dr_by_host.get(p))
            .flatten()
        {
            let Some(dr) = self.dest_rules.get(id) else {
                continue;
            };
            let hit = dr.off.iter().find(|off| match (&off.subset, subset) {
                (Some(s), Some(t)) => s == t,
                _ => true,
            });
            if let Some(off) = hit {
                let at: Vec<String> = [
                    off.subset.as_ref().map(|s| format!("subset {s}")),
                    off.port.as_ref().map(|p| format!("port {p}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                let at = if at.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", at.join(", "))
                };
                return Some(format!(
                    "policy: DestinationRule {}/{} disables TLS to {host}{at}",
                    id.0, id.1
                ));
            }
        }
        None
    }
}

/// Whether an unreadable object may name a host matching one of `patterns`.
fn may_name(u: &Unreadable, patterns: &[String]) -> bool {
    match &u.hosts {
        None => true,
        Some(hosts) => hosts.iter().any(|h| patterns.contains(h)),
    }
}

/// Pure: judge one target host (and its subset, if the playbook names one) against a fence.
///
/// `host` is taken as written (case and a trailing dot aside): qualify a VirtualService's
/// short destination name with [`qualify`] first.
///
/// The residency rule is checked first, then (when the fence requires it) mTLS, then the
/// DestinationRules; the first rule broken is the violation. The jurisdiction and the
/// detail line are filled whether or not the fence is active, for `plan` and `why`.
pub fn judge(view: &ClusterView, host: &str, subset: Option<&str>, fence: &Fence) -> TargetPolicy {
    let h = normalize_host(host, None);
    let place = view.place(&h);
    let coverage = match &place.namespaces {
        Ok(list) => list
            .iter()
            .map(|ns| view.strict_coverage(ns))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("; ")),
        Err(e) => Err(e.clone()),
    };
    let mut violation = None;
    if let Some(allowed) = &fence.allowed {
        violation = match &place.jurisdiction {
            Ok(code) if allowed.contains(code) => None,
            Ok(code) => Some(format!(
                "residency: jurisdiction {code} is outside the allowed set [{}]",
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            Err(why) => Some(format!("residency: jurisdiction unknown ({why})")),
        };
    }
    if violation.is_none() && fence.require_strict_mtls {
        violation = match &coverage {
            Err(v) => Some(v.clone()),
            Ok(_) => view.tls_disabled(&h, subset),
        };
    }
    let jurisdiction_part = match &place.jurisdiction {
        Ok(code) => format!("jurisdiction {code} from {}", place.source),
        Err(why) => format!("jurisdiction unknown: {why}"),
    };
    let mtls_part = match &coverage {
        Ok(by) => format!("mTLS {by}"),
        Err(v) => format!("mTLS not STRICT: {}", v.trim_start_matches("policy: ")),
    };
    TargetPolicy {
        host: host.to_string(),
        jurisdiction: place.jurisdiction.ok(),
        violation,
        detail: format!("{jurisdiction_part}; {mtls_part}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod parse_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
