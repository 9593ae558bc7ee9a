//! The decision: one round from (playbook, state, observations, overrides, now) to the next
//! state and the actions, with automatic failover, dwell, stepped failback and operator
//! commands.

use std::time::Duration as StdDuration;

use jiff::Timestamp;

use crate::playbook::{FailbackMode, Playbook, Target};

use super::types::{
    Action, Actor, Command, Decision, MoveKind, Observation, Overrides, Phase, Routing, State,
    Verdict,
};
use super::vantages::{self, Agreement};
use super::verdicts::{describe, elapsed, fence, first_healthy_target, round_ms, verdict};

struct Ctx<'a> {
    pb: &'a Playbook,
    obs: &'a [Observation],
    now: Timestamp,
    state: &'a State,
    next: State,
    actions: Vec<Action>,
    explain: String,
    /// The break-glass id the next route carries (set only for a break-glass hold's target).
    glass: Option<String>,
    /// Why an automatic failover was made on fewer vantages than asked for (see `vantages`).
    fallback: Option<&'static str>,
}

impl Ctx<'_> {
    fn dwell_left(&self) -> Option<StdDuration> {
        let min = self.pb.spec.min_dwell.get();
        let last = self.state.last_move?;
        let e = elapsed(self.now, last);
        (e < min).then(|| min - e)
    }

    fn route(
        &mut self,
        to: Routing,
        kind: MoveKind,
        reason: String,
        forced: bool,
        actor: Option<Actor>,
    ) {
        if to != self.state.routing {
            self.actions.push(Action::Route {
                from: self.state.routing,
                to,
                kind,
                reason: reason.clone(),
                forced,
                actor,
                break_glass: self.glass.take(),
            });
            self.next.routing = to;
            if kind.starts_move(self.state.routing) {
                self.next.last_move = Some(self.now);
            }
        }
        self.explain = reason;
    }

    fn stuck(&mut self, mut reason: String) {
        // On-call must see at once when a fence, not a failure, is what leaves no way out.
        let fenced: Vec<String> = (0..self.pb.spec.failover.value.len())
            .filter_map(|t| {
                fence(self.pb, self.obs, Target::Failover(t)).map(|r| format!("failover[{t}] {r}"))
            })
            .collect();
        if !fenced.is_empty() {
            reason = format!("{reason} (refused by the fence: {})", fenced.join("; "));
        }
        let vetoed = vantages::vetoed_targets(self.pb, self.obs, self.now);
        if !vetoed.is_empty() {
            reason = format!(
                "{reason} (seen unhealthy from another vantage: {})",
                vetoed.join("; ")
            );
        }
        if !self.state.stuck {
            self.actions.push(Action::Stuck {
                reason: reason.clone(),
            });
        }
        self.next.stuck = true;
        self.explain = reason;
    }

    fn target_verdict(&self, t: usize) -> Verdict {
        verdict(self.pb, self.obs, Target::Failover(t), self.now)
    }

    /// The first failover target automation may use: healthy here, unhealthy from no live
    /// vantage.
    fn safe_target(&self, except: Option<usize>) -> Option<usize> {
        vantages::first_safe_target(self.pb, self.obs, self.now, except)
    }
}

/// Decides what to do next. Pure: the same inputs always give the same output, and an input
/// that changes nothing gives no action.
pub fn decide(
    pb: &Playbook,
    state: &State,
    obs: &[Observation],
    overrides: &Overrides,
    now: Timestamp,
) -> Decision {
    let primary = verdict(pb, obs, Target::Primary, now);
    let mut cx = Ctx {
        pb,
        obs,
        now,
        state,
        next: state.clone(),
        actions: Vec::new(),
        explain: String::new(),
        glass: None,
        fallback: None,
    };
    cx.next.stuck = false;

    // Operator commands come first: they are explicit, audited, and exempt from dwell.
    if let Some(Command::Failback { by, force }) = &overrides.command {
        if state.routing == Routing::Primary {
            cx.actions.push(Action::Refused {
                reason: "already on the primary route".into(),
            });
        } else if let Some(rule) = fence(pb, obs, Target::Primary) {
            // Force cannot send case data where residency or mesh policy forbids.
            cx.actions.push(Action::Refused {
                reason: format!("primary is refused by {rule}; force cannot override it"),
            });
        } else if primary.is_healthy() || *force {
            let forced = !primary.is_healthy();
            cx.route(
                Routing::Primary,
                MoveKind::OperatorFailback,
                format!(
                    "operator {} failed back: {} (primary {})",
                    by.identity,
                    by.reason,
                    describe(&primary)
                ),
                forced,
                Some(by.clone()),
            );
            cx.next.phase = Phase::Normal;
            return finish(cx, primary);
        } else {
            cx.actions.push(Action::Refused {
                reason: format!(
                    "primary is not known healthy ({}); use force to fail back anyway",
                    describe(&primary)
                ),
            });
        }
    }

    // A freeze that ended (or is overruled by an operator hold) hands control back from
    // wherever routing stands.
    let phase = match &state.phase {
        Phase::Frozen { .. } => State::resume(state.routing, now).phase,
        p => p.clone(),
    };
    cx.next.phase = phase.clone();

    // An operator hold is an explicit instruction: it applies even while automation is frozen.
    let hold = overrides.hold.as_ref().filter(|h| h.until > now);
    if let Some(h) = hold {
        let v = cx.target_verdict(h.target);
        let already_there = state.routing == Routing::Failover { target: h.target };
        // A hold comes from the saved overrides, which may name a target the (reloaded)
        // playbook no longer has: `force` cannot route to a destination that does not exist.
        let exists = h.target < pb.spec.failover.value.len();
        // `force` overrides health, never the fence; only an approved break-glass does.
        let fenced = fence(pb, obs, Target::Failover(h.target));
        let may_force = h.force && (fenced.is_none() || h.break_glass.is_some());
        let target = if exists
            && (may_force
                || v.is_healthy()
                || (already_there && !matches!(v, Verdict::Unhealthy { .. })))
        {
            Some(h.target)
        } else {
            // The held target is not known healthy: stay failed over, on the next healthy
            // target if any (only `force` sends traffic somewhere failoverd cannot vouch for).
            first_healthy_target(pb, obs, now, Some(h.target))
        };
        match target {
            Some(t) => {
                if t == h.target {
                    cx.glass = h.break_glass.clone();
                }
                let reason = match (&h.break_glass, fence(pb, obs, Target::Failover(t))) {
                    (Some(id), Some(rule)) => format!(
                        "break-glass {id}: operator {} holds failover to failover[{t}] until {} despite {rule}: {}",
                        h.by.identity, h.until, h.by.reason
                    ),
                    _ => format!(
                        "operator {} holds failover to failover[{t}] until {}: {}",
                        h.by.identity, h.until, h.by.reason
                    ),
                };
                cx.route(
                    Routing::Failover { target: t },
                    MoveKind::OperatorFailover,
                    reason,
                    may_force && t == h.target && !cx.target_verdict(t).is_healthy(),
                    Some(h.by.clone()),
                );
                cx.next.phase = match phase {
                    Phase::FailedOver { target, since } if target == t => Phase::FailedOver { target, since },
                    _ => Phase::FailedOver { target: t, since: now },
                };
            }
            None if !exists => cx.stuck(format!(
                "operator hold on failover[{}], which does not exist ({} failover target(s)), and no other failover target is healthy",
                h.target,
                pb.spec.failover.value.len()
            )),
            None => cx.stuck(format!(
                "operator hold on failover[{}], which is {}, and no other failover target is healthy",
                h.target,
                describe(&v)
            )),
        }
        return finish(cx, primary);
    }

    let freeze = overrides
        .freeze
        .as_ref()
        .filter(|f| f.until.is_none_or(|u| u > now));
    if let Some(f) = freeze {
        cx.next.phase = Phase::Frozen { until: f.until };
        cx.explain = format!("frozen by {}: {}", f.by.identity, f.by.reason);
        return finish(cx, primary);
    }
    match phase {
        Phase::Normal | Phase::Suspect { .. } | Phase::Frozen { .. } => {
            on_primary(&mut cx, &primary, &phase)
        }
        Phase::FailedOver { target, since } | Phase::Recovering { target, since } => {
            failed_over(&mut cx, &primary, target, since, &phase)
        }
        Phase::FailingBack {
            target,
            step,
            since,
        } => failing_back(&mut cx, &primary, target, step, since),
    }
    finish(cx, primary)
}

fn finish(cx: Ctx<'_>, primary: Verdict) -> Decision {
    Decision {
        state: cx.next,
        actions: cx.actions,
        explain: cx.explain,
        primary,
        fallback: cx.fallback,
    }
}

fn on_primary(cx: &mut Ctx<'_>, primary: &Verdict, phase: &Phase) {
    let now = cx.now;
    match primary {
        Verdict::Unhealthy { reason } => {
            let since = match phase {
                Phase::Suspect { since } => *since,
                _ => now,
            };
            cx.next.phase = Phase::Suspect { since };
            // Agreement across vantages holds back a failover the others do not confirm.
            let fallback = match vantages::agreement(cx.pb, cx.obs, reason, now) {
                Agreement::Disagree(views) => {
                    cx.explain =
                        format!("primary unhealthy here but not confirmed: {views}: holding");
                    return;
                }
                Agreement::Fallback(why) => Some(why),
                Agreement::Alone | Agreement::Agreed => None,
            };
            let Some(t) = cx.safe_target(None) else {
                cx.stuck(format!(
                    "primary unhealthy ({reason}) and no failover target is known healthy: staying on the primary"
                ));
                return;
            };
            if let Some(left) = cx.dwell_left() {
                cx.explain = format!(
                    "primary unhealthy ({reason}); minDwell holds the route for {}",
                    humantime::format_duration(round_ms(left))
                );
                return;
            }
            let dest = cx
                .pb
                .destination(Target::Failover(t))
                .map(|d| d.to_string())
                .unwrap_or_default();
            cx.fallback = fallback;
            let alone = match fallback {
                Some(why) => format!(" (decided on this vantage's view: {why})"),
                None => String::new(),
            };
            cx.route(
                Routing::Failover { target: t },
                MoveKind::Failover,
                format!(
                    "primary unhealthy ({reason}); failing over to failover[{t}] {dest}{alone}"
                ),
                false,
                None,
            );
            cx.next.phase = Phase::FailedOver {
                target: t,
                since: now,
            };
        }
        Verdict::Suspect { reason } => {
            let since = match phase {
                Phase::Suspect { since } => *since,
                _ => now,
            };
            cx.next.phase = Phase::Suspect { since };
            cx.explain = format!("primary suspect ({reason})");
        }
        Verdict::Healthy { .. } => {
            cx.next.phase = Phase::Normal;
            cx.explain = "primary healthy".into();
        }
        Verdict::Unknown { reason } => {
            cx.next.phase = Phase::Normal;
            cx.explain = format!("primary unknown ({reason}): holding");
        }
    }
}

fn failed_over(
    cx: &mut Ctx<'_>,
    primary: &Verdict,
    target: usize,
    since: Timestamp,
    phase: &Phase,
) {
    let now = cx.now;
    let pb = cx.pb;
    let failed_at = match phase {
        Phase::FailedOver { since, .. } => *since,
        _ => since,
    };
    let current = cx.target_verdict(target);
    if let Verdict::Unhealthy { reason } = &current {
        // The target we are on died. Prefer a healthy primary, else another healthy target.
        let (to, kind) = if primary.is_healthy() {
            (Routing::Primary, MoveKind::Failback)
        } else if let Some(t) = cx.safe_target(Some(target)) {
            (Routing::Failover { target: t }, MoveKind::Switch)
        } else {
            cx.stuck(format!(
                "failover[{target}] unhealthy ({reason}) and no other destination is known healthy (primary {}): staying",
                describe(primary)
            ));
            return;
        };
        if let Some(left) = cx.dwell_left() {
            cx.explain = format!(
                "failover[{target}] unhealthy ({reason}); minDwell holds the route for {}",
                humantime::format_duration(round_ms(left))
            );
            return;
        }
        cx.route(
            to,
            kind,
            format!("failover[{target}] unhealthy ({reason}); moving to {to}"),
            false,
            None,
        );
        cx.next.phase = match to {
            Routing::Failover { target } => Phase::FailedOver { target, since: now },
            _ => Phase::Normal,
        };
        return;
    }
    let Verdict::Healthy {
        since: healthy_since,
    } = primary
    else {
        cx.next.phase = Phase::FailedOver {
            target,
            since: failed_at,
        };
        cx.explain = format!(
            "failed over to failover[{target}]; primary {}",
            describe(primary)
        );
        return;
    };
    let after = pb.spec.failback.after.get();
    let stable = elapsed(now, *healthy_since);
    cx.next.phase = Phase::Recovering {
        target,
        since: *healthy_since,
    };
    if stable < after {
        cx.explain = format!(
            "primary healthy for {} of {} before failback",
            humantime::format_duration(round_ms(stable)),
            pb.spec.failback.after
        );
        return;
    }
    if pb.spec.failback.mode == FailbackMode::Manual {
        cx.explain = "primary stable; failback mode is manual: waiting for an operator".into();
        return;
    }
    if let Some(left) = cx.dwell_left() {
        cx.explain = format!(
            "primary stable; minDwell holds the route for {}",
            humantime::format_duration(round_ms(left))
        );
        return;
    }
    let first = pb.failback_steps().first().copied().unwrap_or(100);
    let reason = format!(
        "primary healthy for {} (≥ {}); failing back",
        humantime::format_duration(round_ms(stable)),
        pb.spec.failback.after
    );
    if first >= 100 {
        cx.route(Routing::Primary, MoveKind::Failback, reason, false, None);
        cx.next.phase = Phase::Normal;
    } else {
        cx.route(
            Routing::Split {
                target,
                primary_percent: first,
            },
            MoveKind::FailbackStep,
            format!("{reason}: step 1, {first}% to the primary"),
            false,
            None,
        );
        cx.next.phase = Phase::FailingBack {
            target,
            step: 0,
            since: now,
        };
    }
}

fn failing_back(cx: &mut Ctx<'_>, primary: &Verdict, target: usize, step: usize, since: Timestamp) {
    let now = cx.now;
    let pb = cx.pb;
    match primary {
        Verdict::Unhealthy { reason } | Verdict::Suspect { reason } => {
            // A cold primary that stumbles during the ramp loses all its traffic at once.
            let to = if cx.target_verdict(target).is_healthy() {
                Some(target)
            } else {
                cx.safe_target(None)
            };
            match to {
                Some(t) => {
                    cx.route(
                        Routing::Failover { target: t },
                        MoveKind::FailbackAborted,
                        format!("primary failing during failback ({reason}); all traffic back to failover[{t}]"),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::FailedOver { target: t, since: now };
                }
                None => cx.stuck(format!(
                    "primary failing during failback ({reason}) and no failover target is known healthy: holding the split"
                )),
            }
        }
        Verdict::Unknown { reason } => {
            cx.explain = format!(
                "failback paused at step {}: primary unknown ({reason})",
                step + 1
            );
        }
        Verdict::Healthy { .. }
            if matches!(cx.target_verdict(target), Verdict::Unhealthy { .. }) =>
        {
            cx.route(
                Routing::Primary,
                MoveKind::Failback,
                format!("failover[{target}] failed during failback and the primary is healthy: original route restored"),
                false,
                None,
            );
            cx.next.phase = Phase::Normal;
        }
        Verdict::Healthy { .. } => {
            let steps = pb.failback_steps();
            let interval = pb.spec.failback.step_interval.get();
            if elapsed(now, since) < interval {
                cx.explain = format!(
                    "failback at step {} of {}: {}% on the primary",
                    step + 1,
                    steps.len(),
                    steps.get(step).copied().unwrap_or(100)
                );
                return;
            }
            let next = step + 1;
            match steps.get(next).copied() {
                Some(p) if p < 100 => {
                    cx.route(
                        Routing::Split {
                            target,
                            primary_percent: p,
                        },
                        MoveKind::FailbackStep,
                        format!(
                            "failback step {} of {}: {p}% to the primary",
                            next + 1,
                            steps.len()
                        ),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::FailingBack {
                        target,
                        step: next,
                        since: now,
                    };
                }
                _ => {
                    cx.route(
                        Routing::Primary,
                        MoveKind::Failback,
                        "failback complete: original route restored".into(),
                        false,
                        None,
                    );
                    cx.next.phase = Phase::Normal;
                }
            }
        }
    }
}
