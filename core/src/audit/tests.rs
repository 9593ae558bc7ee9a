//! The chain arithmetic on lines built in memory (the log file's tests are the daemon's).
#![allow(clippy::unwrap_used)]

use super::*;

fn entry(playbook: &str, action: &str, outcome: &str) -> Entry {
    Entry {
        actor: "engine".into(),
        action: action.into(),
        playbook: playbook.into(),
        reason: "test".into(),
        outcome: outcome.into(),
        ..Entry::default()
    }
}

/// Lines of a well-formed chain of the given entries, built by hand: `prev` of each is the
/// SHA-256 of the line before, computed here with `sha2` directly.
fn lines(entries: Vec<Entry>) -> Vec<Vec<u8>> {
    let mut prev = GENESIS.to_string();
    let time = Timestamp::from_second(1_800_000_000).unwrap();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let line =
                serde_json::to_vec(&e.into_record(i as u64 + 1, time, prev.clone())).unwrap();
            prev = hex::encode(Sha256::digest(&line));
            line
        })
        .collect()
}

fn verify(lines: &[Vec<u8>]) -> Result<u64, (u64, String)> {
    verify_lines(lines.iter().map(Vec::as_slice))
}

/// Ensures the line hash is plain SHA-256 in lower-case hex (the FIPS 180-2 "abc" vector).
#[test]
fn hash_line_is_sha256_hex() {
    assert_eq!(
        hash_line(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(GENESIS.len(), 64);
}

/// Ensures an intact chain verifies and counts its records, and an empty one is 0 records.
#[test]
fn intact_chain_verifies() {
    let ls = lines(vec![
        entry("a", "failover", "intent"),
        entry("a", "failover", "written"),
        entry("", "start", "noted"),
    ]);
    assert_eq!(verify(&ls), Ok(3));
    assert_eq!(verify(&[]), Ok(0));
}

/// Ensures an edited record breaks the link of the record after it, named by line.
#[test]
fn edit_breaks_the_next_link() {
    let mut ls = lines(vec![
        entry("a", "failover", "intent"),
        entry("a", "failover", "written"),
        entry("b", "failover", "written"),
    ]);
    let text = String::from_utf8(ls[1].clone()).unwrap();
    ls[1] = text.replace("\"written\"", "\"unchanged\"").into_bytes();
    let (line, problem) = verify(&ls).unwrap_err();
    assert_eq!(line, 3);
    assert!(
        problem.contains("seq 3: prev hash does not match"),
        "{problem}"
    );
}

/// Ensures a removed or reordered record is named as a sequence gap, and a line that is not
/// JSON as such.
#[test]
fn gaps_and_garbage_are_named() {
    let ls = lines(vec![
        entry("a", "failover", "intent"),
        entry("a", "failover", "written"),
        entry("b", "failover", "written"),
    ]);
    let removed = vec![ls[0].clone(), ls[2].clone()];
    let (line, problem) = verify(&removed).unwrap_err();
    assert_eq!(line, 2);
    assert!(
        problem.contains("sequence 3 where 2 was expected"),
        "{problem}"
    );
    let swapped = vec![ls[1].clone(), ls[0].clone()];
    assert_eq!(verify(&swapped).unwrap_err().0, 1);
    let (line, problem) = verify(&[ls[0].clone(), b"{not json".to_vec()]).unwrap_err();
    assert_eq!(line, 2);
    assert!(problem.contains("not valid JSON"), "{problem}");
}

/// Ensures a refused line leaves the chain where it was, so the next good line still fits.
#[test]
fn refused_line_leaves_the_chain_unchanged() {
    let ls = lines(vec![
        entry("a", "failover", "written"),
        entry("a", "x", "noted"),
    ]);
    let mut chain = Chain::new();
    chain.push(&ls[0]).unwrap();
    let tip = chain.last_hash().to_string();
    assert!(chain.push(&ls[0]).is_err());
    assert_eq!((chain.seq(), chain.last_hash()), (1, tip.as_str()));
    chain.push(&ls[1]).unwrap();
    assert_eq!(chain.seq(), 2);
}

/// Ensures intents are tracked per playbook until a record of the same action closes them;
/// another action or another playbook does not.
#[test]
fn intents_wait_for_their_outcome() {
    let ls = lines(vec![
        entry("a", "failover", "intent"),
        entry("b", "failback", "intent"),
        entry("a", "note", "noted"),
        entry("b", "failback", "failed: timeout"),
    ]);
    let mut chain = Chain::new();
    for l in &ls {
        chain.push(l).unwrap();
    }
    let open = chain.into_unresolved();
    assert_eq!(open.keys().collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(open["a"].action, "failover");
    assert_eq!(open["a"].seq, 1);
}
