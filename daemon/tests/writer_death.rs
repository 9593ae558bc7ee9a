#![allow(clippy::unwrap_used)]
//! The routing writer task dying (here: a store whose write panics) ends the daemon with
//! exit status 4 for its supervisor, and never answers 200 for a move nothing wrote.
//!
//! The daemon runs in a child process (this test binary re-run with one ignored test) because
//! the exit is the behaviour under test.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverd::control::EXIT_WRITER_DIED;
use failoverd::engine::Routing;
use failoverd::playbook::Playbook;
use failoverd::routing::FileStore;
use failoverd::routing::{RouteView, RoutingStore, StoreFuture, WriteOutcome};
use support::inproc::InProc;

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
        _stamp: failoverd::routing::Stamp,
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
    failoverd::cli::init_tracing(failoverd::cli::LogFormat::Text, None, "info", None);
    let d = InProc::start(|files| Arc::new(PanickingStore(files)), Some(TOKEN)).await;
    let addr = d.addr;
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
