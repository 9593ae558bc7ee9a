//! The resource types the emulator serves, their discovery documents and the RBAC-like rules.

use serde_json::{Value, json};

/// One served resource type (namespaced, except Namespaces themselves).
#[derive(Debug)]
pub(crate) struct Res {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// Served versions, the storage (and preferred) version first.
    pub versions: &'static [&'static str],
    /// Plural resource name (URL segment).
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// kubectl short names.
    pub short: &'static [&'static str],
    /// True for custom resources: they refuse strategic merge patch (415).
    pub custom: bool,
    /// False for cluster-scoped types (Namespace): served at `/api/v1/namespaces[/NAME]`,
    /// stored with an empty namespace.
    pub namespaced: bool,
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// security.istio.io has no v1alpha3.
const ISTIO_SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

pub(crate) const RESOURCES: &[Res] = &[
    Res {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "virtualservices",
        singular: "virtualservice",
        kind: "VirtualService",
        short: &["vs"],
        custom: true,
        namespaced: true,
    },
    Res {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "destinationrules",
        singular: "destinationrule",
        kind: "DestinationRule",
        short: &["dr"],
        custom: true,
        namespaced: true,
    },
    Res {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "serviceentries",
        singular: "serviceentry",
        kind: "ServiceEntry",
        short: &["se"],
        custom: true,
        namespaced: true,
    },
    Res {
        group: "security.istio.io",
        versions: ISTIO_SECURITY_VERSIONS,
        plural: "peerauthentications",
        singular: "peerauthentication",
        kind: "PeerAuthentication",
        short: &["pa"],
        custom: true,
        namespaced: true,
    },
    Res {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        short: &["ns"],
        custom: false,
        namespaced: false,
    },
    Res {
        group: "coordination.k8s.io",
        versions: &["v1"],
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        short: &[],
        custom: false,
        namespaced: true,
    },
    Res {
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short: &["cm"],
        custom: false,
        namespaced: true,
    },
    Res {
        group: "events.k8s.io",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        short: &["ev"],
        custom: false,
        namespaced: true,
    },
    Res {
        group: "",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        short: &["ev"],
        custom: false,
        namespaced: true,
    },
];

impl Res {
    /// `virtualservices.networking.istio.io` (or `events` for the core group), as in messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `VirtualService.networking.istio.io` (or `Event`), as in 422 messages.
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `networking.istio.io/v1` or `v1`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

/// The resource served at `group/version/plural`.
pub(crate) fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Res> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
}

/// The resource of `apiVersion` + `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<(&'static Res, String)> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
        .map(|r| (r, version.to_string()))
}

/// The resource of a bare kind (`Event` means events.k8s.io/v1).
pub(crate) fn by_kind_only(kind: &str) -> Option<&'static Res> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/apis`: the APIGroupList.
pub(crate) fn api_group_list() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if seen.contains(&r.group) {
            continue;
        }
        seen.push(r.group);
        let versions: Vec<Value> = r
            .versions
            .iter()
            .map(|v| json!({"groupVersion": r.api_version(v), "version": v}))
            .collect();
        groups.push(json!({
            "name": r.group,
            "versions": versions,
            "preferredVersion": {"groupVersion": r.api_version(r.versions[0]), "version": r.versions[0]},
        }));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`: the APIResourceList, or None if not served.
pub(crate) fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let list: Vec<&Res> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.versions.contains(&version))
        .collect();
    if list.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in list {
        let verbs: &[&str] = if r.namespaced {
            &VERBS
        } else {
            // Namespaces have no deletecollection.
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        };
        let mut entry = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs,
        });
        if !r.short.is_empty() {
            entry["shortNames"] = json!(r.short);
        }
        if r.custom {
            let sub = r.group.split('.').next().unwrap_or_default();
            entry["categories"] = json!(["istio-io", format!("{sub}-istio-io")]);
        }
        resources.push(entry);
        if r.custom {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": true,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
        "resources": resources,
    }))
}

/// One RBAC-like permission: every listed verb on every listed resource of every listed API
/// group in every listed namespace. `"*"` matches anything; the core group is `""`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, or `*`.
    pub verbs: Vec<String>,
    /// API groups, e.g. `networking.istio.io`.
    pub api_groups: Vec<String>,
    /// Plural resource names, e.g. `virtualservices`.
    pub resources: Vec<String>,
    /// Namespaces the rule applies in (`*` = every namespace and cluster scope).
    pub namespaces: Vec<String>,
}

impl Rule {
    /// A rule from string slices.
    pub fn new(
        verbs: &[&str],
        api_groups: &[&str],
        resources: &[&str],
        namespaces: &[&str],
    ) -> Rule {
        let own = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: own(verbs),
            api_groups: own(api_groups),
            resources: own(resources),
            namespaces: own(namespaces),
        }
    }

    /// Everything everywhere (cluster-admin).
    pub fn all() -> Rule {
        Rule::new(&["*"], &["*"], &["*"], &["*"])
    }

    pub(crate) fn allows(&self, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
        let m = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        m(&self.verbs, verb)
            && m(&self.api_groups, group)
            && m(&self.resources, resource)
            && match ns {
                Some(ns) => m(&self.namespaces, ns),
                None => self.namespaces.iter().any(|x| x == "*"),
            }
    }
}

/// Minimal OpenAPI v2 document in protobuf (gnostic `openapi_v2.Document`: swagger "2.0" and
/// an info block, no definitions). kubectl downloads it for client-side validation; a type it
/// does not find there (every type here) is not validated client-side, as with CRDs that
/// publish no schema.
pub(crate) fn openapi_v2_protobuf() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![(tag << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }
    let mut info = field(1, b"Kubernetes API server emulator");
    info.extend(field(2, b"v1.33.0"));
    let mut doc = field(1, b"2.0");
    doc.extend(field(2, &info));
    doc
}
