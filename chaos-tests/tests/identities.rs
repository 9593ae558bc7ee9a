#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cluster identities on the override API: the real `failoverd` binary with
//! `--auth-kubernetes`, its reviews sent to the Kubernetes API server emulator (TokenReview
//! and SubjectAccessReview answered from tables the test sets), routes in the file store (so
//! a move never depends on the emulator and "nothing moved" is a real observation), and
//! client certificates over mTLS. Build the binary first (`cargo build -p failoverd`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{Emulator, Rule};
use chaos_tests::{Daemon, Scenario, wait_for};
use failoverd::engine::Routing;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(1);
/// failoverd's own ServiceAccount token at the emulator.
const SA_TOKEN: &str = "failoverd-sa-token";
const NS: &str = "failoverd";

/// An emulator where failoverd's ServiceAccount may create both reviews (and nothing else),
/// and a kubeconfig for it.
async fn cluster(dir: &Path) -> (Emulator, PathBuf) {
    let emu = Emulator::start().await.unwrap();
    emu.set_anonymous(None);
    emu.add_token(
        SA_TOKEN,
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
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig, SA_TOKEN).unwrap();
    (emu, kubeconfig)
}

/// The demo scenario plus a second playbook, `other`, on VirtualService demo/web2.
async fn two_playbooks() -> Scenario {
    let s = Scenario::new(&[]).await.unwrap();
    let text = s
        .playbook_text
        .replacen("name: demo #", "name: other #", 1)
        .replacen(
            "virtualService: { namespace: demo, name: web }",
            "virtualService: { namespace: demo, name: web2 }",
            1,
        );
    assert_ne!(text, s.playbook_text);
    std::fs::write(s.paths.playbooks.join("other.yaml"), text).unwrap();
    let mut vs = Scenario::original_vs().unwrap();
    vs["metadata"]["name"] = json!("web2");
    std::fs::write(s.paths.store.join("demo/web2.yaml"), vs.to_string()).unwrap();
    s
}

async fn spawn(s: &Scenario, name: &str, kubeconfig: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--auth-kubernetes",
        "--auth-namespace",
        NS,
        "--auth-audiences",
        "failoverd",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut d = Daemon::spawn_with(&s.paths, name, &args).unwrap();
    d.wait_ready(30 * SEC)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    d
}

/// One HTTP/1.1 call on a fresh connection, bounded to 15 s: status and JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let body = body.to_string();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(15 * SEC, exchange)
        .await
        .expect("no answer within 15 s")
        .unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (code, body)
}

/// `failoverd ARGS` as the CLI user runs it (FAILOVERD_TOKEN unset, `env` set), bounded to
/// 30 s: the exit code and stderr.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = tokio::time::timeout(
        30 * SEC,
        tokio::process::Command::new(chaos_tests::failoverd_bin())
            .args(args)
            .env_remove("FAILOVERD_TOKEN")
            .env_remove("KUBECONFIG")
            .env_remove("FAILOVERD_LOG")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the CLI finished within 30 s")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn failed_over(r: Routing) -> bool {
    matches!(r, Routing::Failover { .. })
}

/// Ensures an OIDC-style user allowed `update` on playbook A only fails A over (the audit
/// names the user), gets 403 on B (audited, B untouched), and that a token TokenReview
/// rejects gets 401; the reviews carry the configured audiences and resource attributes, and
/// a token is reviewed once for several calls (cached).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_user_acts_on_its_own_playbook_only() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    emu.review_token("oidc-alice", "alice@example.com", &["team-a"]);
    emu.allow("alice@example.com", NS, "update", "demo");
    let d = spawn(&s, "own-playbook", &kubeconfig, &[]).await;
    let other_vs = s.paths.store.join("demo/web2.yaml");
    let other_before = std::fs::read(&other_vs).unwrap();

    let body = json!({ "reason": "INC-22: primary degraded" });
    let (code, answer) = call(
        d.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        "oidc-alice",
        body.clone(),
    )
    .await;
    assert_eq!(code, 200, "{answer}\n{}", d.logs());
    s.wait_routing(failed_over, 10 * SEC).await.unwrap();
    let rec = s
        .wait_audit(
            "alice's failover",
            |r| r.action == "override-failover",
            5 * SEC,
        )
        .await
        .unwrap();
    assert_eq!(rec.actor, "alice@example.com");

    let (code, answer) = call(
        d.addr,
        "POST",
        "/v1/playbooks/other/failover",
        "oidc-alice",
        body.clone(),
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("may not update playbook other"),
        "{answer}"
    );
    let refused = s
        .wait_audit("the audited refusal", |r| r.playbook == "other", 5 * SEC)
        .await
        .unwrap();
    assert_eq!(refused.actor, "alice@example.com");
    assert!(refused.outcome.starts_with("refused"), "{refused:?}");
    assert_eq!(std::fs::read(&other_vs).unwrap(), other_before, "B moved");

    let (code, answer) = call(
        d.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        "not-a-real-token",
        body,
    )
    .await;
    assert_eq!(code, 401, "{answer}");

    let reviews = emu.reviews();
    let token_reviews: Vec<_> = reviews.iter().filter(|r| r.kind == "TokenReview").collect();
    let alice: Vec<_> = token_reviews
        .iter()
        .filter(|r| r.spec["token"] == "oidc-alice")
        .collect();
    assert_eq!(
        alice.len(),
        1,
        "alice's token reviewed once for two calls: {reviews:?}"
    );
    assert_eq!(alice[0].spec["audiences"], json!(["failoverd"]));
    assert_eq!(alice[0].by, "system:serviceaccount:failoverd:failoverd");
    let sar: Vec<_> = reviews
        .iter()
        .filter(|r| r.kind == "SubjectAccessReview")
        .collect();
    let on_demo = sar
        .iter()
        .find(|r| r.spec["resourceAttributes"]["name"] == "demo")
        .expect("a SubjectAccessReview for demo");
    assert_eq!(
        on_demo.spec["resourceAttributes"],
        json!({ "namespace": NS, "group": "failoverd.dev", "resource": "playbooks", "name": "demo", "verb": "update" })
    );
    assert_eq!(on_demo.spec["user"], "alice@example.com");
    assert_eq!(on_demo.spec["groups"], json!(["team-a"]));

    // The CLI with the user's kubeconfig: the current context's token, found through
    // --kubeconfig and through KUBECONFIG, as kubectl finds it.
    let kc = s.dir.path().join("alice-kubeconfig");
    emu.write_kubeconfig(&kc, "oidc-alice").unwrap();
    let url = format!("http://{}", d.addr);
    let kc = kc.to_str().unwrap();
    let freeze = [
        "freeze",
        "demo",
        "--reason",
        "INC-22: hold still",
        "--url",
        &url,
    ];
    let (code, err) = cli(&[&freeze[..], &["--kubeconfig", kc]].concat(), &[]).await;
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(&freeze, &[("KUBECONFIG", kc)]).await;
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(
        &["freeze", "other", "--reason", "x", "--url", &url],
        &[("KUBECONFIG", kc)],
    )
    .await;
    assert_eq!(code, 3, "403 on B exits 3: {err}");
    let frozen_by: Vec<String> = s
        .audit()
        .into_iter()
        .filter(|r| r.action == "override-freeze" && r.playbook == "demo")
        .map(|r| r.actor)
        .collect();
    assert_eq!(frozen_by, ["alice@example.com", "alice@example.com"]);
    chaos_tests::assert_audit_verifies(&s.paths.audit);
}

/// Ensures a revoked permission stops working within `cacheTTL` (1 s here): the first
/// refusal comes after the revocation and no later than the TTL plus the time of one call.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_takes_effect_within_the_cache_ttl() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    emu.review_token("oidc-bob", "bob@example.com", &[]);
    emu.allow("bob@example.com", NS, "get", "demo");
    let d = spawn(&s, "revoke", &kubeconfig, &["--auth-cache-ttl", "1s"]).await;
    let (code, answer) = call(d.addr, "GET", "/v1/playbooks/demo", "oidc-bob", Value::Null).await;
    assert_eq!(code, 200, "{answer}");
    emu.revoke("bob@example.com", NS, "get", "demo");
    let revoked = Instant::now();
    let mut last = Instant::now();
    loop {
        let before = Instant::now();
        let (code, _) = call(d.addr, "GET", "/v1/playbooks/demo", "oidc-bob", Value::Null).await;
        if code == 403 {
            break;
        }
        assert_eq!(code, 200);
        last = before;
        assert!(
            revoked.elapsed() < 10 * SEC,
            "still allowed 10 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last allowed call started within the TTL of the revocation.
    assert!(
        last.duration_since(revoked) <= SEC,
        "allowed {:?} after the revocation (TTL 1 s)",
        last.duration_since(revoked)
    );
}

/// Ensures the cluster unreachable or failing fails closed: reviews that hang past the 5 s
/// bound, reviews answered 500, and the API server down all give 503 with a JSON error, and
/// nothing moves or is recorded as done.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_unreachable_fails_closed() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    for t in ["t1", "t2", "t3"] {
        emu.review_token(t, "carol@example.com", &[]);
    }
    emu.allow("carol@example.com", NS, "update", "*");
    let d = spawn(&s, "closed", &kubeconfig, &[]).await;
    let before = s.vs_bytes().unwrap();
    let body = json!({ "reason": "INC-5" });
    let path = "/v1/playbooks/demo/failover";

    emu.fail_reviews(Some((0, 8 * SEC)));
    let start = Instant::now();
    let (code, answer) = call(d.addr, "POST", path, "t1", body.clone()).await;
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Kubernetes API server"),
        "{answer}"
    );
    assert!(
        start.elapsed() >= 4 * SEC,
        "answered before the review could time out"
    );

    emu.fail_reviews(Some((500, Duration::ZERO)));
    let (code, answer) = call(d.addr, "POST", path, "t2", body.clone()).await;
    assert_eq!(code, 503, "{answer}");

    emu.fail_reviews(None);
    emu.unavailable_for(30 * SEC);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, answer) = call(d.addr, "POST", path, "t3", body).await;
    assert_eq!(code, 503, "{answer}");

    assert_eq!(s.vs_bytes().unwrap(), before, "the route moved");
    assert!(
        s.audit().iter().all(|r| !r.outcome.contains("written")),
        "{:?}",
        s.audit()
    );
    assert!(d.get("/healthz").await.is_ok_and(|(c, _)| c == 200));
}

/// Ensures a break-glass needs two different cluster users, each allowed `escalate`: the
/// requester cannot approve, a user without `escalate` cannot approve, and only the second
/// user's approval moves the route.
#[tokio::test(flavor = "multi_thread")]
async fn break_glass_needs_two_cluster_users_with_escalate() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    emu.review_token("oidc-dana", "dana@example.com", &[]);
    emu.review_token("oidc-erin", "erin@example.com", &[]);
    emu.review_token("oidc-fred", "fred@example.com", &[]);
    emu.allow("dana@example.com", NS, "escalate", "demo");
    emu.allow("erin@example.com", NS, "escalate", "demo");
    emu.allow("fred@example.com", NS, "update", "demo");
    let d = spawn(&s, "break-glass", &kubeconfig, &[]).await;
    let before = s.vs_bytes().unwrap();

    let (code, answer) = call(
        d.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        "oidc-fred",
        json!({ "reason": "INC-7", "breakGlass": true, "target": 0 }),
    )
    .await;
    assert_eq!(code, 403, "update is not escalate: {answer}");
    let (code, answer) = call(
        d.addr,
        "POST",
        "/v1/playbooks/demo/failover",
        "oidc-dana",
        json!({ "reason": "INC-7: residency waiver", "breakGlass": true, "target": 0 }),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let approve = format!("/v1/breakglass/{id}/approve");
    for who in ["oidc-dana", "oidc-fred"] {
        let (code, answer) = call(d.addr, "POST", &approve, who, json!({ "reason": "ok" })).await;
        assert_eq!(code, 403, "{who}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.vs_bytes().unwrap(),
        before,
        "one user alone moved the route"
    );

    let (code, answer) = call(
        d.addr,
        "POST",
        &approve,
        "oidc-erin",
        json!({ "reason": "agreed" }),
    )
    .await;
    assert_eq!(code, 200, "{answer}\n{}", d.logs());
    s.wait_routing(failed_over, 10 * SEC).await.unwrap();
    let rec = s
        .wait_audit(
            "the approval",
            |r| r.action == "break-glass-approve" && r.outcome.starts_with("approved"),
            5 * SEC,
        )
        .await
        .unwrap();
    assert_eq!(rec.actor, "erin@example.com");
    assert_eq!(rec.inputs["requestedBy"], "dana@example.com");
    // Both refused approvals are in the audit log, under their users.
    let refused: Vec<String> = s
        .audit()
        .into_iter()
        .filter(|r| r.action == "break-glass-approve" && r.outcome.starts_with("refused"))
        .map(|r| r.actor)
        .collect();
    assert_eq!(refused, ["dana@example.com", "fred@example.com"]);
}

/// A CA and certificates it signs (rcgen).
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = p.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(p, key),
            pem,
        }
    }

    /// A leaf: `sans` as DNS names (or a `spiffe://` URI), and the key (PEM).
    fn leaf(&self, cn: &str, sans: Vec<rcgen::SanType>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.subject_alt_names = sans;
        (
            p.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

fn https_client(server_ca: &str, client: Option<(&str, &str)>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap()])
        .timeout(10 * SEC);
    if let Some((cert, key)) = client {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Ensures a client certificate signed by `tls.clientCAFile` authenticates: its SPIFFE
/// identity mapped in the token file acts with that role (audited under the entry's
/// identity), and an unmapped certificate is checked by SubjectAccessReview as the user of
/// its CN; a certificate from an unknown CA is refused at the TLS handshake, while a client
/// without a certificate still gets an HTTP answer (bearer tokens keep working).
#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_authenticate_over_mtls() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    let dir = s.dir.path();
    let (server_ca, client_ca, rogue_ca) =
        (Ca::new("server-ca"), Ca::new("client-ca"), Ca::new("rogue"));
    let (cert, key) = server_ca.leaf(
        "failoverd",
        vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
    );
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("client-ca.pem"), &client_ca.pem).unwrap();
    let spiffe = "spiffe://cluster.local/ns/ops/sa/runbook";
    std::fs::write(
        dir.join("tokens.yaml"),
        format!("- {{ identity: runbook-bot, role: operator, certificate: \"{spiffe}\" }}\n"),
    )
    .unwrap();
    let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
    let bot = client_ca.leaf("runbook", vec![uri(spiffe)]);
    let gina = client_ca.leaf("gina@example.com", vec![]);
    let rogue = rogue_ca.leaf("runbook", vec![uri(spiffe)]);
    emu.allow("gina@example.com", NS, "update", "other");

    let files = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (crt, k, ca, tokens) = (
        files("tls.crt"),
        files("tls.key"),
        files("client-ca.pem"),
        files("tokens.yaml"),
    );
    let extra = [
        "--tls-cert",
        &crt,
        "--tls-key",
        &k,
        "--tls-client-ca",
        &ca,
        "--tokens",
        &tokens,
    ];
    let mut d = Daemon::spawn_with(
        &s.paths,
        "mtls",
        &[
            &extra[..],
            &[
                "--auth-kubernetes",
                "--auth-namespace",
                NS,
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
            ],
        ]
        .concat(),
    )
    .unwrap();
    let base = format!("https://{}", d.addr);
    let anonymous = https_client(&server_ca.pem, None);
    wait_for("the HTTPS listener", 30 * SEC, || {
        d.is_running().then_some(())
    })
    .await
    .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = anonymous.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(started.elapsed() < 30 * SEC, "not ready\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = json!({ "reason": "runbook: freeze during maintenance" });

    let r = https_client(&server_ca.pem, Some((&bot.0, &bot.1)))
        .post(format!("{base}/v1/playbooks/demo/freeze"))
        .json(&reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rec = s
        .wait_audit(
            "the bot's freeze",
            |r| r.action == "override-freeze",
            5 * SEC,
        )
        .await
        .unwrap();
    assert_eq!(rec.actor, "runbook-bot");

    let gina_client = https_client(&server_ca.pem, Some((&gina.0, &gina.1)));
    let r = gina_client
        .post(format!("{base}/v1/playbooks/other/freeze"))
        .json(&reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = gina_client
        .post(format!("{base}/v1/playbooks/demo/freeze"))
        .json(&reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    assert!(
        emu.reviews()
            .iter()
            .any(|r| r.kind == "SubjectAccessReview" && r.spec["user"] == "gina@example.com"),
        "{:?}",
        emu.reviews()
    );

    // The CLI with a client certificate and the server's CA.
    for (n, text) in [
        ("bot.crt", &bot.0),
        ("bot.key", &bot.1),
        ("server-ca.pem", &server_ca.pem),
    ] {
        std::fs::write(dir.join(n), text).unwrap();
    }
    let (c, k, ca) = (files("bot.crt"), files("bot.key"), files("server-ca.pem"));
    let (code, err) = cli(
        &[
            "resume",
            "demo",
            "--reason",
            "maintenance over",
            "--url",
            &base,
            "--ca",
            &ca,
        ],
        &[("FAILOVERD_CLIENT_CERT", &c), ("FAILOVERD_CLIENT_KEY", &k)],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(
        &[
            "freeze",
            "demo",
            "--reason",
            "r",
            "--url",
            &base,
            "--ca",
            &ca,
            "--client-cert",
            &c,
            "--client-key",
            &k,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let by_bot = s
        .audit()
        .iter()
        .filter(|r| r.actor == "runbook-bot")
        .count();
    assert_eq!(by_bot, 3, "{:?}", s.audit());

    let refused = https_client(&server_ca.pem, Some((&rogue.0, &rogue.1)))
        .get(format!("{base}/v1/overrides"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was served: {refused:?}"
    );
    let r = anonymous
        .get(format!("{base}/v1/overrides"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(d.is_running());
}

/// Ensures a flood of bad tokens from one address cannot become a flood of TokenReviews:
/// reviews are charged to the address's failed-authentication budget (bursts of 60, then 10
/// a second) before they are sent, beyond it the address gets 429 without a review, and a
/// rejected token asked again is answered from the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_tokens_is_not_a_flood_of_reviews() {
    let s = two_playbooks().await;
    let (emu, kubeconfig) = cluster(s.dir.path()).await;
    let d = spawn(&s, "flood", &kubeconfig, &[]).await;
    let start = Instant::now();
    let mut codes = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..300 {
        let (code, _) = call(
            d.addr,
            "GET",
            "/v1/playbooks",
            &format!("bad-{i}"),
            Value::Null,
        )
        .await;
        *codes.entry(code).or_default() += 1;
    }
    let elapsed = start.elapsed();
    let reviews = emu
        .reviews()
        .iter()
        .filter(|r| r.kind == "TokenReview")
        .count();
    let budget = 60 + (elapsed.as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        reviews <= budget,
        "{reviews} TokenReviews in {elapsed:?} (budget {budget}); answers {codes:?}"
    );
    assert!(codes.get(&429).copied().unwrap_or(0) > 0, "{codes:?}");
    assert_eq!(
        codes.get(&401).copied().unwrap_or(0) as usize,
        reviews,
        "{codes:?}"
    );
    // The same rejected token again, after the address's budget has refilled: cached.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = emu.reviews().len();
    for _ in 0..5 {
        let (code, _) = call(d.addr, "GET", "/v1/playbooks", "bad-0", Value::Null).await;
        assert_eq!(code, 401);
    }
    assert_eq!(
        emu.reviews().len(),
        before,
        "a rejected token was reviewed again"
    );
}
