//! The route arithmetic of a fault drill: writing a drill's Istio `fault` into a
//! VirtualService value ([`add_fault`]) and taking every drill fault out again
//! ([`remove_faults`]), so that `remove_faults(add_fault(vs)) == vs` exactly. Pure.
//!
//! `scope: probes` adds, first in `http[]`, a copy of the guarded route named
//! `failoverd-drill-<run id>` whose matches are the guarded route's each ANDed with the
//! header `x-failoverd-drill: { exact: <run id> }`: only requests carrying the header (the
//! drill's probes) take it, everything else falls through to the routes as they were. The
//! route's name is its own marker, so a leftover is found without any other record.
//!
//! `scope: all` sets the fault on the guarded route itself; the annotation [`DRILL_FAULT`]
//! records the run and the route's own `fault` before (usually none), so removal restores it.

use serde_json::{Map, Value, json};

use super::{StoreError, check_kind, object_name, route_index};
use crate::drill::inject::{DRILL_HEADER, Inject, Scope};
use crate::playbook::Playbook;

/// Prefix of the name of a drill's fault route; the rest is the run id.
pub const DRILL_ROUTE_PREFIX: &str = "failoverd-drill-";
/// Annotation recording a `scope: all` drill fault on the guarded route: JSON
/// `{ "run": id, "fault": <the route's own fault before, or null> }`.
pub const DRILL_FAULT: &str = "failoverd.dev/drill-fault";

/// The name of run `run_id`'s fault route.
pub fn drill_route_name(run_id: &str) -> String {
    format!("{DRILL_ROUTE_PREFIX}{run_id}")
}

/// True when `route` (an element of `spec.http`) is a drill's fault route.
pub fn is_drill_route(route: &Value) -> bool {
    route
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.starts_with(DRILL_ROUTE_PREFIX))
}

/// The run ids of every drill fault `vs` holds: fault routes by name, and a `scope: all`
/// fault by its annotation (an unreadable annotation counts as a fault of run `?`).
pub fn faults_in(vs: &Value) -> Vec<String> {
    let mut out: Vec<String> = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| is_drill_route(r))
        .filter_map(|r| r.get("name").and_then(Value::as_str))
        .map(|n| n.trim_start_matches(DRILL_ROUTE_PREFIX).to_string())
        .collect();
    if let Some(a) = vs
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DRILL_FAULT))
    {
        let run = a
            .as_str()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| v.get("run").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| "?".into());
        out.push(run);
    }
    out
}

/// A run id usable as a header value and in a route name: 1 to 63 of `[a-z0-9-]`.
fn check_run_id(run_id: &str, object: &str) -> Result<(), StoreError> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 63
        && run_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            object: object.to_string(),
            message: format!("drill run id `{run_id}` is not 1 to 63 of [a-z0-9-]"),
        })
    }
}

/// The guarded route's matches, each ANDed with the drill header (just the header when the
/// route has none).
fn drill_matches(guarded: &Map<String, Value>, run_id: &str) -> Value {
    let header = json!({ "exact": run_id });
    let matches: Vec<Value> = match guarded.get("match").and_then(Value::as_array) {
        Some(ms) if !ms.is_empty() => ms
            .iter()
            .map(|m| {
                let mut m = m.as_object().cloned().unwrap_or_default();
                let headers = m.entry("headers").or_insert_with(|| json!({}));
                if let Some(h) = headers.as_object_mut() {
                    h.insert(DRILL_HEADER.into(), header.clone());
                } else {
                    *headers = json!({ DRILL_HEADER: header.clone() });
                }
                Value::Object(m)
            })
            .collect(),
        _ => vec![json!({ "headers": { DRILL_HEADER: header } })],
    };
    Value::Array(matches)
}

/// Writes run `run_id`'s fault into `vs` for playbook `pb` (see the module doc). Refuses
/// ([`StoreError::Invalid`]) when a drill fault is already there: one at a time.
pub fn add_fault(
    vs: &mut Value,
    pb: &Playbook,
    run_id: &str,
    inject: &Inject,
) -> Result<(), StoreError> {
    check_kind(vs, pb)?;
    let object = object_name(pb);
    check_run_id(run_id, &object)?;
    if let Some(run) = faults_in(vs).first() {
        return Err(StoreError::Invalid {
            object,
            message: format!("a drill fault (run {run}) is already written; remove it first"),
        });
    }
    let i = route_index(vs, pb)?;
    let malformed = |message: String| StoreError::Malformed {
        object: object.clone(),
        message,
    };
    let guarded = vs
        .pointer(&format!("/spec/http/{i}"))
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| malformed(format!("spec.http[{i}] is not an object")))?;
    match inject.scope.value {
        Scope::Probes => {
            let mut copy = guarded.clone();
            copy.insert("name".into(), Value::String(drill_route_name(run_id)));
            copy.insert("match".into(), drill_matches(&guarded, run_id));
            copy.insert("fault".into(), inject.fault());
            let http = vs
                .pointer_mut("/spec/http")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| malformed("spec.http is missing or not a list".into()))?;
            http.insert(0, Value::Object(copy));
        }
        Scope::All => {
            let record = json!({ "run": run_id, "fault": guarded.get("fault").cloned().unwrap_or(Value::Null) });
            let meta = vs
                .as_object_mut()
                .and_then(|o| {
                    o.entry("metadata")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                })
                .ok_or_else(|| malformed("metadata is not an object".into()))?;
            meta.entry("annotations")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or_else(|| malformed("metadata.annotations is not an object".into()))?
                .insert(DRILL_FAULT.into(), Value::String(record.to_string()));
            if let Some(slot) = vs
                .pointer_mut(&format!("/spec/http/{i}"))
                .and_then(Value::as_object_mut)
            {
                slot.insert("fault".into(), inject.fault());
            }
        }
    }
    Ok(())
}

/// Takes every drill fault out of `vs`: every `failoverd-drill-*` route, and a `scope: all`
/// fault on `pb`'s guarded route (restoring the route's own `fault` recorded before). Returns
/// the run ids removed; empty means `vs` held none and is unchanged.
pub fn remove_faults(vs: &mut Value, pb: &Playbook) -> Result<Vec<String>, StoreError> {
    let found = faults_in(vs);
    if found.is_empty() {
        return Ok(found);
    }
    check_kind(vs, pb)?;
    let object = object_name(pb);
    if let Some(http) = vs.pointer_mut("/spec/http").and_then(Value::as_array_mut) {
        http.retain(|r| !is_drill_route(r));
    }
    let record = vs
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.remove(DRILL_FAULT));
    if let Some(record) = record {
        let before = record
            .as_str()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .ok_or_else(|| StoreError::Malformed {
                object: object.clone(),
                message: format!("annotation {DRILL_FAULT} is not failoverd's JSON"),
            })?
            .get("fault")
            .cloned()
            .unwrap_or(Value::Null);
        let i = route_index(vs, pb)?;
        if let Some(slot) = vs
            .pointer_mut(&format!("/spec/http/{i}"))
            .and_then(Value::as_object_mut)
        {
            if before.is_null() {
                slot.remove("fault");
            } else {
                slot.insert("fault".into(), before);
            }
        }
        if let Some(meta) = vs.pointer_mut("/metadata").and_then(Value::as_object_mut)
            && meta
                .get("annotations")
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
        {
            meta.remove("annotations");
        }
    }
    Ok(found)
}

/// One change of a drill's fault, as the writer carries it.
#[derive(Clone, Debug)]
pub enum FaultEdit {
    /// Write run `run`'s fault (see [`add_fault`]).
    Add {
        /// The drill run's id.
        run: String,
        /// The fault.
        inject: Box<Inject>,
    },
    /// Take every drill fault out (see [`remove_faults`]).
    Remove,
}

impl FaultEdit {
    /// Applies the edit to `vs`; false when `vs` already is as the edit wants it (the same
    /// run's fault written, or no fault to remove), so nothing needs writing.
    pub fn apply(&self, vs: &mut Value, pb: &Playbook) -> Result<bool, StoreError> {
        match self {
            FaultEdit::Add { run, .. } if faults_in(vs) == std::slice::from_ref(run) => Ok(false),
            FaultEdit::Add { run, inject } => add_fault(vs, pb, run, inject).map(|()| true),
            FaultEdit::Remove => remove_faults(vs, pb).map(|r| !r.is_empty()),
        }
    }

    /// `drill-fault-written` or `drill-fault-removed`: the audit action of the edit.
    pub fn action(&self) -> &'static str {
        match self {
            FaultEdit::Add { .. } => "drill-fault-written",
            FaultEdit::Remove => "drill-fault-removed",
        }
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
