//! `notify:` in the daemon config, side by side with its validation: [`NotifyConfig`]
//! is what the operator writes, [`NotifyConfig::resolve`] checks every field (naming it
//! in the error) and reads the secrets, and [`Resolved`] is what the sinks are built from.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{NotifyError, bad};
use super::event::EventKind;
use super::template::check_template;

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

pub(super) fn am_default_events() -> u32 {
    [
        EventKind::WriteFailed,
        EventKind::Refused,
        EventKind::SignalUnknown,
        EventKind::Freeze,
        EventKind::Override,
        EventKind::OverrideExpired,
        EventKind::AuditUnavailable,
        EventKind::AuditRecovered,
        EventKind::BreakGlass,
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
pub(super) struct AmResolved {
    pub(super) urls: Vec<reqwest::Url>,
    pub(super) events: u32,
    pub(super) resend: Duration,
    pub(super) event_ttl: Duration,
    pub(super) timeout: Duration,
    pub(super) runbook: Option<String>,
    pub(super) queue: usize,
}

/// Webhook settings, checked (the secret is read).
#[derive(Clone)]
pub(super) struct HookResolved {
    pub(super) name: String,
    pub(super) url: reqwest::Url,
    pub(super) events: u32,
    pub(super) secret: Vec<u8>,
    pub(super) templates: HashMap<EventKind, String>,
    pub(super) default_template: Option<String>,
    pub(super) timeout: Duration,
    pub(super) max_attempts: u32,
    pub(super) backoff: Duration,
    pub(super) queue: usize,
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
    pub(super) am: Option<AmResolved>,
    pub(super) hooks: Vec<HookResolved>,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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
}
