//! The fence from the cluster's objects to the routes written: random namespaces' labels,
//! PeerAuthentications and DestinationRules, judged by `residency::judge`, fed to `decide`
//! with random faults and operator calls (force and break-glass included). The oracle is
//! the residency and mTLS rules restated over the generated facts, not `judge`.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::fence::{crossing, hold_for};
use super::*;
use crate::residency::{ClusterView, Fence, judge};

/// The namespaces of [`BASE`]'s destinations: primary, failover[0], failover[1].
const NAMESPACES: [&str; 3] = ["ns", "dr", "dr2"];

/// One namespace's facts: its jurisdiction label, its namespace-wide PeerAuthentication
/// mode, and whether a DestinationRule disables TLS to the service.
#[derive(Clone, Copy, Debug)]
struct Facts {
    label: u8,
    pa: u8,
    dr_disable: bool,
}

fn facts() -> impl Strategy<Value = Facts> {
    (0u8..4, 0u8..4, proptest::bool::weighted(0.2)).prop_map(|(label, pa, dr_disable)| Facts {
        label,
        pa,
        dr_disable,
    })
}

/// The rules, restated: the label is `ID`, the namespace is STRICT (its own mode, or the
/// mesh-wide one when it sets none or UNSET), and no DestinationRule disables TLS.
fn allowed(f: Facts, mesh_strict: bool) -> bool {
    let strict = match f.pa {
        1 => true,
        2 => false,
        _ => mesh_strict,
    };
    f.label == 1 && strict && !f.dr_disable
}

fn objects(all: [Facts; 3], mesh_strict: bool) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": { "name": "default", "namespace": "istio-system" },
        "spec": { "mtls": { "mode": if mesh_strict { "STRICT" } else { "PERMISSIVE" } } }
    })];
    for (ns, f) in NAMESPACES.iter().zip(all) {
        let mut meta = json!({ "name": ns });
        match f.label {
            1 => meta["labels"] = json!({ "failoverd.dev/jurisdiction": "ID" }),
            2 => meta["labels"] = json!({ "failoverd.dev/jurisdiction": "SG" }),
            3 => meta["labels"] = json!({ "failoverd.dev/jurisdiction": "id" }),
            _ => {}
        }
        out.push(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": meta }));
        let mode = match f.pa {
            1 => Some("STRICT"),
            2 => Some("PERMISSIVE"),
            3 => Some("UNSET"),
            _ => None,
        };
        if let Some(mode) = mode {
            out.push(json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": { "name": "default", "namespace": ns },
                "spec": { "mtls": { "mode": mode } }
            }));
        }
        if f.dr_disable {
            out.push(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": { "name": "plain", "namespace": ns },
                "spec": { "host": "svc", "trafficPolicy": { "tls": { "mode": "DISABLE" } } }
            }));
        }
    }
    out
}

/// What the daemon does on a view change: one `Policy` observation per destination.
fn judge_all(w: &mut World, pb: &Playbook, view: &ClusterView, now: Timestamp) {
    let fence = Fence {
        allowed: Some(["ID".to_string()].into_iter().collect()),
        require_strict_mtls: true,
    };
    for (i, target) in [Target::Primary, Target::Failover(0), Target::Failover(1)]
        .into_iter()
        .enumerate()
    {
        let d = pb.destination(target).unwrap();
        let subset = d.subset.as_ref().map(|s| s.value.as_str());
        let v = judge(view, &d.host.value, subset, &fence);
        let health = v.violation.map_or(Health::Healthy, Health::Unhealthy);
        w.report(
            &format!("policy-{i}"),
            target,
            SignalKind::Policy,
            health,
            now,
        );
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        dt_ms: u64,
        down: [bool; 3],
    },
    Cluster {
        all: [Facts; 3],
        mesh_strict: bool,
    },
    Hold {
        target: usize,
        force: bool,
        break_glass: bool,
    },
    Failback {
        force: bool,
    },
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        10 => (0u64..4000, any::<[bool; 3]>()).prop_map(|(dt_ms, down)| Ev::Tick { dt_ms, down }),
        3 => ([facts(), facts(), facts()], any::<bool>()).prop_map(|(all, mesh_strict)| Ev::Cluster { all, mesh_strict }),
        2 => (0usize..2, any::<bool>(), proptest::bool::weighted(0.2)).prop_map(|(target, force, break_glass)| Ev::Hold { target, force, break_glass }),
        1 => any::<bool>().prop_map(|force| Ev::Failback { force }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_route_leaves_the_country_or_the_mesh(
        start in ([facts(), facts(), facts()], any::<bool>()),
        events in proptest::collection::vec(ev(), 1..150),
    ) {
        let mut pb = playbook(&[]);
        pb.fenced = true;
        let mut w = World::default();
        let mut st = State::default();
        let mut now = at(0);
        let mut ov = Overrides::default();
        let (mut facts_now, mut mesh_strict) = start;
        let mut view = ClusterView::default();
        for o in objects(facts_now, mesh_strict) {
            view.insert(&o).unwrap();
        }
        judge_all(&mut w, &pb, &view, now);
        for e in events {
            ov.command = None;
            match e {
                Ev::Tick { dt_ms, down } => {
                    now += jiff::SignedDuration::from_millis(dt_ms as i64);
                    let h = |d: bool| if d { Health::Unhealthy("down".into()) } else { Health::Healthy };
                    w.probes(h(down[0]), h(down[1]), h(down[2]), now);
                }
                Ev::Cluster { all, mesh_strict: m } => {
                    (facts_now, mesh_strict) = (all, m);
                    view = ClusterView::default();
                    for o in objects(all, m) {
                        view.insert(&o).unwrap();
                    }
                    judge_all(&mut w, &pb, &view, now);
                }
                Ev::Hold { target, force, break_glass } => {
                    ov.hold = Some(hold_for(target, force, break_glass, now));
                }
                Ev::Failback { force } => {
                    ov.hold = None;
                    ov.command = Some(Command::Failback { by: actor(), force });
                }
            }
            let d = decide(&pb, &st, &w.list(), &ov, now);
            let crossed = crossing(&d, &ov, now, |i| !allowed(facts_now[i], mesh_strict));
            prop_assert!(crossed.is_none(), "{:?} (facts {:?}, mesh STRICT {})", crossed, facts_now, mesh_strict);
            st = d.state.clone();
        }
    }
}
