//! The operator actions from the console: failover (target, TTL, reason, force), failback,
//! freeze and resume. Each form first posts to a confirmation step that repeats what will
//! happen; the confirmed form goes through the same function as the `/v1` call
//! ([`crate::api::console_act`]: body checks, permission, audit of refusals, the
//! controller's command), and the page shows the result or the API's refusal text inline.
//!
//! Every post passes the Origin check and carries the session's CSRF token; a viewer's post
//! is refused (403) before anything is done.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::kube_auth::Verb;
use crate::playbook::Playbook;

use super::layout::{notice, page};
use super::session::Session;
use super::{ConsoleState, refusal_page};

/// One action form (all four share it; fields an action does not take are left out of the
/// call, as the API would refuse them).
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ttl: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    force: Option<String>,
}

const ACTIONS: [&str; 4] = ["failover", "failback", "freeze", "resume"];

impl ActionForm {
    fn force(&self) -> bool {
        self.force.as_deref().is_some_and(|v| !v.is_empty())
    }

    /// The JSON the API takes for this action.
    fn body(&self) -> Value {
        let mut b = json!({ "reason": self.reason });
        let takes_ttl = matches!(self.action.as_str(), "failover" | "freeze");
        if takes_ttl && !self.ttl.trim().is_empty() {
            b["ttl"] = json!(self.ttl.trim());
        }
        if self.action == "failover" && !self.target.trim().is_empty() {
            b["target"] = json!(self.target.trim());
        }
        if matches!(self.action.as_str(), "failover" | "failback") && self.force() {
            b["force"] = json!(true);
        }
        b
    }
}

/// The four forms, each posting to the confirmation step.
pub fn forms(pb: &Playbook, csrf: &str) -> Markup {
    let name = pb.name();
    let confirm = format!("/ui/playbooks/{name}/confirm");
    let targets: Vec<(String, String)> = pb
        .spec
        .failover
        .value
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("failover[{i}]"), d.host.value.clone()))
        .collect();
    let reason = |id: &str| {
        html! {
            label for=(id) { "Reason " span class="hint" { "(required; goes into the audit log)" } }
            input id=(id) name="reason" type="text" required maxlength="1024" placeholder="e.g. INC-1234: primary degraded";
        }
    };
    let ttl = |id: &str| {
        html! {
            label for=(id) { "For how long " span class="hint" { "(e.g. 30m, 2h; default 1h)" } }
            input id=(id) name="ttl" type="text" placeholder="1h";
        }
    };
    let hidden = |action: &str| {
        html! {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="action" value=(action);
        }
    };
    html! {
        div class="actions" {
            form method="post" action=(confirm) aria-labelledby="a-failover" {
                h3 id="a-failover" { "Fail over" }
                (hidden("failover"))
                label for="f-target" { "Target" }
                select id="f-target" name="target" {
                    option value="" { "First healthy target" }
                    @for (t, host) in &targets { option value=(t) { (t) " — " (host) } }
                }
                (ttl("f-ttl"))
                (reason("f-reason"))
                label class="check" { input type="checkbox" name="force" value="on"; "Force (even to a target failoverd believes unhealthy)" }
                p { button type="submit" class="danger" { "Review failover…" } }
            }
            form method="post" action=(confirm) aria-labelledby="a-failback" {
                h3 id="a-failback" { "Fail back" }
                (hidden("failback"))
                (reason("b-reason"))
                label class="check" { input type="checkbox" name="force" value="on"; "Force (even if the primary is not known healthy)" }
                p { button type="submit" { "Review failback…" } }
            }
            form method="post" action=(confirm) aria-labelledby="a-freeze" {
                h3 id="a-freeze" { "Freeze automation" }
                (hidden("freeze"))
                (ttl("z-ttl"))
                (reason("z-reason"))
                p { button type="submit" { "Review freeze…" } }
            }
            form method="post" action=(confirm) aria-labelledby="a-resume" {
                h3 id="a-resume" { "Resume automation" }
                (hidden("resume"))
                (reason("r-reason"))
                p { button type="submit" { "Review resume…" } }
            }
        }
    }
}

/// What the action will do, in words.
fn describe(pb: &Playbook, f: &ActionForm, who: &str) -> Markup {
    let name = pb.name();
    let ttl = if f.ttl.trim().is_empty() {
        "1h (the default)".to_string()
    } else {
        f.ttl.trim().to_string()
    };
    let target = if f.target.trim().is_empty() {
        "the first healthy failover target".to_string()
    } else {
        let host = f
            .target
            .trim()
            .strip_prefix("failover[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| pb.spec.failover.value.get(i))
            .map(|d| d.host.value.clone())
            .unwrap_or_default();
        format!("{} ({host})", f.target.trim())
    };
    let vs = pb.spec.virtual_service.to_string();
    let force = if f.force() { "yes" } else { "no" };
    html! {
        @match f.action.as_str() {
            "failover" => p { "Fail over " strong { (name) } ": send all traffic to " strong { (target) } " now and hold it there for " strong { (ttl) } ", even while the primary looks healthy. Writes VirtualService " (vs) ". Forced: " strong { (force) } " (residency and mesh policy apply either way)." },
            "failback" => p { "Fail back " strong { (name) } ": return all traffic to the original route now and release any failover hold. Writes VirtualService " (vs) ". Forced: " strong { (force) } "." },
            "freeze" => p { "Freeze " strong { (name) } " for " strong { (ttl) } ": no automatic moves; routing stays as it is." },
            _ => p { "Resume " strong { (name) } ": release its freezes and failover holds; automation may move traffic at once if the signals say so." },
        }
        p { "Recorded in the audit log as " strong { (who) } " with the reason: " q { (f.reason.trim()) } }
    }
}

/// `POST /ui/playbooks/{name}/confirm`: the confirmation step.
pub async fn confirm(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<axum::Form<ActionForm>, FormRejection>,
) -> Response {
    let f = form.map(|f| f.0).unwrap_or_default();
    let (session, pb) = match checked(&state, &headers, &name, &f, true).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let act = format!("/ui/playbooks/{name}/act");
    let body = html! {
        p { a href={ "/ui/playbooks/" (name) } { "← " (name) } }
        h1 { "Confirm: " (f.action) " " (name) }
        div class="confirm" {
            (describe(&pb, &f, &session.caller.identity))
            form method="post" action=(act) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value=(f.action);
                input type="hidden" name="reason" value=(f.reason);
                input type="hidden" name="ttl" value=(f.ttl);
                input type="hidden" name="target" value=(f.target);
                @if f.force() { input type="hidden" name="force" value="on"; }
                p {
                    button type="submit" class=(if f.action == "failover" { "danger" } else { "" }) autofocus { "Confirm " (f.action) }
                    " "
                    a href={ "/ui/playbooks/" (name) } { "Cancel" }
                }
            }
        }
    };
    page(&format!("Confirm {}", f.action), Some(&session), body).into_response()
}

/// `POST /ui/playbooks/{name}/act`: the confirmed action.
pub async fn act(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<axum::Form<ActionForm>, FormRejection>,
) -> Response {
    let f = form.map(|f| f.0).unwrap_or_default();
    // The role is checked by the API's own frame below, which audits a refused call as the
    // `/v1` route does.
    let (session, _) = match checked(&state, &headers, &name, &f, false).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // The API's per-identity limit on mutating calls (the `/v1` guard applies it there).
    if state
        .api
        .limiter
        .check_key(&session.caller.identity)
        .is_err()
    {
        let n = notice(
            false,
            "Refused (429):",
            Some(&format!(
                "rate limit for {} exceeded; retry in a second",
                session.caller.identity
            )),
        );
        return super::playbook::render(
            &state,
            &session,
            &name,
            Some(n),
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    }
    let result = crate::api::console_act(
        &state.api,
        session.caller.clone(),
        name.clone(),
        &f.action,
        f.body(),
    )
    .await;
    let (n, status) = match result {
        Ok(reply) => (
            notice(
                true,
                &format!("Done: {}.", f.action),
                Some(&format!(
                    "{}{}",
                    reply.message,
                    reply
                        .override_id
                        .map(|id| format!(" (override {id})"))
                        .unwrap_or_default()
                )),
            ),
            StatusCode::OK,
        ),
        Err(e) => {
            let detail = match e.detail_value() {
                Value::Null => e.message().to_string(),
                Value::String(d) => format!("{} — {d}", e.message()),
                d => format!("{} — {d}", e.message()),
            };
            (
                notice(
                    false,
                    &format!("Refused ({}):", e.status().as_u16()),
                    Some(&detail),
                ),
                e.status(),
            )
        }
    };
    super::playbook::render(&state, &session, &name, Some(n), status).await
}

/// Origin, session, CSRF token, a known action and playbook, and (with `role`) the right to
/// act: 403 for a viewer, before anything is shown or done.
async fn checked(
    state: &ConsoleState,
    headers: &HeaderMap,
    name: &str,
    f: &ActionForm,
    role: bool,
) -> Result<(Session, std::sync::Arc<Playbook>), Box<Response>> {
    let session = state.poster(headers, &f.csrf)?;
    let Some(idx) = state.api.shared.index(name) else {
        return Err(Box::new(refusal_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            &format!("no playbook named `{name}`"),
        )));
    };
    if !ACTIONS.contains(&f.action.as_str()) {
        return Err(Box::new(refusal_page(
            Some(&session),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown action (failover, failback, freeze or resume)",
        )));
    }
    if !role {
        return Ok((session, state.api.shared.playbooks[idx].clone()));
    }
    if !session.may_act() {
        return Err(Box::new(refusal_page(
            Some(&session),
            StatusCode::FORBIDDEN,
            &format!(
                "{} is a {}: actions need the operator role",
                session.caller.identity,
                session.role_word()
            ),
        )));
    }
    if let Err(e) = crate::api::may(&state.api, &session.caller, Verb::Update, Some(name)).await {
        return Err(Box::new(refusal_page(
            Some(&session),
            e.status(),
            e.message(),
        )));
    }
    Ok((session, state.api.shared.playbooks[idx].clone()))
}
