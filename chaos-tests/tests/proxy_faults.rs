//! The routing proxy applies an Istio fault route the way Envoy does, end to end: a real
//! stand-in on loopback, a VirtualService whose first route is the drill's copy of the guarded
//! route (matched on `x-failoverd-drill: run-1`, `fault.abort.httpStatus: 503`) followed by
//! the guarded route. Drill traffic gets 503 from the proxy, other traffic reaches the
//! stand-in; once the fault route is removed, both reach it. Once through the file store's
//! VirtualService file, once through the Kubernetes API server emulator.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::Emulator;
use chaos_tests::proxy::{POLL_EVERY, Proxy, ProxyConfig, RouteSource};
use chaos_tests::{DEMO_VIRTUAL_SERVICE, StandIn};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRIMARY_HOST: &str = "web.demo.svc.cluster.local";
const DRILL: &str = "x-failoverd-drill: run-1\r\n";
/// Bound on the proxy picking up a change: its poll (50 ms) or a watch event, on a loaded
/// 2-core box.
const PICKUP: Duration = Duration::from_secs(5);

/// The demo VirtualService with the drill's fault route first: a copy of `primary` matched on
/// the drill header, aborting with 503.
fn with_fault_route() -> Value {
    let mut vs: Value = serde_saphyr::from_str(DEMO_VIRTUAL_SERVICE).unwrap();
    let http = vs["spec"]["http"].as_array_mut().unwrap();
    let mut fault = http
        .iter()
        .find(|r| r["name"] == "primary")
        .unwrap()
        .clone();
    fault["name"] = json!("failoverd-drill-run-1");
    fault["match"] = json!([{"headers": {"x-failoverd-drill": {"exact": "run-1"}}}]);
    fault["fault"] = json!({"abort": {"httpStatus": 503, "percentage": {"value": 100}}});
    http.insert(0, fault);
    vs
}

/// The same object with the fault route removed again.
fn without_fault_route(vs: &Value) -> Value {
    let mut vs = vs.clone();
    vs["spec"]["http"].as_array_mut().unwrap().remove(0);
    vs
}

/// `GET /` through the proxy with extra header lines; the status and body.
async fn get(proxy: SocketAddr, headers: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(proxy).await?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: web\r\n{headers}\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the proxy answers within 5 s")
        .unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

/// While the fault route is in force: drill traffic aborted by the proxy, other traffic served.
async fn fault_in_force(proxy: &Proxy) {
    for _ in 0..5 {
        let (code, body) = get(proxy.addr(), DRILL).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("fault filter abort"),
            "from the proxy: {body}"
        );
        let (code, body) = get(proxy.addr(), "").await;
        assert_eq!((code, body.as_str()), (200, "hello from primary\n"));
    }
}

/// Drives `remove` (which drops the fault route at the source), then waits until drill traffic
/// reaches the stand-in; ordinary traffic must reach it at every step meanwhile.
async fn fault_removed(proxy: &Proxy, remove: impl FnOnce()) -> Duration {
    let changed = Instant::now();
    remove();
    loop {
        let (code, body) = get(proxy.addr(), "").await;
        assert_eq!((code, body.as_str()), (200, "hello from primary\n"));
        let (code, body) = get(proxy.addr(), DRILL).await;
        if code == 200 {
            assert_eq!(body, "hello from primary\n");
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(
            changed.elapsed() < PICKUP,
            "the fault route was still applied after {PICKUP:?}"
        );
        tokio::time::sleep(POLL_EVERY / 5).await;
    }
    let took = changed.elapsed();
    for _ in 0..5 {
        assert_eq!(get(proxy.addr(), DRILL).await.0, 200);
    }
    took
}

/// What the proxy recorded: the guarded route never changed (one entry), `http[]` changed
/// once (the fault route gone), nothing unsupported or refused.
fn history_is_two_http_lists(proxy: &Proxy) {
    assert_eq!(proxy.history().len(), 1, "the guarded route never changed");
    let lists: Vec<Vec<Option<String>>> = proxy
        .http_history()
        .iter()
        .map(|(_, r)| r.routes.iter().map(|r| r.name.clone()).collect())
        .collect();
    let names = |n: &[&str]| n.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        lists,
        [
            names(&["failoverd-drill-run-1", "canary-header", "primary"]),
            names(&["canary-header", "primary"]),
        ]
    );
    assert!(proxy.unsupported().is_empty(), "{:?}", proxy.unsupported());
    assert!(proxy.rejected().is_empty(), "{:?}", proxy.rejected());
    assert_eq!(proxy.stats().unmatched, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_header_aborts_until_the_fault_route_is_removed_from_the_file() {
    let primary = StandIn::start("primary", ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    let vs = with_fault_route();
    std::fs::write(&path, serde_json::to_string_pretty(&vs).unwrap()).unwrap();
    let proxy = Proxy::start(
        ProxyConfig::new(path.clone(), Some("primary".into())).upstream(
            PRIMARY_HOST,
            Some("v1"),
            primary.addr(),
        ),
    )
    .await
    .unwrap();
    fault_in_force(&proxy).await;
    assert_eq!(proxy.stats().aborted, 5);
    let took = fault_removed(&proxy, || {
        // As the file store writes: a complete file renamed into place.
        let tmp = dir.path().join("web.yaml.tmp");
        let text = serde_json::to_string_pretty(&without_fault_route(&vs)).unwrap();
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    })
    .await;
    eprintln!("fault route removed -> drill traffic served after {took:?}");
    history_is_two_http_lists(&proxy);
    let aborted = proxy.stats().aborted;
    assert!(aborted >= 5, "{aborted}");
    for _ in 0..5 {
        assert_eq!(get(proxy.addr(), DRILL).await.0, 200);
    }
    assert_eq!(proxy.stats().aborted, aborted, "no abort once removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_header_aborts_until_the_fault_route_is_removed_in_the_api_server() {
    let primary = StandIn::start("primary", ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let emu = Emulator::start().await.unwrap();
    emu.seed(with_fault_route()).unwrap();
    let proxy = Proxy::start(
        ProxyConfig::with_source(
            RouteSource::emulator(&emu, "demo", "web"),
            Some("primary".into()),
        )
        .upstream(PRIMARY_HOST, Some("v1"), primary.addr()),
    )
    .await
    .unwrap();
    fault_in_force(&proxy).await;
    let took = fault_removed(&proxy, || {
        emu.mutate("VirtualService", "demo", "web", |o| {
            o["spec"]["http"].as_array_mut().unwrap().remove(0);
        })
        .unwrap();
    })
    .await;
    eprintln!("fault route removed -> drill traffic served after {took:?}");
    history_is_two_http_lists(&proxy);
}
