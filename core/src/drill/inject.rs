//! `spec.inject` of a drill: a fault written into the guarded VirtualService through Istio's
//! own `HTTPFaultInjection`, so the drill proves detection as well as the move. What is
//! checked here is what Istio checks (one of `abort`/`delay`, percentages 0–100, an HTTP
//! status Envoy can return, a gRPC code name) plus failoverd's own guard: harming every
//! request (`scope: all`) needs `allTraffic: true` and an error-budget floor.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use serde_saphyr::{Location, Spanned};

use crate::playbook::Duration;

/// The header failoverd's probes send during a `scope: probes` fault drill; its value is the
/// run id, so only the drill's own requests match the fault route.
pub const DRILL_HEADER: &str = "x-failoverd-drill";

/// The gRPC status names Istio accepts in `abort.grpcStatus` (google.rpc.Code, upper case).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A fault to inject into the guarded route for the length of a drill.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inject {
    /// Fail requests without forwarding them: an HTTP status or a gRPC status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<InjectAbort>")]
    pub abort: Option<Spanned<InjectAbort>>,
    /// Hold requests before forwarding them (a slow primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<InjectDelay>")]
    pub delay: Option<Spanned<InjectDelay>>,
    /// Share of matching requests harmed, 0 to 100 (default 100); applied to `abort` and
    /// `delay` alike.
    #[serde(default = "hundred")]
    #[schemars(with = "f64")]
    pub percentage: Spanned<f64>,
    /// `probes` (default): only requests carrying the drill header (failoverd's own probes of
    /// the primary during the run) are harmed. `all`: every request on the guarded route.
    #[serde(default = "default_scope")]
    #[schemars(with = "Scope")]
    pub scope: Spanned<Scope>,
    /// Must be `true` for `scope: all`: the explicit statement that users will see the fault.
    #[serde(default)]
    pub all_traffic: bool,
}

fn hundred() -> Spanned<f64> {
    Spanned::new(100.0, Location::UNKNOWN, Location::UNKNOWN)
}

fn default_scope() -> Spanned<Scope> {
    Spanned::new(Scope::Probes, Location::UNKNOWN, Location::UNKNOWN)
}

/// Which requests the fault harms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only requests with `x-failoverd-drill: <run id>` (a route of their own, first in
    /// `http[]`).
    #[default]
    Probes,
    /// The guarded route itself: real users are harmed for `percentage` of requests.
    All,
}

/// `abort`: exactly one of `httpStatus` and `grpcStatus`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectAbort {
    /// HTTP status returned instead of forwarding, 200 to 599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// gRPC status name returned instead of forwarding, e.g. `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
}

/// `delay`: a fixed delay before forwarding.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectDelay {
    /// How long each harmed request waits, e.g. `3s` (at least 1ms, as Istio requires).
    pub fixed_delay: Duration,
}

/// One problem with `spec.inject`: where, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectProblem {
    /// Where in the file (UNKNOWN when the field is absent).
    pub at: Location,
    /// Dotted field path.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Inject {
    /// Checks the fault against Istio's rules and failoverd's guard. `inject_at` locates the
    /// block (for a rule about a missing field); `has_budget_floor` is whether the drill sets
    /// `abort.errorBudget`.
    pub fn check(&self, inject_at: Location, has_budget_floor: bool) -> Vec<InjectProblem> {
        let mut out = Vec::new();
        let mut push = |at: Location, field: &str, message: String| {
            out.push(InjectProblem {
                at,
                field: format!("spec.inject{field}"),
                message,
            })
        };
        if self.abort.is_none() && self.delay.is_none() {
            push(
                inject_at,
                "",
                "set `abort` or `delay` (or both): Istio refuses a fault with neither".into(),
            );
        }
        if let Some(a) = &self.abort {
            match (&a.value.http_status, &a.value.grpc_status) {
                (Some(_), Some(_)) => push(
                    a.referenced,
                    ".abort",
                    "set one of `httpStatus` and `grpcStatus`, not both".into(),
                ),
                (None, None) => push(
                    a.referenced,
                    ".abort",
                    "set `httpStatus` (200 to 599) or `grpcStatus` (e.g. UNAVAILABLE)".into(),
                ),
                (Some(s), None) if !(200..=599).contains(s) => push(
                    a.referenced,
                    ".abort.httpStatus",
                    format!("{s} is out of range: an HTTP status from 200 to 599, e.g. 503"),
                ),
                (None, Some(g)) if !GRPC_CODES.contains(&g.as_str()) => push(
                    a.referenced,
                    ".abort.grpcStatus",
                    format!(
                        "unknown gRPC status `{g}`: expected one of {}",
                        GRPC_CODES.join(", ")
                    ),
                ),
                _ => {}
            }
        }
        if let Some(d) = &self.delay
            && d.value.fixed_delay.get() < std::time::Duration::from_millis(1)
        {
            push(
                d.referenced,
                ".delay.fixedDelay",
                "must be at least 1ms (Istio's minimum)".into(),
            );
        }
        let p = self.percentage.value;
        if !(0.0..=100.0).contains(&p) {
            push(
                self.percentage.referenced,
                ".percentage",
                format!("{p} is out of range: a percentage from 0 to 100"),
            );
        } else if p == 0.0 {
            push(
                self.percentage.referenced,
                ".percentage",
                "0 harms no request: the drill could never be detected".into(),
            );
        }
        if self.scope.value == Scope::All {
            if !self.all_traffic {
                push(
                    self.scope.referenced,
                    ".allTraffic",
                    "`scope: all` harms real users: it needs `allTraffic: true`".into(),
                );
            }
            if !has_budget_floor {
                push(
                    self.scope.referenced,
                    ".scope",
                    "`scope: all` needs an error-budget floor (`spec.abort.errorBudget`)".into(),
                );
            }
        }
        out
    }

    /// The Istio `fault` object (`HTTPFaultInjection`) for this spec.
    pub fn fault(&self) -> Value {
        let pct = json!({ "value": self.percentage.value });
        let mut f = serde_json::Map::new();
        if let Some(a) = &self.abort {
            let mut o = serde_json::Map::new();
            if let Some(s) = a.value.http_status {
                o.insert("httpStatus".into(), json!(s));
            }
            if let Some(g) = &a.value.grpc_status {
                o.insert("grpcStatus".into(), json!(g));
            }
            o.insert("percentage".into(), pct.clone());
            f.insert("abort".into(), Value::Object(o));
        }
        if let Some(d) = &self.delay {
            f.insert(
                "delay".into(),
                json!({ "fixedDelay": istio_duration(d.value.fixed_delay.get()), "percentage": pct }),
            );
        }
        Value::Object(f)
    }
}

/// A duration as Istio's protobuf JSON wants it: seconds with up to 9 fraction digits and an
/// `s` suffix (`3s`, `0.250s`).
pub fn istio_duration(d: std::time::Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{}s", d.as_secs())
    } else {
        let frac = format!("{nanos:09}");
        format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Inject {
        serde_saphyr::from_str::<Inject>(text).unwrap()
    }

    fn fields(i: &Inject, budget: bool) -> Vec<String> {
        i.check(Location::UNKNOWN, budget)
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn valid_faults_pass_and_defaults_are_probes_at_100() {
        for t in [
            "abort: { httpStatus: 503 }",
            "abort: { grpcStatus: UNAVAILABLE }",
            "delay: { fixedDelay: 3s }",
            "{ abort: { httpStatus: 200 }, delay: { fixedDelay: 1ms }, percentage: 0.5 }",
            "{ abort: { httpStatus: 599 }, percentage: 100 }",
        ] {
            let i = parse(t);
            assert!(fields(&i, false).is_empty(), "{t}: {:?}", fields(&i, false));
            assert_eq!(i.scope.value, Scope::Probes);
        }
        assert_eq!(parse("delay: { fixedDelay: 1s }").percentage.value, 100.0);
    }

    #[test]
    fn each_rule_names_its_field() {
        let table: &[(&str, bool, &[&str])] = &[
            ("percentage: 50", false, &["spec.inject"]),
            (
                "abort: { httpStatus: 199 }",
                false,
                &["spec.inject.abort.httpStatus"],
            ),
            (
                "abort: { httpStatus: 600 }",
                false,
                &["spec.inject.abort.httpStatus"],
            ),
            (
                "abort: { grpcStatus: unavailable }",
                false,
                &["spec.inject.abort.grpcStatus"],
            ),
            (
                "abort: { httpStatus: 503, grpcStatus: UNAVAILABLE }",
                false,
                &["spec.inject.abort"],
            ),
            ("abort: {}", false, &["spec.inject.abort"]),
            (
                "delay: { fixedDelay: 0s }",
                false,
                &["spec.inject.delay.fixedDelay"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, percentage: 100.5 }",
                false,
                &["spec.inject.percentage"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, percentage: -1 }",
                false,
                &["spec.inject.percentage"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, percentage: 0 }",
                false,
                &["spec.inject.percentage"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, scope: all }",
                false,
                &["spec.inject.allTraffic", "spec.inject.scope"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, scope: all, allTraffic: true }",
                false,
                &["spec.inject.scope"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, scope: all }",
                true,
                &["spec.inject.allTraffic"],
            ),
            (
                "{ delay: { fixedDelay: 1s }, scope: all, allTraffic: true }",
                true,
                &[],
            ),
        ];
        for (t, budget, want) in table {
            assert_eq!(fields(&parse(t), *budget), *want, "{t}");
        }
    }

    #[test]
    fn unknown_fields_and_scopes_are_refused() {
        assert!(serde_saphyr::from_str::<Inject>("abort: { httpStatus: 503, extra: 1 }").is_err());
        assert!(serde_saphyr::from_str::<Inject>("scope: users").is_err());
        assert!(serde_saphyr::from_str::<Inject>("abortt: {}").is_err());
    }

    #[test]
    fn fault_object_is_istios_shape() {
        let i =
            parse("{ abort: { httpStatus: 503 }, delay: { fixedDelay: 250ms }, percentage: 50 }");
        assert_eq!(
            i.fault(),
            json!({
                "abort": { "httpStatus": 503, "percentage": { "value": 50.0 } },
                "delay": { "fixedDelay": "0.25s", "percentage": { "value": 50.0 } },
            })
        );
        let g = parse("abort: { grpcStatus: UNAVAILABLE }");
        assert_eq!(
            g.fault(),
            json!({ "abort": { "grpcStatus": "UNAVAILABLE", "percentage": { "value": 100.0 } } })
        );
        assert_eq!(istio_duration(std::time::Duration::from_secs(3)), "3s");
        assert_eq!(
            istio_duration(std::time::Duration::from_nanos(1_000_000_001)),
            "1.000000001s"
        );
    }
}
