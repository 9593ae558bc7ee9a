#![allow(clippy::unwrap_used)]
//! The on-call console in a real browser: Debian's headless Chromium over WebDriver
//! (thirtyfour), against the real `failoverd` binary on the file store with real stand-in
//! services on loopback. What the console did is checked through the `/v1` API and the
//! audit log, never through the console itself.
//!
//! Screenshots of the fleet and playbook pages at 1280 px and 360 px wide are written to
//! `$FAILOVERD_SCREENSHOTS` (else a temporary directory); `docs/console/` keeps a copy.
//!
//! Needs `chromium` and `chromedriver` (package `chromium-driver`); `scripts/test.sh`
//! installs them. Without them the test fails on a machine that could install them (root
//! with apt-get) and skips, loudly, only on one that cannot.

mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{Browser, Console, OPERATOR, OTHERS, VIEWER};
use failoverd::engine::Routing;
use thirtyfour::prelude::*;

/// Whether the browser is there; panics when it could be installed but is not.
fn browser_or_skip() -> bool {
    match browser::browser_binaries() {
        Ok(_) => true,
        Err(why) if browser::can_install() => panic!(
            "{why}: this machine can install them — run scripts/test.sh (it installs chromium \
             and chromium-driver) or `apt-get install chromium chromium-driver`"
        ),
        Err(why) => {
            eprintln!(
                "\n################################################################\n\
                 SKIPPED console_browser: {why}, and this machine cannot install\n\
                 packages (not root with apt-get). Install chromium and\n\
                 chromium-driver to run the console's browser test.\n\
                 ################################################################\n"
            );
            false
        }
    }
}

fn screenshot_dir() -> PathBuf {
    match std::env::var_os("FAILOVERD_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("failoverd-screenshots-{}", std::process::id())),
    }
}

/// Waits until `script` (returning a boolean) is true in the page; returns when it was.
async fn wait_page(b: &Browser, script: &str, within: Duration, what: &str) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let ok = b
            .driver
            .execute(script, Vec::new())
            .await
            .map(|r| r.json().as_bool() == Some(true))
            .unwrap_or(false);
        if ok {
            return Instant::now();
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not seen within {within:?}; page:\n{}",
                b.driver.source().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn shoot(b: &Browser, dir: &std::path::Path, name: &str, width: u32, height: u32) {
    b.viewport(width, height).await.unwrap();
    // Let the layout settle at the new width before the picture.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = dir.join(format!("{name}-{width}.png"));
    b.driver.screenshot(&path).await.unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        path.display()
    );
    eprintln!("screenshot: {}", path.display());
}

/// Ensures the on-call scenario end to end: an operator signs in and the fleet shows every
/// playbook; the demo primary fails and the open page shows the failover within 1 s of the
/// route write, without a reload; the operator freezes the playbook from its form with a
/// reason (through the confirmation step); `GET /v1/playbooks/demo` shows the freeze and the
/// audit record names the operator. Then a viewer sees no action controls, and when the
/// daemon goes away the open page says it lost its live stream. Screenshots of both pages at
/// 1280 px and 360 px are taken along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sees_the_failover_live_and_freezes() {
    if !browser_or_skip() {
        return;
    }
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let c = Console::start(&[], &[]).await.unwrap();
    let b = Browser::start().await.unwrap();
    b.sign_in(&c.base, OPERATOR.1).await.unwrap();
    // Every playbook is on the fleet page.
    for name in std::iter::once("demo").chain(OTHERS) {
        b.driver
            .find(By::Id(format!("pb-{name}")))
            .await
            .unwrap_or_else(|e| panic!("{name} not on the fleet page: {e}"));
    }
    // A marker that a reload would wipe: the failover must arrive without one.
    b.driver
        .execute("window.failoverdNoReload = true; return true;", Vec::new())
        .await
        .unwrap();
    c.scenario.primary.set_health_status(503);
    let (_, _) = c
        .scenario
        .wait_routing(|r| r != Routing::Primary, Duration::from_secs(30))
        .await
        .unwrap();
    // The write's own time: the VirtualService file's modification time (same clock as the
    // test's; the harness's 10 ms polling would otherwise flatter the lag).
    let written = std::fs::metadata(&c.scenario.vs_path)
        .unwrap()
        .modified()
        .unwrap();
    wait_page(
        &b,
        "var r = document.getElementById('pb-demo'); \
         return !!r && r.getAttribute('data-phase') === 'failedOver';",
        Duration::from_secs(5),
        "the failover on the fleet page",
    )
    .await;
    let lag = std::time::SystemTime::now()
        .duration_since(written)
        .unwrap_or_default();
    assert!(
        lag <= Duration::from_secs(1),
        "the page showed the failover {lag:?} after the write (budget 1 s)"
    );
    let kept = b
        .driver
        .execute("return window.failoverdNoReload === true;", Vec::new())
        .await
        .unwrap();
    assert_eq!(kept.json().as_bool(), Some(true), "the page was reloaded");
    shoot(&b, &shots, "fleet", 1280, 900).await;
    shoot(&b, &shots, "fleet", 360, 1400).await;
    b.viewport(1280, 900).await.unwrap();

    // Freeze from the playbook page's form, through the confirmation step.
    b.driver
        .goto(format!("{}/ui/playbooks/demo", c.base))
        .await
        .unwrap();
    b.driver
        .find(By::Id("z-ttl"))
        .await
        .unwrap()
        .send_keys("30m")
        .await
        .unwrap();
    b.driver
        .find(By::Id("z-reason"))
        .await
        .unwrap()
        .send_keys("INC-4711 primary flapping, hold while we look")
        .await
        .unwrap();
    b.driver
        .find(By::XPath("//button[contains(., 'Review freeze')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let confirm = b.wait_find(By::Css("div.confirm")).await.unwrap();
    let said = confirm.text().await.unwrap();
    assert!(
        said.contains("Freeze") && said.contains("30m") && said.contains(OPERATOR.0),
        "the confirmation does not repeat what will happen: {said}"
    );
    b.driver
        .find(By::XPath("//button[contains(., 'Confirm freeze')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let result = b.wait_find(By::Id("result")).await.unwrap();
    let text = result.text().await.unwrap();
    assert!(text.contains("Done: freeze"), "{text}");
    b.wait_live().await.unwrap();
    // The API shows the freeze, by the operator; the audit record names the operator.
    let pb = c.api("/v1/playbooks/demo", VIEWER.1).await.unwrap();
    let overrides = pb["overrides"].as_array().unwrap();
    assert!(
        overrides
            .iter()
            .any(|o| o["kind"] == "freeze" && o["actor"] == OPERATOR.0),
        "{pb}"
    );
    let audit = c
        .api("/v1/audit?playbook=demo&limit=50", VIEWER.1)
        .await
        .unwrap();
    assert!(
        audit["records"].as_array().unwrap().iter().any(|r| {
            r["action"] == "override-freeze"
                && r["actor"] == OPERATOR.0
                && r["reason"] == "INC-4711 primary flapping, hold while we look"
        }),
        "{audit}"
    );
    shoot(&b, &shots, "playbook", 1280, 2200).await;
    shoot(&b, &shots, "playbook", 360, 4200).await;
    b.viewport(1280, 900).await.unwrap();

    // A viewer sees no action controls.
    b.sign_out().await.unwrap();
    b.sign_in(&c.base, VIEWER.1).await.unwrap();
    b.driver
        .goto(format!("{}/ui/playbooks/demo", c.base))
        .await
        .unwrap();
    b.driver.find(By::Id("pb-live")).await.unwrap();
    let forms = b
        .driver
        .find_all(By::Css("form[action$='/confirm'], form[action$='/act']"))
        .await
        .unwrap();
    assert!(
        forms.is_empty(),
        "a viewer sees {} action forms",
        forms.len()
    );
    let buttons = b
        .driver
        .find_all(By::XPath("//button[contains(., 'Review')]"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "a viewer sees action buttons");

    // The daemon goes away: the open page says it lost its live stream.
    let mut c = c;
    b.wait_live().await.unwrap();
    c.daemon.kill().unwrap();
    wait_page(
        &b,
        "var s = document.getElementById('live-status'); \
         return !!s && s.classList.contains('live-lost') && s.textContent.indexOf('lost') >= 0;",
        Duration::from_secs(5),
        "the page saying it lost the stream",
    )
    .await;
    b.quit().await;
    drop(c);
}

/// Ensures a cluster identity signs in to the console through the same TokenReview as the
/// API (`--auth-kubernetes`, the API server emulator answering), reads the fleet it may
/// `list`, and acts only where SubjectAccessReview allows `update`: its freeze on `demo` is
/// recorded under its cluster username, its freeze on `other` is refused with the API's 403
/// text and audited. No browser: plain HTTP with the session cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_identity_signs_in_through_tokenreview() {
    use chaos_tests::kube_emulator::{Emulator, Rule};
    const NS: &str = "failoverd";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = chaos_tests::Scenario::new(&[]).await.unwrap();
    let other = s
        .playbook_text
        .replacen("name: demo #", "name: other #", 1)
        .replacen(
            "{ namespace: demo, name: web }",
            "{ namespace: demo, name: web2 }",
            1,
        );
    std::fs::write(s.paths.playbooks.join("other.yaml"), other).unwrap();
    let mut vs = chaos_tests::Scenario::original_vs().unwrap();
    vs["metadata"]["name"] = serde_json::json!("web2");
    std::fs::write(s.paths.store.join("demo/web2.yaml"), vs.to_string()).unwrap();
    let emu = Emulator::start().await.unwrap();
    emu.set_anonymous(None);
    emu.add_token(
        "sa-token",
        "system:serviceaccount:failoverd:failoverd",
        vec![
            Rule::new(
                &["create"],
                &["authentication.k8s.io"],
                &["tokenreviews"],
                &["*"],
            ),
            Rule::new(
                &["create"],
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["*"],
            ),
        ],
    );
    let kubeconfig = s.dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, "sa-token").unwrap();
    emu.review_token("oidc-carol", "carol@example.com", &["oncall"]);
    for (verb, name) in [("list", "*"), ("get", "*"), ("update", "demo")] {
        emu.allow("carol@example.com", NS, verb, name);
    }
    let mut d = chaos_tests::Daemon::spawn_with(
        &s.paths,
        "console-cluster",
        &[
            "--auth-kubernetes",
            "--auth-namespace",
            NS,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    )
    .unwrap();
    d.wait_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    let base = format!("http://{}", d.addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let form = |pairs: &[(&str, &str)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    let post = |path: String, cookie: Option<String>, body: String| {
        let mut r = http
            .post(format!("{base}{path}"))
            .header("origin", &base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let r = post("/ui/sign-in".into(), None, form(&[("token", "oidc-carol")]))
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", d.logs());
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{base}/ui/playbooks/demo"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("carol@example.com"), "{page}");
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = page[at..at + 64].to_string();
    let freeze = |reason: &str| {
        form(&[
            ("csrf", csrf.as_str()),
            ("action", "freeze"),
            ("reason", reason),
        ])
    };
    let r = post(
        "/ui/playbooks/demo/act".into(),
        Some(cookie.clone()),
        freeze("INC-31"),
    )
    .await
    .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let rec = s
        .wait_audit(
            "carol's freeze",
            |r| r.action == "override-freeze" && r.playbook == "demo",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(rec.actor, "carol@example.com");
    let r = post(
        "/ui/playbooks/other/act".into(),
        Some(cookie.clone()),
        freeze("INC-32"),
    )
    .await
    .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not update playbook other"), "{body}");
    let refused = s
        .wait_audit(
            "the audited refusal",
            |r| r.playbook == "other" && r.outcome.starts_with("refused"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(refused.actor, "carol@example.com");
    // A token the cluster does not authenticate gets the sign-in page with 401.
    let r = post("/ui/sign-in".into(), None, form(&[("token", "nobody")]))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
