//! Notifications: every move and every refusal reaches on-call, without ever slowing a
//! routing write.
//!
//! The runtime calls [`Notifier::notify`] and [`Notifier::condition`]; both only enqueue and
//! never block. Sinks (Alertmanager, signed webhooks) deliver from their own tasks, each
//! with its own bounded queue: a full queue drops the newest item and counts it, a slow or
//! dead receiver only ever delays itself.
//!
//! - **Alertmanager** (`notify.alertmanager`): `POST <url>/api/v2/alerts` to every listed
//!   Alertmanager (as Prometheus does for an HA pair). Two *condition* alerts per playbook
//!   fire while the condition lasts and are re-sent every `resendInterval` with
//!   `endsAt = now + 4 × resendInterval` (so a dead failoverd lets them resolve instead of
//!   firing forever): `FailoverdFailedOver` (warning) while traffic is off the original
//!   route, `FailoverdStuck` (critical) while there is no healthy destination. When the
//!   condition ends they are sent with `endsAt` = the end. Other events (write failed,
//!   refused, signal unknown, freeze, override, override expired) become one-shot alerts
//!   that end after `eventTtl`.
//! - **Webhooks** (`notify.webhooks[]`): a JSON body with `"version": "1"`, signed with
//!   `X-Failoverd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//!   delivered in order per webhook with retries (exponential backoff, full jitter); an
//!   event that exhausts its attempts (or gets a 4xx other than 408/429) is dead-lettered:
//!   logged and counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, error, warn};

use crate::metrics::{Metrics, labels};

/// The webhook body's `version` field; bumped on an incompatible change.
pub const BODY_VERSION: &str = "1";
/// The webhook signature header.
pub const SIGNATURE_HEADER: &str = "X-Failoverd-Signature";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Traffic moved to a failover target (automatic or operator).
    Failover,
    /// A failback step or the completed return to the original route.
    Failback,
    /// A routing write failed (it is retried).
    WriteFailed,
    /// No healthy destination: failoverd cannot move traffic anywhere safe.
    Stuck,
    /// An operator created an override (failover hold, failback, resume, delete).
    Override,
    /// An operator froze automation.
    Freeze,
    /// An override reached its end.
    OverrideExpired,
    /// A signal has been unknown (no data) for a while.
    SignalUnknown,
    /// An operator call was refused by a rule.
    Refused,
    /// Too many playbooks breached at once (`maxConcurrentFailovers`): automatic failovers held.
    BlastRadius,
    /// A drill run ended (passed, failed, aborted or skipped); one event per drilled playbook.
    Drill,
    /// The audit log refuses appends (full disk, I/O error): no move can be made until it
    /// takes them again. Once per episode.
    AuditUnavailable,
    /// The audit log takes appends again after [`EventKind::AuditUnavailable`].
    AuditRecovered,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 13] = [
        EventKind::Failover,
        EventKind::Failback,
        EventKind::WriteFailed,
        EventKind::Stuck,
        EventKind::Override,
        EventKind::Freeze,
        EventKind::OverrideExpired,
        EventKind::SignalUnknown,
        EventKind::Refused,
        EventKind::BlastRadius,
        EventKind::Drill,
        EventKind::AuditUnavailable,
        EventKind::AuditRecovered,
    ];

    /// Stable name, as used in webhook `events:` filters and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::Failback => "failback",
            EventKind::WriteFailed => "write-failed",
            EventKind::Stuck => "stuck",
            EventKind::Override => "override",
            EventKind::Freeze => "freeze",
            EventKind::OverrideExpired => "override-expired",
            EventKind::SignalUnknown => "signal-unknown",
            EventKind::Refused => "refused",
            EventKind::BlastRadius => "blast-radius",
            EventKind::Drill => "drill",
            EventKind::AuditUnavailable => "audit-unavailable",
            EventKind::AuditRecovered => "audit-recovered",
        }
    }

    /// The kind with this stable name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// `critical`, `warning` or `info`.
    pub fn severity(&self) -> &'static str {
        match self {
            EventKind::Stuck
            | EventKind::WriteFailed
            | EventKind::BlastRadius
            | EventKind::AuditUnavailable => "critical",
            EventKind::Failover | EventKind::Refused | EventKind::SignalUnknown => "warning",
            EventKind::Failback
            | EventKind::Override
            | EventKind::Freeze
            | EventKind::OverrideExpired
            | EventKind::Drill
            | EventKind::AuditRecovered => "info",
        }
    }

    /// The Alertmanager `alertname` of this event as a one-shot alert.
    pub fn alertname(&self) -> &'static str {
        match self {
            EventKind::Failover => "FailoverdFailover",
            EventKind::Failback => "FailoverdFailback",
            EventKind::WriteFailed => "FailoverdWriteFailed",
            EventKind::Stuck => "FailoverdStuckEvent",
            EventKind::Override => "FailoverdOverride",
            EventKind::Freeze => "FailoverdFreeze",
            EventKind::OverrideExpired => "FailoverdOverrideExpired",
            EventKind::SignalUnknown => "FailoverdSignalUnknown",
            EventKind::Refused => "FailoverdRefused",
            EventKind::BlastRadius => "FailoverdBlastRadius",
            EventKind::Drill => "FailoverdDrill",
            EventKind::AuditUnavailable => "FailoverdAuditUnavailable",
            EventKind::AuditRecovered => "FailoverdAuditRecovered",
        }
    }

    fn bit(&self) -> u32 {
        1 << (*self as u32)
    }

    /// The default human summary template (see [`render`] for the placeholders).
    pub fn default_template(&self) -> &'static str {
        match self {
            EventKind::Failover => {
                "[{severity}] failoverd {playbook}: FAILED OVER {from} → {to}. Why: {reason}. By {actor}. {link}"
            }
            EventKind::Failback => {
                "[{severity}] failoverd {playbook}: failback {from} → {to}. Why: {reason}. By {actor}. {link}"
            }
            EventKind::WriteFailed => {
                "[{severity}] failoverd {playbook}: routing write FAILED ({from} → {to}), retrying. {reason}. {link}"
            }
            EventKind::Stuck => {
                "[{severity}] failoverd {playbook}: STUCK on {from}, no healthy destination to move to. {reason}. {link}"
            }
            EventKind::Override => {
                "[{severity}] failoverd {playbook}: operator override by {actor}: {reason}. Routing now {from}. {link}"
            }
            EventKind::Freeze => {
                "[{severity}] failoverd {playbook}: automation FROZEN by {actor}: {reason}. {link}"
            }
            EventKind::OverrideExpired => {
                "[{severity}] failoverd {playbook}: override ended, automation back in control. {reason}. {link}"
            }
            EventKind::SignalUnknown => {
                "[{severity}] failoverd {playbook}: signal unknown (no data), read neither healthy nor failing: {reason}. {link}"
            }
            EventKind::Refused => {
                "[{severity}] failoverd {playbook}: REFUSED: {reason}. Routing stays {from}. {link}"
            }
            EventKind::BlastRadius => {
                "[{severity}] failoverd {playbook}: BLAST RADIUS: automatic failovers held. {reason}. {link}"
            }
            EventKind::Drill => {
                "[{severity}] failoverd {playbook}: DRILL {reason}. By {actor}. {link}"
            }
            EventKind::AuditUnavailable => {
                "[{severity}] failoverd {playbook}: AUDIT LOG UNAVAILABLE, no move is made until it takes appends again: {reason}. {link}"
            }
            EventKind::AuditRecovered => {
                "[{severity}] failoverd {playbook}: audit log takes appends again; held moves proceed. {reason}. {link}"
            }
        }
    }
}

/// One event for on-call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub time: Timestamp,
    /// The playbook.
    pub playbook: String,
    /// The VirtualService `namespace/name`.
    pub service: String,
    /// The VirtualService namespace.
    pub namespace: String,
    /// Routing before (human form), if any.
    pub from: Option<String>,
    /// Routing after (human form), if any.
    pub to: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The signal values that decided it.
    pub signals: Value,
    /// `engine`, `failoverd` or the operator's identity.
    pub actor: String,
}

/// Ongoing conditions of one playbook, for alerts that fire while they last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// Traffic is not on the original route.
    pub failed_over: bool,
    /// No healthy destination to go to.
    pub stuck: bool,
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `notify:` in the daemon config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyConfig {
    /// Alertmanager sink.
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerConfig>,
    /// Signed webhooks.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// `notify.alertmanager`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertmanagerConfig {
    /// Every Alertmanager of the cluster (each gets every alert, as from Prometheus).
    pub urls: Vec<String>,
    /// Events sent as one-shot alerts (default: write-failed, refused, signal-unknown,
    /// freeze, override, override-expired, audit-unavailable, audit-recovered; failover,
    /// failback and stuck are condition alerts anyway).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// How often firing condition alerts are re-sent (default 30s; at most 1m, well inside
    /// Alertmanager's default `resolve_timeout` of 5m).
    #[serde(default)]
    pub resend_interval: Option<String>,
    /// How long a one-shot event alert stays firing (default 10m).
    #[serde(default)]
    pub event_ttl: Option<String>,
    /// Timeout of one POST (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// `runbook_url` annotation; `{playbook}` is replaced (default: the playbook's link).
    #[serde(default)]
    pub runbook_url: Option<String>,
    /// Batches queued per Alertmanager before the newest is dropped (default 64).
    #[serde(default)]
    pub queue: Option<usize>,
}

/// One `notify.webhooks[]` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Name (metrics, logs): letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Events to send (default: all).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// File holding the HMAC secret (surrounding whitespace is trimmed).
    pub secret_file: PathBuf,
    /// Summary templates by event name, or `default` for all others.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Timeout of one attempt (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts per event before it is dead-lettered (default 6).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First retry delay; doubles up to 30s, with full jitter (default 500ms).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Events queued before the newest is dropped (default 256).
    #[serde(default)]
    pub queue: Option<usize>,
}

/// A notify config problem, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct NotifyError {
    /// e.g. `notify.webhooks[0].secretFile`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> NotifyError {
    NotifyError {
        field: field.into(),
        message: message.into(),
    }
}

fn duration(
    field: &str,
    v: &Option<String>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, NotifyError> {
    let Some(s) = v else {
        return Ok(default);
    };
    let d = humantime::parse_duration(s)
        .map_err(|e| bad(field, format!("invalid duration `{s}`: {e}")))?;
    if d < min || d > max {
        return Err(bad(
            field,
            format!(
                "`{s}` is out of range ({} to {})",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn http_url(field: &str, s: &str) -> Result<reqwest::Url, NotifyError> {
    let u = reqwest::Url::parse(s).map_err(|e| bad(field, format!("invalid URL `{s}`: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad(
            field,
            format!("invalid URL `{s}`: the scheme must be http or https"),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad(field, format!("invalid URL `{s}`: no host")));
    }
    Ok(u)
}

fn event_mask(field: &str, names: &Option<Vec<String>>, default: u32) -> Result<u32, NotifyError> {
    let Some(names) = names else {
        return Ok(default);
    };
    let mut mask = 0;
    for (i, n) in names.iter().enumerate() {
        let k = EventKind::from_name(n).ok_or_else(|| {
            bad(
                format!("{field}[{i}]"),
                format!(
                    "unknown event `{n}`; expected one of {}",
                    EventKind::ALL.map(|k| k.as_str()).join(", ")
                ),
            )
        })?;
        mask |= k.bit();
    }
    Ok(mask)
}

const ALL_EVENTS: u32 = (1 << EventKind::ALL.len()) - 1;

fn am_default_events() -> u32 {
    [
        EventKind::WriteFailed,
        EventKind::Refused,
        EventKind::SignalUnknown,
        EventKind::Freeze,
        EventKind::Override,
        EventKind::OverrideExpired,
        EventKind::AuditUnavailable,
        EventKind::AuditRecovered,
    ]
    .iter()
    .fold(0, |m, k| m | k.bit())
}

fn queue_len(field: &str, v: Option<usize>, default: usize) -> Result<usize, NotifyError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=100_000).contains(&n) => Ok(n),
        Some(n) => Err(bad(field, format!("{n} is out of range (1 to 100000)"))),
    }
}

/// Alertmanager settings, checked.
#[derive(Clone, Debug)]
struct AmResolved {
    urls: Vec<reqwest::Url>,
    events: u32,
    resend: Duration,
    event_ttl: Duration,
    timeout: Duration,
    runbook: Option<String>,
    queue: usize,
}

/// Webhook settings, checked (the secret is read).
#[derive(Clone)]
struct HookResolved {
    name: String,
    url: reqwest::Url,
    events: u32,
    secret: Vec<u8>,
    templates: HashMap<EventKind, String>,
    default_template: Option<String>,
    timeout: Duration,
    max_attempts: u32,
    backoff: Duration,
    queue: usize,
}

impl std::fmt::Debug for HookResolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookResolved")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A checked notify config: URLs parsed, durations and templates valid, secrets read.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    am: Option<AmResolved>,
    hooks: Vec<HookResolved>,
}

impl NotifyConfig {
    /// Checks everything and reads the secret files; an error names the field
    /// (`notify.webhooks[1].secretFile: cannot read ...`).
    pub fn resolve(&self) -> Result<Resolved, NotifyError> {
        let am = match &self.alertmanager {
            None => None,
            Some(a) => {
                let f = "notify.alertmanager";
                if a.urls.is_empty() {
                    return Err(bad(
                        format!("{f}.urls"),
                        "at least one Alertmanager URL is needed",
                    ));
                }
                let urls = a
                    .urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| http_url(&format!("{f}.urls[{i}]"), u))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(r) = &a.runbook_url {
                    check_template(&format!("{f}.runbookUrl"), r)?;
                }
                Some(AmResolved {
                    urls,
                    events: event_mask(&format!("{f}.events"), &a.events, am_default_events())?,
                    resend: duration(
                        &format!("{f}.resendInterval"),
                        &a.resend_interval,
                        Duration::from_secs(30),
                        Duration::from_millis(100),
                        Duration::from_secs(60),
                    )?,
                    event_ttl: duration(
                        &format!("{f}.eventTtl"),
                        &a.event_ttl,
                        Duration::from_secs(600),
                        Duration::from_secs(1),
                        Duration::from_secs(7 * 24 * 3600),
                    )?,
                    timeout: duration(
                        &format!("{f}.timeout"),
                        &a.timeout,
                        Duration::from_secs(5),
                        Duration::from_millis(10),
                        Duration::from_secs(60),
                    )?,
                    runbook: a.runbook_url.clone(),
                    queue: queue_len(&format!("{f}.queue"), a.queue, 64)?,
                })
            }
        };
        let mut hooks: Vec<HookResolved> = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let f = format!("notify.webhooks[{i}]");
            if w.name.is_empty()
                || !w
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    format!("{f}.name"),
                    format!(
                        "invalid name `{}`: use letters, digits, `-`, `_` and `.`",
                        w.name
                    ),
                ));
            }
            if hooks.iter().any(|h| h.name == w.name) {
                return Err(bad(
                    format!("{f}.name"),
                    format!("duplicate webhook name `{}`", w.name),
                ));
            }
            let url = http_url(&format!("{f}.url"), &w.url)?;
            let events = event_mask(&format!("{f}.events"), &w.events, ALL_EVENTS)?;
            let sf = format!("{f}.secretFile");
            let secret = std::fs::read(&w.secret_file)
                .map_err(|e| bad(&sf, format!("cannot read {}: {e}", w.secret_file.display())))?;
            let secret = secret.trim_ascii().to_vec();
            if secret.is_empty() {
                return Err(bad(
                    &sf,
                    format!("{} holds no secret", w.secret_file.display()),
                ));
            }
            let mut templates = HashMap::new();
            let mut default_template = None;
            for (k, t) in &w.templates {
                let tf = format!("{f}.templates.{k}");
                check_template(&tf, t)?;
                if k == "default" {
                    default_template = Some(t.clone());
                } else {
                    let kind = EventKind::from_name(k).ok_or_else(|| {
                        bad(
                            &tf,
                            format!("unknown event `{k}`; expected `default` or an event name"),
                        )
                    })?;
                    templates.insert(kind, t.clone());
                }
            }
            let max_attempts = match w.max_attempts {
                None => 6,
                Some(n @ 1..=100) => n,
                Some(n) => {
                    return Err(bad(
                        format!("{f}.maxAttempts"),
                        format!("{n} is out of range (1 to 100)"),
                    ));
                }
            };
            hooks.push(HookResolved {
                name: w.name.clone(),
                url,
                events,
                secret,
                templates,
                default_template,
                timeout: duration(
                    &format!("{f}.timeout"),
                    &w.timeout,
                    Duration::from_secs(5),
                    Duration::from_millis(10),
                    Duration::from_secs(120),
                )?,
                max_attempts,
                backoff: duration(
                    &format!("{f}.backoff"),
                    &w.backoff,
                    Duration::from_millis(500),
                    Duration::from_millis(1),
                    Duration::from_secs(60),
                )?,
                queue: queue_len(&format!("{f}.queue"), w.queue, 256)?,
            });
        }
        Ok(Resolved { am, hooks })
    }
}

// ---------------------------------------------------------------------------------------
// Templates and signing
// ---------------------------------------------------------------------------------------

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 12] = [
    "event",
    "severity",
    "playbook",
    "service",
    "namespace",
    "from",
    "to",
    "reason",
    "actor",
    "link",
    "time",
    "signals",
];

/// Splits a template into literal text and placeholders; `{{` and `}}` are literal braces.
fn parse_template(t: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed `{{{name}`")),
                    }
                }
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown placeholder `{{{name}}}`; expected one of {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ));
                }
                out.push((false, std::mem::take(&mut lit)));
                out.push((true, name));
            }
            '}' => return Err("a lone `}` (write `}}` for a literal brace)".into()),
            c => lit.push(c),
        }
    }
    out.push((false, lit));
    Ok(out)
}

fn check_template(field: &str, t: &str) -> Result<(), NotifyError> {
    parse_template(t).map(|_| ()).map_err(|e| bad(field, e))
}

/// Renders a template for an event. Placeholders: [`PLACEHOLDERS`]; a missing `from`/`to`
/// renders as `-`. An invalid template renders the event's default instead.
pub fn render(template: &str, event: &Event, link: &str) -> String {
    let parts = parse_template(template)
        .or_else(|_| parse_template(event.kind.default_template()))
        .unwrap_or_default();
    let mut out = String::new();
    for (is_var, s) in parts {
        if !is_var {
            out.push_str(&s);
            continue;
        }
        match s.as_str() {
            "event" => out.push_str(event.kind.as_str()),
            "severity" => out.push_str(event.kind.severity()),
            "playbook" => out.push_str(&event.playbook),
            "service" => out.push_str(&event.service),
            "namespace" => out.push_str(&event.namespace),
            "from" => out.push_str(event.from.as_deref().unwrap_or("-")),
            "to" => out.push_str(event.to.as_deref().unwrap_or("-")),
            "reason" => out.push_str(&event.reason),
            "actor" => out.push_str(&event.actor),
            "link" => out.push_str(link),
            "time" => out.push_str(&event.time.to_string()),
            "signals" => out.push_str(&compact_signals(&event.signals)),
            _ => {}
        }
    }
    out
}

/// Signals as one line of JSON, cut at 2000 characters.
fn compact_signals(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut s = v.to_string();
    if s.len() > 2000 {
        let mut cut = 2000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Failoverd-Signature` value: `t=<t>,v1=<hex>`.
pub fn signature_header(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// What a receiver does: parse the header, recompute, compare in constant time, and refuse
/// a timestamp further than `tolerance` from `now` (replays).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    if now.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    sigs.iter().any(|s| {
        hex::decode(s)
            .ok()
            .is_some_and(|raw| mac.clone().verify_slice(&raw).is_ok())
    })
}

/// The link to a playbook's status: `<base>/v1/playbooks/<name>`.
pub fn playbook_link(base: &str, playbook: &str) -> String {
    format!("{}/v1/playbooks/{playbook}", base.trim_end_matches('/'))
}

/// The webhook body for an event (before signing).
pub fn webhook_body(event: &Event, id: &str, summary: &str, link: &str) -> Value {
    json!({
        "version": BODY_VERSION,
        "id": id,
        "event": event.kind.as_str(),
        "severity": event.kind.severity(),
        "time": event.time,
        "playbook": event.playbook,
        "service": event.service,
        "namespace": event.namespace,
        "from": event.from,
        "to": event.to,
        "reason": event.reason,
        "signals": event.signals,
        "actor": event.actor,
        "link": link,
        "summary": summary,
        // Slack-compatible incoming webhooks show `text`.
        "text": summary,
    })
}

// ---------------------------------------------------------------------------------------
// Queues and metrics
// ---------------------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bounded FIFO for one consumer task; pushing never waits.
struct Queue<T> {
    cap: usize,
    inner: Mutex<QueueInner<T>>,
    ready: Notify,
}

struct QueueInner<T> {
    items: VecDeque<(Instant, T)>,
    inflight: Option<Instant>,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Mutex::new(QueueInner {
                items: VecDeque::new(),
                inflight: None,
            }),
            ready: Notify::new(),
        }
    }

    /// False (and the item dropped) when full.
    fn try_push(&self, item: T) -> bool {
        {
            let mut q = lock(&self.inner);
            if q.items.len() >= self.cap {
                return false;
            }
            q.items.push_back((Instant::now(), item));
        }
        self.ready.notify_one();
        true
    }

    /// The next item; it counts as in flight until [`Queue::done`]. Cancel-safe.
    async fn pop(&self) -> (Instant, T) {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some((at, item)) = q.items.pop_front() {
                    q.inflight = Some(at);
                    return (at, item);
                }
            }
            self.ready.notified().await;
        }
    }

    fn done(&self) {
        lock(&self.inner).inflight = None;
    }

    /// (waiting + in flight, age of the oldest).
    fn pending(&self) -> (usize, Duration) {
        let q = lock(&self.inner);
        let oldest = q.inflight.or_else(|| q.items.front().map(|(at, _)| *at));
        (
            q.items.len() + usize::from(q.inflight.is_some()),
            oldest.map(|at| at.elapsed()).unwrap_or_default(),
        )
    }
}

/// Counts of one sink, for tests and the bench.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Delivered (2xx).
    pub sent: AtomicU64,
    /// Failed attempts that were retried.
    pub retried: AtomicU64,
    /// Given up after the last attempt (or a permanent 4xx).
    pub dead_letters: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// A snapshot of one sink's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// `webhook:<name>`, `alertmanager` (the fan-out) or `alertmanager:<host:port>`.
    pub sink: String,
    /// Delivered.
    pub sent: u64,
    /// Retried attempts.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_letters: u64,
    /// Dropped (queue full).
    pub dropped: u64,
    /// Waiting or in flight now.
    pub pending: usize,
}

#[derive(Clone)]
struct NotifyMetrics {
    total: Family<Vec<(&'static str, String)>, Counter>,
    depth: Family<Vec<(&'static str, String)>, Gauge>,
    oldest: Family<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>,
}

impl NotifyMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            total: m.notifications.clone(),
            depth: m.notification_queue_depth.clone(),
            oldest: m.notification_oldest_pending_seconds.clone(),
        }
    }

    fn count(&self, sink: &str, event: &str, result: &str) {
        self.total
            .get_or_create(&labels([
                ("sink", sink),
                ("event", event),
                ("result", result),
            ]))
            .inc();
    }
}

/// One queue as the metrics ticker sees it.
trait Pending: Send + Sync {
    fn pending(&self) -> (usize, Duration);
}

impl<T: Send> Pending for Queue<T> {
    fn pending(&self) -> (usize, Duration) {
        Queue::pending(self)
    }
}

fn jittered(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exp = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    // Full jitter in [exp/2, exp]: spread retries of many failoverd replicas apart.
    exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("failoverd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| bad("notify", format!("cannot build an HTTP client: {e}")))
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

struct Hook {
    cfg: HookResolved,
    sink: String,
    queue: Arc<Queue<Arc<Event>>>,
    stats: Arc<SinkStats>,
}

async fn webhook_task(
    hook: Arc<Hook>,
    client: reqwest::Client,
    link_base: String,
    metrics: Option<NotifyMetrics>,
) {
    loop {
        let (_, event) = hook.queue.pop().await;
        deliver_webhook(&hook, &client, &link_base, metrics.as_ref(), &event).await;
        hook.queue.done();
    }
}

async fn deliver_webhook(
    hook: &Hook,
    client: &reqwest::Client,
    link_base: &str,
    metrics: Option<&NotifyMetrics>,
    event: &Event,
) {
    let cfg = &hook.cfg;
    let link = playbook_link(link_base, &event.playbook);
    let template = cfg
        .templates
        .get(&event.kind)
        .or(cfg.default_template.as_ref())
        .map_or(event.kind.default_template(), String::as_str);
    let summary = render(template, event, &link);
    let id = format!("evt-{:016x}", rand::random::<u64>());
    let body = webhook_body(event, &id, &summary, &link).to_string();
    let ev = event.kind.as_str();
    let mut last_error = String::new();
    for attempt in 0..cfg.max_attempts {
        if attempt > 0 {
            tokio::time::sleep(jittered(cfg.backoff, attempt - 1, Duration::from_secs(30))).await;
        }
        // A fresh timestamp per attempt: receivers refuse stale ones.
        let t = Timestamp::now().as_second();
        let res = client
            .post(cfg.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature_header(&cfg.secret, t, body.as_bytes()),
            )
            .header("X-Failoverd-Event", ev)
            .header("X-Failoverd-Delivery", &id)
            .body(body.clone())
            .send()
            .await;
        let permanent = match res {
            Ok(r) if r.status().is_success() => {
                hook.stats.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = metrics {
                    m.count(&hook.sink, ev, "sent");
                }
                debug!(webhook = %cfg.name, event = ev, playbook = %event.playbook, attempt, "webhook delivered");
                return;
            }
            Ok(r) => {
                let s = r.status();
                last_error = format!("HTTP {s}");
                s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429
            }
            Err(e) => {
                last_error = if e.is_timeout() {
                    format!(
                        "timed out after {}",
                        humantime::format_duration(cfg.timeout)
                    )
                } else {
                    format!("{e}")
                };
                false
            }
        };
        if permanent || attempt + 1 == cfg.max_attempts {
            break;
        }
        hook.stats.retried.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = metrics {
            m.count(&hook.sink, ev, "retried");
        }
        debug!(webhook = %cfg.name, event = ev, attempt, error = %last_error, "webhook attempt failed; retrying");
    }
    hook.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = metrics {
        m.count(&hook.sink, ev, "dead-letter");
    }
    error!(
        webhook = %cfg.name,
        event = ev,
        playbook = %event.playbook,
        id = %id,
        error = %last_error,
        summary = %summary,
        "webhook delivery dead-lettered: on-call did not get this event through this webhook"
    );
}

// ---------------------------------------------------------------------------------------
// Alertmanager
// ---------------------------------------------------------------------------------------

enum AmMsg {
    Event(Arc<Event>),
    Condition {
        playbook: String,
        service: String,
        namespace: String,
        condition: Condition,
        at: Timestamp,
    },
}

/// Alerts sent in one POST, each with its `event` metric label.
type Batch = Arc<Vec<(String, Value)>>;

/// One Alertmanager endpoint and its queue of alert batches.
struct AmTarget {
    url: reqwest::Url,
    sink: String,
    queue: Arc<Queue<Batch>>,
    stats: Arc<SinkStats>,
}

/// A condition alert that is firing (or was just resolved and is re-sent a few times).
#[derive(Clone)]
struct CondAlert {
    since: Timestamp,
    ended: Option<Timestamp>,
    /// Re-sends left for a resolved alert (an Alertmanager that missed the first learns it).
    resends_left: u8,
    detail: Option<Arc<Event>>,
}

#[derive(Default)]
struct PbAlerts {
    service: String,
    namespace: String,
    failed_over: Option<CondAlert>,
    stuck: Option<CondAlert>,
}

struct AmState {
    cfg: AmResolved,
    link_base: String,
    playbooks: BTreeMap<String, PbAlerts>,
}

fn ts_plus(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

impl AmState {
    fn link(&self, playbook: &str) -> String {
        playbook_link(&self.link_base, playbook)
    }

    fn runbook(&self, playbook: &str) -> String {
        match &self.cfg.runbook {
            Some(r) => r.replace("{playbook}", playbook),
            None => self.link(playbook),
        }
    }

    fn condition_alert(
        &self,
        playbook: &str,
        pb: &PbAlerts,
        stuck: bool,
        a: &CondAlert,
        now: Timestamp,
    ) -> (String, Value) {
        let (alertname, severity) = if stuck {
            ("FailoverdStuck", "critical")
        } else {
            ("FailoverdFailedOver", "warning")
        };
        let link = self.link(playbook);
        let summary = match (stuck, &a.detail) {
            (false, Some(e)) => format!(
                "{playbook}: traffic failed over to {} (from {})",
                e.to.as_deref().unwrap_or("a failover target"),
                e.from.as_deref().unwrap_or("-")
            ),
            (false, None) => format!("{playbook}: traffic is off the original route"),
            (true, Some(e)) => format!(
                "{playbook}: STUCK on {}: no healthy destination",
                e.from.as_deref().unwrap_or("its current route")
            ),
            (true, None) => format!("{playbook}: STUCK: no healthy destination"),
        };
        let mut description = match &a.detail {
            Some(e) => format!(
                "{} → {}. Why: {}. By {}. Signals: {}. Since {}.",
                e.from.as_deref().unwrap_or("-"),
                e.to.as_deref().unwrap_or("-"),
                e.reason,
                e.actor,
                compact_signals(&e.signals),
                a.since
            ),
            None => format!("Since {}.", a.since),
        };
        if !stuck {
            description.push_str(
                " Fires while traffic is off the original route; resolves when failback completes.",
            );
        }
        description.push_str(&format!(" Status: {link}"));
        let ends = a
            .ended
            .unwrap_or_else(|| ts_plus(now, self.cfg.resend.saturating_mul(4)));
        (
            "condition".to_string(),
            json!({
                "labels": {
                    "alertname": alertname,
                    "playbook": playbook,
                    "severity": severity,
                    "service": pb.service,
                    "namespace": pb.namespace,
                },
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "runbook_url": self.runbook(playbook),
                },
                "startsAt": a.since,
                "endsAt": ends,
                "generatorURL": link,
            }),
        )
    }

    fn event_alert(&self, e: &Event) -> (String, Value) {
        let link = self.link(&e.playbook);
        (
            e.kind.as_str().to_string(),
            json!({
                "labels": {
                    "alertname": e.kind.alertname(),
                    "playbook": e.playbook,
                    "severity": e.kind.severity(),
                    "service": e.service,
                    "namespace": e.namespace,
                },
                "annotations": {
                    "summary": render(e.kind.default_template(), e, &link),
                    "description": format!(
                        "{} → {}. Why: {}. By {}. Signals: {}. Status: {link}",
                        e.from.as_deref().unwrap_or("-"),
                        e.to.as_deref().unwrap_or("-"),
                        e.reason,
                        e.actor,
                        compact_signals(&e.signals),
                    ),
                    "runbook_url": self.runbook(&e.playbook),
                },
                "startsAt": e.time,
                "endsAt": ts_plus(e.time, self.cfg.event_ttl),
                "generatorURL": link,
            }),
        )
    }

    /// Applies a message; returns the alerts to send now.
    fn apply(&mut self, msg: AmMsg, now: Timestamp) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        match msg {
            AmMsg::Event(e) => {
                if self.cfg.events & e.kind.bit() != 0 {
                    out.push(self.event_alert(&e));
                }
                let stuck = match e.kind {
                    EventKind::Failover => false,
                    EventKind::Stuck => true,
                    _ => return out,
                };
                // A move or a stuck verdict raises its condition at once (the runtime's
                // next condition() call confirms it); the event's details annotate it.
                let pb = self.playbooks.entry(e.playbook.clone()).or_default();
                pb.service.clone_from(&e.service);
                pb.namespace.clone_from(&e.namespace);
                let slot = if stuck {
                    &mut pb.stuck
                } else {
                    &mut pb.failed_over
                };
                match slot {
                    Some(a) if a.ended.is_none() => a.detail = Some(e.clone()),
                    _ => {
                        *slot = Some(CondAlert {
                            since: e.time,
                            ended: None,
                            resends_left: 0,
                            detail: Some(e.clone()),
                        });
                    }
                }
                out.extend(self.alerts_of(&e.playbook, now, Some(stuck)));
            }
            AmMsg::Condition {
                playbook,
                service,
                namespace,
                condition,
                at,
            } => {
                let pb = self.playbooks.entry(playbook.clone()).or_default();
                pb.service = service;
                pb.namespace = namespace;
                let mut changed = Vec::new();
                for (stuck, on) in [(false, condition.failed_over), (true, condition.stuck)] {
                    let slot = if stuck {
                        &mut pb.stuck
                    } else {
                        &mut pb.failed_over
                    };
                    match (slot.as_mut(), on) {
                        (Some(a), true) if a.ended.is_none() => {}
                        (_, true) => {
                            *slot = Some(CondAlert {
                                since: at,
                                ended: None,
                                resends_left: 0,
                                detail: None,
                            });
                            changed.push(stuck);
                        }
                        (Some(a), false) if a.ended.is_none() => {
                            a.ended = Some(at);
                            a.resends_left = 3;
                            changed.push(stuck);
                        }
                        (_, false) => {}
                    }
                }
                for stuck in changed {
                    out.extend(self.alerts_of(&playbook, now, Some(stuck)));
                }
            }
        }
        out
    }

    /// The condition alerts of one playbook (one kind, or both).
    fn alerts_of(
        &self,
        playbook: &str,
        now: Timestamp,
        only: Option<bool>,
    ) -> Vec<(String, Value)> {
        let Some(pb) = self.playbooks.get(playbook) else {
            return Vec::new();
        };
        [(false, &pb.failed_over), (true, &pb.stuck)]
            .into_iter()
            .filter(|(s, _)| only.is_none_or(|o| o == *s))
            .filter_map(|(s, a)| {
                a.as_ref()
                    .map(|a| self.condition_alert(playbook, pb, s, a, now))
            })
            .collect()
    }

    /// Everything to re-send now; forgets resolved alerts whose re-sends are used up.
    fn resend(&mut self, now: Timestamp) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (name, pb) in &self.playbooks {
            for (s, a) in [(false, &pb.failed_over), (true, &pb.stuck)] {
                if let Some(a) = a {
                    out.push(self.condition_alert(name, pb, s, a, now));
                }
            }
        }
        for pb in self.playbooks.values_mut() {
            for slot in [&mut pb.failed_over, &mut pb.stuck] {
                if let Some(a) = slot
                    && a.ended.is_some()
                {
                    if a.resends_left == 0 {
                        *slot = None;
                    } else {
                        a.resends_left -= 1;
                    }
                }
            }
        }
        self.playbooks
            .retain(|_, pb| pb.failed_over.is_some() || pb.stuck.is_some());
        out
    }
}

fn fan_out(targets: &[AmTarget], alerts: Vec<(String, Value)>, metrics: Option<&NotifyMetrics>) {
    if alerts.is_empty() {
        return;
    }
    let batch = Arc::new(alerts);
    for t in targets {
        if !t.queue.try_push(batch.clone()) {
            t.stats
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(m) = metrics {
                for (ev, _) in batch.iter() {
                    m.count(&t.sink, ev, "dropped");
                }
            }
            warn!(alertmanager = %t.url, "alert queue full; batch dropped (the next re-send repeats firing alerts)");
        }
    }
}

async fn am_manager(
    mut state: AmState,
    queue: Arc<Queue<AmMsg>>,
    targets: Vec<AmTarget>,
    metrics: Option<NotifyMetrics>,
) {
    let mut tick = tokio::time::interval(state.cfg.resend);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            (_, msg) = queue.pop() => {
                let alerts = state.apply(msg, Timestamp::now());
                queue.done();
                fan_out(&targets, alerts, metrics.as_ref());
            }
            _ = tick.tick() => {
                let alerts = state.resend(Timestamp::now());
                fan_out(&targets, alerts, metrics.as_ref());
            }
        }
    }
}

async fn am_sender(
    url: reqwest::Url,
    sink: String,
    queue: Arc<Queue<Batch>>,
    stats: Arc<SinkStats>,
    client: reqwest::Client,
    metrics: Option<NotifyMetrics>,
) {
    let endpoint = format!("{}/api/v2/alerts", url.as_str().trim_end_matches('/'));
    loop {
        let (_, batch) = queue.pop().await;
        let body: Vec<&Value> = batch.iter().map(|(_, v)| v).collect();
        let mut ok = false;
        let mut last_error = String::new();
        // A few quick tries; a firing alert is re-sent on the next interval anyway.
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(jittered(
                    Duration::from_millis(250),
                    attempt - 1,
                    Duration::from_secs(2),
                ))
                .await;
            }
            match client.post(&endpoint).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    last_error = format!("HTTP {status}: {}", text.trim());
                    if status.is_client_error() {
                        break;
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            stats.retried.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &metrics {
                m.count(&sink, "batch", "retried");
            }
        }
        let result = if ok { "sent" } else { "dead-letter" };
        let counter = if ok { &stats.sent } else { &stats.dead_letters };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Some(m) = &metrics {
            for (ev, _) in batch.iter() {
                m.count(&sink, ev, result);
            }
        }
        if !ok {
            error!(alertmanager = %url, alerts = batch.len(), error = %last_error, "alerts not delivered to this Alertmanager");
        }
        queue.done();
    }
}

// ---------------------------------------------------------------------------------------
// The notifier
// ---------------------------------------------------------------------------------------

struct AmHandle {
    events: u32,
    queue: Arc<Queue<AmMsg>>,
    stats: Arc<SinkStats>,
    targets: Vec<(String, Arc<SinkStats>, Arc<dyn Pending>)>,
}

/// Fans events out to the configured sinks. With no sinks it does nothing.
#[derive(Default)]
pub struct Notifier {
    hooks: Vec<Arc<Hook>>,
    am: Option<AmHandle>,
    conditions: Mutex<HashMap<String, Condition>>,
    metrics: Option<NotifyMetrics>,
    tasks: Vec<AbortHandle>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "webhooks",
                &self.hooks.iter().map(|h| &h.cfg.name).collect::<Vec<_>>(),
            )
            .field(
                "alertmanagers",
                &self
                    .am
                    .as_ref()
                    .map(|a| a.targets.iter().map(|t| t.0.clone()).collect::<Vec<_>>()),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Notifier {
    /// A notifier with no sinks.
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks `config` (see [`NotifyConfig::resolve`]) and starts the sink tasks on the
    /// current tokio runtime. `link_base` is the daemon's external URL (links point at
    /// `<link_base>/v1/playbooks/<name>`); `metrics`, when given, receives the
    /// notification metrics.
    pub fn start(
        config: &NotifyConfig,
        link_base: &str,
        metrics: Option<&Metrics>,
    ) -> Result<Self, NotifyError> {
        Self::start_resolved(config.resolve()?, link_base, metrics)
    }

    /// Starts the sink tasks of a checked config.
    pub fn start_resolved(
        resolved: Resolved,
        link_base: &str,
        metrics: Option<&Metrics>,
    ) -> Result<Self, NotifyError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(bad("notify", "notifier started outside a tokio runtime"));
        }
        let metrics = metrics.map(NotifyMetrics::new);
        let mut tasks = Vec::new();
        let mut watched: Vec<(String, Arc<dyn Pending>)> = Vec::new();
        let mut hooks = Vec::new();
        for cfg in resolved.hooks {
            let client = http_client(cfg.timeout)?;
            let sink = format!("webhook:{}", cfg.name);
            let queue = Arc::new(Queue::new(cfg.queue));
            watched.push((sink.clone(), queue.clone()));
            let hook = Arc::new(Hook {
                cfg,
                sink,
                queue,
                stats: Arc::default(),
            });
            tasks.push(
                tokio::spawn(webhook_task(
                    hook.clone(),
                    client,
                    link_base.to_string(),
                    metrics.clone(),
                ))
                .abort_handle(),
            );
            hooks.push(hook);
        }
        let am = match resolved.am {
            None => None,
            Some(cfg) => {
                let client = http_client(cfg.timeout)?;
                let mut targets = Vec::new();
                let mut handles = Vec::new();
                for url in &cfg.urls {
                    let host = url.host_str().unwrap_or_default();
                    let sink = match url.port_or_known_default() {
                        Some(p) => format!("alertmanager:{host}:{p}"),
                        None => format!("alertmanager:{host}"),
                    };
                    let queue = Arc::new(Queue::new(cfg.queue));
                    let stats = Arc::<SinkStats>::default();
                    watched.push((sink.clone(), queue.clone()));
                    handles.push((
                        sink.clone(),
                        stats.clone(),
                        queue.clone() as Arc<dyn Pending>,
                    ));
                    tasks.push(
                        tokio::spawn(am_sender(
                            url.clone(),
                            sink.clone(),
                            queue.clone(),
                            stats.clone(),
                            client.clone(),
                            metrics.clone(),
                        ))
                        .abort_handle(),
                    );
                    targets.push(AmTarget {
                        url: url.clone(),
                        sink,
                        queue,
                        stats,
                    });
                }
                // Condition changes and events: a small, fast queue (the manager only
                // computes alerts and hands them to the per-Alertmanager queues).
                let queue = Arc::new(Queue::new(4096));
                watched.push(("alertmanager".into(), queue.clone()));
                let events = cfg.events;
                let state = AmState {
                    cfg,
                    link_base: link_base.to_string(),
                    playbooks: BTreeMap::new(),
                };
                tasks.push(
                    tokio::spawn(am_manager(state, queue.clone(), targets, metrics.clone()))
                        .abort_handle(),
                );
                Some(AmHandle {
                    events,
                    queue,
                    stats: Arc::default(),
                    targets: handles,
                })
            }
        };
        if let Some(m) = metrics.clone()
            && !watched.is_empty()
        {
            tasks.push(tokio::spawn(watch_queues(watched, m)).abort_handle());
        }
        Ok(Self {
            hooks,
            am,
            conditions: Mutex::new(HashMap::new()),
            metrics,
            tasks,
        })
    }

    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.am.is_none()
    }

    /// Enqueues an event for every sink that wants it. Never blocks.
    pub fn notify(&self, event: Event) {
        if self.is_empty() {
            return;
        }
        let bit = event.kind.bit();
        let ev = event.kind.as_str();
        let event = Arc::new(event);
        for h in &self.hooks {
            if h.cfg.events & bit == 0 {
                continue;
            }
            if !h.queue.try_push(event.clone()) {
                h.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.count(&h.sink, ev, "dropped");
                }
                warn!(webhook = %h.cfg.name, event = ev, playbook = %event.playbook, "webhook queue full; event dropped");
            }
        }
        if let Some(am) = &self.am
            && (am.events & bit != 0
                || matches!(event.kind, EventKind::Failover | EventKind::Stuck))
            && !am.queue.try_push(AmMsg::Event(event.clone()))
        {
            am.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.count("alertmanager", ev, "dropped");
            }
            warn!(event = ev, playbook = %event.playbook, "alertmanager queue full; event dropped");
        }
    }

    /// Reports a playbook's ongoing conditions (called after every decision; cheap when
    /// nothing changed). Never blocks.
    pub fn condition(&self, playbook: &str, service: &str, namespace: &str, condition: Condition) {
        let Some(am) = &self.am else {
            return;
        };
        let mut last = lock(&self.conditions);
        if last.get(playbook) == Some(&condition) {
            return;
        }
        let msg = AmMsg::Condition {
            playbook: playbook.to_string(),
            service: service.to_string(),
            namespace: namespace.to_string(),
            condition,
            at: Timestamp::now(),
        };
        // Remember it only once queued: a change lost to a full queue is retried on the
        // next call.
        if am.queue.try_push(msg) {
            last.insert(playbook.to_string(), condition);
        } else {
            am.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.count("alertmanager", "condition", "dropped");
            }
        }
    }

    /// Counts per sink.
    pub fn stats(&self) -> Vec<SinkSnapshot> {
        let snap = |sink: &str, s: &SinkStats, pending: usize| SinkSnapshot {
            sink: sink.to_string(),
            sent: s.sent.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            pending,
        };
        let mut out: Vec<SinkSnapshot> = self
            .hooks
            .iter()
            .map(|h| snap(&h.sink, &h.stats, h.queue.pending().0))
            .collect();
        if let Some(am) = &self.am {
            out.push(snap("alertmanager", &am.stats, am.queue.pending().0));
            for (sink, stats, q) in &am.targets {
                out.push(snap(sink, stats, q.pending().0));
            }
        }
        out
    }
}

/// Publishes queue depth and oldest-pending age every second.
async fn watch_queues(queues: Vec<(String, Arc<dyn Pending>)>, m: NotifyMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (sink, q) in &queues {
            let (depth, age) = q.pending();
            let l = labels([("sink", sink.as_str())]);
            m.depth
                .get_or_create(&l)
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
            m.oldest.get_or_create(&l).set(age.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            time: "2026-11-03T10:00:00Z".parse().unwrap(),
            playbook: "case-management".into(),
            service: "child-welfare/case-management".into(),
            namespace: "child-welfare".into(),
            from: Some("primary (original route)".into()),
            to: Some("failover[0] 100%".into()),
            reason: "primary unhealthy: 3 consecutive probe failures".into(),
            signals: json!({"primary-health": "unhealthy"}),
            actor: "engine".into(),
        }
    }

    #[test]
    fn signature_recomputes_as_a_receiver_would() {
        let secret = b"s3cret";
        let body = br#"{"version":"1","event":"failover"}"#;
        let t = 1_790_000_000;
        let header = signature_header(secret, t, body);
        // The receiver: split the header, HMAC-SHA256(secret, "<t>.<body>"), hex, compare.
        let (tpart, vpart) = header.split_once(',').unwrap();
        assert_eq!(tpart, format!("t={t}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(vpart, format!("v1={want}"));
        assert!(verify(
            secret,
            &header,
            body,
            t + 10,
            Duration::from_secs(300)
        ));
        assert!(!verify(
            secret,
            &header,
            b"tampered",
            t,
            Duration::from_secs(300)
        ));
        assert!(!verify(
            b"other",
            &header,
            body,
            t,
            Duration::from_secs(300)
        ));
        assert!(!verify(
            secret,
            &header,
            body,
            t + 301,
            Duration::from_secs(300)
        ));
    }

    #[test]
    fn signature_known_answer() {
        // Computed outside Rust: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"whsec-test", b"1700000000.{\"version\":\"1\"}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature_header(b"whsec-test", 1_700_000_000, br#"{"version":"1"}"#),
            "t=1700000000,v1=3b94ad5693bd82d4157961888517e945c4711ada5915629b0afea936747418b5"
        );
    }

    #[test]
    fn default_templates_render_every_kind() {
        for k in EventKind::ALL {
            let s = render(
                k.default_template(),
                &event(k),
                "http://f:8080/v1/playbooks/case-management",
            );
            assert!(s.contains("case-management"), "{s}");
            assert!(
                s.contains("http://f:8080/v1/playbooks/case-management"),
                "{s}"
            );
            assert!(!s.contains('{'), "{s}");
            assert!(s.starts_with(&format!("[{}]", k.severity())), "{s}");
        }
        let s = render(
            EventKind::Failover.default_template(),
            &event(EventKind::Failover),
            "L",
        );
        assert_eq!(
            s,
            "[warning] failoverd case-management: FAILED OVER primary (original route) → failover[0] 100%. Why: primary unhealthy: 3 consecutive probe failures. By engine. L"
        );
    }

    #[test]
    fn custom_template_and_escapes() {
        let mut e = event(EventKind::Stuck);
        e.to = None;
        let s = render(
            "{{x}} {event}/{severity} {playbook} to={to} {signals}",
            &e,
            "L",
        );
        assert_eq!(
            s,
            r#"{x} stuck/critical case-management to=- {"primary-health":"unhealthy"}"#
        );
        assert!(
            parse_template("{nope}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(parse_template("{playbook").is_err());
        assert!(parse_template("a } b").is_err());
        // An invalid template never reaches render via config; if it did, the default wins.
        assert!(render("{nope}", &e, "L").contains("STUCK"));
    }

    #[test]
    fn queue_is_bounded_and_tracks_age() {
        let q = Queue::new(2);
        assert!(q.try_push(1));
        assert!(q.try_push(2));
        assert!(!q.try_push(3), "a full queue drops");
        assert_eq!(q.pending().0, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, v) = rt.block_on(q.pop());
        assert_eq!(v, 1);
        assert_eq!(q.pending().0, 2, "in flight still counts");
        q.done();
        assert_eq!(q.pending().0, 1);
        assert!(q.try_push(4));
        assert!(!q.try_push(5));
    }

    #[test]
    fn notify_never_blocks_and_counts_drops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let dir = tempfile::tempdir().unwrap();
            let secret = dir.path().join("s");
            std::fs::write(&secret, "x\n").unwrap();
            let cfg = NotifyConfig {
                alertmanager: None,
                webhooks: vec![WebhookConfig {
                    name: "w".into(),
                    // Nothing listens on port 9 (discard) here; the task never runs anyway
                    // because this single-threaded runtime is never yielded to.
                    url: "http://127.0.0.1:9/".into(),
                    secret_file: secret,
                    queue: Some(3),
                    ..WebhookConfig::default()
                }],
            };
            let n = Notifier::start(&cfg, "http://x", None).unwrap();
            let t = Instant::now();
            for _ in 0..1000 {
                n.notify(event(EventKind::Failover));
            }
            assert!(t.elapsed() < Duration::from_millis(500));
            let s = &n.stats()[0];
            assert_eq!(s.pending, 3);
            assert_eq!(s.dropped, 997);
        });
    }

    #[test]
    fn config_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "x").unwrap();
        let hook = |f: &dyn Fn(&mut WebhookConfig)| {
            let mut w = WebhookConfig {
                name: "oncall".into(),
                url: "https://hooks.example/x".into(),
                secret_file: secret.clone(),
                ..WebhookConfig::default()
            };
            f(&mut w);
            NotifyConfig {
                alertmanager: None,
                webhooks: vec![w],
            }
            .resolve()
            .map(|_| ())
        };
        assert!(hook(&|_| {}).is_ok());
        let e = hook(&|w| w.url = "not a url".into()).unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].url");
        let e = hook(&|w| w.url = "ftp://x/".into()).unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].url");
        let e = hook(&|w| w.secret_file = dir.path().join("missing")).unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].secretFile");
        let e = hook(&|w| w.events = Some(vec!["failover".into(), "nope".into()])).unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].events[1]");
        let e = hook(&|w| {
            w.templates.insert("failover".into(), "{bad}".into());
        })
        .unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].templates.failover");
        let e = hook(&|w| w.timeout = Some("soon".into())).unwrap_err();
        assert_eq!(e.field, "notify.webhooks[0].timeout");
        let e = NotifyConfig {
            alertmanager: Some(AlertmanagerConfig {
                urls: vec!["http://am:9093".into(), "am2:9093".into()],
                ..AlertmanagerConfig::default()
            }),
            webhooks: vec![],
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.field, "notify.alertmanager.urls[1]");
    }

    #[test]
    fn condition_alerts_fire_resend_and_resolve() {
        let cfg = AmResolved {
            urls: vec![],
            events: am_default_events(),
            resend: Duration::from_secs(30),
            event_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
            runbook: Some("https://runbooks.example/{playbook}".into()),
            queue: 8,
        };
        let mut st = AmState {
            cfg,
            link_base: "http://failoverd:8080".into(),
            playbooks: BTreeMap::new(),
        };
        let now: Timestamp = "2026-11-03T10:00:01Z".parse().unwrap();
        let out = st.apply(AmMsg::Event(Arc::new(event(EventKind::Failover))), now);
        assert_eq!(out.len(), 1);
        let a = &out[0].1;
        assert_eq!(a["labels"]["alertname"], "FailoverdFailedOver");
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["labels"]["service"], "child-welfare/case-management");
        assert_eq!(
            a["annotations"]["runbook_url"],
            "https://runbooks.example/case-management"
        );
        assert_eq!(a["endsAt"], json!(ts_plus(now, Duration::from_secs(120))));
        // The runtime confirms: no change, nothing sent.
        let cond = |failed_over, stuck| AmMsg::Condition {
            playbook: "case-management".into(),
            service: "child-welfare/case-management".into(),
            namespace: "child-welfare".into(),
            condition: Condition { failed_over, stuck },
            at: now,
        };
        assert!(st.apply(cond(true, false), now).is_empty());
        assert_eq!(st.resend(now).len(), 1);
        let out = st.apply(cond(true, true), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["labels"]["severity"], "critical");
        let out = st.apply(cond(false, false), now);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, a)| a["endsAt"] == json!(now)));
        // Resolved alerts are re-sent a few times, then forgotten.
        for _ in 0..4 {
            assert_eq!(st.resend(now).len(), 2);
        }
        assert!(st.resend(now).is_empty());
        // One-shot event alerts.
        let out = st.apply(AmMsg::Event(Arc::new(event(EventKind::Refused))), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["labels"]["alertname"], "FailoverdRefused");
    }
}
