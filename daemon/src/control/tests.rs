#![allow(clippy::unwrap_used)]
use jiff::Timestamp;
use serde_json::json;

use super::*;

fn intent(to: Value) -> Record {
    Record {
        trace_id: None,
        seq: 7,
        time: Timestamp::UNIX_EPOCH,
        prev: crate::audit::GENESIS.into(),
        actor: "engine".into(),
        action: "failover".into(),
        playbook: "web".into(),
        reason: "primary down".into(),
        inputs: json!({ "from": { "to": "primary" }, "to": to, "forced": false }),
        before: Value::Null,
        after: Value::Null,
        outcome: "intent".into(),
    }
}

fn view(routing: Routing) -> crate::routing::RouteView {
    crate::routing::RouteView {
        routing,
        route: json!([{ "destination": { "host": "dr" }, "weight": 100 }]),
        last_move: None,
        drift: None,
    }
}

/// A store whose writes take a set time per playbook and log when each starts and ends.
#[derive(Debug, Default)]
struct SlowStore {
    delays: std::collections::HashMap<String, Duration>,
    log: Mutex<Vec<String>>,
}

impl RoutingStore for SlowStore {
    fn read<'a>(
        &'a self,
        _pb: &'a Playbook,
    ) -> crate::routing::StoreFuture<'a, crate::routing::RouteView> {
        Box::pin(async { Ok(view(Routing::Primary)) })
    }

    fn write<'a>(
        &'a self,
        pb: &'a Playbook,
        _to: Routing,
        _stamp: crate::routing::Stamp,
    ) -> crate::routing::StoreFuture<'a, crate::routing::WriteOutcome> {
        Box::pin(async move {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", pb.name()));
            if let Some(d) = self.delays.get(pb.name()) {
                tokio::time::sleep(*d).await;
            }
            self.log.lock().unwrap().push(format!("end {}", pb.name()));
            Ok(crate::routing::WriteOutcome {
                before: json!([{ "destination": { "host": "primary" } }]),
                after: json!([{ "destination": { "host": "dr" } }]),
                changed: true,
            })
        })
    }

    fn describe(&self) -> String {
        "slow".into()
    }
}

/// The demo playbook renamed `name`, routing VirtualService `demo/<object>`.
fn playbook(name: &str, object: &str) -> Loaded {
    let text = crate::demo::PLAYBOOK
        .replacen("name: demo", &format!("name: {name}"), 1)
        .replacen(
            "virtualService: { namespace: demo, name: web }",
            &format!("virtualService: {{ namespace: demo, name: {object} }}"),
            1,
        );
    let playbook = crate::playbook::parse("test.yaml", &text).unwrap();
    assert_eq!(playbook.name(), name);
    assert_eq!(playbook.spec.virtual_service.name, object);
    Loaded {
        file: "test.yaml".into(),
        playbook,
    }
}

fn failover_job(idx: usize, pb: &Arc<Playbook>) -> Job {
    let to = Routing::Failover { target: 0 };
    Job::Write(Box::new(WriteJob {
        idx,
        pb: pb.clone(),
        from: Routing::Primary,
        to,
        kind: MoveKind::Failover,
        reason: "primary down".into(),
        forced: false,
        actor: None,
        break_glass: None,
        inputs: Value::Null,
        next: State::resume(to, Timestamp::UNIX_EPOCH),
        span: tracing::Span::none(),
    }))
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    shared: Arc<Shared>,
    store: Arc<SlowStore>,
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    writer: tokio::task::JoinHandle<()>,
}

fn rig(playbooks: &[Loaded], delays: &[(&str, Duration)]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(Mutex::new(AuditLog::open(&path).unwrap()));
    let shared = Arc::new(Shared::new(playbooks));
    let store = Arc::new(SlowStore {
        delays: delays.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
        log: Mutex::default(),
    });
    let (jobs, job_rx) = mpsc::channel(16);
    let (done_tx, done) = mpsc::channel(16);
    let writer = tokio::spawn(writer(store.clone(), log, job_rx, done_tx, shared.clone()));
    Rig {
        _dir: dir,
        path,
        shared,
        store,
        jobs,
        done,
        writer,
    }
}

/// Checks every outcome names an earlier intent of its playbook, once.
fn outcomes_name_their_intents(records: &[Record]) {
    let mut open = std::collections::HashMap::new();
    for r in records {
        if r.outcome == "intent" {
            open.insert(r.seq, r.playbook.clone());
        } else {
            let seq = r.inputs["intentSeq"].as_u64().unwrap();
            assert_eq!(open.remove(&seq), Some(r.playbook.clone()), "{r:?}");
        }
    }
    assert!(open.is_empty(), "intents without outcome: {open:?}");
}

/// Ensures a write still running when WRITE_TIMEOUT passes is not abandoned: the status
/// says it is in flight, and once it ends the audit holds its real outcome (`written`,
/// naming its intent), no `failed`.
#[tokio::test(start_paused = true)]
async fn a_write_past_the_timeout_is_recorded_with_its_real_outcome() {
    let pbs = [playbook("slow", "web")];
    let mut r = rig(&pbs, &[("slow", WRITE_TIMEOUT + Duration::from_secs(2))]);
    r.jobs
        .send(failover_job(0, &r.shared.playbooks[0]))
        .await
        .unwrap();
    tokio::time::sleep(WRITE_TIMEOUT + Duration::from_secs(1)).await;
    let error = r.shared.snapshot()[0].error.clone().unwrap_or_default();
    assert!(error.starts_with("write in flight for 10s"), "{error}");
    assert!(r.done.try_recv().is_err(), "reported before it ended");
    let done = r.done.recv().await.unwrap();
    assert_eq!((done.result, done.label), (Ok(()), "ok"));
    drop(r.jobs);
    r.writer.await.unwrap();
    let records = crate::audit::read_all(&r.path).unwrap();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["intent", "written"]);
    outcomes_name_their_intents(&records);
}

/// Ensures lanes: a write to another object goes ahead while one object's write is
/// stalled, and a second write to the stalled object starts only after the first ends.
#[tokio::test(start_paused = true)]
async fn one_object_stalled_delays_only_its_own_later_writes() {
    let pbs = [
        playbook("a1", "web-a"),
        playbook("b", "web-b"),
        playbook("a2", "web-a"),
    ];
    let stall = Duration::from_secs(60);
    let mut r = rig(&pbs, &[("a1", stall)]);
    let started = Instant::now();
    for (i, pb) in r.shared.playbooks.clone().iter().enumerate() {
        r.jobs.send(failover_job(i, pb)).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = r.done.recv().await.unwrap();
        order.push((d.job.pb.name().to_string(), started.elapsed()));
    }
    assert_eq!(order[0].0, "b");
    assert!(order[0].1 < Duration::from_secs(1), "{order:?}");
    assert_eq!(
        order.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["b", "a1", "a2"]
    );
    let log = r.store.log.lock().unwrap().clone();
    let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
    assert!(pos("end b") < pos("end a1"), "{log:?}");
    assert!(pos("end a1") < pos("start a2"), "{log:?}");
    drop(r.jobs);
    r.writer.await.unwrap();
    outcomes_name_their_intents(&crate::audit::read_all(&r.path).unwrap());
}

/// Ensures an intent without an outcome is closed as `written` when the store holds the
/// intended route and as `failed: not written` when it holds another, naming both, under
/// the intent's own action and playbook (so the audit scan sees it closed).
#[test]
fn intent_is_resolved_from_the_store() {
    let to = json!({ "to": "failover", "target": 0 });
    let failed_over = view(Routing::Failover { target: 0 });
    let e = resolve_intent(&intent(to.clone()), &failed_over);
    assert_eq!(
        (e.action.as_str(), e.playbook.as_str(), e.outcome.as_str()),
        ("failover", "web", "written")
    );
    assert!(
        e.reason.starts_with("recovered at start: intent seq 7"),
        "{}",
        e.reason
    );
    assert_eq!(e.inputs["intentSeq"], 7);
    assert_eq!(e.after, failed_over.route);

    let e = resolve_intent(&intent(to), &view(Routing::Primary));
    assert_eq!(
        e.outcome,
        "failed: not written (recovered at start: the store holds primary (original route), not the intended failover[0] 100%)"
    );

    let e = resolve_intent(&intent(Value::Null), &view(Routing::Primary));
    assert!(e.outcome.starts_with("failed: unknown"), "{}", e.outcome);
}
