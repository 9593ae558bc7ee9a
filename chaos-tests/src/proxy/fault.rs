//! Istio's `HTTPFaultInjection` as Envoy's fault filter applies it: `delay.fixedDelay` and
//! `abort.httpStatus` / `abort.grpcStatus`, each for its own `percentage.value` of requests,
//! rolled independently per request; the delay comes first, then the abort (or the upstream).

use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use serde_json::Value;

/// How a request is aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abort {
    /// `abort.httpStatus`: that status, without contacting the upstream.
    Http(u16),
    /// `abort.grpcStatus`: HTTP 200, `content-type: application/grpc` and `grpc-status: code`.
    Grpc {
        /// The name as written (`UNAVAILABLE`).
        name: String,
        /// Its numeric code (14).
        code: u8,
    },
}

/// A route's compiled `fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// The delay and the percentage of requests it applies to.
    pub delay: Option<(Duration, f64)>,
    /// The abort and the percentage of requests it applies to.
    pub abort: Option<(Abort, f64)>,
}

/// What the fault does to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<Abort>,
}

/// gRPC status codes by the names the CRD uses (grpc/doc/statuscodes.md).
const GRPC_CODES: [&str; 17] = [
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

/// The numeric gRPC status code of `name` (`UNAVAILABLE` -> 14); None for an unknown name.
pub fn grpc_code(name: &str) -> Option<u8> {
    GRPC_CODES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// `percentage.value` of `obj` (absent: 100); `percent` (deprecated integer) when only it is
/// set. Outside 0..=100 is an error, as Istio's validation says.
fn percentage(obj: &serde_json::Map<String, Value>, at: &str) -> anyhow::Result<f64> {
    let p = match (obj.get("percentage"), obj.get("percent")) {
        (Some(p), _) => match p.get("value") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .with_context(|| format!("{at}.percentage.value: expected a number"))?,
        },
        (None, Some(p)) => p
            .as_f64()
            .with_context(|| format!("{at}.percent: expected a number"))?,
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&p) {
        bail!("{at}: percentage {p} outside 0-100");
    }
    Ok(p)
}

impl Fault {
    /// Compiles the `fault` object found at `at` (e.g. `http[0].fault`). Errors name the
    /// field: neither `abort` nor `delay`, an abort without a status, an unknown gRPC name, an
    /// unparsable or sub-millisecond delay, a percentage outside 0-100, an unsupported kind
    /// (`http2Error`, `exponentialDelay`).
    pub fn parse(v: &Value, at: &str) -> anyhow::Result<Self> {
        let obj = v
            .as_object()
            .with_context(|| format!("{at}: expected an object"))?;
        let mut fault = Fault {
            delay: None,
            abort: None,
        };
        if let Some(d) = obj.get("delay") {
            let here = format!("{at}.delay");
            let d = d
                .as_object()
                .with_context(|| format!("{here}: expected an object"))?;
            let Some(fixed) = d.get("fixedDelay") else {
                bail!("{here}: only fixedDelay is supported");
            };
            let text = fixed
                .as_str()
                .with_context(|| format!("{here}.fixedDelay: expected a duration string"))?;
            let dur = parse_duration(text)
                .with_context(|| format!("{here}.fixedDelay: {text:?} is not a duration"))?;
            if dur < Duration::from_millis(1) {
                bail!("{here}.fixedDelay: must be a valid duration greater than 1ms");
            }
            fault.delay = Some((dur, percentage(d, &here)?));
        }
        if let Some(a) = obj.get("abort") {
            let here = format!("{at}.abort");
            let a = a
                .as_object()
                .with_context(|| format!("{here}: expected an object"))?;
            let abort = match (a.get("httpStatus"), a.get("grpcStatus")) {
                (Some(s), None) => {
                    let code = s
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok())
                        .filter(|c| (200..=599).contains(c))
                        .with_context(|| format!("{here}.httpStatus: {s} is not 200-599"))?;
                    Abort::Http(code)
                }
                (None, Some(g)) => {
                    let name = g
                        .as_str()
                        .with_context(|| format!("{here}.grpcStatus: expected a string"))?;
                    let code = grpc_code(name).with_context(|| {
                        format!("{here}.grpcStatus: unknown gRPC status {name:?}")
                    })?;
                    Abort::Grpc {
                        name: name.to_string(),
                        code,
                    }
                }
                (Some(_), Some(_)) => bail!("{here}: only one of httpStatus, grpcStatus"),
                (None, None) => bail!("{here}: httpStatus or grpcStatus is required"),
            };
            fault.abort = Some((abort, percentage(a, &here)?));
        }
        if fault.delay.is_none() && fault.abort.is_none() {
            bail!("{at}: one of abort or delay must be set");
        }
        Ok(fault)
    }

    /// Rolls `rng` for this request: once for the delay, once for the abort (Envoy decides
    /// each on its own), each applying when a uniform draw in [0, 100) is below its percentage.
    pub fn roll(&self, rng: &mut impl Rng) -> Decision {
        let mut hit = |p: f64| rng.random::<f64>() * 100.0 < p;
        let delay = self.delay.and_then(|(d, p)| hit(p).then_some(d));
        let abort = self
            .abort
            .as_ref()
            .and_then(|(a, p)| hit(*p).then(|| a.clone()));
        Decision { delay, abort }
    }
}

/// A protobuf/Go-style duration string (`3s`, `500ms`, `1.5s`, `1m`) as Istio writes it.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let d: jiff::SignedDuration = text.trim().parse()?;
    Duration::try_from(d).context("negative duration")
}
