//! Two replicas as vantage points (for `tests/vantages.rs` and `benches/vantages.rs`): leader
//! election on the emulator as in `support::leader`, plus `vantage: { peers }` with a viewer
//! token for the exchange, three playbooks (three VirtualServices) so one blind observer can
//! be told from three outages, a webhook receiver for `suspect-observer`, and a TCP path
//! switch in front of the primary for one replica only.
//!
//! Each replica has its own playbooks directory: the same three playbooks, but replica-a's
//! primary probes go through [`PathSwitch`] (which can blackhole them: accept and never
//! answer, like a node that lost its route), replica-b's straight to the primary stand-in.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, free_addr, kube_replica_command};
use failoverd::standin::StandIn;
use serde_json::Value;

use super::leader::{OPERATOR_TOKEN, Replica, SEC, request};

/// The three playbooks (and VirtualServices in namespace `demo`).
pub const PLAYBOOKS: [&str; 3] = ["web", "web2", "web3"];

/// Probe interval and threshold of every playbook: detection takes `INTERVAL × THRESHOLD`.
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const THRESHOLD: u32 = 3;
/// The exchange interval (`vantage.interval`): a peer's report is live for three.
pub const EXCHANGE: Duration = Duration::from_secs(1);

/// The token every replica sends its peers; each token file gives it the viewer role.
pub const PEER_TOKEN: &str = "vantage-test-peer-token";

/// A TCP forwarder to `target` that can be switched to blackhole: new connections are then
/// accepted and never answered (held until switched back or 30 s), as on a node whose route
/// to the primary is gone. At most 256 held connections (older ones are dropped).
pub struct PathSwitch {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
}

impl PathSwitch {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (bh, h) = (blackhole.clone(), held.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let (bh, h) = (bh.clone(), h.clone());
                tokio::spawn(async move {
                    if bh.load(Ordering::SeqCst) {
                        if h.fetch_add(1, Ordering::SeqCst) >= 256 {
                            h.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                        // Held open, never answered: the probe's own timeout ends it.
                        let until = tokio::time::Instant::now() + 30 * SEC;
                        while bh.load(Ordering::SeqCst) && tokio::time::Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        h.fetch_sub(1, Ordering::SeqCst);
                        drop(inbound);
                        return;
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::time::timeout(
                            10 * SEC,
                            tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                        )
                        .await;
                    }
                });
            }
        });
        Self {
            addr,
            blackhole,
            held,
        }
    }

    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

/// A webhook receiver on loopback: every body it was sent.
pub struct Hook {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    pub async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, bodies }
    }

    /// The bodies of every `event` sent.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["event"] == event)
            .cloned()
            .collect()
    }
}

/// Stand-ins, the path switch, the emulator and the hook: everything but the replicas.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub emu: Emulator,
    pub primary: StandIn,
    pub dr: StandIn,
    pub switch: PathSwitch,
    pub hook: Hook,
    /// The two replicas' API addresses, chosen before either starts (each lists both).
    pub addrs: [SocketAddr; 2],
}

fn playbook(name: &str, primary: SocketAddr, dr: SocketAddr, trigger: &str) -> String {
    format!(
        r#"apiVersion: failoverd.dev/v1alpha1
kind: Playbook
metadata: {{ name: {name} }}
spec:
  virtualService: {{ namespace: demo, name: {name} }}
  route: primary
  primary: {{ host: web.demo.svc.cluster.local, subset: v1 }}
  failover:
    - {{ host: {DR_HOST} }}
  probes:
    - {{ name: primary-health, target: primary, http: {{ url: "http://{primary}/healthz" }}, interval: {i}ms, timeout: 500ms }}
    - {{ name: dr-health, target: "failover[0]", http: {{ url: "http://{dr}/healthz" }}, interval: {i}ms, timeout: 500ms }}
  trigger: {{ failureThreshold: {THRESHOLD}{trigger} }}
  failback: {{ mode: manual }}
  minDwell: 5s
"#,
        i = INTERVAL.as_millis()
    )
}

impl Fleet {
    /// `trigger` is appended inside `trigger: { ... }` (e.g. `, vantages: { min: 2 }`).
    pub async fn new(trigger: &str) -> Fleet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let emu = Emulator::start().await.unwrap();
        let vs: Value = serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap();
        for name in PLAYBOOKS {
            let mut v = vs.clone();
            v["metadata"]["name"] = Value::String(name.into());
            emu.seed(v).unwrap();
        }
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let primary = StandIn::start("primary", loopback).await.unwrap();
        let dr = StandIn::start("dr", loopback).await.unwrap();
        let switch = PathSwitch::start(primary.addr()).await;
        let dir = tempfile::tempdir().unwrap();
        for (replica, via) in [("replica-a", switch.addr), ("replica-b", primary.addr())] {
            let pbs = dir.path().join(replica).join("playbooks");
            std::fs::create_dir_all(&pbs).unwrap();
            for name in PLAYBOOKS {
                std::fs::write(
                    pbs.join(format!("{name}.yaml")),
                    playbook(name, via, dr.addr(), trigger),
                )
                .unwrap();
            }
        }
        Fleet {
            dir,
            emu,
            primary,
            dr,
            switch,
            hook: Hook::start().await,
            addrs: [free_addr().unwrap(), free_addr().unwrap()],
        }
    }

    /// Starts replica `i` (0: replica-a, whose primary path goes through the switch; 1:
    /// replica-b, direct); the binary is `chaos_tests::failoverd_bin()` (debug for tests,
    /// release for benches).
    pub fn spawn(&self, i: usize) -> Replica {
        let name = ["replica-a", "replica-b"][i];
        let dir = self.dir.path().join(name);
        let kube_token = format!("{name}-kube-token");
        self.emu.add_token(&kube_token, name, vec![Rule::all()]);
        let kubeconfig = dir.join("kubeconfig");
        self.emu.write_kubeconfig(&kubeconfig, &kube_token).unwrap();
        let peer_token = dir.join("peer-token");
        std::fs::write(&peer_token, format!("{PEER_TOKEN}\n")).unwrap();
        let secret = dir.join("hook-secret");
        std::fs::write(&secret, "test-secret").unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "leaderElection:\n  enabled: true\n  namespace: failoverd\n  leaseDuration: 3s\n  \
                 renewDeadline: 2s\n  retryPeriod: 500ms\n\
                 vantage:\n  zone: zone-{i}\n  interval: {}ms\n  tokenFile: {}\n  \
                 peers: [\"http://{}\", \"http://{}\"]\n\
                 notify:\n  webhooks:\n    - {{ name: oncall, url: \"http://{}/hook\", \
                 events: [suspect-observer, failover], secretFile: {} }}\n",
                EXCHANGE.as_millis(),
                peer_token.display(),
                self.addrs[0],
                self.addrs[1],
                self.hook.addr,
                secret.display()
            ),
        )
        .unwrap();
        let tokens = dir.join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n\
                 - {{ identity: \"vantage@peers\", role: viewer, sha256: \"{}\" }}\n",
                failoverd::auth::hash_token(OPERATOR_TOKEN),
                failoverd::auth::hash_token(PEER_TOKEN)
            ),
        )
        .unwrap();
        let audit = dir.join("audit.jsonl");
        let stderr = dir.join("stderr.log");
        let mut cmd = kube_replica_command(
            &config,
            &dir.join("playbooks"),
            &kubeconfig,
            self.addrs[i],
            &audit,
            name,
        );
        let child = cmd
            .arg("--state")
            .arg(dir.join("overrides.json"))
            .arg("--tokens")
            .arg(&tokens)
            .stdout(File::create(dir.join("stdout.log")).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning failoverd run");
        Replica {
            name,
            child,
            status: None,
            addr: self.addrs[i],
            audit,
            shipped: PathBuf::new(),
            stderr,
            kube_token,
        }
    }

    /// Starts replica-a, waits until it leads, then replica-b, and waits until each sees the
    /// other live (so the fault meets an exchange already running).
    pub async fn pair(&self) -> (Replica, Replica) {
        let mut a = self.spawn(0);
        a.wait_ready().await;
        a.wait_leader(1, 20 * SEC).await;
        let mut b = self.spawn(1);
        b.wait_ready().await;
        for r in [&a, &b] {
            let start = std::time::Instant::now();
            while !peer_live(r).await {
                assert!(
                    start.elapsed() < 20 * SEC,
                    "{} never saw its peer live\n{}\n{}",
                    r.name,
                    a.logs(),
                    b.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        (a, b)
    }

    /// Whether the VirtualService `name` routes the primary route to the DR host.
    pub fn failed_over(&self, name: &str) -> bool {
        self.emu
            .get("networking.istio.io/v1", "VirtualService", "demo", name)
            .is_some_and(|v| v["spec"]["http"][1]["route"][0]["destination"]["host"] == DR_HOST)
    }

    /// When each playbook's VirtualService was first updated after `t` (the API server's own
    /// answer time), in [`PLAYBOOKS`] order.
    pub fn first_updates(&self, t: SystemTime) -> Vec<Option<Duration>> {
        let writes = self.emu.writes();
        PLAYBOOKS
            .iter()
            .map(|name| {
                writes
                    .iter()
                    .filter(|w| {
                        w.kind == "VirtualService"
                            && w.name == *name
                            && w.verb != "create"
                            && w.status < 300
                    })
                    .find_map(|w| w.time.duration_since(t).ok())
            })
            .collect()
    }

    /// Every successful VirtualService update so far.
    pub fn vs_updates(&self) -> usize {
        self.emu
            .writes()
            .iter()
            .filter(|w| w.kind == "VirtualService" && w.verb != "create" && w.status < 300)
            .count()
    }
}

/// Whether `r` shows its one peer live in `GET /v1/playbooks/web`.
pub async fn peer_live(r: &Replica) -> bool {
    playbook_detail(r, "web").await.is_some_and(|v| {
        v["vantages"]["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 1 && p[0]["live"] == true)
    })
}

/// `GET /v1/playbooks/{name}` from `r`, parsed.
pub async fn playbook_detail(r: &Replica, name: &str) -> Option<Value> {
    let (code, body) = request(r.addr, "GET", &format!("/v1/playbooks/{name}"), None)
        .await
        .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// One counter's value on `r`'s `/metrics` (the line starting with `prefix`).
pub async fn metric(r: &Replica, prefix: &str) -> Option<f64> {
    let (_, body) = request(r.addr, "GET", "/metrics", None).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().split(' ').next()?.parse().ok())
}
