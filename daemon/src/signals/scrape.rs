//! `scrape` SLOs: a metrics page read directly on the SLO's own timer, without Prometheus.

use std::time::Duration;

use failover_probes::Outcome;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::playbook::{ScrapeSlo, SloSpec};

use super::SloResult;
use super::evaluate::{Evaluation, fmt_num, promql_duration};

/// Bounded label for `failoverd_signal_unknown_total{reason}` from a scrape SLO's reason.
pub(super) fn scrape_unknown_label(reason: &str) -> &'static str {
    if reason.starts_with("scrape") {
        "scrape_failed"
    } else if reason.starts_with("series vanished") {
        "series_vanished"
    } else if reason.starts_with("no series match") {
        "empty_result"
    } else if reason.starts_with("no requests") {
        "no_traffic"
    } else if reason.starts_with("first scrape") || reason.starts_with("too few samples") {
        "too_few_samples"
    } else if reason.ends_with("not a counter reading")
        || reason.starts_with("counter increases overflow")
    {
        // The same label as a Prometheus value that is ±Inf.
        "not_finite"
    } else {
        "malformed"
    }
}

/// Builds the error-ratio signal of a scrape SLO: requests are the `metric` series that
/// `matchers` select, failures those that `errorWhen` also selects; the window is counted in
/// scrape intervals, and at least two must be in it before there is a verdict.
pub fn scrape_signal(
    sc: &ScrapeSlo,
    interval: Duration,
) -> Result<failover_probes::scrape::ErrorRatio, String> {
    use failover_probes::scrape::{ErrorRatio, Matcher, Selector};
    let parse = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(l, v)| Matcher::parse(l, v).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
    };
    let total = Selector {
        name: sc.metric.value.clone(),
        matchers: parse(&sc.matchers)?,
    };
    let mut errors = total.clone();
    errors.matchers.extend(parse(&sc.error_when)?);
    let interval_nanos = interval.as_nanos().max(1);
    let intervals = usize::try_from(sc.window.get().as_nanos().div_ceil(interval_nanos))
        .unwrap_or(usize::MAX)
        .max(2);
    Ok(ErrorRatio::new(errors, total, intervals, sc.above).with_min_intervals(2))
}

/// Scrapes one `scrape` SLO's page every `evaluationInterval` until shutdown, judging each
/// scrape into an [`SloResult`]. A failed scrape, a vanished series, too few samples or no
/// traffic are Unknown: never healthy, never zero.
pub(super) async fn run_scrape(
    playbook: usize,
    slo: usize,
    spec: SloSpec,
    tx: mpsc::Sender<SloResult>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(sc) = spec.scrape.as_ref() else {
        return;
    };
    let interval = spec.evaluation_interval.get().max(Duration::from_millis(1));
    let timeout = spec.timeout.get();
    let window = promql_duration(sc.window.get());
    let send = |eval: Evaluation| SloResult {
        playbook,
        slo,
        eval,
        at: Instant::now(),
    };
    let unknown_eval = |reason: String| Evaluation {
        unknown_label: Some(scrape_unknown_label(&reason)),
        outcome: Outcome::Unknown(reason),
        detail: String::new(),
    };
    // The same shared client as the probes: no pooling (a pooled connection could hide a
    // dead listener), no proxy, no redirects; never Prometheus's credentials.
    let (client, mut signal) = match (failover_probes::http_client(), scrape_signal(sc, interval)) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) => {
            let _ = tx.send(send(unknown_eval(format!("scrape: {e}")))).await;
            return;
        }
        (_, Err(e)) => {
            let _ = tx.send(send(unknown_eval(format!("malformed: {e}")))).await;
            return;
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        let eval = match failover_probes::scrape::scrape(&client, &sc.url.value, timeout).await {
            Err(reason) => unknown_eval(reason),
            Ok((samples, _)) => match signal.observe(&samples) {
                (Outcome::Unknown(reason), _) => unknown_eval(reason),
                (outcome, ratio) => Evaluation {
                    outcome,
                    detail: format!(
                        "error ratio {} over {window} (limit {})",
                        ratio.map(fmt_num).unwrap_or_default(),
                        fmt_num(sc.above)
                    ),
                    unknown_label: None,
                },
            },
        };
        if tx.send(send(eval)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod scrape_tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::get;

    use super::*;
    use crate::playbook::Validate;
    use crate::playbook::{Loaded, parse};
    use crate::signals::{PromClient, spawn};

    fn playbook(url: &str) -> Loaded {
        let text = format!(
            "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: pb }}\nspec:\n  \
             virtualService: {{ namespace: ns, name: web }}\n  \
             primary: {{ host: web.ns.svc.cluster.local }}\n  \
             failover:\n    - {{ host: web.dr.svc.cluster.local }}\n  \
             probes:\n    - {{ name: dr, target: \"failover[0]\", tcp: {{ address: \"web.dr:80\" }} }}\n  \
             slos:\n    - name: sidecar\n      target: primary\n      evaluationInterval: 100ms\n      \
             timeout: 90ms\n      scrape:\n        url: {url}\n        metric: reqs_total\n        \
             matchers: {{ svc: '=~web.*' }}\n        errorWhen: {{ code: '=~5..' }}\n        \
             window: 200ms\n        above: 0.1\n"
        );
        let playbook = parse("pb.yaml", &text).unwrap();
        assert_eq!(playbook.validate("pb.yaml"), vec![]);
        Loaded {
            file: "pb.yaml".into(),
            playbook,
        }
    }

    /// Ensures bad scrape SLOs are refused naming the field and line.
    #[test]
    fn scrape_validation() {
        let good = playbook("http://127.0.0.1:9/metrics");
        let text = serde_json::to_string(&good.playbook).unwrap();
        assert!(text.contains("errorWhen"));
        let base = |url: &str, extra: (&str, &str)| {
            let t = format!(
                "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: pb }}\nspec:\n  \
                 virtualService: {{ namespace: ns, name: web }}\n  \
                 primary: {{ host: web.ns.svc.cluster.local }}\n  \
                 failover:\n    - {{ host: web.dr.svc.cluster.local }}\n  \
                 probes:\n    - {{ name: dr, target: \"failover[0]\", tcp: {{ address: \"web.dr:80\" }} }}\n  \
                 slos:\n    - name: sidecar\n      target: primary\n      scrape:\n        url: {url}\n        \
                 metric: reqs_total\n        errorWhen: {{ code: '=~5..' }}\n        window: 30s\n        above: 0.1\n"
            )
            .replacen(extra.0, extra.1, 1);
            parse("pb.yaml", &t).unwrap().validate("pb.yaml")
        };
        for (url, extra, field) in [
            ("ftp://x/m", ("", ""), "spec.slos[0].scrape.url"),
            (
                "http://x/m",
                ("metric: reqs_total", "metric: 'reqs total'"),
                "spec.slos[0].scrape.metric",
            ),
            (
                "http://x/m",
                ("code: '=~5..'", "code: '=~(5'"),
                "spec.slos[0].scrape.errorWhen.code",
            ),
            (
                "http://x/m",
                ("window: 30s", "window: 9s"),
                "spec.slos[0].scrape.window",
            ),
            (
                "http://x/m",
                ("above: 0.1", "above: 1.5"),
                "spec.slos[0].scrape.above",
            ),
            (
                "http://x/m",
                (
                    "      scrape:",
                    "      server: http://prom:9090\n      scrape:",
                ),
                "spec.slos[0].server",
            ),
        ] {
            let found = base(url, extra);
            assert!(
                found.iter().any(|p| p.field == field && p.line > 0),
                "{field}: {found:?}"
            );
        }
        assert_eq!(base("http://x/m", ("", "")), vec![]);
    }

    /// Ensures a scrape SLO reports through the SLO channel: Unknown until two intervals
    /// are in the window, then healthy at 0 % and unhealthy at 50 % errors, Unknown (never
    /// healthy) when a counted series vanishes or the page cannot be read.
    #[tokio::test]
    async fn scrape_slo_results() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // (ok, errors, include the ok series)
        let page: Arc<Mutex<(u64, u64, bool)>> = Arc::new(Mutex::new((0, 0, true)));
        let p2 = page.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let p2 = p2.clone();
                async move {
                    let mut p = p2.lock().unwrap();
                    let mut text = String::new();
                    if p.2 {
                        text.push_str(&format!("reqs_total{{svc=\"web\",code=\"200\"}} {}\n", p.0));
                    }
                    text.push_str(&format!("reqs_total{{svc=\"web\",code=\"503\"}} {}\n", p.1));
                    text.push_str("reqs_total{svc=\"other\",code=\"503\"} 1000000\n");
                    // Traffic moves on between scrapes: 100 requests per scrape.
                    p.0 += 100;
                    text
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let (tx, mut rx) = mpsc::channel(64);
        let (stop_tx, stop) = watch::channel(false);
        let task = spawn(
            &[playbook(&url)],
            None,
            PromClient::new(reqwest::Client::new()),
            tx,
            stop,
        )
        .unwrap();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .eval
        };
        let first = next().await;
        assert_eq!(first.unknown_label, Some("too_few_samples"), "{first:?}");
        // Bounded: a healthy verdict must come within a few scrapes.
        let mut seen_healthy = false;
        for _ in 0..20 {
            let e = next().await;
            if e.outcome == Outcome::Healthy {
                seen_healthy = true;
                break;
            }
            assert!(matches!(e.outcome, Outcome::Unknown(_)), "{e:?}");
        }
        assert!(seen_healthy);
        // Errors: 100 more 503s per scrape against 100 more 200s → 50 %.
        {
            let p3 = page.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    p3.lock().unwrap().1 += 100;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        let mut seen_unhealthy = false;
        for _ in 0..20 {
            let e = next().await;
            if let Outcome::Unhealthy(r) = &e.outcome {
                assert!(r.contains("error ratio"), "{r}");
                seen_unhealthy = true;
                break;
            }
        }
        assert!(seen_unhealthy);
        page.lock().unwrap().2 = false;
        let mut seen_vanished = false;
        for _ in 0..20 {
            let e = next().await;
            if e.unknown_label == Some("series_vanished") {
                seen_vanished = true;
                break;
            }
        }
        assert!(seen_vanished);
        server.abort();
        let _ = server.await;
        let mut seen_failed = false;
        for _ in 0..20 {
            let e = next().await;
            assert_ne!(e.outcome, Outcome::Healthy, "{e:?}");
            if e.unknown_label == Some("scrape_failed") {
                seen_failed = true;
                break;
            }
        }
        assert!(seen_failed);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
