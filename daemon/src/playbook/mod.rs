//! Playbooks at the daemon's edge. The model, parsing and validation are
//! [`failoverd_core::playbook`], re-exported here so `crate::playbook::...` paths hold; this
//! module adds what needs files or the probe library: loading from disk ([`load_paths`]),
//! the probe library's option checks ([`ProbeLibrary`], used by [`Validate::validate`]), and
//! the probe descriptions the runner is built from ([`ToProbe`]).

mod load;
#[cfg(test)]
mod probe_tests;
#[cfg(test)]
mod tests;

pub use failoverd_core::playbook::*;
pub(crate) use load::collect_files;
pub use load::{is_drill_file, load_file, load_paths};

/// The probe library's own checks of probe and scrape options: a playbook is refused for
/// exactly what its probes would fail on at run time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeLibrary;

impl ProbeChecks for ProbeLibrary {
    fn http(&self, check: &HttpCheck) -> Result<(), OptionProblem> {
        let kind = failover_probes::ProbeKind::Http(check.to_probe());
        failover_probes::check_kind(&kind).map_err(|e| OptionProblem {
            field: match &e {
                failover_probes::ProbeError::InvalidHttpOption { field, .. } => field,
                failover_probes::ProbeError::InvalidExpectStatus { .. } => "expectStatus",
                _ => "url",
            }
            .to_owned(),
            message: e.to_string(),
        })
    }

    fn grpc(&self, check: &GrpcCheck) -> Result<(), OptionProblem> {
        let kind = failover_probes::ProbeKind::Grpc(check.to_probe());
        failover_probes::check_kind(&kind).map_err(|e| OptionProblem {
            field: match &e {
                failover_probes::ProbeError::InvalidGrpcOption { field, .. } => field,
                _ => "address",
            }
            .to_owned(),
            message: e.to_string(),
        })
    }

    fn tcp(&self, check: &TcpCheck) -> Result<(), OptionProblem> {
        let kind = failover_probes::ProbeKind::Tcp(check.to_probe());
        failover_probes::check_kind(&kind).map_err(|e| OptionProblem {
            field: "address".to_owned(),
            message: e.to_string(),
        })
    }

    fn matcher(&self, label: &str, value: &str) -> Result<(), String> {
        failover_probes::scrape::Matcher::parse(label, value)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Full validation of a playbook: the core's rules plus the probe library's option checks.
pub trait Validate {
    /// Checks references and sense; returns every problem found (empty when valid).
    fn validate(&self, file: &str) -> Vec<Problem>;
}

impl Validate for Playbook {
    fn validate(&self, file: &str) -> Vec<Problem> {
        self.validate_with(file, &ProbeLibrary)
    }
}

/// The probe library's description of a playbook check.
pub trait ToProbe {
    /// The probe library's type for this check.
    type Probe;
    /// The probe library's description of this check.
    fn to_probe(&self) -> Self::Probe;
}

impl ToProbe for HttpCheck {
    type Probe = failover_probes::HttpProbe;
    fn to_probe(&self) -> failover_probes::HttpProbe {
        failover_probes::HttpProbe {
            url: self.url.value.clone(),
            method: self.method.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            expect_status: self.expect_status.clone(),
            body_contains: self.body_contains.clone(),
            body_matches: self.body_matches.clone(),
            follow_redirects: self.follow_redirects,
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
            connect_timeout: self.connect_timeout.map(|d| d.get()),
            fresh_connection: self.fresh_connection,
            http2: self.http2,
        }
    }
}

impl ToProbe for TcpCheck {
    type Probe = failover_probes::TcpProbe;
    fn to_probe(&self) -> failover_probes::TcpProbe {
        failover_probes::TcpProbe {
            address: self.address.value.clone(),
            send: self.send.as_ref().map(|s| s.as_bytes().to_vec()),
            expect: self.expect.as_ref().map(|s| s.as_bytes().to_vec()),
        }
    }
}

impl ToProbe for GrpcCheck {
    type Probe = failover_probes::GrpcProbe;
    fn to_probe(&self) -> failover_probes::GrpcProbe {
        failover_probes::GrpcProbe {
            address: self.address.value.clone(),
            service: self.service.clone(),
            authority: self.authority.clone(),
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
            connect_timeout: self.connect_timeout.map(|d| d.get()),
        }
    }
}
