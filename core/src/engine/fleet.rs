//! The fleet blast-radius rule: when many playbooks breach together, suspect the observer.
//!
//! One service failing is an outage; a dozen unrelated services failing in the same few
//! seconds is far more often failoverd's own view of the world breaking (a network partition
//! between the daemon and the mesh, a broken probe path, a DNS outage on the node) than a
//! dozen real outages. Failing a whole fleet over on such a signal moves every service at once
//! onto its DR side on a false alarm. So, with `maxConcurrentFailovers: N` (N > 0), when more
//! than N playbooks are breaching or already failed over at the same time, failoverd holds
//! every *automatic* failover, raises one `blast-radius` event and audits it; operators can
//! still fail over any playbook they choose (operator moves are never held).
//!
//! The rule is pure ([`judge`]) and the bookkeeping that feeds it ([`FleetGuard`]) does no I/O
//! and reads no clock, so both are tested with tables and a model-based property test.

use serde::Serialize;

/// One playbook's standing in the fleet, as its latest decision left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Seat {
    /// On the primary route and the primary not failing (healthy or unknown).
    #[default]
    Fine,
    /// On the primary route with the primary failing (suspect, or past its trigger): it wants,
    /// or is about to want, an automatic failover.
    Breaching,
    /// Traffic is (at least partly) on a failover target.
    FailedOver,
}

/// What [`judge`] allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "camelCase")]
pub enum Judgement {
    /// Automatic failovers may proceed.
    Allow,
    /// Every automatic failover is held: too many playbooks are in trouble at once.
    Hold {
        /// Playbooks breaching on the primary route (those wanting to move included).
        breaching: usize,
        /// Playbooks already failed over.
        failed_over: usize,
        /// The configured ceiling.
        max: usize,
    },
    /// Every automatic failover is held: the fleet's count cannot be trusted (its lock was
    /// poisoned by a panic), so the rule fails closed.
    Unavailable {
        /// Why the count cannot be trusted.
        reason: String,
    },
}

impl Judgement {
    /// The one-line explanation kept in logs, events and the audit record.
    pub fn reason(&self) -> String {
        match self {
            Judgement::Allow => "within the fleet's blast radius".into(),
            Judgement::Hold {
                breaching,
                failed_over,
                max,
            } => format!(
                "{breaching} playbook(s) breaching and {failed_over} already failed over exceed \
                 maxConcurrentFailovers {max}: this looks like an observer fault (failoverd's own \
                 network), not {} outages; holding every automatic failover (operators can still \
                 force one)",
                breaching + failed_over
            ),
            Judgement::Unavailable { reason } => format!(
                "{reason}: the blast-radius rule cannot count the fleet, so it fails closed; \
                 holding every automatic failover until failoverd restarts (operators can still \
                 force one)"
            ),
        }
    }
}

/// The blast-radius rule. `breaching` counts playbooks on their primary route whose primary is
/// failing (each one that wants an automatic failover this round is among them); `failed_over`
/// counts playbooks already on a failover target; `max` is `maxConcurrentFailovers` (0 turns the
/// rule off).
///
/// Breaching playbooks that have not reached their trigger yet are counted on purpose: faults
/// that start together cross their thresholds a few probe intervals apart, and counting only
/// those past the trigger would let the first N through before the rule sees the rest.
pub fn judge(breaching: usize, failed_over: usize, max: usize) -> Judgement {
    if max == 0 || breaching + failed_over <= max {
        Judgement::Allow
    } else {
        Judgement::Hold {
            breaching,
            failed_over,
            max,
        }
    }
}

/// What [`FleetGuard::check`] tells the controller about one automatic failover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Allow,
    /// Hold this move; `raise` is true for the first hold of an episode (raise the event and
    /// audit it once, not on every round).
    Hold {
        /// The rule's verdict (for the explanation).
        judgement: Judgement,
        /// True once per episode.
        raise: bool,
    },
}

/// The fleet's seats, kept by the controller from every decision, and the "already raised"
/// flag that makes the event fire once per episode.
#[derive(Clone, Debug, Default)]
pub struct FleetGuard {
    max: usize,
    seats: Vec<Seat>,
    raised: bool,
    /// The "lock poisoned" hold was raised (once per process: the lock stays poisoned).
    poison_raised: bool,
}

impl FleetGuard {
    /// A guard for `playbooks` playbooks with `maxConcurrentFailovers` `max` (0: off).
    pub fn new(playbooks: usize, max: usize) -> Self {
        Self {
            max,
            seats: vec![Seat::Fine; playbooks],
            raised: false,
            poison_raised: false,
        }
    }

    /// The configured ceiling (0: the rule is off).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Records where playbook `idx` stands after its latest decision. An episode ends (the
    /// next hold raises the event again) once the fleet is back within the ceiling.
    pub fn seat(&mut self, idx: usize, seat: Seat) {
        // A playbook set that grew (a reload) grows the table: every playbook counts.
        if idx >= self.seats.len() {
            self.seats.resize(idx + 1, Seat::Fine);
        }
        if let Some(s) = self.seats.get_mut(idx) {
            *s = seat;
        }
        if self.raised
            && judge(
                self.count(Seat::Breaching),
                self.count(Seat::FailedOver),
                self.max,
            ) == Judgement::Allow
        {
            self.raised = false;
        }
    }

    fn count(&self, seat: Seat) -> usize {
        self.seats.iter().filter(|s| **s == seat).count()
    }

    /// Judges an automatic failover that playbook `idx` wants now (it is counted as breaching).
    pub fn check(&mut self, idx: usize) -> Gate {
        self.seat(idx, Seat::Breaching);
        match judge(
            self.count(Seat::Breaching),
            self.count(Seat::FailedOver),
            self.max,
        ) {
            Judgement::Allow => Gate::Allow,
            judgement => {
                let raise = !self.raised;
                self.raised = true;
                Gate::Hold { judgement, raise }
            }
        }
    }
}

/// The controller's gate for playbook `idx` through the shared lock: records `seat` when the
/// playbook does not want an automatic failover (`wants` false), else judges the move.
///
/// Fails closed: when the lock is poisoned (a thread panicked while holding it) the counts may
/// be half-updated, so with the rule on (`maxConcurrentFailovers` > 0) every automatic
/// failover is held with [`Judgement::Unavailable`], raised once. With the rule off nothing is
/// gated, poisoned or not.
pub fn gate(fleet: &std::sync::Mutex<FleetGuard>, idx: usize, wants: bool, seat: Seat) -> Gate {
    match fleet.lock() {
        Ok(mut g) if !wants => {
            g.seat(idx, seat);
            Gate::Allow
        }
        Ok(mut g) => g.check(idx),
        Err(poisoned) => {
            let mut g = poisoned.into_inner();
            if !wants || g.max == 0 {
                return Gate::Allow;
            }
            let raise = !g.poison_raised;
            g.poison_raised = true;
            Gate::Hold {
                judgement: Judgement::Unavailable {
                    reason: "the fleet bookkeeping lock is poisoned (a thread panicked while \
                             holding it)"
                        .into(),
                },
                raise,
            }
        }
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
