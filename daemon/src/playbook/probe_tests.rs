//! Probe option checks through the probe library, and loading from disk.
#![allow(clippy::unwrap_used)]

use super::{Problem, Validate, parse};

fn playbook(probe: &str) -> String {
    format!(
        "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: pb }}\nspec:\n  \
         virtualService: {{ namespace: ns, name: web }}\n  \
         primary: {{ host: web.ns.svc.cluster.local }}\n  \
         failover:\n    - {{ host: web.dr.svc.cluster.local }}\n  \
         probes:\n    - name: p\n      target: primary\n{probe}    \
         - {{ name: dr, target: \"failover[0]\", tcp: {{ address: \"web.dr:80\" }} }}\n"
    )
}

fn problems(probe: &str) -> Vec<Problem> {
    parse("pb.yaml", &playbook(probe))
        .map_err(|p| p.to_string())
        .unwrap()
        .validate("pb.yaml")
}

/// Every HTTP option is accepted when valid, including an explicit insecureSkipVerify.
#[test]
fn full_http_check_is_valid() {
    let probe = "      http:\n        url: https://web.ns:8443/healthz\n        method: HEAD\n        \
                 headers: { X-Probe: failoverd }\n        expectStatus: [200, 204]\n        \
                 bodyContains: ok\n        bodyMatches: '^ok$'\n        followRedirects: true\n        \
                 serverName: web.ns.svc\n        insecureSkipVerify: true\n        connectTimeout: 200ms\n        \
                 freshConnection: false\n        http2: true\n      interval: 1s\n      timeout: 500ms\n";
    assert_eq!(problems(probe), vec![]);
    let tcp = "      tcp: { address: 'redis.ns:6379', send: \"PING\\r\\n\", expect: '+PONG' }\n";
    assert_eq!(problems(tcp), vec![]);
}

/// Bad URL, unknown scheme, bad regex, unreadable CA file and bad timing each name the playbook file and field.
#[test]
fn bad_probe_options_name_the_field() {
    for (probe, field, text) in [
        (
            "      http: { url: 'not a url' }\n",
            "spec.probes[0].http.url",
            "invalid probe URL",
        ),
        (
            "      http: { url: 'ftp://x/' }\n",
            "spec.probes[0].http.url",
            "scheme",
        ),
        (
            "      http: { url: 'http://x/', bodyMatches: '(' }\n",
            "spec.probes[0].http.bodyMatches",
            "regex",
        ),
        (
            "      http: { url: 'https://x/', caFile: /nonexistent/ca.pem }\n",
            "spec.probes[0].http.caFile",
            "/nonexistent/ca.pem",
        ),
        (
            "      http: { url: 'http://x/', method: 'GE T' }\n",
            "spec.probes[0].http.method",
            "method",
        ),
        (
            "      http: { url: 'http://x/', expectStatus: [] }\n",
            "spec.probes[0].http.expectStatus",
            "empty",
        ),
        (
            "      http: { url: 'http://x/' }\n      interval: 1s\n      timeout: 1s\n",
            "spec.probes[0].timeout",
            "shorter than interval",
        ),
        (
            "      http: { url: 'http://x/', connectTimeout: 2s }\n      timeout: 500ms\n",
            "spec.probes[0].http.connectTimeout",
            "at most timeout",
        ),
    ] {
        let found = problems(probe);
        assert!(
            found
                .iter()
                .any(|p| p.field == field && p.file == "pb.yaml" && p.message.contains(text)),
            "{probe}: {found:?}"
        );
    }
}

/// A gRPC check is valid with every option; a bad address, TLS options without `tls`,
/// a bad authority and two kinds at once each name the field.
#[test]
fn grpc_checks() {
    let full = "      grpc:\n        address: 'case-management.ns:50051'\n        service: case-management\n        \
                authority: case-management.ns.svc\n        tls: true\n        serverName: case-management.ns.svc\n        \
                insecureSkipVerify: true\n        connectTimeout: 200ms\n      interval: 1s\n      timeout: 500ms\n";
    assert_eq!(problems(full), vec![]);
    for (probe, field, text) in [
        (
            "      grpc: { address: 'case-management' }\n",
            "spec.probes[0].grpc.address",
            "host:port",
        ),
        (
            "      grpc: { address: 'x:50051', serverName: x.ns }\n",
            "spec.probes[0].grpc.serverName",
            "tls: true",
        ),
        (
            "      grpc: { address: 'x:50051', authority: 'a b' }\n",
            "spec.probes[0].grpc.authority",
            "a b",
        ),
        (
            "      grpc: { address: 'x:50051', connectTimeout: 1s }\n      timeout: 500ms\n",
            "spec.probes[0].grpc.connectTimeout",
            "at most timeout",
        ),
        (
            "      grpc: { address: 'x:50051' }\n      interval: 1s\n      timeout: 2s\n",
            "spec.probes[0].timeout",
            "shorter than interval",
        ),
        (
            "      grpc: { address: 'x:50051' }\n      tcp: { address: 'x:50051' }\n",
            "spec.probes[0]",
            "exactly one of `http`, `tcp`, `grpc`",
        ),
    ] {
        let found = problems(probe);
        assert!(
            found
                .iter()
                .any(|p| p.field == field && p.message.contains(text) && p.line > 0),
            "{probe}: {found:?}"
        );
    }
}

/// An unknown field inside `http` is refused at parse time.
#[test]
fn unknown_http_field_is_refused() {
    let err = parse(
        "pb.yaml",
        &playbook("      http: { url: 'http://x/', insecure: true }\n"),
    )
    .unwrap_err();
    assert!(err.message.contains("insecure"), "{err}");
}
