#![allow(clippy::unwrap_used)]
//! The routing writer task dying (here: a store whose write panics) ends the daemon with
//! exit status 4 for its supervisor, and never answers 200 for a move nothing wrote.
//!
//! The daemon runs in a child process (this test binary re-run with one ignored test) because
//! the exit is the behaviour under test.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use failoverd::audit::AuditLog;
use failoverd::auth::{Tokens, hash_token};
use failoverd::engine::Routing;
use failoverd::overrides::OverrideStore;
use failoverd::playbook::{self, Loaded, Playbook};
use failoverd::routing::FileStore;
use failoverd::routing::{RouteView, RoutingStore, StoreFuture, WriteOutcome};
use failoverd::runtime::{EXIT_WRITER_DIED, Runtime, Shared};
use failoverd::standin::StandIn;
use tokio::sync::watch;

const TOKEN: &str = "writer-death-operator";
const CHILD_ENV: &str = "FAILOVERD_TEST_WRITER_DEATH_CHILD";

/// A file store whose writes panic: the writer task dies on the first move.
#[derive(Debug)]
struct PanickingStore(FileStore);

impl RoutingStore for PanickingStore {
    fn read<'a>(&'a self, pb: &'a Playbook) -> StoreFuture<'a, RouteView> {
        self.0.read(pb)
    }

    fn write<'a>(
        &'a self,
        _pb: &'a Playbook,
        _to: Routing,
        _last_move: Option<jiff::Timestamp>,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async { panic!("injected store panic") })
    }

    fn describe(&self) -> String {
        "panicking".into()
    }
}

/// The child: a daemon on the panicking store, then an operator failover that makes the
/// writer panic. Prints the answer's status (if it arrives before the exit) on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by writer_death_exits_non_zero in a child process"]
async fn writer_death_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run only as the child of writer_death_exits_non_zero"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    failoverd::cli::init_tracing(failoverd::cli::LogFormat::Text, None, "info");
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let primary = StandIn::start("primary", loopback).await.unwrap();
    let dr = StandIn::start("dr", loopback).await.unwrap();
    let text = failoverd::demo::PLAYBOOK
        .replace("127.0.0.1:18081", &primary.addr().to_string())
        .replace("127.0.0.1:18082", &dr.addr().to_string());
    let pb = playbook::parse("demo.yaml", &text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = FileStore::new(dir.path().join("routes"));
    let vs_path = files.path(&pb);
    std::fs::create_dir_all(vs_path.parent().unwrap()).unwrap();
    std::fs::write(&vs_path, failoverd::demo::VIRTUAL_SERVICE).unwrap();
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!(
            "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let loaded = vec![Loaded {
        file: "demo.yaml".into(),
        playbook: pb,
    }];
    let shared = Arc::new(Shared::new(&loaded));
    let audit_path = dir.path().join("audit.jsonl");
    let rt = Runtime {
        playbooks: loaded,
        store: Arc::new(PanickingStore(files)),
        audit: Arc::new(Mutex::new(AuditLog::open(&audit_path).unwrap())),
        overrides: OverrideStore::open(&dir.path().join("overrides.json")).unwrap(),
        prometheus: None,
        prometheus_client: None,
    };
    let tokens = Tokens::load(&dir.path().join("tokens.yaml")).unwrap();
    let listener = tokio::net::TcpListener::bind(loopback).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(failoverd::cli::serve(
        rt,
        shared.clone(),
        Arc::new(tokens),
        audit_path,
        listener,
        stop_rx,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shared.ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "daemon never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("READY");
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/v1/playbooks/demo/failover"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"reason":"writer death test"}"#)
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    match reply {
        Ok(r) => println!("REPLY {}", r.status().as_u16()),
        Err(e) => println!("NO REPLY {e}"),
    }
    // The process must end by itself; this sleep outlasts the test's deadline.
    tokio::time::sleep(Duration::from_secs(60)).await;
    println!("STILL RUNNING");
}

/// Ensures that when the writer task dies (its store panics on the first move, an operator
/// failover), the process exits with status 4 on its own, logs why, and the operator call
/// that caused the move is not answered 200.
#[test]
fn writer_death_exits_non_zero() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", "writer_death_child", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env_remove("FAILOVERD_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon did not exit after its writer died\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("READY"), "the child never got ready\n{all}");
    assert_eq!(status.code(), Some(EXIT_WRITER_DIED), "{all}");
    assert!(
        stderr.contains("routing writer task is gone") && stderr.contains("injected store panic"),
        "no log line naming the dead writer\n{all}"
    );
    assert!(
        !stdout.contains("REPLY 200"),
        "a move nothing wrote was answered 200\n{all}"
    );
    assert!(!stdout.contains("STILL RUNNING"), "{all}");
}
