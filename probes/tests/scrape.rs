//! The exposition parser (each known prometheus-parse defect has a test here), counter
//! increases, and the error-ratio signal over real HTTP scrapes of an Envoy-style page.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use failover_probes::exposition::{Format, MetricType, parse};
use failover_probes::scrape::{CounterTracker, ErrorRatio, Matcher, Selector, scrape};
use failover_probes::{Outcome, http_client};
use support::envoy::{CASE_CLUSTER, envoy_page};
use tokio::net::TcpListener;

fn one(text: &str, format: Format) -> failover_probes::exposition::Sample {
    let mut samples = parse(text, format).unwrap();
    assert_eq!(samples.len(), 1, "{samples:?}");
    samples.remove(0)
}

/// Defect 1: metric names with `:` (recording-rule style) are kept whole.
#[test]
fn names_with_colons_are_kept() {
    let s = one(
        "cluster:istio_requests:rate5m{destination_service=\"a\"} 0.5\n",
        Format::PrometheusText,
    );
    assert_eq!(&*s.name, "cluster:istio_requests:rate5m");
    assert_eq!(s.value, 0.5);
}

/// Defects 2 and 3: label values holding `,`, `=` and `}` are kept whole, and later labels survive.
#[test]
fn label_values_with_separators_are_kept() {
    let s = one(
        "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"outbound|8080||a,b=c}d\",x=\"y\"} 7\n",
        Format::PrometheusText,
    );
    assert_eq!(
        s.label("envoy_cluster_name"),
        Some("outbound|8080||a,b=c}d")
    );
    assert_eq!(s.label("x"), Some("y"));
    assert_eq!(s.value, 7.0);
}

/// Defect 4: `\"`, `\\` and `\n` in label values are unescaped.
#[test]
fn label_escapes_are_unescaped() {
    let s = one(
        r#"m{path="C:\\dir\\\"x\"",msg="a\nb"} 1"#,
        Format::PrometheusText,
    );
    assert_eq!(s.label("path"), Some(r#"C:\dir\"x""#));
    assert_eq!(s.label("msg"), Some("a\nb"));
}

/// Defect 5: OpenMetrics counters (`# TYPE foo counter`, samples `foo_total`, `foo_created`) read as counters.
#[test]
fn openmetrics_counters_are_counters() {
    let page = "# TYPE http_requests counter\n# HELP http_requests Requests.\n\
                http_requests_total{code=\"200\"} 10 1700000000.250 # {trace_id=\"abc\"} 1 1700000000.1\n\
                http_requests_created{code=\"200\"} 1699999000\n# EOF\n";
    let samples = parse(page, Format::OpenMetrics).unwrap();
    assert_eq!(samples.len(), 2);
    assert!(samples.iter().all(|s| s.metric_type == MetricType::Counter));
    assert_eq!(samples[0].timestamp, Some(1_700_000_000.25));
    assert!(parse("# EOF\nx 1\n", Format::OpenMetrics).is_err());
}

/// Defect 6: fractional timestamps are kept exactly (seconds), never replaced; garbage timestamps reject the page.
#[test]
fn timestamps_are_kept_or_rejected() {
    let s = one("m 1 1700000000123.5\n", Format::PrometheusText);
    assert_eq!(s.timestamp, Some(1_700_000_000.123_5));
    let s = one("m 1 1700000000123\n", Format::PrometheusText);
    assert_eq!(s.timestamp, Some(1_700_000_000.123));
    let err = parse("ok 1\nm 1 soon\n", Format::PrometheusText).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("timestamp"), "{err}");
}

/// Special values, histogram suffix typing, untyped samples and errors located by line.
#[test]
fn values_types_and_errors() {
    let page = "# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 3\nlat_sum 1.5e2\nlat_count 3\n\
                up NaN\ndown -Inf\nstray_total 4\n";
    let samples = parse(page, Format::PrometheusText).unwrap();
    assert_eq!(samples[0].metric_type, MetricType::Histogram);
    assert_eq!(samples[1].value, 150.0);
    assert!(samples[3].value.is_nan());
    assert_eq!(samples[4].value, f64::NEG_INFINITY);
    assert_eq!(samples[5].metric_type, MetricType::Untyped);
    for (bad, line) in [
        ("a 1\nb{x=\"1} 2\n", 2),
        ("a{x=1} 2\n", 1),
        ("a 1\n\nb{x=\"1\" y=\"2\"} 2\n", 3),
        ("9a 1\n", 1),
        ("a infinity\n", 1),
        ("a{x=\"\\q\"} 1\n", 1),
        ("a{x=\"1\",x=\"2\"} 1\n", 1),
        ("a 1 2 3\n", 1),
        ("# TYPE a counter\n# TYPE a gauge\n", 2),
    ] {
        let err = parse(bad, Format::PrometheusText).unwrap_err();
        assert_eq!(err.line, line, "{bad:?}: {err}");
    }
}

/// A realistic Envoy sidecar page (thousands of series) parses completely and selects by name and labels.
#[test]
fn envoy_page_parses_and_selects() {
    let page = envoy_page(300, 5000, 25);
    let samples = parse(&page, Format::PrometheusText).unwrap();
    let series = page.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(samples.len(), series);
    assert!(series > 7000, "{series}");
    let sel = Selector {
        name: "envoy_cluster_upstream_rq".to_owned(),
        matchers: vec![
            Matcher::equal("envoy_cluster_name", CASE_CLUSTER, false),
            Matcher::regex("envoy_response_code", "5..", false).unwrap(),
        ],
    };
    let picked: Vec<_> = samples.iter().filter(|s| sel.matches(s)).collect();
    assert_eq!(picked.len(), 2);
    assert_eq!(picked.iter().map(|s| s.value).sum::<f64>(), 25.0 + 1.0);
    assert!(Matcher::regex("x", "(", false).is_err());
}

fn counter_page(series: &[(&str, f64)]) -> Vec<failover_probes::exposition::Sample> {
    let mut text = String::from("# TYPE rq counter\n");
    for (code, v) in series {
        text.push_str(&format!("rq_total{{code=\"{code}\"}} {v}\n"));
    }
    parse(&text, Format::PrometheusText).unwrap()
}

/// Increases sum across series; a counter reset counts the new value; a vanished series is Unknown, not zero.
#[test]
fn counter_tracker_resets_and_vanishing() {
    let mut t = CounterTracker::new(Selector {
        name: "rq_total".to_owned(),
        matchers: vec![],
    });
    assert_eq!(
        t.observe(&counter_page(&[("200", 10.0), ("500", 1.0)])),
        Ok(None)
    );
    assert_eq!(
        t.observe(&counter_page(&[("200", 15.0), ("500", 3.0)])),
        Ok(Some(7.0))
    );
    // The target restarted: 200 dropped to 4 (reset → +4), 500 unchanged.
    assert_eq!(
        t.observe(&counter_page(&[("200", 4.0), ("500", 3.0)])),
        Ok(Some(4.0))
    );
    let err = t.observe(&counter_page(&[("200", 6.0)])).unwrap_err();
    assert!(err.contains("vanished") && err.contains("500"), "{err}");
    // The next interval is judged on the series still present.
    assert_eq!(t.observe(&counter_page(&[("200", 9.0)])), Ok(Some(3.0)));
    assert!(t.observe(&counter_page(&[])).is_err());
}

/// A page with `rq_total` series whose values are written as the exposition format spells
/// them (`NaN`, `+Inf`, `-Inf`).
fn raw_counter_page(series: &[(&str, f64)]) -> Vec<failover_probes::exposition::Sample> {
    let mut text = String::from("# TYPE rq counter\n");
    for (code, v) in series {
        let v = match *v {
            v if v.is_nan() => "NaN".to_owned(),
            v if v == f64::INFINITY => "+Inf".to_owned(),
            v if v == f64::NEG_INFINITY => "-Inf".to_owned(),
            v => v.to_string(),
        };
        text.push_str(&format!("rq_total{{code=\"{code}\"}} {v}\n"));
    }
    parse(&text, Format::PrometheusText).unwrap()
}

/// A NaN, infinite or negative counter (on the error series or on the total) is Unknown with
/// a reason, never Healthy: skipped, a NaN error series read as "no errors", and an infinite
/// total made the ratio 0 (or NaN), both of which compare as healthy.
#[test]
fn non_finite_counters_are_unknown_never_healthy() {
    let ratio = || {
        ErrorRatio::new(
            Selector {
                name: "rq_total".to_owned(),
                matchers: vec![Matcher::regex("code", "5..", false).unwrap()],
            },
            Selector {
                name: "rq_total".to_owned(),
                matchers: vec![],
            },
            10,
            0.1,
        )
        .with_min_intervals(2)
    };
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0] {
        // From the first scrape on, on the error series or on the total.
        for which in ["500", "200"] {
            let mut r = ratio();
            for i in 0..5u32 {
                let good = f64::from(i) * 100.0;
                let page = if which == "500" {
                    raw_counter_page(&[("200", good), ("500", bad)])
                } else {
                    raw_counter_page(&[("200", bad), ("500", 0.0)])
                };
                let (outcome, value) = r.observe(&page);
                match outcome {
                    Outcome::Unknown(reason) => {
                        assert!(
                            reason.contains("not a counter reading"),
                            "{bad} {which}: {reason}"
                        );
                        assert_eq!(value, None);
                    }
                    other => panic!("{bad} on {which}, scrape {i}: {other:?}"),
                }
            }
        }
        // After good readings: the bad scrape is Unknown, and so is the next one (the rate
        // starts over), then good readings are judged again.
        let mut r = ratio();
        for i in 0..3u32 {
            r.observe(&raw_counter_page(&[
                ("200", f64::from(i) * 100.0),
                ("500", 0.0),
            ]));
        }
        assert_eq!(
            r.observe(&raw_counter_page(&[("200", 300.0), ("500", 0.0)]))
                .0,
            Outcome::Healthy
        );
        let (o, _) = r.observe(&raw_counter_page(&[("200", bad), ("500", 0.0)]));
        assert!(matches!(o, Outcome::Unknown(_)), "{bad}: {o:?}");
        let (o, _) = r.observe(&raw_counter_page(&[("200", 500.0), ("500", 0.0)]));
        assert!(matches!(o, Outcome::Unknown(_)), "{bad}: {o:?}");
        let (o, _) = r.observe(&raw_counter_page(&[("200", 600.0), ("500", 50.0)]));
        assert!(matches!(o, Outcome::Unhealthy(_)), "{bad}: {o:?}");
    }
    // Finite readings whose increases overflow f64 are Unknown too.
    let mut r = ratio();
    r.observe(&raw_counter_page(&[("200", 0.0), ("500", 0.0)]));
    r.observe(&raw_counter_page(&[("200", f64::MAX), ("500", f64::MAX)]));
    let (o, _) = r.observe(&raw_counter_page(&[("200", 1.0), ("500", 1.0)]));
    let (o2, _) = r.observe(&raw_counter_page(&[("200", f64::MAX), ("500", f64::MAX)]));
    assert!(
        !matches!(o, Outcome::Healthy) && !matches!(o2, Outcome::Healthy),
        "{o:?} {o2:?}"
    );
    assert!(
        matches!(&o2, Outcome::Unknown(r) if r.contains("overflow")),
        "{o2:?}"
    );
}

/// Serves the Envoy page with counters driven by the test; `/gone` drops the case cluster.
async fn metrics_server(total: Arc<AtomicU64>, errors: Arc<AtomicU64>) -> SocketAddr {
    let state = (total, errors);
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State((t, e)): State<(Arc<AtomicU64>, Arc<AtomicU64>)>| async move {
                    envoy_page(300, t.load(Ordering::SeqCst), e.load(Ordering::SeqCst))
                },
            ),
        )
        .route(
            "/gone",
            get(|| async {
                envoy_page(300, 0, 0)
                    .lines()
                    .filter(|l| !l.contains(CASE_CLUSTER))
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
        )
        .route("/broken", get(|| async { "ok 1\nbad{ 2\n" }))
        .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Over real scrapes: Unknown first, Healthy at low 5xx, Unhealthy when 5xx rise, Unknown when the series vanish or the page fails.
#[tokio::test]
async fn error_ratio_over_real_scrapes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = http_client().unwrap();
    let total = Arc::new(AtomicU64::new(1000));
    let errors = Arc::new(AtomicU64::new(10));
    let addr = metrics_server(total.clone(), errors.clone()).await;
    let url = format!("http://{addr}/metrics");
    let cluster = |name: &str, extra: Vec<Matcher>| {
        let mut matchers = vec![Matcher::equal("envoy_cluster_name", CASE_CLUSTER, false)];
        matchers.extend(extra);
        Selector {
            name: name.to_owned(),
            matchers,
        }
    };
    let mut signal = ErrorRatio::new(
        cluster(
            "envoy_cluster_upstream_rq_xx",
            vec![Matcher::equal("envoy_response_code_class", "5", false)],
        ),
        cluster("envoy_cluster_upstream_rq_total", vec![]),
        3,
        0.05,
    );
    let timeout = Duration::from_secs(2);
    let step = |signal: &mut ErrorRatio, samples: &[_]| signal.observe(samples);

    let (samples, _) = scrape(&client, &url, timeout).await.unwrap();
    assert!(matches!(step(&mut signal, &samples).0, Outcome::Unknown(_)));
    // +1000 requests, +10 errors: 1%.
    total.store(2000, Ordering::SeqCst);
    errors.store(20, Ordering::SeqCst);
    let (samples, _) = scrape(&client, &url, timeout).await.unwrap();
    let (outcome, ratio) = step(&mut signal, &samples);
    assert_eq!((outcome, ratio), (Outcome::Healthy, Some(0.01)));
    // +1000 requests, +200 errors: window (30 / 2000 ... 210/2000) = 10.5%.
    total.store(3000, Ordering::SeqCst);
    errors.store(220, Ordering::SeqCst);
    let (samples, _) = scrape(&client, &url, timeout).await.unwrap();
    let (outcome, ratio) = step(&mut signal, &samples);
    assert!(matches!(outcome, Outcome::Unhealthy(_)), "{outcome:?}");
    assert_eq!(ratio, Some(210.0 / 2000.0));
    // The series vanish: Unknown, never a ratio of 0.
    let (samples, _) = scrape(&client, &format!("http://{addr}/gone"), timeout)
        .await
        .unwrap();
    assert!(
        matches!(step(&mut signal, &samples), (Outcome::Unknown(r), None) if r.contains("vanished"))
    );
    // A malformed page or a failing endpoint is a scrape error (Unknown), located by line.
    let err = scrape(&client, &format!("http://{addr}/broken"), timeout)
        .await
        .unwrap_err();
    assert!(err.contains("line 2"), "{err}");
    let err = scrape(&client, &format!("http://{addr}/down"), timeout)
        .await
        .unwrap_err();
    assert_eq!(err, "scrape: status 503");
}
