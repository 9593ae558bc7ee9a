//! SIGKILL of the real `failoverd` at random moments during a stream of operator overrides:
//! the audit chain stays whole and no acknowledged override is lost.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::{Scenario, failoverd_bin, free_addr, http_get, run_cli};
use failoverd::audit;
use failoverd::auth::hash_token;
use failoverd::overrides::{OverrideKind, OverrideStore};

const TOKEN: &str = "kill9-operator-token";
/// Kill/restart rounds; each round sends overrides until the daemon dies under it.
const ROUNDS: usize = 5;

fn spawn(s: &Scenario, tokens: &Path, state: &Path, round: usize) -> (Child, std::net::SocketAddr) {
    let addr = free_addr().unwrap();
    let log = std::fs::File::create(s.dir.path().join(format!("kill9-{round}.log"))).unwrap();
    let child = Command::new(failoverd_bin())
        .arg("run")
        .arg("--playbooks")
        .arg(&s.paths.playbooks)
        .arg("--store")
        .arg(format!("file:{}", s.paths.store.display()))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--audit")
        .arg(&s.paths.audit)
        .arg("--tokens")
        .arg(tokens)
        .arg("--state")
        .arg(state)
        .env_remove("FAILOVERD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, addr)
}

async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(addr, "/healthz", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "daemon did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// xorshift: enough randomness for kill timing without a dependency; the seed is printed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Ensures that after SIGKILLs at random moments during a stream of freeze/resume calls,
/// `audit verify` passes, every acknowledged call is in the audit log, and the persisted
/// overrides match the last acknowledged call (or the one in flight when the kill landed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_overrides_loses_nothing_acknowledged() {
    let s = Scenario::new(&[]).await.unwrap();
    let tokens = s.dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"chaos@test\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let state = s.dir.path().join("overrides.json");
    let mut seed = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64)
        | 1;
    println!("seed {seed}");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut call = 0usize;
    // The freeze reasons the persisted state may hold (None: no freeze): the state after the
    // last acknowledged call, or after any unacknowledged call sent since.
    let mut candidates: Vec<Option<String>> = vec![None];
    for round in 0..ROUNDS {
        let (mut child, addr) = spawn(&s, &tokens, &state, round);
        wait_listening(addr).await;
        let url = format!("http://{addr}");
        // Kill somewhere in the next 50..650 ms, while calls stream in.
        let kill_at = Instant::now() + Duration::from_millis(50 + next(&mut seed) % 600);
        // The kill comes from another thread, so it can land in the middle of a call.
        let pid = child.id().to_string();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
            let _ = Command::new("kill").args(["-9", &pid]).status();
        });
        while Instant::now() < kill_at + Duration::from_millis(500) {
            call += 1;
            let reason = format!("call-{call}");
            let freeze = call % 2 == 1;
            let args: Vec<String> = if freeze {
                vec![
                    "freeze".into(),
                    "demo".into(),
                    "--reason".into(),
                    reason.clone(),
                    "--ttl".into(),
                    "1h".into(),
                ]
            } else {
                vec![
                    "resume".into(),
                    "demo".into(),
                    "--reason".into(),
                    reason.clone(),
                ]
            };
            let mut full = args.clone();
            full.extend(["--url".into(), url.clone(), "--token".into(), TOKEN.into()]);
            let after = freeze.then(|| reason.clone());
            let out = run_cli(&full, Duration::from_secs(10)).unwrap();
            if out.status.success() {
                acknowledged.push(reason.clone());
                candidates = vec![after];
            } else {
                candidates.push(after);
                if child.try_wait().unwrap().is_some() {
                    break;
                }
            }
        }
        killer.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // What survives on disk must match an acknowledged state (or the call in flight).
        let persisted = OverrideStore::open(&state).unwrap();
        let freezes: Vec<Option<String>> = persisted
            .all()
            .iter()
            .filter(|o| o.kind == OverrideKind::Freeze)
            .map(|o| Some(o.reason.clone()))
            .collect();
        let now = match freezes.as_slice() {
            [] => None,
            [one] => one.clone(),
            many => panic!(
                "round {round}: {} freezes persisted for one playbook",
                many.len()
            ),
        };
        assert!(
            candidates.contains(&now),
            "round {round}: persisted freeze {now:?}, expected one of {candidates:?}"
        );
        candidates = vec![now];
    }
    // A last clean start recovers any torn tail and continues the chain.
    let (mut child, addr) = spawn(&s, &tokens, &state, ROUNDS);
    wait_listening(addr).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let verified =
        audit::verify(&s.paths.audit).unwrap_or_else(|e| panic!("audit chain broken: {e}"));
    assert!(verified.records > 0);
    let records = audit::read_all(&s.paths.audit).unwrap();
    for reason in &acknowledged {
        assert!(
            records
                .iter()
                .any(|r| &r.reason == reason && r.outcome == "accepted"),
            "acknowledged call {reason} has no accepted audit record"
        );
    }
    assert!(
        acknowledged.len() >= ROUNDS,
        "too few calls were acknowledged to mean anything: {}",
        acknowledged.len()
    );
    println!(
        "{} calls acknowledged over {ROUNDS} kills; {} audit records, chain intact",
        acknowledged.len(),
        verified.records
    );
}
