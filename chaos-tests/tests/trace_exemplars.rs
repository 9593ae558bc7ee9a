#![allow(clippy::unwrap_used)]
//! The trace id as an OpenMetrics exemplar, with the real `failoverd` binary (build it first:
//! `cargo build -p failoverd`): a failover's `failoverd_route_write_seconds` and
//! `failoverd_decision_seconds` observations carry the move's trace id, the one in its audit
//! records, when the scraper asks for OpenMetrics; the plain Prometheus text format (no
//! `Accept`) carries none. The exporter points at a port nothing listens on: the trace id
//! exists whether or not a collector takes the spans. Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use chaos_tests::{Daemon, Scenario, free_addr};
use failoverd::engine::Routing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(1);
/// 3 probes at 1 s plus the write, with room for a loaded 2-core box.
const FAILOVER_WITHIN: Duration = Duration::from_secs(10);

fn ok<T>(r: anyhow::Result<T>, d: &Daemon) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()))
}

/// `GET /metrics` (HTTP/1.0, bounded) with `accept` as its Accept header (none if empty):
/// the Content-Type and the body.
async fn scrape(addr: SocketAddr, accept: &str) -> (String, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let accept = if accept.is_empty() {
            String::new()
        } else {
            format!("Accept: {accept}\r\n")
        };
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("/metrics answered within 10 s")
        .expect("/metrics exchange");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// The exemplars' trace ids on the sample lines of `metric` (`name_bucket{...} n # {trace_id="x"} v`).
fn exemplar_traces(body: &str, metric: &str) -> Vec<String> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}_bucket")))
        .filter_map(|l| l.split_once(" # {").map(|(_, ex)| ex))
        .filter_map(|ex| ex.strip_prefix("trace_id=\""))
        .filter_map(|ex| ex.split_once('"').map(|(id, _)| id.to_string()))
        .collect()
}

/// A scenario and the real daemon on it with tracing on, the exporter at a port nothing
/// listens on (`sampleRatio: 0`: only moves and refusals are traced).
async fn traced(name: &str) -> (Scenario, Daemon) {
    let s = Scenario::new(&[]).await.unwrap();
    let dead = free_addr().unwrap();
    let cfg = s.dir.path().join("failoverd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tracing:\n  otlp: {{ endpoint: \"http://{dead}\", timeout: 1s }}\n  sampleRatio: 0\n"
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn_with(&s.paths, name, &["--config", cfg.to_str().unwrap()]).unwrap();
    ok(d.wait_ready(10 * SEC).await, &d);
    (s, d)
}

/// Stops the primary, waits for the failover to be written and returns the `traceId` of its
/// audit outcome record.
async fn fail_over(s: &mut Scenario, d: &Daemon) -> String {
    s.primary.stop();
    ok(
        s.wait_routing(|r| r == Routing::Failover { target: 0 }, FAILOVER_WITHIN)
            .await,
        d,
    );
    let written = ok(
        s.wait_audit(
            "the failover's outcome record",
            |r| r.action == "failover" && r.outcome == "written",
            5 * SEC,
        )
        .await,
        d,
    );
    written
        .trace_id
        .clone()
        .unwrap_or_else(|| panic!("no traceId in {written:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moves_trace_id_is_the_exemplar_of_its_write_and_decision_times() {
    let (mut s, mut d) = traced("exemplars").await;

    // Before any move: no traced round, so no exemplar at all.
    let (_, before) = scrape(d.addr, "application/openmetrics-text; version=1.0.0").await;
    assert!(
        !before.contains(" # {"),
        "no exemplar before a move:\n{before}"
    );

    let trace = fail_over(&mut s, &d).await;

    // What Prometheus sends when it wants exemplars.
    let (ct, open) = scrape(
        d.addr,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(
        open.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let writes = exemplar_traces(&open, "failoverd_route_write_seconds");
    assert_eq!(
        writes,
        vec![trace.clone()],
        "one write so far, its exemplar is the audit record's traceId:\n{open}"
    );
    let decisions = exemplar_traces(&open, "failoverd_decision_seconds");
    assert!(
        decisions.contains(&trace),
        "the failover's decision time has the move's trace id ({trace}) as exemplar: {decisions:?}\n{open}"
    );

    // No Accept: the Prometheus text format, the same samples without exemplars.
    let (ct, plain) = scrape(d.addr, "").await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(
        !plain.contains(" # {"),
        "no exemplar in the text format:\n{plain}"
    );
    assert!(!plain.contains("# EOF"));
    let bucket = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("failoverd_route_write_seconds_count"))
            .map(|l| l.split(" # ").next().unwrap().to_string())
    };
    assert_eq!(
        bucket(&plain),
        bucket(&open),
        "same write count in both formats"
    );
    assert!(bucket(&plain).is_some(), "{plain}");
    d.terminate(10 * SEC).unwrap();
}

/// The Grafana dashboard's exemplar link, as far as it can be shown without Grafana: a real
/// Prometheus (with `--enable-feature=exemplar-storage`, as `deploy/README.md` says) scrapes
/// the real daemon, and the exact query of the dashboard's "Routing write latency" panel
/// (read from `deploy/base/dashboards/failoverd.json`, the panel that asks for exemplars)
/// returns, from `/api/v1/query_exemplars`, an exemplar whose `trace_id` is the failover's
/// `traceId` in the audit log: the id Grafana's exemplar link opens in Jaeger or Tempo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_keeps_the_exemplar_the_dashboards_write_latency_panel_links_to_the_trace() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/dashboards/failoverd.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Routing write latency")
        .expect("the dashboard has a Routing write latency panel");
    let exprs: Vec<&str> = panel["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["exemplar"] == true)
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(!exprs.is_empty(), "the panel asks for exemplars: {panel}");

    let (mut s, mut d) = traced("exemplars-prometheus").await;
    let prom = chaos_tests::Prometheus::start_with_features(&[d.addr], &["exemplar-storage"]).await;
    let prom = ok(prom, &d);
    let start = jiff::Timestamp::now().as_second() - 60;

    let trace = fail_over(&mut s, &d).await;

    // Scraped every second; room for a loaded box.
    for expr in exprs {
        let deadline = std::time::Instant::now() + 20 * SEC;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let path = format!(
                "/api/v1/query_exemplars?query={}&start={start}&end={}",
                chaos_tests::prometheus::percent_encode(expr),
                jiff::Timestamp::now().as_second() + 60
            );
            if let Ok((200, body)) = prom.get(&path).await {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], "success", "{body}");
                seen = v["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_string))
                    .collect();
            }
            if seen.contains(&trace) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{expr}`: no exemplar with the audit record's traceId {trace} (saw {seen:?})\n{}\n{}",
                prom.logs(),
                d.logs()
            );
            tokio::time::sleep(SEC / 2).await;
        }
    }
    d.terminate(10 * SEC).unwrap();
}
