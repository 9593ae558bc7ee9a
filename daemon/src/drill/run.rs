//! One drill run: the plan run (dry), the calls through the controller, the audit of each
//! step, the error budget watched, and the schedule that starts runs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use failoverd_core::drill::window;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::audit::Entry;
use crate::engine::{Actor, Routing};
use crate::metrics::labels;
use crate::overrides::{OverrideKind, OverrideRecord};
use crate::playbook::{Playbook, Target};
use crate::shared::{Control, ControlError, ControlKind, ControlReply};
use crate::{engine, routing};

use super::report::{Run, Verdict};
use super::spec::LoadedDrill;
use super::{ACTOR_PREFIX, CALL_TIMEOUT, Drills, Trigger, budget, spec};

impl Drills {
    pub(super) async fn audit_run(&self, run: &Run, action: &str, outcome: &str) {
        for leg in &run.playbooks {
            let entry = Entry {
                actor: format!("drill:{}", run.drill),
                action: action.into(),
                playbook: leg.playbook.clone(),
                reason: format!(
                    "{} drill run {} ({} by {}: {})",
                    run.mode, run.id, run.trigger, run.requested_by, run.reason
                ),
                inputs: json!({ "run": run.id, "reasons": run.reasons, "leg": leg }),
                outcome: outcome.to_string(),
                // The run's trace (tracing on), as the records of the moves it makes.
                traceparent: crate::trace::traceparent(&tracing::Span::current()),
                ..Entry::default()
            };
            let log = self.audit.clone();
            let res = tokio::task::spawn_blocking(move || {
                log.lock()
                    .map_err(|_| "audit log lock poisoned".to_string())
                    // A run's start and end are facts once they happened: kept (in memory,
                    // in order) and written first once the log takes appends again, rather
                    // than leaving a chain with a drill that never started or never ended.
                    .and_then(|mut l| l.append_owed(entry).map(|_| ()).map_err(|e| e.to_string()))
            })
            .await;
            if !matches!(res, Ok(Ok(()))) {
                self.shared.metrics.audit_errors.inc();
                error!(drill = %run.drill, action, "audit append for a drill failed; the record is kept and written first once the log takes appends");
            }
        }
    }

    /// Records the verdict: metrics, report, audit, and frees the playbooks.
    pub(super) fn finish(self: &Arc<Self>, run: &mut Run, result: Verdict) {
        run.result = result;
        run.finished = Some(Timestamp::now());
        run.step(
            None,
            "finished",
            format!(
                "{}{}",
                result.as_str(),
                if run.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", run.reasons.join("; "))
                }
            ),
        );
        let m = &self.shared.metrics;
        m.drill_runs
            .get_or_create(&labels([
                ("drill", &run.drill),
                ("result", result.as_str()),
            ]))
            .inc();
        for leg in &run.playbooks {
            if let Some(s) = leg.failover_seconds {
                m.drill_failover_seconds
                    .get_or_create(&labels([("drill", &run.drill)]))
                    .observe(s);
            }
        }
        self.save(run);
        if let Ok(runs) = self.runs.lock()
            && let Err(e) = runs.clear_in_flight(&run.id)
        {
            error!(run = %run.id, error = %e, "cannot remove the in-flight drill record");
        }
        if let Ok(mut busy) = self.busy.lock() {
            busy.retain(|_, id| id != &run.id);
        }
        match result {
            Verdict::Passed => info!(drill = %run.drill, run = %run.id, "drill passed"),
            _ => {
                warn!(drill = %run.drill, run = %run.id, result = result.as_str(), reasons = %run.reasons.join("; "), "drill did not pass")
            }
        }
        for leg in &run.playbooks {
            if let Some(idx) = self.shared.index(&leg.playbook) {
                self.shared.event(
                    idx,
                    crate::notify::EventKind::Drill,
                    None,
                    None,
                    &format!(
                        "{} run {} {}{}",
                        run.drill,
                        run.id,
                        result.as_str().to_uppercase(),
                        if run.reasons.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", run.reasons.join("; "))
                        }
                    ),
                    Value::Null,
                    &format!("{ACTOR_PREFIX}{}", run.drill),
                );
            }
        }
        if result == Verdict::Skipped {
            let svc = self.clone();
            let run = run.clone();
            tokio::spawn(async move { svc.audit_run(&run, "drill-skipped", "skipped").await });
        }
    }

    pub(super) async fn finish_audited(self: &Arc<Self>, run: &mut Run, result: Verdict) {
        self.finish(run, result);
        self.audit_run(run, "drill-end", result.as_str()).await;
    }

    pub(super) fn playbook(&self, name: &str) -> Option<(usize, Arc<Playbook>)> {
        let idx = self.shared.index(name)?;
        Some((idx, self.shared.playbooks.get(idx)?.clone()))
    }

    /// Plan mode: where would the failover go, what would be written; nothing is written.
    pub(super) async fn run_plan(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run) {
        if let Some(eb) = &def.drill.spec.abort.error_budget {
            match budget::check(eb, &self.prometheus, self.default_server.as_deref()).await {
                Ok(detail) => run.step(
                    None,
                    "error-budget",
                    format!("{detail}; a live run would start"),
                ),
                Err(why) => {
                    let why = format!("a live run would be refused: {why}");
                    run.step(None, "error-budget", why.clone());
                    run.reasons.push(why);
                }
            }
        }
        let now = Timestamp::now();
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            let Some((idx, pb)) = self.playbook(&name) else {
                run.reasons.push(format!("playbook `{name}` is not loaded"));
                continue;
            };
            let obs = self
                .shared
                .snapshot()
                .into_iter()
                .nth(idx)
                .map(|s| s.signals)
                .unwrap_or_default();
            let view = match self.store.read(&pb).await {
                Ok(v) => v,
                Err(e) => {
                    run.reasons
                        .push(format!("{name}: cannot read the route: {e}"));
                    continue;
                }
            };
            run.playbooks[i].original_route = view.route.clone();
            if let Some(inject) = &def.drill.spec.inject {
                super::fault::plan_fault(run, i, &inject.value);
            }
            match engine::check_operator_failover(&pb, &obs, None, false, false, now) {
                Ok(t) => {
                    let to = Routing::Failover { target: t };
                    let route = routing::route_for(&pb, to, &view.route);
                    let valid =
                        routing::validate_route(&route, &pb.spec.virtual_service.to_string(), true);
                    run.playbooks[i].target = Some(Target::Failover(t).to_string());
                    run.playbooks[i].failover_route = route;
                    match valid {
                        Ok(()) => run.step(
                            Some(&name),
                            "evaluated",
                            format!(
                                "failover[{t}] is healthy; a failover would write {to} (nothing written)"
                            ),
                        ),
                        Err(e) => {
                            run.step(Some(&name), "evaluated", e.to_string());
                            run.reasons
                                .push(format!("{name}: the failover route is invalid: {e}"));
                        }
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "evaluated", e.clone());
                    run.reasons.push(format!("{name}: {e}"));
                }
            }
        }
        let result = if run.reasons.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        self.finish_audited(run, result).await;
    }

    pub(super) async fn call(
        &self,
        playbook: Option<&str>,
        kind: ControlKind,
        actor: &Actor,
    ) -> Result<ControlReply, ControlError> {
        let (tx, rx) = oneshot::channel();
        let down = || ControlError {
            status: 503,
            error: "failoverd is shutting down".into(),
        };
        self.control
            .send(Control {
                playbook: playbook.map(String::from),
                kind,
                actor: actor.clone(),
                reply: tx,
                traceparent: crate::trace::traceparent(&tracing::Span::current()),
            })
            .await
            .map_err(|_| down())?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(down()),
            Err(_) => Err(ControlError {
                status: 504,
                error: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    pub(super) fn actor(run: &Run, what: &str) -> Actor {
        Actor {
            identity: format!("drill:{}", run.drill),
            reason: format!("drill run {} {what} ({})", run.id, run.reason),
        }
    }

    pub(super) fn overrides_of(&self, playbook: &str) -> Vec<OverrideRecord> {
        self.shared
            .overrides
            .read()
            .map(|o| {
                o.iter()
                    .filter(|r| r.playbook == playbook)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Why the hold must end now (None: hold on). Also notes a target that is unhealthy
    /// when the drill does not abort on it.
    pub(super) fn abort_reason(
        &self,
        def: &LoadedDrill,
        run: &mut Run,
        i: usize,
    ) -> Option<String> {
        let leg = &run.playbooks[i];
        let name = leg.playbook.clone();
        let identity = format!("drill:{}", run.drill);
        let ovs = self.overrides_of(&name);
        if let Some(f) = ovs.iter().find(|r| r.kind == OverrideKind::Freeze) {
            return Some(format!(
                "{name}: frozen by {} during the drill ({})",
                f.actor, f.reason
            ));
        }
        match ovs.iter().find(|r| r.kind == OverrideKind::Failover) {
            Some(h) if h.actor != identity => {
                // An operator took the playbook over: the route is theirs now.
                run.playbooks[i].moved = false;
                return Some(format!(
                    "{name}: {} placed their own failover hold during the drill ({}); routing left to them",
                    h.actor, h.reason
                ));
            }
            None => {
                return Some(format!(
                    "{name}: the drill's failover hold was released by someone else"
                ));
            }
            Some(_) => {}
        }
        let (idx, pb) = self.playbook(&name)?;
        let status = self.shared.snapshot().into_iter().nth(idx)?;
        let now = Timestamp::now();
        let primary = engine::verdict(&pb, &status.signals, Target::Primary, now);
        if matches!(primary, engine::Verdict::Unhealthy { .. }) {
            return Some(format!(
                "{name}: real incident: the primary failed during the drill ({})",
                engine::describe(&primary)
            ));
        }
        if let Some(Routing::Failover { target }) = status.routing {
            let v = engine::verdict(&pb, &status.signals, Target::Failover(target), now);
            if matches!(v, engine::Verdict::Unhealthy { .. }) {
                let why = format!(
                    "{name}: failover target failover[{target}] turned unhealthy during the hold ({})",
                    engine::describe(&v)
                );
                if def.drill.spec.abort.target_unhealthy {
                    return Some(why);
                }
                if def.drill.spec.success.target_healthy_during_hold && !run.reasons.contains(&why)
                {
                    run.reasons.push(why);
                }
            }
        }
        None
    }

    /// Reads `eb` every [`budget::READ_EVERY`] in a task of its own and publishes the last
    /// judgement (None until the first). The caller aborts the task when the hold ends.
    pub(super) fn watch_budget(
        &self,
        eb: spec::ErrorBudget,
    ) -> (
        watch::Receiver<Option<Result<String, String>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(None);
        let client = self.prometheus.clone();
        let default = self.default_server.clone();
        let task = tokio::spawn(async move {
            loop {
                // The budget was read just before the move; the first reading of the hold
                // waits a period.
                tokio::time::sleep(budget::READ_EVERY).await;
                let r = budget::check(&eb, &client, default.as_deref()).await;
                if tx.send(Some(r)).is_err() {
                    return;
                }
            }
        });
        (rx, task)
    }

    /// Arms every scheduled drill with tokio-cron-scheduler.
    ///
    /// Each firing is a one-shot job at the next occurrence computed in the drill's own time
    /// zone (chrono-tz), re-armed after it fires: the crate's own time-zone jobs fix the UTC
    /// offset when the job is created, which would move a drill by an hour at every
    /// daylight-saving change.
    pub(super) async fn schedule(self: Arc<Self>) -> anyhow::Result<()> {
        if self.defs.iter().all(|d| d.schedule.is_none()) {
            return Ok(());
        }
        let mut sched = tokio_cron_scheduler::JobScheduler::new().await?;
        sched.start().await?;
        for i in 0..self.defs.len() {
            self.clone().arm(sched.clone(), i).await;
        }
        info!(
            drills = self.defs.iter().filter(|d| d.schedule.is_some()).count(),
            "drill schedules armed"
        );
        let mut stop = self.shutdown.clone();
        let _ = stop.wait_for(|v| *v).await;
        let _ = sched.shutdown().await;
        Ok(())
    }

    /// Adds a one-shot job for drill `i`'s next occurrence; the job re-arms itself.
    pub(super) fn arm(
        self: Arc<Self>,
        sched: tokio_cron_scheduler::JobScheduler,
        i: usize,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Some(def) = self.defs.get(i) else { return };
            let now = Timestamp::now();
            let Some(next) = window::next_run(def, now) else {
                return;
            };
            let name = def.name().to_string();
            if let Ok(mut n) = self.next.lock() {
                n.insert(name.clone(), next);
            }
            let delay = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
            let svc = self.clone();
            let again = sched.clone();
            let job = tokio_cron_scheduler::Job::new_one_shot_async(delay, move |_, _| {
                let svc = svc.clone();
                let again = again.clone();
                Box::pin(async move {
                    if *svc.shutdown.borrow() {
                        return;
                    }
                    if let Some(d) = svc.defs.get(i) {
                        let name = d.name().to_string();
                        match svc.request(&name, Trigger::Schedule).await {
                            Ok(run) => {
                                info!(drill = %name, run = %run.id, result = run.result.as_str(), "scheduled drill")
                            }
                            Err(e) => {
                                info!(drill = %name, error = %e.error, "scheduled drill not started")
                            }
                        }
                    }
                    svc.arm(again, i).await;
                })
            });
            match job {
                Ok(job) => {
                    if let Err(e) = sched.add(job).await {
                        error!(drill = %name, error = %e, "cannot schedule the drill");
                    }
                }
                Err(e) => error!(drill = %name, error = %e, "cannot schedule the drill"),
            }
        })
    }
}
