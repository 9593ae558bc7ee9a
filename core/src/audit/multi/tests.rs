//! Several copies of a chain, built by hand in memory.
#![allow(clippy::unwrap_used)]

use jiff::Timestamp;

use super::*;
use crate::audit::{Entry, GENESIS};

/// Lines of a well-formed chain of `n` records (actions `a1`, `a2`, ...), `prev` computed
/// here with `sha2` directly.
fn chain(n: u64, tag: &str) -> Vec<Vec<u8>> {
    let mut prev = GENESIS.to_string();
    let time = Timestamp::from_second(1_800_000_000).unwrap();
    (1..=n)
        .map(|seq| {
            let e = Entry {
                actor: "engine".into(),
                action: format!("a{seq}"),
                playbook: "web".into(),
                reason: tag.into(),
                outcome: "written".into(),
                ..Entry::default()
            };
            let line = serde_json::to_vec(&e.into_record(seq, time, prev.clone())).unwrap();
            prev = hex::encode(Sha256::digest(&line));
            line
        })
        .collect()
}

/// `lines` continued by `n` more records tagged `tag` (a branch from its end).
fn extend(lines: &[Vec<u8>], n: u64, tag: &str) -> Vec<Vec<u8>> {
    let mut out = lines.to_vec();
    let time = Timestamp::from_second(1_800_000_100).unwrap();
    for _ in 0..n {
        let seq = out.len() as u64 + 1;
        let prev = out
            .last()
            .map_or(GENESIS.to_string(), |l| hex::encode(Sha256::digest(l)));
        let e = Entry {
            actor: "engine".into(),
            action: format!("b{seq}"),
            reason: tag.into(),
            outcome: "noted".into(),
            ..Entry::default()
        };
        out.push(serde_json::to_vec(&e.into_record(seq, time, prev)).unwrap());
    }
    out
}

fn run(files: &[(&str, &[Vec<u8>])]) -> (OneChain, Vec<Problem>) {
    let logs: Vec<Log<'_>> = files
        .iter()
        .map(|(name, lines)| Log {
            name: (*name).into(),
            lines: lines.iter().map(Vec::as_slice).collect(),
        })
        .collect();
    verify_logs(&logs)
}

fn spans(c: &OneChain) -> Vec<(String, u64, u64, Start)> {
    c.spans
        .iter()
        .map(|s| (s.name.clone(), s.first, s.last, s.start.clone()))
        .collect()
}

/// Ensures copies that are all prefixes of the longest are one chain: each reported with its
/// range, the head is the longest's last record and its hash that line's SHA-256.
#[test]
fn prefixes_are_one_chain() {
    let full = chain(6, "x");
    let (c, p) = run(&[
        ("a", &full[..4]),
        ("b", &full),
        ("c", &full[..0]),
        ("d", &full[..6]),
    ]);
    assert_eq!(p, []);
    assert_eq!(
        spans(&c),
        [
            ("a".into(), 1, 4, Start::Genesis),
            ("b".into(), 1, 6, Start::Genesis),
            ("c".into(), 0, 0, Start::Empty),
            ("d".into(), 1, 6, Start::Genesis),
        ]
    );
    let head = c.head.unwrap();
    assert_eq!(head.seq, 6);
    assert_eq!(head.hash, hex::encode(Sha256::digest(&full[5])));
    assert!(c.missing.is_empty());
}

/// Ensures two copies that agree up to seq 3 and then hold different records are a fork
/// named at seq 4 with both copies, though each copy is whole by itself.
#[test]
fn a_fork_names_both_copies_and_the_seq() {
    let base = chain(3, "x");
    let one = extend(&base, 3, "one");
    let two = extend(&base, 2, "two");
    let (_, p) = run(&[("r0", &one), ("r1", &base), ("r2", &two)]);
    assert_eq!(
        p,
        [Problem::Fork {
            seq: 4,
            first: "r0".into(),
            second: "r2".into(),
        }]
    );
    assert_eq!(
        p[0].to_string(),
        "fork at seq 4: r0 and r2 hold different records there"
    );
}

/// Ensures an edited, a dropped and a reordered record in one of several copies is named by
/// that copy, its line and the seq found there; the other copies are not blamed.
#[test]
fn tampering_in_one_copy_is_named() {
    let full = chain(5, "x");
    let mut edited = full.clone();
    edited[1] = String::from_utf8(edited[1].clone())
        .unwrap()
        .replace("\"a2\"", "\"a9\"")
        .into_bytes();
    let dropped: Vec<Vec<u8>> = [0, 1, 3, 4].iter().map(|&i| full[i].clone()).collect();
    let reordered: Vec<Vec<u8>> = [0, 2, 1, 3, 4].iter().map(|&i| full[i].clone()).collect();
    let cases: [(&[Vec<u8>], u64, u64, &str); 3] = [
        (&edited, 3, 3, "prev hash does not match"),
        (&dropped, 3, 4, "sequence 4 where 3 was expected"),
        (&reordered, 2, 3, "sequence 3 where 2 was expected"),
    ];
    for (bad, line, seq, words) in cases {
        let (_, p) = run(&[("good", &full), ("bad", bad)]);
        let Some(Problem::Broken {
            file,
            line: l,
            seq: s,
            problem,
        }) = p.first()
        else {
            panic!("no broken copy named: {p:?}");
        };
        assert_eq!((file.as_str(), *l, *s), ("bad", line, Some(seq)), "{p:?}");
        assert!(problem.contains(words), "{problem}");
        let shown = p[0].to_string();
        assert!(
            shown.starts_with(&format!("bad:{line}: seq {seq}: ")),
            "{shown}"
        );
        assert!(!shown.contains(&format!("seq {seq}: seq {seq}")), "{shown}");
    }
}

/// Ensures an edited last record, invisible inside its own copy, is a fork against a copy
/// that holds the original.
#[test]
fn an_edited_last_record_is_a_fork_against_another_copy() {
    let full = chain(4, "x");
    let mut edited = full.clone();
    edited[3] = String::from_utf8(edited[3].clone())
        .unwrap()
        .replace("\"a4\"", "\"a5\"")
        .into_bytes();
    let (_, p) = run(&[("replica", &full), ("export", &edited)]);
    assert_eq!(
        p,
        [Problem::Fork {
            seq: 4,
            first: "replica".into(),
            second: "export".into()
        }]
    );
}

/// Ensures an export starting mid-chain is linked to the copy holding the record before it,
/// is reported unlinked (and the gap missing) when no copy holds it, and that a first `prev`
/// that does not match the record before it is named.
#[test]
fn an_export_starting_mid_chain() {
    let full = chain(8, "x");
    let (c, p) = run(&[("replica", &full[..5]), ("export", &full[4..])]);
    assert_eq!(p, []);
    assert_eq!(
        spans(&c),
        [
            ("replica".into(), 1, 5, Start::Genesis),
            (
                "export".into(),
                5,
                8,
                Start::Linked {
                    to: "replica".into()
                }
            ),
        ]
    );
    assert_eq!(c.head.unwrap().seq, 8);

    let (c, p) = run(&[("replica", &full[..2]), ("export", &full[5..])]);
    assert_eq!(p, []);
    assert_eq!(c.spans[1].start, Start::Unlinked);
    assert_eq!((c.spans[1].first, c.spans[1].last), (6, 8));
    assert_eq!(c.missing, [(3, 5)]);

    // Record 5 of another history: the export's record 6 does not follow it.
    let other = extend(&full[..4], 1, "other");
    let (_, p) = run(&[("replica", &other), ("export", &full[5..])]);
    assert_eq!(
        p,
        [Problem::Link {
            file: "export".into(),
            seq: 6,
            other: "replica".into()
        }]
    );
    assert!(
        p[0].to_string()
            .contains("not the hash of seq 5 in replica")
    );
}

/// Ensures shipped lines are checked as the exact lines they carry: the shipped copy of a
/// chain verifies with the same head, a re-shipped record is skipped and counted, and an
/// edited shipped record is named.
#[test]
fn shipped_lines_carry_the_exact_record() {
    let full = chain(4, "x");
    let ship = |l: &Vec<u8>| ship_line(l, &hex::encode(Sha256::digest(l)));
    let mut shipped: Vec<Vec<u8>> = full.iter().map(ship).collect();
    let v: serde_json::Value = serde_json::from_slice(&shipped[0]).unwrap();
    assert_eq!(v["log.kind"], "audit");
    assert_eq!(v["seq"], 1);
    assert_eq!(unship_line(&shipped[2]), Some(Ok(full[2].clone())));
    shipped.insert(3, ship(&full[1]));
    shipped.insert(4, ship(&full[2]));
    let (c, p) = run(&[("file", &full), ("shipped", &shipped)]);
    assert_eq!(p, []);
    assert_eq!(c.spans[1].repeats, 2);
    assert_eq!((c.spans[1].first, c.spans[1].last), (1, 4));
    shipped[1] = String::from_utf8(shipped[1].clone())
        .unwrap()
        .replace("\"a2\"", "\"a7\"")
        .into_bytes();
    let (_, p) = run(&[("shipped", &shipped)]);
    assert!(
        matches!(&p[..], [Problem::Broken { line: 2, seq: Some(2), problem, .. }] if problem.contains("shipped `hash`")),
        "{p:?}"
    );
}

/// Ensures sequence numbers at the top of the range are named, never a panic: a copy that
/// starts at u64::MAX and goes on, and two copies ending there.
#[test]
fn sequence_numbers_at_the_end_of_the_range() {
    let time = Timestamp::from_second(1_800_000_000).unwrap();
    let rec = |seq: u64, prev: &str| {
        serde_json::to_vec(&Entry::default().into_record(seq, time, prev.to_string())).unwrap()
    };
    let top = rec(u64::MAX, &"ab".repeat(32));
    let next = rec(0, &hex::encode(Sha256::digest(&top)));
    let (_, p) = run(&[("x", &[top.clone(), next])]);
    assert!(
        matches!(&p[..], [Problem::Broken { line: 2, problem, .. }] if problem.contains("after the largest sequence number")),
        "{p:?}"
    );
    let (c, p) = run(&[
        ("x", std::slice::from_ref(&top)),
        ("y", std::slice::from_ref(&top)),
    ]);
    assert_eq!(p, []);
    assert_eq!(c.head.unwrap().seq, u64::MAX);
    assert_eq!(c.missing, [(1, u64::MAX - 1)]);
}
