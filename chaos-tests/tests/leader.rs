//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing, end to end: two real
//! `failoverd` replicas (`POD_NAME` replica-a / replica-b, each with its own token, kubeconfig,
//! listener, audit log and state file) on the Kubernetes API server emulator, probing the same
//! stand-in services on loopback. Short timings (lease 3 s, renew deadline 2 s, retry 500 ms)
//! keep the file under a minute; the takeover time at the default timings is measured by the
//! `takeover` bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chaos_tests::kube_emulator::{Emulator, Rule, WriteRecord};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, Scenario, failoverd_bin, free_addr, wait_for};
use failoverd::audit;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const OPERATOR_TOKEN: &str = "leader-test-operator-token";
const LEASE_NS: &str = "failoverd";
const LEASE_NAME: &str = "failoverd-leader";

/// One `failoverd run` replica with its own identity and files; SIGKILLed when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    status: Option<ExitStatus>,
    addr: SocketAddr,
    audit: PathBuf,
    stderr: PathBuf,
    /// The bearer token its kubeconfig carries (the emulator records writes under `name`).
    kube_token: String,
}

impl Replica {
    fn spawn(sc: &Scenario, emu: &Emulator, name: &'static str) -> Replica {
        let dir = sc.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let kube_token = format!("{name}-kube-token");
        emu.add_token(&kube_token, name, vec![Rule::all()]);
        let kubeconfig = dir.join("kubeconfig");
        emu.write_kubeconfig(&kubeconfig, &kube_token).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            "leaderElection:\n  enabled: true\n  namespace: failoverd\n  leaseDuration: 3s\n  \
             renewDeadline: 2s\n  retryPeriod: 500ms\n",
        )
        .unwrap();
        let tokens = dir.join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "- {{ identity: \"oncall@test\", role: operator, sha256: \"{}\" }}\n",
                failoverd::auth::hash_token(OPERATOR_TOKEN)
            ),
        )
        .unwrap();
        let addr = free_addr().unwrap();
        let audit = dir.join("audit.jsonl");
        let stderr = dir.join("stderr.log");
        let child = Command::new(failoverd_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--playbooks")
            .arg(&sc.paths.playbooks)
            .args(["--store", "kubernetes", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--audit")
            .arg(&audit)
            .arg("--state")
            .arg(dir.join("overrides.json"))
            .arg("--tokens")
            .arg(&tokens)
            .args(["--log-format", "json"])
            .env("POD_NAME", name)
            .env_remove("FAILOVERD_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout.log")).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning failoverd run");
        Replica {
            name,
            child,
            status: None,
            addr,
            audit,
            stderr,
            kube_token,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- {} stderr ---\n{}",
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    fn kill(&mut self) {
        if self.try_status().is_none() {
            self.child.kill().unwrap();
            self.status = Some(self.child.wait().unwrap());
        }
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                panic!("{} exited ({s}) before ready\n{}", self.name, self.logs());
            }
            if let Ok((200, _)) = request(self.addr, "GET", "/readyz", None).await {
                return;
            }
            assert!(
                start.elapsed() < 30 * SEC,
                "{} not ready in 30 s\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `failoverd_leader` on `/metrics` (None when the page cannot be read).
    async fn leader_gauge(&self) -> Option<i64> {
        let (code, body) = request(self.addr, "GET", "/metrics", None).await.ok()?;
        if code != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("failoverd_leader "))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn wait_leader(&self, want: i64, timeout: Duration) {
        let start = Instant::now();
        while self.leader_gauge().await != Some(want) {
            assert!(
                start.elapsed() < timeout,
                "{}: failoverd_leader never became {want} in {timeout:?}\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 request (bounded to 5 s) with the operator's token: status and body. `body`
/// is sent as JSON.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    request_within(5 * SEC, addr, method, path, body).await
}

/// [`request`] bounded to `limit`.
async fn request_within(
    limit: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer \
                 {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!(
                "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer \
                 {OPERATOR_TOKEN}\r\n\r\n"
            ),
        };
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(limit, exchange).await??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

async fn cluster() -> Emulator {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await.unwrap();
    emu.seed(serde_saphyr::from_str::<Value>(DEMO_VIRTUAL_SERVICE).unwrap())
        .unwrap();
    emu
}

/// The live overrides the leader keeps in the cluster for the next one: the JSON of every
/// `override.failoverd.dev/<id>` annotation on the state Lease that holds a live override
/// (tombstones of deleted ones left out), joined; None when the state Lease does not exist.
fn kept_overrides(emu: &Emulator) -> Option<String> {
    let lease = emu.get(
        "coordination.k8s.io/v1",
        "Lease",
        LEASE_NS,
        &format!("{LEASE_NAME}-state"),
    )?;
    let live: Vec<String> = lease["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("override.failoverd.dev/"))
        .filter_map(|(_, v)| serde_json::from_str::<Value>(v.as_str()?).ok())
        .filter(|v| v.get("live").is_some())
        .map(|v| v.to_string())
        .collect();
    Some(live.join("\n"))
}

fn lease_holder(emu: &Emulator) -> Option<String> {
    emu.get("coordination.k8s.io/v1", "Lease", LEASE_NS, LEASE_NAME)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

fn failed_over(emu: &Emulator) -> bool {
    emu.get("networking.istio.io/v1", "VirtualService", "demo", "web")
        .is_some_and(|v| v["spec"]["http"][1]["route"][0]["destination"]["host"] == DR_HOST)
}

/// Successful updates of the VirtualService, oldest first.
fn vs_writes(emu: &Emulator) -> Vec<WriteRecord> {
    emu.writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.verb != "create" && w.status < 300)
        .collect()
}

fn since(t: SystemTime, earlier: SystemTime) -> Duration {
    t.duration_since(earlier).unwrap_or_default()
}

/// No two identities wrote the VirtualService within one lease period of each other.
fn assert_single_writer(writes: &[WriteRecord]) {
    for pair in writes.windows(2) {
        if pair[0].identity != pair[1].identity {
            assert!(
                since(pair[1].time, pair[0].time) >= LEASE,
                "two writers within one lease period: {:?} then {:?}",
                (&pair[0].identity, pair[0].time),
                (&pair[1].identity, pair[1].time)
            );
        }
    }
}

/// Starts replica-a, waits until it holds the lease, then starts replica-b as its standby.
async fn pair(sc: &Scenario, emu: &Emulator) -> (Replica, Replica) {
    let mut a = Replica::spawn(sc, emu, "replica-a");
    a.wait_ready().await;
    a.wait_leader(1, 20 * SEC).await;
    let mut b = Replica::spawn(sc, emu, "replica-b");
    b.wait_ready().await;
    (a, b)
}

/// Ensures two replicas started together elect exactly one leader (the Lease holder, the only
/// one with `failoverd_leader 1`), and a mutating API call to the standby is refused with 503
/// naming the leader while the leader accepts it.
#[tokio::test]
async fn exactly_one_leader_and_the_standby_refuses_writes() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let mut a = Replica::spawn(&sc, &emu, "replica-a");
    let mut b = Replica::spawn(&sc, &emu, "replica-b");
    a.wait_ready().await;
    b.wait_ready().await;
    let holder = wait_for("a lease holder", 20 * SEC, || lease_holder(&emu))
        .await
        .unwrap();
    let (leader, standby) = if holder == a.name { (&a, &b) } else { (&b, &a) };
    leader.wait_leader(1, 20 * SEC).await;
    // Over several renewals (and lease periods), never two leaders and never a change.
    for _ in 0..16 {
        let (l, s) = (leader.leader_gauge().await, standby.leader_gauge().await);
        assert_eq!(
            (l, s),
            (Some(1), Some(0)),
            "leader {} / standby {}\n{}\n{}",
            leader.name,
            standby.name,
            leader.logs(),
            standby.logs()
        );
        assert_eq!(lease_holder(&emu).as_deref(), Some(leader.name));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Renewals are not takeovers: the leader re-read its routes at most once (when it won the
    // lease after its runtime started), not at every renewal.
    let takeovers = std::fs::read_to_string(&leader.stderr)
        .unwrap()
        .matches("became the leader: re-reading every route")
        .count();
    assert!(takeovers <= 1, "{takeovers} re-reads\n{}", leader.logs());
    let body = r#"{"reason":"leader election test: force a failover"}"#;
    let (code, text) = request(
        standby.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        Some(body),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", standby.logs()));
    assert_eq!(code, 503, "{text}");
    assert!(text.contains(leader.name), "names the leader: {text}");
    assert!(vs_writes(&emu).is_empty(), "the standby wrote nothing");
    let (code, text) = request(
        leader.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        Some(body),
    )
    .await
    .unwrap();
    assert!(
        (200..300).contains(&code),
        "{code} {text}\n{}",
        leader.logs()
    );
    wait_for("the forced failover", 15 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap();
    let writes = vs_writes(&emu);
    assert!(
        writes.iter().all(|w| w.identity == leader.name),
        "only the leader writes: {writes:?}"
    );
}

/// Ensures a leader SIGKILLed right after the primary fails (before it wrote) is replaced by
/// the standby, which writes the failover exactly once, within lease duration + detection
/// (with generous slack), and no two replicas ever write within one lease period.
#[tokio::test]
async fn leader_killed_mid_failover_standby_writes_once() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, mut b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    sc.primary.stop();
    a.kill();
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    b.wait_leader(1, 20 * SEC).await;
    let took_over = killed.elapsed();
    wait_for("the failover written", 30 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    let written = killed.elapsed();
    // lease 3 s + one retry + detection (3 failures at 1 s) ≈ 7 s; a loaded 2-core box gets 3×.
    assert!(
        written < 25 * SEC,
        "written {written:?} after the kill (lease held {took_over:?})"
    );
    assert!(
        took_over >= LEASE - Duration::from_millis(500),
        "took over {took_over:?} after the kill, before the lease could expire"
    );
    assert_eq!(lease_holder(&emu).as_deref(), Some("replica-b"));
    // Let anything in flight land before counting.
    tokio::time::sleep(2 * SEC).await;
    let writes = vs_writes(&emu);
    assert_eq!(writes.len(), 1, "written exactly once: {writes:?}");
    assert_eq!(writes[0].identity, "replica-b");
    assert!(writes[0].time > killed_at);
    assert_single_writer(&writes);
    let records = audit::read_all(&b.audit).unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "failover" && r.outcome == "written")
            .count(),
        1,
        "{records:#?}"
    );
    assert!(audit::verify(&b.audit).is_ok());
    assert!(b.try_status().is_none(), "the new leader keeps running");
}

/// Ensures fencing: the leader loses the right to touch the Lease (403) while it may still
/// write VirtualServices, and the primary fails at the same moment. The cut-off leader writes
/// nothing after its renew deadline, exits with status 3, and the standby takes over and
/// writes the failover; writers never overlap.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing_and_exits_3() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, mut b) = pair(&sc, &emu).await;
    // replica-a keeps full rights on VirtualServices and Events, none on Leases: only the
    // fence stands between it and a write after its lease lapsed.
    emu.add_token(
        &a.kube_token,
        a.name,
        vec![
            Rule::new(&["*"], &["networking.istio.io"], &["*"], &["*"]),
            Rule::new(&["*"], &["events.k8s.io", ""], &["events"], &["*"]),
        ],
    );
    let cut = SystemTime::now();
    sc.primary.stop();
    let exited = wait_for("replica-a to exit", 20 * SEC, || a.try_status())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    assert_eq!(exited.code(), Some(3), "{exited}\n{}", a.logs());
    assert!(
        a.logs()
            .contains("could not renew the lease within renewDeadline"),
        "{}",
        a.logs()
    );
    b.wait_leader(1, 20 * SEC).await;
    wait_for("the failover written", 30 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.logs(), b.logs()));
    tokio::time::sleep(2 * SEC).await;
    let all = emu.writes();
    let takeover = all
        .iter()
        .find(|w| w.kind == "Lease" && w.identity == "replica-b" && w.status < 300)
        .map(|w| w.time)
        .expect("replica-b wrote the lease");
    let writes = vs_writes(&emu);
    for w in writes.iter().filter(|w| w.identity == "replica-a") {
        // The fence is checked before sending; one second covers the request in flight.
        assert!(
            since(w.time, cut) < RENEW_DEADLINE + SEC,
            "replica-a wrote {:?} after the cut, past its renew deadline: {w:?}",
            since(w.time, cut)
        );
        assert!(w.time < takeover, "replica-a wrote after the takeover");
    }
    // Any VirtualService request replica-a sent at all (even refused) was before its deadline.
    for w in all
        .iter()
        .filter(|w| w.kind == "VirtualService" && w.identity == "replica-a")
    {
        assert!(since(w.time, cut) < RENEW_DEADLINE + SEC, "{w:?}");
    }
    assert_eq!(
        writes.iter().filter(|w| w.identity == "replica-b").count(),
        usize::from(!writes.iter().any(|w| w.identity == "replica-a")),
        "replica-b writes the failover unless replica-a did within its lease: {writes:?}"
    );
    assert_single_writer(&writes);
    assert!(failed_over(&emu));
    b.kill();
}

/// Ensures an operator freeze made through the old leader holds on the new one: the leader
/// keeps overrides in the cluster, the standby adopts them on takeover (audited), so a primary
/// failing right after the takeover is not failed over behind the operator's back.
#[tokio::test]
async fn a_freeze_made_on_the_old_leader_holds_on_the_new_one() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"maintenance on the DR site","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert!((200..300).contains(&code), "{code} {text}\n{}", a.logs());
    // Acknowledged only once the cluster holds it: no waiting here.
    assert!(
        kept_overrides(&emu).is_some_and(|s| s.contains("maintenance on the DR site")),
        "acknowledged, but not kept in the cluster: {:?}\n{}",
        kept_overrides(&emu),
        a.logs()
    );
    a.kill();
    b.wait_leader(1, 20 * SEC).await;
    let takeover = wait_for("the takeover audited", 10 * SEC, || {
        audit::read_all(&b.audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "takeover")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert!(
        takeover.outcome.starts_with("adopted 1 override"),
        "{takeover:?}"
    );
    // The primary fails after the takeover: frozen, so nothing moves.
    sc.primary.stop();
    tokio::time::sleep(6 * SEC).await;
    assert!(!failed_over(&emu), "moved while frozen\n{}", b.logs());
    assert!(vs_writes(&emu).is_empty());
}

/// Ensures a live drill whose leader dies mid-hold is ended by the new leader: the drill's
/// hold comes over with the other overrides, and once the routes are read again the new
/// leader fails back as the drill would have (the drill runner died with the old leader; the
/// hold's TTL alone would keep users on the failover target for hold + budgets + 5 min).
#[tokio::test]
async fn a_drill_in_flight_on_a_dead_leader_is_failed_back_by_the_new_one() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let drills = sc.paths.playbooks.join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    std::fs::write(
        drills.join("long-hold.yaml"),
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: long-hold }\n\
         spec:\n  playbooks: [ demo ]\n  mode: live\n  hold: 10m\n",
    )
    .unwrap();
    let (mut a, b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/drills/long-hold/run",
        Some(r#"{"reason":"quarterly DR drill"}"#),
    )
    .await
    .unwrap();
    assert!((200..300).contains(&code), "{code} {text}\n{}", a.logs());
    wait_for("the drill's failover", 20 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    // The hold must have reached the cluster before the leader dies.
    wait_for("the drill's hold kept in the cluster", 10 * SEC, || {
        kept_overrides(&emu).filter(|s| s.contains("drill:long-hold"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    let killed = SystemTime::now();
    a.kill();
    b.wait_leader(1, 20 * SEC).await;
    wait_for("the failback by the new leader", 20 * SEC, || {
        (!failed_over(&emu)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    // The route lands in the cluster a moment before its `written` record.
    let failback = wait_for("the failback audited by replica-b", 10 * SEC, || {
        audit::read_all(&b.audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "operator-failback" && r.outcome == "written")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert_eq!(failback.actor, "drill:long-hold", "{failback:?}");
    assert!(failback.reason.contains("previous leader"), "{failback:?}");
    // The hold is gone, also from the set kept in the cluster for the next leader (removed
    // there before the failback was written).
    let kept = kept_overrides(&emu).unwrap_or_default();
    assert!(!kept.contains("drill:long-hold"), "{kept}\n{}", b.logs());
    // Two writers, one after the other: the drill's failover by the old leader while it
    // lived, the failback by the new one after the kill.
    let writes = vs_writes(&emu);
    let who: Vec<&str> = writes.iter().map(|w| w.identity.as_str()).collect();
    assert_eq!(who, ["replica-a", "replica-b"], "{writes:?}");
    assert!(
        writes[0].time < killed && writes[1].time > killed,
        "{writes:?}"
    );
}

/// The ids of the overrides `GET /v1/overrides` lists on `r`.
async fn listed_overrides(r: &Replica) -> std::collections::BTreeSet<String> {
    let (code, body) = request(r.addr, "GET", "/v1/overrides", None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", r.logs()));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

fn takeovers(r: &Replica) -> usize {
    audit::read_all(&r.audit)
        .map(|rs| rs.iter().filter(|x| x.action == "takeover").count())
        .unwrap_or(0)
}

/// Ensures no acknowledged override is lost and no deleted one comes back across leader
/// deaths: 20 rounds of one operator call on the leader (a freeze, a failover hold or the
/// deletion of a live override), SIGKILL of the leader 0–150 ms after the 200, then the new
/// leader must list exactly the overrides acknowledged so far. The killed replica comes back
/// as the standby with its own (stale) state file, which is what a deleted override could
/// return from.
///
/// The audit trail across the same deaths: every fourth killed replica comes back on an
/// empty audit volume, and at the end every replica's file and the cluster's chain must be
/// one chain (checked by hashing here), with a `written` record for every VirtualService
/// update the API server took.
#[tokio::test]
async fn acknowledged_overrides_survive_twenty_leader_kills() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let (a, b) = pair(&sc, &emu).await;
    let mut replicas = [a, b];
    let mut leader = 0;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // The acknowledged overrides by id (and kind), and the ids deleted or replaced.
    let mut live: std::collections::BTreeMap<String, &str> = Default::default();
    let mut gone: std::collections::BTreeSet<String> = Default::default();
    let mut acknowledged = 0;
    for round in 0..20 {
        let l = &replicas[leader];
        let op = if live.is_empty() { next(2) } else { next(3) };
        let (method, path, body, kind) = match op {
            0 => (
                "POST",
                "/v1/playbooks/demo/freeze".to_string(),
                format!(r#"{{"reason":"round {round}: freeze","ttl":"1h"}}"#),
                "freeze",
            ),
            1 => (
                "POST",
                "/v1/playbooks/demo/failover".to_string(),
                format!(r#"{{"reason":"round {round}: failover","ttl":"1h"}}"#),
                "failover",
            ),
            _ => {
                let ids: Vec<&String> = live.keys().collect();
                let id = ids[next(ids.len() as u64) as usize].clone();
                (
                    "DELETE",
                    format!("/v1/overrides/{id}"),
                    format!(r#"{{"reason":"round {round}: delete"}}"#),
                    "delete",
                )
            }
        };
        let (code, text) = request(l.addr, method, &path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", l.logs()));
        match code {
            200 => {
                acknowledged += 1;
                let v: Value = serde_json::from_str(&text).unwrap();
                if kind == "delete" {
                    let id = path.rsplit('/').next().unwrap().to_string();
                    live.remove(&id);
                    gone.insert(id);
                } else {
                    // A new freeze or hold replaces the playbook's earlier one of its kind.
                    let replaced: Vec<String> = live
                        .iter()
                        .filter(|(_, k)| **k == kind)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in replaced {
                        live.remove(&id);
                        gone.insert(id);
                    }
                    let id = v["overrideId"].as_str().unwrap().to_string();
                    live.insert(id, kind);
                }
            }
            // Refused by a rule (e.g. a failover while the DR target is not known healthy
            // yet): nothing was acknowledged, nothing may appear.
            409 => {}
            _ => panic!(
                "round {round}: {method} {path}: {code} {text}\n{}",
                l.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(next(150))).await;
        let standby = 1 - leader;
        let before = takeovers(&replicas[standby]);
        replicas[leader].kill();
        replicas[standby].wait_leader(1, 20 * SEC).await;
        wait_for("the takeover audited", 10 * SEC, || {
            (takeovers(&replicas[standby]) > before).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", replicas[standby].logs()));
        let listed = listed_overrides(&replicas[standby]).await;
        let want: std::collections::BTreeSet<String> = live.keys().cloned().collect();
        assert_eq!(
            listed,
            want,
            "round {round}: the new leader's overrides differ from the acknowledged ones \
             (deleted or replaced so far: {gone:?})\n{}",
            replicas[standby].logs()
        );
        assert!(listed.is_disjoint(&gone));
        // The killed replica comes back as the standby, with its stale state file; every
        // fourth time on an empty audit volume, which it must fill from the cluster.
        let name = replicas[leader].name;
        if round % 4 == 1 {
            std::fs::remove_file(&replicas[leader].audit).unwrap();
        }
        replicas[leader] = Replica::spawn(&sc, &emu, name);
        replicas[leader].wait_ready().await;
        leader = standby;
    }
    assert!(
        acknowledged >= 10,
        "only {acknowledged} of 20 calls acknowledged"
    );
    assert_one_audit_chain(&emu, &replicas).await;
}

/// The cluster's audit chain head: (seq, hash).
fn audit_head(emu: &Emulator) -> (u64, String) {
    let cm = emu
        .get("v1", "ConfigMap", LEASE_NS, &format!("{LEASE_NAME}-audit"))
        .expect("the audit chain's head object");
    let head: Value = serde_json::from_str(cm["data"]["head"].as_str().unwrap()).unwrap();
    (
        head["seq"].as_u64().unwrap(),
        head["hash"].as_str().unwrap().to_string(),
    )
}

/// Every whole line of a replica's audit file.
fn audit_lines(r: &Replica) -> Vec<String> {
    std::fs::read_to_string(&r.audit)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end_matches('\n').to_string())
        .collect()
}

/// Checks, without failoverd's own code, that every replica's audit file and the cluster's
/// head are one chain: each file links (seq 1, 2, ... and each `prev` the SHA-256 of the line
/// before), every file is a prefix of the longest, the head is the longest's last record, and
/// every VirtualService update the API server took has exactly one `written` record.
async fn assert_one_audit_chain(emu: &Emulator, replicas: &[Replica]) {
    use sha2::{Digest, Sha256};
    let (head_seq, head_hash) = audit_head(emu);
    // Standbys copy within a second.
    wait_for(
        "every replica's file to reach the cluster's head",
        15 * SEC,
        || {
            replicas
                .iter()
                .all(|r| audit_lines(r).len() as u64 >= audit_head(emu).0)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: head {head_seq}"));
    let (head_seq, head_hash) = if audit_head(emu).0 == head_seq {
        (head_seq, head_hash)
    } else {
        audit_head(emu)
    };
    let files: Vec<Vec<String>> = replicas.iter().map(audit_lines).collect();
    for (r, lines) in replicas.iter().zip(&files) {
        let mut prev = "0".repeat(64);
        for (i, line) in lines.iter().enumerate() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                v["seq"].as_u64(),
                Some(i as u64 + 1),
                "{}: line {}",
                r.name,
                i + 1
            );
            assert_eq!(
                v["prev"].as_str(),
                Some(prev.as_str()),
                "{}: line {}",
                r.name,
                i + 1
            );
            prev = hex::encode(Sha256::digest(line.as_bytes()));
        }
    }
    let longest = files.iter().max_by_key(|f| f.len()).unwrap();
    for (r, f) in replicas.iter().zip(&files) {
        assert_eq!(
            &longest[..f.len()],
            &f[..],
            "{}: not a prefix of the longest",
            r.name
        );
    }
    assert_eq!(
        longest.len() as u64,
        head_seq,
        "the cluster's head is the longest file's end"
    );
    assert_eq!(
        hex::encode(Sha256::digest(longest.last().unwrap().as_bytes())),
        head_hash
    );
    let written = longest
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["outcome"] == "written")
        .count();
    assert_eq!(
        written,
        vs_writes(emu).len(),
        "every VirtualService update has its `written` record"
    );
}

/// replica-a alone, leading, with one freeze on `demo` kept in the cluster (so the state
/// Lease exists: a create is not stalled by the emulator's per-object write faults).
async fn leader_with_a_freeze(sc: &Scenario, emu: &Emulator) -> Replica {
    let mut a = Replica::spawn(sc, emu, "replica-a");
    a.wait_ready().await;
    a.wait_leader(1, 20 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"first","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{text}");
    a
}

/// The `found` record `a` audits once it knows what became of an unanswered override
/// update on `demo`.
async fn found_record(a: &Replica, within: Duration) -> audit::Record {
    wait_for(
        "the unanswered override update settled in the audit",
        within,
        || {
            audit::read_all(&a.audit)
                .ok()?
                .into_iter()
                .find(|r| r.action == "found" && r.playbook == "demo")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()))
}

/// `failoverd_probe_results_total` summed over its series.
async fn probe_results(r: &Replica) -> u64 {
    let (_, body) = request(r.addr, "GET", "/metrics", None).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("failoverd_probe_results_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Ensures an operator call waiting for the cluster to keep its override does not stop the
/// controller, and is never acknowledged without the cluster: every write to the state Lease
/// stalls (an API server that takes updates to that object and never finishes them). Probe
/// results keep being taken in meanwhile; the call is answered 503 at the end of its 5 s
/// budget, naming the uncertainty, and the leader lists nothing new.
#[tokio::test]
async fn the_controller_keeps_deciding_while_an_override_waits_for_the_cluster() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let a = leader_with_a_freeze(&sc, &emu).await;
    let listed = listed_overrides(&a).await;
    emu.stall_writes_to(&format!("{LEASE_NAME}-state"), 60 * SEC);
    let addr = a.addr;
    let sent = Instant::now();
    let call = tokio::spawn(async move {
        request_within(
            15 * SEC,
            addr,
            "POST",
            "/v1/playbooks/demo/freeze",
            Some(r#"{"reason":"slow API server","ttl":"1h"}"#),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = probe_results(&a).await;
    tokio::time::sleep(3 * SEC).await;
    let during = probe_results(&a).await;
    if call.is_finished() {
        let answer = call.await.unwrap();
        panic!(
            "answered before its budget ran out ({:?}): {answer:?}\n{}",
            sent.elapsed(),
            a.logs()
        );
    }
    assert!(
        during > before,
        "no probe result taken in while the override waited ({before} → {during})\n{}",
        a.logs()
    );
    let (code, text) = call.await.unwrap().unwrap();
    assert_eq!(code, 503, "{text}\n{}", a.logs());
    assert!(text.contains("may or may not hold it"), "{text}");
    assert_eq!(listed_overrides(&a).await, listed);
    assert!(
        kept_overrides(&emu).is_some_and(|s| !s.contains("slow API server")),
        "{:?}",
        kept_overrides(&emu)
    );
    emu.stall_writes_to(&format!("{LEASE_NAME}-state"), Duration::ZERO);
    // Once writes go through again the leader finds out the update never landed (its own
    // write at that version lands first), and the audit says so.
    let found = found_record(&a, 20 * SEC).await;
    assert!(found.outcome.starts_with("did not land"), "{found:?}");
    assert_eq!(listed_overrides(&a).await, listed);
    // Calls made after it are taken again.
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/resume",
        Some(r#"{"reason":"API server back"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{text}");
}

/// Ensures an override update that the API server takes but answers only after failoverd
/// gave up (the call was answered 503 "may or may not") is found once it lands: the leader
/// puts it in force and audits it, so the leader, its audit and the cluster agree.
#[tokio::test]
async fn an_override_update_that_lands_after_the_call_gave_up_is_found_and_in_force() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let a = leader_with_a_freeze(&sc, &emu).await;
    // Every write to the state Lease is handled 6 s late, even after its client has gone.
    emu.stall_writes_detached_to(&format!("{LEASE_NAME}-state"), 6 * SEC);
    let (code, text) = request_within(
        15 * SEC,
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"landed late","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert_eq!(code, 503, "{text}\n{}", a.logs());
    assert!(text.contains("may or may not hold it"), "{text}");
    let found = found_record(&a, 30 * SEC).await;
    emu.stall_writes_detached_to(&format!("{LEASE_NAME}-state"), Duration::ZERO);
    assert!(found.outcome.starts_with("landed"), "{found:?}");
    let kept = kept_overrides(&emu).unwrap_or_default();
    assert!(kept.contains("landed late"), "{kept}");
    // The leader lists exactly what the cluster keeps: the late freeze replaced the first.
    let (_, body) = request(a.addr, "GET", "/v1/overrides", None).await.unwrap();
    let listed: Value = serde_json::from_str(&body).unwrap();
    let reasons: Vec<&str> = listed["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["landed late"], "{body}");
    assert!(!kept.contains("\"first\""), "{kept}");
}
