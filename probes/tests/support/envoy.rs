//! A realistic Envoy/Istio sidecar exposition page, for tests and the parse bench.

use std::fmt::Write as _;

/// The cluster whose counters the tests drive.
pub const CASE_CLUSTER: &str = "outbound|8080||case-management.child-welfare.svc.cluster.local";

/// An Envoy-style page with `clusters` upstream clusters (about 40 series each, plus
/// Istio standard metrics). Cluster 0 is [`CASE_CLUSTER`], whose
/// `envoy_cluster_upstream_rq_total` is `total` and 5xx class count is `errors`.
pub fn envoy_page(clusters: usize, total: u64, errors: u64) -> String {
    let mut out = String::with_capacity(clusters * 6000);
    let names: Vec<String> = (0..clusters)
        .map(|i| {
            if i == 0 {
                CASE_CLUSTER.to_owned()
            } else {
                format!(
                    "outbound|{}||svc-{i}.ns-{}.svc.cluster.local",
                    8000 + i % 90,
                    i % 17
                )
            }
        })
        .collect();
    out.push_str("# TYPE envoy_cluster_upstream_rq_total counter\n");
    for (i, c) in names.iter().enumerate() {
        let t = if i == 0 { total } else { 1000 + i as u64 * 7 };
        let _ = writeln!(
            out,
            "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{c}\"}} {t}"
        );
    }
    out.push_str("# TYPE envoy_cluster_upstream_rq counter\n");
    for (i, c) in names.iter().enumerate() {
        for (code, n) in [("200", 900u64), ("404", 3), ("503", 2), ("504", 1)] {
            let n = if i == 0 && code == "503" {
                errors
            } else {
                n + i as u64
            };
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq{{envoy_response_code=\"{code}\",envoy_cluster_name=\"{c}\"}} {n}"
            );
        }
    }
    out.push_str("# TYPE envoy_cluster_upstream_rq_xx counter\n");
    for (i, c) in names.iter().enumerate() {
        for class in ["2", "4", "5"] {
            let n = if i == 0 && class == "5" {
                errors
            } else {
                50 + i as u64
            };
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"{class}\",envoy_cluster_name=\"{c}\"}} {n}"
            );
        }
    }
    for gauge in [
        "envoy_cluster_upstream_cx_active",
        "envoy_cluster_upstream_rq_active",
        "envoy_cluster_membership_healthy",
        "envoy_cluster_membership_total",
        "envoy_cluster_circuit_breakers_default_rq_open",
    ] {
        let _ = writeln!(out, "# TYPE {gauge} gauge");
        for (i, c) in names.iter().enumerate() {
            let _ = writeln!(out, "{gauge}{{envoy_cluster_name=\"{c}\"}} {}", i % 9);
        }
    }
    out.push_str("# TYPE envoy_cluster_upstream_rq_time histogram\n");
    for (i, c) in names.iter().enumerate() {
        let mut cumulative = 0;
        for le in [
            "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
            "10000", "+Inf",
        ] {
            cumulative += 3 + i % 5;
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{c}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name=\"{c}\"}} {}.5",
            cumulative * 12
        );
        let _ = writeln!(
            out,
            "envoy_cluster_upstream_rq_time_count{{envoy_cluster_name=\"{c}\"}} {cumulative}"
        );
    }
    out.push_str(
        "# HELP istio_requests_total Total requests.\n# TYPE istio_requests_total counter\n",
    );
    for (i, c) in names.iter().enumerate().step_by(3) {
        let host = c.rsplit("||").next().unwrap_or(c);
        let _ = writeln!(
            out,
            "istio_requests_total{{reporter=\"source\",source_workload=\"frontend-v{}\",source_workload_namespace=\"web\",destination_service=\"{host}\",destination_workload=\"svc-{i}\",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\",source_principal=\"spiffe://cluster.local/ns/web/sa/frontend\"}} {}",
            i % 3,
            10_000 + i
        );
    }
    out.push_str("# TYPE envoy_server_uptime gauge\nenvoy_server_uptime 86400\n");
    out
}
