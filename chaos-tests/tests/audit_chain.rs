//! The deployment's one audit chain in the cluster (`failoverd::trail::ClusterChain`) against
//! the Kubernetes API server emulator: the API server's resourceVersion conflicts and
//! ConfigMap size limit decide, and every check of the result reads the emulator's objects
//! and hashes lines itself. The guarantees across real leader deaths are in `leader.rs`
//! (`acknowledged_overrides_survive_twenty_leader_kills` ends by checking every replica's
//! file and the cluster's head are one chain).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator};
use failoverd::audit::{AuditLog, Entry};
use failoverd::leader::Leadership;
use failoverd::trail::{ClusterChain, DEFAULT_RETENTION, DEPOSED};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

const NS: &str = "failoverd";
const LEASE: &str = "failoverd-leader";
const HEAD: &str = "failoverd-leader-audit";

async fn client(emu: &Emulator, dir: &Path) -> Client {
    let path = dir.join("kubeconfig");
    emu.write_kubeconfig(&path, ADMIN_TOKEN).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn setup() -> (Emulator, tempfile::TempDir, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = client(&emu, dir.path()).await;
    (emu, dir, c)
}

/// A replica's chain handle: `leading` replicas raise the term, others are standbys.
fn chain(c: &Client, identity: &str, leading: bool) -> Arc<ClusterChain> {
    let leadership = if leading {
        Leadership::always()
    } else {
        Leadership::elected()
    };
    Arc::new(ClusterChain::new(
        c.clone(),
        NS,
        LEASE,
        identity,
        Arc::new(leadership),
        DEFAULT_RETENTION,
    ))
}

/// A replica's log at `path`, joined to the chain (as the daemon does at start).
async fn joined(ch: &ClusterChain, path: &Path) -> AuditLog {
    ch.reconcile(AuditLog::open_copy(path).unwrap())
        .await
        .unwrap()
}

/// replica-a leading a chain of 40 records (one sealed segment, 1..32), its file `a.jsonl`
/// holding all of them.
async fn forty_records() -> (Emulator, tempfile::TempDir, Arc<ClusterChain>, PathBuf) {
    let (emu, dir, c) = setup().await;
    let ch = chain(&c, "replica-a", true);
    let path = dir.path().join("a.jsonl");
    let mut log = joined(&ch, &path).await;
    place_many(&ch, &mut log, "op", 40).await;
    (emu, dir, ch, path)
}

/// Places `n` records through `ch` and copies them into `log`.
async fn place_many(ch: &ClusterChain, log: &mut AuditLog, actor: &str, n: usize) {
    for i in 0..n {
        let (s, h) = log.tip();
        let placed = ch.place_async((s, &h), &entry(actor, i)).await.unwrap();
        log.copy_lines(&placed.lines).unwrap();
    }
}

fn entry(actor: &str, i: usize) -> Entry {
    Entry {
        actor: actor.into(),
        action: "freeze".into(),
        playbook: format!("pb-{i}"),
        reason: format!("{actor} call {i}"),
        outcome: "written".into(),
        ..Entry::default()
    }
}

fn head(emu: &Emulator) -> Value {
    let cm = emu.get("v1", "ConfigMap", NS, HEAD).expect("head object");
    serde_json::from_str(cm["data"]["head"].as_str().unwrap()).unwrap()
}

/// Every record line the cluster holds, oldest first: the segments the head names, then the
/// head object's own records, read from the emulator.
fn cluster_lines(emu: &Emulator) -> Vec<String> {
    let h = head(emu);
    let mut out = Vec::new();
    for s in h["segments"].as_array().unwrap() {
        let name = format!(
            "{HEAD}-{:012}-{:012}",
            s["first"].as_u64().unwrap(),
            s["last"].as_u64().unwrap()
        );
        let cm = emu.get("v1", "ConfigMap", NS, &name).expect("segment");
        out.extend(
            cm["data"]["records"]
                .as_str()
                .unwrap()
                .lines()
                .map(String::from),
        );
    }
    let cm = emu.get("v1", "ConfigMap", NS, HEAD).unwrap();
    out.extend(
        cm["data"]["records"]
            .as_str()
            .unwrap()
            .lines()
            .map(String::from),
    );
    out
}

/// Checks lines as a chain from seq 1 by hashing them here; returns the last hash.
fn check_chain(lines: &[String]) -> String {
    let mut prev = "0".repeat(64);
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1), "line {}", i + 1);
        assert_eq!(v["prev"].as_str(), Some(prev.as_str()), "line {}", i + 1);
        prev = hex::encode(Sha256::digest(l.as_bytes()));
    }
    prev
}

/// Edits record 5 (`pb-3` → `pb-9`) in the first sealed segment, as someone with write
/// access to the cluster could.
fn edit_first_segment(emu: &Emulator) {
    let seg = format!("{HEAD}-{:012}-{:012}", 1, 32);
    emu.mutate("ConfigMap", NS, &seg, |cm| {
        let r = cm["data"]["records"]
            .as_str()
            .unwrap()
            .replacen("pb-3", "pb-9", 1);
        cm["data"]["records"] = r.into();
    })
    .unwrap();
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Ensures three replicas appending at once (standbys: no term) never take the same seq: the
/// head object's resourceVersion makes every other attempt conflict and retry. 90 records
/// seal segments on the way; the whole cluster copy is one chain ending at the head, and each
/// replica's file, once caught up, equals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_never_share_a_seq() {
    let (emu, dir, c) = setup().await;
    let mut handles = Vec::new();
    let mut logs = Vec::new();
    for name in ["a", "b", "c"] {
        let ch = chain(&c, name, false);
        let mut log = joined(&ch, &dir.path().join(format!("{name}.jsonl"))).await;
        log.attach_chain(ch.clone());
        let log = Arc::new(std::sync::Mutex::new(log));
        logs.push((
            ch.clone(),
            log.clone(),
            dir.path().join(format!("{name}.jsonl")),
        ));
        handles.push(tokio::task::spawn_blocking(move || {
            (0..30)
                .map(|i| log.lock().unwrap().append(entry(name, i)).unwrap().seq)
                .collect::<Vec<u64>>()
        }));
    }
    let mut seqs = Vec::new();
    for h in handles {
        seqs.extend(h.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=90).collect::<Vec<u64>>(), "each seq taken once");
    let lines = cluster_lines(&emu);
    assert_eq!(lines.len(), 90);
    let last = check_chain(&lines);
    let h = head(&emu);
    assert_eq!(h["seq"], 90);
    assert_eq!(h["hash"].as_str(), Some(last.as_str()));
    assert!(h["segments"].as_array().unwrap().len() >= 2, "{h}");
    for (ch, log, path) in &logs {
        ch.catch_up(log, None).await.unwrap();
        assert_eq!(file_lines(path), lines, "{}", path.display());
    }
}

/// Ensures a deposed leader cannot extend the chain: replica-a appends as the leader (term
/// 1); then replica-b's takeover lands (term 2, one more record), so replica-a's next update,
/// made from the head as its own last update left it, carries a stale resourceVersion. The
/// API server refuses it (409), replica-a reads the head again, sees the newer term and gives
/// up with the deposed error (the daemon exits on it). The chain holds a's first record and
/// b's, nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_is_refused_by_the_head() {
    let (emu, dir, c) = setup().await;
    let a = chain(&c, "replica-a", true);
    let log_a = joined(&a, &dir.path().join("a.jsonl")).await;
    let (s, h) = log_a.tip();
    a.place_async((s, &h), &entry("replica-a", 0))
        .await
        .unwrap();
    assert_eq!(head(&emu)["term"], 1);
    // replica-b's takeover append lands: one record (seq 2) and term 2, as b's first append
    // as the leader writes them. replica-a still holds the head as its last update left it.
    emu.mutate("ConfigMap", NS, HEAD, |cm| {
        let records = cm["data"]["records"].as_str().unwrap().to_string();
        let prev = hex::encode(Sha256::digest(records.trim_end().as_bytes()));
        let line = serde_json::json!({
            "seq": 2, "time": "2026-12-05T00:00:00Z", "prev": prev, "actor": "replica-b",
            "action": "takeover", "playbook": "", "reason": "became the leader",
            "inputs": null, "before": null, "after": null, "outcome": "noted"
        })
        .to_string();
        let mut h: Value = serde_json::from_str(cm["data"]["head"].as_str().unwrap()).unwrap();
        h["seq"] = 2.into();
        h["hash"] = hex::encode(Sha256::digest(line.as_bytes())).into();
        h["term"] = 2.into();
        h["leader"] = "replica-b".into();
        cm["data"]["head"] = h.to_string().into();
        cm["data"]["records"] = format!("{records}{line}\n").into();
    })
    .unwrap();
    let refused = a.place_async((1, ""), &entry("replica-a", 2)).await;
    let err = refused.expect_err("the deposed leader's append must be refused");
    assert!(err.starts_with(DEPOSED), "{err}");
    let conflicts = emu
        .writes()
        .iter()
        .filter(|w| w.kind == "ConfigMap" && w.identity == "admin" && w.status == 409)
        .count();
    assert!(conflicts >= 1, "a's update was refused by resourceVersion");
    let lines = cluster_lines(&emu);
    check_chain(&lines);
    let actors: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["actor"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(actors, ["replica-a", "replica-b"]);
    assert_eq!(head(&emu)["term"], 2);
    assert_eq!(head(&emu)["leader"], "replica-b");
}

/// Ensures a replica restarted with an empty volume copies the whole chain (sealed segments
/// and open records) at start, and that a replica whose file forked from the chain keeps its
/// file beside (`.fork-*`), copies the chain into a fresh one and records `audit-fork`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_forked_replicas_join_the_chain() {
    let (emu, dir, c) = setup().await;
    let leader = chain(&c, "replica-a", true);
    let mut log = joined(&leader, &dir.path().join("a.jsonl")).await;
    place_many(&leader, &mut log, "replica-a", 40).await;
    let empty = dir.path().join("empty.jsonl");
    let copy = joined(&chain(&c, "replica-b", false), &empty).await;
    assert_eq!(copy.tip().0, 40);
    assert_eq!(file_lines(&empty), cluster_lines(&emu));

    // A file with its own history (another chain from seq 1).
    let forked = dir.path().join("forked.jsonl");
    let mut own = AuditLog::open(&forked).unwrap();
    for i in 0..3 {
        own.append(entry("elsewhere", i)).unwrap();
    }
    let own_lines = file_lines(&forked);
    drop(own);
    joined(&chain(&c, "replica-c", false), &forked).await;
    let lines = cluster_lines(&emu);
    assert_eq!(lines.len(), 41);
    check_chain(&lines);
    assert_eq!(file_lines(&forked), lines);
    let note: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(note["action"], "audit-fork", "{note}");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("forked.jsonl.fork-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        file_lines(&aside[0].path()),
        own_lines,
        "the forked history is kept"
    );
}

/// Ensures an append whose update went unanswered (the API server committed it but answered
/// after the client gave up) is not placed twice: the retry finds it in the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_append_that_landed_is_not_placed_twice() {
    let (emu, dir, c) = setup().await;
    let ch = chain(&c, "replica-a", true);
    let mut log = joined(&ch, &dir.path().join("a.jsonl")).await;
    log.attach_chain(ch.clone());
    let log = Arc::new(std::sync::Mutex::new(log));
    emu.answer_writes_late_to(HEAD, Duration::from_secs(3));
    let l = log.clone();
    let first = tokio::task::spawn_blocking(move || l.lock().unwrap().append(entry("op", 1)))
        .await
        .unwrap();
    emu.answer_writes_late_to(HEAD, Duration::ZERO);
    // Within its budget the append either found its landed update or reported it unknown;
    // an owed retry of the same entry must then find it rather than place a second copy.
    if first.is_err() {
        let l = log.clone();
        tokio::task::spawn_blocking(move || l.lock().unwrap().append_owed(entry("op", 1)))
            .await
            .unwrap()
            .unwrap();
    }
    let lines = cluster_lines(&emu);
    check_chain(&lines);
    let copies = lines.iter().filter(|l| l.contains("op call 1")).count();
    assert_eq!(copies, 1, "{lines:#?}");
    assert_eq!(file_lines(&dir.path().join("a.jsonl")), lines);
}

/// Ensures `verify_against` (what `failoverd audit verify --cluster` runs) names an edited
/// record in a sealed segment of the cluster's copy, and a local file that differs from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_in_the_cluster_or_the_file_is_named() {
    let (emu, _dir, ch, path) = forty_records().await;
    let ok = ch.verify_against(&path).await.unwrap();
    assert!(ok.contains("1..40"), "{ok}");
    // An edited local record.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("op call 7\"", "op call 8\"", 1)).unwrap();
    let e = ch.verify_against(&path).await.unwrap_err();
    assert!(e.contains("record 8"), "{e}");
    std::fs::write(&path, &text).unwrap();
    // An edited record in the first sealed segment.
    edit_first_segment(&emu);
    let e = ch.verify_against(&path).await.unwrap_err();
    assert!(e.contains("segment 1..32") && e.contains("seq 5"), "{e}");
}

/// Ensures `failoverd audit verify --cluster` (the real binary, against the emulator) proves
/// a replica's file a prefix of the whole cluster copy, and exits 1 naming an edited record
/// in a sealed segment (`cargo build -p failoverd` first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_cluster_checks_the_cluster_copy_and_the_file() {
    let (emu, dir, _ch, path) = forty_records().await;
    let kubeconfig = dir.path().join("kubeconfig");
    let verify = || {
        chaos_tests::run_cli(
            [
                "audit".as_ref(),
                "verify".as_ref(),
                "--cluster".as_ref(),
                "--kubeconfig".as_ref(),
                kubeconfig.as_os_str(),
                path.as_os_str(),
            ],
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("records 1..40") && text.contains("a prefix of it"),
        "{text}"
    );
    edit_first_segment(&emu);
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("segment 1..32") && text.contains("seq 5"),
        "{text}"
    );
}
