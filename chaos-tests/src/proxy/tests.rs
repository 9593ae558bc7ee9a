#![allow(clippy::unwrap_used)]
use super::*;

fn d(host: &str, weight: u32) -> Destination {
    Destination {
        host: host.into(),
        subset: None,
        weight,
    }
}

#[test]
fn pick_follows_weights() {
    let dests = [d("a", 10), d("b", 90)];
    let mut counts = [0u32; 2];
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..10_000 {
        x = xorshift(x);
        let p = pick(&dests, x).unwrap();
        counts[usize::from(p.host == "b")] += 1;
    }
    assert!((800..1200).contains(&counts[0]), "{counts:?}");
    assert_eq!(pick(&[d("a", 0)], 7), None, "no weight: no destination");
    assert_eq!(pick(&[], 7), None);
}

#[test]
fn reads_the_named_route_of_the_demo_virtual_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, crate::DEMO_VIRTUAL_SERVICE).unwrap();
    let primary = read_route(&path, Some("primary")).unwrap();
    assert_eq!(
        primary,
        vec![Destination {
            host: "web.demo.svc.cluster.local".into(),
            subset: Some("v1".into()),
            weight: 100
        }]
    );
    let first = read_route(&path, None).unwrap();
    assert_eq!(first[0].subset.as_deref(), Some("v2"), "the canary route");
    let err = format!("{:#}", read_route(&path, Some("nope")).unwrap_err());
    assert!(err.contains("no http route"), "{err}");
    assert!(err.contains("web.yaml"), "the error names the file: {err}");
}

#[test]
fn route_of_reads_a_json_object_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, crate::DEMO_VIRTUAL_SERVICE).unwrap();
    let vs: Value = serde_saphyr::from_str(crate::DEMO_VIRTUAL_SERVICE).unwrap();
    let json: Value = serde_json::from_str(&vs.to_string()).unwrap();
    for route in [None, Some("primary")] {
        assert_eq!(
            route_of(&json, route).unwrap(),
            read_route(&path, route).unwrap()
        );
    }
    let mut split = json.clone();
    split["spec"]["http"][1]["route"] = serde_json::json!([
        {"destination": {"host": "a", "subset": "v1"}, "weight": 30},
        {"destination": {"host": "b"}},
    ]);
    assert_eq!(
        route_of(&split, Some("primary")).unwrap(),
        vec![
            Destination {
                host: "a".into(),
                subset: Some("v1".into()),
                weight: 30
            },
            d("b", 0)
        ],
        "a missing weight is 0 when there are several destinations"
    );
    assert!(route_of(&serde_json::json!({"spec": {}}), None).is_err());
}

/// The proxy follows a VirtualService in the emulator through list + watch, applies a
/// change after the push delay, and keeps following across an API server restart (the
/// watch breaks; the re-list picks up the change made while it was down).
#[tokio::test(flavor = "multi_thread")]
async fn follows_the_emulator_through_watch_and_relist() {
    use crate::kube_emulator::Emulator;
    let emu = Emulator::start().await.unwrap();
    let vs: Value = serde_saphyr::from_str(crate::DEMO_VIRTUAL_SERVICE).unwrap();
    emu.seed(vs).unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = ProxyConfig::with_source(
        RouteSource::emulator(&emu, "demo", "web"),
        Some("primary".into()),
    )
    .upstream("web.demo.svc.cluster.local", Some("v1"), up);
    cfg.push_delay = Duration::from_millis(300);
    let proxy = Proxy::start(cfg).await.unwrap();
    assert_eq!(proxy.current()[0].subset.as_deref(), Some("v1"));
    let set_host = |host: &'static str| {
        emu.mutate("VirtualService", "demo", "web", move |o| {
            o["spec"]["http"][1]["route"] =
                serde_json::json!([{"destination": {"host": host}, "weight": 100}]);
        })
        .unwrap();
    };
    let wait_host = |host: &'static str| {
        crate::wait_for(host, Duration::from_secs(10), || {
            (proxy.current() == vec![d(host, 100)]).then_some(())
        })
    };
    let changed = std::time::Instant::now();
    set_host("dr");
    wait_host("dr").await.unwrap();
    assert!(
        changed.elapsed() >= Duration::from_millis(300),
        "applied after the push delay"
    );
    // A change that leaves the route alone is not a new route.
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["metadata"]["labels"]["team"] = serde_json::json!("web");
    })
    .unwrap();
    emu.unavailable_for(Duration::from_millis(500));
    set_host("third");
    wait_host("third").await.unwrap();
    let hosts: Vec<String> = proxy
        .history()
        .iter()
        .map(|(_, r)| r[0].host.clone())
        .collect();
    assert_eq!(
        hosts,
        ["web.demo.svc.cluster.local", "dr", "third"],
        "each route once, in order"
    );
}
