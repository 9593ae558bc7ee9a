//! Several copies of the audit trail (replicas' files, exports, shipped lines) proved to be
//! one chain.
//!
//! Each copy must be internally whole (every `prev` links, sequences without gaps), two
//! copies must never hold different lines at the same sequence number (a fork), and each
//! copy is then a contiguous part of one chain: a replica's file is a prefix of the longest,
//! an export made with `--since` starts at some seq K > 1 (seq 1's `prev` is the genesis). Such a copy's first `prev` is
//! only checked when another given copy holds record K-1; otherwise it is taken on trust and
//! the report says so ([`Start::Unlinked`]).
//!
//! A shipped line (see [`ship_line`]) is the record's exact line with `"log.kind"` and
//! `"hash"` put first; it is turned back into that exact line before it is checked, and its
//! `hash` must be the line's. A shipped copy may hold a record twice (re-shipped after a
//! leadership change): an exact repeat of a record it already holds is skipped and counted.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Chain;

/// One copy of the trail: a name to report it by and its whole lines (without newlines).
#[derive(Clone, Debug)]
pub struct Log<'a> {
    /// The file's name, as the report shows it.
    pub name: String,
    /// Its whole lines, in order, without their newlines (a torn tail is left out by the
    /// reader).
    pub lines: Vec<&'a [u8]>,
}

/// How a copy's first record is tied to the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The copy holds no record.
    Empty,
    /// It starts at seq 1, whose `prev` is [`GENESIS`].
    Genesis,
    /// It starts at seq K > 1 and its first `prev` is the hash of record K-1 in this copy.
    Linked {
        /// The copy holding record K-1.
        to: String,
    },
    /// It starts at seq K > 1 and no given copy holds record K-1: its first `prev` is not
    /// checked.
    Unlinked,
}

/// What one copy holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The copy's name.
    pub name: String,
    /// Its first record's seq (0 when empty).
    pub first: u64,
    /// Its last whole record's seq (0 when empty).
    pub last: u64,
    /// How its first record is tied to the chain.
    pub start: Start,
    /// Exact repeats of records it already held (re-shipped lines), skipped.
    pub repeats: u64,
}

/// The chain's head: the highest seq any copy holds, and the hash of that record's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// SHA-256 (hex) of its line: the next record's `prev`.
    pub hash: String,
}

/// What the copies were found to hold together (also when a [`Problem`] was found: each
/// copy's whole part up to its first break).
#[derive(Clone, Debug, Default)]
pub struct OneChain {
    /// Per copy, in the order given.
    pub spans: Vec<Span>,
    /// The head, when any copy holds a record.
    pub head: Option<Head>,
    /// Ranges of seqs (inclusive) below the head that no copy holds.
    pub missing: Vec<(u64, u64)>,
    /// Per copy, the SHA-256 of each whole record's line from its first seq on (the line a
    /// checkpoint's `hash` is checked against).
    digests: Vec<(u64, Vec<[u8; 32]>)>,
    /// Every checkpoint record found: copy index, line, and its exact line.
    checkpoints: Vec<(usize, u64, Vec<u8>)>,
}

impl OneChain {
    /// SHA-256 (hex) of the line of record `seq`, from the first copy holding it.
    pub fn hash_at(&self, seq: u64) -> Option<String> {
        self.digests.iter().find_map(|(first, d)| {
            seq.checked_sub(*first)
                .and_then(|i| d.get(usize::try_from(i).ok()?))
                .map(hex::encode)
        })
    }

    /// The checkpoint records found (`action` = `audit-checkpoint`): copy name, line number
    /// and the record's exact line, in the order found (each copy in turn).
    pub fn checkpoint_lines(&self) -> impl Iterator<Item = (&str, u64, &[u8])> {
        self.checkpoints
            .iter()
            .map(|(i, line, l)| (self.spans[*i].name.as_str(), *line, l.as_slice()))
    }
}

/// Why the copies are not one whole chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A copy is broken inside: named by its line and the record's seq (when readable).
    #[error("{file}:{line}: {}{problem}", seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
    Broken {
        /// The copy.
        file: String,
        /// 1-based line.
        line: u64,
        /// The record's seq, when the line says it.
        seq: Option<u64>,
        /// What is wrong.
        problem: String,
    },
    /// Two copies hold different records at the same seq.
    #[error("fork at seq {seq}: {first} and {second} hold different records there")]
    Fork {
        /// The lowest seq where they differ.
        seq: u64,
        /// One copy.
        first: String,
        /// The other.
        second: String,
    },
    /// A copy starting mid-chain does not continue the record before it held by another.
    #[error(
        "{file}: seq {seq}: prev is not the hash of seq {} in {other} (a fork, or an edited record)",
        seq - 1
    )]
    Link {
        /// The copy starting at `seq`.
        file: String,
        /// Its first seq.
        seq: u64,
        /// The copy holding `seq - 1`.
        other: String,
    },
}

/// The first part of a shipped line, before the record's own fields.
const SHIP_PREFIX: &[u8] = b"{\"log.kind\":\"audit\",\"hash\":\"";

/// The shipped form of a record's exact line (without newline): the same line with
/// `"log.kind":"audit"` and `"hash"` (SHA-256 hex of the exact line) put first, so a log
/// pipeline can select audit lines and rebuild the chain. Removing those two fields gives
/// the exact line back ([`unship_line`]).
pub fn ship_line(line: &[u8], hash: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + SHIP_PREFIX.len() + hash.len() + 2);
    out.extend_from_slice(SHIP_PREFIX);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(line.strip_prefix(b"{").unwrap_or(line));
    out
}

/// The exact record line inside a shipped line, when `line` is one (else None); Err when
/// its `hash` is not the hash of the line it carries.
pub fn unship_line(line: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let rest = line.strip_prefix(SHIP_PREFIX)?;
    let (hash, rest) = (rest.get(..64)?, rest.get(64..)?);
    let rest = rest.strip_prefix(b"\",")?;
    let mut exact = Vec::with_capacity(rest.len() + 1);
    exact.push(b'{');
    exact.extend_from_slice(rest);
    let got = hex::encode(Sha256::digest(&exact));
    Some(if got.as_bytes() == hash {
        Ok(exact)
    } else {
        Err("shipped `hash` is not the SHA-256 of the record it carries (edited)".into())
    })
}

#[derive(Deserialize)]
struct SeqOf {
    seq: u64,
    #[serde(default)]
    prev: String,
    #[serde(default)]
    action: String,
}

fn seq_of(line: &[u8]) -> Option<SeqOf> {
    serde_json::from_slice(line).ok()
}

use super::checkpoint::ACTION as CHECKPOINT_ACTION;

/// Walks every copy and compares them. The problems are in the order found: each copy's
/// first inner break, then links and forks between copies (the lowest seq for each pair).
pub fn verify_logs(logs: &[Log<'_>]) -> (OneChain, Vec<Problem>) {
    let mut v = Verifier::default();
    for log in logs {
        v.add(&log.name, log.lines.iter().copied());
    }
    v.finish()
}

/// [`verify_logs`] one copy at a time, each read as a stream: memory is 32 bytes per record
/// held (its hash) plus the checkpoint lines, never a whole file.
#[derive(Debug, Default)]
pub struct Verifier {
    out: OneChain,
    problems: Vec<Problem>,
    /// Per copy: its first record's `prev` (to link it to another copy).
    first_prev: Vec<Option<String>>,
}

impl Verifier {
    /// Walks one copy's whole lines (without newlines), in order.
    pub fn add<L: AsRef<[u8]>>(&mut self, name: &str, lines: impl IntoIterator<Item = L>) {
        let (out, problems) = (&mut self.out, &mut self.problems);
        let fi = out.spans.len();
        let mut chain: Option<Chain> = None;
        let mut first = 0u64;
        let mut digests: Vec<[u8; 32]> = Vec::new();
        let mut repeats = 0u64;
        let mut fprev = None;
        for (i, raw) in lines.into_iter().enumerate() {
            let raw = raw.as_ref();
            let line_no = i as u64 + 1;
            let broken = |problem: String, line: &[u8]| {
                let seq = seq_of(line).map(|s| s.seq);
                // The chain's own words may already name the seq.
                let problem = match seq {
                    Some(n) => problem
                        .strip_prefix(&format!("seq {n}: "))
                        .map_or(problem.clone(), String::from),
                    None => problem,
                };
                Problem::Broken {
                    file: name.to_string(),
                    line: line_no,
                    seq,
                    problem,
                }
            };
            let (line, shipped): (std::borrow::Cow<'_, [u8]>, bool) = match unship_line(raw) {
                None => (raw.into(), false),
                Some(Ok(exact)) => (exact.into(), true),
                Some(Err(problem)) => {
                    problems.push(broken(problem, raw));
                    break;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&*line).into();
            // The seq and prev are needed before the chain takes the line only to start it
            // or to spot a re-shipped repeat; other lines are parsed once, by the chain.
            let head = if chain.is_none() || shipped {
                seq_of(&line)
            } else {
                None
            };
            if shipped
                && let (Some(h), Some(c)) = (&head, &chain)
                && h.seq <= c.seq()
                && h.seq >= first
                && usize::try_from(h.seq - first)
                    .ok()
                    .and_then(|k| digests.get(k))
                    == Some(&digest)
            {
                repeats += 1;
                continue;
            }
            let c = chain.get_or_insert_with(|| match &head {
                Some(h) if h.seq > 1 => {
                    fprev = Some(h.prev.clone());
                    Chain::after(h.seq - 1, &h.prev)
                }
                _ => Chain::new(),
            });
            if let Err(problem) = c.push(&line) {
                problems.push(broken(problem, &line));
                break;
            }
            if first == 0 {
                first = c.seq();
            }
            digests.push(digest);
            // Cheap first look (inside a JSON string these bytes would be escaped); the
            // record's own `action` decides.
            if contains(&line, CHECKPOINT_NEEDLE)
                && seq_of(&line).is_some_and(|h| h.action == CHECKPOINT_ACTION)
            {
                out.checkpoints.push((fi, line_no, line.into_owned()));
            }
        }
        let last = if digests.is_empty() {
            0
        } else {
            first.saturating_add(digests.len() as u64 - 1)
        };
        out.spans.push(Span {
            name: name.to_string(),
            first,
            last,
            start: match first {
                0 => Start::Empty,
                1 => Start::Genesis,
                _ => Start::Unlinked,
            },
            repeats,
        });
        self.first_prev.push(fprev);
        out.digests.push((first, digests));
    }

    /// Compares the copies walked and finds the head.
    pub fn finish(self) -> (OneChain, Vec<Problem>) {
        let Self {
            mut out,
            mut problems,
            first_prev,
        } = self;
        let names: Vec<String> = out.spans.iter().map(|s| s.name.clone()).collect();
        let n = names.len();
        // A copy starting mid-chain: tie its first prev to the record before, where held.
        for i in 0..n {
            let k = out.spans[i].first;
            if k < 2 {
                continue;
            }
            let Some((j, d)) = (0..n)
                .filter(|&j| j != i)
                .find_map(|j| digest_at(&out.digests[j], k - 1).map(|d| (j, d)))
            else {
                continue;
            };
            if first_prev[i].as_deref() == Some(hex::encode(d).as_str()) {
                out.spans[i].start = Start::Linked {
                    to: names[j].clone(),
                };
            } else {
                problems.push(Problem::Link {
                    file: names[i].clone(),
                    seq: k,
                    other: names[j].clone(),
                });
            }
        }
        // Forks: for each pair, the lowest seq both hold with different lines.
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&out.digests[i], &out.digests[j]);
                if a.1.is_empty() || b.1.is_empty() {
                    continue;
                }
                let lo = a.0.max(b.0);
                // Inclusive last seqs (a chain may end at u64::MAX).
                let last = |c: &(u64, Vec<[u8; 32]>)| c.0.saturating_add(c.1.len() as u64 - 1);
                let hi = last(a).min(last(b));
                if let Some(seq) = (lo..=hi).find(|&s| digest_at(a, s) != digest_at(b, s)) {
                    problems.push(Problem::Fork {
                        seq,
                        first: names[i].clone(),
                        second: names[j].clone(),
                    });
                }
            }
        }
        out.head = out
            .spans
            .iter()
            .map(|s| s.last)
            .max()
            .filter(|&s| s > 0)
            .and_then(|seq| {
                Some(Head {
                    seq,
                    hash: out.hash_at(seq)?,
                })
            });
        if out.head.is_some() {
            let mut held: Vec<(u64, u64)> = out
                .spans
                .iter()
                .filter(|s| s.first > 0)
                .map(|s| (s.first, s.last))
                .collect();
            held.sort_unstable();
            let mut next = 1u64;
            for (a, b) in held {
                if a > next {
                    out.missing.push((next, a - 1));
                }
                next = next.max(b.saturating_add(1));
            }
        }
        (out, problems)
    }
}

const CHECKPOINT_NEEDLE: &[u8] = b"\"action\":\"audit-checkpoint\"";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn digest_at(copy: &(u64, Vec<[u8; 32]>), seq: u64) -> Option<&[u8; 32]> {
    seq.checked_sub(copy.0)
        .and_then(|i| copy.1.get(usize::try_from(i).ok()?))
}

#[cfg(test)]
mod tests;
