//! Operator overrides (freezes and failover holds), persisted so they survive restarts.
//!
//! The file is JSON, replaced atomically on every change, and written before the change is
//! acknowledged to the caller. With leader election the cluster keeps them too
//! ([`kept`]), before the change is acknowledged, so the next leader starts from them.

pub mod kept;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::engine::{Actor, Freeze, Hold, Overrides};
use crate::routing::atomic_write;

/// Kind of an override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OverrideKind {
    /// Automation frozen: no automatic moves.
    Freeze,
    /// Failover held to a target until the TTL ends.
    Failover,
}

/// One active override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideRecord {
    /// Stable id, e.g. `ov-3f9a1c2b`.
    #[schema(example = "ov-3f9a1c2b")]
    pub id: String,
    /// The playbook it applies to.
    pub playbook: String,
    /// Freeze or failover hold.
    pub kind: OverrideKind,
    /// Authenticated identity of the operator.
    pub actor: String,
    /// The operator's reason.
    pub reason: String,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created: Timestamp,
    /// When it ends.
    #[schema(value_type = String, format = DateTime)]
    pub until: Timestamp,
    /// Failover target index (holds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    /// Route to the target even if failoverd believes it unhealthy (holds only).
    #[serde(default)]
    #[schema(required = true)]
    pub force: bool,
    /// The two-person break-glass behind this hold (holds only): it may route past the
    /// residency and mesh-policy fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassMark>,
}

/// Who requested and who approved a break-glass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakGlassMark {
    /// The request's id, e.g. `bg-3f9a1c2b`.
    pub id: String,
    /// The admin who asked.
    pub requested_by: String,
    /// The different admin who approved.
    pub approved_by: String,
}

impl OverrideRecord {
    fn actor(&self) -> Actor {
        Actor {
            identity: self.actor.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The persisted set of overrides.
#[derive(Debug)]
pub struct OverrideStore {
    path: PathBuf,
    records: Vec<OverrideRecord>,
}

/// A fresh override id.
pub fn new_id() -> String {
    format!("ov-{:08x}", rand::random::<u32>())
}

impl OverrideStore {
    /// Loads the file (a missing file is an empty set; a corrupt one is an error, so a
    /// freeze is never silently forgotten).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let records = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("override state {} is corrupt: {e}", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("cannot read override state {}: {e}", path.display()),
        };
        Ok(Self {
            path: path.to_path_buf(),
            records,
        })
    }

    /// Every override.
    pub fn all(&self) -> &[OverrideRecord] {
        &self.records
    }

    /// Replaces the set and persists it; on failure the old set stays in force.
    pub fn replace(&mut self, records: Vec<OverrideRecord>) -> std::io::Result<()> {
        self.write(&records)?;
        self.records = records;
        Ok(())
    }

    /// Replaces the set with one the cluster already holds (leader election): it is in force
    /// even if this replica's file cannot be written (the error is returned for the log; the
    /// file catches up on the next change).
    pub fn replace_kept(&mut self, records: Vec<OverrideRecord>) -> std::io::Result<()> {
        let written = self.write(&records);
        self.records = records;
        written
    }

    fn write(&self, records: &[OverrideRecord]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        atomic_write(&self.path, &bytes)
    }

    /// The engine's view of one playbook's overrides at `now` (the most recently created of
    /// each kind wins).
    pub fn for_playbook(&self, playbook: &str, now: Timestamp) -> Overrides {
        let mut ov = Overrides::default();
        let mut live: Vec<&OverrideRecord> = self
            .records
            .iter()
            .filter(|r| r.playbook == playbook && r.until > now)
            .collect();
        // The newest of each kind wins, whatever order the set was assembled in (a change
        // found in the cluster late is appended after newer ones).
        live.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        for r in live {
            match r.kind {
                OverrideKind::Freeze => {
                    ov.freeze = Some(Freeze {
                        by: r.actor(),
                        until: Some(r.until),
                    })
                }
                OverrideKind::Failover => {
                    if let Some(target) = r.target {
                        ov.hold = Some(Hold {
                            by: r.actor(),
                            target,
                            until: r.until,
                            force: r.force,
                            break_glass: r.break_glass.as_ref().map(|b| b.id.clone()),
                        });
                    }
                }
            }
        }
        ov
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(kind: OverrideKind, until: i64) -> OverrideRecord {
        OverrideRecord {
            id: new_id(),
            playbook: "web".into(),
            kind,
            actor: "alice@oncall".into(),
            reason: "INC-1".into(),
            created: Timestamp::from_second(1_800_000_000).unwrap(),
            until: Timestamp::from_second(until).unwrap(),
            target: Some(0),
            force: false,
            break_glass: None,
        }
    }

    /// Ensures overrides survive a reopen and expired ones are not in force.
    #[test]
    fn persists_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = OverrideStore::open(&path).unwrap();
        s.replace(vec![
            rec(OverrideKind::Freeze, 1_800_000_100),
            rec(OverrideKind::Failover, 1_800_000_050),
        ])
        .unwrap();
        let s = OverrideStore::open(&path).unwrap();
        assert_eq!(s.all().len(), 2);
        let at = |t| Timestamp::from_second(t).unwrap();
        let ov = s.for_playbook("web", at(1_800_000_010));
        assert!(ov.freeze.is_some() && ov.hold.is_some());
        let ov = s.for_playbook("web", at(1_800_000_060));
        assert!(ov.freeze.is_some() && ov.hold.is_none());
        assert_eq!(
            s.for_playbook("other", at(1_800_000_010)),
            Overrides::default()
        );
        std::fs::write(&path, "{").unwrap();
        assert!(OverrideStore::open(&path).is_err());
    }

    /// Ensures the most recently created hold wins even when an older one comes later in
    /// the set (a change found in the cluster after newer ones were made).
    #[test]
    fn the_newest_override_of_a_kind_wins_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = OverrideStore::open(&dir.path().join("state.json")).unwrap();
        let mut newer = rec(OverrideKind::Failover, 1_800_000_100);
        newer.created = Timestamp::from_second(1_800_000_005).unwrap();
        newer.target = Some(0);
        let mut older = rec(OverrideKind::Failover, 1_800_000_100);
        older.target = Some(1);
        s.replace(vec![newer, older]).unwrap();
        let ov = s.for_playbook("web", Timestamp::from_second(1_800_000_010).unwrap());
        assert_eq!(ov.hold.unwrap().target, 0);
    }
}
