#![allow(clippy::unwrap_used)]
use super::*;
use crate::audit::Entry;

const DAY: SignedDuration = SignedDuration::from_hours(24);

fn t0() -> Timestamp {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

/// The line of the record after `open`'s head, written at `time`.
fn line_after(open: &Open, time: Timestamp, action: &str) -> Vec<u8> {
    let e = Entry {
        actor: "engine".into(),
        action: action.into(),
        playbook: "web".into(),
        outcome: "written".into(),
        ..Entry::default()
    };
    serde_json::to_vec(&e.into_record(open.head.seq + 1, time, open.head.hash.clone())).unwrap()
}

/// Appends `n` records, one a minute from `start`, sealing as `next` says; returns the head
/// content and every sealed segment with its records.
fn grow(n: usize, start: Timestamp) -> (Open, Vec<SegmentCopy>) {
    let mut open = Open::empty();
    let mut sealed = Vec::new();
    for i in 0..n {
        let time = start + SignedDuration::from_mins(i as i64);
        let line = line_after(&open, time, "failover");
        let next = open.next(line, 1, "a", 90 * DAY, time);
        if let Some((s, records)) = next.seal {
            sealed.push((s, split_lines(std::str::from_utf8(&records).unwrap())));
        }
        assert!(next.pruned.is_empty());
        open = next.open;
    }
    (open, sealed)
}

/// Ensures the open part is sealed exactly when it holds OPEN_RECORDS records, segments
/// tile the chain, and the whole copy verifies and round-trips through the object's data.
#[test]
fn appends_seal_full_runs_and_the_copy_verifies() {
    let n = 2 * OPEN_RECORDS + 5;
    let (open, sealed) = grow(n, t0());
    assert_eq!(open.head.seq, n as u64);
    assert_eq!(sealed.len(), 2);
    assert_eq!(
        sealed
            .iter()
            .map(|(s, _)| (s.first, s.last))
            .collect::<Vec<_>>(),
        [(1, 32), (33, 64)]
    );
    assert_eq!(open.lines.len(), 5);
    assert_eq!(open.base().seq, 64);
    let tip = verify_copy(&open, &sealed).unwrap();
    assert_eq!(
        (tip.seq, tip.hash.as_str()),
        (n as u64, open.head.hash.as_str())
    );
    let back = Open::decode(&open.encode()).unwrap();
    assert_eq!(back, open);
    // The whole chain, concatenated, is one chain from the start.
    let all: Vec<Vec<u8>> = sealed
        .iter()
        .flat_map(|(_, l)| l.clone())
        .chain(open.lines.clone())
        .collect();
    assert_eq!(
        crate::audit::verify_lines(all.iter().map(Vec::as_slice)),
        Ok(n as u64)
    );
    assert_eq!(open.line(65), open.lines.first().map(Vec::as_slice));
    assert_eq!(open.line(64), None);
    assert_eq!(open.line(70), None);
}

/// Ensures a large record seals the open part by size before it would pass OPEN_BYTES.
#[test]
fn a_large_record_seals_by_size() {
    let mut open = Open::empty();
    let mut e = Entry {
        actor: "alice".into(),
        action: "freeze".into(),
        reason: "x".repeat(100 * 1024),
        outcome: "written".into(),
        ..Entry::default()
    };
    let mut seals = 0;
    for _ in 0..3 {
        let line = serde_json::to_vec(&e.clone().into_record(
            open.head.seq + 1,
            t0(),
            open.head.hash.clone(),
        ))
        .unwrap();
        let next = open.next(line, 1, "a", 90 * DAY, t0());
        seals += usize::from(next.seal.is_some());
        open = next.open;
        let bytes: usize = open.lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes <= OPEN_BYTES, "{bytes}");
    }
    assert_eq!(seals, 1);
    e.reason.clear();
}

/// Ensures retention drops old segments from the front (never the newest), records the
/// pruned mark, and the copy still verifies from it.
#[test]
fn retention_prunes_old_segments_but_keeps_the_newest() {
    let (open, sealed) = grow(3 * OPEN_RECORDS, t0());
    // 100 days later, one more record: the open part (32 records) is sealed, and every
    // segment but the newest is past 90 days.
    let later = t0() + 100 * DAY;
    let line = line_after(&open, later, "failback");
    let next = open.next(line, 1, "a", 90 * DAY, later);
    let (s, records) = next.seal.clone().unwrap();
    assert_eq!((s.first, s.last), (65, 96));
    assert_eq!(
        next.pruned.iter().map(|s| s.first).collect::<Vec<_>>(),
        [1, 33]
    );
    assert_eq!(next.open.head.pruned.as_ref().map(|p| p.seq), Some(64));
    assert_eq!(next.open.head.segments.len(), 1);
    let kept = vec![(s, split_lines(std::str::from_utf8(&records).unwrap()))];
    assert_eq!(verify_copy(&next.open, &kept).unwrap().seq, 97);
    let _ = sealed;
}

/// Ensures a tampered cluster copy is named: an edited or dropped record in a segment, an
/// edited open record, a head that does not match its records, a segment gap.
#[test]
fn tampered_copies_are_named() {
    let (open, sealed) = grow(OPEN_RECORDS + 3, t0());
    let mut edited = sealed.clone();
    edited[0].1[4] = String::from_utf8(edited[0].1[4].clone())
        .unwrap()
        .replace("failover", "failback")
        .into_bytes();
    let e = verify_copy(&open, &edited).unwrap_err();
    assert!(e.contains("segment 1..32") && e.contains("seq 6"), "{e}");
    let mut dropped = sealed.clone();
    dropped[0].1.remove(10);
    let e = verify_copy(&open, &dropped).unwrap_err();
    assert!(e.contains("segment 1..32") && e.contains("seq 12"), "{e}");

    let mut data = open.encode();
    let records = data.get(RECORDS_KEY).unwrap().replace("web", "api");
    data.insert(RECORDS_KEY.into(), records);
    let e = Open::decode(&data).unwrap_err();
    assert!(e.contains("records") && e.contains("seq 34"), "{e}");

    let mut short = open.clone();
    short.lines.pop();
    let e = Open::decode(&short.encode()).unwrap_err();
    assert!(e.contains("head says seq 35"), "{e}");

    let mut gap = open.clone();
    gap.head.segments[0].first = 2;
    let e = Open::decode(&gap.encode()).unwrap_err();
    assert!(e.contains("segment 2..32"), "{e}");
}
