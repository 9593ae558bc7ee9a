//! The playbook page: the explanation, every signal with its value, threshold and last
//! sample, the route now against the original as a YAML diff, overrides, the recent audit
//! records as a timeline, drill runs with their verdicts, and (for operators) the actions.
//! Read from what `GET /v1/playbooks/{name}`, `GET /v1/audit` and `GET /v1/drills` read.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use maud::{Markup, html};
use serde_json::Value;

use crate::api::audit_read::{Filter, read_last};
use crate::api::kube_auth::Verb;
use crate::audit::Record;
use crate::engine::{Health, Routing};
use crate::playbook::Playbook;
use crate::shared::PlaybookStatus;

use super::fleet::overrides_short;
use super::layout::{absolute, notice, page as frame, phase_badge, weights, when};
use super::session::Session;
use super::{ConsoleState, Need, actions};

/// Audit records shown in the timeline.
pub const TIMELINE: usize = 20;
/// Drill runs shown per drill.
pub const DRILL_RUNS: usize = 5;

/// `GET /ui/playbooks/{name}`.
pub async fn page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let session = match state
        .reader(&headers, Need::Page, Verb::Get, Some(&name))
        .await
    {
        Ok(s) => s,
        Err(r) => return *r,
    };
    render(&state, &session, &name, None, StatusCode::OK).await
}

/// The playbook page with `result` (an action's outcome) above the actions, answered with
/// `status`.
pub async fn render(
    state: &ConsoleState,
    session: &Session,
    name: &str,
    result: Option<Markup>,
    status: StatusCode,
) -> Response {
    let Some(idx) = state.api.shared.index(name) else {
        return super::refusal_page(
            Some(session),
            StatusCode::NOT_FOUND,
            &format!("no playbook named `{name}`"),
        );
    };
    let pb = state.api.shared.playbooks[idx].clone();
    let may_act = session.may_act()
        && crate::api::may(&state.api, &session.caller, Verb::Update, Some(name))
            .await
            .is_ok();
    let live = live_part(state, idx, &pb).await;
    let body = html! {
        p { a href="/ui/" { "← Fleet" } }
        h1 { (name) }
        p class="muted" { "VirtualService " (pb.spec.virtual_service) }
        @if let Some(r) = &result { div id="result" { (r) } }
        (live)
        @if may_act {
            h2 id="actions" { "Actions" }
            (actions::forms(&pb, &session.csrf))
        } @else {
            p class="muted" { "You can read this playbook; actions need the operator role." }
        }
    };
    (status, frame(name, Some(session), body)).into_response()
}

/// `GET /ui/playbooks/{name}/live`: the part the live stream refreshes.
pub async fn live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = state
        .reader(&headers, Need::Fragment, Verb::Get, Some(&name))
        .await
    {
        return *r;
    }
    let Some(idx) = state.api.shared.index(&name) else {
        return (StatusCode::NOT_FOUND, "no such playbook").into_response();
    };
    let pb = state.api.shared.playbooks[idx].clone();
    live_part(&state, idx, &pb).await.into_response()
}

async fn live_part(state: &ConsoleState, idx: usize, pb: &Arc<Playbook>) -> Markup {
    let now = Timestamp::now();
    let name = pb.name().to_string();
    let status: Option<PlaybookStatus> = state.api.shared.snapshot().into_iter().nth(idx);
    let overrides: Vec<_> = state
        .api
        .shared
        .overrides
        .read()
        .map(|o| o.iter().filter(|r| r.playbook == name).cloned().collect())
        .unwrap_or_default();
    let records = audit_records(state, &name).await;
    // The store's viewer read: the file, or the kubernetes store's watch cache; never a
    // request that costs a routing write its budget.
    let view = state.api.store.viewer_read(pb).await;
    let (now_route, store_error) = match view {
        Some((_, Ok(v))) => (Some(v.route), None),
        Some((_, Err(e))) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let routing = status.as_ref().and_then(|s| s.routing);
    let original = original_route(routing, now_route.as_ref(), &records, pb);
    let drills = drill_runs(state, &name);
    html! {
        div id="pb-live" data-live={ "/ui/playbooks/" (name) "/live" } {
            div class="grid2" {
                div {
                    h2 { "Phase" }
                    p { (phase_badge(status.as_ref().and_then(|s| s.phase.as_ref()))) }
                    @if let Some(e) = status.as_ref().and_then(|s| s.error.as_ref()) {
                        (notice(false, "Error:", Some(e)))
                    }
                    h2 { "Weights" }
                    p { (weights(routing.as_ref())) }
                }
                div {
                    h2 { "Overrides" }
                    (overrides_short(&overrides, now))
                }
            }
            h2 { "Why (the last decision)" }
            pre { (status.as_ref().map_or("starting", |s| s.explain.as_str())) }
            h2 { "Signals" }
            (signals(status.as_ref(), pb, now))
            h2 { "Routing now vs original" }
            (route_diff(original.as_ref(), now_route.as_ref(), store_error.as_deref()))
            h2 { "Recent audit records" }
            (timeline(&records, now, state.trace_url.as_deref()))
            h2 { "Drill runs" }
            (drills)
        }
    }
}

fn health_word(h: &Health) -> (&'static str, &'static str, &str) {
    match h {
        Health::Healthy => ("healthy", "Healthy", ""),
        Health::Unhealthy(r) => ("unhealthy", "Failing", r),
        Health::Unknown(r) => ("unknown", "Unknown", r),
    }
}

/// The playbook's threshold for a signal, in words.
fn threshold(pb: &Playbook, signal: &str) -> String {
    let spec = &pb.spec;
    if let Some(p) = spec.probes.iter().find(|p| p.name.value == signal) {
        let expect = p
            .http
            .as_ref()
            .filter(|h| !h.expect_status.is_empty())
            .map(|h| format!(", expecting HTTP {:?}", h.expect_status))
            .unwrap_or_default();
        return format!(
            "{} consecutive failures{expect} (every {})",
            spec.trigger.failure_threshold.value,
            humantime::format_duration(p.interval.get())
        );
    }
    if let Some(s) = spec.slos.iter().find(|s| s.name.value == signal) {
        let held = format!(
            " for {}",
            humantime::format_duration(spec.trigger.for_.get())
        );
        if let Some(q) = &s.prometheus {
            return match (q.above, q.below) {
                (Some(a), _) => format!("above {a}{held}"),
                (_, Some(b)) => format!("below {b}{held}"),
                _ => "no threshold".into(),
            };
        }
        if let Some(r) = &s.ratio {
            return format!("objective {} (burn rates){held}", r.objective);
        }
        if let Some(sc) = &s.scrape {
            return format!("error ratio above {}{held}", sc.above);
        }
    }
    "judged by the mesh fence (residency, mTLS)".into()
}

fn signals(status: Option<&PlaybookStatus>, pb: &Playbook, now: Timestamp) -> Markup {
    let list = status.map(|s| s.signals.as_slice()).unwrap_or_default();
    html! {
        @if list.is_empty() { p class="muted" { "No signal has reported yet." } }
        @else {
            table class="cards" {
                thead { tr {
                    th scope="col" { "Signal" } th scope="col" { "Target" } th scope="col" { "Health" }
                    th scope="col" { "Value" } th scope="col" { "Threshold" } th scope="col" { "Last sample" }
                } }
                tbody {
                    @for o in list {
                        @let (class, word, why) = health_word(&o.health);
                        tr {
                            td data-label="Signal" { (o.signal) }
                            td data-label="Target" { (o.target.to_string()) }
                            td data-label="Health" { span class={ "badge health-" (class) } { (word) } " ×" (o.streak) }
                            td data-label="Value" {
                                @if !o.detail.is_empty() { (o.detail) } @else if !why.is_empty() { (why) } @else { span class="muted" { "—" } }
                            }
                            td data-label="Threshold" { (threshold(pb, &o.signal)) }
                            td data-label="Last sample" { (when(o.at, now)) }
                        }
                    }
                }
            }
        }
    }
}

async fn audit_records(state: &ConsoleState, name: &str) -> Vec<Record> {
    // The API's bound on audit reads at once applies here too (a busy log shows no timeline
    // rather than queueing page loads behind it).
    let Ok(permit) = state.api.audit_reads.clone().try_acquire_owned() else {
        return Vec::new();
    };
    let path = state.api.audit_path.clone();
    let filter = Filter {
        playbook: Some(name.to_string()),
        ..Filter::default()
    };
    let read = tokio::task::spawn_blocking(move || {
        let r = read_last(&path, TIMELINE, &filter);
        drop(permit);
        r
    })
    .await;
    match read {
        Ok(Ok(records)) => records,
        _ => Vec::new(),
    }
}

/// The route before failoverd moved it: the route itself on the primary; else the `before`
/// of the newest move away from the primary in the timeline; else the playbook's primary.
fn original_route(
    routing: Option<Routing>,
    now_route: Option<&Value>,
    records: &[Record],
    pb: &Playbook,
) -> Option<Value> {
    if routing == Some(Routing::Primary) {
        return now_route.cloned();
    }
    let from_audit = records
        .iter()
        .filter(|r| matches!(r.action.as_str(), "failover" | "operator-failover"))
        .filter(|r| !r.before.is_null())
        .max_by_key(|r| r.seq)
        .map(|r| r.before.clone());
    from_audit.or_else(|| {
        let d = &pb.spec.primary;
        let mut dest = serde_json::json!({ "host": d.host.value });
        if let Some(s) = &d.subset {
            dest["subset"] = Value::String(s.value.clone());
        }
        Some(serde_json::json!([{ "destination": dest, "weight": 100 }]))
    })
}

fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("(cannot show: {e})"))
}

fn route_diff(original: Option<&Value>, now: Option<&Value>, error: Option<&str>) -> Markup {
    let (Some(o), Some(n)) = (original, now) else {
        return html! { p class="muted" { "The route has not been read: " (error.unwrap_or("not yet")) } };
    };
    let (a, b) = (yaml(o), yaml(n));
    if a == b {
        return html! {
            p { "On the original route." }
            pre { (b) }
        };
    }
    let diff = similar::TextDiff::from_lines(&a, &b);
    html! {
        p class="muted" { "Lines starting with − are the original route, + the route now." }
        pre class="diff" aria-label="Route diff" {
            @for change in diff.iter_all_changes() {
                @match change.tag() {
                    similar::ChangeTag::Delete => span class="del" { "− " (change.value().trim_end()) },
                    similar::ChangeTag::Insert => span class="add" { "+ " (change.value().trim_end()) },
                    similar::ChangeTag::Equal => span class="same" { "  " (change.value().trim_end()) },
                }
            }
        }
    }
}

fn timeline(records: &[Record], now: Timestamp, trace_url: Option<&str>) -> Markup {
    html! {
        @if records.is_empty() { p class="muted" { "No audit records for this playbook yet (or the log is busy)." } }
        @else {
            ol class="timeline" reversed {
                @for r in records.iter().rev() {
                    li {
                        span class="what" { (r.action) } " by " strong { (r.actor) } " · " (when(r.time, now))
                        div { (r.outcome) }
                        @if !r.reason.is_empty() { div class="muted" { "Reason: " (r.reason) } }
                        @if let Some(t) = &r.trace_id {
                            div {
                                "Trace: "
                                @match trace_url {
                                    Some(u) => a href=(u.replace("{traceId}", t)) { (t) },
                                    None => code { (t) },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn drill_runs(state: &ConsoleState, name: &str) -> Markup {
    let Some(drills) = &state.api.drills else {
        return html! { p class="muted" { "Drills are off on this daemon." } };
    };
    let mine: Vec<_> = drills
        .list()
        .into_iter()
        .filter(|d| d.playbooks.iter().any(|p| p == name))
        .collect();
    html! {
        @if mine.is_empty() { p class="muted" { "No drill covers this playbook." } }
        @for d in &mine {
            @let runs = newest_first(drills.runs(&d.name));
            h3 { (d.name) " (" (d.mode) ")" }
            @if runs.is_empty() { p class="muted" { "Never run." } }
            ul {
                @for r in runs.iter().take(DRILL_RUNS) {
                    li {
                        span class={ "badge " (verdict_class(r.result.as_str())) } { (r.result.as_str()) }
                        " " (r.id) " · started " (absolute(r.started)) " by " (r.requested_by)
                        @if !r.reasons.is_empty() { " — " (r.reasons.join("; ")) }
                    }
                }
            }
        }
    }
}

fn newest_first(mut runs: Vec<crate::drill::report::Run>) -> Vec<crate::drill::report::Run> {
    runs.sort_by_key(|r| std::cmp::Reverse(r.started));
    runs
}

fn verdict_class(v: &str) -> &'static str {
    match v {
        "passed" => "health-healthy",
        "failed" | "aborted" => "health-unhealthy",
        _ => "health-unknown",
    }
}
