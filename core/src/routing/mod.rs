//! The route arithmetic on a VirtualService value: reading failoverd's routing out of it
//! ([`view`]), rewriting it ([`apply`]) and the checks on the result ([`validate_route`]);
//! [`istio`] checks whole objects the way a cluster does. Where VirtualServices are read and
//! written (the stores) is the daemon's.
//!
//! The rewrite changes only the destinations and weights of the playbook's http route,
//! records the original route in the annotation [`ORIGINAL_ROUTE`] so failback restores it
//! exactly, and keeps every other field.

pub mod fault;
pub mod istio;

use serde_json::{Map, Value, json};

use crate::engine::Routing;
use crate::playbook::{Playbook, Target, check_host};

/// Annotation holding the route as it was before failover (JSON of `http[i].route`).
pub const ORIGINAL_ROUTE: &str = "failoverd.dev/original-route";
/// Annotation holding failoverd's routing for the route (JSON of [`Routing`]).
pub const STATE: &str = "failoverd.dev/state";
/// Annotation naming the two-person break-glass (its id) that let this routing pass the
/// residency or mesh-policy fence; present only while such a hold's routing is written.
pub const BREAK_GLASS: &str = "failoverd.dev/break-glass";

/// What a write records beside the routing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// When the last move started, so `minDwell` survives a restart.
    pub last_move: Option<jiff::Timestamp>,
    /// The approved break-glass behind this routing, if any.
    pub break_glass: Option<String>,
}

impl From<Option<jiff::Timestamp>> for Stamp {
    fn from(last_move: Option<jiff::Timestamp>) -> Self {
        Self {
            last_move,
            break_glass: None,
        }
    }
}

/// Why a store operation failed. Each variant maps to a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The VirtualService does not exist.
    #[error("VirtualService {0} not found")]
    NotFound(String),
    /// The object exists but is not a VirtualService failoverd can work on.
    #[error("VirtualService {object} is malformed: {message}")]
    Malformed {
        /// Which object.
        object: String,
        /// What is wrong.
        message: String,
    },
    /// The playbook's route is not in the VirtualService.
    #[error("VirtualService {object} has no http route {route}")]
    RouteNotFound {
        /// Which object.
        object: String,
        /// The route looked for.
        route: String,
    },
    /// Someone else changed the object between our read and our write.
    #[error("VirtualService {0} changed while failoverd was writing it")]
    Conflict(String),
    /// The result would not be a valid VirtualService; nothing was written.
    #[error("refusing to write VirtualService {object}: {message}")]
    Invalid {
        /// Which object.
        object: String,
        /// The rule it breaks.
        message: String,
    },
    /// The write landed but reading it back showed something else.
    #[error("VirtualService {object} read back differs from what was written")]
    Verify {
        /// Which object.
        object: String,
    },
    /// The API server refused the caller: a missing RBAC rule (403) or bad credentials (401).
    /// Not retried: it will not fix itself; `/readyz` reports the playbook degraded.
    #[error("{object}: {message}")]
    Forbidden {
        /// Which object.
        object: String,
        /// What is missing: the verb, resource and namespace, and the server's message.
        message: String,
    },
    /// The API server (or istiod's webhook) rejected the object as invalid (422/400). Never
    /// retried: the same request would be rejected again.
    #[error("API server rejected VirtualService {object}: {message}")]
    Rejected {
        /// Which object.
        object: String,
        /// The server's Status message.
        message: String,
    },
    /// The API server could not answer (5xx, 429, connection refused, request timeout).
    /// Retried with backoff inside the failover budget.
    #[error("API server unavailable for VirtualService {object}: {message}")]
    Unavailable {
        /// Which object.
        object: String,
        /// What happened.
        message: String,
    },
    /// This replica does not hold the leader lease (with margin): it must not write.
    #[error("not written: this replica is not the leader (fenced)")]
    Fenced,
    /// I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What failoverd was doing.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl StoreError {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Malformed { .. } => "malformed",
            StoreError::RouteNotFound { .. } => "route_not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Invalid { .. } => "invalid",
            StoreError::Verify { .. } => "verify",
            StoreError::Forbidden { .. } => "forbidden",
            StoreError::Rejected { .. } => "rejected",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Fenced => "fenced",
            StoreError::Io { .. } => "io",
        }
    }

    /// True when retrying the same write may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_) | StoreError::Io { .. } | StoreError::Unavailable { .. }
        )
    }
}

/// A VirtualService route as read from a store.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteView {
    /// failoverd's routing, from the state annotation (Primary when failoverd never moved it).
    pub routing: Routing,
    /// The route's destinations as they stand (`http[i].route`).
    pub route: Value,
    /// When failoverd last started a move on this route (from the state annotation).
    pub last_move: Option<jiff::Timestamp>,
    /// Set when the route is not what failoverd wrote for `routing`: someone (a person, a
    /// GitOps sync) changed it since. Says what differs. Always `None` on the primary, where
    /// the route is not failoverd's.
    pub drift: Option<String>,
}

/// What a write changed.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOutcome {
    /// `http[i].route` before.
    pub before: Value,
    /// `http[i].route` after (as read back).
    pub after: Value,
    /// False when the store already held this routing (nothing was written).
    pub changed: bool,
}

fn object_name(pb: &Playbook) -> String {
    pb.spec.virtual_service.to_string()
}

/// Index of the playbook's route in `spec.http`.
pub fn route_index(vs: &Value, pb: &Playbook) -> Result<usize, StoreError> {
    let object = object_name(pb);
    let http = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .ok_or_else(|| StoreError::Malformed {
            object: object.clone(),
            message: "spec.http is missing or not a list".into(),
        })?;
    match &pb.spec.route {
        // The first route that is not a drill's fault route (placed first while a drill runs).
        None => http
            .iter()
            .position(|r| !fault::is_drill_route(r))
            .ok_or_else(|| StoreError::RouteNotFound {
                object,
                route: "(first)".into(),
            }),
        Some(name) => http
            .iter()
            .position(|r| r.get("name").and_then(Value::as_str) == Some(name.value.as_str()))
            .ok_or_else(|| StoreError::RouteNotFound {
                object,
                route: name.value.clone(),
            }),
    }
}

fn annotations(vs: &Value) -> Option<&Map<String, Value>> {
    vs.pointer("/metadata/annotations")
        .and_then(Value::as_object)
}

/// Reads failoverd's routing and the route's destinations from a VirtualService.
///
/// The two failoverd annotations are outside input (anyone who can edit the object can edit
/// them): a state annotation that is not failoverd's valid JSON, names a failover target the
/// playbook does not have, splits outside 1..=99 %, or carries a `lastMove` in the future, and
/// an original route that is not a valid route, are refused as [`StoreError::Malformed`]
/// naming the annotation and the field. The playbook then stays inactive with that reason in
/// `/readyz` (`playbookErrors`) and the metrics until the object is fixed; nothing is computed
/// from the bad value.
pub fn view(vs: &Value, pb: &Playbook) -> Result<RouteView, StoreError> {
    view_at(vs, pb, jiff::Timestamp::now())
}

/// [`view`] with the current time passed in (pure).
pub fn view_at(vs: &Value, pb: &Playbook, now: jiff::Timestamp) -> Result<RouteView, StoreError> {
    check_kind(vs, pb)?;
    let object = object_name(pb);
    let i = route_index(vs, pb)?;
    let route = vs
        .pointer(&format!("/spec/http/{i}/route"))
        .cloned()
        .unwrap_or(Value::Null);
    let state = match annotations(vs).and_then(|a| a.get(STATE)) {
        None => None,
        Some(v) => {
            let text = v.as_str().ok_or_else(|| StoreError::Malformed {
                object: object.clone(),
                message: format!("annotation {STATE} is not a string"),
            })?;
            parse_state(text, pb, now).map_err(|message| StoreError::Malformed {
                object: object.clone(),
                message,
            })?
        }
    };
    let routing = state.map_or(Routing::Primary, |s| s.routing);
    let drift = if routing == Routing::Primary {
        None
    } else {
        // What failoverd would have written for this routing, from the recorded original.
        match recorded_original(vs, &object)? {
            None => Some(format!("annotation {ORIGINAL_ROUTE} is missing")),
            Some(o) => {
                let wrote = route_for(pb, routing, &o);
                (wrote != route)
                    .then(|| format!("route is {route}, failoverd wrote {wrote} for {routing}"))
            }
        }
    };
    Ok(RouteView {
        routing,
        last_move: state.and_then(|s| s.last_move),
        route,
        drift,
    })
}

/// Longest state annotation read: failoverd writes about 150 bytes; Kubernetes allows 256 KiB
/// of annotations in all, and nothing that long is failoverd's.
pub const MAX_STATE_LEN: usize = 4096;

/// How far in the future a recorded `lastMove` may lie (clock skew between replicas) before
/// the annotation is refused: a far-future `lastMove` would hold `minDwell` until that date.
pub const MAX_LAST_MOVE_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// failoverd's state for one route, as read from the state annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedState {
    /// Where failoverd routed traffic (checked against the playbook).
    pub routing: Routing,
    /// When the last move started (never later than `now` + [`MAX_LAST_MOVE_SKEW`]).
    pub last_move: Option<jiff::Timestamp>,
}

/// Parses and validates the state annotation's text for `pb` at `now`.
///
/// `Ok(None)`: the annotation is another playbook's (or another route's), so this playbook
/// has not moved the route. `Err`: the text is not a state annotation failoverd could have
/// written for this playbook; the message names the annotation and what is wrong. Never
/// panics, whatever the text.
pub fn parse_state(
    text: &str,
    pb: &Playbook,
    now: jiff::Timestamp,
) -> Result<Option<ParsedState>, String> {
    if text.len() > MAX_STATE_LEN {
        return Err(format!(
            "annotation {STATE} is {} bytes, more than the {MAX_STATE_LEN} failoverd ever writes",
            text.len()
        ));
    }
    // Read loosely first: whose annotation it is decides whether the rest must be ours.
    #[derive(serde::Deserialize)]
    struct Loose {
        playbook: String,
        route: Option<String>,
        routing: Value,
        #[serde(default, rename = "lastMove")]
        last_move: Option<Value>,
    }
    let loose: Loose = serde_json::from_str(text)
        .map_err(|e| format!("annotation {STATE} is not failoverd's state JSON: {e}"))?;
    let ours = loose.playbook == pb.name()
        && loose.route.as_deref() == pb.spec.route.as_ref().map(|r| r.value.as_str());
    if !ours {
        return Ok(None);
    }
    let routing: Routing = serde_json::from_value(loose.routing)
        .map_err(|e| format!("annotation {STATE}: field routing: {e}"))?;
    routing
        .check(pb.spec.failover.value.len())
        .map_err(|e| format!("annotation {STATE}: field routing: {e}"))?;
    let last_move = match loose.last_move {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t: jiff::Timestamp = serde_json::from_value(v)
                .map_err(|e| format!("annotation {STATE}: field lastMove: {e}"))?;
            let latest = now
                .checked_add(MAX_LAST_MOVE_SKEW)
                .unwrap_or(jiff::Timestamp::MAX);
            if t > latest {
                return Err(format!(
                    "annotation {STATE}: field lastMove {t} is in the future (now {now}); it \
                     would hold minDwell until then"
                ));
            }
            Some(t)
        }
    };
    Ok(Some(ParsedState { routing, last_move }))
}

/// The recorded original route, checked: `None` when absent; an error naming the annotation
/// when it is not JSON or not a route failoverd could restore (see [`validate_route`]; each
/// weight also at most `i32::MAX`, Istio's type).
fn recorded_original(vs: &Value, object: &str) -> Result<Option<Value>, StoreError> {
    let Some(v) = annotations(vs).and_then(|a| a.get(ORIGINAL_ROUTE)) else {
        return Ok(None);
    };
    let malformed = |message: String| StoreError::Malformed {
        object: object.to_string(),
        message: format!("annotation {ORIGINAL_ROUTE}: {message}"),
    };
    let text = v.as_str().ok_or_else(|| malformed("not a string".into()))?;
    let route: Value =
        serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
    validate_route(&route, object, false).map_err(|e| malformed(e.to_string()))?;
    if let Some(w) = route
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("weight").and_then(Value::as_u64))
        .find(|w| *w > i32::MAX as u64)
    {
        return Err(malformed(format!("weight {w} is larger than Istio allows")));
    }
    Ok(Some(route))
}

/// The state annotation: which playbook moved the route and where it points.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StateAnnotation {
    playbook: String,
    route: Option<String>,
    routing: Routing,
    /// When the last move started, so `minDwell` survives a restart.
    #[serde(default, rename = "lastMove", skip_serializing_if = "Option::is_none")]
    last_move: Option<jiff::Timestamp>,
}

fn check_kind(vs: &Value, pb: &Playbook) -> Result<(), StoreError> {
    let object = object_name(pb);
    let kind = vs.get("kind").and_then(Value::as_str);
    let api = vs.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind != Some("VirtualService") || !api.starts_with("networking.istio.io/") {
        return Err(StoreError::Malformed {
            object,
            message: format!(
                "expected apiVersion networking.istio.io/* and kind VirtualService, got {api} {}",
                kind.unwrap_or("(none)")
            ),
        });
    }
    Ok(())
}

/// Splits 100 across `weights` in proportion, by largest remainder, so the parts sum to
/// exactly `total` (integers, as Istio wants).
pub fn scale_weights(weights: &[u32], total: u32) -> Vec<u32> {
    let sum: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum == 0 {
        // All-zero or missing weights: Istio treats a lone destination as 100; split evenly.
        let mut out = vec![total / weights.len() as u32; weights.len()];
        let rest = total - out.iter().sum::<u32>();
        for o in out.iter_mut().take(rest as usize) {
            *o += 1;
        }
        return out;
    }
    let exact: Vec<(u32, u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let num = u64::from(*w) * u64::from(total);
            ((num / sum) as u32, num % sum, i)
        })
        .collect();
    let mut out: Vec<u32> = exact.iter().map(|e| e.0).collect();
    let mut rest = total - out.iter().sum::<u32>();
    let mut order: Vec<&(u32, u64, usize)> = exact.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    for e in order {
        if rest == 0 {
            break;
        }
        out[e.2] += 1;
        rest -= 1;
    }
    out
}

fn destination(pb: &Playbook, t: Target) -> Value {
    pb.destination(t)
        .map(|d| d.to_istio())
        .unwrap_or(Value::Null)
}

/// The concrete `http[i].route` for `to`, given the original route.
pub fn route_for(pb: &Playbook, to: Routing, original: &Value) -> Value {
    match to {
        Routing::Primary => original.clone(),
        Routing::Failover { target } => {
            json!([{ "destination": destination(pb, Target::Failover(target)), "weight": 100 }])
        }
        Routing::Split {
            target,
            primary_percent,
        } => {
            let p = u32::from(primary_percent.clamp(1, 99));
            let orig: Vec<Value> = original.as_array().cloned().unwrap_or_default();
            let mut out = Vec::new();
            if orig.is_empty() {
                out.push(json!({ "destination": destination(pb, Target::Primary), "weight": p }));
            } else {
                // Saturating, never truncating: a recorded weight is checked at entry
                // (`recorded_original`), and a bad one must still not wrap here.
                let w: Vec<u32> = orig
                    .iter()
                    .map(|d| {
                        let w = d.get("weight").and_then(Value::as_u64).unwrap_or(0);
                        u32::try_from(w).unwrap_or(u32::MAX)
                    })
                    .collect();
                let w = if orig.len() == 1 { vec![1] } else { w };
                for (mut d, share) in orig.into_iter().zip(scale_weights(&w, p)) {
                    if share == 0 {
                        continue;
                    }
                    if let Some(o) = d.as_object_mut() {
                        o.insert("weight".into(), share.into());
                    }
                    out.push(d);
                }
            }
            out.push(json!({ "destination": destination(pb, Target::Failover(target)), "weight": 100 - p }));
            Value::Array(out)
        }
    }
}

/// Rewrites the playbook's route in `vs` to `to`. Returns the route before. Pure.
///
/// Only `http[i].route` and failoverd's annotations change; everything else —
/// other routes, matches, retries, timeouts, headers, labels, other annotations, fields
/// failoverd does not know — is kept as it was.
pub fn apply(
    vs: &mut Value,
    pb: &Playbook,
    to: Routing,
    stamp: impl Into<Stamp>,
) -> Result<Value, StoreError> {
    let Stamp {
        last_move,
        break_glass,
    } = stamp.into();
    check_kind(vs, pb)?;
    let object = object_name(pb);
    let i = route_index(vs, pb)?;
    let before = vs
        .pointer(&format!("/spec/http/{i}/route"))
        .cloned()
        .unwrap_or(Value::Null);
    let recorded = recorded_original(vs, &object)?;
    let original = recorded.clone().unwrap_or_else(|| before.clone());
    let new_route = route_for(pb, to, &original);
    validate_route(&new_route, &object, to != Routing::Primary)?;
    let meta = vs
        .as_object_mut()
        .and_then(|o| {
            o.entry("metadata")
                .or_insert_with(|| json!({}))
                .as_object_mut()
        })
        .ok_or_else(|| StoreError::Malformed {
            object: object.clone(),
            message: "metadata is not an object".into(),
        })?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| StoreError::Malformed {
            object: object.clone(),
            message: "metadata.annotations is not an object".into(),
        })?;
    match break_glass {
        Some(id) => {
            ann.insert(BREAK_GLASS.into(), Value::String(id));
        }
        None => {
            ann.remove(BREAK_GLASS);
        }
    }
    if to == Routing::Primary {
        ann.remove(ORIGINAL_ROUTE);
        ann.remove(STATE);
    } else {
        if recorded.is_none() {
            ann.insert(ORIGINAL_ROUTE.into(), Value::String(original.to_string()));
        }
        let state = StateAnnotation {
            playbook: pb.name().to_string(),
            route: pb.spec.route.as_ref().map(|r| r.value.clone()),
            routing: to,
            last_move,
        };
        ann.insert(
            STATE.into(),
            Value::String(serde_json::to_string(&state).unwrap_or_default()),
        );
    }
    if ann.is_empty() {
        meta.remove("annotations");
    }
    let slot = vs
        .pointer_mut(&format!("/spec/http/{i}"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Malformed {
            object: object.clone(),
            message: format!("spec.http[{i}] is not an object"),
        })?;
    slot.insert("route".into(), new_route);
    Ok(before)
}

/// Checks a route failoverd is about to write: at least one destination, every host valid,
/// weights non-negative integers. A route failoverd composes (`exact_100`) must sum to 100;
/// an original route being restored keeps its own relative weights but must not sum to 0.
pub fn validate_route(route: &Value, object: &str, exact_100: bool) -> Result<(), StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        object: object.to_string(),
        message,
    };
    let dests = route
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("route has no destinations".into()))?;
    let mut sum = 0u64;
    for (i, d) in dests.iter().enumerate() {
        let host = d
            .pointer("/destination/host")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("route[{i}] has no destination.host")))?;
        check_host(host).map_err(|e| invalid(format!("route[{i}]: {e}")))?;
        match d.get("weight") {
            // Istio reads a lone destination without a weight as 100 %.
            None if dests.len() == 1 => sum += 100,
            Some(w) => {
                sum += w.as_u64().ok_or_else(|| {
                    invalid(format!(
                        "route[{i}].weight {w} is not a non-negative integer"
                    ))
                })?
            }
            None => return Err(invalid(format!("route[{i}] has no weight"))),
        }
    }
    if exact_100 && sum != 100 {
        return Err(invalid(format!("weights sum to {sum}, not 100")));
    }
    if sum == 0 {
        return Err(invalid(
            "weights sum to 0: Envoy would drop all traffic".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
