//! One drill run's report: verdict, reasons, timeline and measured durations, as JSON (the
//! API and the files under the state directory) and as a Markdown page for people.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::routing::atomic_write;

/// Runs kept per drill, in memory and on disk: enough for a quarter of weekly drills.
pub const KEEP_RUNS: usize = 20;

/// The verdict of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DrillVerdict)]
pub enum Verdict {
    /// Still going.
    Running,
    /// Every success condition held.
    Passed,
    /// It ran to the end but a success condition did not hold (too slow, not restored...).
    Failed,
    /// It stopped early (real incident, freeze, target down, restart) and routing was
    /// restored (or handed to the engine, see the reasons).
    Aborted,
    /// It did not run: outside its windows, a blocked date, or a rule refused it.
    Skipped,
}

impl Verdict {
    /// The lower-case word (metric label, report).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Running => "running",
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Aborted => "aborted",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One moment of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DrillStep)]
pub struct Step {
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Seconds since the run started.
    pub offset_seconds: f64,
    /// The playbook it concerns (None: the whole run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// `started`, `written`, `verified`, `held`, `failed-back`, `restored`, `aborted`, ...
    pub event: String,
    /// What happened.
    pub detail: String,
}

/// What happened to one playbook in a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DrillLeg)]
pub struct Leg {
    /// Playbook name.
    pub playbook: String,
    /// The failover target chosen (`failover[N]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `http[i].route` before the drill, as read from the store.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub original_route: Value,
    /// The route a failover writes (plan mode: would write).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub failover_route: Value,
    /// The failover hold the drill created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_id: Option<String>,
    /// Operator call to route written and read back, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_seconds: Option<f64>,
    /// Time on the failover target, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<f64>,
    /// Failback call to original route written and read back, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_seconds: Option<f64>,
    /// True once the route read back equals `originalRoute` exactly.
    #[serde(default)]
    pub restored: bool,
    /// True while traffic is (or may be) on the failover target because of this drill.
    #[serde(default)]
    pub moved: bool,
    /// A fault drill's fault and its measured intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<super::fault_report::FaultLeg>,
}

/// One run of a drill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DrillRun)]
pub struct Run {
    /// Unique id (`dr-<unix seconds>-<hex>`, sortable by start).
    pub id: String,
    /// The drill.
    pub drill: String,
    /// `plan` or `live`.
    pub mode: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// Who asked (`failoverd` for the schedule).
    pub requested_by: String,
    /// Why (the operator's reason, or the schedule).
    pub reason: String,
    /// When it started.
    #[schema(value_type = String, format = DateTime)]
    pub started: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished: Option<Timestamp>,
    /// The verdict.
    pub result: Verdict,
    /// Why that verdict (every failed condition, the abort cause, the skip cause).
    pub reasons: Vec<String>,
    /// What happened, in order.
    pub timeline: Vec<Step>,
    /// Per playbook.
    pub playbooks: Vec<Leg>,
}

impl Run {
    /// Adds a step to the timeline.
    pub fn step(&mut self, playbook: Option<&str>, event: &str, detail: impl Into<String>) {
        let at = Timestamp::now();
        let offset = at.duration_since(self.started).as_secs_f64().max(0.0);
        self.timeline.push(Step {
            at,
            offset_seconds: (offset * 1000.0).round() / 1000.0,
            playbook: playbook.map(String::from),
            event: event.into(),
            detail: detail.into(),
        });
    }

    /// The leg for `playbook`.
    pub fn leg(&mut self, playbook: &str) -> Option<&mut Leg> {
        self.playbooks.iter_mut().find(|l| l.playbook == playbook)
    }

    /// The report as a Markdown page.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Drill `{}` — run {}\n", self.drill, self.id);
        let _ = writeln!(s, "**Result: {}**\n", self.result.as_str().to_uppercase());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| Mode | {} |", self.mode);
        let _ = writeln!(
            s,
            "| Trigger | {} by {} |",
            self.trigger,
            cell(&self.requested_by)
        );
        let _ = writeln!(s, "| Reason | {} |", cell(&self.reason));
        let _ = writeln!(s, "| Started | {} |", self.started);
        if let Some(f) = self.finished {
            let _ = writeln!(
                s,
                "| Finished | {f} ({:.3} s) |",
                f.duration_since(self.started).as_secs_f64()
            );
        }
        if !self.reasons.is_empty() {
            let _ = writeln!(s, "\n## Why\n");
            for r in &self.reasons {
                let _ = writeln!(s, "- {r}");
            }
        }
        if !self.playbooks.is_empty() {
            let _ = writeln!(s, "\n## Measured\n");
            let _ = writeln!(
                s,
                "| Playbook | Target | Failover | Held | Failback | Original route restored |\n|---|---|---|---|---|---|"
            );
            let secs = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3} s"));
            for l in &self.playbooks {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    l.playbook,
                    l.target.as_deref().unwrap_or("—"),
                    secs(l.failover_seconds),
                    secs(l.held_seconds),
                    secs(l.failback_seconds),
                    if self.mode == "plan" {
                        "n/a (plan)"
                    } else if l.restored {
                        "yes"
                    } else {
                        "NO"
                    }
                );
            }
        }
        for l in &self.playbooks {
            if let Some(f) = &l.fault {
                s.push_str(&f.markdown(&l.playbook));
            }
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(s, "\n## Timeline\n");
            let _ = writeln!(s, "| +s | Playbook | Event | Detail |\n|---|---|---|---|");
            for t in &self.timeline {
                let _ = writeln!(
                    s,
                    "| {:.3} | {} | {} | {} |",
                    t.offset_seconds,
                    t.playbook.as_deref().unwrap_or("—"),
                    t.event,
                    cell(&t.detail)
                );
            }
        }
        if self.mode == "plan" {
            for l in &self.playbooks {
                let _ = writeln!(
                    s,
                    "\n## Plan for `{}`\n\nRoute now:\n\n```json\n{}\n```\n\nRoute a failover would write:\n\n```json\n{}\n```",
                    l.playbook,
                    serde_json::to_string_pretty(&l.original_route).unwrap_or_default(),
                    serde_json::to_string_pretty(&l.failover_route).unwrap_or_default()
                );
            }
        }
        s
    }
}

/// Keeps a Markdown table cell on one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A fresh run id.
pub fn new_run_id() -> String {
    format!(
        "dr-{}-{:04x}",
        Timestamp::now().as_second(),
        rand::random::<u16>()
    )
}

/// The last runs of every drill, persisted one JSON file per run under
/// `<dir>/<drill>/<id>.json`; the in-flight live run is `<dir>/in-flight.json`.
#[derive(Debug)]
pub struct RunStore {
    dir: PathBuf,
    runs: BTreeMap<String, VecDeque<Run>>,
}

impl RunStore {
    /// Loads what is on disk (unreadable files are skipped with a warning: a report is not
    /// worth refusing to start over).
    pub fn open(dir: &Path) -> Self {
        let mut runs: BTreeMap<String, VecDeque<Run>> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !p.is_dir() || hidden {
                    continue;
                }
                let mut list: Vec<Run> = std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|f| f.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|f| {
                        let r = std::fs::read(f.path())
                            .ok()
                            .and_then(|b| serde_json::from_slice::<Run>(&b).ok());
                        if r.is_none() {
                            tracing::warn!(file = %f.path().display(), "unreadable drill report skipped");
                        }
                        r
                    })
                    .collect();
                list.sort_by_key(|r| r.started);
                for r in list {
                    runs.entry(r.drill.clone()).or_default().push_back(r);
                }
            }
        }
        Self {
            dir: dir.to_path_buf(),
            runs,
        }
    }

    fn in_flight_dir(&self) -> PathBuf {
        self.dir.join(".in-flight")
    }

    /// Saves (or replaces) a run, in memory and on disk, dropping the oldest beyond
    /// [`KEEP_RUNS`].
    pub fn save(&mut self, run: &Run) -> std::io::Result<()> {
        let list = self.runs.entry(run.drill.clone()).or_default();
        match list.iter_mut().find(|r| r.id == run.id) {
            Some(r) => *r = run.clone(),
            None => list.push_back(run.clone()),
        }
        let dir = self.dir.join(&run.drill);
        std::fs::create_dir_all(&dir)?;
        let mut dropped = Vec::new();
        while list.len() > KEEP_RUNS {
            if let Some(old) = list.pop_front() {
                dropped.push(old.id);
            }
        }
        for id in dropped {
            let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
        }
        let bytes = serde_json::to_vec_pretty(run).map_err(std::io::Error::other)?;
        atomic_write(&dir.join(format!("{}.json", run.id)), &bytes)
    }

    /// Records a live run's progress: the in-flight file and the in-memory copy (the run's
    /// own report file is written when it ends).
    pub fn progress(&mut self, run: &Run) -> std::io::Result<()> {
        if let Some(r) = self
            .runs
            .get_mut(&run.drill)
            .and_then(|l| l.iter_mut().find(|r| r.id == run.id))
        {
            *r = run.clone();
        }
        self.write_in_flight(run)
    }

    /// Runs of a drill, newest first.
    pub fn list(&self, drill: &str) -> Vec<Run> {
        self.runs
            .get(drill)
            .map(|l| l.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// One run.
    pub fn get(&self, drill: &str, id: &str) -> Option<Run> {
        self.runs.get(drill)?.iter().find(|r| r.id == id).cloned()
    }

    /// The newest finished run of a drill.
    pub fn last(&self, drill: &str) -> Option<Run> {
        self.runs.get(drill)?.back().cloned()
    }

    /// Writes a live run's in-flight record (atomically: a crash leaves the old one or the
    /// new one), so a restart finds and rolls back a drill it was in the middle of.
    pub fn write_in_flight(&self, run: &Run) -> std::io::Result<()> {
        let dir = self.in_flight_dir();
        std::fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec_pretty(run).map_err(std::io::Error::other)?;
        atomic_write(&dir.join(format!("{}.json", run.id)), &bytes)
    }

    /// Removes a run's in-flight record.
    pub fn clear_in_flight(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.in_flight_dir().join(format!("{id}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// In-flight records left by a previous process.
    pub fn in_flight(&self) -> Vec<Run> {
        std::fs::read_dir(self.in_flight_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| {
                let r = std::fs::read(f.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Run>(&b).ok());
                if r.is_none() {
                    tracing::error!(file = %f.path().display(), "in-flight drill record unreadable; its hold ends with its TTL");
                }
                r
            })
            .collect()
    }
}
