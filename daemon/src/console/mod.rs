//! The on-call console: server-rendered pages under `/ui/` on the API listener, for the
//! person on call with a phone and no terminal.
//!
//! It reads what the `/v1` handlers read (the status table and override set in `Shared`,
//! the audit reader, the drill service, the store's viewer read) and acts through the same
//! function as `POST /v1/playbooks/{name}/{action}`: the same checks, permission, audit
//! record and controller command, under the signed-in identity. One concern per file:
//! `session` (sign-in, cookie, CSRF, Origin), `fleet` and `playbook` (the pages), `actions`
//! (confirm and act), `live` (the server-sent-events stream), `layout` (the frame and
//! shared pieces), `assets` (htmx, script and stylesheet compiled in).
//!
//! Every response carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style), `X-Frame-Options: DENY` and `frame-ancestors 'none'`.

mod actions;
mod assets;
mod fleet;
mod layout;
mod live;
mod playbook;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::ApiState;
use crate::api::kube_auth::Verb;

use session::{Session, Sessions};

/// The console's settings (`console:` in the config file, `--no-console`).
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// Serve it (default true).
    pub enabled: bool,
    /// `traceUrl`: a link to a trace, `{traceId}` replaced.
    pub trace_url: Option<String>,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            trace_url: None,
        }
    }
}

/// What the console's handlers share.
#[derive(Clone, Debug)]
pub struct ConsoleState {
    api: ApiState,
    sessions: Arc<Sessions>,
    /// Served over TLS: cookies are `Secure`, the expected origin is `https://`.
    secure: bool,
    trace_url: Option<String>,
    /// The change counter the live stream follows (`Shared::list_version`).
    changes: watch::Receiver<u64>,
    /// Live streams open at once (see [`ConsoleState::with_stream_cap`]).
    streams: Arc<tokio::sync::Semaphore>,
}

/// Live streams open at once by default: a quarter of the listener's default connection cap.
pub const DEFAULT_STREAMS: usize = crate::server::DEFAULT_MAX_CONNECTIONS / 4;

/// How often the change counter is looked at: a route write reaches every open page well
/// within the promised second (this, plus one fragment fetch).
pub const CHANGE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl ConsoleState {
    /// The console over the API's state. Starts the one task that turns changes of the
    /// status table and override set into live-stream events (until `shutdown`).
    pub fn new(
        api: ApiState,
        options: ConsoleOptions,
        secure: bool,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let version = || {
            api.shared
                .list_version
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let (tx, rx) = watch::channel(version());
        let shared = api.shared.clone();
        tokio::spawn(async move {
            // `list_version` is bumped by the controller whenever a phase, a routing, an
            // explanation, an error or the override set changes; reading an atomic ten
            // times a second costs nothing and keeps the controller free of console code.
            let mut tick = tokio::time::interval(CHANGE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let v = shared.list_version.load(std::sync::atomic::Ordering::Relaxed);
                        tx.send_if_modified(|old| {
                            let changed = *old != v;
                            *old = v;
                            changed
                        });
                    }
                    _ = shutdown.wait_for(|v| *v) => break,
                }
            }
        });
        Self {
            api,
            sessions: Arc::new(Sessions::default()),
            secure,
            trace_url: options.trace_url,
            changes: rx,
            streams: Arc::new(tokio::sync::Semaphore::new(DEFAULT_STREAMS)),
        }
    }

    /// At most `n` live streams at once. A stream is a call that never finishes, and the
    /// listener never evicts a connection with a call in progress: without a cap, open pages
    /// could hold every connection slot and lock operators and `/healthz` out. Give it a
    /// share of the connection cap (the daemon gives a quarter); a page beyond it is told it
    /// lost the stream and retries.
    pub fn with_stream_cap(mut self, n: usize) -> Self {
        self.streams = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// The session of a request allowed to `verb` (the fleet, or playbook `name`); else
    /// the answer: the sign-in page (a page), 401 (a fragment or the stream), or 403.
    async fn reader(
        &self,
        headers: &HeaderMap,
        need: Need,
        verb: Verb,
        name: Option<&str>,
    ) -> Result<Session, Box<Response>> {
        let Some(session) = self.sessions.current(headers, &self.api.tokens) else {
            return Err(Box::new(match need {
                Need::Page => Redirect::to("/ui/sign-in").into_response(),
                Need::Fragment => {
                    (StatusCode::UNAUTHORIZED, "signed out: sign in again").into_response()
                }
            }));
        };
        if let Err(e) = crate::api::may(&self.api, &session.caller, verb, name).await {
            return Err(Box::new(refusal_page(
                Some(&session),
                e.status(),
                e.message(),
            )));
        }
        Ok(session)
    }

    /// The session of a form post that passes the Origin check and carries the session's
    /// CSRF token; else the refusal (403 for a foreign origin or a bad token).
    fn poster(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Box<Response>> {
        if !session::same_origin(headers, self.secure) {
            return Err(Box::new(refusal_page(
                None,
                StatusCode::FORBIDDEN,
                "refused: this form was not sent from this console (Origin check)",
            )));
        }
        let Some(session) = self.sessions.current(headers, &self.api.tokens) else {
            return Err(Box::new(refusal_page(
                None,
                StatusCode::UNAUTHORIZED,
                "signed out: sign in again",
            )));
        };
        if !session.csrf_matches(csrf) {
            return Err(Box::new(refusal_page(
                Some(&session),
                StatusCode::FORBIDDEN,
                "refused: the form's CSRF token does not belong to this session; reload the page and try again",
            )));
        }
        Ok(session)
    }
}

/// What a handler answers a request without a session with.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// A page: the sign-in page.
    Page,
    /// A fragment or the event stream: 401.
    Fragment,
}

/// A whole page saying why a request was refused, with its status.
fn refusal_page(session: Option<&Session>, status: StatusCode, why: &str) -> Response {
    let body = html! {
        h1 { "Refused" }
        (layout::notice(false, &format!("{} {}:", status.as_u16(), status.canonical_reason().unwrap_or("")), Some(why)))
        p { a href="/ui/" { "Back to the fleet" } }
    };
    (status, layout::page("Refused", session, body)).into_response()
}

/// The Content-Security-Policy of every console response: own-origin files only, no inline
/// script or style, no framing, forms post only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        // Pages show live state and carry CSRF tokens: never cached.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The console's routes under `/ui/`, to merge beside the API.
pub fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(fleet::fleet))
        .route("/ui/fleet/live", get(fleet::fleet_live))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/playbooks/{name}", get(playbook::page))
        .route("/ui/playbooks/{name}/live", get(playbook::live))
        .route("/ui/playbooks/{name}/confirm", post(actions::confirm))
        .route("/ui/playbooks/{name}/act", post(actions::act))
        .route("/ui/events", get(live::events))
        .route("/ui/assets/{version}/{file}", get(assets::asset))
        .layer(axum::middleware::from_fn(security_headers))
        // gzip when the browser asks for it (every browser does); never the event stream. The
        // fastest level: at the default one a 1,000-playbook page took ~9 ms of CPU to
        // compress, several times its rendering, for a few KB less.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .gzip(true)
                .quality(tower_http::CompressionLevel::Fastest),
        )
        // Forms are a reason and a few fields; the API's limit serves here too.
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY))
        .layer(axum::middleware::from_fn(crate::server::read_body_in_time))
        .with_state(state)
}

fn sign_in_form(error: Option<&str>) -> maud::Markup {
    html! {
        div class="signin" {
            h1 { "Sign in" }
            @if let Some(e) = error { (layout::notice(false, "Not signed in:", Some(e))) }
            p { "Paste your failoverd API token (or, where the cluster's identities are enabled, a Kubernetes token). It is exchanged for a session cookie and not kept." }
            form method="post" action="/ui/sign-in" {
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="off" required autofocus;
                p { button type="submit" { "Sign in" } }
            }
        }
    }
}

async fn sign_in_page() -> Response {
    layout::page("Sign in", None, sign_in_form(None)).into_response()
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /ui/sign-in`: token → session cookie (Origin-checked: no other site can sign a
/// browser in as someone else).
async fn sign_in(
    State(state): State<ConsoleState>,
    connect: Option<axum::extract::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: Result<axum::Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !session::same_origin(&headers, state.secure) {
        return refusal_page(
            None,
            StatusCode::FORBIDDEN,
            "refused: this form was not sent from this console (Origin check)",
        );
    }
    let ip = connect.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
    let token = form.map(|f| f.0.token).unwrap_or_default();
    match crate::api::sign_in(&state.api, &token, ip).await {
        Ok(caller) => {
            tracing::info!(identity = %caller.identity, "console sign-in");
            let id = state.sessions.create(caller, &token);
            let mut resp = Redirect::to("/ui/").into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, state.secure)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => (
            e.status(),
            layout::page("Sign in", None, sign_in_form(Some(e.message()))),
        )
            .into_response(),
    }
}

/// A form that carries only the CSRF token.
#[derive(Debug, Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/sign-out`: ends the session here and in the browser.
async fn sign_out(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<axum::Form<CsrfOnly>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|f| f.0.csrf).unwrap_or_default();
    if let Err(r) = state.poster(&headers, &csrf) {
        return *r;
    }
    state.sessions.remove(&headers);
    let mut resp = Redirect::to("/ui/sign-in").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(state.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::FileConfig;

    /// Ensures `console:` in the config file parses (off, on by default, a trace link) and
    /// an unknown key under it is refused.
    #[test]
    fn config_key() {
        let off: FileConfig = serde_saphyr::from_str("console: { enabled: false }\n").unwrap();
        assert!(!off.console.unwrap().enabled);
        let on: FileConfig =
            serde_saphyr::from_str("console: { traceUrl: \"https://t/{traceId}\" }\n").unwrap();
        let on = on.console.unwrap();
        assert!(on.enabled);
        assert_eq!(on.trace_url.as_deref(), Some("https://t/{traceId}"));
        assert!(serde_saphyr::from_str::<FileConfig>("console: { enable: false }\n").is_err());
    }
}
