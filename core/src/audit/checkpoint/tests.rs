//! The checkpoint rule and signature, against an HMAC computed here by hand.
#![allow(clippy::unwrap_used)]

use super::*;

fn key() -> Key {
    Key::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

/// Ensures the signature is HMAC-SHA256 of the documented message (computed here with the
/// `hmac` crate directly), the key id the first 8 hex of SHA-256(key), and that short keys
/// are refused.
#[test]
fn signature_is_hmac_of_the_documented_message() {
    let k = key();
    let hash = "ab".repeat(32);
    let time = "2027-01-15T08:00:00Z";
    let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(
        format!("failoverd-audit-checkpoint/v1\nseq=42\nhash={hash}\ntime={time}\n").as_bytes(),
    );
    let want = hex::encode(mac.finalize().into_bytes());
    assert_eq!(k.sign(42, &hash, time), want);
    assert!(k.verifies(42, &hash, time, &want));
    assert!(!k.verifies(43, &hash, time, &want));
    assert!(!k.verifies(42, &hash, "2027-01-15T08:00:01Z", &want));
    assert!(!k.verifies(42, &hash, time, "zz"));
    assert_eq!(
        k.id(),
        &hex::encode(Sha256::digest(b"0123456789abcdef0123456789abcdef"))[..8]
    );
    assert!(!format!("{k:?}").contains("0123"));
    assert!(
        Key::new(b"short".to_vec())
            .unwrap_err()
            .contains("at least 16")
    );
}

/// Ensures the rule: due after `every` records; due after `minutes` only when a record was
/// written since the last checkpoint; a checkpoint restarts both count and clock; a chain
/// taken up mid-way keeps its count.
#[test]
fn due_after_every_n_records_or_m_minutes_with_records() {
    let policy = Policy {
        every: 3,
        minutes: 10,
    };
    let mut c = Checkpointer::new(key(), policy, (0, None), at(0));
    // Nothing written: never due, however long.
    assert!(!c.due(at(3600)));
    c.observe("failover", at(1));
    c.observe("failover", at(2));
    assert!(!c.due(at(2)));
    assert!(!c.due(at(599)));
    assert!(c.due(at(600)), "10 minutes with records since");
    c.observe("failback", at(3));
    assert!(c.due(at(3)), "3 records");
    c.observe(ACTION, at(4));
    assert_eq!(c.since(), 0);
    assert!(!c.due(at(4)));
    c.observe("x", at(5));
    assert!(!c.due(at(603)));
    assert!(c.due(at(604)));
    // Taken up from a chain with 5 records after a checkpoint an hour ago.
    let c = Checkpointer::new(key(), policy, (5, Some(at(-3600))), at(0));
    assert!(c.due(at(0)));
    let c = Checkpointer::new(key(), policy, (2, Some(at(-60))), at(0));
    assert!(!c.due(at(0)));
    assert!(c.due(at(540)));
    // Any configured number of minutes is taken without overflow (capped at a year).
    let c = Checkpointer::new(
        key(),
        Policy {
            every: 3,
            minutes: u64::MAX,
        },
        (1, None),
        at(0),
    );
    assert!(!c.due(at(3600 * 24 * 364)));
    assert!(c.due(at(60 * MAX_MINUTES as i64)));
}

/// Ensures the entry is a checkpoint record whose inputs verify, and that `check` names a
/// changed signed field, another key, and a signed record that was changed.
#[test]
fn entry_checks_and_tampering_is_named() {
    let k = key();
    let c = Checkpointer::new(k.clone(), Policy::default(), (0, None), at(0));
    let hash = "cd".repeat(32);
    let e = c.entry(7, &hash, at(60));
    assert_eq!(
        (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()),
        ("failoverd", ACTION, "noted")
    );
    let rec = e.into_record(8, at(60), "00".repeat(32));
    let held = |h: String| move |s: u64| (s == 7).then(|| h.clone());
    let got = check(&k, &rec, held(hash.clone())).unwrap().unwrap();
    assert_eq!((got.seq, got.key_id.as_str()), (7, k.id()));
    assert_eq!(check(&k, &rec, |_| None), Ok(None));
    assert_eq!(
        check(&k, &rec, held("ef".repeat(32))),
        Err(Bad::Mismatch { record: 8, seq: 7 })
    );
    let mut forged = rec.clone();
    forged.inputs["seq"] = 6.into();
    assert_eq!(
        check(&k, &forged, held(hash.clone())),
        Err(Bad::Signature { record: 8, seq: 6 })
    );
    let other = Key::new(vec![7u8; 32]).unwrap();
    assert!(matches!(
        check(&other, &rec, held(hash.clone())),
        Err(Bad::OtherKey { record: 8, .. })
    ));
    let mut broken = rec;
    broken.inputs = serde_json::json!({ "seq": 7 });
    assert!(matches!(
        check(&k, &broken, held(hash)),
        Err(Bad::Malformed { record: 8, .. })
    ));
}
