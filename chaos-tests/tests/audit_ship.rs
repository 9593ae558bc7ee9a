//! Audit shipping and signed checkpoints with the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`): every durable record leaves once, with its hash, on the
//! `--audit-ship` target; `audit export` and `audit verify --key` prove the shipped and
//! exported records complete through the last checkpoint; tampering is named.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chaos_tests::{Daemon, FAST_FAILBACK, Scenario, run_cli, wait_for};
use failoverd::auth::hash_token;
use failoverd::engine::Routing;
use serde_json::Value;
use sha2::{Digest, Sha256};

const SEC: Duration = Duration::from_secs(1);
const TOKEN: &str = "ship-operator-token";
const CLI: Duration = Duration::from_secs(20);

fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn sha(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// Sets each line's `prev` from index `from` on to the SHA-256 of the line before it (what
/// someone rewriting the file would do; keys come out re-ordered, which the chain allows).
fn rechain(lines: &mut [String], from: usize) {
    for k in from.max(1)..lines.len() {
        let mut v: Value = serde_json::from_str(&lines[k]).unwrap();
        v["prev"] = sha(&lines[k - 1]).into();
        lines[k] = v.to_string();
    }
}

/// `failoverd audit verify --key KEY FILE...`: (success, stdout, stderr).
fn verify_with_key(key: &Path, files: &[&Path]) -> (bool, String, String) {
    let mut args = vec!["audit", "verify", "--key", key.to_str().unwrap()];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    cli(&args)
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = run_cli(args, CLI).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Operator calls through the real CLI; each must be acknowledged.
fn operator(url: &str, verb: &str, reason: &str) {
    let mut args = vec![verb, "demo", "--reason", reason];
    if verb == "freeze" {
        args.extend(["--ttl", "1h"]);
    }
    args.extend(["--url", url, "--token", TOKEN]);
    let (ok, out, err) = cli(&args);
    assert!(ok, "{verb} refused: {out}{err}");
}

/// `GET path` with the operator's token (HTTP/1.0, bounded): status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    chaos_tests::http_get_as(addr, path, TOKEN, Duration::from_secs(10))
        .await
        .unwrap()
}

/// A failover, a failback and operator calls with `--audit-ship FILE`, a checkpoint key and a
/// checkpoint every 4 records: every record of the audit file is in the shipped file exactly
/// once with its hash; an export from mid-chain plus the shipped file verify with the key as
/// complete through the last checkpoint; an edited export record and a wrong key are named;
/// nothing audit-shaped reaches stdout (shipping goes only to the target). `GET /v1/audit`
/// with `afterSeq` returns the file's records after that seq, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_and_exported_records_verify_complete_through_the_last_checkpoint() {
    let mut s = Scenario::new(FAST_FAILBACK).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"auditor-test@oncall\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let key = dir.join("checkpoint.key");
    std::fs::write(&key, b"an-hmac-key-of-32-bytes-for-test").unwrap();
    let shipped = dir.join("shipped.jsonl");
    let mut d = Daemon::spawn_with(
        &s.paths,
        "ship",
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--state",
            dir.join("overrides.json").to_str().unwrap(),
            "--audit-ship",
            shipped.to_str().unwrap(),
            "--audit-checkpoint-key",
            key.to_str().unwrap(),
            "--audit-checkpoint-every",
            "4",
        ],
    )
    .unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    let url = format!("http://{}", d.addr);

    s.primary.stop();
    ok(
        s.wait_routing(|r| r == Routing::Failover { target: 0 }, 10 * SEC)
            .await,
        &d,
    );
    s.primary.restart().await.unwrap();
    ok(
        s.wait_routing(|r| r == Routing::Primary, 15 * SEC).await,
        &d,
    );
    for i in 0..5 {
        operator(&url, "freeze", &format!("change window {i}"));
        operator(&url, "resume", &format!("window {i} over"));
    }
    // Every record in the file is shipped (the writer thread follows the appends).
    let audit_path = s.paths.audit.clone();
    ok(
        wait_for("every record shipped", 10 * SEC, || {
            let (a, b) = (lines(&audit_path).len(), lines(&shipped).len());
            (a > 0 && a == b).then_some(())
        })
        .await,
        &d,
    );
    // The copy protocol: records after a seq, in seq order, exactly the file's.
    let now: Vec<Value> = lines(&audit_path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (code, body) = get(d.addr, "/v1/audit?afterSeq=3&limit=5").await;
    assert_eq!(code, 200, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["records"].as_array().unwrap(), &now[3..8].to_vec());
    let (code, body) = get(d.addr, &format!("/v1/audit?afterSeq={}", now.len())).await;
    assert_eq!(
        (code, body.contains("\"records\":[]")),
        (200, true),
        "{body}"
    );
    let (code, body) = get(d.addr, "/v1/audit?afterSeq=0").await;
    assert_eq!(code, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        all["records"].as_array().unwrap(),
        &now,
        "afterSeq=0 is the whole chain"
    );
    let (code, body) = get(d.addr, "/v1/audit?afterSeq=-1").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");

    let status = d.terminate(10 * SEC).unwrap();
    assert_eq!(status.code(), Some(0), "{}", d.logs());

    let file = lines(&s.paths.audit);
    let ship = lines(&shipped);
    assert!(file.len() >= 14, "{} records", file.len());
    // seq -> (times shipped, shipped hash)
    let mut seen: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    for l in &ship {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["log.kind"], "audit", "{l}");
        let e = seen
            .entry(v["seq"].as_u64().unwrap())
            .or_insert((0, v["hash"].as_str().unwrap().to_string()));
        e.0 += 1;
    }
    for (i, l) in file.iter().enumerate() {
        let seq = i as u64 + 1;
        let (n, hash) = seen
            .get(&seq)
            .unwrap_or_else(|| panic!("seq {seq} not shipped"));
        assert_eq!(*n, 1, "seq {seq} shipped {n} times");
        assert_eq!(hash, &sha(l), "seq {seq}: shipped hash is not its line's");
    }
    assert_eq!(seen.len(), file.len());
    let stdout = std::fs::read_to_string(&d.stdout).unwrap_or_default();
    assert!(
        !stdout.contains("log.kind"),
        "audit lines on stdout: {stdout}"
    );

    // The test's own reading of the file: the checkpoints, what the last one signs.
    let recs: Vec<Value> = file
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let checkpoints: Vec<&Value> = recs
        .iter()
        .filter(|r| r["action"] == "audit-checkpoint")
        .collect();
    assert!(checkpoints.len() >= 3, "{} checkpoints", checkpoints.len());
    let last = checkpoints.last().unwrap();
    let signed = last["inputs"]["seq"].as_u64().unwrap();
    assert_eq!(
        last["inputs"]["hash"],
        sha(&file[signed as usize - 1]),
        "the checkpoint signs the hash of record {signed}"
    );
    let after = file.len() as u64 - last["seq"].as_u64().unwrap();

    // An export from the record at index 5 on (seq 6), by its time.
    let since = recs[5]["time"].as_str().unwrap();
    let k = recs
        .iter()
        .position(|r| r["time"].as_str().unwrap() >= since)
        .unwrap()
        + 1;
    let export = dir.join("export.jsonl");
    let (okx, out, err) = cli(&[
        "audit",
        "export",
        "--since",
        since,
        "--audit",
        s.paths.audit.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(okx, "export failed: {out}{err}");
    assert_eq!(
        lines(&export),
        file[k - 1..].to_vec(),
        "export is not the exact lines"
    );

    let (okv, out, err) = verify_with_key(&key, &[&shipped, &export]);
    assert!(okv, "verify failed: {out}{err}");
    assert!(
        out.contains(&format!("complete through seq {signed} (checkpoint at ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{after} record(s) follow the last checkpoint")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "head: seq {}, hash {}",
            file.len(),
            sha(file.last().unwrap())
        )),
        "{out}"
    );

    // The export alone: its records proved from seq k through the checkpoint.
    let (okv, out, err) = verify_with_key(&key, &[&export]);
    assert!(okv, "verify failed: {out}{err}");
    assert!(
        out.contains(&format!(
            "records {k}..{signed} complete through seq {signed}"
        )),
        "{out}"
    );

    // One record of the export edited: named by file, line and seq, and as a fork.
    let tampered = dir.join("tampered.jsonl");
    let mut t = file[k - 1..].to_vec();
    t[1] = t[1].replacen("\"reason\":\"", "\"reason\":\"nothing to see: ", 1);
    assert_ne!(t[1], file[k]);
    std::fs::write(&tampered, t.join("\n") + "\n").unwrap();
    let (okv, out, err) = verify_with_key(&key, &[&shipped, &tampered]);
    assert!(!okv, "tampered export verified: {out}");
    let name = tampered.display().to_string();
    assert!(
        err.contains(&format!(
            "{name}:3: seq {}: prev hash does not match",
            k + 2
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "fork at seq {}: {} and {name}",
            k + 1,
            shipped.display()
        )),
        "{err}"
    );

    // Someone with write access edits record 2 and re-chains everything after it: the
    // chain alone cannot tell, the first checkpoint after it can.
    let mut forged = file.clone();
    forged[1] = forged[1].replacen("\"reason\":\"", "\"reason\":\"rewritten: ", 1);
    rechain(&mut forged, 2);
    let forged_path = dir.join("forged.jsonl");
    std::fs::write(&forged_path, forged.join("\n") + "\n").unwrap();
    let (okv, out, err) = cli(&["audit", "verify", forged_path.to_str().unwrap()]);
    assert!(okv, "a re-chained log is whole by itself: {out}{err}");
    let first_cp = recs
        .iter()
        .find(|r| r["action"] == "audit-checkpoint" && r["inputs"]["seq"].as_u64().unwrap() >= 2)
        .unwrap();
    let (okv, out, err) = verify_with_key(&key, &[&forged_path]);
    assert!(!okv, "re-chained log passed with the key: {out}");
    assert!(
        err.contains(&format!(
            "checkpoint record {}: seq {} does not hash to the signed hash",
            first_cp["seq"], first_cp["inputs"]["seq"]
        )),
        "{err}"
    );
    // ... and fixes every checkpoint's `hash` too: the signatures no longer hold.
    for i in 0..forged.len() {
        let mut v: Value = serde_json::from_str(&forged[i]).unwrap();
        if v["action"] == "audit-checkpoint" {
            let n = v["inputs"]["seq"].as_u64().unwrap() as usize;
            v["inputs"]["hash"] = sha(&forged[n - 1]).into();
            forged[i] = v.to_string();
            rechain(&mut forged, i + 1);
        }
    }
    std::fs::write(&forged_path, forged.join("\n") + "\n").unwrap();
    let (okv, out, err) = verify_with_key(&key, &[&forged_path]);
    assert!(!okv, "forged checkpoints passed: {out}");
    assert!(
        err.contains(&format!(
            "checkpoint record {} (of seq {}): bad signature",
            first_cp["seq"], first_cp["inputs"]["seq"]
        )),
        "{err}"
    );

    // Another key: every checkpoint is refused, naming the key ids.
    let other = dir.join("other.key");
    std::fs::write(&other, b"another-key-of-32-bytes-for-test").unwrap();
    let (okv, _, err) = verify_with_key(&other, &[&export]);
    assert!(!okv);
    assert!(err.contains("not the given key"), "{err}");
}

/// `--audit-ship stdout`: each record reaches stdout as one `log.kind=audit` line whose hash
/// is its line's in the audit file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_to_stdout() {
    let s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"auditor-test@oncall\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_with(
        &s.paths,
        "stdout",
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--state",
            dir.join("overrides.json").to_str().unwrap(),
            "--audit-ship",
            "stdout",
        ],
    )
    .unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    let url = format!("http://{}", d.addr);
    operator(&url, "freeze", "stdout shipping");
    operator(&url, "resume", "stdout shipping done");
    let stdout = d.stdout.clone();
    let audit_path = s.paths.audit.clone();
    ok(
        wait_for("records on stdout", 10 * SEC, || {
            let n = lines(&audit_path).len();
            let shipped = lines(&stdout)
                .iter()
                .filter(|l| l.contains("\"log.kind\":\"audit\""))
                .count();
            (n >= 2 && shipped == n).then_some(())
        })
        .await,
        &d,
    );
    d.terminate(10 * SEC).unwrap();
    let file = lines(&s.paths.audit);
    let shipped: Vec<Value> = lines(&d.stdout)
        .iter()
        .filter(|l| l.contains("\"log.kind\":\"audit\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shipped.len(), file.len());
    for (v, l) in shipped.iter().zip(&file) {
        assert_eq!(v["hash"], sha(l));
    }
}

/// Ensures a kill -9 loses nothing from the shipped stream: with checkpoints on, the records
/// since the last checkpoint are shipped again at start, so after a kill and a restart every
/// record of the audit file is in the shipped file at least once, every shipped line is a
/// record of the file (same hash at the same seq), and `verify --key` over both passes
/// (repeats skipped) complete through the last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_ships_every_record_at_least_once() {
    let s = Scenario::new(&[]).await.unwrap();
    let dir = s.dir.path().to_path_buf();
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{ identity: \"auditor-test@oncall\", role: operator, sha256: \"{}\" }}\n",
            hash_token(TOKEN)
        ),
    )
    .unwrap();
    let key = dir.join("checkpoint.key");
    std::fs::write(&key, b"an-hmac-key-of-32-bytes-for-test").unwrap();
    let shipped = dir.join("shipped.jsonl");
    let state = dir.join("overrides.json");
    let args = [
        "--tokens",
        tokens.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--audit-ship",
        shipped.to_str().unwrap(),
        "--audit-checkpoint-key",
        key.to_str().unwrap(),
        "--audit-checkpoint-every",
        "3",
    ];
    for (round, calls) in [(0, 4), (1, 3)] {
        let mut d = Daemon::spawn_with(&s.paths, &format!("kill9-{round}"), &args).unwrap();
        ok(d.wait_ready(10 * SEC).await, &d);
        let url = format!("http://{}", d.addr);
        for i in 0..calls {
            let verb = if i % 2 == 0 { "freeze" } else { "resume" };
            operator(&url, verb, &format!("round {round} call {i}"));
        }
        if round == 0 {
            // Right after the last acknowledged call: its record may still be queued.
            d.kill().unwrap();
        } else {
            let audit_path = s.paths.audit.clone();
            let shipped = shipped.clone();
            ok(
                wait_for("every record shipped", 10 * SEC, || {
                    let file: Vec<String> = lines(&audit_path).iter().map(|l| sha(l)).collect();
                    let got: Vec<String> = lines(&shipped)
                        .iter()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .filter_map(|v| v["hash"].as_str().map(String::from))
                        .collect();
                    file.iter().all(|h| got.contains(h)).then_some(())
                })
                .await,
                &d,
            );
            d.terminate(10 * SEC).unwrap();
        }
    }
    let file = lines(&s.paths.audit);
    assert!(file.len() >= 7, "{} records", file.len());
    let ship = lines(&shipped);
    let distinct: std::collections::BTreeSet<String> = ship
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].to_string())
        .collect();
    assert!(
        distinct.len() < ship.len(),
        "the restart shipped the last checkpoint and what follows it again"
    );
    for l in ship {
        let v: Value = serde_json::from_str(&l).unwrap();
        let seq = v["seq"].as_u64().unwrap() as usize;
        assert_eq!(
            v["hash"],
            sha(&file[seq - 1]),
            "shipped seq {seq} is not the file's"
        );
    }
    let (okv, out, err) = verify_with_key(&key, &[&shipped, &s.paths.audit]);
    assert!(okv, "verify failed: {out}{err}");
    assert!(out.contains("complete through seq "), "{out}");
    assert!(out.contains("re-shipped repeat(s) skipped"), "{out}");
}

/// Ensures bad checkpoint and shipping settings refuse the configuration, each located in
/// the config file (or naming its flag): a zero interval, a key file too short or missing,
/// an empty target, a target in a directory that does not exist.
#[test]
fn bad_settings_are_refused_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("pb")).unwrap();
    std::fs::write(d.join("pb/demo.yaml"), chaos_tests::DEMO_PLAYBOOK).unwrap();
    std::fs::write(d.join("short.key"), b"short").unwrap();
    let cfg = d.join("failoverd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "playbooks: {p}/pb\nstore: file:{p}/routes\naudit: {p}/audit.jsonl\nauditCheckpointEvery: 0\nauditCheckpointKey: {p}/short.key\nauditShip: {p}/no/such/dir/audit.jsonl\n",
            p = d.display()
        ),
    )
    .unwrap();
    let (okv, out, err) = cli(&["validate", "--config", cfg.to_str().unwrap()]);
    assert!(!okv, "{out}");
    let c = cfg.display();
    for want in [
        format!("{c}:4:1: auditCheckpointEvery: must be at least 1"),
        format!(
            "{c}:5:1: auditCheckpointKey: {}/short.key: a checkpoint key needs at least 16 bytes (this one has 5)",
            d.display()
        ),
        format!(
            "{c}:6:1: auditShip: {}/no/such/dir/audit.jsonl: its directory does not exist",
            d.display()
        ),
    ] {
        assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    }
    assert!(err.contains("3 problem(s)"), "{err}");
    let (okv, _, err) = cli(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--audit-checkpoint-every",
        "5",
        "--audit-checkpoint-minutes",
        "0",
        "--audit-checkpoint-key",
        d.join("missing.key").to_str().unwrap(),
        "--audit-ship",
        "",
    ]);
    assert!(!okv);
    for want in [
        "--audit-checkpoint-minutes:0:0: auditCheckpointMinutes: must be at least 1",
        "--audit-checkpoint-key:0:0: auditCheckpointKey: ",
        "--audit-ship:0:0: auditShip: empty",
    ] {
        assert!(err.contains(want), "{want}\nnot in:\n{err}");
    }
    assert!(
        !err.contains("auditCheckpointEvery"),
        "the flag wins: {err}"
    );
}
