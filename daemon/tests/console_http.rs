#![allow(clippy::unwrap_used)]
//! The on-call console over real HTTP on 127.0.0.1, without a browser: sign-in and its
//! cookie, the security headers, what a viewer sees and may do, forged form posts, the
//! console switched off, revocation by a token-file reload, and the live stream. The daemon
//! runs in-process on the demo playbook (fixture: `support::api`); what the console did is
//! checked through the `/v1` API and the VirtualService file, never through the console.

use std::sync::Arc;
use std::time::{Duration, Instant};

use failoverd::app::{ServeOptions, serve};
use failoverd::auth::{Tokens, hash_token};
use failoverd::console::ConsoleOptions;
use failoverd::routing::FileStore;
use failoverd::shared::Shared;
use reqwest::header;
use serde_json::json;

mod support;

use support::api::{Fixture, OPERATOR, VIEWER};

/// A browser-like client: no redirects followed (the tests look at them), a bounded wait.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A form body, encoded as a browser sends it.
fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Signs in with `token`; returns the `Set-Cookie` value and the `name=value` to send back.
async fn sign_in(base: &str, token: &str) -> (String, String) {
    let r = client()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, base)
        .header(header::CONTENT_TYPE, FORM)
        .body(encode(&[("token", token)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in: {r:?}");
    assert_eq!(r.headers()[header::LOCATION], "/ui/");
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (set, pair)
}

async fn get(base: &str, path: &str, cookie: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .get(format!("{base}{path}"))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("no CSRF field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn post_form(
    base: &str,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client()
        .post(format!("{base}{path}"))
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, FORM)
        .body(encode(form));
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

/// Ensures sign-in with an operator token sets a session cookie that is HttpOnly,
/// SameSite=Strict, scoped to /ui and expiring (not Secure over plain HTTP), that the pages
/// carry the strict CSP and refuse framing, and that without the cookie a page sends the
/// browser to the sign-in form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cookie_and_security_headers() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (set, cookie) = sign_in(&base, OPERATOR.1).await;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(set.contains(part), "{part} missing: {set}");
    }
    assert!(!set.contains("Secure"), "Secure over plain HTTP: {set}");
    assert!(!set.contains(OPERATOR.1), "the token is in the cookie");
    let (s, h, page) = get(&base, "/ui/", &cookie).await;
    assert_eq!(s, 200, "{page}");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(page.contains("href=\"/ui/playbooks/demo\""), "{page}");
    assert!(page.contains("alice@oncall"));
    // No inline script or style anywhere on the page.
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    // Pages are gzipped for a browser that asks (the fleet page of a large fleet is big).
    let r = client()
        .get(format!("{base}/ui/"))
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    let (s, h, _) = get(&base, "/ui/", "").await;
    assert_eq!(
        (s, h[header::LOCATION].to_str().unwrap()),
        (303, "/ui/sign-in")
    );
    // The page's own htmx path (it carries the assets' digest) is cached for a year.
    let at = page.find("src=\"/ui/assets/").unwrap() + "src=\"".len();
    let src = &page[at..at + page[at..].find('"').unwrap()];
    assert!(src.ends_with("/htmx.min.js"), "{src}");
    let (s, h, _) = get(&base, src, "").await;
    assert_eq!(s, 200);
    assert!(
        h[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    d.shutdown().await;
}

/// Ensures a bad token answers the sign-in page with 401 and the API's error text, and sets
/// no cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_a_401_page() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let r = client()
        .post(format!("{base}/ui/sign-in"))
        .header(header::ORIGIN, &base)
        .header(header::CONTENT_TYPE, FORM)
        .body(encode(&[("token", "not-a-token")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let page = r.text().await.unwrap();
    assert!(page.contains("invalid bearer token"), "{page}");
    d.shutdown().await;
}

/// Ensures a viewer sees the playbook without any action form, and that a viewer's post
/// (with a valid CSRF token and Origin) is refused with 403 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sees_no_actions_and_is_refused() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (_, cookie) = sign_in(&base, VIEWER.1).await;
    let (s, _, page) = get(&base, "/ui/playbooks/demo", &cookie).await;
    assert_eq!(s, 200, "{page}");
    assert!(
        !page.contains("/confirm"),
        "viewer sees action forms: {page}"
    );
    assert!(!page.contains("Review freeze"), "{page}");
    let token = csrf(&page);
    let vs = f.vs();
    for path in ["/ui/playbooks/demo/confirm", "/ui/playbooks/demo/act"] {
        let (s, body) = post_form(
            &base,
            path,
            &cookie,
            Some(&base),
            &[("csrf", &token), ("action", "freeze"), ("reason", "INC-9")],
        )
        .await;
        assert_eq!(s, 403, "{path}: {body}");
    }
    assert_eq!(f.vs(), vs);
    assert_eq!(d.overrides().await, json!([]));
    d.shutdown().await;
}

/// Ensures a form post without the session's CSRF token, with another site's Origin, or
/// with no Origin at all is refused with 403 and changes nothing; and that the same form,
/// correctly sent, freezes the playbook as the signed-in operator (seen through `/v1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_posts_are_refused() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (_, cookie) = sign_in(&base, OPERATOR.1).await;
    let (_, _, page) = get(&base, "/ui/playbooks/demo", &cookie).await;
    assert!(page.contains("/ui/playbooks/demo/confirm"), "{page}");
    let token = csrf(&page);
    let act = "/ui/playbooks/demo/act";
    let freeze = |t: &'static str| vec![("csrf", t), ("action", "freeze"), ("reason", "INC-7")];
    let (s, _) = post_form(&base, act, &cookie, Some(&base), &freeze("")).await;
    assert_eq!(s, 403, "no CSRF token");
    let (s, _) = post_form(&base, act, &cookie, Some(&base), &freeze("0000")).await;
    assert_eq!(s, 403, "wrong CSRF token");
    let good: Vec<(&str, &str)> = vec![("csrf", &token), ("action", "freeze"), ("reason", "INC-7")];
    let (s, _) = post_form(&base, act, &cookie, Some("http://evil.example"), &good).await;
    assert_eq!(s, 403, "foreign Origin");
    let (s, _) = post_form(&base, act, &cookie, None, &good).await;
    assert_eq!(s, 403, "no Origin");
    assert_eq!(d.overrides().await, json!([]));
    // The confirmation step repeats what will happen and does nothing yet.
    let (s, body) = post_form(
        &base,
        "/ui/playbooks/demo/confirm",
        &cookie,
        Some(&base),
        &good,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("Freeze") && body.contains("INC-7") && body.contains(OPERATOR.0),
        "{body}"
    );
    assert_eq!(d.overrides().await, json!([]));
    let (s, body) = post_form(&base, act, &cookie, Some(&base), &good).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Done: freeze"), "{body}");
    let o = d.overrides().await;
    assert_eq!(o[0]["kind"], "freeze", "{o}");
    assert_eq!(o[0]["actor"], OPERATOR.0, "{o}");
    let records = d.audit(OPERATOR.0).await;
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "override-freeze" && r["reason"] == "INC-7"),
        "{records:?}"
    );
    d.shutdown().await;
}

/// Ensures a refusal by a rule is shown inline with the API's error text and status: a
/// failback while already on the primary is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_the_api_error() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (_, cookie) = sign_in(&base, OPERATOR.1).await;
    let (_, _, page) = get(&base, "/ui/playbooks/demo", &cookie).await;
    let token = csrf(&page);
    let api = d
        .post("/v1/playbooks/demo/failback", json!({ "reason": "x" }))
        .await;
    let (s, body) = post_form(
        &base,
        "/ui/playbooks/demo/act",
        &cookie,
        Some(&base),
        &[
            ("csrf", &token),
            ("action", "failback"),
            ("reason", "INC-8"),
        ],
    )
    .await;
    assert_eq!(s, api.status, "{body}");
    let error = api.body["error"].as_str().unwrap();
    assert!(
        body.contains(&format!("Refused ({})", api.status)),
        "{body}"
    );
    assert!(body.contains(error), "{error} not in {body}");
    d.shutdown().await;
}

/// Ensures `console: { enabled: false }` serves no console: `/ui/` and its pages are 404
/// while the API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_off_is_404() {
    let f = Fixture::new().await;
    let loaded = support::loaded(&f.pb);
    let shared = Arc::new(Shared::new(&loaded));
    let (rt, audit_path) = support::runtime(
        loaded,
        Arc::new(FileStore::new(f.dir.path().join("routes"))),
        f.dir.path(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(
        rt,
        shared,
        Arc::new(Tokens::load(&f.dir.path().join("tokens.yaml")).unwrap()),
        audit_path,
        listener,
        stop_rx,
        ServeOptions {
            console: ConsoleOptions {
                enabled: false,
                trace_url: None,
            },
            ..ServeOptions::default()
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for path in [
        "/ui/",
        "/ui/sign-in",
        "/ui/playbooks/demo",
        "/ui/assets/v1/htmx.min.js",
    ] {
        let (s, _, _) = get(&base, path, "").await;
        assert_eq!(s, 404, "{path}");
    }
    let r = client()
        .get(format!("{base}/v1/playbooks"))
        .bearer_auth(VIEWER.1)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 404);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Ensures a session ends when a token-file reload drops its identity: pages send the
/// browser back to sign-in and the live stream is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_revoked_when_the_token_file_drops_it() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (_, cookie) = sign_in(&base, OPERATOR.1).await;
    assert_eq!(get(&base, "/ui/", &cookie).await.0, 200);
    std::fs::write(
        f.dir.path().join("tokens.yaml"),
        format!(
            "- {{ identity: \"{}\", role: viewer, sha256: \"{}\" }}\n",
            VIEWER.0,
            hash_token(VIEWER.1)
        ),
    )
    .unwrap();
    // The token file is looked at again at most once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, h, _) = get(&base, "/ui/", &cookie).await;
        if s == 303 {
            assert_eq!(h[header::LOCATION], "/ui/sign-in");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session still alive after the reload"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&base, "/ui/events", &cookie).await.0, 401);
    d.shutdown().await;
}

/// Ensures the live stream announces a route write: after a failover through the API, a
/// `change` event arrives on an open stream within a second of the write's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_announces_a_route_write() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let base = format!("http://{}", d.addr);
    let (_, cookie) = sign_in(&base, VIEWER.1).await;
    let mut stream = client()
        .get(format!("{base}/ui/events"))
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Never compressed: a compressor would hold events back until its buffer fills.
    assert!(stream.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(
        stream.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    // The first event carries the version the page starts from.
    while !seen.contains("event: change") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("no first event")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Let the stream go quiet (the demo's start-up settles), so the next event is the write's.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the stream never went quiet: {seen}"
        );
        match tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await {
            Err(_) => break,
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap())),
        }
    }
    seen.clear();
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-5", "force": true }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let written = Instant::now();
    while !seen.contains("event: change") {
        let left = Duration::from_secs(1).saturating_sub(written.elapsed());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("no change event within 1 s of the write")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    d.shutdown().await;
}

/// Ensures live streams are capped: with a cap of one, a second stream is refused (503)
/// while the first is open, and accepted once the first is gone — open pages can never hold
/// every connection slot of the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::Service;
    let f = Fixture::new().await;
    let (_shared, api) = f.api_state();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut app = failoverd::console::routes(
        failoverd::console::ConsoleState::new(api, ConsoleOptions::default(), false, stop_rx)
            .with_stream_cap(1),
    );
    let signed = app
        .call(
            Request::post("/ui/sign-in")
                .header(header::HOST, "127.0.0.1:1")
                .header(header::ORIGIN, "http://127.0.0.1:1")
                .header(header::CONTENT_TYPE, FORM)
                .body(Body::from(encode(&[("token", VIEWER.1)])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let events = || {
        Request::get("/ui/events")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap()
    };
    let first = app.call(events()).await.unwrap();
    assert_eq!(first.status(), 200);
    let second = app.call(events()).await.unwrap();
    assert_eq!(second.status(), 503);
    drop(first);
    // The first stream's task notices its page is gone and gives its place back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = app.call(events()).await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream's place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
