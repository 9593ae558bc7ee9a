//! Fault drills (`spec.inject`) on the `kubernetes` store: the real `failoverd` binary with
//! `--store kubernetes` against the API server emulator (`chaos_tests::kube_emulator`), the
//! primary's probes going through the routing proxy (`chaos_tests::proxy`), which lists and
//! watches the emulator's VirtualService the way istiod does and applies its fault routes
//! the way Envoy does. The set-up is `support/fault_drill.rs`'s, on the emulator.
//!
//! Must hold (issue 17): a `scope: probes` drill passes; the fault route is in the API
//! server's object while it runs (read from the emulator's store, not through failoverd);
//! the proxy aborts the drill's traffic and no user request; after the run the
//! VirtualService's `spec` equals the original; `drill-fault-written` and
//! `drill-fault-removed` are each an intent then a `written` outcome naming it; the audit
//! log verifies. At the resourceVersion seam (another client updating the object between
//! failoverd's read and its write, and while the fault is in place) the fault is still
//! written and removed, the other client's changes are kept and nothing is half-written.
#![allow(clippy::unwrap_used)]

#[path = "support/fault_drill.rs"]
mod fault_drill;
#[path = "support/user_load.rs"]
mod user_load;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::kube_emulator::{COMPETING_WRITER, Emulator, WriteRecord};
use chaos_tests::{DR_HOST, wait_for};
use serde_json::{Value, json};

use fault_drill::{Setup, WAIT, fault_routes_in, verdict};
use user_load::user_load;

const PROBES_DRILL: &str = "  mode: live\n  hold: 2s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";
/// [`PROBES_DRILL`] with a 10 s hold: the other client arms its updates once the failover is
/// seen, and must be armed before the removal's read even when the test task is late on a
/// loaded 2-core box.
const SEAM_DRILL: &str = "  mode: live\n  hold: 10s\n  success: { failoverWithin: 2s }\n  inject: { abort: { httpStatus: 503 } }\n";

/// The hosts the guarded route (`primary`) sends to, read from the object itself.
fn primary_hosts(vs: &Value) -> Vec<String> {
    vs["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == "primary")
        .flat_map(|r| r["route"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["destination"]["host"].as_str().map(String::from))
        .collect()
}

/// `action`'s records are exactly an intent then a `written` outcome naming it
/// (`inputs.intentSeq`), both by `actor`.
fn assert_intent_then_written(recs: &[Value], action: &str, actor: &str) {
    let mine: Vec<&Value> = recs.iter().filter(|r| r["action"] == action).collect();
    let outcomes: Vec<&str> = mine
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["intent", "written"], "{action}: {mine:#?}");
    assert_eq!(mine[1]["inputs"]["intentSeq"], mine[0]["seq"], "{mine:#?}");
    assert!(mine[0]["seq"].as_u64() < mine[1]["seq"].as_u64());
    for r in &mine {
        assert_eq!(r["actor"], actor, "{r:#}");
    }
}

/// failoverd's writes to the VirtualService (not the other client's).
fn failoverd_vs_writes(emu: &Emulator) -> Vec<WriteRecord> {
    emu.writes()
        .into_iter()
        .filter(|w| w.kind == "VirtualService" && w.identity != COMPETING_WRITER)
        .collect()
}

/// The request body of a write, parsed.
fn body(w: &WriteRecord) -> Value {
    serde_json::from_str(&w.body).unwrap_or(Value::Null)
}

/// Every `http[]` the router saw: the original's, or the original's with one complete drill
/// route in front (name, the header match, the abort) — never a part of one.
fn assert_never_half_written(setup: &Setup, original: &Value) {
    let names = |v: &Value| -> Vec<String> {
        v["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let base = names(original);
    let seen = setup.router.http_history();
    assert!(seen.len() >= 2, "the router saw no fault route: {seen:?}");
    for (_, routes) in &seen {
        let got: Vec<String> = routes
            .routes
            .iter()
            .map(|r| r.name.clone().unwrap_or_default())
            .collect();
        let whole = got == base
            || (got.len() == base.len() + 1
                && got[0].starts_with("failoverd-drill-")
                && got[1..] == base[..]);
        assert!(whole, "the router saw {got:?}");
    }
    assert!(
        setup.router.unsupported().is_empty() && setup.router.rejected().is_empty(),
        "the proxy could not honour: {:?}; refused: {:?}",
        setup.router.unsupported(),
        setup.router.rejected()
    );
}

/// A drill route as the README describes it, first in `http[]`: a copy of the guarded route
/// as it stood in `original` (the primary's), matched on the drill header with the run id,
/// aborting with 503.
fn assert_fault_route(vs: &Value, original: &Value, id: &str) {
    let http = vs["spec"]["http"].as_array().unwrap();
    let route = &http[0];
    assert_eq!(route["name"], format!("failoverd-drill-{id}"), "{vs:#}");
    assert_eq!(
        route["match"],
        json!([{ "headers": { "x-failoverd-drill": { "exact": id } } }]),
        "{route:#}"
    );
    assert_eq!(route["fault"]["abort"]["httpStatus"], 503, "{route:#}");
    let guarded = original["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "primary")
        .unwrap();
    assert_eq!(route["route"], guarded["route"], "{route:#}");
}

/// A `scope: probes` drill on the kubernetes store passes; the fault route is in the API
/// server's object during the run and gone after, the object's `spec` exactly the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_scope_drill_on_the_kubernetes_store() {
    let setup = Setup::new_kube(&[("fault", PROBES_DRILL)]).await;
    let emu = setup.emu.clone().unwrap();
    let original = setup.vs();
    let d = setup.spawn("kube-fault").await;
    let (stop, users) = user_load(setup.router.addr(), 5_000);
    let id = setup.start(&d, "fault");
    let with_fault = wait_for("the fault route in the emulator's object", WAIT, || {
        let v = setup.vs();
        (!fault_routes_in(&v).is_empty()).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_fault_route(&with_fault, &original, &id);
    let report = verdict(d.addr, "fault", &id).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = users.await.unwrap();
    assert_eq!(report["result"], "passed", "{report:#}\n{}", d.logs());
    assert!(sent >= 20, "the user loop ran only {sent} requests");
    assert!(errors.is_empty(), "users saw errors: {errors:?}");
    assert!(
        setup.router.stats().aborted > 0,
        "the proxy aborted no request: the drill traffic never met the fault"
    );
    assert_never_half_written(&setup, &original);
    // `spec` exactly. Metadata too, but for what the API server owns and bumps on every
    // update (resourceVersion, generation): failoverd's state annotation is gone after the
    // failback, so labels, annotations, uid and the rest are the original's.
    let after = setup.vs();
    assert_eq!(after["spec"], original["spec"], "{after:#}");
    let server_owned = |v: &Value| {
        let mut m = v["metadata"].clone();
        for k in ["resourceVersion", "generation"] {
            m.as_object_mut().unwrap().remove(k);
        }
        m
    };
    assert_eq!(server_owned(&after), server_owned(&original), "{after:#}");
    assert_ne!(
        after["metadata"]["resourceVersion"],
        original["metadata"]["resourceVersion"]
    );
    assert!(fault_routes_in(&after).is_empty());
    assert_eq!(primary_hosts(&after), ["web.demo.svc.cluster.local"]);
    // Nothing failoverd sent was refused: four updates (fault, failover, removal, failback).
    let writes = failoverd_vs_writes(&emu);
    assert!(
        writes.iter().all(|w| w.status == 200),
        "{:?}",
        writes.iter().map(|w| w.status).collect::<Vec<_>>()
    );
    assert_eq!(writes.len(), 4, "{writes:#?}");
    let recs = chaos_tests::json_lines(&setup.s.paths.audit);
    assert_intent_then_written(&recs, "drill-fault-written", "drill:fault");
    assert_intent_then_written(&recs, "drill-fault-removed", "drill:fault");
    chaos_tests::assert_audit_verifies(&setup.s.paths.audit);
}

/// How many competing updates are kept armed. Each one fired is a watch event on which
/// failoverd reads the object again, which fires the next: a chain of reads (about one each
/// 50 ms here) runs while this task re-arms, and a removal reads twice (is there a fault?
/// then the write's own read). With one armed, a write's read found none often enough on a
/// loaded box to miss the seam; each left over after the conflict costs the retried write
/// at most one more 409 (50, 100, 200, 400 ms of backoff inside the store's 8 s budget).
const ARMED: u64 = 4;

/// Another client that updates the VirtualService right after each of failoverd's reads, so
/// failoverd's next update carries a stale resourceVersion (the emulator answers 409): it
/// keeps [`ARMED`] such updates armed (each sets the label `other-client` to the next count of
/// `n`) until failoverd has had an update matching `target` refused with 409. Bounded by
/// [`WAIT`]; returns the refused write.
async fn compete_until_conflict(
    emu: &Emulator,
    n: &Arc<AtomicU64>,
    what: &str,
    target: impl Fn(&Value) -> bool,
) -> WriteRecord {
    let start = Instant::now();
    let mut armed = n.load(Ordering::SeqCst);
    loop {
        if let Some(w) = failoverd_vs_writes(emu)
            .into_iter()
            .find(|w| w.status == 409 && target(&body(w)))
        {
            return w;
        }
        assert!(
            start.elapsed() < WAIT,
            "no 409 on {what} after {WAIT:?} ({} armed, {} fired; GETs {:?}): {:?}",
            armed,
            n.load(Ordering::SeqCst),
            emu.reads()
                .iter()
                .filter(|r| r.kind == "VirtualService" && r.verb == "get")
                .map(|r| r.time.elapsed().unwrap_or_default())
                .collect::<Vec<_>>(),
            failoverd_vs_writes(emu)
                .iter()
                .map(|w| (
                    w.time.elapsed().unwrap_or_default(),
                    w.status,
                    fault_routes_in(&body(w)),
                    primary_hosts(&body(w))
                ))
                .collect::<Vec<_>>()
        );
        while armed < n.load(Ordering::SeqCst) + ARMED {
            armed += 1;
            let n = n.clone();
            emu.after_next_get("VirtualService", "demo", "web", move |o| {
                let count = n.fetch_add(1, Ordering::SeqCst) + 1;
                o["metadata"]["labels"]["other-client"] = json!(count.to_string());
            })
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The resourceVersion seam: another client updates the VirtualService between failoverd's
/// read and its fault write, again between its read and the fault's removal, and once
/// (an annotation) while the fault is in place. Each refused update is read again and sent
/// again: the fault is written and removed, the run passes, the other client's label and
/// annotation are kept, and no version of the object holds part of a fault route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_updating_the_virtual_service_loses_nothing() {
    let setup = Setup::new_kube(&[("fault", SEAM_DRILL)]).await;
    let emu = setup.emu.clone().unwrap();
    let original = setup.vs();
    let d = setup.spawn("kube-fault-seam").await;
    let n = Arc::new(AtomicU64::new(0));
    // Between the read and the fault write: armed before the run starts, so the write's own
    // read is followed by the other client's update whatever reads come first.
    let compete = {
        let (emu, n) = (emu.clone(), n.clone());
        tokio::spawn(async move {
            compete_until_conflict(&emu, &n, "the fault write", |b| {
                !fault_routes_in(b).is_empty()
            })
            .await
        })
    };
    let id = setup.start(&d, "fault");
    let refused = compete.await.unwrap();
    assert!(refused.resource_version.is_none(), "{refused:?}");
    wait_for("the fault route in the emulator's object", WAIT, || {
        (!setup.fault_routes().is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_fault_route(&setup.vs(), &original, &id);
    // While the fault is in place: an unrelated annotation.
    emu.mutate("VirtualService", "demo", "web", |o| {
        o["metadata"]["annotations"]["other-client/ticket"] = json!("CHG-42");
    })
    .unwrap();
    // Between the read and the removal: once the failover is in the object, until the update
    // that takes the fault out (no drill route, the guarded route still on DR) is refused.
    wait_for("the failover in the emulator's object", WAIT, || {
        (primary_hosts(&setup.vs()) == [DR_HOST]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    compete_until_conflict(&emu, &n, "the fault removal", |b| {
        fault_routes_in(b).is_empty() && primary_hosts(b) == [DR_HOST]
    })
    .await;
    let report = verdict(d.addr, "fault", &id).await;
    assert_eq!(report["result"], "passed", "{report:#}\n{}", d.logs());
    // Updates still armed may fire on failoverd's later reads (its sweep): the label read
    // must be the other client's latest, counted on both sides of the read.
    let n_before = n.load(Ordering::SeqCst);
    let after = setup.vs();
    let n_after = n.load(Ordering::SeqCst);
    assert_eq!(after["spec"], original["spec"], "{after:#}");
    assert!(n_before >= 2);
    let label: u64 = after["metadata"]["labels"]["other-client"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (n_before..=n_after).contains(&label),
        "the other client's last label ({n_before}..={n_after}) was overwritten: {after:#}"
    );
    assert_eq!(after["metadata"]["labels"]["app"], "web");
    assert_eq!(
        after["metadata"]["annotations"]["other-client/ticket"], "CHG-42",
        "{after:#}"
    );
    assert_eq!(after["metadata"]["annotations"]["owner"], "platform-team");
    assert_never_half_written(&setup, &original);
    // Every update failoverd got through was whole: a complete drill route or none, the
    // guarded route on one side.
    let writes = failoverd_vs_writes(&emu);
    for w in writes.iter().filter(|w| w.status == 200) {
        let b = body(w);
        if !fault_routes_in(&b).is_empty() {
            assert_fault_route(&b, &original, &id);
        }
        assert!(
            primary_hosts(&b) == [DR_HOST] || primary_hosts(&b) == ["web.demo.svc.cluster.local"],
            "{b:#}"
        );
    }
    assert!(
        writes.iter().all(|w| w.status == 200 || w.status == 409),
        "{:?}",
        writes.iter().map(|w| w.status).collect::<Vec<_>>()
    );
    eprintln!(
        "failoverd's updates: {:?}; the other client's: {}",
        writes.iter().map(|w| w.status).collect::<Vec<_>>(),
        n.load(Ordering::SeqCst)
    );
    let recs = chaos_tests::json_lines(&setup.s.paths.audit);
    assert_intent_then_written(&recs, "drill-fault-written", "drill:fault");
    assert_intent_then_written(&recs, "drill-fault-removed", "drill:fault");
    chaos_tests::assert_audit_verifies(&setup.s.paths.audit);
}
