//! The fault-drill set-up shared by `tests/fault_drills.rs`, `tests/fault_drill_disk.rs` and
//! `tests/fault_drills_all.rs`:
//! the demo scenario with fast probes, a VirtualService with a route for the primary's probe,
//! the routing proxy (`chaos_tests::proxy`) the primary's probe goes through, drills written
//! from (name, spec body), an admin token, and the polls of a run's report. The kubernetes
//! variant ([`Setup::new_kube`], for `tests/fault_drills_kube.rs`) keeps the same
//! VirtualService in the API server emulator instead of the file, the router following it
//! there.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use chaos_tests::proxy::{Proxy, ProxyConfig, RouteSource};
use chaos_tests::{Daemon, DaemonPaths, Scenario, run_cli};
use failoverd::auth::hash_token;
use serde_json::Value;

/// The admin token the tests call the API and CLI with.
pub const TOKEN: &str = "fault-drill-operator-token";
/// Generous: a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(30);
/// The demo playbook with 500 ms probes, two failures to trigger, a quick failback.
pub const FAST: &[(&str, &str)] = &[
    ("interval: 1s # one attempt per second", "interval: 500ms"),
    (
        "timeout: 500ms # an attempt without an answer after 500 ms is a failure",
        "timeout: 300ms",
    ),
    ("interval: 1s\n", "interval: 500ms\n"),
    ("timeout: 500ms\n", "timeout: 300ms\n"),
    ("failureThreshold: 3", "failureThreshold: 2"),
    ("after: 5s", "after: 1s"),
    ("minDwell: 5s", "minDwell: 1s"),
    ("steps: [50, 100]", "steps: [100]"),
];

/// The demo VirtualService plus a route for the primary's probe (`x-probe: primary`), so
/// the probe reaches the primary whatever the guarded route points at, as a probe of a
/// subset would in a mesh.
pub const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: web
  namespace: demo
  labels: { app: web }
  annotations: { owner: platform-team }
spec:
  hosts: [ web.demo.svc.cluster.local ]
  gateways: [ mesh ]
  http:
    - name: probe-primary
      match:
        - headers:
            x-probe: { exact: primary }
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1 }
    - name: primary
      retries: { attempts: 2, perTryTimeout: 2s }
      timeout: 10s
      route:
        - destination: { host: web.demo.svc.cluster.local, subset: v1 }
          weight: 100
";

/// The routing proxy on the scenario's VirtualService file: the demo's primary subset and
/// its DR host mapped to the stand-ins; `primary` is the route failoverd rewrites.
pub async fn start_proxy(s: &Scenario) -> Proxy {
    Proxy::start(
        ProxyConfig::new(s.vs_path.clone(), Some("primary".into()))
            .upstream("web.demo.svc.cluster.local", Some("v1"), s.primary.addr())
            .upstream(chaos_tests::DR_HOST, None, s.dr.addr()),
    )
    .await
    .unwrap()
}

/// A fault-drill scenario: the stand-ins and files, the tokens file, the routing proxy.
pub struct Setup {
    /// The demo scenario (stand-ins, playbook, VirtualService file, audit log).
    pub s: Scenario,
    /// `--tokens`: [`TOKEN`] as an admin.
    pub tokens: PathBuf,
    /// The routing proxy the primary's probe goes through.
    pub router: Proxy,
    /// The API server emulator holding the VirtualService (`--store kubernetes`; shared, so a
    /// competing client's task can hold it); None on the file store.
    pub emu: Option<Arc<Emulator>>,
}

impl Setup {
    /// The demo scenario with the primary's probe through the router (header
    /// `x-probe: primary`), the DR probe direct, and the drills given as (name, spec body).
    pub async fn new(drills: &[(&str, &str)]) -> Self {
        let s = Scenario::new(FAST).await.unwrap();
        std::fs::write(&s.vs_path, VS).unwrap();
        let router = start_proxy(&s).await;
        Self::around(s, router, None, drills)
    }

    /// [`Setup::new`] on the kubernetes store: [`VS`] seeded in an API server emulator, the
    /// router following it there (list and watch, as istiod does), failoverd started with
    /// `--store kubernetes` and a kubeconfig holding the emulator's admin token.
    pub async fn new_kube(drills: &[(&str, &str)]) -> Self {
        let s = Scenario::new(FAST).await.unwrap();
        let emu = Emulator::start().await.unwrap();
        emu.seed(serde_saphyr::from_str(VS).unwrap()).unwrap();
        emu.write_kubeconfig(&s.dir.path().join("kubeconfig"), ADMIN_TOKEN)
            .unwrap();
        let router = Proxy::start(
            ProxyConfig::with_source(
                RouteSource::emulator(&emu, "demo", "web"),
                Some("primary".into()),
            )
            .upstream("web.demo.svc.cluster.local", Some("v1"), s.primary.addr())
            .upstream(chaos_tests::DR_HOST, None, s.dr.addr()),
        )
        .await
        .unwrap();
        Self::around(s, router, Some(Arc::new(emu)), drills)
    }

    /// The rest of the set-up, whichever store: the primary probe through `router`, the
    /// drills, the tokens.
    fn around(
        s: Scenario,
        router: Proxy,
        emu: Option<Arc<Emulator>>,
        drills: &[(&str, &str)],
    ) -> Self {
        let primary_url = format!("http://{}/healthz", s.primary.addr());
        assert_eq!(s.playbook_text.matches(&primary_url).count(), 1);
        let text = s.playbook_text.replace(
            &format!("url: \"{primary_url}\" }}"),
            &format!(
                "url: \"http://{}/healthz\", headers: {{ x-probe: primary }} }}",
                router.addr()
            ),
        );
        assert_ne!(text, s.playbook_text, "the primary probe was not rerouted");
        std::fs::write(&s.playbook_path, text).unwrap();
        let dir = s.paths.playbooks.join("drills");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in drills {
            std::fs::write(
                dir.join(format!("{name}.yaml")),
                format!(
                    "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: {{ name: {name} }}\nspec:\n  playbooks: [ demo ]\n{body}"
                ),
            )
            .unwrap();
        }
        let tokens = s.dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "- {{ identity: \"fault-test@oncall\", role: admin, sha256: \"{}\" }}\n",
                hash_token(TOKEN)
            ),
        )
        .unwrap();
        Self {
            s,
            tokens,
            router,
            emu,
        }
    }

    /// Starts failoverd on the scenario's paths, with the tokens; waits until it is ready.
    pub async fn spawn(&self, name: &str) -> Daemon {
        self.spawn_on(&self.s.paths, name).await
    }

    /// [`Setup::spawn`] on other paths (e.g. the audit log on a tmpfs). The override state,
    /// and the drill reports beside it, stay in the scenario's directory (`--state`; the
    /// default is beside the audit log): with the audit log alone on a small filesystem,
    /// their writes and deletions do not give it space.
    pub async fn spawn_on(&self, paths: &DaemonPaths, name: &str) -> Daemon {
        let state = self.s.dir.path().join("overrides.json");
        let kubeconfig = self.s.dir.path().join("kubeconfig");
        let mut args = vec![
            std::ffi::OsStr::new("--tokens"),
            self.tokens.as_os_str(),
            std::ffi::OsStr::new("--state"),
            state.as_os_str(),
        ];
        let mut d = if self.emu.is_some() {
            args.extend([std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()]);
            Daemon::spawn_store(paths, name, "kubernetes", &args)
        } else {
            Daemon::spawn_with(paths, name, &args)
        }
        .unwrap();
        d.wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        d
    }

    /// Runs the CLI against `d` with [`TOKEN`].
    pub fn cli(&self, d: &Daemon, args: &[&str]) -> std::process::Output {
        let url = format!("http://{}", d.addr);
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--url", &url, "--token", TOKEN]);
        run_cli(all, Duration::from_secs(90)).unwrap()
    }

    /// Starts drill `name` (no wait); the run id.
    pub fn start(&self, d: &Daemon, name: &str) -> String {
        let out = self.cli(d, &["drill", "run", name, "--reason", "fault drill test"]);
        chaos_tests::drill_run_id(&out, &d.logs())
    }

    /// The VirtualService as the store holds it: the file, or the emulator's stored object
    /// (read directly, not through failoverd).
    pub fn vs(&self) -> Value {
        match &self.emu {
            Some(emu) => emu
                .get("networking.istio.io/v1", "VirtualService", "demo", "web")
                .unwrap(),
            None => self.s.read_vs().unwrap(),
        }
    }

    /// The drill fault routes in the store's VirtualService.
    pub fn fault_routes(&self) -> Vec<String> {
        match &self.emu {
            Some(_) => fault_routes_in(&self.vs()),
            None => fault_routes(&self.s.vs_path),
        }
    }

    /// The drill-fault records of the audit log: (action, outcome, actor).
    pub fn fault_audit(&self) -> Vec<(String, String, String)> {
        self.s
            .audit()
            .into_iter()
            .filter(|r| r.action.starts_with("drill-fault"))
            .map(|r| (r.action, r.outcome, r.actor))
            .collect()
    }
}

/// The names of the drill fault routes (`failoverd-drill-*`) in the VirtualService file.
pub fn fault_routes(vs: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(vs) else {
        return Vec::new();
    };
    let Ok(v) = serde_saphyr::from_str::<Value>(&text) else {
        return Vec::new();
    };
    fault_routes_in(&v)
}

/// The names of the drill fault routes (`failoverd-drill-*`) in a VirtualService object.
pub fn fault_routes_in(v: &Value) -> Vec<String> {
    v["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| n.starts_with("failoverd-drill-"))
        .map(String::from)
        .collect()
}

/// A GET on the API with [`TOKEN`]: status and body.
pub async fn api_get(addr: SocketAddr, path: &str) -> (u16, String) {
    chaos_tests::http_get_as(addr, path, TOKEN, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Polls a run until it has a verdict (bounded).
pub async fn verdict(addr: SocketAddr, drill: &str, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        let (code, body) = api_get(addr, &format!("/v1/drills/{drill}/runs/{id}")).await;
        if code == 200 {
            last = serde_json::from_str(&body).unwrap();
            if last["result"] != "running" {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("drill {drill} run {id} never finished: {last:#}");
}
