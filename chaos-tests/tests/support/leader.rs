//! Two real `failoverd` replicas with leader election on the Kubernetes API server emulator,
//! shared by `tests/leader_*.rs`: each replica (`POD_NAME` replica-a / replica-b) with its own
//! token, kubeconfig, listener, audit log and state file, probing the same stand-in services
//! on loopback; short timings (lease 3 s, renew deadline 2 s, retry 500 ms); and readers of
//! what the emulator holds (the Lease, the kept overrides, the VirtualService writes).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant, SystemTime};

use chaos_tests::kube_emulator::{Emulator, Rule, WriteRecord};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, DR_HOST, Scenario, free_addr, kube_replica_command};
use failoverd::audit;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SEC: Duration = Duration::from_secs(1);

pub const LEASE: Duration = Duration::from_secs(3);

pub const RENEW_DEADLINE: Duration = Duration::from_secs(2);

pub const OPERATOR_TOKEN: &str = "leader-test-operator-token";

pub const LEASE_NS: &str = "failoverd";

pub const LEASE_NAME: &str = "failoverd-leader";

/// One `failoverd run` replica with its own identity and files; SIGKILLed when dropped.
pub struct Replica {
    pub name: &'static str,
    pub child: Child,
    pub status: Option<ExitStatus>,
    pub addr: SocketAddr,
    pub audit: PathBuf,
    /// Where it ships audit records (`--audit-ship`); only the leader ships.
    pub shipped: PathBuf,
    pub stderr: PathBuf,
    /// The bearer token its kubeconfig carries (the emulator records writes under `name`).
    pub kube_token: String,
}

impl Replica {
    pub fn spawn(sc: &Scenario, emu: &Emulator, name: &'static str) -> Replica {
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
        let shipped = dir.join("shipped.jsonl");
        let stderr = dir.join("stderr.log");
        let playbooks = &sc.paths.playbooks;
        let child = kube_replica_command(&config, playbooks, &kubeconfig, addr, &audit, name)
            .arg("--state")
            .arg(dir.join("overrides.json"))
            // Every record shipped, a signed checkpoint every 5 (the deployment's one key).
            .arg("--audit-ship")
            .arg(&shipped)
            .arg("--audit-checkpoint-key")
            .arg(checkpoint_key(sc))
            .args(["--audit-checkpoint-every", "5"])
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
            addr,
            audit,
            shipped,
            stderr,
            kube_token,
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} stderr ---\n{}",
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            self.child.kill().unwrap();
            self.status = Some(self.child.wait().unwrap());
        }
    }

    pub async fn wait_ready(&mut self) {
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
    pub async fn leader_gauge(&self) -> Option<i64> {
        let (code, body) = request(self.addr, "GET", "/metrics", None).await.ok()?;
        if code != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("failoverd_leader "))
            .and_then(|v| v.trim().parse().ok())
    }

    pub async fn wait_leader(&self, want: i64, timeout: Duration) {
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
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    request_within(5 * SEC, addr, method, path, body).await
}

/// [`request`] bounded to `limit`.
pub async fn request_within(
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

pub async fn cluster() -> Emulator {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await.unwrap();
    emu.seed(serde_saphyr::from_str::<Value>(DEMO_VIRTUAL_SERVICE).unwrap())
        .unwrap();
    emu
}

/// The live overrides the leader keeps in the cluster for the next one: the JSON of every
/// `override.failoverd.dev/<id>` annotation on the state Lease that holds a live override
/// (tombstones of deleted ones left out), joined; None when the state Lease does not exist.
pub fn kept_overrides(emu: &Emulator) -> Option<String> {
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

pub fn lease_holder(emu: &Emulator) -> Option<String> {
    emu.get("coordination.k8s.io/v1", "Lease", LEASE_NS, LEASE_NAME)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

pub fn failed_over(emu: &Emulator) -> bool {
    emu.get("networking.istio.io/v1", "VirtualService", "demo", "web")
        .is_some_and(|v| v["spec"]["http"][1]["route"][0]["destination"]["host"] == DR_HOST)
}

/// Successful updates of the VirtualService, oldest first.
pub fn vs_writes(emu: &Emulator) -> Vec<WriteRecord> {
    emu.writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.verb != "create" && w.status < 300)
        .collect()
}

pub fn since(t: SystemTime, earlier: SystemTime) -> Duration {
    t.duration_since(earlier).unwrap_or_default()
}

/// No two identities wrote the VirtualService within one lease period of each other.
pub fn assert_single_writer(writes: &[WriteRecord]) {
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
pub async fn pair(sc: &Scenario, emu: &Emulator) -> (Replica, Replica) {
    let mut a = Replica::spawn(sc, emu, "replica-a");
    a.wait_ready().await;
    a.wait_leader(1, 20 * SEC).await;
    let mut b = Replica::spawn(sc, emu, "replica-b");
    b.wait_ready().await;
    (a, b)
}

/// The ids of the overrides `GET /v1/overrides` lists on `r`.
pub async fn listed_overrides(r: &Replica) -> std::collections::BTreeSet<String> {
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

pub fn takeovers(r: &Replica) -> usize {
    audit::read_all(&r.audit)
        .map(|rs| rs.iter().filter(|x| x.action == "takeover").count())
        .unwrap_or(0)
}

/// The deployment's checkpoint key (a Secret's file in a cluster), made once per scenario.
pub fn checkpoint_key(sc: &Scenario) -> PathBuf {
    let key = sc.dir.path().join("audit-checkpoint.key");
    if !key.exists() {
        std::fs::write(&key, "leader-test-checkpoint-key-0123456789").unwrap();
    }
    key
}

/// The cluster's audit chain head: (seq, hash).
pub fn audit_head(emu: &Emulator) -> (u64, String) {
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
pub fn audit_lines(r: &Replica) -> Vec<String> {
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
/// every VirtualService update the API server took has exactly one `written` record; every
/// record was shipped at least once, and `failoverd audit verify --key` proves the files and
/// shipped streams one chain with valid signed checkpoints.
pub async fn assert_one_audit_chain(emu: &Emulator, replicas: &[Replica], key: &Path) {
    use sha2::{Digest, Sha256};
    // Standbys copy within a second.
    chaos_tests::wait_for(
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
    .unwrap_or_else(|e| panic!("{e}: head {:?}", audit_head(emu)));
    let (head_seq, head_hash) = audit_head(emu);
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
    // Every record left on the shipped stream at least once (only leaders ship; a new one
    // ships again from the last checkpoint), as the line whose hash the chain holds.
    let want: BTreeSet<String> = longest
        .iter()
        .map(|l| hex::encode(Sha256::digest(l.as_bytes())))
        .collect();
    let shipped = || -> BTreeSet<String> {
        replicas
            .iter()
            .flat_map(|r| {
                std::fs::read_to_string(&r.shipped)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v["log.kind"] == "audit")
                    .filter_map(|v| v["hash"].as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    chaos_tests::wait_for("every record shipped", 15 * SEC, || {
        want.is_subset(&shipped()).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        let missing: Vec<_> = want.difference(&shipped()).cloned().collect();
        panic!("{e}: {} records never shipped", missing.len())
    });
    let checkpoints = longest
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["action"] == "audit-checkpoint")
        .count();
    assert!(checkpoints >= 1, "the leaders made signed checkpoints");
    // What an auditor's log pipeline holds: every replica's shipped lines (each replica
    // shipped while it led, a new leader again from the last checkpoint), repeats dropped,
    // in seq order.
    let mut merged: std::collections::BTreeMap<u64, String> = Default::default();
    for r in replicas {
        for l in std::fs::read_to_string(&r.shipped)
            .unwrap_or_default()
            .lines()
        {
            let v: Value = serde_json::from_str(l).unwrap();
            merged.insert(v["seq"].as_u64().unwrap(), l.to_string());
        }
    }
    let export = key.with_file_name("shipped-merged.jsonl");
    let text: String = merged.values().map(|l| format!("{l}\n")).collect();
    std::fs::write(&export, text).unwrap();
    // The product's own verifier, given every replica's file and the shipped stream: one
    // chain, and every checkpoint (made by whichever replica led) signed with the key.
    let mut args: Vec<std::ffi::OsString> = vec!["audit".into(), "verify".into(), "--key".into()];
    args.push(key.as_os_str().to_owned());
    for r in replicas {
        args.push(r.audit.clone().into_os_string());
    }
    args.push(export.into_os_string());
    let out = chaos_tests::run_cli(&args, 60 * SEC).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("complete through seq"), "{text}");
}
