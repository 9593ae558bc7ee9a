//! The DestinationRule rules: the schema, then istiod's subset name check.

use serde_json::Value;

use super::names::subset_name;
use super::schema::check_schema;
use super::{Source, Violation};

/// Every violation of a DestinationRule, schema ones first. Empty means valid.
pub fn check_destination_rule(obj: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    check_schema(obj, "DestinationRule", &mut out);
    if out.is_empty() {
        let subsets = obj.pointer("/spec/subsets").and_then(Value::as_array);
        for (i, s) in subsets.into_iter().flatten().enumerate() {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            if let Err(m) = subset_name(name) {
                out.push(Violation {
                    path: format!("spec.subsets[{i}].name"),
                    message: m,
                    source: Source::Webhook,
                });
            }
        }
    }
    out
}
