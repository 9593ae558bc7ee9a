#![allow(clippy::unwrap_used)]
//! OTLP traces against a real receiver: rotel (from PyPI, installed by scripts/test.sh) with
//! its debug log of every span received, and the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`). Each test runs its own receiver, daemon, stand-ins and file
//! store; every wait is bounded.
//!
//! - A failover is one trace: `failoverd.decide` (with a child per signal) →
//!   `failoverd.route.write` → `failoverd.audit.append` (intent, outcome) and
//!   `failoverd.notify`; its id is the audit records' `traceId`, the one in the
//!   VirtualService's `failoverd.dev/traceparent` and in the webhook body.
//! - An operator call carrying a W3C `traceparent` joins the caller's trace.
//! - A collector that refuses or hangs costs the failover nothing; the spans it could not
//!   take are counted in `failoverd_trace_spans_dropped_total`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaos_tests::{Daemon, Scenario, free_addr, wait_for};
use failoverd::audit::Record;
use failoverd::auth::hash_token;
use failoverd::engine::Routing;
use serde_json::Value;
use support::otlp::{Receiver, Span};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

const SEC: Duration = Duration::from_secs(1);
/// 3 probes at 1 s plus the write, with room for a loaded 2-core box.
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);
const TOKEN: &str = "trace-operator-token-never-in-a-span";
const ANNOTATION: &str = "failoverd.dev/traceparent";

/// A webhook receiver on loopback: every body it was sent.
struct Hook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Self {
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

    fn body(&self, event: &str) -> Option<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["event"] == event)
            .cloned()
    }
}

/// The `--config` file: tracing to `endpoint` (`extra`: more `otlp` keys; the protocol is
/// the default, http/protobuf, unless given there) with `sampleRatio: 0`, and failover
/// events to `hook` (if any).
fn config(dir: &Path, endpoint: &str, extra: &str, hook: Option<&Hook>) -> PathBuf {
    let mut text = format!(
        "tracing:\n  otlp: {{ endpoint: \"{endpoint}\"{extra} }}\n  sampleRatio: 0\n  serviceName: failoverd-test\n"
    );
    if let Some(h) = hook {
        let secret = dir.join("hook-secret");
        std::fs::write(&secret, "test-secret").unwrap();
        text.push_str(&format!(
            "notify:\n  webhooks:\n    - {{ name: oncall, url: \"http://{}/hook\", events: [failover], secretFile: {} }}\n",
            h.addr,
            secret.display()
        ));
    }
    let path = dir.join("failoverd.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn tokens(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "- {{ identity: \"alice@oncall\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    path
}

fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()))
}

fn failed_over(r: Routing) -> bool {
    r == Routing::Failover { target: 0 }
}

/// The trace id in a W3C `traceparent`.
fn trace_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    parts[1].to_string()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

fn annotation(s: &Scenario) -> String {
    s.read_vs().unwrap()["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no {ANNOTATION} on the VirtualService"))
        .to_string()
}

/// `POST path` with the operator's token, a JSON body and extra header lines (HTTP/1.0,
/// bounded): status and body.
async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("POST answered within 15 s")
        .expect("POST exchange");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled counter in the daemon's `/metrics`.
async fn counter(d: &Daemon, name: &str) -> Option<f64> {
    let (_, text) = d.get("/metrics").await.ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The primary fails: one trace holds the decision (with its signals), the write, both audit
/// appends and the webhook delivery, and its id is in the audit records, the VirtualService
/// annotation and the webhook body. Sampled although `sampleRatio` is 0: moves always are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_one_trace_from_decision_to_notification() {
    let mut s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let rx = Receiver::start(&dir).await;
    let hook = Hook::start().await;
    let cfg = config(&dir, &format!("http://{}", rx.http), "", Some(&hook));
    let mut d =
        Daemon::spawn_with(&s.paths, "traced", &["--config", cfg.to_str().unwrap()]).unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);

    s.primary.stop();
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    let written = ok(
        s.wait_audit(
            "the failover's outcome record",
            |r| r.action == "failover" && r.outcome == "written",
            5 * SEC,
        )
        .await,
        &d,
    );
    let trace = written
        .trace_id
        .clone()
        .unwrap_or_else(|| panic!("no traceId in {written:?}"));
    let records: Vec<Record> = s.audit();
    let intent = records
        .iter()
        .find(|r| r.action == "failover" && r.outcome == "intent")
        .unwrap();
    assert_eq!(intent.trace_id.as_deref(), Some(trace.as_str()), "intent");
    assert_eq!(
        trace_of(&annotation(&s)),
        trace,
        "VirtualService annotation"
    );
    let body = ok(
        wait_for("the failover webhook", 10 * SEC, || hook.body("failover")).await,
        &d,
    );
    assert_eq!(body["traceId"], trace.as_str(), "webhook body: {body}");

    let spans = rx
        .wait_trace(
            &trace,
            &[
                "failoverd.decide",
                "failoverd.signal",
                "failoverd.route.write",
                "failoverd.audit.append",
                "failoverd.notify",
            ],
        )
        .await;
    let decide = one(&spans, "failoverd.decide");
    assert_eq!(decide.parent, "", "the decision is the root: {decide:?}");
    assert_eq!(decide.attrs["failoverd.playbook"], "demo");
    assert_eq!(decide.attrs["failoverd.kind"], "automatic");
    assert_eq!(decide.attrs["failoverd.move"], "failover");
    assert!(
        decide.attrs["failoverd.from"].starts_with("primary"),
        "{decide:?}"
    );
    assert!(
        decide.attrs["failoverd.to"].starts_with("failover[0]"),
        "{decide:?}"
    );
    assert!(!decide.attrs["failoverd.reason"].is_empty());
    let signals: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "failoverd.signal")
        .collect();
    assert!(signals.iter().all(|s| s.parent == decide.id));
    assert!(
        signals.iter().any(
            |s| s.attrs.get("failoverd.signal.health").map(String::as_str) == Some("unhealthy")
        ),
        "the failed primary probe is among the signals: {signals:#?}"
    );
    let write = one(&spans, "failoverd.route.write");
    assert_eq!(write.parent, decide.id, "write under the decision");
    assert_eq!(
        annotation(&s),
        format!("00-{trace}-{}-01", write.id),
        "the annotation names the write's span"
    );
    let appends: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "failoverd.audit.append")
        .collect();
    let outcomes: Vec<&str> = appends
        .iter()
        .map(|s| s.attrs["failoverd.outcome"].as_str())
        .collect();
    assert!(
        outcomes.contains(&"intent") && outcomes.contains(&"written"),
        "{appends:#?}"
    );
    assert!(appends.iter().all(|s| s.parent == write.id), "{appends:#?}");
    let notify = one(&spans, "failoverd.notify");
    assert_eq!(notify.parent, decide.id);
    assert_eq!(notify.attrs["failoverd.sink"], "webhook:oncall");
    assert_eq!(notify.attrs["failoverd.result"], "sent");
    assert!(
        rx.text().contains("service.name: Str(failoverd-test)"),
        "serviceName is the resource's service.name"
    );
    d.terminate(10 * SEC).unwrap();
}

/// An incident tool's trace continues into failoverd: the operator call's server span is a
/// child of the `traceparent` it sent, with the caller's identity and never the token, and
/// the move it causes (audit records, annotation) is in that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_call_with_a_traceparent_joins_that_trace() {
    let s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let rx = Receiver::start(&dir).await;
    let cfg = config(&dir, &format!("http://{}", rx.http), "", None);
    let tokens = tokens(&dir);
    let mut d = Daemon::spawn_with(
        &s.paths,
        "operator",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--state",
            dir.join("overrides.json").to_str().unwrap(),
        ],
    )
    .unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let (code, body) = post(
        d.addr,
        "/v1/playbooks/demo/failover",
        &format!("traceparent: 00-{trace}-{caller}-01\r\n"),
        r#"{"reason":"incident 42: drain the primary","ttl":"10m"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}\n{}", d.logs());
    ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
    let records = s.audit();
    let traced: Vec<&Record> = records
        .iter()
        .filter(|r| r.trace_id.as_deref() == Some(trace))
        .collect();
    let kinds: Vec<(&str, &str)> = traced
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert!(
        kinds.contains(&("operator-failover", "intent"))
            && kinds.contains(&("operator-failover", "written")),
        "the move's records carry the caller's trace: {kinds:?} of {records:#?}"
    );
    assert_eq!(
        trace_of(&annotation(&s)),
        trace,
        "VirtualService annotation"
    );

    let spans = rx
        .wait_trace(
            trace,
            &[
                "failoverd.api",
                "failoverd.control",
                "failoverd.decide",
                "failoverd.route.write",
            ],
        )
        .await;
    let api = one(&spans, "failoverd.api");
    assert_eq!(api.parent, caller, "the server span continues the caller's");
    assert_eq!(api.attrs["enduser.id"], "alice@oncall");
    assert_eq!(api.attrs["http.request.method"], "POST");
    assert_eq!(api.attrs["http.response.status_code"], "200");
    let control = one(&spans, "failoverd.control");
    assert_eq!(control.parent, api.id);
    let decide = one(&spans, "failoverd.decide");
    assert_eq!(decide.parent, control.id);
    assert_eq!(decide.attrs["failoverd.kind"], "operator");
    assert_eq!(one(&spans, "failoverd.route.write").parent, decide.id);
    assert!(
        !rx.text().contains(TOKEN),
        "the bearer token reached the collector"
    );
    d.terminate(10 * SEC).unwrap();
}

/// The collector is down (nothing listens) or hangs (accepts, never answers) for the whole
/// run: the failover happens within the same budget as without tracing, the audit record still
/// carries its trace id, and the spans that could not be exported are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_hanging_costs_the_failover_nothing() {
    // Down: a port nothing listens on.
    let down = free_addr().unwrap();
    // Hanging: the kernel completes the handshake, nobody ever reads or answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (name, endpoint) in [
        ("down", format!("http://{down}")),
        (
            "hanging",
            format!("http://{}", hanging.local_addr().unwrap()),
        ),
    ] {
        let mut s = Scenario::new(&[]).await.unwrap();
        let dir = s.dir.path().to_path_buf();
        let cfg = config(&dir, &endpoint, ", timeout: 1s", None);
        let mut d =
            Daemon::spawn_with(&s.paths, name, &["--config", cfg.to_str().unwrap()]).unwrap();
        ok(d.wait_ready(10 * SEC).await, &d);
        s.primary.stop();
        let (_, took) = ok(s.wait_routing(failed_over, FAILOVER_WITHIN).await, &d);
        eprintln!("collector {name}: failover written {took:?} after the fault");
        let written = ok(
            s.wait_audit(
                "the failover's outcome record",
                |r| r.action == "failover" && r.outcome == "written",
                5 * SEC,
            )
            .await,
            &d,
        );
        assert!(written.trace_id.is_some(), "{written:?}");
        // The decision, its signals, the write and two appends at least.
        let dropped = ok(
            wait_for_async(
                &format!("dropped spans counted (collector {name})"),
                10 * SEC,
                || counter(&d, "failoverd_trace_spans_dropped_total"),
            )
            .await,
            &d,
        );
        assert!(
            dropped >= 5.0,
            "collector {name}: {dropped} spans counted dropped"
        );
        assert!(d.is_running(), "collector {name}: the daemon is alive");
        d.terminate(10 * SEC).unwrap();
    }
    drop(hanging);
}

/// Polls the async `f` every 100 ms until it returns a value above 0, at most `timeout`.
async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<f64>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Some(v) if v >= 5.0 => return Ok(v),
            last if start.elapsed() > timeout => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what} (last: {last:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The `kubernetes` store on the API server emulator, spans sent over OTLP/gRPC: the write's
/// API requests (GET, then the
/// PUT whose answer is the read-back) are its children with the HTTP and `k8s.*` attributes,
/// the object's `failoverd.dev/traceparent` names the write, and the Event's note the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kubernetes_store_each_api_request_is_a_span() {
    use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await.unwrap();
    emu.seed(Scenario::original_vs().unwrap()).unwrap();
    let mut s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let rx = Receiver::start(&dir).await;
    // Over OTLP/gRPC this time (the exporter's other transport).
    let cfg = config(
        &dir,
        &format!("http://{}", rx.grpc),
        ", protocol: grpc",
        None,
    );
    let mut d = Daemon::spawn_store(
        &s.paths,
        "kube",
        "kubernetes",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    )
    .unwrap();
    ok(d.wait_ready(30 * SEC).await, &d);
    s.primary.stop();
    let written = ok(
        s.wait_audit(
            "the failover's outcome record",
            |r| r.action == "failover" && r.outcome == "written",
            FAILOVER_WITHIN,
        )
        .await,
        &d,
    );
    let trace = written.trace_id.clone().unwrap();
    let vs = emu
        .get("networking.istio.io/v1", "VirtualService", "demo", "web")
        .unwrap();
    let tp = vs["metadata"]["annotations"][ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no {ANNOTATION}: {vs:#}"))
        .to_string();
    assert_eq!(trace_of(&tp), trace);
    let note = ok(
        wait_for("the RouteChanged Event", 10 * SEC, || {
            emu.events()
                .into_iter()
                .find(|e| e["reason"] == "RouteChanged")
                .and_then(|e| {
                    e["note"]
                        .as_str()
                        .or(e["message"].as_str())
                        .map(String::from)
                })
        })
        .await,
        &d,
    );
    assert!(note.contains(&format!("trace {trace}")), "{note}");

    let spans = rx
        .wait_trace(
            &trace,
            &[
                "failoverd.decide",
                "failoverd.route.write",
                "failoverd.kube.request",
            ],
        )
        .await;
    let write = one(&spans, "failoverd.route.write");
    assert_eq!(tp, format!("00-{trace}-{}-01", write.id));
    let requests: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "failoverd.kube.request")
        .collect();
    let methods: Vec<&str> = requests
        .iter()
        .map(|s| s.attrs["http.request.method"].as_str())
        .collect();
    assert_eq!(methods.len(), 2, "one GET and one PUT: {requests:#?}");
    assert!(
        methods.contains(&"GET") && methods.contains(&"PUT"),
        "{methods:?}"
    );
    for r in &requests {
        assert_eq!(r.parent, write.id, "{r:?}");
        assert_eq!(r.attrs["k8s.namespace.name"], "demo");
        assert_eq!(r.attrs["k8s.resource.name"], "web");
    }
    let put = requests
        .iter()
        .find(|s| s.attrs["http.request.method"] == "PUT")
        .unwrap();
    assert_eq!(put.attrs["http.response.status_code"], "200");
    d.terminate(10 * SEC).unwrap();
}

/// A bad `tracing:` key refuses the start, located in the config file like any other key
/// (file:line:column and the key), and a bad `OTEL_*` variable is named; nothing is written.
#[tokio::test]
async fn a_bad_tracing_setting_refuses_the_start_naming_it() {
    let s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path();
    let cfg = dir.join("failoverd.yaml");
    std::fs::write(
        &cfg,
        "tracing:\n  otlp:\n    endpoint: \"http://127.0.0.1:4318\"\n  sampleRatio: 2\n",
    )
    .unwrap();
    let store = format!("file:{}", s.paths.store.display());
    let base = [
        "run",
        "--playbooks",
        s.paths.playbooks.to_str().unwrap(),
        "--store",
        &store,
        "--audit",
        s.paths.audit.to_str().unwrap(),
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--config", cfg.to_str().unwrap()]);
    let out = chaos_tests::run_cli(&args, 10 * SEC).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with sampleRatio 2: {err}");
    assert!(
        err.contains(&format!("{}:4:", cfg.display())) && err.contains("tracing.sampleRatio"),
        "{err}"
    );
    // The environment's variable is named when it is the bad one.
    let err_path = dir.join("env.stderr");
    let mut child = Command::new(chaos_tests::failoverd_bin())
        .args(base)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for("failoverd to refuse the start", 10 * SEC, || {
        child.try_wait().unwrap()
    })
    .await;
    if status.is_err() {
        let _ = child.kill();
    }
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        !status.unwrap_or_else(|e| panic!("{e}: {err}")).success(),
        "started with an ftp collector: {err}"
    );
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    assert!(!s.paths.audit.exists(), "nothing written before refusing");
}

/// A live drill is one trace: `failoverd.drill.run` (under the API call that started it) is
/// the ancestor of the drill's failover and
/// failback (each `failoverd.control` → `failoverd.decide` → `failoverd.route.write`) are
/// its descendants, and the audit records of its moves carry its trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_run_is_the_ancestor_of_the_moves_it_makes() {
    let s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let drills = s.paths.playbooks.join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    std::fs::write(
        drills.join("traced.yaml"),
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: traced }\nspec:\n  playbooks: [ demo ]\n  mode: live\n  hold: 1s\n",
    )
    .unwrap();
    let rx = Receiver::start(&dir).await;
    let cfg = config(&dir, &format!("http://{}", rx.http), "", None);
    let tokens = tokens(&dir);
    let mut d = Daemon::spawn_with(
        &s.paths,
        "drill",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ],
    )
    .unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);

    let (code, body) = post(d.addr, "/v1/drills/traced/run", "", "{}").await;
    assert_eq!(code, 202, "{body}\n{}", d.logs());
    let back = ok(
        s.wait_audit(
            "the drill's failback written",
            |r| {
                r.action == "operator-failback"
                    && r.outcome == "written"
                    && r.actor == "drill:traced"
            },
            30 * SEC,
        )
        .await,
        &d,
    );
    let trace = back
        .trace_id
        .clone()
        .unwrap_or_else(|| panic!("no traceId in {back:?}"));
    let records: Vec<Record> = s.audit();
    let over = records
        .iter()
        .find(|r| {
            r.action == "operator-failover" && r.outcome == "written" && r.actor == "drill:traced"
        })
        .unwrap_or_else(|| panic!("the drill's failover record: {records:#?}"));
    assert_eq!(over.trace_id.as_deref(), Some(trace.as_str()), "one trace");
    let spans = rx
        .wait_trace(
            &trace,
            &[
                "failoverd.api",
                "failoverd.drill.run",
                "failoverd.control",
                "failoverd.decide",
                "failoverd.route.write",
            ],
        )
        .await;
    let run = one(&spans, "failoverd.drill.run");
    // Started by an operator's call: the run is a child of that call's server span.
    let api = one(&spans, "failoverd.api");
    assert_eq!(api.parent, "", "the call is the root: {api:?}");
    assert_eq!(
        run.parent, api.id,
        "the run under the call that started it: {run:?}"
    );
    assert_eq!(run.attrs["failoverd.drill"], "traced");
    assert_eq!(run.attrs["failoverd.kind"], "drill");
    // Each span's ancestry leads to the run.
    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let under_run = |s: &Span| {
        let mut cur = s;
        for _ in 0..spans.len() {
            if cur.parent == run.id {
                return true;
            }
            match by_id.get(cur.parent.as_str()) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    let writes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "failoverd.route.write")
        .collect();
    let moves: Vec<&str> = writes
        .iter()
        .map(|w| w.attrs["failoverd.move"].as_str())
        .collect();
    assert!(
        moves.contains(&"operator-failover") && moves.contains(&"operator-failback"),
        "the drill's failover and failback writes: {writes:#?}"
    );
    assert!(writes.iter().all(|w| under_run(w)), "{spans:#?}");
    let decides: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "failoverd.decide")
        .collect();
    assert!(
        decides
            .iter()
            .all(|s| under_run(s) && s.attrs["failoverd.kind"] == "drill"),
        "{decides:#?}"
    );
    d.terminate(10 * SEC).unwrap();
}
