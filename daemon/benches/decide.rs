//! Engine benchmark: one pass of `decide` over 10,000 playbooks, repeated; prints p50/p99.
//! Then the same fleet fenced (residency ID, strict mTLS): each pass judges every target
//! again on the mesh view (`control::fence::policy_observations`, i.e. `judge`, on a
//! `ClusterView` of 30,000 Namespaces and a mesh-wide STRICT PeerAuthentication) and
//! decides with those `Policy` observations: what re-judging the whole fleet costs on one
//! view change (a relabel). Both lines are printed (fence off / on).
//!
//! `cargo bench -p failoverd --bench decide` (goal: one pass ≤ 50 ms).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use std::sync::Arc;

use failoverd::config::FenceConfig;
use failoverd::control::fence::{fence_of, policy_observations};
use failoverd::engine::{Health, Observation, Overrides, SignalKind, State, decide};
use failoverd::mesh::{ClusterView, Snapshot};
use failoverd::playbook::{self, Target, Validate};
use jiff::Timestamp;
use serde_json::json;

const PLAYBOOKS: usize = 10_000;
const PASSES: usize = 50;

const YAML: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: bench }
spec:
  virtualService: { namespace: ns, name: svc }
  primary: { host: svc.ns.svc.cluster.local, subset: v1 }
  failover:
    - { host: svc.dr.svc.cluster.local }
    - { host: svc.dr2.svc.cluster.local }
  probes:
    - { name: p, target: primary, http: { url: "http://127.0.0.1:9/healthz" } }
    - { name: p2, target: primary, tcp: { address: "127.0.0.1:9" } }
    - { name: f0, target: "failover[0]", tcp: { address: "127.0.0.1:9" } }
    - { name: f1, target: "failover[1]", tcp: { address: "127.0.0.1:9" } }
  failback: { after: 60s, steps: [10, 50, 100], stepInterval: 30s }
"#;

fn main() {
    let base = playbook::parse("bench.yaml", YAML).unwrap();
    assert!(base.validate("bench.yaml").is_empty());
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    // A mixed fleet: a third failing (about to fail over), the rest healthy.
    let fleet: Vec<_> = (0..PLAYBOOKS)
        .map(|i| {
            let failing = i % 3 == 0;
            let obs: Vec<Observation> = [
                ("p", Target::Primary),
                ("p2", Target::Primary),
                ("f0", Target::Failover(0)),
                ("f1", Target::Failover(1)),
            ]
            .into_iter()
            .map(|(name, target)| Observation {
                signal: name.into(),
                kind: SignalKind::Probe,
                target,
                health: if failing && target == Target::Primary {
                    Health::Unhealthy("connect: connection refused".into())
                } else {
                    Health::Healthy
                },
                streak: 5,
                streak_since: now,
                at: now,
                max_age: Duration::from_secs(4),
                detail: String::new(),
            })
            .collect();
            (base.clone(), State::default(), obs)
        })
        .collect();
    let ov = Overrides::default();
    let passes = timed(|| {
        let mut moves = 0;
        for (pb, st, obs) in &fleet {
            moves += decide(pb, st, obs, &ov, now).actions.len();
        }
        moves
    });
    report("decide over {PLAYBOOKS} playbooks, fence off", &passes);

    // Fenced: every playbook's namespaces in the view (each playbook its own three, as a
    // fleet of separate services would be), the first DR copy in ID, the second in SG (the
    // fence refuses it), all under a mesh-wide STRICT PeerAuthentication.
    let daemon = FenceConfig {
        allowed: Some(vec!["ID".into()]),
        require_strict_mtls: None,
    };
    let mut view = ClusterView::default();
    let ns = |name: String, code: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"failoverd.dev/jurisdiction": code}}})
    };
    for i in 0..PLAYBOOKS {
        view.insert(&ns(format!("ns{i}"), "ID")).unwrap();
        view.insert(&ns(format!("dr{i}"), "ID")).unwrap();
        view.insert(&ns(format!("drb{i}"), "SG")).unwrap();
    }
    view.insert(
        &json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}}}),
    )
    .unwrap();
    let snap = Snapshot {
        view: Arc::new(view),
        synced: true,
        error: None,
    };
    let fenced: Vec<_> = fleet
        .iter()
        .enumerate()
        .map(|(i, (pb, st, obs))| {
            let mut pb = pb.clone();
            pb.spec.primary.host.value = format!("svc.ns{i}.svc.cluster.local");
            pb.spec.failover.value[0].host.value = format!("svc.dr{i}.svc.cluster.local");
            pb.spec.failover.value[1].host.value = format!("svc.drb{i}.svc.cluster.local");
            pb.fenced = true;
            let fence = fence_of(&pb, &daemon);
            (pb, fence, st, obs)
        })
        .collect();
    // What one pass must produce, checked once outside the timing: three verdicts per
    // playbook, the SG copy refused, the others cleared.
    let (pb, fence, _, _) = &fenced[1];
    let verdicts = policy_observations(pb, fence, &snap, now);
    let refused: Vec<_> = verdicts
        .iter()
        .filter(|o| matches!(o.health, Health::Unhealthy(_)))
        .map(|o| o.target)
        .collect();
    assert_eq!(
        (verdicts.len(), refused),
        (3, vec![Target::Failover(1)]),
        "{verdicts:?}"
    );
    let passes = timed(|| {
        let mut moves = 0;
        for (pb, fence, st, obs) in &fenced {
            // As the controller does on a view change: judge every target, then decide on
            // the probes' observations with the verdicts appended.
            let policy = policy_observations(pb, fence, &snap, now);
            let all: Vec<Observation> = obs.iter().cloned().chain(policy).collect();
            moves += decide(pb, st, &all, &ov, now).actions.len();
        }
        moves
    });
    report(
        "judge + decide over {PLAYBOOKS} fenced playbooks (30,000 namespaces in the view), fence on",
        &passes,
    );
    // The share of it that is judging (the Policy observations alone, no decide).
    let passes = timed(|| {
        let mut n = 0;
        for (pb, fence, _, _) in &fenced {
            n += policy_observations(pb, fence, &snap, now).len();
        }
        n
    });
    report(
        "of which judge alone ({PLAYBOOKS} x 3 targets; \"actions\" = observations)",
        &passes,
    );
}

/// Runs `pass` [`PASSES`] times; the sorted durations and the actions per pass.
fn timed(mut pass: impl FnMut() -> usize) -> (Vec<Duration>, usize) {
    let mut out = Vec::with_capacity(PASSES);
    let mut moves = 0usize;
    for _ in 0..PASSES {
        let t = Instant::now();
        moves += pass();
        out.push(t.elapsed());
    }
    out.sort();
    (out, moves / PASSES)
}

fn report(what: &str, (passes, actions): &(Vec<Duration>, usize)) {
    let pct = |p: f64| passes[((passes.len() - 1) as f64 * p).round() as usize];
    println!(
        "{}, {PASSES} passes ({actions} actions per pass)",
        what.replace("{PLAYBOOKS}", &PLAYBOOKS.to_string())
    );
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   min {:.2} ms   max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(passes[0]),
        ms(passes[PASSES - 1])
    );
    println!(
        "  per playbook p50 {:.2} µs   goal: one pass <= 50 ms",
        ms(pct(0.5)) * 1000.0 / PLAYBOOKS as f64
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
