//! The playbook model: the document, its destinations and targets, the trigger and failback
//! rules. The signal specs (probes, SLOs) are in `signals`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::duration::{self, Duration};
use super::signals::{ProbeSpec, SloSpec};
use super::target::Target;

/// A playbook file: how one guarded service fails over and back.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Playbook {
    /// Must be `failoverd.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `Playbook`.
    pub kind: String,
    /// Identity of the playbook.
    pub metadata: Metadata,
    /// What to watch and where to move traffic.
    pub spec: PlaybookSpec,
    /// True when residency or mesh policy binds this playbook (the daemon's `residency` /
    /// `policy` config, narrowed by `spec.residency`). Set by the daemon when it loads the
    /// playbook, never read from YAML: every target then needs a `Policy` observation that
    /// clears it, and one without is never routed to (unknown is outside every fence).
    #[serde(skip)]
    #[schemars(skip)]
    pub fenced: bool,
}

/// Identity of a playbook.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name across all loaded playbooks (a DNS-1123 label); used in the API and audit.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free-form labels, e.g. `team: intake`; copied into status output.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The body of a playbook.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlaybookSpec {
    /// The VirtualService failoverd rewrites.
    pub virtual_service: ObjectRef,
    /// `http[].name` of the route to rewrite; when absent, the first http route.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub route: Option<Spanned<String>>,
    /// Where traffic goes when all is well (used when no original route was recorded).
    pub primary: Destination,
    /// Failover targets in order of preference: the first *healthy* one wins.
    #[schemars(with = "Vec<Destination>")]
    pub failover: Spanned<Vec<Destination>>,
    /// Active health probes; each watches one target.
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
    /// SLO signals read from Prometheus; each watches one target.
    #[serde(default)]
    pub slos: Vec<SloSpec>,
    /// When failing signals count as a failure.
    #[serde(default)]
    pub trigger: Trigger,
    /// How and when traffic returns to the primary.
    #[serde(default)]
    pub failback: Failback,
    /// No second move within this time of the last one, unless an operator overrides.
    /// Keeps a flapping primary from flapping the routes. At most 7d.
    #[serde(default = "default_min_dwell", deserialize_with = "duration::wait")]
    pub min_dwell: Duration,
    /// What a signal without data (probe could not run, Prometheus down) means.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// What failoverd does when the route it wrote is changed by someone else while it is
    /// failed over (a person with kubectl, a GitOps sync putting the original back).
    #[serde(default)]
    pub on_drift: OnDrift,
    /// Where this service's data may be processed: narrows the daemon's `residency.allowed`
    /// (it may never widen it). A target whose jurisdiction, read from the cluster, is
    /// outside the set is never routed to, automatically or by force.
    #[serde(default)]
    pub residency: Option<Residency>,
}

/// A playbook's residency rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Residency {
    /// Allowed jurisdictions, ISO 3166-1 alpha-2 codes such as `ID`; each must also be in
    /// the daemon's `residency.allowed` when that is set.
    #[schemars(with = "Vec<String>")]
    pub allowed: Spanned<Vec<Spanned<String>>>,
}

fn default_min_dwell() -> Duration {
    Duration::from_secs(120)
}

/// A namespaced Kubernetes object.
#[derive(
    Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An Istio route destination.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Service host, e.g. `case-management.child-welfare-dr.svc.cluster.local`.
    #[schemars(with = "String")]
    pub host: Spanned<String>,
    /// DestinationRule subset (a DNS-1123 label), if any.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub subset: Option<Spanned<String>>,
    /// Port number on the host, if the service exposes more than one.
    #[serde(default)]
    pub port: Option<u32>,
}

impl Destination {
    /// The destination as an Istio `destination` object (host, subset, port).
    pub fn to_istio(&self) -> serde_json::Value {
        let mut d = serde_json::Map::new();
        d.insert("host".into(), self.host.value.clone().into());
        if let Some(s) = &self.subset {
            d.insert("subset".into(), s.value.clone().into());
        }
        if let Some(p) = self.port {
            d.insert("port".into(), serde_json::json!({ "number": p }));
        }
        serde_json::Value::Object(d)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host.value)?;
        if let Some(s) = &self.subset {
            write!(f, " (subset {})", s.value)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// When failing signals count as a failure of their target.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Trigger {
    /// Consecutive unhealthy probe results before a target counts as unhealthy (≥ 1).
    #[serde(default = "default_failure_threshold")]
    #[schemars(with = "u32")]
    pub failure_threshold: Spanned<u32>,
    /// A failure (probe past the threshold, SLO breach) must also last this long. At most 7d.
    #[serde(default, rename = "for", deserialize_with = "duration::wait")]
    pub for_: Duration,
    /// An SLO breach alone does not fail a target over: a probe on it must be failing too,
    /// so a monitoring fault cannot move traffic.
    #[serde(default)]
    pub require_probe_corroboration: bool,
    /// Agreement across vantage points (replicas) before an automatic failover. Absent:
    /// every live vantage (one that reported within 3 exchange intervals) must see the
    /// primary failing. `min: 1` turns agreement off (this replica's view alone decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vantages: Option<Vantages>,
}

/// `trigger.vantages`: how many vantage points must see the primary failing.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Vantages {
    /// Vantages (this replica included) that must see the primary failing (≥ 1). Capped at
    /// the number of live vantages: a replica that stopped reporting cannot block a failover.
    #[schemars(with = "u32")]
    pub min: Spanned<u32>,
}

fn default_failure_threshold() -> Spanned<u32> {
    Spanned::new(
        3,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

impl Default for Trigger {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            for_: Duration::default(),
            require_probe_corroboration: false,
            vantages: None,
        }
    }
}

/// How traffic returns to the primary.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failback {
    /// `automatic`: fail back on its own once the primary is stable; `manual`: wait for an operator.
    #[serde(default)]
    pub mode: FailbackMode,
    /// The primary must be healthy this long before failback starts. At most 7d.
    #[serde(
        default = "default_failback_after",
        deserialize_with = "duration::wait"
    )]
    pub after: Duration,
    /// Percent of traffic on the primary at each step; strictly increasing, ending at 100.
    /// A primary that fails during the ramp gets all traffic taken away again at once.
    #[serde(default = "default_steps")]
    #[schemars(with = "Vec<u8>")]
    pub steps: Spanned<Vec<u8>>,
    /// Time between steps. At most 7d.
    #[serde(default = "default_step_interval", deserialize_with = "duration::wait")]
    pub step_interval: Duration,
}

fn default_failback_after() -> Duration {
    Duration::from_secs(300)
}

fn default_steps() -> Spanned<Vec<u8>> {
    Spanned::new(
        vec![100],
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

fn default_step_interval() -> Duration {
    Duration::from_secs(30)
}

impl Default for Failback {
    fn default() -> Self {
        Self {
            mode: FailbackMode::default(),
            after: default_failback_after(),
            steps: default_steps(),
            step_interval: default_step_interval(),
        }
    }
}

/// Failback mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FailbackMode {
    /// Fail back without an operator once the primary has been healthy for `after`.
    #[default]
    Automatic,
    /// Stay failed over until an operator fails back.
    Manual,
}

/// What a signal without data means.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnMissing {
    /// Neither failover nor failback on account of that signal (the safe default).
    #[default]
    Hold,
    /// Missing data on the primary counts as failing (for services where silence means down).
    Failover,
    /// Leave the signal out; the target is judged by its other signals.
    Ignore,
}

/// What to do when the route failoverd wrote was changed by someone else.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnDrift {
    /// Write failoverd's routing again (the default): while the primary is known bad, a sync
    /// that restores the original route would send users back to a dead service. To change
    /// the route by hand, freeze the playbook first; a frozen playbook is never reasserted.
    #[default]
    Reassert,
    /// Leave the change in place and freeze the playbook (audited, on-call alerted): a person
    /// took over; failoverd moves nothing until an operator resumes it.
    Respect,
}

impl Playbook {
    /// The playbook's name.
    pub fn name(&self) -> &str {
        &self.metadata.name.value
    }

    /// The destination a target refers to (None when the index is out of range).
    pub fn destination(&self, target: Target) -> Option<&Destination> {
        match target {
            Target::Primary => Some(&self.spec.primary),
            Target::Failover(i) => self.spec.failover.value.get(i),
        }
    }

    /// Every destination with its target: the primary, then each failover target in order.
    pub fn destinations(&self) -> impl Iterator<Item = (Target, &Destination)> {
        std::iter::once((Target::Primary, &self.spec.primary)).chain(
            self.spec
                .failover
                .value
                .iter()
                .enumerate()
                .map(|(i, d)| (Target::Failover(i), d)),
        )
    }

    /// The route steps as a slice (percent on the primary).
    pub fn failback_steps(&self) -> &[u8] {
        &self.spec.failback.steps.value
    }
}
