//! Validation of Istio `VirtualService` and `DestinationRule` objects the way a real cluster
//! does it: first the CRD's official `openAPIV3Schema` (what the Kubernetes API server checks,
//! answering 422 Invalid), then the rules of istiod's validating webhook `validation.istio.io`
//! (answering 400 "admission webhook ... denied the request").
//!
//! The schemas are the ones Istio ships (`core/schemas/istio-networking-crds.yaml`, see
//! `core/schemas/SOURCE.md` for provenance), compiled once. The schema alone is loose on
//! purpose (a negative weight passes it), which is why the webhook rules are re-implemented
//! here from istio/istio `pkg/config/validation`. CEL rules (`x-kubernetes-validations`) are
//! not evaluated.
//!
//! The schema loading and check are in `schema`, istiod's VirtualService rules in
//! `virtual_service`, the DestinationRule rules in `destination_rule` and the name rules both
//! use in `names`.

use serde_json::Value;

mod destination_rule;
mod names;
mod schema;
#[cfg(test)]
mod tests;
mod virtual_service;

pub use destination_rule::check_destination_rule;
pub use names::is_dns1123_subdomain;
pub use schema::prune;
pub use virtual_service::check_virtual_service;

#[cfg(test)]
use schema::{SCHEMAS, pointer_to_path};

/// The API group of both kinds.
pub const GROUP: &str = "networking.istio.io";
/// The served versions of both CRDs, storage version first.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Which check a [`Violation`] comes from: the API server answers them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The CRD's openAPIV3Schema (or object-level rules of the API server): 422 Invalid.
    Schema,
    /// istiod's validating webhook: 400 with `admission webhook "validation.istio.io" denied
    /// the request: configuration is invalid: ...`.
    Webhook,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong, in the words of the API server or istiod.
    pub message: String,
    /// Which check found it.
    pub source: Source,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Validates a whole VirtualService object (apiVersion/kind/metadata/spec JSON) against the
/// official Istio CRD openAPIV3Schema (the served version named by apiVersion: v1, v1beta1,
/// v1alpha3) and the istiod validating-webhook rules. Ok(()) or every violation, each naming
/// the JSON path, e.g. `spec.http[0].route[1].weight: weight -3 < 0`.
pub fn validate_virtual_service(obj: &Value) -> Result<(), Vec<String>> {
    to_result(check_virtual_service(obj))
}

/// Same for a DestinationRule (schema only + subset name DNS-1123 label).
pub fn validate_destination_rule(obj: &Value) -> Result<(), Vec<String>> {
    to_result(check_destination_rule(obj))
}

fn to_result(v: Vec<Violation>) -> Result<(), Vec<String>> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(v.iter().map(Violation::to_string).collect())
    }
}
