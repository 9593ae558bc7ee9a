//! The fleet page: every playbook on one screen, with the totals on-call looks at first and
//! the fleet rule's state. Read from the same status table and override set `GET
//! /v1/playbooks` reads; copied out under the lock, rendered after it.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::kube_auth::Verb;
use crate::engine::fleet::{Judgement, judge};
use crate::engine::{Health, Phase, Routing};
use crate::overrides::{OverrideKind, OverrideRecord};
use crate::shared::{PlaybookStatus, Transition};

use super::layout::{page, phase_badge, phase_word, span_words, weights, when};
use super::{ConsoleState, Need};

/// The fleet page's filters (`?phase=failedOver&q=case`).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// A phase name (`normal`, `suspect`, `failedOver`, `recovering`, `failingBack`,
    /// `frozen`, `unknown`); empty: every phase.
    #[serde(default)]
    pub phase: String,
    /// Text in the playbook's name or VirtualService.
    #[serde(default)]
    pub q: String,
}

impl Filters {
    fn query(&self) -> String {
        let mut q = form_urlencoded_pairs(&[("phase", &self.phase), ("q", &self.q)]);
        if !q.is_empty() {
            q.insert(0, '?');
        }
        q
    }
}

fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One playbook's line, copied out of the shared state.
#[derive(Debug)]
struct Row {
    name: String,
    service: String,
    phase: Option<Phase>,
    routing: Option<Routing>,
    failing: usize,
    unknown: usize,
    last: Option<Transition>,
    overrides: Vec<OverrideRecord>,
    stuck: bool,
}

impl Row {
    fn phase_class(&self) -> &'static str {
        phase_word(self.phase.as_ref()).0
    }
    fn failed_over(&self) -> bool {
        self.routing.is_some_and(|r| r != Routing::Primary)
    }
    fn frozen(&self) -> bool {
        matches!(self.phase, Some(Phase::Frozen { .. }))
            || self
                .overrides
                .iter()
                .any(|o| o.kind == OverrideKind::Freeze)
    }
    fn unknown(&self) -> bool {
        self.phase.is_none() || self.unknown > 0
    }
}

/// The totals line and the fleet rule.
#[derive(Debug, Default)]
struct Totals {
    playbooks: usize,
    failed_over: usize,
    stuck: usize,
    frozen: usize,
    unknown: usize,
    breaching: usize,
}

fn rows(state: &ConsoleState) -> Vec<Row> {
    let shared = &state.api.shared;
    let overrides: Vec<OverrideRecord> = shared
        .overrides
        .read()
        .map(|o| o.clone())
        .unwrap_or_default();
    let table = match shared.status.read() {
        Ok(t) => t,
        Err(_) => return Vec::new(),
    };
    table
        .iter()
        .enumerate()
        .map(|(i, s): (usize, &PlaybookStatus)| {
            // The controller's own "no healthy destination" flag, as `/metrics` shows it
            // (a read lock: the page never adds a series).
            let stuck = shared
                .metrics
                .stuck
                .get(&crate::metrics::labels([("playbook", &s.name)]))
                .is_some_and(|g| g.get() != 0);
            Row {
                name: s.name.clone(),
                service: shared
                    .playbooks
                    .get(i)
                    .map(|p| p.spec.virtual_service.to_string())
                    .unwrap_or_default(),
                phase: s.phase.clone(),
                routing: s.routing,
                failing: s
                    .signals
                    .iter()
                    .filter(|o| matches!(o.health, Health::Unhealthy(_)))
                    .count(),
                unknown: s
                    .signals
                    .iter()
                    .filter(|o| matches!(o.health, Health::Unknown(_)))
                    .count(),
                last: s.transitions.back().cloned(),
                overrides: overrides
                    .iter()
                    .filter(|o| o.playbook == s.name)
                    .cloned()
                    .collect(),
                stuck,
            }
        })
        .collect()
}

fn totals(rows: &[Row]) -> Totals {
    let mut t = Totals {
        playbooks: rows.len(),
        ..Totals::default()
    };
    for r in rows {
        t.failed_over += usize::from(r.failed_over());
        t.stuck += usize::from(r.stuck);
        t.frozen += usize::from(r.frozen());
        t.unknown += usize::from(r.unknown());
        t.breaching += usize::from(matches!(r.phase, Some(Phase::Suspect { .. })));
    }
    t
}

fn keep(r: &Row, f: &Filters) -> bool {
    let phase_ok = f.phase.is_empty() || r.phase_class() == f.phase;
    let q = f.q.trim().to_lowercase();
    let text_ok =
        q.is_empty() || r.name.to_lowercase().contains(&q) || r.service.to_lowercase().contains(&q);
    phase_ok && text_ok
}

/// `GET /ui/`: the fleet page.
pub async fn fleet(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    let session = match state.reader(&headers, Need::Page, Verb::List, None).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = html! {
        h1 { "Fleet" }
        (filters(&f))
        (live(&state, &f, Timestamp::now()))
    };
    page("Fleet", Some(&session), body).into_response()
}

/// `GET /ui/fleet/live`: the part of the fleet page the live stream refreshes.
pub async fn fleet_live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    if let Err(r) = state
        .reader(&headers, Need::Fragment, Verb::List, None)
        .await
    {
        return *r;
    }
    live(&state, &f, Timestamp::now()).into_response()
}

fn filters(f: &Filters) -> Markup {
    const PHASES: [(&str, &str); 8] = [
        ("", "Every phase"),
        ("normal", "Normal"),
        ("suspect", "Suspect"),
        ("failedOver", "Failed over"),
        ("recovering", "Recovering"),
        ("failingBack", "Failing back"),
        ("frozen", "Frozen"),
        ("unknown", "Unknown"),
    ];
    html! {
        form class="filters" method="get" action="/ui/" role="search" {
            div {
                label for="phase" { "Phase" }
                select id="phase" name="phase" {
                    @for (v, word) in PHASES {
                        option value=(v) selected[f.phase == v] { (word) }
                    }
                }
            }
            div {
                label for="q" { "Name or VirtualService" }
                input id="q" name="q" type="search" value=(f.q) placeholder="e.g. case";
            }
            div { button type="submit" { "Filter" } }
        }
    }
}

/// Totals, fleet rule and table: the live region.
fn live(state: &ConsoleState, f: &Filters, now: Timestamp) -> Markup {
    let all = rows(state);
    let t = totals(&all);
    let max = state.api.shared.fleet.lock().map(|g| g.max()).unwrap_or(0);
    let rule = if max == 0 {
        (
            false,
            "Fleet rule off (no maxConcurrentFailovers set).".to_string(),
        )
    } else {
        match judge(t.breaching, t.failed_over, max) {
            Judgement::Allow => (
                false,
                format!(
                    "Fleet rule: within the blast radius ({} breaching + {} failed over ≤ {max}).",
                    t.breaching, t.failed_over
                ),
            ),
            j => (true, format!("Fleet rule HOLDING: {}", j.reason())),
        }
    };
    let shown: Vec<&Row> = all.iter().filter(|r| keep(r, f)).collect();
    let loaded = state
        .api
        .shared
        .state_loaded
        .load(std::sync::atomic::Ordering::Acquire);
    html! {
        div id="fleet-live" data-live={ "/ui/fleet/live" (f.query()) } {
            @if !loaded {
                (super::layout::notice(false, "Starting:", Some("the saved overrides are not loaded yet; freezes and holds may be missing below.")))
            }
            ul class="totals" aria-label="Totals" {
                li { span class="n" { (t.failed_over) } "failed over" }
                li { span class="n" { (t.stuck) } "stuck (no healthy destination)" }
                li { span class="n" { (t.frozen) } "frozen" }
                li { span class="n" { (t.unknown) } "unknown (a signal cannot tell, or not read yet)" }
                li { span class="n" { (t.playbooks) } "playbooks" }
            }
            p class={ "fleet-rule" @if rule.0 { " hold" } } role=(if rule.0 { "alert" } else { "status" }) { (rule.1) }
            p class="muted" { "Showing " (shown.len()) " of " (t.playbooks) " playbooks." }
            table class="cards fleet" {
                thead { tr {
                    th scope="col" { "Playbook" }
                    th scope="col" { "Phase" }
                    th scope="col" { "Weights" }
                    th scope="col" { "Signals" }
                    th scope="col" { "Last move" }
                    th scope="col" { "Overrides" }
                } }
                tbody {
                    @for r in &shown { (row(r, now)) }
                }
            }
        }
    }
}

fn row(r: &Row, now: Timestamp) -> Markup {
    html! {
        tr id={ "pb-" (r.name) } data-phase=(r.phase_class()) {
            td {
                a href={ "/ui/playbooks/" (r.name) } { (r.name) }
                span class="abs" { (r.service) }
            }
            td {
                (phase_badge(r.phase.as_ref()))
                @if r.stuck { " " span class="badge phase-failedOver" { "Stuck" } }
            }
            td { (weights(r.routing.as_ref())) }
            td {
                @if r.failing == 0 && r.unknown == 0 { span class="muted" { "all healthy" } }
                @else {
                    @if r.failing > 0 { span class="badge health-unhealthy" { (r.failing) " failing" } " " }
                    @if r.unknown > 0 { span class="badge health-unknown" { (r.unknown) " unknown" } }
                }
            }
            td {
                @match &r.last {
                    Some(m) => { (m.kind.as_str()) " by " (m.actor) br; (when(m.time, now)) }
                    None => span class="muted" { "none since start" },
                }
            }
            td { (overrides_short(&r.overrides, now)) }
        }
    }
}

/// Overrides in a line each: kind, who, time left.
pub fn overrides_short(list: &[OverrideRecord], now: Timestamp) -> Markup {
    html! {
        @if list.is_empty() { span class="muted" { "none" } }
        @for o in list {
            div {
                @match o.kind {
                    OverrideKind::Freeze => span class="badge phase-frozen" { "Freeze" },
                    OverrideKind::Failover => span class="badge phase-failedOver" { "Hold → failover[" (o.target.unwrap_or(0)) "]" },
                }
                " by " (o.actor) ", "
                (span_words(u64::try_from(o.until.as_second() - now.as_second()).unwrap_or(0))) " left"
                br;
                span class="abs" { "until " (super::layout::absolute(o.until)) }
            }
        }
    }
}
