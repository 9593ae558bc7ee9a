//! Engine benchmark: one pass of `decide` over 10,000 playbooks, repeated; prints p50/p99.
//!
//! `cargo bench -p failoverd --bench decide` (goal: one pass ≤ 50 ms).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use failoverd::engine::{Health, Observation, Overrides, SignalKind, State, decide};
use failoverd::playbook::{self, Target, Validate};
use jiff::Timestamp;

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
    let mut passes = Vec::with_capacity(PASSES);
    let mut moves = 0usize;
    for _ in 0..PASSES {
        let t = Instant::now();
        for (pb, st, obs) in &fleet {
            let d = decide(pb, st, obs, &ov, now);
            moves += d.actions.len();
        }
        passes.push(t.elapsed());
    }
    passes.sort();
    let pct = |p: f64| passes[((passes.len() - 1) as f64 * p).round() as usize];
    println!(
        "decide over {PLAYBOOKS} playbooks, {PASSES} passes ({} actions per pass)",
        moves / PASSES
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
