//! Signed checkpoints: a chain record that signs the chain's head, so an auditor holding only
//! exported or shipped records can prove nothing up to that head was left out or changed.
//!
//! A checkpoint is an ordinary record: actor `failoverd`, action `audit-checkpoint`, outcome
//! `noted`, `inputs: { seq, hash, time, keyId, hmac }`, where `hash` is the SHA-256 of record
//! `seq`'s exact line (the head when it was made) and `hmac` is hex HMAC-SHA256 under the
//! checkpoint key of [`message`]:
//!
//! ```text
//! failoverd-audit-checkpoint/v1\nseq=<seq>\nhash=<hash>\ntime=<time>\n
//! ```
//!
//! (`time` exactly as the record's `inputs.time` string holds it, RFC 3339). `keyId` is the
//! first 8 hex digits of SHA-256(key): it tells keys apart without revealing them. Because
//! the checkpoint is itself on the chain, records after it cannot be slipped before it.
//!
//! [`Checkpointer`] holds the one rule of when a checkpoint is due (after every `every`
//! records, and `minutes` after the last one when records were written since) and builds
//! the entry; the file log and the cluster writer both call it, with the time passed in.

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Entry, Record};

/// The action of a checkpoint record.
pub const ACTION: &str = "audit-checkpoint";
/// Its actor.
pub const ACTOR: &str = "failoverd";
/// The shortest key accepted (bytes): HMAC-SHA256 keys should hold 32 random bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// A checkpoint key. Its bytes never leave it (`Debug` shows the key id only).
#[derive(Clone)]
pub struct Key {
    /// HMAC-SHA256 keyed with the key's bytes, cloned per signature.
    mac: Hmac<Sha256>,
    id: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

impl Key {
    /// A key from its bytes (a Secret's file, used byte for byte); at least
    /// [`MIN_KEY_BYTES`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a checkpoint key needs at least {MIN_KEY_BYTES} bytes (this one has {}); make one with `head -c 32 /dev/urandom > key`",
                bytes.len()
            ));
        }
        let id = hex::encode(Sha256::digest(&bytes))[..8].to_string();
        let mac = Hmac::<Sha256>::new_from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(Self { mac, id })
    }

    /// The key id: the first 8 hex digits of SHA-256(key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hex HMAC-SHA256 of [`message`].
    pub fn sign(&self, seq: u64, hash: &str, time: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(message(seq, hash, time).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// True when `hmac_hex` is the signature of (seq, hash, time) under this key (compared
    /// in constant time).
    pub fn verifies(&self, seq: u64, hash: &str, time: &str, hmac_hex: &str) -> bool {
        let mut mac = self.mac.clone();
        mac.update(message(seq, hash, time).as_bytes());
        hex::decode(hmac_hex).is_ok_and(|raw| mac.verify_slice(&raw).is_ok())
    }
}

/// The signed message: fixed, versioned, one field per line.
pub fn message(seq: u64, hash: &str, time: &str) -> String {
    format!("failoverd-audit-checkpoint/v1\nseq={seq}\nhash={hash}\ntime={time}\n")
}

/// A checkpoint's `inputs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inputs {
    /// The record signed (the head when the checkpoint was made).
    pub seq: u64,
    /// SHA-256 (hex) of that record's exact line.
    pub hash: String,
    /// When it was signed (RFC 3339), as signed.
    pub time: String,
    /// Which key signed it.
    pub key_id: String,
    /// Hex HMAC-SHA256 of [`message`].
    pub hmac: String,
}

/// The longest `minutes` accepted: a year.
pub const MAX_MINUTES: u64 = 525_600;

/// When checkpoints are due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// After this many records since the last checkpoint (at least 1).
    pub every: u64,
    /// And this many minutes after the last checkpoint (or the start), when records were
    /// written since (1 to [`MAX_MINUTES`]).
    pub minutes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            every: 100,
            minutes: 60,
        }
    }
}

/// The checkpoint rule for one writer: counts records since the last checkpoint, says when
/// one is due, and builds it. Pure: time is passed in.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    key: Key,
    policy: Policy,
    since: u64,
    last: Timestamp,
}

impl Checkpointer {
    /// Takes up a chain where `since` records follow its last checkpoint, made at `last`
    /// (None: there is none, the clock starts at `now`). See [`super::Chain::since_checkpoint`].
    pub fn new(key: Key, policy: Policy, since: (u64, Option<Timestamp>), now: Timestamp) -> Self {
        Self {
            key,
            policy: Policy {
                every: policy.every.max(1),
                minutes: policy.minutes.clamp(1, MAX_MINUTES),
            },
            since: since.0,
            last: since.1.map_or(now, |t| t.min(now)),
        }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// Records that follow the last checkpoint.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Counts one record that reached the chain (a checkpoint restarts the count and clock).
    pub fn observe(&mut self, action: &str, time: Timestamp) {
        if action == ACTION {
            self.since = 0;
            self.last = time;
        } else {
            self.since += 1;
        }
    }

    /// True when a checkpoint is due at `now`: `every` records since the last, or at least
    /// one record and `minutes` since the last.
    pub fn due(&self, now: Timestamp) -> bool {
        let minutes = i64::try_from(self.policy.minutes).unwrap_or(i64::MAX);
        self.since >= self.policy.every
            || (self.since > 0
                && now.duration_since(self.last) >= jiff::SignedDuration::from_mins(minutes))
    }

    /// The checkpoint entry signing the head (record `seq`, whose line hashes to `hash`) at
    /// `now`.
    pub fn entry(&self, seq: u64, hash: &str, now: Timestamp) -> Entry {
        let time = now.to_string();
        let inputs = Inputs {
            seq,
            hash: hash.to_string(),
            hmac: self.key.sign(seq, hash, &time),
            time,
            key_id: self.key.id().to_string(),
        };
        Entry {
            traceparent: None,
            actor: ACTOR.into(),
            action: ACTION.into(),
            playbook: String::new(),
            reason: format!("signed checkpoint of the chain head: seq {seq}"),
            inputs: serde_json::to_value(inputs).unwrap_or_default(),
            before: serde_json::Value::Null,
            after: serde_json::Value::Null,
            outcome: "noted".into(),
        }
    }
}

/// Why a checkpoint does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    /// Its `inputs` are not a checkpoint's.
    #[error("checkpoint record {record}: inputs are not a checkpoint's: {problem}")]
    Malformed {
        /// The checkpoint record's seq.
        record: u64,
        /// What is wrong.
        problem: String,
    },
    /// Signed with another key.
    #[error(
        "checkpoint record {record} (of seq {seq}): signed with key {found}, not the given key {given}"
    )]
    OtherKey {
        /// The checkpoint record's seq.
        record: u64,
        /// The seq it signs.
        seq: u64,
        /// Its key id.
        found: String,
        /// The given key's id.
        given: String,
    },
    /// The signature does not match its fields.
    #[error(
        "checkpoint record {record} (of seq {seq}): bad signature (its seq, hash or time was changed, or it was forged)"
    )]
    Signature {
        /// The checkpoint record's seq.
        record: u64,
        /// The seq it signs.
        seq: u64,
    },
    /// The record it signs is not the one the copies hold.
    #[error(
        "checkpoint record {record}: seq {seq} does not hash to the signed hash (record {seq} was changed)"
    )]
    Mismatch {
        /// The checkpoint record's seq.
        record: u64,
        /// The seq it signs.
        seq: u64,
    },
}

/// Checks one checkpoint record under `key`; `hash_at` gives the hash of a record's line
/// where the copies hold it. Ok(Some(inputs)) when it holds, Ok(None) when its signature
/// holds but the record it signs is in no copy (the hash cannot be checked).
pub fn check(
    key: &Key,
    rec: &Record,
    hash_at: impl Fn(u64) -> Option<String>,
) -> Result<Option<Inputs>, Bad> {
    let inputs: Inputs =
        serde_json::from_value(rec.inputs.clone()).map_err(|e| Bad::Malformed {
            record: rec.seq,
            problem: e.to_string(),
        })?;
    if inputs.key_id != key.id() {
        return Err(Bad::OtherKey {
            record: rec.seq,
            seq: inputs.seq,
            found: inputs.key_id,
            given: key.id().to_string(),
        });
    }
    if !key.verifies(inputs.seq, &inputs.hash, &inputs.time, &inputs.hmac) {
        return Err(Bad::Signature {
            record: rec.seq,
            seq: inputs.seq,
        });
    }
    match hash_at(inputs.seq) {
        None => Ok(None),
        Some(h) if h == inputs.hash => Ok(Some(inputs)),
        Some(_) => Err(Bad::Mismatch {
            record: rec.seq,
            seq: inputs.seq,
        }),
    }
}

#[cfg(test)]
mod tests;
