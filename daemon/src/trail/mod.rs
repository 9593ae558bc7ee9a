//! The deployment's one audit chain, held in the cluster (leader election on).
//!
//! Every record, whichever replica makes it, is first placed in the cluster: the head object
//! (ConfigMap `<lease>-audit` in failoverd's namespace) holds the chain's head (seq, hash,
//! term) and the records not yet sealed; full runs of records are sealed into their own
//! ConfigMaps (`<lease>-audit-<first seq>-<last seq>`), named by the head. Each append is one update of
//! the head object carrying the `resourceVersion` it read, so two appends can never take the
//! same seq. Only then does the record count, and every replica's file copies it (the
//! appender at once, the others within a second), so every file is a prefix of the one chain.
//!
//! A new leader raises the head's `term` with its first append; a deposed leader that tries
//! to append sees a higher term than its own and exits, so it can no longer extend the chain.
//! Leader appends are sent only while the lease is held with margin (the routing fence).
//!
//! An update that gets no answer may still land: the record is remembered and the next
//! attempt (the same record, in the owed queue) first looks for it in the chain, so it is
//! never placed twice.

pub mod head;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, ChainStore, Entry, Placed, Record, hash_line};
use crate::kube_call::{REQUEST_DEADLINE, Sent, within};
use crate::leader::Leadership;
use head::{Mark, Open, RECORDS_KEY, Segment};

/// The time one append (all its requests and retries) may take before the caller is told
/// the record is not (known to be) held.
pub const APPEND_BUDGET: Duration = Duration::from_secs(5);

/// How long sealed segments stay in the cluster, counted from their last record; older ones
/// are removed (every replica's file and the shipped log keep them).
pub const DEFAULT_RETENTION: SignedDuration = SignedDuration::from_hours(90 * 24);

/// Label on every object of the chain (value: the head object's name).
pub const CHAIN_LABEL: &str = "failoverd.dev/audit-chain";

/// A record whose update went unanswered: it may still land.
#[derive(Clone, Debug)]
struct Pending {
    seq: u64,
    line: Vec<u8>,
    /// What the entry was, to know its retry (an owed entry's reason gains a note).
    actor: String,
    action: String,
    playbook: String,
    outcome: String,
}

impl Pending {
    fn is_retry_of(&self, e: &Entry) -> bool {
        self.actor == e.actor
            && self.action == e.action
            && self.playbook == e.playbook
            && self.outcome == e.outcome
    }
}

#[derive(Debug, Default)]
struct State {
    /// The term this replica raised when it first appended as the leader.
    term: Option<u64>,
    pending: Option<Pending>,
    /// The head object as this replica's last update left it: the next append starts from
    /// it without a read. If another replica wrote since, its `resourceVersion` is stale and
    /// the update conflicts (409), which is how a deposed leader learns of the new term.
    cached: Option<Read>,
}

/// The chain in the cluster. See the module documentation.
#[derive(Debug)]
pub struct ClusterChain {
    api: Api<ConfigMap>,
    name: String,
    identity: String,
    leadership: Arc<Leadership>,
    retention: SignedDuration,
    handle: tokio::runtime::Handle,
    state: Mutex<State>,
}

/// The head object as read: its content and the `resourceVersion` it had.
#[derive(Clone, Debug)]
pub struct Read {
    /// The content.
    pub open: Open,
    /// The object as read (its `resourceVersion` is what an update must carry).
    object: ConfigMap,
}

fn pp() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some("failoverd".into()),
    }
}

impl ClusterChain {
    /// The chain beside the election Lease `lease` in `namespace` (head object
    /// `<lease>-audit`), appended to as `identity`. Call from inside the runtime.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        lease: &str,
        identity: &str,
        leadership: Arc<Leadership>,
        retention: SignedDuration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: format!("{lease}-audit"),
            identity: identity.to_string(),
            leadership,
            retention,
            handle: tokio::runtime::Handle::current(),
            state: Mutex::new(State::default()),
        }
    }

    /// The head object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A sealed segment's object: named by its range, so a segment left by an update that
    /// never landed can only ever be made again with the same records (records the head
    /// holds never change), and failoverd never has to update one.
    fn segment_name(&self, s: &Segment) -> String {
        format!("{}-{:012}-{:012}", self.name, s.first, s.last)
    }

    /// Reads the head object (None: the chain has not been started).
    pub async fn read(&self, deadline: Instant) -> Result<Option<Read>, String> {
        let object = match within(deadline, self.api.get_opt(&self.name)).await {
            Ok(o) => o,
            Err(Sent::Refused(e)) => return Err(e),
            Err(_) => return Err(format!("no answer within {REQUEST_DEADLINE:?}")),
        };
        object
            .map(|object| {
                let data = object.data.clone().unwrap_or_default();
                Open::decode(&data)
                    .map(|open| Read { open, object })
                    .map_err(|e| format!("ConfigMap {}: {e}", self.name))
            })
            .transpose()
    }

    /// The records of a sealed segment, checked against what the head says of it.
    async fn read_segment(&self, s: &Segment, deadline: Instant) -> Result<Vec<Vec<u8>>, String> {
        let name = self.segment_name(s);
        let object = match within(deadline, self.api.get_opt(&name)).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(format!(
                    "segment {name} (records {}..{}) is missing from the cluster",
                    s.first, s.last
                ));
            }
            Err(Sent::Refused(e)) => return Err(e),
            Err(_) => return Err(format!("no answer within {REQUEST_DEADLINE:?}")),
        };
        let records = object
            .data
            .as_ref()
            .and_then(|d| d.get(RECORDS_KEY))
            .cloned()
            .unwrap_or_default();
        Ok(head::split_lines(&records))
    }

    /// The lines of every record after `tip`, oldest first: sealed segments as needed, then
    /// the open part. Errors when records after `tip` are no longer in the cluster.
    pub async fn lines_after(
        &self,
        open: &Open,
        tip: u64,
        deadline: Instant,
    ) -> Result<Vec<Vec<u8>>, String> {
        if let Some(p) = &open.head.pruned
            && tip < p.seq
        {
            return Err(format!(
                "records {}..{} are no longer in the cluster (older than the retention); copy them from another replica's file or an export",
                tip + 1,
                p.seq
            ));
        }
        let mut out = Vec::new();
        for s in open.head.segments.iter().filter(|s| s.last > tip) {
            for line in self.read_segment(s, deadline).await? {
                if record_seq(&line).is_some_and(|q| q > tip) {
                    out.push(line);
                }
            }
        }
        let base = open.base().seq;
        out.extend(
            open.lines
                .iter()
                .enumerate()
                .filter(|(i, _)| base + *i as u64 + 1 > tip)
                .map(|(_, l)| l.clone()),
        );
        Ok(out)
    }

    /// Places a record made from `entry`; see [`ChainStore::place`].
    pub async fn place_async(&self, tip: (u64, &str), entry: &Entry) -> Result<Placed, String> {
        let deadline = Instant::now() + APPEND_BUDGET;
        let mut last = String::from("no attempt finished within the budget");
        while Instant::now() < deadline {
            let cached = self.state.lock().ok().and_then(|mut st| st.cached.take());
            let read = match cached {
                Some(r) => Ok(Some(r)),
                None => self.read(deadline).await,
            };
            let read = match read {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(read) = read else {
                return Err(format!(
                    "the chain's head object {} does not exist (it is made at start)",
                    self.name
                ));
            };
            let open = &read.open;
            let leading = self.leadership.is_leader();
            let (my_term, pending) = {
                let st = self.state.lock().map_err(|_| "chain state poisoned")?;
                (st.term, st.pending.clone())
            };
            if let Some(t) = my_term
                && open.head.term > t
            {
                // Another replica took the chain over: this one was deposed and must not
                // extend it.
                return Err(format!(
                    "{DEPOSED}: this replica extended the chain as term {t}, the head is at term {} of {}",
                    open.head.term, open.head.leader
                ));
            }
            // An earlier update that went unanswered: did it land?
            let mut retry = None;
            if let Some(p) = &pending {
                if open.head.seq >= p.seq {
                    let held = match open.line(p.seq) {
                        Some(l) => l == p.line.as_slice(),
                        None => self
                            .lines_after(open, p.seq - 1, deadline)
                            .await?
                            .first()
                            .is_some_and(|l| *l == p.line),
                    };
                    self.set_pending(None);
                    if held && p.is_retry_of(entry) {
                        let lines = self.lines_or_own(open, tip.0, &p.line, deadline).await;
                        let record = serde_json::from_slice(&p.line)
                            .map_err(|e| format!("pending record: {e}"))?;
                        return Ok(Placed { record, lines });
                    }
                    if held {
                        info!(
                            seq = p.seq,
                            "an audit update that went unanswered had landed"
                        );
                    }
                } else if p.is_retry_of(entry)
                    && record_prev(&p.line).as_ref() == Some(&open.head.hash)
                {
                    // Not landed yet, and it can still only land as this seq: send it again.
                    retry = Some(p.line.clone());
                }
            }
            let line = match retry {
                Some(l) => l,
                None => {
                    let rec = entry.clone().into_record(
                        open.head.seq + 1,
                        Timestamp::now(),
                        open.head.hash.clone(),
                    );
                    serde_json::to_vec(&rec).map_err(|e| e.to_string())?
                }
            };
            let term = match my_term {
                Some(t) => t,
                None if leading => open.head.term + 1,
                None => open.head.term,
            };
            let leader = if term == open.head.term {
                open.head.leader.clone()
            } else {
                self.identity.clone()
            };
            let next = open.next(
                line.clone(),
                term,
                &leader,
                self.retention,
                Timestamp::now(),
            );
            if leading && !self.leadership.is_leader() {
                last = "the lease is no longer held with margin".into();
                continue;
            }
            if let Some((segment, records)) = &next.seal
                && let Err(e) = self.seal(segment, records, deadline).await
            {
                last = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let mut object = read.object.clone();
            object.data = Some(next.open.encode());
            match within(deadline, self.api.replace(&self.name, &pp(), &object)).await {
                Ok(written) => {
                    if leading && my_term.is_none() {
                        info!(
                            term,
                            "this replica now extends the audit chain as the leader"
                        );
                        self.set_term(term);
                    }
                    self.set_pending(None);
                    if let Ok(mut st) = self.state.lock() {
                        st.cached = Some(Read {
                            open: next.open.clone(),
                            object: written,
                        });
                    }
                    self.prune(&next.pruned).await;
                    // The record is held: from here on nothing may report it as not placed
                    // (it would be placed again). Lines the copy cannot get now are copied by
                    // the next append or the replicator.
                    let lines = self.lines_or_own(&next.open, tip.0, &line, deadline).await;
                    let record: Record =
                        serde_json::from_slice(&line).map_err(|e| e.to_string())?;
                    return Ok(Placed { record, lines });
                }
                Err(Sent::Conflict) => last = "the chain's head kept changing".into(),
                Err(Sent::Refused(e)) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Sent::Unanswered) => {
                    self.set_pending(Some(Pending {
                        seq: next.open.head.seq,
                        line,
                        actor: entry.actor.clone(),
                        action: entry.action.clone(),
                        playbook: entry.playbook.clone(),
                        outcome: entry.outcome.clone(),
                    }));
                    last = format!(
                        "an update got no answer within {REQUEST_DEADLINE:?}; it may still land and is looked for first next time"
                    );
                }
            }
        }
        Err(last)
    }

    /// [`ClusterChain::lines_after`], or (when it fails) just `own`, the line just placed:
    /// the copy then stops at the gap and is completed later.
    async fn lines_or_own(
        &self,
        open: &Open,
        tip: u64,
        own: &[u8],
        deadline: Instant,
    ) -> Vec<Vec<u8>> {
        match self.lines_after(open, tip, deadline).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read the records before the one just placed; the file copies them later");
                vec![own.to_vec()]
            }
        }
    }

    fn set_pending(&self, p: Option<Pending>) {
        if let Ok(mut st) = self.state.lock() {
            st.pending = p;
        }
    }

    fn set_term(&self, t: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.term = Some(t);
        }
    }

    /// Creates a sealed segment. One already there (an earlier attempt made it) must hold the
    /// same records; anything else was written by someone else and is refused.
    async fn seal(&self, s: &Segment, records: &[u8], deadline: Instant) -> Result<(), String> {
        let name = self.segment_name(s);
        let data = BTreeMap::from([(
            RECORDS_KEY.to_string(),
            String::from_utf8_lossy(records).into_owned(),
        )]);
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(CHAIN_LABEL.into(), self.name.clone())])),
                ..Default::default()
            },
            data: Some(data.clone()),
            ..Default::default()
        };
        match within(deadline, self.api.create(&pp(), &object)).await {
            Ok(_) => Ok(()),
            Err(Sent::Conflict) => match within(deadline, self.api.get_opt(&name)).await {
                Ok(Some(there)) if there.data.as_ref() == Some(&data) => Ok(()),
                Ok(_) => Err(format!(
                    "segment {name} already exists with other records (written outside failoverd?)"
                )),
                Err(e) => Err(format!("segment {name}: cannot read it back: {e:?}")),
            },
            Err(e) => Err(format!("segment {name}: {e:?}")),
        }
    }

    /// Deletes segments retention dropped from the head (best effort: a failure leaves an
    /// object the head no longer names, removed by a later prune of the same name).
    async fn prune(&self, segments: &[Segment]) {
        for s in segments {
            let name = self.segment_name(s);
            let deadline = Instant::now() + REQUEST_DEADLINE;
            if let Err(e) = within(deadline, self.api.delete(&name, &DeleteParams::default())).await
            {
                warn!(segment = %name, error = ?e, "could not delete a pruned audit segment");
            } else {
                info!(segment = %name, records = %format!("{}..{}", s.first, s.last), "audit segment past retention removed from the cluster");
            }
        }
    }

    /// Brings this replica's log and the cluster's chain together at start.
    ///
    /// - No chain in the cluster yet: it is started from this file (its records sealed into
    ///   segments), or empty.
    /// - The file is a prefix of the chain: the rest is copied.
    /// - Otherwise (the file forked from the chain, or holds records the cluster lost): the
    ///   file is kept beside as `<file>.fork-<unix seconds>`, a fresh file copies the chain,
    ///   and a record (`audit-fork`, or `audit-gap` naming the missing range) says so.
    pub async fn reconcile(&self, mut log: AuditLog) -> Result<AuditLog, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let read = match self.read(deadline).await? {
            Some(r) => r,
            None => self.start_chain(&log, deadline).await?,
        };
        let open = &read.open;
        let (seq, hash) = log.tip();
        let verdict = if seq > open.head.seq {
            let at = local_mark(log.path(), open.head.seq)?;
            if at.hash == open.head.hash {
                Some((
                    "audit-gap",
                    format!(
                        "the cluster's audit chain ends at seq {} but this replica's file held records {}..{} (the cluster lost them)",
                        open.head.seq,
                        open.head.seq + 1,
                        seq
                    ),
                ))
            } else {
                Some((
                    "audit-fork",
                    format!(
                        "this replica's file (records 1..{seq}) is not a prefix of the cluster's audit chain"
                    ),
                ))
            }
        } else if seq == 0 || open.head.pruned.as_ref().is_some_and(|p| seq < p.seq) {
            None
        } else {
            let theirs = match self.lines_after(open, seq - 1, deadline).await?.first() {
                Some(l) => hash_line(l),
                None => String::new(),
            };
            (theirs != hash).then(|| {
                (
                    "audit-fork",
                    format!(
                        "record {seq} of this replica's file differs from the cluster's audit chain (a fork)"
                    ),
                )
            })
        };
        if let Some((action, why)) = verdict {
            let path = log.path().to_path_buf();
            let aside = PathBuf::from(format!(
                "{}.fork-{}",
                path.display(),
                Timestamp::now().as_second()
            ));
            drop(log);
            std::fs::rename(&path, &aside)
                .map_err(|e| format!("cannot set {} aside: {e}", path.display()))?;
            error!(kept = %aside.display(), "{why}; the file is kept beside and a fresh one copies the chain");
            log = AuditLog::open_copy(&path).map_err(|e| e.to_string())?;
            self.copy_all(&mut log, open, deadline).await?;
            let note = Entry {
                actor: "failoverd".into(),
                action: action.into(),
                reason: format!("{why}; kept as {}", aside.display()),
                inputs: serde_json::json!({ "replica": self.identity, "file": aside, "records": seq, "lastHash": hash }),
                outcome: "noted".into(),
                ..Entry::default()
            };
            let (s, h) = log.tip();
            let placed = self.place_async((s, &h), &note).await?;
            log.copy_lines(&placed.lines).map_err(|e| e.to_string())?;
        } else {
            self.copy_all(&mut log, open, deadline).await?;
        }
        Ok(log)
    }

    async fn copy_all(
        &self,
        log: &mut AuditLog,
        open: &Open,
        deadline: Instant,
    ) -> Result<(), String> {
        let lines = self.lines_after(open, log.tip().0, deadline).await?;
        let n = log.copy_lines(&lines).map_err(|e| e.to_string())?;
        if n > 0 {
            info!(
                records = n,
                "copied the cluster's audit chain into this replica's file"
            );
        }
        Ok(())
    }

    /// Starts the chain from this replica's file (or empty): its records are sealed into
    /// segments, then the head is created; if another replica started it first, that one
    /// stands.
    async fn start_chain(&self, log: &AuditLog, deadline: Instant) -> Result<Read, String> {
        let lines = local_lines(log.path())?;
        let mut open = Open::empty();
        for chunk in lines.chunks(head::OPEN_RECORDS) {
            let base = open.base();
            let tip = head::check_run(chunk, &base)?;
            let last_time = chunk
                .last()
                .and_then(|l| serde_json::from_slice::<Record>(l).ok())
                .map_or_else(Timestamp::now, |r| r.time);
            let s = Segment {
                first: base.seq + 1,
                last: tip.seq,
                last_hash: tip.hash.clone(),
                last_time,
            };
            let mut records = Vec::new();
            for l in chunk {
                records.extend_from_slice(l);
                records.push(b'\n');
            }
            self.seal(&s, &records, deadline).await?;
            open.head.segments.push(s);
            open.head.seq = tip.seq;
            open.head.hash = tip.hash;
        }
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(CHAIN_LABEL.into(), self.name.clone())])),
                ..Default::default()
            },
            data: Some(open.encode()),
            ..Default::default()
        };
        match within(deadline, self.api.create(&pp(), &object)).await {
            Ok(_) => {
                info!(records = open.head.seq, chain = %self.name, "started the deployment's audit chain in the cluster from this replica's file")
            }
            Err(Sent::Conflict) => {}
            Err(e) => return Err(format!("cannot create {}: {e:?}", self.name)),
        }
        self.read(deadline)
            .await?
            .ok_or_else(|| format!("{} is gone right after it was made", self.name))
    }

    /// Every second until `stop`: copies what the cluster's chain holds beyond this
    /// replica's file, and publishes in `lag` how many records the file lacked when it
    /// looked.
    pub fn spawn_replicator(
        self: Arc<Self>,
        log: Arc<std::sync::Mutex<AuditLog>>,
        lag: prometheus_client::metrics::gauge::Gauge,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        tokio::spawn(async move {
            let mut complained = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                match self.catch_up(&log, Some(&lag)).await {
                    Ok(_) => complained = false,
                    Err(e) if !complained => {
                        complained = true;
                        warn!(error = %e, "cannot copy the cluster's audit chain yet; retried every second");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// One round of [`ClusterChain::spawn_replicator`]: copies what the file lacks and returns
    /// how many records it lacked when the round looked (0 when it was at the head). `lag`,
    /// when given, is set to that number before the copy (so a copy that fails leaves it
    /// showing the lag).
    pub async fn catch_up(
        &self,
        log: &Arc<std::sync::Mutex<AuditLog>>,
        lag: Option<&prometheus_client::metrics::gauge::Gauge>,
    ) -> Result<u64, String> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let Some(read) = self.read(deadline).await? else {
            return Ok(0);
        };
        // Never lock the log on an async thread: an append holds it while it waits for the
        // API server, whose answers those threads deliver.
        let held = log.clone();
        let tip = tokio::task::spawn_blocking(move || {
            held.lock()
                .map(|l| l.tip().0)
                .map_err(|_| "audit log lock poisoned".to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let behind = read.open.head.seq.saturating_sub(tip);
        if let Some(g) = lag {
            g.set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
        if behind == 0 {
            return Ok(0);
        }
        let lines = self.lines_after(&read.open, tip, deadline).await?;
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = log
                .lock()
                .map_err(|_| "audit log lock poisoned".to_string())?;
            log.copy_lines(&lines).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(behind)
    }

    /// The whole cluster copy, checked as one chain, and compared with the file at `path`:
    /// `Ok` describes both; errors name what differs.
    pub async fn verify_against(&self, path: &Path) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let read = self.read(deadline).await?.ok_or_else(|| {
            format!(
                "no audit chain in the cluster ({} does not exist)",
                self.name
            )
        })?;
        let mut segments = Vec::new();
        for s in &read.open.head.segments {
            segments.push((s.clone(), self.read_segment(s, deadline).await?));
        }
        let tip = head::verify_copy(&read.open, &segments)
            .map_err(|e| format!("the cluster's copy is broken: {e}"))?;
        let mine = local_lines(path)?;
        let first_held = read.open.head.pruned.as_ref().map_or(1, |p| p.seq + 1);
        let theirs: Vec<&Vec<u8>> = segments
            .iter()
            .flat_map(|(_, l)| l.iter())
            .chain(read.open.lines.iter())
            .collect();
        for (i, line) in mine.iter().enumerate() {
            let seq = i as u64 + 1;
            if seq < first_held {
                continue;
            }
            match theirs.get(usize::try_from(seq - first_held).unwrap_or(usize::MAX)) {
                Some(t) if *t == line => {}
                Some(_) => {
                    return Err(format!(
                        "{}: record {seq} differs from the cluster's copy (a fork or an edit)",
                        path.display()
                    ));
                }
                None => {
                    return Err(format!(
                        "{}: holds records up to {} but the cluster's chain ends at {} (the cluster lost records)",
                        path.display(),
                        mine.len(),
                        tip.seq
                    ));
                }
            }
        }
        Ok(format!(
            "the cluster holds records {first_held}..{} (head {}), whole; {} holds 1..{}, a prefix of it",
            tip.seq,
            tip.hash,
            path.display(),
            mine.len()
        ))
    }
}

impl ChainStore for ClusterChain {
    fn place(&self, tip: (u64, &str), entry: &Entry) -> Result<Placed, String> {
        let placed = self.handle.block_on(self.place_async(tip, entry));
        if let Err(e) = &placed
            && e.starts_with(DEPOSED)
        {
            // A deposed leader must not go on recording, nor keep any belief about routing:
            // exit as a lost lease does, and restart clean as a standby.
            error!("{e}; exiting so the replica restarts as a standby");
            std::process::exit(3);
        }
        placed
    }
}

/// How a refused append of a deposed leader begins (see [`ClusterChain::place_async`]).
pub const DEPOSED: &str = "deposed";

fn record_seq(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Record>(line).ok().map(|r| r.seq)
}

fn record_prev(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<Record>(line).ok().map(|r| r.prev)
}

/// Every whole line of a local log (a torn tail is left out).
fn local_lines(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok(bytes
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| l[..l.len() - 1].to_vec())
        .collect())
}

/// The mark of record `seq` in a local log (seq 0: the start).
fn local_mark(path: &Path, seq: u64) -> Result<Mark, String> {
    if seq == 0 {
        return Ok(Mark {
            seq: 0,
            hash: crate::audit::GENESIS.to_string(),
        });
    }
    let lines = local_lines(path)?;
    let line = lines
        .get(usize::try_from(seq - 1).unwrap_or(usize::MAX))
        .ok_or_else(|| format!("{}: no record {seq}", path.display()))?;
    Ok(Mark {
        seq,
        hash: hash_line(line),
    })
}
