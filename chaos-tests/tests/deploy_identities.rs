//! The token-review component in `deploy/`: failoverd may create TokenReviews and
//! SubjectAccessReviews (and nothing more through it), the feature is on in its container
//! arguments, the ClusterRoles people are granted carry exactly the verbs failoverd's API asks
//! about, and the rules as rendered are enough for the real binary to authenticate and
//! authorise a cluster user on the API server emulator (`cargo build -p failoverd` first).

use std::collections::BTreeMap;
use std::time::Duration;

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::{Daemon, Scenario};
use serde_json::Value;

mod support;

use support::deploy::{Render, arr, kind, name, renders, s, strs, workload};

/// The roles people are granted on `playbooks.failoverd.dev` and their verbs: `get` /
/// `list` to read, `update` to act, `escalate` for a break-glass (DESIGN.md "Cluster
/// identities"), and the cluster roles each aggregates into.
const PEOPLE: [(&str, &[&str], &[&str]); 3] = [
    (
        "failoverd-viewer",
        &["get", "list"],
        &["view", "edit", "admin"],
    ),
    (
        "failoverd-operator",
        &["get", "list", "update"],
        &["edit", "admin"],
    ),
    (
        "failoverd-admin",
        &["get", "list", "update", "escalate"],
        &["admin"],
    ),
];

fn with_components() -> &'static Render {
    renders()
        .iter()
        .find(|r| r.with_components)
        .expect("deploy/tests/with-components is rendered")
}

/// Ensures the component grants failoverd exactly `create` on both reviews through a binding
/// to its ServiceAccount, ships the people's roles with their verbs and aggregation labels,
/// and turns the feature on; and that no other render grants the reviews.
#[test]
fn the_token_review_component_grants_what_the_feature_uses() {
    let r = with_components();
    let role = r
        .objects
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == "failoverd-token-review")
        .expect("ClusterRole failoverd-token-review");
    let mut granted: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for rule in arr(role.get("rules")) {
        for g in strs(rule.get("apiGroups")) {
            for res in strs(rule.get("resources")) {
                granted
                    .entry((g.to_string(), res.to_string()))
                    .or_default()
                    .extend(strs(rule.get("verbs")));
            }
        }
    }
    let want: BTreeMap<(String, String), Vec<&str>> = [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ]
    .into_iter()
    .map(|(g, res)| ((g.to_string(), res.to_string()), vec!["create"]))
    .collect();
    assert_eq!(granted, want);
    let binding = r
        .objects
        .iter()
        .find(|o| {
            kind(o) == "ClusterRoleBinding" && s(o, "/roleRef/name") == "failoverd-token-review"
        })
        .expect("a binding of failoverd-token-review");
    let subjects = arr(binding.get("subjects"));
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            s(&subjects[0], "/kind"),
            s(&subjects[0], "/name"),
            s(&subjects[0], "/namespace")
        ),
        ("ServiceAccount", "failoverd", "failoverd")
    );

    for (role_name, verbs, aggregated) in PEOPLE {
        let role = r
            .objects
            .iter()
            .find(|o| kind(o) == "ClusterRole" && name(o) == role_name)
            .unwrap_or_else(|| panic!("ClusterRole {role_name}"));
        let rules = arr(role.get("rules"));
        assert_eq!(rules.len(), 1, "{role_name}");
        assert_eq!(strs(rules[0].get("apiGroups")), ["failoverd.dev"]);
        assert_eq!(strs(rules[0].get("resources")), ["playbooks"]);
        assert_eq!(strs(rules[0].get("verbs")), verbs, "{role_name}");
        let labels = role["metadata"]["labels"].as_object().expect("labels");
        let mut into: Vec<&str> = labels
            .iter()
            .filter(|(_, v)| v.as_str() == Some("true"))
            .filter_map(|(k, _)| k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-"))
            .collect();
        into.sort_unstable();
        let mut aggregated = aggregated.to_vec();
        aggregated.sort_unstable();
        assert_eq!(into, aggregated, "{role_name}");
    }

    let (_, tpl) = workload(r);
    let args = strs(tpl["spec"]["containers"][0].get("args"));
    assert!(args.contains(&"--auth-kubernetes"), "{args:?}");

    for other in renders().iter().filter(|o| !o.with_components) {
        let reviews = other.objects.iter().any(|o| {
            arr(o.get("rules")).iter().any(|rule| {
                strs(rule.get("resources"))
                    .iter()
                    .any(|res| res.ends_with("reviews"))
            })
        });
        assert!(
            !reviews,
            "{}: review rights outside the component",
            other.name
        );
        let (_, tpl) = workload(other);
        let args = strs(tpl["spec"]["containers"][0].get("args"));
        assert!(
            !args.contains(&"--auth-kubernetes"),
            "{}: {args:?}",
            other.name
        );
    }
}

/// Ensures the component's rules, as rendered, are enough: the real binary holding only them
/// (cluster-wide, as its ClusterRoleBinding grants) authenticates a user's token and
/// authorises its read on the emulator, with no review refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_component_rules_are_enough_for_the_reviews() {
    let r = with_components();
    let role = r
        .objects
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == "failoverd-token-review")
        .expect("ClusterRole failoverd-token-review");
    let rules: Vec<Rule> = arr(role.get("rules"))
        .iter()
        .map(|rule: &Value| {
            Rule::new(
                &strs(rule.get("verbs")),
                &strs(rule.get("apiGroups")),
                &strs(rule.get("resources")),
                &["*"],
            )
        })
        .collect();
    let emu = Emulator::start().await.expect("emulator");
    emu.set_anonymous(None);
    let sa = "system:serviceaccount:failoverd:failoverd";
    emu.add_token("component-token", sa, rules);
    emu.review_token("oidc-hana", "hana@example.com", &["oncall"]);
    emu.allow("oncall", "failoverd", "get", "demo");
    let sc = Scenario::new(&[]).await.expect("scenario");
    let kubeconfig = sc.dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, "component-token")
        .expect("kubeconfig");
    let mut d = Daemon::spawn_with(
        &sc.paths,
        "component",
        &[
            "--auth-kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
        ],
    )
    .expect("spawn failoverd");
    d.wait_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (code, body) = get_with_token(d.addr, "/v1/playbooks/demo", "oidc-hana").await;
    assert_eq!(code, 200, "{body}\n{}", d.logs());
    let reviews = emu.reviews();
    assert!(reviews.len() >= 2, "{reviews:?}");
    assert!(
        reviews.iter().all(|r| !r.status.is_null()),
        "a review was refused: {reviews:?}"
    );
}

async fn get_with_token(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}
