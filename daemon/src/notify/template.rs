//! Notification text: the placeholder templates operators write for webhooks and the
//! Alertmanager runbook link, checked at load time and rendered per event.

use serde_json::Value;

use super::error::{NotifyError, bad};
use super::event::Event;

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
pub(super) fn parse_template(t: &str) -> Result<Vec<(bool, String)>, String> {
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

pub(super) fn check_template(field: &str, t: &str) -> Result<(), NotifyError> {
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
pub(super) fn compact_signals(v: &Value) -> String {
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

/// The link to a playbook's status: `<base>/v1/playbooks/<name>`.
pub fn playbook_link(base: &str, playbook: &str) -> String {
    format!("{}/v1/playbooks/{playbook}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::notify::event::{EventKind, sample_event as event};

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
}
