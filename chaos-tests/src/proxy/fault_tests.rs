//! The routing proxy's Istio semantics, each test written from the field's documentation (the
//! vendored CRD, istio.io's VirtualService reference, Envoy's route and fault filter docs),
//! quoted above the assertion it backs.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::*;

/// A VirtualService whose `http` is `http`.
fn vs(http: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "web", "namespace": "demo"}, "spec": {"hosts": ["web"], "http": http}})
}

/// A route sending everything it gets to host `to`, with extra fields `extra`.
fn to(host: &str, extra: Value) -> Value {
    let mut r = json!({"route": [{"destination": {"host": host}}]});
    if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    r
}

fn req(path: &str, headers: &[(&str, &str)]) -> Request {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: web.demo\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    Request::parse_head(&head)
}

/// The host of the destination the first matching route sends `r` to; None: no route.
fn host_for(v: &Value, r: &Request) -> Option<String> {
    let routes = http_routes_of(v).unwrap();
    routes.select(r).map(|x| x.destinations[0].host.clone())
}

// istio.io VirtualService.http: "An ordered list of route rules for HTTP traffic. ... The
// first rule matching an incoming request is used."
#[test]
fn the_first_matching_route_wins_in_order() {
    let v = vs(json!([
        to("a", json!({"match": [{"uri": {"prefix": "/api"}}]})),
        to("b", json!({"match": [{"uri": {"prefix": "/"}}]})),
        to("c", json!({})),
    ]));
    assert_eq!(host_for(&v, &req("/api/x", &[])).as_deref(), Some("a"));
    assert_eq!(host_for(&v, &req("/other", &[])).as_deref(), Some("b"));
    // Both later routes match "/api"; order decides, not specificity.
    let swapped = vs(json!([
        to("b", json!({"match": [{"uri": {"prefix": "/"}}]})),
        to("a", json!({"match": [{"uri": {"prefix": "/api"}}]})),
    ]));
    assert_eq!(
        host_for(&swapped, &req("/api/x", &[])).as_deref(),
        Some("b")
    );
}

// A route with no `match` ("Match conditions to be satisfied for the rule to be activated")
// has no condition, so it serves every request; and Envoy answers 404 when no route matches.
#[test]
fn a_route_without_match_matches_everything_and_no_route_is_none() {
    let v = vs(json!([to("all", json!({}))]));
    assert_eq!(
        host_for(&v, &req("/x", &[("a", "b")])).as_deref(),
        Some("all")
    );
    let guarded = vs(json!([to(
        "a",
        json!({"match": [{"uri": {"exact": "/a"}}]})
    )]));
    assert_eq!(host_for(&guarded, &req("/b", &[])), None);
}

// HTTPRoute.match: "All conditions inside a single match block have AND semantics, while the
// list of match blocks have OR semantics. The rule is matched if any one of the match blocks
// succeed."
#[test]
fn match_entries_are_ored_and_conditions_within_one_are_anded() {
    let v = vs(json!([
        to(
            "hit",
            json!({"match": [
                {"headers": {"x-a": {"exact": "1"}}, "uri": {"prefix": "/p"}},
                {"headers": {"x-b": {"exact": "2"}}},
            ]})
        ),
        to("miss", json!({})),
    ]));
    let host = |path, h: &[(&str, &str)]| host_for(&v, &req(path, h)).unwrap();
    assert_eq!(
        host("/p", &[("x-a", "1")]),
        "hit",
        "first entry, both conditions"
    );
    assert_eq!(
        host("/q", &[("x-a", "1")]),
        "miss",
        "header alone is not enough"
    );
    assert_eq!(host("/p", &[]), "miss", "uri alone is not enough");
    assert_eq!(host("/q", &[("x-b", "2")]), "hit", "second entry alone");
}

// CRD `headers`: "exact: "value" for exact string match; prefix: "value" for prefix-based
// match; regex: "value" for RE2 style regex-based match". Envoy HeaderMatcher
// safe_regex_match: "the entire request header value must match the regex. The rule will not
// match if only a subsequence of the request header value matches the regex."
#[test]
fn header_exact_prefix_and_whole_value_regex() {
    let one = |sm: Value, value: &str| {
        let v = vs(json!([
            to("hit", json!({"match": [{"headers": {"x-drill": sm}}]})),
            to("miss", json!({}))
        ]));
        host_for(&v, &req("/", &[("x-drill", value)])).unwrap() == "hit"
    };
    assert!(one(json!({"exact": "run-1"}), "run-1"));
    assert!(!one(json!({"exact": "run-1"}), "run-10"));
    assert!(
        !one(json!({"exact": "run-1"}), "RUN-1"),
        "values are case-sensitive"
    );
    assert!(one(json!({"prefix": "run-"}), "run-7"));
    assert!(!one(json!({"prefix": "run-"}), "a-run-7"));
    assert!(one(json!({"regex": "run-[0-9]+"}), "run-42"));
    assert!(
        !one(json!({"regex": "run-[0-9]+"}), "run-42x"),
        "a match must cover the end"
    );
    assert!(
        !one(json!({"regex": "run-[0-9]+"}), "xrun-42"),
        "and the start"
    );
    assert!(
        !one(json!({"regex": "1"}), "run-1"),
        "a subsequence is not a match"
    );
    assert!(
        one(json!({"regex": "a|b"}), "b"),
        "alternation stays inside the anchors"
    );
    assert!(!one(json!({"regex": "a|b"}), "ab"));
}

// CRD: "The header keys must be lowercase and use hyphen as the separator"; RFC 9110 5.1:
// "Field names are case-insensitive": a client sending `X-Failoverd-Drill` sends the header
// the route names.
#[test]
fn header_names_are_case_insensitive() {
    let v = vs(json!([
        to(
            "hit",
            json!({"match": [{"headers": {"x-failoverd-drill": {"exact": "run-1"}}}]})
        ),
        to("miss", json!({})),
    ]));
    for name in [
        "x-failoverd-drill",
        "X-Failoverd-Drill",
        "X-FAILOVERD-DRILL",
    ] {
        assert_eq!(
            host_for(&v, &req("/", &[(name, "run-1")])).unwrap(),
            "hit",
            "{name}"
        );
    }
    assert_eq!(
        host_for(&v, &req("/", &[])).unwrap(),
        "miss",
        "absent header"
    );
}

// CRD `uri`: "URI to match values are case-sensitive and formatted as follows: exact, prefix,
// regex"; Envoy's `path` (exact) and `safe_regex` ignore the query string, `prefix` does not.
#[test]
fn uri_exact_prefix_and_regex() {
    let one = |sm: Value, path: &str| {
        let v = vs(json!([
            to("hit", json!({"match": [{"uri": sm}]})),
            to("miss", json!({}))
        ]));
        host_for(&v, &req(path, &[])).unwrap() == "hit"
    };
    assert!(one(json!({"prefix": "/health"}), "/healthz"));
    assert!(!one(json!({"prefix": "/health"}), "/v1/health"));
    assert!(one(json!({"exact": "/healthz"}), "/healthz"));
    assert!(
        one(json!({"exact": "/healthz"}), "/healthz?probe=1"),
        "query string ignored"
    );
    assert!(!one(json!({"exact": "/healthz"}), "/healthz/x"));
    assert!(one(json!({"regex": "/v[0-9]/.*"}), "/v1/x"));
    assert!(!one(json!({"regex": "/v[0-9]"}), "/v1/x"), "whole path");
    assert!(
        !one(json!({"prefix": "/Health"}), "/healthz"),
        "case-sensitive"
    );
    let ci = vs(json!([
        to(
            "hit",
            json!({"match": [{"uri": {"prefix": "/Health"}, "ignoreUriCase": true}]})
        ),
        to("miss", json!({})),
    ]));
    assert_eq!(
        host_for(&ci, &req("/HEALTHZ", &[])).unwrap(),
        "hit",
        "ignoreUriCase"
    );
}

// The brief for this proxy: a match field it does not implement must never count as a match
// (routing traffic Envoy would not), and the proxy reports it met one.
#[test]
fn an_unsupported_match_field_never_matches_and_is_reported() {
    let v = vs(json!([
        to(
            "query",
            json!({"match": [{"queryParams": {"x": {"exact": "1"}}}]})
        ),
        to(
            "labels",
            json!({"match": [{"sourceLabels": {"app": "a"}}, {"uri": {"prefix": "/ok"}}]})
        ),
        to("rest", json!({})),
    ]));
    let routes = http_routes_of(&v).unwrap();
    assert_eq!(host_for(&v, &req("/?x=1", &[])).unwrap(), "rest");
    assert_eq!(
        host_for(&v, &req("/ok", &[])).unwrap(),
        "labels",
        "the other entry still ORs"
    );
    assert_eq!(
        routes.unsupported,
        [
            "http[0].match[0].queryParams",
            "http[1].match[0].sourceLabels"
        ]
    );
    for field in ["withoutHeaders", "port", "gateways"] {
        let v = vs(json!([
            to("x", json!({"match": [{field: {}}]})),
            to("rest", json!({}))
        ]));
        assert_eq!(host_for(&v, &req("/", &[])).unwrap(), "rest", "{field}");
        assert_eq!(
            http_routes_of(&v).unwrap().unsupported,
            [format!("http[0].match[0].{field}")]
        );
    }
}

/// The fault of a one-route VirtualService.
fn fault(f: Value) -> anyhow::Result<Fault> {
    let routes = http_routes_of(&vs(json!([to("a", json!({"fault": f}))])))?;
    Ok(routes.routes[0].fault.clone().unwrap())
}

// HTTPFaultInjection.Abort: "The httpStatus field is used to indicate the HTTP status code to
// return to the caller." With no percentage: "If not specified, all requests are aborted."
#[test]
fn abort_http_status_is_answered_for_every_request() {
    let f = fault(json!({"abort": {"httpStatus": 503}})).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..100 {
        let d = f.roll(&mut rng);
        assert_eq!(d.abort, Some(Abort::Http(503)));
        assert_eq!(d.delay, None);
    }
    let answer = String::from_utf8(serve::abort_answer(&Abort::Http(503))).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // Istio's validation: one of abort/delay set, a status a client can receive.
    assert!(fault(json!({})).is_err());
    assert!(fault(json!({"abort": {}})).is_err());
    assert!(fault(json!({"abort": {"httpStatus": 99}})).is_err());
    assert!(fault(json!({"abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}})).is_err());
}

// grpc/doc/statuscodes.md: the 17 codes and their numbers; CRD `grpcStatus`: "GRPC status code
// to use to abort the request" (a name). gRPC over HTTP/2 (PROTOCOL-HTTP2.md): a
// "Trailers-Only" response carries HTTP status 200, content-type application/grpc and
// grpc-status.
#[test]
fn grpc_status_names_map_to_codes_in_a_trailers_only_answer() {
    let table = [
        ("OK", 0),
        ("CANCELLED", 1),
        ("UNKNOWN", 2),
        ("INVALID_ARGUMENT", 3),
        ("DEADLINE_EXCEEDED", 4),
        ("NOT_FOUND", 5),
        ("ALREADY_EXISTS", 6),
        ("PERMISSION_DENIED", 7),
        ("RESOURCE_EXHAUSTED", 8),
        ("FAILED_PRECONDITION", 9),
        ("ABORTED", 10),
        ("OUT_OF_RANGE", 11),
        ("UNIMPLEMENTED", 12),
        ("INTERNAL", 13),
        ("UNAVAILABLE", 14),
        ("DATA_LOSS", 15),
        ("UNAUTHENTICATED", 16),
    ];
    for (name, code) in table {
        let f = fault(json!({"abort": {"grpcStatus": name}})).unwrap();
        let d = f.roll(&mut StdRng::seed_from_u64(7));
        let abort = d.abort.unwrap();
        let answer = String::from_utf8(serve::abort_answer(&abort)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{name}: {answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("\r\ncontent-type: application/grpc\r\n"),
            "{answer}"
        );
        assert!(
            lower.contains(&format!("\r\ngrpc-status: {code}\r\n")),
            "{name}: {answer}"
        );
    }
    let err = format!(
        "{:#}",
        fault(json!({"abort": {"grpcStatus": "UNAVAILABLE_"}})).unwrap_err()
    );
    assert!(
        err.contains("http[0].fault.abort.grpcStatus"),
        "names the field: {err}"
    );
}

// Istio: "percentage: Percentage of requests to be aborted with the error code provided";
// value is a double 0-100. 0 never, 100 always, 50 about half; Envoy rolls the delay and the
// abort separately, so with both at 50 about a quarter of requests get both.
#[test]
fn percentage_zero_never_hundred_always_fifty_about_half() {
    let count = |f: &Fault, seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut aborted, mut delayed, mut both) = (0, 0, 0);
        for _ in 0..2_000 {
            let d = f.roll(&mut rng);
            aborted += u32::from(d.abort.is_some());
            delayed += u32::from(d.delay.is_some());
            both += u32::from(d.abort.is_some() && d.delay.is_some());
        }
        (aborted, delayed, both)
    };
    let never = fault(json!({"abort": {"httpStatus": 503, "percentage": {"value": 0}}})).unwrap();
    assert_eq!(count(&never, 3).0, 0);
    let always =
        fault(json!({"abort": {"httpStatus": 503, "percentage": {"value": 100.0}}})).unwrap();
    assert_eq!(count(&always, 3).0, 2_000);
    let half = fault(json!({
        "abort": {"httpStatus": 503, "percentage": {"value": 50}},
        "delay": {"fixedDelay": "1ms", "percentage": {"value": 50.0}},
    }))
    .unwrap();
    for seed in [3, 11] {
        let (aborted, delayed, both) = count(&half, seed);
        // Binomial(2000, 0.5): sd 22; +-100 is 4.5 sd. Both: Binomial(2000, 0.25), sd 19.
        assert!((900..=1100).contains(&aborted), "{aborted}");
        assert!((900..=1100).contains(&delayed), "{delayed}");
        assert!((400..=600).contains(&both), "rolled independently: {both}");
    }
    assert_eq!(count(&half, 5), count(&half, 5), "a seed repeats");
    assert!(fault(json!({"abort": {"httpStatus": 503, "percentage": {"value": 100.5}}})).is_err());
    assert!(fault(json!({"abort": {"httpStatus": 503, "percentage": {"value": -1}}})).is_err());
}

// CRD delay: "fixedDelay: Add a fixed delay before forwarding the request", "must be a valid
// duration greater than 1ms".
#[test]
fn fixed_delay_parses_durations() {
    let d = |s: &str| fault(json!({"delay": {"fixedDelay": s}})).map(|f| f.delay.unwrap().0);
    assert_eq!(d("3s").unwrap(), Duration::from_secs(3));
    assert_eq!(d("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
    assert!(d("0s").is_err());
    assert!(d("soon").is_err());
    assert!(
        fault(json!({"delay": {"exponentialDelay": "1s"}})).is_err(),
        "not implemented"
    );
}

/// A one-shot upstream answering 200 "upstream" to every connection.
async fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nupstream\n")
                    .await;
            });
        }
    });
    addr
}

/// Sends `GET /` with `headers` through the proxy at `addr`; the status and the whole answer.
async fn send(addr: std::net::SocketAddr, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: web\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, text)
}

// CRD delay: "Delay requests before forwarding"; Envoy's fault filter applies the delay first,
// then the abort ("delay ... followed by abort" when both are configured).
#[tokio::test(flavor = "multi_thread")]
async fn a_delay_waits_then_forwards_or_aborts() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    let v = vs(json!([
        to(
            "web",
            json!({"match": [{"headers": {"x-both": {}}}],
            "fault": {"delay": {"fixedDelay": "400ms"}, "abort": {"httpStatus": 418}}})
        ),
        to(
            "web",
            json!({"match": [{"headers": {"x-delay": {}}}],
            "fault": {"delay": {"fixedDelay": "400ms"}}})
        ),
        to("web", json!({})),
    ]));
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let proxy = Proxy::start(
        ProxyConfig::new(path, None)
            .upstream("web", None, up)
            .fault_seed(9),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let (code, text) = send(proxy.addr(), "x-delay: 1\r\n").await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(code, 200, "{text}");
    assert!(
        text.ends_with("upstream\n"),
        "forwarded after the delay: {text}"
    );
    let t = Instant::now();
    let (code, text) = send(proxy.addr(), "x-both: 1\r\n").await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(code, 418, "{text}");
    let (code, _) = send(proxy.addr(), "").await;
    assert_eq!(code, 200);
    let stats = proxy.stats();
    assert_eq!((stats.requests, stats.delayed, stats.aborted), (3, 2, 1));
    assert!(proxy.unsupported().is_empty());
}

// CRD `method` and `authority`: "HTTP Method values are case-sensitive", "HTTP Authority
// values are case-sensitive", each exact/prefix/regex; authority is the Host header in HTTP/1.1.
#[test]
fn method_and_authority_match() {
    let v = vs(json!([
        to("post", json!({"match": [{"method": {"exact": "POST"}}]})),
        to(
            "host",
            json!({"match": [{"authority": {"prefix": "web."}}]})
        ),
        to("rest", json!({})),
    ]));
    let r = |head: &str| host_for(&v, &Request::parse_head(head)).unwrap();
    assert_eq!(r("POST / HTTP/1.1\r\nHost: x\r\n\r\n"), "post");
    assert_eq!(
        r("post / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "rest",
        "methods are case-sensitive"
    );
    assert_eq!(r("GET / HTTP/1.1\r\nHost: web.demo\r\n\r\n"), "host");
    assert_eq!(r("GET / HTTP/1.1\r\nHost: api.web.demo\r\n\r\n"), "rest");
}

// Istio's validation refuses a VirtualService with an invalid regex or fault, so Envoy never
// receives it and keeps serving its last good config; the proxy does the same and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_object_keeps_the_routes_in_force() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    let write = |v: &Value| {
        let tmp = dir.path().join("web.tmp");
        std::fs::write(&tmp, serde_json::to_string(v).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&vs(json!([to("web", json!({}))])));
    let proxy = Proxy::start(ProxyConfig::new(path.clone(), None).upstream("web", None, up))
        .await
        .unwrap();
    write(&vs(json!([
        to(
            "web",
            json!({"match": [{"headers": {"x": {"regex": "(unclosed"}}}]})
        ),
        to("web", json!({"fault": {"abort": {"httpStatus": 503}}})),
    ])));
    crate::wait_for("the refusal", Duration::from_secs(5), || {
        (!proxy.rejected().is_empty()).then_some(())
    })
    .await
    .unwrap();
    let why = proxy.rejected().join("\n");
    assert!(why.contains("http[0].match[0].headers.x.regex"), "{why}");
    assert_eq!(proxy.http_history().len(), 1, "nothing applied");
    assert_eq!(send(proxy.addr(), "").await.0, 200, "the old routes serve");
}
