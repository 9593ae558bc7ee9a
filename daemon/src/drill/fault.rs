//! A fault drill (`spec.inject`): break the primary through Istio itself and let failoverd
//! find out the way it would in an incident.
//!
//! Steady state first (every signal healthy, the failover target healthy, no drill fault
//! already in the VirtualService; the error budget was read before the run started),
//! otherwise `skipped` with nothing written → the fault written through the controller's
//! single writer (audited, read back) → the playbook's HTTP probes of the primary send
//! `x-failoverd-drill: <run id>` → detection and failover by the engine, unforced → hold →
//! the fault removed (always first, on every way out) → the primary seen healthy → failback
//! → steady state after (else `failed`). The in-flight record names the fault, so a
//! restarted failoverd removes it; a drill fault found with no drill in flight is removed as
//! drift (see [`Drills::sweep_faults`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tracing::{info, warn};

use crate::engine::{self, Actor, Health, Observation, Routing};
use crate::overrides::OverrideKind;
use crate::playbook::{Playbook, Target};
use crate::routing::fault::FaultEdit;
use crate::shared::{ControlKind, FaultRequest};
use failoverd_core::drill::inject::{Inject, Scope};

use super::fault_report::{FaultLeg, Interval, between};
use super::report::{Run, Verdict};
use super::spec::LoadedDrill;
use super::{Drills, WATCH_EVERY};

/// How often the detection is watched: well under any probe interval, so the moments read
/// from the results are caught as they happen (it reads shared memory only).
const POLL: Duration = Duration::from_millis(20);
/// How long removing a fault is retried (a busy store, a conflict) before the run gives up
/// and leaves it to the sweep.
const REMOVE_RETRY: Duration = Duration::from_secs(30);
/// Extra time allowed on top of the detection and failover budgets before a drill whose
/// failover never came fails (and removes its fault).
const MARGIN: Duration = Duration::from_secs(5);
/// How often a drill fault left with no drill in flight is looked for.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Plan mode of a fault drill: the fault a live run would write, in the report (nothing is
/// written; `failoverd plan DIR --drill NAME` shows the whole VirtualService).
pub(super) fn plan_fault(run: &mut Run, i: usize, inject: &Inject) {
    let name = run.playbooks[i].playbook.clone();
    let scope = format!("{:?}", inject.scope.value).to_lowercase();
    let what = match inject.scope.value {
        Scope::Probes => format!(
            "a live run would write route failoverd-drill-<run id> first in http[], matched on header {}: <run id>, with fault {} (nothing written)",
            failoverd_core::drill::inject::DRILL_HEADER,
            inject.fault()
        ),
        Scope::All => format!(
            "a live run would set fault {} on the guarded route itself (nothing written)",
            inject.fault()
        ),
    };
    run.step(Some(&name), "fault-planned", what);
    run.playbooks[i].fault = Some(FaultLeg {
        fault: inject.fault(),
        scope,
        ..FaultLeg::default()
    });
}

/// The detection budget of a playbook: the longest interval of its probes of the primary
/// and its trigger (`interval × failureThreshold + for`).
fn detection_budget(pb: &Playbook) -> (Duration, Duration) {
    let interval = pb
        .spec
        .probes
        .iter()
        .filter(|p| p.target.value == Target::Primary)
        .map(|p| p.interval.get())
        .max()
        .unwrap_or(Duration::from_secs(1));
    let threshold = pb.spec.trigger.failure_threshold.value.max(1);
    (interval, interval * threshold + pb.spec.trigger.for_.get())
}

/// The longest timeout of the playbook's probes of the primary: the first failing result
/// comes at most one interval and one timeout after the fault.
fn first_probe_timeout(pb: &Playbook) -> Duration {
    pb.spec
        .probes
        .iter()
        .filter(|p| p.target.value == Target::Primary)
        .map(|p| p.timeout.value.get())
        .max()
        .unwrap_or_default()
}

fn primary_signals(obs: &[Observation]) -> impl Iterator<Item = &Observation> {
    obs.iter().filter(|o| o.target == Target::Primary)
}

impl Drills {
    fn signals(&self, idx: usize) -> (Vec<Observation>, Option<Routing>) {
        self.shared
            .snapshot()
            .into_iter()
            .nth(idx)
            .map(|s| (s.signals, s.routing))
            .unwrap_or_default()
    }

    /// Why the playbook is not in a steady state for a fault drill (None: it is).
    async fn steady(&self, pb: &Playbook, idx: usize, inject: &Inject) -> Option<String> {
        let name = pb.name();
        let (obs, _) = self.signals(idx);
        if obs.is_empty() {
            return Some(format!("{name}: no signal has reported yet"));
        }
        if let Some(o) = obs.iter().find(|o| o.health != Health::Healthy) {
            return Some(format!(
                "{name}: signal `{}` of {} is not healthy ({:?}): a fault drill starts from a steady state",
                o.signal, o.target, o.health
            ));
        }
        let now = Timestamp::now();
        let targets = pb.spec.failover.value.len();
        if !(0..targets).any(|t| engine::verdict(pb, &obs, Target::Failover(t), now).is_healthy()) {
            return Some(format!(
                "{name}: no failover target is known healthy: the drill would have nowhere to fail over to"
            ));
        }
        match self.store.faults(pb).await {
            Ok(f) if f.is_empty() => {}
            Ok(f) => {
                return Some(format!(
                    "{name}: the VirtualService already holds a drill fault (run {})",
                    f.join(", ")
                ));
            }
            Err(e) => return Some(format!("{name}: cannot write a drill fault: {e}")),
        }
        if inject.scope.value == Scope::Probes {
            let marked = self
                .shared
                .drill_probes
                .primary
                .read()
                .map(|m| m.get(name).map_or(0, Vec::len))
                .unwrap_or(0);
            if marked == 0 {
                return Some(format!(
                    "{name}: no HTTP probe of the primary to carry the drill header (scope: probes)"
                ));
            }
        }
        None
    }

    /// Removes every drill fault from the playbook's VirtualService through the writer,
    /// retrying for a while; the probes stop sending the header once it is gone.
    pub(super) async fn remove_fault(&self, name: &str, actor: &Actor) -> Result<bool, String> {
        let deadline = Instant::now() + REMOVE_RETRY;
        // One warning per removal, not one per attempt: a full audit disk refuses every
        // attempt, and its episode is announced once already.
        let mut warned = false;
        loop {
            let res = self
                .call(
                    Some(name),
                    ControlKind::DrillFault {
                        edit: FaultRequest(FaultEdit::Remove),
                    },
                    actor,
                )
                .await;
            match res {
                Ok(reply) => {
                    self.shared.drill_probes.unmark(name);
                    return Ok(reply.written);
                }
                Err(e) if Instant::now() >= deadline => {
                    self.shared.drill_probes.unmark(name);
                    return Err(format!("the fault could not be removed: {}", e.error));
                }
                Err(e) => {
                    if !warned {
                        warn!(playbook = %name, error = %e.error, retry_for = ?REMOVE_RETRY, "drill fault not removed yet; retrying every 250 ms");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Fault mode: see the module doc.
    pub(super) async fn run_fault(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run) {
        let Some(inject) = def.drill.spec.inject.as_ref().map(|i| i.value.clone()) else {
            return self.run_live(def, run).await;
        };
        let spec = &def.drill.spec;
        // Steady state before: anything amiss and the run is skipped with nothing written.
        let mut legs = Vec::new();
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            let Some((idx, pb)) = self.playbook(&name) else {
                run.reasons.push(format!("playbook `{name}` is not loaded"));
                continue;
            };
            if let Some(why) = self.steady(&pb, idx, &inject).await {
                run.reasons.push(why);
                continue;
            }
            match self.store.read(&pb).await {
                Ok(v) => run.playbooks[i].original_route = v.route,
                Err(e) => run
                    .reasons
                    .push(format!("{name}: cannot read the route: {e}")),
            }
            legs.push((i, idx, pb));
        }
        if !run.reasons.is_empty() {
            run.step(None, "skipped", run.reasons.join("; "));
            return self.finish_audited(run, Verdict::Skipped).await;
        }
        run.step(
            None,
            "steady-state",
            "every signal healthy, a failover target healthy, no drill fault in place",
        );
        let actor = Self::actor(run, "fault");
        let mut abort: Option<String> = None;
        // The fault, leg by leg: recorded as written before the call, so a crash from here on
        // is cleaned up at start.
        for (i, _, _) in &legs {
            let name = run.playbooks[*i].playbook.clone();
            run.playbooks[*i].fault = Some(FaultLeg {
                fault: inject.fault(),
                scope: format!("{:?}", inject.scope.value).to_lowercase(),
                written: true,
                ..FaultLeg::default()
            });
            self.persist_in_flight(run);
            let res = self
                .call(
                    Some(&name),
                    ControlKind::DrillFault {
                        edit: FaultRequest(FaultEdit::Add {
                            run: run.id.clone(),
                            inject: Box::new(inject.clone()),
                        }),
                    },
                    &actor,
                )
                .await;
            match res {
                Ok(reply) => {
                    let at = Timestamp::now();
                    if inject.scope.value == Scope::Probes {
                        self.shared.drill_probes.mark(&name, &run.id);
                    }
                    if let Some(f) = run.playbooks[*i].fault.as_mut() {
                        f.fault_written = Some(at);
                    }
                    run.step(Some(&name), "fault-written", reply.message);
                }
                Err(e) => {
                    run.step(Some(&name), "fault-refused", e.error.clone());
                    abort = Some(format!(
                        "{name}: the fault was not written ({}): {}",
                        e.status, e.error
                    ));
                    break;
                }
            }
            self.persist_in_flight(run);
        }
        if abort.is_none() {
            abort = self.detect(def, run, &legs, &inject).await;
        }
        // `scope: all`: the fault is on the guarded route itself, which now points at the
        // failover target: it comes out before the hold, or the target's traffic is harmed.
        if inject.scope.value == Scope::All && !*self.shutdown.borrow() {
            for (i, idx, pb) in &legs {
                if run.playbooks[*i].fault.as_ref().is_some_and(|f| f.written) {
                    self.take_out(run, *i, *idx, pb, &actor).await;
                }
            }
        }
        if abort.is_none() && !*self.shutdown.borrow() {
            abort = self.hold_fault(def, run, &legs).await;
        }
        if *self.shutdown.borrow() {
            run.step(None, "interrupted", "failoverd is shutting down; the fault is removed and the drill rolled back when it starts again");
            // The in-flight record stays: the next start removes the fault and fails back.
            return;
        }
        if let Some(why) = &abort {
            run.step(None, "aborted", why.clone());
        }
        // The fault out first, whatever happened; then the failback.
        for (i, idx, pb) in &legs {
            if run.playbooks[*i].fault.as_ref().is_some_and(|f| f.written) {
                self.take_out(run, *i, *idx, pb, &actor).await;
            }
        }
        let moved: Vec<usize> = legs
            .iter()
            .map(|(i, _, _)| *i)
            .filter(|i| run.playbooks[*i].moved)
            .collect();
        if !moved.is_empty() {
            self.restore_all(def, run, abort.is_some()).await;
        }
        for (i, idx, pb) in &legs {
            if (run.playbooks[*i].restored || !run.playbooks[*i].moved)
                && let Some(f) = run.playbooks[*i].fault.as_mut()
            {
                f.failback_complete = Some(Timestamp::now());
            }
            self.judge(spec, run, *i, pb);
            if abort.is_none()
                && let Some(why) = self.steady_after(run, *i, *idx, pb).await
            {
                run.reasons.push(why);
            }
        }
        let result = if let Some(why) = abort {
            run.reasons.insert(0, why);
            Verdict::Aborted
        } else if run.reasons.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        self.finish_audited(run, result).await;
    }

    /// Removes leg `i`'s fault and records the outcome in the run: `fault-removed` (with
    /// `done`) and the leg's fault marked removed, or `fault-not-removed` and a reason.
    async fn remove_leg_fault(&self, run: &mut Run, i: usize, actor: &Actor, done: &str) {
        let name = run.playbooks[i].playbook.clone();
        match self.remove_fault(&name, actor).await {
            Ok(_) => {
                if let Some(f) = run.playbooks[i].fault.as_mut() {
                    f.written = false;
                    f.fault_removed = Some(Timestamp::now());
                }
                run.step(Some(&name), "fault-removed", done);
            }
            Err(e) => {
                run.step(Some(&name), "fault-not-removed", e.clone());
                run.reasons.push(format!("{name}: {e}"));
            }
        }
    }

    /// Removes leg `i`'s fault (recorded in the report and the in-flight record), then waits
    /// for the primary to be seen healthy again.
    async fn take_out(&self, run: &mut Run, i: usize, idx: usize, pb: &Playbook, actor: &Actor) {
        self.remove_leg_fault(run, i, actor, "every drill fault removed and read back")
            .await;
        self.persist_in_flight(run);
        self.await_primary_healthy(run, i, idx, pb).await;
    }

    /// Waits for the engine to see the fault and fail over: the first failing result, the
    /// result that met the threshold, the failover written. None when it came; the reason
    /// to stop otherwise.
    async fn detect(
        &self,
        def: &LoadedDrill,
        run: &mut Run,
        legs: &[(usize, usize, Arc<Playbook>)],
        inject: &Inject,
    ) -> Option<String> {
        let within = def.drill.spec.success.failover_within.value.get();
        let longest = legs
            .iter()
            .map(|(_, _, pb)| detection_budget(pb).1)
            .max()
            .unwrap_or_default();
        let delay = inject
            .delay
            .as_ref()
            .map_or(Duration::ZERO, |d| d.value.fixed_delay.get());
        let deadline = Instant::now() + longest * 2 + within + delay + MARGIN;
        let identity = format!("drill:{}", run.drill);
        loop {
            let mut pending = false;
            for (i, idx, pb) in legs {
                let name = run.playbooks[*i].playbook.clone();
                let (obs, routing) = self.signals(*idx);
                let threshold = pb.spec.trigger.failure_threshold.value.max(1);
                let Some(f) = run.playbooks[*i].fault.as_mut() else {
                    continue;
                };
                let since = f.fault_written.unwrap_or(run.started);
                for o in primary_signals(&obs) {
                    if matches!(o.health, Health::Unhealthy(_)) && o.streak_since >= since {
                        if f.first_failing.is_none_or(|t| o.streak_since < t) {
                            f.first_failing = Some(o.streak_since);
                        }
                        if o.streak >= threshold && f.detected.is_none() {
                            f.detected = Some(if o.streak == threshold {
                                o.at
                            } else {
                                // Seen late: the threshold was met that many results before.
                                let (interval, _) = detection_budget(pb);
                                o.streak_since
                                    .checked_add(interval * (threshold - 1))
                                    .unwrap_or(o.at)
                            });
                        }
                    }
                }
                if let Some(Routing::Failover { target }) = routing
                    && f.failover_written.is_none()
                {
                    let written = self.shared.snapshot().into_iter().nth(*idx).and_then(|s| {
                        s.transitions
                            .iter()
                            .rev()
                            .find(|t| t.to != Routing::Primary)
                            .map(|t| t.time)
                    });
                    f.failover_written = Some(written.unwrap_or_else(Timestamp::now));
                    run.playbooks[*i].moved = true;
                    run.playbooks[*i].target = Some(Target::Failover(target).to_string());
                    run.step(
                        Some(&name),
                        "failover-written",
                        format!("the engine failed over to failover[{target}] on its own signals"),
                    );
                    self.persist_in_flight(run);
                }
                if run.playbooks[*i]
                    .fault
                    .as_ref()
                    .is_some_and(|f| f.failover_written.is_none())
                {
                    pending = true;
                }
                // A person acting on the playbook ends the drill: the route is theirs.
                if let Some(r) = self
                    .overrides_of(&name)
                    .into_iter()
                    .find(|r| r.actor != identity)
                {
                    let what = if r.kind == OverrideKind::Freeze {
                        "froze"
                    } else {
                        "placed a failover hold on"
                    };
                    return Some(format!(
                        "{name}: {} {what} the playbook during the drill ({})",
                        r.actor, r.reason
                    ));
                }
            }
            if !pending {
                return None;
            }
            if *self.shutdown.borrow() {
                return None;
            }
            if Instant::now() >= deadline {
                run.reasons.push(format!(
                    "the fault was not detected and failed over within {:.1} s",
                    (longest * 2 + within + delay + MARGIN).as_secs_f64()
                ));
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The hold on the failover target, with the fault in place (for `scope: all` it comes
    /// out first: on the guarded route it would harm the target's traffic too).
    async fn hold_fault(
        &self,
        def: &LoadedDrill,
        run: &mut Run,
        legs: &[(usize, usize, Arc<Playbook>)],
    ) -> Option<String> {
        if !run.reasons.is_empty() {
            return None;
        }
        let hold = def.drill.spec.hold.value.get();
        let budget = def
            .drill
            .spec
            .abort
            .error_budget
            .as_ref()
            .map(|eb| self.watch_budget(eb.clone()));
        let began = Instant::now();
        let identity = format!("drill:{}", run.drill);
        let mut why = None;
        'hold: while began.elapsed() < hold {
            if let Some((rx, _)) = &budget
                && let Some(Err(e)) = &*rx.borrow()
            {
                why = Some(format!("{e} during the hold"));
                break;
            }
            if *self.shutdown.borrow() {
                break;
            }
            for (i, idx, pb) in legs {
                let name = run.playbooks[*i].playbook.clone();
                if let Some(r) = self
                    .overrides_of(&name)
                    .into_iter()
                    .find(|r| r.actor != identity)
                {
                    why = Some(format!(
                        "{name}: {} acted on the playbook during the drill ({:?}: {})",
                        r.actor, r.kind, r.reason
                    ));
                    break 'hold;
                }
                let (obs, routing) = self.signals(*idx);
                if let Some(Routing::Failover { target }) = routing {
                    let v = engine::verdict(pb, &obs, Target::Failover(target), Timestamp::now());
                    if matches!(v, engine::Verdict::Unhealthy { .. }) {
                        let w = format!(
                            "{name}: failover target failover[{target}] turned unhealthy during the hold ({})",
                            engine::describe(&v)
                        );
                        if def.drill.spec.abort.target_unhealthy {
                            why = Some(w);
                            break 'hold;
                        }
                        if def.drill.spec.success.target_healthy_during_hold
                            && !run.reasons.contains(&w)
                        {
                            run.reasons.push(w);
                        }
                    }
                }
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
        if let Some((_, task)) = budget {
            task.abort();
        }
        let held = began.elapsed().as_secs_f64();
        for (i, _, _) in legs {
            run.playbooks[*i].held_seconds = Some(held);
        }
        if why.is_none() {
            run.step(
                None,
                "held",
                format!("held {held:.3} s on the failover targets"),
            );
        }
        why
    }

    /// After the removal: waits (bounded) for the first healthy result of every signal of
    /// the primary, the end of the error window the drill's traffic saw.
    async fn await_primary_healthy(&self, run: &mut Run, i: usize, idx: usize, pb: &Playbook) {
        let (_, budget) = detection_budget(pb);
        let deadline = Instant::now() + budget * 2 + MARGIN;
        let Some(removed) = run.playbooks[i]
            .fault
            .as_ref()
            .and_then(|f| f.fault_removed)
        else {
            return;
        };
        while Instant::now() < deadline {
            let (obs, _) = self.signals(idx);
            let mut prim = primary_signals(&obs).peekable();
            if prim.peek().is_some() && prim.all(|o| o.health == Health::Healthy && o.at >= removed)
            {
                let first = primary_signals(&obs).map(|o| o.streak_since).max();
                if let Some(f) = run.playbooks[i].fault.as_mut() {
                    f.first_healthy = first;
                    f.error_window_seconds = between(f.first_failing, first);
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The intervals against their budgets; an interval over budget fails the run.
    fn judge(
        &self,
        spec: &failoverd_core::drill::spec::DrillSpec,
        run: &mut Run,
        i: usize,
        pb: &Playbook,
    ) {
        let name = run.playbooks[i].playbook.clone();
        let Some(f) = run.playbooks[i].fault.as_mut() else {
            return;
        };
        let (interval, detect) = detection_budget(pb);
        let within = spec.success.failover_within.value.get();
        let mut out = Vec::new();
        let mut push = |n: &str, s: Option<f64>, budget: Option<(Duration, &str)>| {
            if let Some(seconds) = s {
                out.push(Interval {
                    name: n.into(),
                    seconds,
                    budget_seconds: budget.map(|b| b.0.as_secs_f64()),
                    budget: budget.map(|b| b.1.to_string()),
                });
            }
        };
        push(
            "fault-written → first failing signal",
            between(f.fault_written, f.first_failing),
            Some((
                interval + first_probe_timeout(pb),
                "one probe interval + the probe's timeout",
            )),
        );
        push(
            "fault-written → detected",
            between(f.fault_written, f.detected),
            Some((
                detect + interval,
                "interval × failureThreshold + for, + 1 interval for the first probe",
            )),
        );
        push(
            "first failing → detected",
            between(f.first_failing, f.detected),
            Some((detect, "interval × failureThreshold + for")),
        );
        push(
            "detected → failover written",
            between(f.detected, f.failover_written),
            Some((within, "success.failoverWithin")),
        );
        push(
            "failover written → fault removed",
            between(f.failover_written, f.fault_removed),
            None,
        );
        push(
            "fault removed → failback complete",
            between(f.fault_removed, f.failback_complete),
            None,
        );
        for iv in &out {
            if !iv.within() {
                run.reasons.push(format!(
                    "{name}: {} took {:.3} s, over {:.3} s ({})",
                    iv.name,
                    iv.seconds,
                    iv.budget_seconds.unwrap_or_default(),
                    iv.budget.as_deref().unwrap_or("")
                ));
            }
        }
        f.intervals = out;
    }

    /// Steady state after: no drill fault left, every signal healthy again (waited for,
    /// bounded), the original route in place.
    async fn steady_after(&self, run: &Run, i: usize, idx: usize, pb: &Playbook) -> Option<String> {
        let name = pb.name();
        if !run.playbooks[i].restored && run.playbooks[i].moved {
            return Some(format!("{name}: not back on the original route"));
        }
        match self.store.faults(pb).await {
            Ok(f) if f.is_empty() => {}
            Ok(f) => {
                return Some(format!(
                    "{name}: a drill fault is still in the VirtualService ({})",
                    f.join(", ")
                ));
            }
            Err(e) => return Some(format!("{name}: cannot read the VirtualService back: {e}")),
        }
        let (_, budget) = detection_budget(pb);
        let deadline = Instant::now() + budget * 2 + MARGIN;
        loop {
            let (obs, routing) = self.signals(idx);
            let bad = obs.iter().find(|o| o.health != Health::Healthy);
            match (bad, routing) {
                (None, Some(Routing::Primary)) => return None,
                _ if Instant::now() < deadline => tokio::time::sleep(POLL * 5).await,
                (Some(o), _) => {
                    return Some(format!(
                        "{name}: steady state not back after the drill: signal `{}` is {:?}",
                        o.signal, o.health
                    ));
                }
                (None, r) => return Some(format!("{name}: steady state not back: routing {r:?}")),
            }
        }
    }

    /// A run found in flight at start: its faults come out first (before any failback).
    pub(super) async fn recover_faults(&self, run: &mut Run) {
        let actor = Self::actor(run, "fault removal after a restart");
        for i in 0..run.playbooks.len() {
            if !run.playbooks[i].fault.as_ref().is_some_and(|f| f.written) {
                continue;
            }
            self.remove_leg_fault(
                run,
                i,
                &actor,
                "the drill fault left by the restart was removed",
            )
            .await;
        }
    }

    /// Removes drill faults with no drill in flight: left by a crash, a leader that died
    /// mid-drill, or a hand edit. Only the playbooks of fault drills are looked at; the
    /// removal goes through the writer and is audited (`drill-fault-removed`).
    pub(super) async fn sweep_faults(self: Arc<Self>) {
        let mut names: Vec<String> = self
            .defs
            .iter()
            .filter(|d| d.drill.spec.inject.is_some())
            .flat_map(|d| d.playbooks())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return;
        }
        let actor = Actor {
            identity: "failoverd".into(),
            reason: "drift: a drill fault with no drill in flight".into(),
        };
        let mut stop = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            if !self.shared.leader.is_leader() {
                continue;
            }
            for name in &names {
                let busy = self
                    .busy
                    .lock()
                    .map(|b| b.contains_key(name))
                    .unwrap_or(true);
                let Some((_, pb)) = self.playbook(name) else {
                    continue;
                };
                if busy {
                    continue;
                }
                // Looked at again just before the removal: a run that started meanwhile owns
                // the fault it writes.
                let started = || {
                    self.busy
                        .lock()
                        .map(|b| b.contains_key(name))
                        .unwrap_or(true)
                };
                if let Ok(found) = self.store.faults(&pb).await
                    && !found.is_empty()
                    && !started()
                {
                    warn!(playbook = %name, runs = %found.join(","), "drill fault with no drill in flight: removing it");
                    match self.remove_fault(name, &actor).await {
                        Ok(_) => info!(playbook = %name, "leftover drill fault removed"),
                        Err(e) => {
                            warn!(playbook = %name, error = %e, "leftover drill fault not removed")
                        }
                    }
                }
            }
        }
    }
}
