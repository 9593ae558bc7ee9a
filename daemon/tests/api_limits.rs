#![allow(clippy::unwrap_used)]
//! The override API under abuse: limits before the role check, bounded audit records,
//! content type, bounded audit reads, and no state reported before it is loaded
//! (fixture: `support::api`).

use std::time::Instant;

use serde_json::{Value, json};

mod support;

use support::api::{Daemon, Fixture, OPERATOR, Payload, Unchanged, VIEWER, viewer_get};

/// Reads one sample of the daemon's `/metrics` (0 when the series does not exist yet).
async fn metric(d: &Daemon, series: &str) -> f64 {
    let r = d.call("GET", "/metrics", None, Payload::None).await;
    let text = r.body.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Ensures a mutating call with a non-JSON body is refused with a 415 JSON error (audited
/// like any refusal), changing nothing; a JSON one with parameters in the type is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_body_is_415() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let url = format!("http://{}/v1/playbooks/demo/freeze", d.addr);
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = d
            .client
            .post(&url)
            .bearer_auth(OPERATOR.1)
            .body(r#"{"reason":"INC-1","ttl":"5m"}"#);
        if let Some(ct) = ct {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 415, "{ct:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
        assert!(body.get("detail").is_some(), "{body}");
    }
    before.check(&f, &d, "415").await;
    let audited = d.audit(OPERATOR.0).await;
    assert_eq!(
        audited
            .iter()
            .filter(|r| r["inputs"]["status"] == 415)
            .count(),
        3,
        "{audited:#?}"
    );
    let ok = d
        .client
        .post(&url)
        .bearer_auth(OPERATOR.1)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(r#"{"reason":"INC-1","ttl":"5m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    d.shutdown().await;
}

/// Ensures a 60 KB name in the path is refused with 404 before authentication, the role
/// check or the audit: nothing is recorded and nothing changes, whoever calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_names_are_refused_before_anything() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let all_before = d.get("/v1/audit?limit=10000", VIEWER.1).await.body["records"]
        .as_array()
        .unwrap()
        .len();
    let long = "x".repeat(60 * 1024);
    let just_over = "y".repeat(failoverd::api::MAX_NAME + 1);
    for name in [&long, &just_over] {
        for (auth, m, p) in [
            (None, "POST", format!("/v1/playbooks/{name}/freeze")),
            (
                Some(VIEWER.1),
                "POST",
                format!("/v1/playbooks/{name}/failover"),
            ),
            (
                Some(OPERATOR.1),
                "POST",
                format!("/v1/playbooks/{name}/freeze"),
            ),
            (Some(OPERATOR.1), "DELETE", format!("/v1/overrides/{name}")),
            (Some(VIEWER.1), "GET", format!("/v1/playbooks/{name}")),
        ] {
            let auth = auth.map(|t| format!("Bearer {t}"));
            let r = d
                .call(
                    m,
                    &p,
                    auth.as_deref(),
                    Payload::Json(json!({ "reason": "INC-1" })),
                )
                .await;
            r.assert_error(404, &format!("{m} {} bytes", p.len()));
            assert!(
                r.body.to_string().len() < 1024,
                "the answer echoes the name"
            );
        }
    }
    before.check(&f, &d, "long names").await;
    let all_after = d.get("/v1/audit?limit=10000", VIEWER.1).await.body["records"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(all_after, all_before, "a long-name call was audited");
    d.shutdown().await;
}

/// Ensures a viewer looping on mutating calls is rate-limited before the role check, and the
/// audit records it causes stay within its audit budget however many calls it makes; the
/// 429s and the unaudited refusals are counted in metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_flood_makes_a_bounded_number_of_records() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let start = Instant::now();
    let (mut forbidden, mut limited) = (0, 0);
    for i in 0..300 {
        let r = d
            .send(
                "POST",
                "/v1/playbooks/demo/failover",
                VIEWER.1,
                json!({ "reason": format!("flood {i}") }),
            )
            .await;
        match r.status {
            403 => forbidden += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        limited > 0 && forbidden > 0,
        "403: {forbidden}, 429: {limited}"
    );
    // The rate limit (bursts of 20, 5/s) bounds the 403s; the audit budget (bursts of
    // AUDIT_REFUSAL_BURST, AUDIT_REFUSALS_PER_MINUTE/min) bounds the records.
    assert!(
        f64::from(forbidden) <= 20.0 + 5.0 * secs + 1.0,
        "{forbidden} 403s in {secs:.1} s"
    );
    let audited = d.audit(VIEWER.0).await.len() as f64;
    let budget = f64::from(failoverd::api::AUDIT_REFUSAL_BURST)
        + f64::from(failoverd::api::AUDIT_REFUSALS_PER_MINUTE) * secs / 60.0
        + 1.0;
    assert!(audited <= budget, "{audited} records, budget {budget:.1}");
    assert!(audited >= 20.0, "the first refusals are audited: {audited}");
    assert_eq!(
        metric(&d, "failoverd_api_rate_limited_total{by=\"identity\"}").await,
        f64::from(limited)
    );
    assert_eq!(
        metric(&d, "failoverd_api_refusals_unaudited_total").await,
        f64::from(forbidden) - audited
    );
    d.shutdown().await;
}

/// Ensures failed authentications are counted by reason, and beyond a burst one source
/// address gets 429 (still JSON) instead of 401, while a valid token from the same address
/// still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_and_limited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let (mut unauthorized, mut limited) = (0u32, 0u32);
    let n = failoverd::api::AUTH_FAILURE_BURST + 40;
    for i in 0..n {
        let auth = if i % 2 == 0 {
            Some("Bearer wrong".to_string())
        } else {
            None
        };
        let r = d
            .call("GET", "/v1/overrides", auth.as_deref(), Payload::None)
            .await;
        match r.status {
            401 => unauthorized += 1,
            429 => {
                r.assert_error(429, "auth flood");
                limited += 1;
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert!(
        unauthorized >= failoverd::api::AUTH_FAILURE_BURST,
        "{unauthorized}"
    );
    assert!(limited > 0, "no 429 after {n} failed authentications");
    assert_eq!(
        metric(&d, "failoverd_api_auth_failures_total{reason=\"invalid\"}").await
            + metric(&d, "failoverd_api_auth_failures_total{reason=\"missing\"}").await,
        f64::from(n)
    );
    assert_eq!(d.get("/v1/overrides", VIEWER.1).await.status, 200);
    d.shutdown().await;
}

/// Ensures the API reports no state before the saved overrides are published: 503 (JSON)
/// for the override list and the playbooks, then the real list once loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_not_reported_before_it_is_loaded() {
    let f = Fixture::new().await;
    let (shared, api) = f.api_state();
    let mut app = failoverd::server::router(shared.clone(), api);
    for p in ["/v1/overrides", "/v1/playbooks", "/v1/playbooks/demo"] {
        let (status, body) = viewer_get(&mut app, p).await;
        assert_eq!(status, 503, "{p}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("not loaded"),
            "{body}"
        );
    }
    shared
        .state_loaded
        .store(true, std::sync::atomic::Ordering::Release);
    let (status, body) = viewer_get(&mut app, "/v1/overrides").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overrides"], json!([]));
}

/// Ensures `GET /v1/audit` reads run at most `AUDIT_READS` at once: with every turn taken a
/// read waits, then answers 503 (JSON); once a turn is free it answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_are_bounded_in_number() {
    let f = Fixture::new().await;
    let (shared, api) = f.api_state();
    let turns = api.audit_reads.clone();
    let mut app = failoverd::server::router(shared, api);
    let mut get = async || viewer_get(&mut app, "/v1/audit?limit=5").await;
    let held = turns
        .clone()
        .try_acquire_many_owned(u32::try_from(failoverd::api::AUDIT_READS).unwrap())
        .unwrap();
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("audit log reads"),
        "{body}"
    );
    drop(held);
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert!(body["records"].is_array(), "{body}");
}
