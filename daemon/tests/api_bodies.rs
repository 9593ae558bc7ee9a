#![allow(clippy::unwrap_used)]
//! The override API's refusals of bad bodies, ttls, targets and names (400/404/409/413/422):
//! each a JSON error that changes nothing (the VirtualService file byte-identical, the
//! override list the same) and is audited as refused. Fixture: `support::api`.

use serde_json::json;

mod support;

use support::api::{Daemon, Fixture, OPERATOR, Payload, Unchanged, VIEWER};

/// Sends `cases` (what, body, expected status) to `method path` as the operator and checks
/// each is a JSON error with nothing changed, and each is audited as refused.
async fn refuse_all(
    f: &Fixture,
    d: &Daemon,
    method: &str,
    path: &str,
    cases: &[(&str, Payload, u16)],
) {
    let before = Unchanged::take(f, d).await;
    let audited_before = d.audit(OPERATOR.0).await.len();
    for (what, payload, status) in cases {
        let payload = match payload {
            Payload::None => Payload::None,
            Payload::Json(v) => Payload::Json(v.clone()),
            Payload::Raw(s) => Payload::Raw(s.clone()),
        };
        let r = d
            .call(
                method,
                path,
                Some(&format!("Bearer {}", OPERATOR.1)),
                payload,
            )
            .await;
        r.assert_error(*status, &format!("{method} {path}: {what}"));
        before
            .check(f, d, &format!("{method} {path}: {what}"))
            .await;
    }
    let records = d.audit(OPERATOR.0).await;
    let new = &records[audited_before..];
    assert_eq!(
        new.len(),
        cases.len(),
        "one audit record per refusal: {new:#?}"
    );
    for (r, (what, _, status)) in new.iter().zip(cases) {
        assert!(
            r["outcome"].as_str().unwrap().starts_with("refused"),
            "{what}: {r:#}"
        );
        // Refusals by the API carry the status; the controller's (409) carry the request.
        if *status != 409 {
            assert_eq!(r["inputs"]["status"], *status, "{what}: {r:#}");
        }
        assert!(
            r["reason"].as_str().unwrap().chars().count() <= failoverd::api::MAX_REASON,
            "{what}: audited reason not bounded"
        );
    }
}

/// Sends a valid body for `action` to a playbook that does not exist: a 404 JSON error that
/// changes nothing and is audited as refused.
async fn refuse_unknown_playbook(f: &Fixture, d: &Daemon, action: &str) {
    let path = format!("/v1/playbooks/nope/{action}");
    let body = Payload::Json(json!({ "reason": "INC-1" }));
    refuse_all(f, d, "POST", &path, &[("unknown playbook", body, 404)]).await;
}

/// The body refusals every mutating endpoint shares.
fn common_bad_bodies() -> Vec<(&'static str, Payload, u16)> {
    vec![
        ("malformed JSON", Payload::Raw("{\"reason\": ".into()), 400),
        ("not JSON at all", Payload::Raw("reason=INC-1".into()), 400),
        ("empty body", Payload::None, 400),
        (
            "unknown field",
            Payload::Json(json!({ "reason": "INC-1", "because": "x" })),
            422,
        ),
        ("missing reason", Payload::Json(json!({})), 422),
        (
            "reason not a string",
            Payload::Json(json!({ "reason": 5 })),
            422,
        ),
        ("empty reason", Payload::Json(json!({ "reason": "" })), 422),
        (
            "blank reason",
            Payload::Json(json!({ "reason": "   " })),
            422,
        ),
        (
            "too long reason",
            Payload::Json(json!({ "reason": "r".repeat(failoverd::api::MAX_REASON + 1) })),
            422,
        ),
        (
            "oversized body",
            Payload::Json(json!({ "reason": "r".repeat(failoverd::api::MAX_BODY + 1) })),
            413,
        ),
    ]
}

fn bad_ttls() -> Vec<(&'static str, Payload, u16)> {
    ["0s", "8d", "soon"]
        .into_iter()
        .map(|t| {
            (
                t,
                Payload::Json(json!({ "reason": "INC-1", "ttl": t })),
                422,
            )
        })
        .collect()
}

/// Ensures failover refuses bad bodies (400/413/422), bad ttls and targets (422) and an
/// unknown playbook (404), changing nothing and auditing each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.extend(bad_ttls());
    for (what, t) in [
        ("target primary", json!("primary")),
        ("target garbage", json!("failover[x]")),
        ("negative target", json!(-1)),
        ("boolean target", json!(true)),
    ] {
        cases.push((
            what,
            Payload::Json(json!({ "reason": "INC-1", "target": t })),
            422,
        ));
    }
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/failover", &cases).await;
    refuse_unknown_playbook(&f, &d, "failover").await;
    d.shutdown().await;
}

/// Ensures failback refuses bad bodies, a ttl or target (422) and an unknown playbook (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.push((
        "ttl on failback",
        Payload::Json(json!({ "reason": "INC-1", "ttl": "1h" })),
        422,
    ));
    cases.push((
        "target on failback",
        Payload::Json(json!({ "reason": "INC-1", "target": "failover[0]" })),
        422,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/failback", &cases).await;
    refuse_unknown_playbook(&f, &d, "failback").await;
    d.shutdown().await;
}

/// Ensures freeze refuses bad bodies, bad ttls, a target or force (422) and an unknown
/// playbook (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    cases.extend(bad_ttls());
    cases.push((
        "target on freeze",
        Payload::Json(json!({ "reason": "INC-1", "target": "failover[0]" })),
        422,
    ));
    cases.push((
        "force on freeze",
        Payload::Json(json!({ "reason": "INC-1", "force": true })),
        422,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/freeze", &cases).await;
    refuse_unknown_playbook(&f, &d, "freeze").await;
    d.shutdown().await;
}

/// Ensures resume refuses bad bodies, any ttl/target/force (422), an unknown playbook (404),
/// and with nothing to release answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut cases = common_bad_bodies();
    for (what, b) in [
        ("ttl on resume", json!({ "reason": "INC-1", "ttl": "1h" })),
        (
            "target on resume",
            json!({ "reason": "INC-1", "target": 0 }),
        ),
        (
            "force on resume",
            json!({ "reason": "INC-1", "force": true }),
        ),
    ] {
        cases.push((what, Payload::Json(b), 422));
    }
    cases.push((
        "nothing to release",
        Payload::Json(json!({ "reason": "INC-1" })),
        409,
    ));
    refuse_all(&f, &d, "POST", "/v1/playbooks/demo/resume", &cases).await;
    refuse_unknown_playbook(&f, &d, "resume").await;
    d.shutdown().await;
}

/// Ensures deleting an override refuses bad bodies, any ttl/target/force (422) and an
/// unknown id (404), changing nothing and auditing each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_override_refuses_bad_requests() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "INC-1 freeze to delete later", "ttl": "10m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    let mut cases = common_bad_bodies();
    for (what, b) in [
        ("ttl on delete", json!({ "reason": "INC-1", "ttl": "1h" })),
        (
            "target on delete",
            json!({ "reason": "INC-1", "target": "failover[0]" }),
        ),
        (
            "force on delete",
            json!({ "reason": "INC-1", "force": true }),
        ),
    ] {
        cases.push((what, Payload::Json(b), 422));
    }
    refuse_all(&f, &d, "DELETE", &format!("/v1/overrides/{id}"), &cases).await;
    refuse_all(
        &f,
        &d,
        "DELETE",
        "/v1/overrides/ov-does-not-exist",
        &[(
            "unknown id",
            Payload::Json(json!({ "reason": "INC-1" })),
            404,
        )],
    )
    .await;
    assert_eq!(d.overrides().await.as_array().unwrap().len(), 1);
    d.shutdown().await;
}

/// Ensures GET of an unknown playbook is 404 and bad audit queries are 400, as JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_refuse_unknown_names_and_bad_queries() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    d.get("/v1/playbooks/nope", VIEWER.1)
        .await
        .assert_error(404, "unknown playbook");
    for q in ["since=yesterday", "limit=-1", "color=blue"] {
        d.get(&format!("/v1/audit?{q}"), VIEWER.1)
            .await
            .assert_error(400, q);
    }
    let r = d.get("/v1/playbooks/demo", VIEWER.1).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["virtualService"], "demo/web");
    assert_eq!(r.body["store"]["routing"]["to"], "primary");
    d.shutdown().await;
}
