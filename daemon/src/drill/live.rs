//! A live drill: failover for real, hold while the budget allows, restore every playbook
//! exactly, and recovery of a drill a previous process left in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;
use tracing::{error, warn};

use crate::engine::Routing;
use crate::overrides::OverrideKind;
use crate::playbook::Target;
use crate::shared::ControlKind;
use crate::{engine, routing};

use super::report::{Run, Verdict};
use super::spec::LoadedDrill;
use super::{Drills, FAILBACK_RETRY, HOLD_MARGIN, RECOVERY_WAIT, WATCH_EVERY};

impl Drills {
    /// Live mode: failover, verify, hold, failback, verify.
    pub(super) async fn run_live(self: &Arc<Self>, def: &LoadedDrill, run: &mut Run) {
        let spec = &def.drill.spec;
        let hold = spec.hold.value.get();
        let ttl = hold
            + spec.success.failover_within.value.get()
            + spec.success.failback_within.value.get()
            + HOLD_MARGIN;
        // The original routes, before anything moves: what failback must restore exactly.
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            let Some((_, pb)) = self.playbook(&name) else {
                run.reasons.push(format!("playbook `{name}` is not loaded"));
                return self.finish_audited(run, Verdict::Failed).await;
            };
            match self.store.read(&pb).await {
                Ok(v) => run.playbooks[i].original_route = v.route,
                Err(e) => {
                    run.reasons
                        .push(format!("{name}: cannot read the route: {e}"));
                    return self.finish_audited(run, Verdict::Failed).await;
                }
            }
        }
        let mut abort: Option<String> = None;
        for i in 0..run.playbooks.len() {
            let name = run.playbooks[i].playbook.clone();
            // Persisted before the move: a crash from here on is rolled back at start.
            run.playbooks[i].moved = true;
            self.persist_in_flight(run);
            run.step(
                Some(&name),
                "requested",
                format!(
                    "operator failover as drill:{} (first healthy target)",
                    run.drill
                ),
            );
            let started = Instant::now();
            let res = self
                .call(
                    Some(&name),
                    ControlKind::Failover {
                        target: None,
                        force: false,
                        ttl,
                        break_glass: None,
                    },
                    &Self::actor(run, "failover"),
                )
                .await;
            match res {
                Ok(reply) => {
                    // The answer comes when the write completes; a write already in flight
                    // defers the hold to right after it, so wait for the route to move.
                    let to = match reply.routing {
                        Some(r @ Routing::Failover { .. }) if reply.written => r,
                        _ => {
                            self.wait_routing(&name, true, spec.success.failover_within.value.get())
                                .await
                        }
                    };
                    run.playbooks[i].override_id = reply.override_id.clone();
                    if let Routing::Failover { target } = to {
                        run.playbooks[i].target = Some(Target::Failover(target).to_string());
                    }
                    run.step(
                        Some(&name),
                        "written",
                        format!(
                            "{} ({})",
                            reply.message,
                            if reply.written {
                                "written"
                            } else {
                                "not written"
                            }
                        ),
                    );
                    self.persist_in_flight(run);
                    let verified = if to == Routing::Primary {
                        Err("the failover was accepted but the route never moved".to_string())
                    } else {
                        self.verify(&name, to, &run.playbooks[i].original_route)
                            .await
                    };
                    match verified {
                        Ok(route) => {
                            let secs = started.elapsed().as_secs_f64();
                            run.playbooks[i].failover_route = route;
                            run.playbooks[i].failover_seconds = Some(secs);
                            run.step(
                                Some(&name),
                                "verified",
                                format!(
                                    "read back {to} from the store, {secs:.3} s after the call"
                                ),
                            );
                            let within = spec.success.failover_within.value;
                            if secs > within.get().as_secs_f64() {
                                run.reasons.push(format!("{name}: failover took {secs:.3} s, over failoverWithin {within}"));
                            }
                        }
                        Err(e) => {
                            run.step(Some(&name), "verify-failed", e.clone());
                            run.reasons.push(format!("{name}: {e}"));
                        }
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "failover-refused", e.error.clone());
                    run.reasons.push(format!(
                        "{name}: failover failed ({}): {}",
                        e.status, e.error
                    ));
                }
            }
            self.persist_in_flight(run);
            if !run.reasons.is_empty() {
                break;
            }
        }
        if run.reasons.is_empty() {
            // The hold: watch for a reason to stop. The error budget is read off this loop,
            // every few seconds, so a slow Prometheus never delays the other checks.
            let budget = spec
                .abort
                .error_budget
                .as_ref()
                .map(|eb| self.watch_budget(eb.clone()));
            let began = Instant::now();
            let mut shutdown = self.shutdown.clone();
            'hold: while began.elapsed() < hold {
                if let Some((rx, _)) = &budget
                    && let Some(Err(why)) = &*rx.borrow()
                {
                    abort = Some(format!("{why} during the hold"));
                    break 'hold;
                }
                if *shutdown.borrow() {
                    run.step(
                        None,
                        "interrupted",
                        "failoverd is shutting down; the drill is rolled back when it starts again",
                    );
                    // The in-flight record stays: the next start restores the routes.
                    return;
                }
                for i in 0..run.playbooks.len() {
                    if let Some(why) = self.abort_reason(def, run, i) {
                        abort = Some(why);
                        break 'hold;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                    _ = shutdown.changed() => {}
                }
            }
            if let Some((_, task)) = budget {
                task.abort();
            }
            let held = began.elapsed().as_secs_f64();
            for leg in run.playbooks.iter_mut() {
                leg.held_seconds = Some(held);
            }
            match &abort {
                Some(why) => run.step(None, "aborted", why.clone()),
                None => run.step(
                    None,
                    "held",
                    format!("held {held:.3} s on the failover targets"),
                ),
            }
            self.persist_in_flight(run);
        }
        self.restore_all(def, run, abort.is_some()).await;
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

    /// Persists a live run's progress: the in-flight record (for a restart) and the copy the
    /// API shows.
    pub(super) fn persist_in_flight(&self, run: &Run) {
        if let Ok(mut r) = self.runs.lock()
            && let Err(e) = r.progress(run)
        {
            error!(run = %run.id, error = %e, "cannot persist the in-flight drill record; a crash now would leave the drill's hold to its TTL");
        }
    }

    /// Waits (up to `budget`, at least 5 s) until the store's routing is away from the primary
    /// (`away`) or on it (`!away`); returns the routing last read.
    pub(super) async fn wait_routing(&self, name: &str, away: bool, budget: Duration) -> Routing {
        let Some((_, pb)) = self.playbook(name) else {
            return Routing::Primary;
        };
        let deadline = Instant::now() + budget.max(Duration::from_secs(5));
        loop {
            let r = self
                .store
                .read(&pb)
                .await
                .map(|v| v.routing)
                .unwrap_or(Routing::Primary);
            if (r != Routing::Primary) == away || Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the route back and checks it is what `to` means; returns the route.
    pub(super) async fn verify(
        &self,
        name: &str,
        to: Routing,
        original: &Value,
    ) -> Result<Value, String> {
        let (_, pb) = self
            .playbook(name)
            .ok_or_else(|| format!("playbook `{name}` is not loaded"))?;
        let view = self
            .store
            .read(&pb)
            .await
            .map_err(|e| format!("cannot read the route back: {e}"))?;
        let want = routing::route_for(&pb, to, original);
        if view.routing != to {
            return Err(format!(
                "read back {} from the store, expected {to}",
                view.routing
            ));
        }
        if view.route != want {
            return Err(format!(
                "the route read back differs from {to}: got {}, expected {want}",
                view.route
            ));
        }
        Ok(view.route)
    }

    /// Fails back every leg the drill moved and checks the original route is back.
    pub(super) async fn restore_all(
        self: &Arc<Self>,
        def: &LoadedDrill,
        run: &mut Run,
        aborted: bool,
    ) {
        let within = def.drill.spec.success.failback_within.value;
        for i in 0..run.playbooks.len() {
            if !run.playbooks[i].moved {
                continue;
            }
            let name = run.playbooks[i].playbook.clone();
            run.step(
                Some(&name),
                "failback-requested",
                format!("operator failback as drill:{}", run.drill),
            );
            let started = Instant::now();
            match self.restore(run, i).await {
                Ok(detail) => {
                    let secs = started.elapsed().as_secs_f64();
                    run.playbooks[i].failback_seconds = Some(secs);
                    run.playbooks[i].restored = true;
                    run.playbooks[i].moved = false;
                    run.step(
                        Some(&name),
                        "restored",
                        format!("{detail}; original route read back {secs:.3} s after the call"),
                    );
                    if !aborted && secs > within.get().as_secs_f64() {
                        run.reasons.push(format!(
                            "{name}: failback took {secs:.3} s, over failbackWithin {within}"
                        ));
                    }
                }
                Err(e) => {
                    run.step(Some(&name), "not-restored", e.clone());
                    run.reasons.push(format!("{name}: {e}"));
                }
            }
            self.persist_in_flight(run);
        }
    }

    /// Returns one leg to its original route through the controller. A primary that is
    /// failing is not failed back onto: the drill's hold is released and the engine, which
    /// sees the incident, keeps traffic where it is safe.
    pub(super) async fn restore(&self, run: &Run, i: usize) -> Result<String, String> {
        let leg = &run.playbooks[i];
        let name = &leg.playbook;
        let identity = format!("drill:{}", run.drill);
        let actor = Self::actor(run, "failback");
        let (idx, pb) = self
            .playbook(name)
            .ok_or_else(|| format!("playbook `{name}` is not loaded"))?;
        let deadline = Instant::now() + FAILBACK_RETRY;
        loop {
            let view = self
                .store
                .read(&pb)
                .await
                .map_err(|e| format!("cannot read the route: {e}"))?;
            if view.routing == Routing::Primary {
                // Nothing to fail back (a crash before the write, or already restored): the
                // drill's own hold must not outlive it.
                for r in self.overrides_of(name) {
                    if r.actor == identity {
                        let _ = self
                            .call(
                                None,
                                ControlKind::DeleteOverride { id: r.id.clone() },
                                &actor,
                            )
                            .await;
                    }
                }
                return self
                    .verify(name, Routing::Primary, &leg.original_route)
                    .await
                    .map(|_| "on the original route".to_string());
            }
            if let Some(h) = self
                .overrides_of(name)
                .into_iter()
                .find(|r| r.kind == OverrideKind::Failover && r.actor != identity)
            {
                return Err(format!(
                    "{} holds the playbook on a failover target now ({}); routing left to them",
                    h.actor, h.reason
                ));
            }
            let last = match self
                .call(Some(name), ControlKind::Failback { force: false }, &actor)
                .await
            {
                Ok(reply) => {
                    if !reply.written {
                        // Applied right after a write already in flight.
                        self.wait_routing(name, false, FAILBACK_RETRY).await;
                    }
                    return self
                        .verify(name, Routing::Primary, &leg.original_route)
                        .await
                        .map(|_| reply.message);
                }
                Err(e) => e.error,
            };
            let primary_failing = self
                .shared
                .snapshot()
                .into_iter()
                .nth(idx)
                .map(|s| engine::verdict(&pb, &s.signals, Target::Primary, Timestamp::now()))
                .is_some_and(|v| matches!(v, engine::Verdict::Unhealthy { .. }));
            if primary_failing || Instant::now() >= deadline {
                for r in self.overrides_of(name) {
                    if r.actor == identity {
                        let _ = self
                            .call(
                                None,
                                ControlKind::DeleteOverride { id: r.id.clone() },
                                &actor,
                            )
                            .await;
                    }
                }
                return Err(format!(
                    "not failed back ({last}); the drill's hold is released and the engine decides as for any incident"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Rolls back live drills a previous process left in flight and records them aborted.
    pub(super) async fn recover(self: &Arc<Self>) {
        let found = self.runs.lock().map(|r| r.in_flight()).unwrap_or_default();
        if found.is_empty() {
            return;
        }
        if let Ok(mut busy) = self.busy.lock() {
            for run in &found {
                for leg in &run.playbooks {
                    busy.insert(leg.playbook.clone(), run.id.clone());
                }
            }
        }
        // Only the leader moves traffic: a standby keeps the record until it leads.
        let mut stop = self.shutdown.clone();
        while !self.shared.leader.is_leader() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
        // The controller answers only once it has read the routes, and a failback needs
        // fresh signals about the primary: wait for the first probe round.
        let began = Instant::now();
        while !self.shared.ready.load(std::sync::atomic::Ordering::Relaxed)
            && began.elapsed() < RECOVERY_WAIT
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for mut run in found {
            warn!(drill = %run.drill, run = %run.id, "found a drill in flight from before a restart; rolling it back");
            run.step(
                None,
                "restarted",
                "failoverd restarted during this run; rolling back",
            );
            let why =
                "failoverd restarted during the drill; routing rolled back on start".to_string();
            self.recover_faults(&mut run).await;
            for i in 0..run.playbooks.len() {
                run.playbooks[i].moved = true;
                let name = run.playbooks[i].playbook.clone();
                let started = Instant::now();
                match self.restore(&run, i).await {
                    Ok(detail) => {
                        run.playbooks[i].restored = true;
                        run.playbooks[i].moved = false;
                        run.playbooks[i].failback_seconds = Some(started.elapsed().as_secs_f64());
                        run.step(Some(&name), "restored", detail);
                    }
                    Err(e) => {
                        run.step(Some(&name), "not-restored", e.clone());
                        run.reasons.push(format!("{name}: {e}"));
                    }
                }
            }
            run.reasons.insert(0, why);
            self.finish_audited(&mut run, Verdict::Aborted).await;
        }
    }
}
