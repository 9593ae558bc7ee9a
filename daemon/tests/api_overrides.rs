#![allow(clippy::unwrap_used)]
//! The override API's happy paths and rules: failover and failback, freeze and resume,
//! deleting an override, missing and down targets, restarts and the per-identity rate
//! limit, over real HTTP against the daemon run in-process (fixture: `support::api`).

use std::time::Duration;

use serde_json::{Value, json};

mod support;

use support::api::{
    ADMIN, DR_HOST, Fixture, OPERATOR, PRIMARY_HOST, Unchanged, VIEWER, wait_until,
};

/// Ensures an operator failover routes to the DR host, is listed as an override, holds while
/// the primary is healthy, and a failback restores the original route exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_holds_then_failback_restores_original() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    assert_eq!(f.routed_host(), PRIMARY_HOST);
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-7 move traffic off eu-west", "ttl": "10m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["routing"]["to"], "failover", "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    assert_eq!(f.routed_host(), DR_HOST);
    let ov = d.overrides().await;
    assert_eq!(ov.as_array().unwrap().len(), 1, "{ov:#}");
    assert_eq!(ov[0]["id"], id.as_str());
    assert_eq!(ov[0]["kind"], "failover");
    assert_eq!(ov[0]["actor"], OPERATOR.0);
    assert_eq!(ov[0]["target"], 0);
    // The primary is healthy all along; the hold keeps traffic on DR.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.routed_host(), DR_HOST);
    assert_eq!(d.phase().await, "failedOver");
    let detail = d.get("/v1/playbooks/demo", VIEWER.1).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.body["store"]["routing"]["to"], "failover");
    assert_eq!(
        detail.body["status"]["transitions"][0]["kind"],
        "operatorFailover"
    );

    let r = d
        .post(
            "/v1/playbooks/demo/failback",
            json!({ "reason": "INC-7 resolved" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let now: Value = serde_saphyr::from_str(&f.vs()).unwrap();
    let original: Value = serde_saphyr::from_str(&f.original_vs).unwrap();
    assert_eq!(now, original, "failback did not restore the original route");
    assert_eq!(d.overrides().await, json!([]), "failback releases the hold");
    // Failback again: already on the primary.
    let before = Unchanged::take(&f, &d).await;
    d.post(
        "/v1/playbooks/demo/failback",
        json!({ "reason": "INC-7 again" }),
    )
    .await
    .assert_error(409, "failback on primary");
    before.check(&f, &d, "failback on primary").await;
    let writes: Vec<_> = d
        .audit(OPERATOR.0)
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "written")
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(writes, ["operator-failover", "operator-failback"]);
    d.shutdown().await;
}

/// Ensures a frozen playbook shows phase `frozen` and does not fail over when the primary
/// goes down, and fails over automatically once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_blocks_automatic_failover_until_resume() {
    let mut f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-42 maintenance", "ttl": "30m" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["written"], false);
    assert!(r.body["overrideId"].as_str().unwrap().starts_with("ov-"));
    wait_until("phase frozen", Duration::from_secs(3), || async {
        d.phase().await == "frozen"
    })
    .await;
    let vs = f.vs();
    f.primary.stop();
    // 1 s probes x threshold 3: unfrozen, this would have failed over by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(f.vs() == vs, "a frozen playbook moved traffic");
    assert_eq!(d.phase().await, "frozen");
    let r = d
        .post(
            "/v1/playbooks/demo/resume",
            json!({ "reason": "CHG-42 done" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.overrides().await, json!([]));
    wait_until("automatic failover", Duration::from_secs(10), || async {
        f.routed_host() == DR_HOST
    })
    .await;
    let auto = d.audit("engine").await;
    assert!(
        auto.iter()
            .any(|r| r["action"] == "failover" && r["outcome"] == "written"),
        "{auto:#?}"
    );
    d.shutdown().await;
}

/// Ensures DELETE /v1/overrides/{id} removes a freeze and automation is back in control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_override_removes_it() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-43", "ttl": "1h" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    assert_eq!(d.overrides().await[0]["id"], id.as_str());
    let r = d
        .send(
            "DELETE",
            &format!("/v1/overrides/{id}"),
            OPERATOR.1,
            json!({ "reason": "CHG-43 cancelled" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.overrides().await, json!([]));
    wait_until("phase normal", Duration::from_secs(3), || async {
        d.phase().await == "normal"
    })
    .await;
    let del: Vec<_> = d
        .audit(OPERATOR.0)
        .await
        .into_iter()
        .filter(|r| r["action"] == "override-delete")
        .collect();
    assert_eq!(del.len(), 1, "{del:#?}");
    assert_eq!(del[0]["outcome"], "accepted");
    assert_eq!(del[0]["reason"], "CHG-43 cancelled");
    d.shutdown().await;
}

/// Ensures a failover to a target that does not exist is refused with 409 and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_missing_target_is_409() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let before = Unchanged::take(&f, &d).await;
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-8", "target": "failover[5]" }),
        )
        .await;
    r.assert_error(409, "failover[5]");
    assert!(
        r.body["error"].as_str().unwrap().contains("does not exist"),
        "{r:?}"
    );
    before.check(&f, &d, "failover[5]").await;
    let audit = d.audit(OPERATOR.0).await;
    assert!(
        audit.iter().any(|r| r["action"] == "override-failover"
            && r["outcome"].as_str().unwrap().starts_with("refused")),
        "{audit:#?}"
    );
    d.shutdown().await;
}

/// Ensures a failover to a down target is refused (409) without force and done with force,
/// the write's audit record saying `forced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_down_target_needs_force() {
    let mut f = Fixture::new().await;
    let d = f.start(true).await;
    f.dr.stop();
    wait_until("DR seen unhealthy", Duration::from_secs(10), || async {
        let r = d.get("/v1/playbooks/demo", VIEWER.1).await;
        r.body["status"]["signals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["signal"] == "dr-health"
                    && s["health"]["state"] == "unhealthy"
                    && s["streak"].as_u64().unwrap() >= 3
            })
    })
    .await;
    let before = Unchanged::take(&f, &d).await;
    for body in [
        json!({ "reason": "INC-9" }),
        json!({ "reason": "INC-9", "target": "failover[0]" }),
        json!({ "reason": "INC-9", "target": 0 }),
    ] {
        d.post("/v1/playbooks/demo/failover", body.clone())
            .await
            .assert_error(409, &format!("down target: {body}"));
        before.check(&f, &d, "down target").await;
    }
    let r = d
        .post(
            "/v1/playbooks/demo/failover",
            json!({ "reason": "INC-9 DR is fine, its probe is not", "target": "failover[0]", "force": true }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(f.routed_host(), DR_HOST);
    let audit = d.audit(OPERATOR.0).await;
    let write = audit
        .iter()
        .find(|r| r["action"] == "operator-failover" && r["outcome"] == "written")
        .unwrap_or_else(|| panic!("no written operator-failover: {audit:#?}"));
    assert_eq!(write["inputs"]["forced"], true, "{write:#}");
    assert_eq!(d.overrides().await[0]["force"], true);
    d.shutdown().await;
}

/// Ensures a freeze survives a daemon restart on the same state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_restart() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let r = d
        .post(
            "/v1/playbooks/demo/freeze",
            json!({ "reason": "CHG-44 across a restart", "ttl": "2h" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["overrideId"].as_str().unwrap().to_string();
    let before = d.overrides().await;
    d.shutdown().await;
    let d = f.start(true).await;
    let after = d.overrides().await;
    assert_eq!(after, before);
    assert_eq!(after[0]["id"], id.as_str());
    wait_until(
        "phase frozen after restart",
        Duration::from_secs(3),
        || async { d.phase().await == "frozen" },
    )
    .await;
    d.shutdown().await;
}

/// Ensures more than 20 rapid mutating calls by one identity get 429 JSON errors (not
/// audited, so a loop cannot grow the audit log), and other identities are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_mutations_are_rate_limited() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    let mut limited = 0;
    for i in 0..40 {
        let r = d
            .post(
                "/v1/playbooks/demo/resume",
                json!({ "reason": format!("loop {i}") }),
            )
            .await;
        match r.status {
            409 => r.assert_error(409, "nothing to resume"),
            429 => {
                r.assert_error(429, "rate limited");
                limited += 1;
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert!(limited >= 10, "only {limited} of 40 calls were limited");
    let r = d
        .send(
            "POST",
            "/v1/playbooks/demo/resume",
            ADMIN.1,
            json!({ "reason": "another identity" }),
        )
        .await;
    assert_eq!(r.status, 409, "another identity is not limited: {r:?}");
    let refused_429 = d
        .audit(OPERATOR.0)
        .await
        .iter()
        .filter(|r| r["inputs"]["status"] == 429)
        .count();
    assert_eq!(
        refused_429, 0,
        "429s are logged, not audited: a runaway client must not grow the audit log"
    );
    d.shutdown().await;
}
