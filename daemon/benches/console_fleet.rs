//! Console benchmark: the fleet page (`GET /ui/`) with 1,000 playbooks, served by the
//! console's own router in-process (sign-in, session, CSP layer and all), timed from the
//! request to the last byte of the body; prints p50/p99 and the page's size, uncompressed and
//! gzipped (what a browser asks for). Then the live fragment the stream refreshes
//! (`GET /ui/fleet/live`).
//!
//! The fleet is mixed: a third failed over with a failing signal, one in ten frozen by an
//! override, every playbook with two signals and a recent move.
//!
//! `cargo bench -p failoverd --bench console_fleet` (goal: p99 ≤ 20 ms).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use failoverd::api::ApiState;
use failoverd::audit::AuditLog;
use failoverd::auth::{Tokens, hash_token};
use failoverd::console::{ConsoleOptions, ConsoleState, routes};
use failoverd::engine::{Health, MoveKind, Observation, Phase, Routing, SignalKind};
use failoverd::overrides::{OverrideKind, OverrideRecord};
use failoverd::playbook::{self, Loaded, Target};
use failoverd::routing::FileStore;
use failoverd::shared::{Shared, Transition};
use jiff::Timestamp;
use tower::Service;

const PLAYBOOKS: usize = 1_000;
const REQUESTS: usize = 300;

const YAML: &str = r#"
apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: { name: NAME }
spec:
  virtualService: { namespace: child-welfare, name: NAME }
  primary: { host: NAME.child-welfare.svc.cluster.local, subset: v1 }
  failover:
    - { host: NAME.child-welfare-dr.svc.cluster.local }
  probes:
    - { name: primary-health, target: primary, http: { url: "http://127.0.0.1:9/healthz" } }
    - { name: dr-health, target: "failover[0]", http: { url: "http://127.0.0.1:9/healthz" } }
"#;

fn fleet(now: Timestamp) -> (Vec<Loaded>, Arc<Shared>) {
    let loaded: Vec<Loaded> = (0..PLAYBOOKS)
        .map(|i| {
            let name = format!("service-{i:04}");
            Loaded {
                file: format!("{name}.yaml").into(),
                playbook: playbook::parse("bench.yaml", &YAML.replace("NAME", &name)).unwrap(),
            }
        })
        .collect();
    let shared = Arc::new(Shared::new(&loaded));
    {
        let mut table = shared.status.write().unwrap();
        for (i, s) in table.iter_mut().enumerate() {
            let failed = i % 3 == 0;
            let obs = |signal: &str, target: Target, health: Health| Observation {
                signal: signal.into(),
                kind: SignalKind::Probe,
                target,
                health,
                streak: 4,
                streak_since: now,
                at: now,
                max_age: Duration::from_secs(4),
                detail: String::new(),
            };
            s.phase = Some(if failed {
                Phase::FailedOver {
                    target: 0,
                    since: now,
                }
            } else {
                Phase::Normal
            });
            s.routing = Some(if failed {
                Routing::Failover { target: 0 }
            } else {
                Routing::Primary
            });
            s.explain = "primary healthy".into();
            s.signals = vec![
                obs(
                    "primary-health",
                    Target::Primary,
                    if failed {
                        Health::Unhealthy("status 503 not in [200]".into())
                    } else {
                        Health::Healthy
                    },
                ),
                obs("dr-health", Target::Failover(0), Health::Healthy),
            ];
            s.transitions.push_back(Transition {
                time: now,
                kind: MoveKind::Failover,
                from: Routing::Primary,
                to: Routing::Failover { target: 0 },
                reason: "primary unhealthy".into(),
                actor: "engine".into(),
            });
        }
    }
    *shared.overrides.write().unwrap() = (0..PLAYBOOKS)
        .step_by(10)
        .map(|i| OverrideRecord {
            id: format!("ov-{i:08x}"),
            playbook: format!("service-{i:04}"),
            kind: OverrideKind::Freeze,
            actor: "alice@oncall".into(),
            reason: "INC-1".into(),
            created: now,
            until: now
                .checked_add(jiff::SignedDuration::from_secs(3600))
                .unwrap(),
            target: None,
            force: false,
            break_glass: None,
        })
        .collect();
    shared
        .state_loaded
        .store(true, std::sync::atomic::Ordering::Release);
    (loaded, shared)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let now = Timestamp::now();
    let dir = tempfile::tempdir().unwrap();
    let (_, shared) = fleet(now);
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: alice@oncall, role: operator, sha256: \"{}\" }}\n",
            hash_token("t")
        ),
    )
    .unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let api = ApiState::new(
        shared,
        Arc::new(Tokens::load(&tokens).unwrap()),
        tx,
        Arc::new(FileStore::new(dir.path().join("routes"))),
        Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        audit_path,
    );
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut app = routes(ConsoleState::new(
        api,
        ConsoleOptions::default(),
        false,
        stop_rx,
    ));
    let signed = app
        .call(
            Request::post("/ui/sign-in")
                .header(header::HOST, "127.0.0.1:8080")
                .header(header::ORIGIN, "http://127.0.0.1:8080")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("token=t"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for (path, gzip) in [
        ("/ui/", false),
        ("/ui/", true),
        ("/ui/fleet/live", false),
        ("/ui/fleet/live", true),
    ] {
        let mut times = Vec::with_capacity(REQUESTS);
        let mut size = 0;
        for _ in 0..REQUESTS {
            let mut req = Request::get(path).header(header::COOKIE, &cookie);
            if gzip {
                req = req.header(header::ACCEPT_ENCODING, "gzip");
            }
            let req = req.body(Body::empty()).unwrap();
            let t = Instant::now();
            let resp = app.call(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            if gzip {
                assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
            }
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            times.push(t.elapsed());
            size = body.len();
            assert!(gzip || body.windows(12).any(|w| w == b"service-0999"));
        }
        times.sort();
        println!(
            "GET {path} with {PLAYBOOKS} playbooks ({REQUESTS} requests, {}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; body {} bytes",
            if gzip { "gzip" } else { "uncompressed" },
            pct(&times, 0.50).as_secs_f64() * 1e3,
            pct(&times, 0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3,
            size
        );
    }
}
