//! Request bodies: reading, the JSON content type, and parsing and checking the fields of
//! the override and drill-run bodies (each bad field a 4xx naming it).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::playbook::{Duration as PbDuration, Target};
use crate::shared::ControlKind;

use super::error::{ApiError, ApiResult};
use super::schema;
use super::state::{DEFAULT_TTL, MAX_BODY, MAX_REASON, MAX_TTL};

/// Body of the mutating calls. Only `reason` is required; the other fields apply to some
/// calls only (see each call) and are refused (422) where they do not.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OverrideRequest, example = json!({ "reason": "INC-1234: eu-west primary degraded", "ttl": "1h" }))]
pub(super) struct Body {
    /// Why (an incident id, a change ticket): goes into the audit log. Not empty, at most
    /// 1024 characters.
    #[schema(min_length = 1, max_length = 1024)]
    pub(super) reason: String,
    /// How long a failover hold or freeze lasts (`30m`, `2h`, `1d`); default `1h`, greater
    /// than 0 and at most 7 days. Failover and freeze only.
    #[serde(default)]
    #[schema(example = "1h")]
    pub(super) ttl: Option<String>,
    /// Failover target: `failover[N]` or N; default: the first healthy target. Failover only.
    #[serde(default)]
    #[schema(value_type = Option<schema::TargetSpec>)]
    pub(super) target: Option<Value>,
    /// Route there even if failoverd believes the target (or, for failback, the primary)
    /// unhealthy. Failover and failback only.
    #[serde(default)]
    pub(super) force: bool,
    /// Failover only, admin only: ask for a two-person break-glass past residency and mesh
    /// policy. Answered 202 with the request's id; a *different* admin approves it with
    /// `POST /v1/breakglass/{id}/approve` within 10 minutes. Needs `target`; `ttl` at most 1h.
    #[serde(default, rename = "breakGlass")]
    pub(super) break_glass: bool,
}

/// The request body, or the JSON error for one that could not be read (too large: 413).
pub(super) fn read_body(body: &Result<Bytes, BytesRejection>) -> ApiResult<&Bytes> {
    body.as_ref().map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(e.status(), "cannot read the request body").detail(json!(e.body_text()))
        }
    })
}

pub(super) fn parse_body(bytes: &Bytes) -> ApiResult<Body> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    let body: Body = serde_json::from_slice(bytes).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid request body").detail(json!(e.to_string()))
    })?;
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reason must not be empty").detail(
                json!("say why, e.g. an incident id: it goes into the audit log"),
            ),
        );
    }
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason longer than {MAX_REASON} characters"),
        ));
    }
    Ok(body)
}

pub(super) fn ttl_of(body: &Body) -> ApiResult<Duration> {
    let Some(t) = &body.ttl else {
        return Ok(DEFAULT_TTL);
    };
    let d = PbDuration::parse(t).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid ttl").detail(json!(e))
    })?;
    if d.get().is_zero() || d.get() > MAX_TTL {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl must be greater than 0s and at most 7d",
        ));
    }
    Ok(d.get())
}

pub(super) fn target_of(body: &Body) -> ApiResult<Option<usize>> {
    let bad = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "target must be `failover[N]` or N",
        )
    };
    match &body.target {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => match s.parse::<Target>() {
            Ok(Target::Failover(i)) => Ok(Some(i)),
            Ok(Target::Primary) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "target `primary`: use failback to return to the primary",
            )),
            Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
        },
        Some(_) => Err(bad()),
    }
}

pub(super) fn control_kind(action: &str, body: &Body) -> ApiResult<ControlKind> {
    let only = |what: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} does not apply to {action}"),
        )
    };
    if body.break_glass && action != "failover" {
        return Err(only("breakGlass"));
    }
    match action {
        "failover" => Ok(ControlKind::Failover {
            target: target_of(body)?,
            force: body.force,
            ttl: ttl_of(body)?,
            break_glass: None,
        }),
        "failback" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.ttl.is_some() {
                return Err(only("ttl"));
            }
            Ok(ControlKind::Failback { force: body.force })
        }
        "freeze" => {
            if body.target.is_some() {
                return Err(only("target"));
            }
            if body.force {
                return Err(only("force"));
            }
            Ok(ControlKind::Freeze { ttl: ttl_of(body)? })
        }
        "resume" => {
            if body.target.is_some() || body.ttl.is_some() || body.force {
                return Err(only("target, ttl or force"));
            }
            Ok(ControlKind::Resume)
        }
        other => Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown action `{other}`"))
                .detail(json!("one of failover, failback, freeze, resume")),
        ),
    }
}

/// Body of `POST /v1/drills/{name}/run` (optional: an empty body is a plain run).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DrillRunRequest, example = json!({ "reason": "quarterly DR exercise CHG-881", "force": false }))]
pub(super) struct DrillBody {
    /// Why (goes into the audit log and the report); default `on demand`.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub(super) reason: Option<String>,
    /// Run on a blocked date or outside the allowed windows. Safety rules (a playbook
    /// failed over, frozen, held or already in a drill) are never forced.
    #[serde(default)]
    pub(super) force: bool,
}

/// The drill-run body (empty: a plain run) and its reason (default `on demand`).
pub(super) fn parse_drill_body(bytes: &Bytes) -> ApiResult<(DrillBody, String)> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        ));
    }
    let b: DrillBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DrillBody::default()
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            let status = match e.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, "invalid request body").detail(json!(e.to_string()))
        })?
    };
    let reason = b
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("on demand")
        .to_string();
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason longer than {MAX_REASON} characters"),
        ));
    }
    Ok((b, reason))
}

/// 415 unless a non-empty body says it is JSON (`Content-Type: application/json`, with
/// optional parameters). An empty body needs no type (its own error, or a plain drill run).
pub(super) fn require_json(headers: &HeaderMap, bytes: &Bytes) -> ApiResult<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let ok = ct.as_deref().is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "request body must be JSON (Content-Type: application/json)",
    )
    .detail(match ct {
        Some(v) => json!(format!(
            "got Content-Type `{}`",
            v.chars().take(100).collect::<String>().escape_debug()
        )),
        None => json!("no Content-Type header"),
    }))
}

/// The `reason` of a body that was refused, if it has one (for the audit record).
pub(super) fn reason_of(body: &Result<Bytes, BytesRejection>) -> String {
    body.as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::response::IntoResponse;
    use proptest::prelude::*;

    /// Checks an error answer: a 4xx status and a JSON body `{ error: <non-empty>, detail }`.
    fn assert_json_error(e: ApiError) -> Result<(), TestCaseError> {
        let status = e.status;
        prop_assert!(status.is_client_error(), "{status}");
        let resp = e.into_response();
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        prop_assert!(v.as_object().unwrap().contains_key("detail"), "{v}");
        Ok(())
    }

    /// Runs a body through every step a mutating call takes: the drill-run parser, the
    /// override parser, then each action's fields. Never panics; every refusal is a 4xx JSON
    /// error.
    fn check_body(bytes: &[u8]) -> Result<(), TestCaseError> {
        match parse_drill_body(&Bytes::copy_from_slice(bytes)) {
            Err(e) => assert_json_error(e)?,
            Ok((_, reason)) => {
                prop_assert!(!reason.is_empty() && reason.chars().count() <= MAX_REASON);
            }
        }
        match parse_body(&Bytes::copy_from_slice(bytes)) {
            Err(e) => assert_json_error(e)?,
            Ok(body) => {
                prop_assert!(!body.reason.trim().is_empty());
                prop_assert!(body.reason.trim().chars().count() <= MAX_REASON);
                for action in ["failover", "failback", "freeze", "resume", "nonsense"] {
                    if let Err(e) = control_kind(action, &body) {
                        assert_json_error(e)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Any JSON value, a few levels deep, with the body's own keys likely.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            prop_oneof![
                Just("failover[0]"),
                Just("failover[99999999999999999999]"),
                Just("primary"),
                Just("1h"),
                Just("0s"),
                Just("8d"),
                Just("18446744073709551615s"),
                Just("\u{0}\n\r"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("reason".to_string()),
                            Just("ttl".to_string()),
                            Just("target".to_string()),
                            Just("force".to_string()),
                            "[a-z]{1,6}",
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Ensures arbitrary bytes as a request body never panic the parser and every
        /// refusal is a JSON error.
        #[test]
        fn any_bytes_are_a_json_error_or_a_body(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_body(&bytes)?;
        }

        /// Ensures arbitrary JSON (objects with the body's keys and odd values) never panics
        /// the parser or the per-action checks.
        #[test]
        fn any_json_is_a_json_error_or_a_body(v in json_value()) {
            check_body(&serde_json::to_vec(&v).unwrap())?;
        }

        /// Ensures a well-formed body with arbitrary field values never panics, whatever the
        /// ttl, target and reason hold.
        #[test]
        fn any_field_values_are_checked(
            reason in ".{0,1100}",
            ttl in proptest::option::of(".{0,12}|[0-9]{1,25}[a-z]{1,2}"),
            target in proptest::option::of(prop_oneof![
                ".{0,20}".prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                "failover\\[[0-9]{0,25}\\]".prop_map(Value::from),
            ]),
            force in any::<bool>(),
        ) {
            let v = json!({ "reason": reason, "ttl": ttl, "target": target, "force": force });
            check_body(&serde_json::to_vec(&v).unwrap())?;
        }

        /// Ensures any Content-Type value and body give Ok or a 415 JSON error, never a panic.
        #[test]
        fn any_content_type_is_checked(ct in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), body in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut headers = HeaderMap::new();
            if let Some(v) = ct.and_then(|b| header::HeaderValue::from_bytes(&b).ok()) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            if let Err(e) = require_json(&headers, &Bytes::from(body)) {
                prop_assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
                assert_json_error(e)?;
            }
        }
    }
}
