//! The log's checkpoints and shipping, on real files.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use jiff::SignedDuration;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::*;
use failoverd_core::audit::checkpoint::{Key, Policy};

const KEY: &[u8] = b"test-key-0123456789abcdef-0123456789";

fn entry(action: &str) -> Entry {
    Entry {
        actor: "engine".into(),
        action: action.into(),
        playbook: "web".into(),
        reason: "test".into(),
        outcome: "written".into(),
        ..Entry::default()
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn sha(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// HMAC-SHA256 of the documented message, computed here by hand.
fn hmac(seq: u64, hash: &str, time: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(
        format!("failoverd-audit-checkpoint/v1\nseq={seq}\nhash={hash}\ntime={time}\n").as_bytes(),
    );
    hex::encode(mac.finalize().into_bytes())
}

fn open_with_key(path: &Path, every: u64, minutes: u64) -> AuditLog {
    let mut log = AuditLog::open(path).unwrap();
    log.set_checkpoints(Key::new(KEY.to_vec()).unwrap(), Policy { every, minutes });
    log
}

/// Ensures a checkpoint follows every `every` records, signs the record right before it
/// (its hash is that line's SHA-256, the HMAC the documented one), and the chain verifies.
#[test]
fn checkpoint_after_every_n_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = open_with_key(&path, 3, 60);
    for i in 1..=7 {
        log.append(entry(&format!("e{i}"))).unwrap();
    }
    let ls = lines(&path);
    let recs: Vec<Value> = ls
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "e1",
            "e2",
            "e3",
            "audit-checkpoint",
            "e4",
            "e5",
            "e6",
            "audit-checkpoint",
            "e7"
        ]
    );
    for i in [3, 7] {
        let inp = &recs[i]["inputs"];
        assert_eq!(inp["seq"], i as u64);
        assert_eq!(inp["hash"], sha(&ls[i - 1]));
        assert_eq!(inp["keyId"], &hex::encode(Sha256::digest(KEY))[..8]);
        let time = inp["time"].as_str().unwrap();
        assert_eq!(inp["hmac"], hmac(i as u64, &sha(&ls[i - 1]), time));
        assert_eq!(recs[i]["actor"], "failoverd");
        assert_eq!(recs[i]["outcome"], "noted");
    }
    assert_eq!(verify(&path).unwrap().records, 9);
}

/// Ensures the time rule: no checkpoint while nothing was written since the last one, one
/// once `minutes` passed with a record written, and the count since the last checkpoint
/// carries over a reopen.
#[test]
fn checkpoint_if_due_by_time_and_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = open_with_key(&path, 100, 1);
    let now = Timestamp::now();
    let later = |s: i64| now.checked_add(SignedDuration::from_secs(s)).unwrap();
    assert!(
        log.checkpoint_if_due(later(3600)).unwrap().is_none(),
        "nothing written"
    );
    log.append(entry("one")).unwrap();
    assert!(log.checkpoint_if_due(now).unwrap().is_none());
    let cp = log.checkpoint_if_due(later(61)).unwrap().unwrap();
    assert_eq!((cp.seq, cp.action.as_str()), (2, "audit-checkpoint"));
    assert!(
        log.checkpoint_if_due(later(7200)).unwrap().is_none(),
        "nothing since"
    );
    drop(log);
    // 2 records after the checkpoint, then reopened with every = 3: the third makes one.
    let mut log = AuditLog::open(&path).unwrap();
    log.append(entry("two")).unwrap();
    log.append(entry("three")).unwrap();
    drop(log);
    let mut log = open_with_key(&path, 3, 60);
    log.append(entry("four")).unwrap();
    let actions: Vec<String> = read_all(&path)
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            "one",
            "audit-checkpoint",
            "two",
            "three",
            "four",
            "audit-checkpoint"
        ]
    );
}

/// Ensures no checkpoint is ever made without a key.
#[test]
fn no_key_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for _ in 0..101 {
        log.append(entry("x")).unwrap();
    }
    let later = Timestamp::now()
        .checked_add(SignedDuration::from_hours(5))
        .unwrap();
    assert!(log.checkpoint_if_due(later).unwrap().is_none());
    assert!(read_all(&path).unwrap().iter().all(|r| r.action == "x"));
}

/// Waits (bounded) until `path` holds `n` lines.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(path)
            .map(|t| t.lines().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default();
        if got.len() >= n || Instant::now() > end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ensures each durable record is shipped once as its exact line with `log.kind` and `hash`
/// first; shipping off skips records; re-shipping sends the last checkpoint and what follows.
#[test]
fn ships_each_record_and_reships_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let shipped = dir.path().join("shipped.jsonl");
    let mut log = open_with_key(&path, 2, 60);
    log.set_ship_target(ShipTarget::File(shipped.clone()));
    assert!(log.shipping());
    log.append(entry("a")).unwrap();
    log.append(entry("b")).unwrap(); // + checkpoint 3
    log.set_shipping(false);
    log.append(entry("c")).unwrap();
    log.set_shipping(true);
    log.append(entry("d")).unwrap(); // + checkpoint 6
    log.append(entry("e")).unwrap();
    let file = lines(&path);
    assert_eq!(file.len(), 7);
    let got = wait_lines(&shipped, 6);
    let want: Vec<usize> = vec![0, 1, 2, 4, 5, 6];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, &i) in got.iter().zip(&want) {
        let v: Value = serde_json::from_str(g).unwrap();
        assert_eq!(v["log.kind"], "audit");
        assert_eq!(v["hash"], sha(&file[i]));
        let exact = g.replacen(
            &format!("\"log.kind\":\"audit\",\"hash\":\"{}\",", sha(&file[i])),
            "",
            1,
        );
        assert_eq!(exact, file[i]);
    }
    assert_eq!(log.reship_since_last_checkpoint().unwrap(), 2);
    let got = wait_lines(&shipped, 8);
    assert_eq!(got[6], got[4], "the last checkpoint again");
    assert_eq!(got[7], got[5]);
}

/// Ensures a target that cannot be written is counted per line and never fails an append.
#[test]
fn shipping_failure_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    let mut log = AuditLog::open(&path).unwrap();
    log.attach_health(Arc::new(
        AuditHealth::default().with_ship_errors(counter.clone()),
    ));
    log.set_ship_target(ShipTarget::File(dir.path().join("no/such/dir/shipped")));
    for a in ["a", "b", "c"] {
        log.append(entry(a)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    while counter.get() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counter.get(), 3);
    assert_eq!(verify(&path).unwrap().records, 3);
}

/// A real, small tmpfs (tests run as root; fails, never skips, without it). Unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount (this test needs root and a tmpfs)");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    /// Fills the filesystem to the last byte with another file.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = File::create(self.0.path().join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write(&block).is_ok_and(|n| n > 0) {}
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Ensures a checkpoint that does not fit on a full disk never fails the append that made
/// it due (that record is durable), leaves the file whole, and is written by the next
/// `checkpoint_if_due` once space returns, signing the record before it.
#[test]
fn checkpoint_on_a_full_disk_waits_for_space() {
    let fs = Tmpfs::mount();
    let path = fs.0.path().join("audit.jsonl");
    let mut log = open_with_key(&path, 2, 60);
    log.append(entry("one")).unwrap();
    fs.fill();
    // The second record is sized to fit in what is left of the file's last page (with room
    // for the time's varying length); the checkpoint after it (~450 bytes) cannot.
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let room = 4096 - len % 4096;
    let probe = serde_json::to_vec(&entry("two").into_record(2, Timestamp::now(), "0".repeat(64)))
        .unwrap()
        .len();
    assert!(
        room > probe + 80,
        "test set-up: {room} bytes left, {probe} needed"
    );
    let two = Entry {
        reason: format!("test{}", "x".repeat(room - probe - 40)),
        ..entry("two")
    };
    let r = log.append(two).unwrap();
    assert_eq!(r.seq, 2);
    assert_eq!(lines(&path).len(), 2, "no checkpoint fits yet");
    assert_eq!(verify(&path).unwrap().records, 2);
    assert!(log.checkpoint_if_due(Timestamp::now()).is_err());
    fs.free();
    let cp = log.checkpoint_if_due(Timestamp::now()).unwrap().unwrap();
    assert_eq!((cp.seq, cp.inputs["seq"].as_u64()), (3, Some(2)));
    let ls = lines(&path);
    assert_eq!(cp.inputs["hash"], sha(&ls[1]));
    // The refused checkpoint was an episode of refused appends: its note follows.
    assert_eq!(verify(&path).unwrap().records, 4);
    assert!(
        ls[3].contains("\"action\":\"audit-unavailable\""),
        "{}",
        ls[3]
    );
    assert!(log.checkpoint_if_due(Timestamp::now()).unwrap().is_none());
}
