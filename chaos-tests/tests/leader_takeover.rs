#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a new leader takes over: a freeze made on the old one, a drill left in flight, and
//! every acknowledged override through twenty leader kills (SIGKILL 0-150 ms after the
//! acknowledgement). The replicas and the emulator: `support::leader`.

use std::time::{Duration, SystemTime};

use chaos_tests::{Scenario, wait_for};
use failoverd::audit;
use serde_json::Value;

mod support;

use support::leader::{
    Replica, SEC, assert_one_audit_chain, checkpoint_key, cluster, failed_over, kept_overrides,
    listed_overrides, pair, request, takeovers, vs_writes,
};

/// Ensures an operator freeze made through the old leader holds on the new one: the leader
/// keeps overrides in the cluster, the standby adopts them on takeover (audited), so a primary
/// failing right after the takeover is not failed over behind the operator's back.
#[tokio::test]
async fn a_freeze_made_on_the_old_leader_holds_on_the_new_one() {
    let emu = cluster().await;
    let mut sc = Scenario::new(&[]).await.unwrap();
    let (mut a, b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/playbooks/demo/freeze",
        Some(r#"{"reason":"maintenance on the DR site","ttl":"1h"}"#),
    )
    .await
    .unwrap();
    assert!((200..300).contains(&code), "{code} {text}\n{}", a.logs());
    // Acknowledged only once the cluster holds it: no waiting here.
    assert!(
        kept_overrides(&emu).is_some_and(|s| s.contains("maintenance on the DR site")),
        "acknowledged, but not kept in the cluster: {:?}\n{}",
        kept_overrides(&emu),
        a.logs()
    );
    a.kill();
    b.wait_leader(1, 20 * SEC).await;
    let takeover = wait_for("the takeover audited", 10 * SEC, || {
        audit::read_all(&b.audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "takeover")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert!(
        takeover.outcome.starts_with("adopted 1 override"),
        "{takeover:?}"
    );
    // The primary fails after the takeover: frozen, so nothing moves.
    sc.primary.stop();
    tokio::time::sleep(6 * SEC).await;
    assert!(!failed_over(&emu), "moved while frozen\n{}", b.logs());
    assert!(vs_writes(&emu).is_empty());
}

/// Ensures a live drill whose leader dies mid-hold is ended by the new leader: the drill's
/// hold comes over with the other overrides, and once the routes are read again the new
/// leader fails back as the drill would have (the drill runner died with the old leader; the
/// hold's TTL alone would keep users on the failover target for hold + budgets + 5 min).
#[tokio::test]
async fn a_drill_in_flight_on_a_dead_leader_is_failed_back_by_the_new_one() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let drills = sc.paths.playbooks.join("drills");
    std::fs::create_dir_all(&drills).unwrap();
    std::fs::write(
        drills.join("long-hold.yaml"),
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: long-hold }\n\
         spec:\n  playbooks: [ demo ]\n  mode: live\n  hold: 10m\n",
    )
    .unwrap();
    let (mut a, b) = pair(&sc, &emu).await;
    b.wait_leader(0, 10 * SEC).await;
    let (code, text) = request(
        a.addr,
        "POST",
        "/v1/drills/long-hold/run",
        Some(r#"{"reason":"quarterly DR drill"}"#),
    )
    .await
    .unwrap();
    assert!((200..300).contains(&code), "{code} {text}\n{}", a.logs());
    wait_for("the drill's failover", 20 * SEC, || {
        failed_over(&emu).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    // The hold must have reached the cluster before the leader dies.
    wait_for("the drill's hold kept in the cluster", 10 * SEC, || {
        kept_overrides(&emu).filter(|s| s.contains("drill:long-hold"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.logs()));
    let killed = SystemTime::now();
    a.kill();
    b.wait_leader(1, 20 * SEC).await;
    wait_for("the failback by the new leader", 20 * SEC, || {
        (!failed_over(&emu)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    // The route lands in the cluster a moment before its `written` record.
    let failback = wait_for("the failback audited by replica-b", 10 * SEC, || {
        audit::read_all(&b.audit)
            .ok()?
            .into_iter()
            .find(|r| r.action == "operator-failback" && r.outcome == "written")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert_eq!(failback.actor, "drill:long-hold", "{failback:?}");
    assert!(failback.reason.contains("previous leader"), "{failback:?}");
    // The hold is gone, also from the set kept in the cluster for the next leader (removed
    // there before the failback was written).
    let kept = kept_overrides(&emu).unwrap_or_default();
    assert!(!kept.contains("drill:long-hold"), "{kept}\n{}", b.logs());
    // Two writers, one after the other: the drill's failover by the old leader while it
    // lived, the failback by the new one after the kill.
    let writes = vs_writes(&emu);
    let who: Vec<&str> = writes.iter().map(|w| w.identity.as_str()).collect();
    assert_eq!(who, ["replica-a", "replica-b"], "{writes:?}");
    assert!(
        writes[0].time < killed && writes[1].time > killed,
        "{writes:?}"
    );
}

/// Ensures no acknowledged override is lost and no deleted one comes back across leader
/// deaths: 20 rounds of one operator call on the leader (a freeze, a failover hold or the
/// deletion of a live override), SIGKILL of the leader 0–150 ms after the 200, then the new
/// leader must list exactly the overrides acknowledged so far. The killed replica comes back
/// as the standby with its own (stale) state file, which is what a deleted override could
/// return from.
///
/// The audit trail across the same deaths: every fourth killed replica comes back on an
/// empty audit volume, and at the end every replica's file and the cluster's chain must be
/// one chain (checked by hashing here), with a `written` record for every VirtualService
/// update the API server took.
#[tokio::test]
async fn acknowledged_overrides_survive_twenty_leader_kills() {
    let emu = cluster().await;
    let sc = Scenario::new(&[]).await.unwrap();
    let (a, b) = pair(&sc, &emu).await;
    let mut replicas = [a, b];
    let mut leader = 0;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // The acknowledged overrides by id (and kind), and the ids deleted or replaced.
    let mut live: std::collections::BTreeMap<String, &str> = Default::default();
    let mut gone: std::collections::BTreeSet<String> = Default::default();
    let mut acknowledged = 0;
    for round in 0..20 {
        let l = &replicas[leader];
        let op = if live.is_empty() { next(2) } else { next(3) };
        let (method, path, body, kind) = match op {
            0 => (
                "POST",
                "/v1/playbooks/demo/freeze".to_string(),
                format!(r#"{{"reason":"round {round}: freeze","ttl":"1h"}}"#),
                "freeze",
            ),
            1 => (
                "POST",
                "/v1/playbooks/demo/failover".to_string(),
                format!(r#"{{"reason":"round {round}: failover","ttl":"1h"}}"#),
                "failover",
            ),
            _ => {
                let ids: Vec<&String> = live.keys().collect();
                let id = ids[next(ids.len() as u64) as usize].clone();
                (
                    "DELETE",
                    format!("/v1/overrides/{id}"),
                    format!(r#"{{"reason":"round {round}: delete"}}"#),
                    "delete",
                )
            }
        };
        let (code, text) = request(l.addr, method, &path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", l.logs()));
        match code {
            200 => {
                acknowledged += 1;
                let v: Value = serde_json::from_str(&text).unwrap();
                if kind == "delete" {
                    let id = path.rsplit('/').next().unwrap().to_string();
                    live.remove(&id);
                    gone.insert(id);
                } else {
                    // A new freeze or hold replaces the playbook's earlier one of its kind.
                    let replaced: Vec<String> = live
                        .iter()
                        .filter(|(_, k)| **k == kind)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in replaced {
                        live.remove(&id);
                        gone.insert(id);
                    }
                    let id = v["overrideId"].as_str().unwrap().to_string();
                    live.insert(id, kind);
                }
            }
            // Refused by a rule (e.g. a failover while the DR target is not known healthy
            // yet): nothing was acknowledged, nothing may appear.
            409 => {}
            _ => panic!(
                "round {round}: {method} {path}: {code} {text}\n{}",
                l.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(next(150))).await;
        let standby = 1 - leader;
        let before = takeovers(&replicas[standby]);
        replicas[leader].kill();
        replicas[standby].wait_leader(1, 20 * SEC).await;
        wait_for("the takeover audited", 10 * SEC, || {
            (takeovers(&replicas[standby]) > before).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", replicas[standby].logs()));
        let listed = listed_overrides(&replicas[standby]).await;
        let want: std::collections::BTreeSet<String> = live.keys().cloned().collect();
        assert_eq!(
            listed,
            want,
            "round {round}: the new leader's overrides differ from the acknowledged ones \
             (deleted or replaced so far: {gone:?})\n{}",
            replicas[standby].logs()
        );
        assert!(listed.is_disjoint(&gone));
        // The killed replica comes back as the standby, with its stale state file; every
        // fourth time on an empty audit volume, which it must fill from the cluster.
        let name = replicas[leader].name;
        if round % 4 == 1 {
            std::fs::remove_file(&replicas[leader].audit).unwrap();
        }
        replicas[leader] = Replica::spawn(&sc, &emu, name);
        replicas[leader].wait_ready().await;
        leader = standby;
    }
    assert!(
        acknowledged >= 10,
        "only {acknowledged} of 20 calls acknowledged"
    );
    assert_one_audit_chain(&emu, &replicas, &checkpoint_key(&sc)).await;
}
