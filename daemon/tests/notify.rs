#![allow(clippy::unwrap_used)]
//! Notifications against real components: a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started here on a loopback port) whose webhook receiver is a
//! loopback test server, and webhook receivers on loopback that answer, fail, hang or are
//! down. The Notifier is driven directly, and once through the in-process daemon with a
//! real failover and failback.
//!
//! Tests that need Alertmanager fail (with the install command) when it is missing.

mod support;

use std::time::{Duration, Instant};

use failoverd::engine::Routing;
use failoverd::metrics::Metrics;
use failoverd::notify::{
    Condition, Event, EventKind, Notifier, NotifyConfig, SIGNATURE_HEADER, SinkSnapshot,
};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use support::install_crypto;
use support::notify::{Alertmanager, Daemon, Mode, Receiver, am_alerts, closed_port};

const LINK: &str = "http://failoverd.test:8080";

fn event(kind: EventKind, playbook: &str) -> Event {
    Event {
        traceparent: None,
        kind,
        time: jiff::Timestamp::now(),
        playbook: playbook.into(),
        service: format!("child-welfare/{playbook}"),
        namespace: "child-welfare".into(),
        from: Some("primary (original route)".into()),
        to: Some("failover[0] 100%".into()),
        reason: "primary unhealthy: 3 consecutive probe failures".into(),
        signals: json!({ "primary-health": { "health": "unhealthy", "reason": "connection refused" } }),
        actor: "engine".into(),
    }
}

fn config(yaml: &str) -> NotifyConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

fn secret_file(dir: &tempfile::TempDir, name: &str, secret: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p.display().to_string()
}

fn stats(n: &Notifier, sink: &str) -> SinkSnapshot {
    n.stats().into_iter().find(|s| s.sink == sink).unwrap()
}

/// What a receiver does: recompute HMAC-SHA256(secret, "<t>.<body>") from the header's t.
fn receiver_verifies(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let age = jiff::Timestamp::now().as_second() - t.parse::<i64>().unwrap();
    if !(-5..=300).contains(&age) {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

#[tokio::test]
async fn webhook_body_is_versioned_and_signed() {
    install_crypto();
    let rx = Receiver::start(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "hook-secret", "whsec-oncall-bridge");
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - {{ name: oncall-bridge, url: \"{}\", events: [failover, failback, stuck], secretFile: {sf} }}\n",
            rx.url("/failoverd")
        )),
        LINK,
        None,
    )
    .unwrap();
    n.notify(event(EventKind::Failover, "case-management"));
    n.notify(event(EventKind::Refused, "case-management")); // filtered out
    let hit = rx
        .wait_for(Duration::from_secs(5), |_| true)
        .await
        .expect("the webhook got nothing");
    let header = hit.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(
        receiver_verifies(b"whsec-oncall-bridge", header, &hit.body),
        "signature does not verify: {header}"
    );
    assert!(!receiver_verifies(b"wrong", header, &hit.body));
    let b = hit.json();
    assert_eq!(b["version"], "1");
    assert_eq!(b["event"], "failover");
    assert_eq!(b["severity"], "warning");
    assert_eq!(b["playbook"], "case-management");
    assert_eq!(b["service"], "child-welfare/case-management");
    assert_eq!(b["from"], "primary (original route)");
    assert_eq!(b["to"], "failover[0] 100%");
    assert_eq!(b["actor"], "engine");
    assert_eq!(b["signals"]["primary-health"]["health"], "unhealthy");
    assert_eq!(b["link"], format!("{LINK}/v1/playbooks/case-management"));
    let summary = b["summary"].as_str().unwrap();
    assert!(summary.contains("FAILED OVER primary (original route) → failover[0] 100%"));
    assert_eq!(b["text"], b["summary"]);
    assert_eq!(hit.headers["content-type"], "application/json");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 1, "the refused event was not in `events`");
}

#[tokio::test]
async fn webhook_template_override() {
    install_crypto();
    let rx = Receiver::start(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "x");
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - name: pager\n    url: \"{}\"\n    secretFile: {sf}\n    templates:\n      stuck: \"PAGE {{playbook}} stuck ({{severity}}) {{{{not a placeholder}}}}\"\n      default: \"{{event}}: {{playbook}}\"\n",
            rx.url("/")
        )),
        LINK,
        None,
    )
    .unwrap();
    n.notify(event(EventKind::Stuck, "hotline"));
    n.notify(event(EventKind::Freeze, "hotline"));
    assert!(
        rx.wait_for(Duration::from_secs(5), |_| rx.hits().len() >= 2)
            .await
            .is_some()
    );
    let hits = rx.hits();
    assert_eq!(
        hits[0].json()["summary"],
        "PAGE hotline stuck (critical) {not a placeholder}"
    );
    assert_eq!(hits[1].json()["summary"], "freeze: hotline");
}

#[tokio::test]
async fn webhook_500_is_retried_with_backoff_then_delivered() {
    install_crypto();
    let rx = Receiver::start(Mode::FailFirst(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "k");
    let metrics = Metrics::new();
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - {{ name: flaky, url: \"{}\", secretFile: {sf}, backoff: 50ms }}\n",
            rx.url("/")
        )),
        LINK,
        Some(&metrics),
    )
    .unwrap();
    n.notify(event(EventKind::Failover, "identity"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(&n, "webhook:flaky").sent == 0 {
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    // Same delivery id on every attempt (receivers dedupe), each attempt signed afresh.
    let ids: Vec<_> = hits
        .iter()
        .map(|h| h.headers["x-failoverd-delivery"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    for h in &hits {
        assert!(receiver_verifies(
            b"k",
            h.headers[SIGNATURE_HEADER].to_str().unwrap(),
            &h.body
        ));
    }
    // Backoff: 50 ms doubled, jittered into [d/2, d].
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(25));
    assert!(hits[2].at - hits[1].at >= Duration::from_millis(50));
    let s = stats(&n, "webhook:flaky");
    assert_eq!((s.retried, s.dead_letters), (2, 0));
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"failoverd_notifications_total{sink="webhook:flaky",event="failover",result="sent"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"failoverd_notifications_total{sink="webhook:flaky",event="failover",result="retried"} 2"#
    ));
}

#[tokio::test]
async fn dead_receivers_dead_letter_and_full_queues_drop() {
    install_crypto();
    let always500 = Receiver::start(Mode::Fail).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "k");
    let metrics = Metrics::new();
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - {{ name: down, url: \"http://127.0.0.1:{}/\", secretFile: {sf}, backoff: 10ms, maxAttempts: 3 }}\n  - {{ name: broken, url: \"{}\", secretFile: {sf}, backoff: 10ms, maxAttempts: 2, queue: 4 }}\n",
            closed_port(),
            always500.url("/"),
        )),
        LINK,
        Some(&metrics),
    )
    .unwrap();
    n.notify(event(EventKind::Failover, "a"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats(&n, "webhook:down").dead_letters + stats(&n, "webhook:broken").dead_letters < 2 {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered: {:?}",
            n.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(always500.hits().len(), 2, "maxAttempts bounds the attempts");
    // Flood: the bounded queue keeps at most 4 waiting (+1 in flight); the rest is dropped
    // and counted, and notify() returns at once.
    let t = Instant::now();
    for _ in 0..100 {
        n.notify(event(EventKind::Failback, "a"));
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    let s = stats(&n, "webhook:broken");
    assert!(s.dropped >= 95 && s.dropped <= 96, "{s:?}");
    let text = metrics.encode();
    assert!(text.contains(
        r#"failoverd_notifications_total{sink="webhook:down",event="failover",result="dead-letter"} 1"#
    ));
    assert!(text.contains(r#"sink="webhook:broken",event="failback",result="dropped"}"#));
    // Queue depth and oldest age are published within a second or so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = metrics.encode();
    assert!(text.contains(r#"failoverd_notification_queue_depth{sink="webhook:broken"}"#));
    assert!(
        text.contains(r#"failoverd_notification_oldest_pending_seconds{sink="webhook:broken"}"#)
    );
}

#[tokio::test]
async fn a_hung_receiver_delays_nobody_else() {
    install_crypto();
    let hung = Receiver::start(Mode::Hang(Duration::from_secs(60))).await;
    let fast = Receiver::start(Mode::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "k");
    let n = Notifier::start(
        &config(&format!(
            "webhooks:\n  - {{ name: hung, url: \"{}\", secretFile: {sf}, timeout: 60s, queue: 8 }}\n  - {{ name: fast, url: \"{}\", secretFile: {sf} }}\n",
            hung.url("/"),
            fast.url("/"),
        )),
        LINK,
        None,
    )
    .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        n.notify(event(EventKind::Failover, &format!("pb{i}")));
        let call = t.elapsed();
        // A blocking call would take the receiver's 60 s hang; 50 ms leaves room for a busy
        // CI machine's scheduling.
        assert!(call < Duration::from_millis(50), "notify() took {call:?}");
        let pb = format!("pb{i}");
        let hit = fast
            .wait_for(Duration::from_secs(2), |h| {
                h.json()["playbook"] == pb.as_str()
            })
            .await
            .expect("the fast receiver did not get the event");
        worst = worst.max(hit.at - t);
    }
    assert!(
        worst < Duration::from_millis(500),
        "fast receiver delayed: {worst:?}"
    );
    assert_eq!(
        hung.hits().len(),
        1,
        "the hung receiver holds its one request"
    );
    let s = stats(&n, "webhook:hung");
    assert_eq!(s.pending, 9, "1 in flight + 8 queued: {s:?}");
    assert_eq!(s.dropped, 11);
}

#[test]
fn bad_config_is_refused_at_load_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "k");
    std::fs::create_dir_all(dir.path().join("pb")).unwrap();
    let settings = |notify: &str| {
        let cfg = dir.path().join("failoverd.yaml");
        std::fs::write(
            &cfg,
            format!(
                "playbooks: {0}/pb\nstore: file:{0}/routes\naudit: {0}/audit.jsonl\nnotify:\n{notify}",
                dir.path().display()
            ),
        )
        .unwrap();
        let cli = <failoverd::cli::Cli as clap::Parser>::try_parse_from([
            "failoverd",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .unwrap();
        let failoverd::cli::Command::Run(args) = cli.command else {
            panic!("not run")
        };
        args.settings().map(|_| ()).map_err(|e| format!("{e:#}"))
    };
    let ok = settings(&format!(
        "  alertmanager: {{ urls: [\"http://127.0.0.1:9093\"] }}\n  webhooks:\n    - {{ name: a, url: \"https://hooks.example/x\", secretFile: {sf} }}\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
    let e = settings(&format!(
        "  webhooks:\n    - {{ name: a, url: \"https://hooks.example/x\", secretFile: {sf}, secert: 1 }}\n"
    ))
    .unwrap_err();
    assert!(e.contains("secert"), "{e}");
    let e = settings("  alertmanager: { urls: [\"http://x:9093\"], resolveTimeout: 5m }\n")
        .unwrap_err();
    assert!(e.contains("resolveTimeout"), "{e}");
    let e = settings("  pagerduty: {}\n").unwrap_err();
    assert!(e.contains("pagerduty"), "{e}");
    let e = settings(&format!(
        "  webhooks:\n    - {{ name: a, url: \"https://hooks.example/x\", secretFile: {}/nope }}\n",
        dir.path().display()
    ))
    .unwrap_err();
    assert!(e.contains("notify.webhooks[0].secretFile"), "{e}");
    assert!(e.contains("refusing to start"), "{e}");
    let e = settings(&format!(
        "  webhooks:\n    - {{ name: a, url: \"hooks.example/x\", secretFile: {sf} }}\n"
    ))
    .unwrap_err();
    assert!(e.contains("notify.webhooks[0].url"), "{e}");
    let e =
        settings("  alertmanager: { urls: [\"http://ok:9093\", \"http//bad\"] }\n").unwrap_err();
    assert!(e.contains("notify.alertmanager.urls[1]"), "{e}");
}

/// A failover's condition alert passes through two real Alertmanagers (HA: every URL gets
/// it, a dead third URL changes nothing) to their webhook receiver within 2 s, and resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_fires_and_resolves_through_real_alertmanagers() {
    install_crypto();
    let rx = Receiver::start(Mode::Ok).await;
    let am0 = Alertmanager::start(&rx.url("/am/0")).await;
    let am1 = Alertmanager::start(&rx.url("/am/1")).await;
    let n = Notifier::start(
        &config(&format!(
            "alertmanager:\n  urls: [\"http://127.0.0.1:{}\", \"{}\", \"{}/\"]\n  resendInterval: 1s\n  runbookUrl: \"https://runbooks.example/failoverd/{{playbook}}\"\n",
            closed_port(),
            am0.url,
            am1.url
        )),
        LINK,
        None,
    )
    .unwrap();
    let cond = |failed_over, stuck| Condition { failed_over, stuck };
    let t = Instant::now();
    n.notify(event(EventKind::Failover, "case-management"));
    n.condition(
        "case-management",
        "child-welfare/case-management",
        "child-welfare",
        cond(true, false),
    );
    for path in ["/am/0", "/am/1"] {
        let hit = rx
            .wait_for(Duration::from_secs(5), |h| {
                h.path == path
                    && am_alerts(h)
                        .iter()
                        .any(|a| a.0 == "firing" && a.1 == "FailoverdFailedOver")
            })
            .await
            .unwrap_or_else(|| panic!("no firing alert through {path}: {:?}", rx.hits()));
        let took = hit.at - t;
        assert!(took < Duration::from_secs(2), "{path}: {took:?}");
        let v = hit.json();
        let alerts = v["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 1, "one firing alert: {v}");
        let a = &alerts[0];
        assert_eq!(a["labels"]["playbook"], "case-management");
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["labels"]["service"], "child-welfare/case-management");
        assert_eq!(a["labels"]["namespace"], "child-welfare");
        assert_eq!(
            a["annotations"]["runbook_url"],
            "https://runbooks.example/failoverd/case-management"
        );
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("failed over to failover[0] 100%")
        );
        assert!(
            a["annotations"]["description"]
                .as_str()
                .unwrap()
                .contains("primary unhealthy")
        );
        assert_eq!(
            a["generatorURL"],
            format!("{LINK}/v1/playbooks/case-management")
        );
    }
    // Kept firing across re-sends (endsAt pushed ahead), and no second alert appears.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing: Vec<_> = rx
        .hits()
        .iter()
        .flat_map(am_alerts)
        .filter(|a| a.0 == "firing")
        .collect();
    assert!(
        firing.iter().all(|a| a.1 == "FailoverdFailedOver"),
        "{firing:?}"
    );
    assert!(
        !rx.hits()
            .iter()
            .flat_map(am_alerts)
            .any(|a| a.0 == "resolved")
    );
    // Failback completes: the alert resolves.
    let t = Instant::now();
    n.condition(
        "case-management",
        "child-welfare/case-management",
        "child-welfare",
        cond(false, false),
    );
    for path in ["/am/0", "/am/1"] {
        let hit = rx
            .wait_for(Duration::from_secs(10), |h| {
                h.path == path
                    && am_alerts(h)
                        .iter()
                        .any(|a| a.0 == "resolved" && a.1 == "FailoverdFailedOver")
            })
            .await
            .unwrap_or_else(|| panic!("not resolved through {path}"));
        assert!(hit.at - t < Duration::from_secs(5));
    }
    let dead = n
        .stats()
        .into_iter()
        .find(|s| s.sink.starts_with("alertmanager:") && s.sent == 0)
        .expect("the dead Alertmanager URL");
    assert!(
        dead.retried > 0 || dead.dead_letters > 0 || dead.pending > 0,
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_fires_a_critical_alert() {
    install_crypto();
    let rx = Receiver::start(Mode::Ok).await;
    let am = Alertmanager::start(&rx.url("/am")).await;
    let n = Notifier::start(
        &config(&format!(
            "alertmanager: {{ urls: [\"{}\"], resendInterval: 1s }}\n",
            am.url
        )),
        LINK,
        None,
    )
    .unwrap();
    let mut e = event(EventKind::Stuck, "hotline");
    e.to = None;
    e.reason = "primary unhealthy and no failover target is healthy".into();
    n.notify(e);
    n.condition(
        "hotline",
        "child-welfare/hotline",
        "child-welfare",
        Condition {
            failed_over: false,
            stuck: true,
        },
    );
    let hit = rx
        .wait_for(Duration::from_secs(5), |h| {
            am_alerts(h).iter().any(|a| a.1 == "FailoverdStuck")
        })
        .await
        .expect("no stuck alert");
    let a = am_alerts(&hit);
    assert!(a.contains(&(
        "firing".into(),
        "FailoverdStuck".into(),
        "hotline".into(),
        "critical".into()
    )));
    // A refusal is a one-shot alert of its own.
    n.notify(event(EventKind::Refused, "hotline"));
    rx.wait_for(Duration::from_secs(5), |h| {
        am_alerts(h)
            .iter()
            .any(|a| a.1 == "FailoverdRefused" && a.0 == "firing")
    })
    .await
    .expect("no refused alert");
}

/// The whole daemon: a failover with a webhook receiver that hangs for 60 s next to a
/// healthy one and a real Alertmanager. The routing write keeps its budget, the healthy
/// receiver hears at once, the alert passes Alertmanager within 2 s of the write, and
/// failback resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_failover_with_a_hung_receiver() {
    install_crypto();
    let hung = Receiver::start(Mode::Hang(Duration::from_secs(60))).await;
    let fast = Receiver::start(Mode::Ok).await;
    let amrx = Receiver::start(Mode::Ok).await;
    let am = Alertmanager::start(&amrx.url("/am")).await;
    let dir = tempfile::tempdir().unwrap();
    let sf = secret_file(&dir, "s", "k");
    let cfg = config(&format!(
        "alertmanager: {{ urls: [\"{}\"], resendInterval: 1s }}\nwebhooks:\n  - {{ name: hung, url: \"{}\", secretFile: {sf}, timeout: 60s }}\n  - {{ name: fast, url: \"{}\", secretFile: {sf} }}\n",
        am.url,
        hung.url("/"),
        fast.url("/")
    ));
    let mut d = Daemon::start(|s| Notifier::start(&cfg, LINK, Some(&s.metrics)).unwrap()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (fault, written) = d.fail_primary().await;
    let failover = written - fault;
    // interval 1 s × threshold 3; the write is seen by polling the file every 5 ms.
    assert!(
        failover < Duration::from_millis(4500),
        "failover took {failover:?} with a hung receiver"
    );
    let hook = fast
        .wait_for(Duration::from_secs(5), |h| h.json()["event"] == "failover")
        .await
        .expect("the healthy receiver never got the failover");
    // From the routing write (the VirtualService file's mtime) to arrival.
    let write_wall = d.write_time();
    let to_hook = hook.wall.duration_since(write_wall).unwrap_or_default();
    assert!(
        to_hook < Duration::from_millis(500),
        "write → webhook {to_hook:?}"
    );
    assert!(receiver_verifies(
        b"k",
        hook.headers[SIGNATURE_HEADER].to_str().unwrap(),
        &hook.body
    ));
    assert_eq!(hook.json()["link"], format!("{LINK}/v1/playbooks/demo"));
    let alert = amrx
        .wait_for(Duration::from_secs(5), |h| {
            am_alerts(h)
                .iter()
                .any(|a| a.0 == "firing" && a.1 == "FailoverdFailedOver" && a.2 == "demo")
        })
        .await
        .expect("no firing alert through Alertmanager");
    // Signed: the runtime reports the failed-over condition when it decides the move, so the
    // alert can reach Alertmanager a few ms before the write lands (negative).
    let to_am_ms = match alert.wall.duration_since(write_wall) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    };
    assert!(
        to_am_ms.abs() < 2000.0,
        "write → Alertmanager → receiver {to_am_ms:.1} ms"
    );
    assert!(
        hung.wait_for(Duration::from_secs(1), |h| h.json()["event"] == "failover")
            .await
            .is_some(),
        "the hung receiver was called (and is hanging)"
    );
    eprintln!(
        "fault → write {failover:?}; write → webhook {to_hook:?}; write → Alertmanager → receiver {to_am_ms:.1} ms"
    );

    d.primary.restart().await.unwrap();
    let back = d
        .wait_routing(Duration::from_secs(40), |r| r == Routing::Primary)
        .await;
    let resolved = amrx
        .wait_for(Duration::from_secs(10), |h| {
            am_alerts(h)
                .iter()
                .any(|a| a.0 == "resolved" && a.1 == "FailoverdFailedOver" && a.2 == "demo")
        })
        .await
        .expect("the alert did not resolve after failback");
    assert!(resolved.at.saturating_duration_since(back) < Duration::from_secs(5));
    // One alert over the whole episode: every notification carries only it.
    for h in amrx.hits() {
        let a = am_alerts(&h);
        assert!(
            a.iter().all(|a| a.1 == "FailoverdFailedOver"),
            "unexpected alert {a:?}"
        );
    }
    // The fast receiver got the failback steps too; the hung one is still on the first.
    assert!(fast.hits().iter().any(|h| h.json()["event"] == "failback"));
    assert_eq!(hung.hits().len(), 1);
    let text = d.shared.metrics.encode();
    assert!(
        text.contains(
            r#"failoverd_notifications_total{sink="webhook:fast",event="failover",result="sent"} 1"#
        ),
        "{text}"
    );
    d.shutdown().await;
}
