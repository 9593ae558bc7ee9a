//! Operator overrides kept in the cluster, so the next leader starts from every override the
//! last one acknowledged.
//!
//! With leader election on, an override is acknowledged only after the cluster holds it
//! (write-through): the leader writes it to the state Lease (`<lease>-state` in failoverd's
//! namespace; RBAC already grants leases there) with the `resourceVersion` it read and only
//! while its lease is held with margin (the same fence as routing writes). Each override is
//! one annotation, `override.failoverd.dev/<id>`, so one change touches one key and a
//! takeover can merge by id. A deleted override leaves a tombstone until the time the
//! override would have ended, so a replica that still remembers it cannot bring it back.
//!
//! Everything here but [`ClusterState`] is pure: the annotation map in, the annotation map
//! out, the time passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::OverrideRecord;
use crate::kube_call::{Sent, within};

/// Prefix of the one annotation per kept override (the id follows).
pub const PREFIX: &str = "override.failoverd.dev/";

/// The annotation earlier versions kept the whole set in (read, then migrated away).
pub const LEGACY_ANNOTATION: &str = "failoverd.dev/overrides";

/// How many bytes (keys and values) the kept overrides and tombstones may take on the state
/// Lease. The API server refuses an object whose annotations exceed 256 KiB; the rest is
/// left for whatever else annotates the Lease. About 300 overrides with 200-character
/// reasons fit; at least 40 with the longest reasons the API accepts.
pub const KEPT_BYTES_LIMIT: usize = 192 * 1024;

/// The time one keep (all its requests and retries) may take before the caller is answered.
pub const KEEP_BUDGET: Duration = Duration::from_secs(5);

use crate::kube_call::REQUEST_DEADLINE;

/// One kept entry: a live override or the tombstone of a deleted one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Kept {
    /// An override in force until its `until`.
    Live(OverrideRecord),
    /// An override that was deleted before its time.
    Deleted(Tombstone),
}

/// What is left of a deleted override: enough to refuse its return and to audit who
/// removed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tombstone {
    /// The playbook the override applied to.
    pub playbook: String,
    /// When the override would have ended; the tombstone goes then.
    pub until: Timestamp,
    /// When it was deleted.
    pub at: Timestamp,
    /// Who deleted it.
    pub by: String,
}

impl Kept {
    fn until(&self) -> Timestamp {
        match self {
            Kept::Live(r) => r.until,
            Kept::Deleted(t) => t.until,
        }
    }
}

/// What one operator call does to the kept set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Overrides created or changed.
    pub upsert: Vec<OverrideRecord>,
    /// Overrides removed before their time.
    pub delete: Vec<OverrideRecord>,
    /// Who made the change (on tombstones).
    pub by: String,
}

impl Change {
    /// The change that turns `before` into `after` (by id).
    pub fn between(before: &[OverrideRecord], after: &[OverrideRecord], by: &str) -> Change {
        Change {
            upsert: after
                .iter()
                .filter(|a| !before.contains(a))
                .cloned()
                .collect(),
            delete: before
                .iter()
                .filter(|b| !after.iter().any(|a| a.id == b.id))
                .cloned()
                .collect(),
            by: by.to_string(),
        }
    }

    /// `records` with this change made (by id): what the set is once the cluster kept it,
    /// whatever else changed the set meanwhile (an expiry).
    pub fn applied_to(&self, records: &[OverrideRecord]) -> Vec<OverrideRecord> {
        let mut out: Vec<OverrideRecord> = records
            .iter()
            .filter(|r| {
                !self.delete.iter().any(|d| d.id == r.id)
                    && !self.upsert.iter().any(|u| u.id == r.id)
            })
            .cloned()
            .collect();
        out.extend(self.upsert.iter().cloned());
        out
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.delete.is_empty()
    }
}

/// The kept entries as the state Lease's annotations hold them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeptSet {
    /// Entries by override id.
    pub entries: BTreeMap<String, Kept>,
    /// The whole set as an earlier version kept it, if that annotation is still there.
    pub legacy: Option<Vec<OverrideRecord>>,
    /// Annotations under the prefix that could not be read (named, with why).
    pub problems: Vec<String>,
}

/// Reads the kept entries out of a Lease's annotations.
pub fn read(annotations: &BTreeMap<String, String>) -> KeptSet {
    let mut set = KeptSet::default();
    for (key, value) in annotations {
        if key == LEGACY_ANNOTATION {
            match serde_json::from_str::<Vec<OverrideRecord>>(value) {
                Ok(records) => set.legacy = Some(records),
                Err(e) => set.problems.push(format!("{key}: {e}")),
            }
        } else if let Some(id) = key.strip_prefix(PREFIX) {
            match serde_json::from_str::<Kept>(value) {
                Ok(Kept::Live(r)) if r.id != id => set
                    .problems
                    .push(format!("{key}: holds override `{}`, not `{id}`", r.id)),
                Ok(k) => {
                    set.entries.insert(id.to_string(), k);
                }
                Err(e) => set.problems.push(format!("{key}: {e}")),
            }
        }
    }
    set
}

/// The kept annotations would take more than [`KEPT_BYTES_LIMIT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full {
    /// Bytes the kept overrides would take after the change.
    pub would_use: usize,
}

/// Applies `change` to a Lease's annotations at `now`: entries past their time are purged,
/// the legacy whole-set annotation is migrated to one entry per override, upserts become
/// live entries and deletions tombstones. Refuses (leaving `annotations` as it was) when the
/// result would not fit in [`KEPT_BYTES_LIMIT`].
pub fn apply(
    annotations: &mut BTreeMap<String, String>,
    change: &Change,
    now: Timestamp,
) -> Result<(), Full> {
    let current = read(annotations);
    let mut next = annotations.clone();
    if let Some(legacy) = &current.legacy {
        next.remove(LEGACY_ANNOTATION);
        for r in legacy.iter().filter(|r| r.until > now) {
            if !current.entries.contains_key(&r.id) {
                next.insert(key(&r.id), encode(&Kept::Live(r.clone())));
            }
        }
    }
    for (id, k) in &current.entries {
        if k.until() <= now {
            next.remove(&key(id));
        }
    }
    for r in &change.upsert {
        next.insert(key(&r.id), encode(&Kept::Live(r.clone())));
    }
    for r in &change.delete {
        if r.until > now {
            let t = Tombstone {
                playbook: r.playbook.clone(),
                until: r.until,
                at: now,
                by: change.by.clone(),
            };
            next.insert(key(&r.id), encode(&Kept::Deleted(t)));
        } else {
            next.remove(&key(&r.id));
        }
    }
    let would_use = kept_bytes(&next);
    if would_use > KEPT_BYTES_LIMIT && change.upsert.iter().any(|r| r.until > now) {
        // Deletions always fit (a tombstone is smaller than what it replaces, and removing
        // must stay possible when storage is full); only new overrides are refused.
        return Err(Full { would_use });
    }
    *annotations = next;
    Ok(())
}

/// True when `annotations` holds everything `change` wrote (read back after an update whose
/// answer never came).
pub fn holds(annotations: &BTreeMap<String, String>, change: &Change) -> bool {
    let set = read(annotations);
    change
        .upsert
        .iter()
        .all(|r| set.entries.get(&r.id) == Some(&Kept::Live(r.clone())))
        && change
            .delete
            .iter()
            .all(|r| !matches!(set.entries.get(&r.id), Some(Kept::Live(_))))
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn encode(k: &Kept) -> String {
    // Serializing plain data cannot fail; an empty value would read back as a problem.
    serde_json::to_string(k).unwrap_or_default()
}

fn kept_bytes(annotations: &BTreeMap<String, String>) -> usize {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) || *k == LEGACY_ANNOTATION)
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// The override set a new leader starts from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    /// Every override in force, oldest first.
    pub records: Vec<OverrideRecord>,
    /// This replica's own overrides the cluster has never seen (kept from before leader
    /// election kept overrides in the cluster): written to the cluster by the new leader.
    pub write_back: Vec<OverrideRecord>,
    /// Ids of this replica's own overrides the cluster says were deleted (or, with only the
    /// legacy whole-set annotation, does not list).
    pub dropped: Vec<String>,
}

/// Merges this replica's own overrides with the cluster's at a takeover, by id: the cluster's
/// live entries hold; a tombstone removes the replica's copy; an override only this replica
/// knows is kept and written back. With only the legacy whole-set annotation (written by an
/// earlier version, where a missing override meant a deleted one), the cluster's set wins.
pub fn merge(local: &[OverrideRecord], kept: &KeptSet, now: Timestamp) -> Merged {
    let mut out = Merged::default();
    let mut known: BTreeSet<&str> = kept.entries.keys().map(String::as_str).collect();
    for k in kept.entries.values() {
        if let Kept::Live(r) = k
            && r.until > now
        {
            out.records.push(r.clone());
        }
    }
    if let Some(legacy) = &kept.legacy {
        for r in legacy {
            if known.insert(r.id.as_str()) && r.until > now {
                out.records.push(r.clone());
            }
        }
    }
    let legacy_only = kept.entries.is_empty() && kept.legacy.is_some();
    for r in local.iter().filter(|r| r.until > now) {
        if known.contains(r.id.as_str()) {
            if matches!(kept.entries.get(&r.id), Some(Kept::Deleted(_))) {
                out.dropped.push(r.id.clone());
            }
        } else if legacy_only {
            out.dropped.push(r.id.clone());
        } else {
            out.records.push(r.clone());
            out.write_back.push(r.clone());
        }
    }
    // The engine lets the latest override of a kind win: keep creation order.
    out.records
        .sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    out
}

/// Why the cluster does not hold a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepError {
    /// The kept overrides would exceed [`KEPT_BYTES_LIMIT`].
    Full(Full),
    /// This replica's lease is not held with margin: it must not write.
    NotLeader,
    /// The cluster refused or could not be reached; nothing was kept.
    Failed(String),
    /// An update was sent and its answer never came; reading back did not show it, and it
    /// could still land (see [`ClusterState::settle`]).
    Unknown(Unsettled),
}

/// What is needed to find out later whether unanswered updates landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsettled {
    /// The last error seen.
    pub why: String,
    /// The `resourceVersion`s the unanswered updates carried: one can land only while the
    /// object is still at that version.
    pub versions: Vec<String>,
}

/// How unanswered updates ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The object shows the change: it is kept after all.
    Landed,
    /// The object moved past every version they carried without showing it: they can
    /// never land.
    NotLanded,
    /// Still unknown when [`SETTLE_FOR`] ran out.
    Unknown,
}

/// How long [`ClusterState::settle`] keeps finding out (the API server gives up on a request
/// after 60 s by default).
pub const SETTLE_FOR: Duration = Duration::from_secs(90);

impl std::fmt::Display for KeepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepError::Full(full) => write!(
                f,
                "the cluster's override storage is full ({} of {KEPT_BYTES_LIMIT} bytes): delete overrides or resume playbooks first",
                full.would_use
            ),
            KeepError::NotLeader => {
                write!(f, "this replica lost leadership before the cluster kept it")
            }
            KeepError::Failed(e) => write!(f, "the cluster did not keep it: {e}"),
            KeepError::Unknown(u) => write!(
                f,
                "the cluster may or may not hold it (an update went unanswered: {}); failoverd finds out and audits it; read GET /v1/overrides on the leader",
                u.why
            ),
        }
    }
}

impl KeepError {
    /// The HTTP status an operator call answers with.
    pub fn status(&self) -> u16 {
        match self {
            KeepError::Full(_) => 507,
            _ => 503,
        }
    }
}

/// Where the leader keeps state the next leader needs: the annotations of a second Lease,
/// `<lease>-state`, beside the election Lease.
#[derive(Clone, Debug)]
pub struct ClusterState {
    api: Api<Lease>,
    name: String,
}

impl ClusterState {
    /// State beside the election Lease `lease` in `namespace` (as `<lease>-state`).
    pub fn new(client: kube::Client, namespace: &str, lease: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: format!("{lease}-state"),
        }
    }

    /// The kept overrides (an empty set when the state Lease does not exist yet).
    pub async fn load(&self) -> Result<KeptSet, String> {
        let deadline = Instant::now() + KEEP_BUDGET;
        let lease = match within(deadline, self.api.get_opt(&self.name)).await {
            Ok(l) => l,
            Err(Sent::Refused(e)) => return Err(e),
            Err(_) => return Err(format!("no answer within {REQUEST_DEADLINE:?}")),
        };
        Ok(lease
            .and_then(|l| l.metadata.annotations)
            .map(|a| read(&a))
            .unwrap_or_default())
    }

    /// Makes the cluster hold `change`, within [`KEEP_BUDGET`]. Every update carries the
    /// `resourceVersion` it read and is sent only while `fence` says this replica leads. An
    /// update whose answer never came is read back: the change counts as kept once the
    /// object shows it. Retrying with the newer `resourceVersion` also fences the unanswered
    /// update: once anything newer is written, it can only conflict.
    pub async fn keep(
        &self,
        change: &Change,
        now: Timestamp,
        fence: impl Fn() -> bool,
    ) -> Result<(), KeepError> {
        if change.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + KEEP_BUDGET;
        let pp = PostParams {
            dry_run: false,
            field_manager: Some("failoverd".into()),
        };
        let mut unanswered: Vec<String> = Vec::new();
        let mut last = String::from("no attempt finished within the budget");
        while Instant::now() < deadline {
            let current = match within(deadline, self.api.get_opt(&self.name)).await {
                Ok(c) => c,
                Err(Sent::Refused(e)) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => {
                    last = "a read of the state Lease went unanswered".into();
                    continue;
                }
            };
            let mut annotations = current
                .as_ref()
                .and_then(|l| l.metadata.annotations.clone())
                .unwrap_or_default();
            if !unanswered.is_empty() && holds(&annotations, change) {
                // The update that went unanswered landed.
                return Ok(());
            }
            apply(&mut annotations, change, now).map_err(KeepError::Full)?;
            if !fence() {
                return Err(KeepError::NotLeader);
            }
            let version = current
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone())
                .unwrap_or_default();
            let sent = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            annotations: Some(annotations),
                            ..Default::default()
                        },
                        spec: None,
                    };
                    within(deadline, self.api.create(&pp, &lease)).await
                }
                Some(mut lease) => {
                    lease.metadata.annotations = Some(annotations);
                    within(deadline, self.api.replace(&self.name, &pp, &lease)).await
                }
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(Sent::Conflict) => last = "the state Lease kept changing".into(),
                Err(Sent::Refused(e)) => {
                    if unanswered.is_empty() {
                        return Err(KeepError::Failed(e));
                    }
                    last = e;
                }
                Err(Sent::Unanswered) => {
                    unanswered.push(version);
                    last = format!("an update got no answer within {REQUEST_DEADLINE:?}");
                }
            }
        }
        Err(if unanswered.is_empty() {
            KeepError::Failed(last)
        } else {
            KeepError::Unknown(Unsettled {
                why: last,
                versions: unanswered,
            })
        })
    }

    /// Finds out whether unanswered updates of `change` landed, within [`SETTLE_FOR`]: reads
    /// the object every second; while it is still at a version one of them carried, this
    /// leader writes it unchanged at that version (only while `fence` holds), which either
    /// lands first — then none of them can any more — or conflicts because one did.
    pub async fn settle(
        &self,
        change: &Change,
        unsettled: &Unsettled,
        fence: impl Fn() -> bool,
    ) -> Settled {
        let pp = PostParams {
            dry_run: false,
            field_manager: Some("failoverd".into()),
        };
        let until = Instant::now() + SETTLE_FOR;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let deadline = Instant::now() + REQUEST_DEADLINE;
            let Ok(Some(lease)) = within(deadline, self.api.get_opt(&self.name)).await else {
                continue;
            };
            let annotations = lease.metadata.annotations.clone().unwrap_or_default();
            if holds(&annotations, change) {
                return Settled::Landed;
            }
            let version = lease.metadata.resource_version.clone().unwrap_or_default();
            if !unsettled.versions.contains(&version) {
                return Settled::NotLanded;
            }
            if !fence() {
                continue;
            }
            let deadline = Instant::now() + REQUEST_DEADLINE;
            if within(deadline, self.api.replace(&self.name, &pp, &lease))
                .await
                .is_ok()
            {
                return Settled::NotLanded;
            }
        }
        Settled::Unknown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::overrides::OverrideKind;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn rec(id: &str, created: i64, until: i64) -> OverrideRecord {
        OverrideRecord {
            id: id.into(),
            playbook: "web".into(),
            kind: OverrideKind::Freeze,
            actor: "alice@oncall".into(),
            reason: "INC-1".into(),
            created: at(created),
            until: at(until),
            target: None,
            force: false,
            break_glass: None,
        }
    }

    fn kept_after(changes: &[(Change, i64)]) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        for (c, t) in changes {
            apply(&mut a, c, at(*t)).unwrap();
        }
        a
    }

    #[test]
    fn one_annotation_per_override_and_a_tombstone_for_a_deletion() {
        let x = rec("ov-1", 0, 100);
        let y = rec("ov-2", 1, 100);
        let add = Change::between(&[], &[x.clone(), y.clone()], "alice");
        let del = Change::between(&[x.clone(), y.clone()], std::slice::from_ref(&y), "bob");
        assert_eq!(del.delete, vec![x.clone()]);
        assert!(del.upsert.is_empty());
        let a = kept_after(&[(add, 0), (del, 5)]);
        assert_eq!(a.len(), 2, "{a:?}");
        let set = read(&a);
        assert_eq!(set.entries["ov-2"], Kept::Live(y));
        assert_eq!(
            set.entries["ov-1"],
            Kept::Deleted(Tombstone {
                playbook: "web".into(),
                until: at(100),
                at: at(5),
                by: "bob".into()
            })
        );
        assert!(set.problems.is_empty());
    }

    #[test]
    fn a_change_applies_by_id_to_the_set_as_it_is_now() {
        let (x, y, z) = (
            rec("ov-1", 0, 100),
            rec("ov-2", 1, 100),
            rec("ov-3", 2, 100),
        );
        // Decided while the set was [x, y]: replace x with z.
        let c = Change::between(&[x.clone(), y.clone()], &[y.clone(), z.clone()], "a");
        // Meanwhile y expired and left the set.
        assert_eq!(c.applied_to(std::slice::from_ref(&x)), vec![z.clone()]);
        assert_eq!(c.applied_to(&[x, y.clone()]), vec![y, z]);
    }

    #[test]
    fn entries_past_their_time_are_purged_on_the_next_change() {
        let x = rec("ov-1", 0, 10);
        let y = rec("ov-2", 0, 100);
        let a = kept_after(&[
            (Change::between(&[], std::slice::from_ref(&x), "a"), 0),
            (Change::between(std::slice::from_ref(&x), &[], "a"), 1),
            (Change::between(&[], std::slice::from_ref(&y), "a"), 20),
        ]);
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            vec!["override.failoverd.dev/ov-2"]
        );
    }

    #[test]
    fn merge_keeps_the_clusters_overrides_honours_tombstones_and_writes_back_the_rest() {
        let kept_live = rec("ov-k", 2, 100);
        let deleted = rec("ov-d", 1, 100);
        let local_only = rec("ov-l", 3, 100);
        let expired = rec("ov-e", 0, 4);
        let a = kept_after(&[
            (
                Change::between(&[], &[kept_live.clone(), deleted.clone()], "a"),
                0,
            ),
            (Change::between(std::slice::from_ref(&deleted), &[], "b"), 1),
        ]);
        // This replica still remembers the deleted one, has one the cluster never saw, and
        // one whose time is up.
        let m = merge(
            &[deleted.clone(), local_only.clone(), expired],
            &read(&a),
            at(5),
        );
        assert_eq!(m.records, vec![kept_live, local_only.clone()]);
        assert_eq!(m.write_back, vec![local_only]);
        assert_eq!(m.dropped, vec!["ov-d".to_string()]);
    }

    #[test]
    fn the_legacy_whole_set_wins_until_migrated_then_becomes_entries() {
        let old = rec("ov-o", 0, 100);
        let mine = rec("ov-m", 1, 100);
        let mut a = BTreeMap::new();
        a.insert(
            LEGACY_ANNOTATION.to_string(),
            serde_json::to_string(&vec![old.clone()]).unwrap(),
        );
        let m = merge(std::slice::from_ref(&mine), &read(&a), at(2));
        assert_eq!(m.records, vec![old.clone()]);
        assert_eq!(m.dropped, vec!["ov-m".to_string()]);
        // The first change migrates it.
        let n = rec("ov-n", 3, 100);
        apply(
            &mut a,
            &Change::between(&[], std::slice::from_ref(&n), "a"),
            at(3),
        )
        .unwrap();
        assert!(!a.contains_key(LEGACY_ANNOTATION));
        let set = read(&a);
        assert_eq!(set.entries.len(), 2);
        assert_eq!(set.entries["ov-o"], Kept::Live(old));
    }

    #[test]
    fn a_full_store_refuses_new_overrides_but_never_a_deletion() {
        let mut a = BTreeMap::new();
        let mut live = Vec::new();
        let long = "r".repeat(1000);
        let mut i = 0;
        let full = loop {
            let mut r = rec(&format!("ov-{i:08x}"), i, 100_000);
            r.reason = long.clone();
            match apply(
                &mut a,
                &Change::between(&[], std::slice::from_ref(&r), "a"),
                at(i),
            ) {
                Ok(()) => live.push(r),
                Err(f) => break f,
            }
            i += 1;
            assert!(i < 1_000, "never full");
        };
        assert!(full.would_use > KEPT_BYTES_LIMIT);
        assert!(kept_bytes(&a) <= KEPT_BYTES_LIMIT);
        // What was refused left no trace.
        assert_eq!(read(&a).entries.len(), live.len());
        let first = live.remove(0);
        apply(&mut a, &Change::between(&[first], &[], "b"), at(i)).unwrap();
    }

    #[test]
    fn corrupt_or_misnamed_entries_are_named_not_trusted() {
        let mut a = BTreeMap::new();
        a.insert(format!("{PREFIX}ov-1"), "{".into());
        a.insert(
            format!("{PREFIX}ov-2"),
            encode(&Kept::Live(rec("ov-3", 0, 100))),
        );
        a.insert("unrelated.example/key".into(), "x".into());
        let set = read(&a);
        assert!(set.entries.is_empty());
        assert_eq!(set.problems.len(), 2, "{:?}", set.problems);
        assert!(set.problems.iter().any(|p| p.contains("ov-1")));
    }

    #[test]
    fn holds_sees_exactly_what_a_change_wrote() {
        let x = rec("ov-1", 0, 100);
        let c = Change::between(&[], std::slice::from_ref(&x), "a");
        let mut a = BTreeMap::new();
        assert!(!holds(&a, &c));
        apply(&mut a, &c, at(0)).unwrap();
        assert!(holds(&a, &c));
        let mut changed = x.clone();
        changed.reason = "other".into();
        assert!(!holds(&a, &Change::between(&[], &[changed], "a")));
    }
}
