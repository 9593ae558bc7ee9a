//! The page frame and the small pieces every page uses: phase badges (word and colour),
//! weight bars, times shown relative and absolute with their zone.

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};

use crate::engine::{Phase, Routing};
use crate::playbook::Target;

use super::session::Session;

/// htmx settings: no `<style>` of its own (the CSP allows none), no `eval`, requests to this
/// origin only.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true}"#;

/// A whole page: header with the live-stream state and the signed-in identity, then `body`.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · failoverd" }
                link rel="stylesheet" href=(super::assets::path("console.css"));
                script src=(super::assets::path("htmx.min.js")) defer {}
                script src=(super::assets::path("console.js")) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/ui/" { "failoverd" }
                    @if let Some(s) = session {
                        span id="live-status" class="live live-connecting" role="status" aria-live="polite" {
                            "Connecting to live updates…"
                        }
                        span class="who" {
                            (s.caller.identity) " "
                            span class="role" { "(" (s.role_word()) ")" }
                        }
                        form method="post" action="/ui/sign-out" class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" class="link" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// The phase as a badge: a word (never colour alone) on a colour.
pub fn phase_badge(phase: Option<&Phase>) -> Markup {
    let (class, word) = phase_word(phase);
    html! { span class={ "badge phase-" (class) } { (word) } }
}

/// The class suffix and the word for a phase (None: not read yet).
pub fn phase_word(phase: Option<&Phase>) -> (&'static str, String) {
    match phase {
        None => ("unknown", "Unknown (not read yet)".into()),
        Some(Phase::Normal) => ("normal", "Normal".into()),
        Some(Phase::Suspect { .. }) => ("suspect", "Suspect".into()),
        Some(Phase::FailedOver { target, .. }) => {
            ("failedOver", format!("Failed over → failover[{target}]"))
        }
        Some(Phase::Recovering { target, .. }) => {
            ("recovering", format!("Recovering (on failover[{target}])"))
        }
        Some(Phase::FailingBack { step, .. }) => {
            ("failingBack", format!("Failing back (step {})", step + 1))
        }
        Some(Phase::Frozen { .. }) => ("frozen", "Frozen".into()),
    }
}

/// The routing as a bar (primary and failover shares) with the same in words.
pub fn weights(routing: Option<&Routing>) -> Markup {
    let Some(r) = routing else {
        return html! { span class="muted" { "not read yet" } };
    };
    let parts = r.weights();
    let words = parts
        .iter()
        .map(|(t, w)| format!("{t} {w}%"))
        .collect::<Vec<_>>()
        .join(" · ");
    // Each share starts where the one before ends (weights sum to 100).
    let mut rects = Vec::with_capacity(parts.len());
    let mut x = 0u32;
    for (t, w) in &parts {
        let class = match t {
            Target::Primary => "w-primary",
            Target::Failover(_) => "w-failover",
        };
        rects.push((x, *w, class));
        x += u32::from(*w);
    }
    html! {
        span class="weights" {
            svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true" focusable="false" {
                @for (start, w, class) in &rects {
                    rect x=(start) y="0" width=(w) height="8" class=(class) {}
                }
            }
            span class="weights-words" { (words) }
        }
    }
}

/// A time relative to `now` and absolute in UTC, in a `<time>` element.
pub fn when(ts: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(ts.to_string()) {
            (relative(ts, now)) " "
            span class="abs" { "(" (absolute(ts)) ")" }
        }
    }
}

/// `2026-12-05 03:04:05 UTC`.
pub fn absolute(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `just now`, `45 s ago`, `3 min ago`, `2 h 5 min ago`, `in 12 min`, …
pub fn relative(ts: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - ts.as_second();
    let span = span_words(secs.unsigned_abs());
    match secs {
        -4..=4 => "just now".into(),
        s if s > 0 => format!("{span} ago"),
        _ => format!("in {span}"),
    }
}

/// A length of time in at most two units.
pub fn span_words(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A notice (result or refusal) shown inline.
pub fn notice(ok: bool, title: &str, detail: Option<&str>) -> Markup {
    html! {
        div class={ "notice " (if ok { "notice-ok" } else { "notice-err" }) } role=(if ok { "status" } else { "alert" }) {
            strong { (title) }
            @if let Some(d) = detail { " " span { (d) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures relative times read naturally on both sides of now, with their units.
    #[test]
    fn relative_words() {
        let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let at = |s: i64| Timestamp::from_second(1_800_000_000 - s).unwrap_or(now);
        assert_eq!(relative(at(2), now), "just now");
        assert_eq!(relative(at(45), now), "45 s ago");
        assert_eq!(relative(at(185), now), "3 min ago");
        assert_eq!(relative(at(7_500), now), "2 h 5 min ago");
        assert_eq!(relative(at(-720), now), "in 12 min");
        assert_eq!(relative(at(90_000), now), "1 d 1 h ago");
        assert_eq!(absolute(now), "2027-01-15 08:00:00 UTC");
    }
}
