//! Playbooks: the declarative description of how one service fails over and back.
//!
//! Parsing ([`parse`]) and checking ([`Playbook::validate_with`]) are separate steps: serde
//! refuses what does not fit the types (unknown fields, bad durations, YAML syntax),
//! `validate_with` refuses what fits the types but makes no sense (a probe pointing at a
//! target that does not exist, a timeout longer than its interval). Both report
//! [`Problem`]s that name file, line, column and field. Reading files (and the probe
//! library's option checks, which read CA files) is the daemon's: `failoverd::playbook`.
//!
//! The model types are in `model` (the playbook, its destinations, trigger and failback),
//! `signals` (probes and SLOs) and `target` (which destination a signal watches), parsing in
//! `parse`, the checks in `validate` and `names`, the problems they report in `problem`.
//! Files name the sibling they import from (`super::model::Playbook`), so the order between
//! them reads off the imports: `target` ← `signals` ← `model` ← `parse`, `validate`.

mod duration;
mod fence;
mod model;
mod names;
mod parse;
mod problem;
mod signals;
mod target;
mod validate;

pub use duration::Duration;
pub use fence::is_country_code;
pub use model::{
    Destination, Failback, FailbackMode, Metadata, ObjectRef, OnDrift, OnMissing, Playbook,
    PlaybookSpec, Residency, Trigger, Vantages,
};
pub use names::{check_dns_label, check_dns_subdomain, check_host};
pub use parse::{Loaded, json_schema, parse, yaml_problem};
pub use problem::{OptionProblem, Problem, Problems};
pub use signals::{
    BurnRate, GrpcCheck, HttpCheck, ProbeSpec, PromThreshold, RatioSlo, ScrapeSlo, SloSpec,
    TcpCheck, WINDOW_PLACEHOLDER,
};
pub use target::Target;
pub use validate::{MAX_SCRAPE_SAMPLES, ProbeChecks};

/// The `apiVersion` every playbook carries.
pub const API_VERSION: &str = "failoverd.dev/v1alpha1";

/// For the core's own tests: validation with every probe option accepted. The probe
/// library's checks are the daemon's to run (and to test); here fixtures only need to pass
/// the model's rules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{GrpcCheck, HttpCheck, OptionProblem, Playbook, ProbeChecks, Problem, TcpCheck};

    struct AcceptAll;

    impl ProbeChecks for AcceptAll {
        fn http(&self, _: &HttpCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn grpc(&self, _: &GrpcCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn tcp(&self, _: &TcpCheck) -> Result<(), OptionProblem> {
            Ok(())
        }
        fn matcher(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    /// `validate` under the model's rules only.
    pub(crate) trait Validate {
        fn validate(&self, file: &str) -> Vec<Problem>;
    }

    impl Validate for Playbook {
        fn validate(&self, file: &str) -> Vec<Problem> {
            self.validate_with(file, &AcceptAll)
        }
    }
}
