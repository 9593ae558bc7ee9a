#![allow(clippy::unwrap_used)]
//! The fence against force, and the two-person break-glass past it: over real HTTP against
//! the daemon run in-process (fixture: `support::api`) on a fenced playbook whose targets the
//! cluster has not cleared (no mesh facts at all: every target is outside the fence).

use std::time::Duration;

use failoverd::auth::hash_token;
use serde_json::json;

mod support;

use support::api::{ADMIN, DR_HOST, Fixture, OPERATOR, PRIMARY_HOST, VIEWER};

const SECOND_ADMIN: (&str, &str) = ("carol@platform", "admin-token-carol");

async fn fenced_fixture() -> Fixture {
    let mut f = Fixture::new().await;
    f.pb.fenced = true;
    let tokens = f.dir.path().join("tokens.yaml");
    let mut text = std::fs::read_to_string(&tokens).unwrap();
    text.push_str(&format!(
        "- {{ identity: \"{}\", role: admin, sha256: \"{}\" }}\n",
        SECOND_ADMIN.0,
        hash_token(SECOND_ADMIN.1)
    ));
    std::fs::write(&tokens, text).unwrap();
    f
}

/// Ensures `force` cannot pass the fence, a break-glass request moves nothing by itself, the
/// requester, an operator and a viewer cannot approve it, and a second admin's approval
/// moves traffic at once, marked in the override and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_needs_two_different_admins() {
    let f = fenced_fixture().await;
    let d = f.start(true).await;
    let fo = "/v1/playbooks/demo/failover";

    let r = d
        .post(fo, json!({ "reason": "INC-9", "target": 0, "force": true }))
        .await;
    r.assert_error(409, "residency");
    assert!(
        r.body["error"].as_str().unwrap().contains("force cannot"),
        "{r:?}"
    );
    assert_eq!(f.routed_host(), PRIMARY_HOST);

    // Only an admin may ask, and only naming a target, for at most an hour.
    let bg = |extra: serde_json::Value| {
        let mut b = json!({ "reason": "INC-9 region down", "breakGlass": true, "target": 0 });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let r = d.send("POST", fo, OPERATOR.1, bg(json!({}))).await;
    r.assert_error(403, "needs Admin");
    let r = d
        .send(
            "POST",
            fo,
            ADMIN.1,
            json!({ "reason": "x", "breakGlass": true }),
        )
        .await;
    r.assert_error(422, "names its target");
    let r = d
        .send("POST", fo, ADMIN.1, bg(json!({ "ttl": "2h" })))
        .await;
    r.assert_error(422, "at most 1h");

    let r = d
        .send("POST", fo, ADMIN.1, bg(json!({ "ttl": "30m" })))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bg-"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.routed_host(),
        PRIMARY_HOST,
        "a request alone moved traffic"
    );

    let approve = format!("/v1/breakglass/{id}/approve");
    for (who, status) in [(ADMIN, 403), (OPERATOR, 403), (VIEWER, 403)] {
        let r = d
            .send("POST", &approve, who.1, json!({ "reason": "ok" }))
            .await;
        assert_eq!(r.status, status, "{} approving: {r:?}", who.0);
    }
    let r = d
        .send("POST", &approve, ADMIN.1, json!({ "reason": "ok" }))
        .await;
    r.assert_error(403, "second, different admin");
    assert_eq!(
        f.routed_host(),
        PRIMARY_HOST,
        "a refused approval moved traffic"
    );

    let r = d
        .send(
            "POST",
            &approve,
            SECOND_ADMIN.1,
            json!({ "reason": "agreed on the bridge" }),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(f.routed_host(), DR_HOST);
    let vs: serde_json::Value = serde_saphyr::from_str(&f.vs()).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["failoverd.dev/break-glass"],
        id.as_str(),
        "the VirtualService is marked"
    );
    let ov = d.overrides().await;
    assert_eq!(ov[0]["breakGlass"]["id"], id.as_str(), "{ov:#}");
    assert_eq!(ov[0]["breakGlass"]["requestedBy"], ADMIN.0);
    assert_eq!(ov[0]["breakGlass"]["approvedBy"], SECOND_ADMIN.0);
    assert_eq!(ov[0]["force"], true);

    // Once approved it is spent.
    let r = d
        .send(
            "POST",
            &approve,
            SECOND_ADMIN.1,
            json!({ "reason": "again" }),
        )
        .await;
    r.assert_error(404, "no pending break-glass");

    let asked = d.audit(ADMIN.0).await;
    assert!(
        asked
            .iter()
            .any(|r| r["action"] == "break-glass-request" && r["inputs"]["id"] == id.as_str()),
        "{asked:#?}"
    );
    assert!(
        asked.iter().any(|r| r["action"] == "break-glass-approve"
            && r["outcome"].as_str().unwrap().starts_with("refused")),
        "the requester's own approval is audited"
    );
    let approved = d.audit(SECOND_ADMIN.0).await;
    assert!(
        approved.iter().any(|r| r["action"] == "break-glass-approve"
            && r["outcome"].as_str().unwrap().starts_with("approved")),
        "{approved:#?}"
    );
    let moved = approved
        .iter()
        .find(|r| r["action"] == "operator-failover")
        .unwrap_or_else(|| panic!("no move record by the approver: {approved:#?}"));
    let why = moved["reason"].as_str().unwrap();
    assert!(
        why.contains(&id) && why.contains("despite residency"),
        "{moved:#}"
    );
    d.shutdown().await;
}
