//! Properties of the verdict over random clusters: the order objects arrive in does not
//! matter, a weaker mesh never turns a refusal into a pass, a narrower allowed set never
//! passes what a wider one refuses, and a pass under a residency rule always has a known
//! jurisdiction inside the set.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const NAMESPACES: [&str; 3] = ["cases", "cases-dr", "istio-system"];
const LABELS: [Option<&str>; 4] = [None, Some("ID"), Some("SG"), Some("id")];
const MODES: [&str; 4] = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
const HOSTS: [&str; 4] = [
    "cases.cases-dr.svc.cluster.local",
    "cases.cases.svc.cluster.local",
    "records.example.co.id",
    "db.records.example.co.id",
];

fn ns_obj() -> impl Strategy<Value = Value> {
    (0..NAMESPACES.len(), 0..LABELS.len()).prop_map(|(n, l)| {
        let mut o =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACES[n]}});
        if let Some(l) = LABELS[l] {
            o["metadata"]["labels"] = json!({ JURISDICTION_LABEL: l });
        }
        o
    })
}

fn pa_obj() -> impl Strategy<Value = Value> {
    (
        0..NAMESPACES.len(),
        0..3usize,
        0..MODES.len(),
        any::<bool>(),
    )
        .prop_map(|(n, name, m, workload)| {
            let mut spec = json!({"mtls": {"mode": MODES[m]}});
            if workload {
                spec["selector"] = json!({"matchLabels": {"app": "cases"}});
            }
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": format!("pa{name}"), "namespace": NAMESPACES[n]}, "spec": spec})
        })
}

fn dr_obj() -> impl Strategy<Value = Value> {
    let host = prop_oneof![
        Just("cases".to_string()),
        Just("*.cases-dr.svc.cluster.local".to_string()),
        Just("*.example.co.id".to_string()),
        (0..HOSTS.len()).prop_map(|h| HOSTS[h].to_string()),
    ];
    (0..NAMESPACES.len(), 0..2usize, host, 0..3usize).prop_map(|(n, name, host, tls)| {
        let tls = ["DISABLE", "ISTIO_MUTUAL", "SIMPLE"][tls];
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": format!("dr{name}"), "namespace": NAMESPACES[n]},
            "spec": {"host": host, "subsets": [{"name": "v2", "trafficPolicy": {"tls": {"mode": tls}}}]}})
    })
}

fn se_obj() -> impl Strategy<Value = Value> {
    let hosts = prop_oneof![
        Just(vec!["records.example.co.id"]),
        Just(vec!["*.example.co.id"]),
        Just(vec!["db.records.example.co.id", "records.example.co.id"]),
    ];
    (0..NAMESPACES.len(), 0..2usize, hosts, 0..LABELS.len()).prop_map(|(n, name, hosts, l)| {
        let mut o = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": format!("se{name}"), "namespace": NAMESPACES[n]},
            "spec": {"hosts": hosts}});
        if let Some(l) = LABELS[l] {
            o["metadata"]["labels"] = json!({ JURISDICTION_LABEL: l });
        }
        o
    })
}

fn objects() -> impl Strategy<Value = Vec<Value>> {
    proptest::collection::vec(prop_oneof![ns_obj(), pa_obj(), dr_obj(), se_obj()], 0..14)
}

fn build(objects: &[Value]) -> ClusterView {
    let mut v = ClusterView::default();
    for o in objects {
        v.insert(o).expect("generated objects are well-formed");
    }
    v
}

fn fences() -> Vec<Fence> {
    let sets: [Option<&[&str]>; 4] = [None, Some(&[]), Some(&["ID"]), Some(&["ID", "SG"])];
    let mut out = Vec::new();
    for set in sets {
        for strict in [false, true] {
            out.push(Fence {
                allowed: set.map(|s| s.iter().map(|c| c.to_string()).collect()),
                require_strict_mtls: strict,
            });
        }
    }
    out
}

proptest! {
    /// The view is the same whatever order the objects arrive in (the last version of each
    /// object wins, so only the order among distinct objects is shuffled), and deleting every
    /// object leaves nothing behind.
    #[test]
    fn order_does_not_matter(objs in objects(), seed in any::<u64>()) {
        // Keep the last version of each object, as a watch would end with.
        let mut last: Vec<Value> = Vec::new();
        for o in &objs {
            let id = |v: &Value| (v["kind"].clone(), v["metadata"]["namespace"].clone(), v["metadata"]["name"].clone());
            last.retain(|p| id(p) != id(o));
            last.push(o.clone());
        }
        let mut shuffled = last.clone();
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let a = build(&objs);
        let b = build(&shuffled);
        prop_assert_eq!(&a, &b);
        let mut emptied = a.clone();
        for o in &shuffled {
            emptied.remove(o);
        }
        prop_assert_eq!(emptied, ClusterView::default());
    }

    /// A weaker mesh (a PERMISSIVE workload-level PeerAuthentication in the target's
    /// namespace, a DestinationRule disabling TLS to it) never turns a refusal into a pass,
    /// and always refuses when mTLS is required.
    #[test]
    fn a_weaker_mesh_never_passes_more(objs in objects(), h in 0..HOSTS.len(), subset in any::<bool>()) {
        let host = HOSTS[h];
        let subset = subset.then_some("v2");
        let before = build(&objs);
        // A PERMISSIVE workload in every namespace (whichever one the host's facts point at).
        let weak_pas: Vec<Value> = NAMESPACES
            .iter()
            .map(|ns| json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "weak", "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "PERMISSIVE"}}}))
            .collect();
        let weak_dr = vec![json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "weak", "namespace": "cases"},
            "spec": {"host": host, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}})];
        for weaker in [weak_pas, weak_dr] {
            let mut after = before.clone();
            for o in &weaker {
                after.insert(o).expect("well-formed");
            }
            let weaker = Value::Array(weaker);
            for f in fences() {
                let was = judge(&before, host, subset, &f).violation;
                let is = judge(&after, host, subset, &f).violation;
                if was.is_some() || f.require_strict_mtls {
                    prop_assert!(is.is_some(), "{weaker} let {host} pass under {f:?}");
                }
            }
        }
    }

    /// A narrower allowed set never passes what a wider one refuses; a pass under a residency
    /// rule has a known jurisdiction inside the set.
    #[test]
    fn narrower_sets_pass_less(objs in objects(), h in 0..HOSTS.len(), strict in any::<bool>()) {
        let host = HOSTS[h];
        let view = build(&objs);
        let with = |set: &[&str]| Fence {
            allowed: Some(set.iter().map(|c| c.to_string()).collect()),
            require_strict_mtls: strict,
        };
        let wide = judge(&view, host, None, &with(&["ID", "SG"]));
        let narrow = judge(&view, host, None, &with(&["ID"]));
        if narrow.violation.is_none() {
            prop_assert!(wide.violation.is_none());
            prop_assert_eq!(narrow.jurisdiction.as_deref(), Some("ID"));
        }
        if wide.violation.is_none() {
            let j = wide.jurisdiction.clone();
            prop_assert!(matches!(j.as_deref(), Some("ID" | "SG")), "{:?}", j);
        }
        prop_assert!(judge(&view, host, None, &with(&[])).violation.is_some());
    }
}
