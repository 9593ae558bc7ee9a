#![allow(clippy::unwrap_used)]
//! The override API's method, authentication and role rules, over real HTTP on 127.0.0.1
//! against the daemon run in-process (fixture: `support::api`). Every JSON answer is checked
//! against the OpenAPI document; refusals are checked to change nothing.

use serde_json::json;

mod support;

use support::api::{ADMIN, Fixture, MUTATING, OPERATOR, Payload, READS, Unchanged, VIEWER};

/// Ensures a wrong method on every endpoint answers 405 with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let cases = [
        ("POST", "/v1/playbooks"),
        ("DELETE", "/v1/playbooks"),
        ("POST", "/v1/playbooks/demo"),
        ("PUT", "/v1/playbooks/demo"),
        ("GET", "/v1/playbooks/demo/failover"),
        ("PUT", "/v1/playbooks/demo/failback"),
        ("GET", "/v1/playbooks/demo/freeze"),
        ("DELETE", "/v1/playbooks/demo/resume"),
        ("POST", "/v1/overrides"),
        ("GET", "/v1/overrides/ov-00000000"),
        ("POST", "/v1/audit"),
        ("POST", "/v1/openapi.json"),
        ("POST", "/healthz"),
    ];
    let before = Unchanged::take(&f, &d).await;
    for (m, p) in cases {
        let r = d
            .call(
                m,
                p,
                Some(&format!("Bearer {}", OPERATOR.1)),
                Payload::Json(json!({ "reason": "x" })),
            )
            .await;
        r.assert_error(405, &format!("{m} {p}"));
    }
    before.check(&f, &d, "wrong methods").await;
    // Unknown paths are JSON 404s.
    d.call("GET", "/v1/nope", None, Payload::None)
        .await
        .assert_error(404, "unknown path");
    d.call(
        "POST",
        "/v1/playbooks/demo/explode",
        Some(&format!("Bearer {}", OPERATOR.1)),
        Payload::Json(json!({ "reason": "x" })),
    )
    .await
    .assert_error(404, "unknown action");
    d.shutdown().await;
}

/// Ensures every protected endpoint answers 401 with `WWW-Authenticate` for a missing,
/// malformed or unknown token, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_token_is_401() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let mut all: Vec<(&str, &str)> = READS.iter().map(|p| ("GET", *p)).collect();
    all.extend(MUTATING);
    for (m, p) in all {
        for auth in [
            None,
            Some("Bearer not-a-token"),
            Some("Bearer "),
            Some(&format!("Basic {}", OPERATOR.1) as &str),
        ] {
            let r = d
                .call(m, p, auth, Payload::Json(json!({ "reason": "INC-1" })))
                .await;
            r.assert_error(401, &format!("{m} {p} with {auth:?}"));
            assert_eq!(
                r.www_authenticate(),
                Some("Bearer realm=\"failoverd\""),
                "{m} {p}: {r:?}"
            );
        }
    }
    before.check(&f, &d, "unauthenticated calls").await;
    d.shutdown().await;
}

/// Ensures a viewer may read but gets 403 on every mutating endpoint, each refusal audited
/// with outcome `refused…`; an admin may do what an operator may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_is_403_on_mutations_and_audited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    for p in READS {
        assert_eq!(d.get(p, VIEWER.1).await.status, 200, "viewer GET {p}");
        assert_eq!(d.get(p, ADMIN.1).await.status, 200, "admin GET {p}");
    }
    let before = Unchanged::take(&f, &d).await;
    for (m, p) in MUTATING {
        d.send(m, p, VIEWER.1, json!({ "reason": "INC-1 viewer tries" }))
            .await
            .assert_error(403, &format!("viewer {m} {p}"));
    }
    before.check(&f, &d, "viewer calls").await;
    let refused: Vec<_> = d
        .audit(VIEWER.0)
        .await
        .into_iter()
        .filter(|r| r["outcome"].as_str().unwrap().starts_with("refused"))
        .collect();
    assert_eq!(refused.len(), MUTATING.len(), "{refused:#?}");
    for (r, action) in refused.iter().zip([
        "override-failover",
        "override-failback",
        "override-freeze",
        "override-resume",
        "override-delete",
    ]) {
        assert_eq!(r["action"], action, "{r:#}");
        assert_eq!(r["inputs"]["status"], 403, "{r:#}");
        assert_eq!(r["reason"], "INC-1 viewer tries", "{r:#}");
    }
    // Admin outranks operator.
    let r = d
        .send(
            "POST",
            "/v1/playbooks/demo/freeze",
            ADMIN.1,
            json!({ "reason": "INC-1 admin freeze", "ttl": "5m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    d.shutdown().await;
}

/// Ensures a daemon started without a token file refuses every `/v1` call (401) while
/// `/healthz`, `/readyz`, `/metrics` and the OpenAPI document answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_token_file_api_is_closed_but_health_open() {
    let f = Fixture::new().await;
    let d = f.start(false).await;
    let vs = f.vs();
    for p in READS {
        for auth in [None, Some(format!("Bearer {}", OPERATOR.1))] {
            let r = d.call("GET", p, auth.as_deref(), Payload::None).await;
            r.assert_error(401, &format!("GET {p} without token file"));
            assert!(r.www_authenticate().is_some());
        }
    }
    for (m, p) in MUTATING {
        let r = d
            .send(m, p, OPERATOR.1, json!({ "reason": "INC-1", "ttl": "5m" }))
            .await;
        r.assert_error(401, &format!("{m} {p} without token file"));
        assert_eq!(r.body["error"], "authentication is not configured");
    }
    assert_eq!(f.vs(), vs);
    for p in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let r = d.call("GET", p, None, Payload::None).await;
        assert_eq!(r.status, 200, "GET {p}: {r:?}");
    }
    let m = d.call("GET", "/metrics", None, Payload::None).await;
    // The Prometheus text format without an `Accept` asking for OpenMetrics (which alone
    // ends with `# EOF`): the whole exposition, unauthenticated.
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("# TYPE failoverd_decision_seconds histogram") && !text.contains("# EOF"),
        "{m:?}"
    );
    d.shutdown().await;
}
