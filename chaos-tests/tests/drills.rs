//! Chaos drills against the real `failoverd` binary, the file store and stand-in services:
//! a live drill passes and restores the exact route; a drill aborts (and restores) when the
//! failover target dies during the hold; a drill is refused on a playbook failed over for
//! real; plan mode writes nothing and a blocked date skips a scheduled run; SIGKILL during
//! the hold is rolled back when failoverd starts again; an error-budget floor read from a
//! real Prometheus aborts a drill in its hold and refuses the next one.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chaos_tests::prometheus::ratio_expr;
use chaos_tests::{
    Daemon, Prometheus, Scenario, assert_events_in_order, drill_events, drill_run_id, run_cli,
    wait_for,
};
use failoverd::auth::hash_token;
use failoverd::engine::Routing;
use serde_json::Value;

const TOKEN: &str = "drill-operator-token";
/// Generous: a loaded 2-core CI box.
const WAIT: Duration = Duration::from_secs(30);

/// Fast probes (250 ms, two failures make a verdict) so a dead target is seen in about a
/// second, and a quick failback.
const FAST: &[(&str, &str)] = &[
    ("interval: 1s # one attempt per second", "interval: 250ms"),
    (
        "timeout: 500ms # an attempt without an answer after 500 ms is a failure",
        "timeout: 200ms",
    ),
    ("interval: 1s\n", "interval: 250ms\n"),
    ("timeout: 500ms\n", "timeout: 200ms\n"),
    ("failureThreshold: 3", "failureThreshold: 2"),
    ("after: 5s", "after: 1s"),
    ("minDwell: 5s", "minDwell: 1s"),
    ("steps: [50, 100]", "steps: [100]"),
];

fn drill_file(name: &str, body: &str) -> String {
    format!(
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: {{ name: {name} }}\nspec:\n  playbooks: [ demo ]\n{body}"
    )
}

struct Setup {
    s: Scenario,
    tokens: PathBuf,
}

impl Setup {
    async fn new(drills: &[(&str, &str)]) -> Self {
        let s = Scenario::new(FAST).await.unwrap();
        let dir = s.paths.playbooks.join("drills");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in drills {
            std::fs::write(dir.join(format!("{name}.yaml")), drill_file(name, body)).unwrap();
        }
        let tokens = s.dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "- {{ identity: \"drill-test@oncall\", role: operator, sha256: \"{}\" }}\n",
                hash_token(TOKEN)
            ),
        )
        .unwrap();
        Self { s, tokens }
    }

    async fn spawn(&self, name: &str) -> Daemon {
        let mut d = Daemon::spawn_with(
            &self.s.paths,
            name,
            &[std::ffi::OsStr::new("--tokens"), self.tokens.as_os_str()],
        )
        .unwrap();
        d.wait_ready(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
        d
    }

    fn cli(&self, d: &Daemon, args: &[&str]) -> std::process::Output {
        let url = format!("http://{}", d.addr);
        let mut all = vec!["drill", "run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &url, "--token", TOKEN]);
        run_cli(all, Duration::from_secs(60)).unwrap()
    }

    fn vs(&self) -> Value {
        self.s.read_vs().unwrap()
    }
}

/// The UTC date `days` from now, `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
fn utc_date(days: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let z = secs.div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `GET path` with the bearer token: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    chaos_tests::http_get_as(addr, path, TOKEN, Duration::from_secs(5))
        .await
        .unwrap()
}

async fn run_report(addr: SocketAddr, drill: &str, id: &str) -> Value {
    let (code, body) = get(addr, &format!("/v1/drills/{drill}/runs/{id}")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls a run until it has a verdict.
async fn verdict(addr: SocketAddr, drill: &str, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = run_report(addr, drill, id).await;
        if last["result"] != "running" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("drill {drill} run {id} never finished: {last:#}");
}

/// Waits until the run's report (as the API shows it while it runs) says the failover was
/// verified: the drill is in its hold.
async fn wait_verified(addr: SocketAddr, drill: &str, id: &str) {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = run_report(addr, drill, id).await;
        if drill_events(&last).iter().any(|e| e == "verified") {
            assert_eq!(last["result"], "running", "{last:#}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("drill {drill} run {id} never verified its failover: {last:#}");
}

/// A live drill through the CLI with `--wait`: passes, its timeline is in order, the route
/// it wrote went through the audited operator path as `drill:<name>`, and afterwards the
/// VirtualService is exactly the original. In the same daemon: a plan drill writes nothing,
/// and a scheduled drill on a blocked date is recorded as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_drill_passes_and_restores_the_exact_route() {
    // Blocked on today and tomorrow (UTC), so a run near midnight is still blocked.
    let (today, tomorrow) = (utc_date(0), utc_date(1));
    let blocked = format!(
        "  schedule: \"*/1 * * * * *\"\n  mode: live\n  hold: 1s\n  blockedDates: [ \"{today}\", \"{tomorrow}\" ]\n"
    );
    let setup = Setup::new(&[
        ("live", "  mode: live\n  hold: 2s\n"),
        ("plan", "  mode: plan\n"),
        ("blocked", &blocked),
    ])
    .await;
    let original = setup.vs();
    let before_bytes = setup.s.vs_bytes().unwrap();
    let d = setup.spawn("live").await;

    // Plan: evaluates, reports the route it would write, writes nothing.
    let out = setup.cli(&d, &["plan", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("**Result: PASSED**"), "{text}");
    assert!(
        text.contains("web.demo-dr.svc.cluster.local"),
        "plan shows the route: {text}"
    );
    assert_eq!(
        setup.s.vs_bytes().unwrap(),
        before_bytes,
        "plan mode wrote the store"
    );

    // Live, with --wait: the Markdown report, exit 0.
    let out = setup.cli(&d, &["live", "--wait", "--reason", "CHG-1 drill test"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    assert!(text.contains("**Result: PASSED**"), "{text}");
    assert_eq!(
        setup.vs(),
        original,
        "the VirtualService is not exactly the original"
    );

    let (code, body) = get(d.addr, "/v1/drills/live/runs").await;
    assert_eq!(code, 200, "{body}");
    let runs: Value = serde_json::from_str(&body).unwrap();
    let run = &runs["runs"][0];
    assert_eq!(run["result"], "passed", "{run:#}");
    assert_eq!(run["requestedBy"], "drill-test@oncall");
    assert_eq!(
        drill_events(run),
        [
            "started",
            "requested",
            "written",
            "verified",
            "held",
            "failback-requested",
            "restored",
            "finished"
        ],
        "{run:#}"
    );
    let leg = &run["playbooks"][0];
    assert_eq!(leg["target"], "failover[0]");
    assert_eq!(leg["restored"], true);
    assert!(leg["failoverSeconds"].as_f64().unwrap() > 0.0);
    assert!(leg["heldSeconds"].as_f64().unwrap() >= 2.0, "{leg:#}");
    assert!(leg["failbackSeconds"].is_number());
    assert_eq!(
        leg["failoverRoute"][0]["destination"]["host"],
        "web.demo-dr.svc.cluster.local"
    );
    // The Markdown page of the same run.
    let id = run["id"].as_str().unwrap();
    let (code, md) = get(d.addr, &format!("/v1/drills/live/runs/{id}?format=md")).await;
    assert_eq!(code, 200);
    assert!(
        md.contains("## Timeline") && md.contains("| demo | failover[0] |"),
        "{md}"
    );

    // The moves went through the audited operator path, with the drill's identity.
    let audit = setup.s.audit();
    let actions: Vec<(String, String, String)> = audit
        .iter()
        .filter(|r| r.actor == "drill:live")
        .map(|r| (r.action.clone(), r.outcome.clone(), r.playbook.clone()))
        .collect();
    for want in [
        ("drill-start", "started"),
        ("override-failover", "accepted"),
        ("operator-failover", "written"),
        ("override-failback", "accepted"),
        ("operator-failback", "written"),
        ("drill-end", "passed"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, o, p)| a == want.0 && o == want.1 && p == "demo"),
            "no {want:?} in {actions:?}"
        );
    }

    // The scheduled drill fires every second and is skipped on its blocked date.
    let skipped = wait_for("a skipped scheduled run", WAIT, || {
        let path = setup.s.dir.path().join("drills").join("blocked");
        std::fs::read_dir(path).ok()?.flatten().find_map(|f| {
            let r: Value = serde_json::from_slice(&std::fs::read(f.path()).ok()?).ok()?;
            (r["result"] == "skipped").then_some(r)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(skipped["trigger"], "schedule");
    assert!(
        skipped["reasons"][0]
            .as_str()
            .unwrap()
            .contains("blocked date"),
        "{skipped:#}"
    );
    // The list shows the next scheduled time and the last results; metrics count them.
    let (_, body) = get(d.addr, "/v1/drills").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    let blocked = list["drills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "blocked")
        .unwrap();
    assert!(blocked["nextRun"].is_string(), "{blocked:#}");
    assert!(
        blocked["blockedNow"]
            .as_str()
            .unwrap()
            .contains("blocked date")
    );
    let (_, metrics) = d.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("failoverd_drill_runs_total{drill=\"live\",result=\"passed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("failoverd_drill_failover_seconds_count{drill=\"live\"} 1"));
    // A manual run on a blocked date is refused (409) unless forced.
    let out = setup.cli(&d, &["blocked"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    assert_eq!(setup.vs(), original);
}

/// The failover target dies during the hold: the drill aborts, fails back at once, and the
/// route is the original again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_aborts_when_the_target_fails_during_the_hold() {
    let setup = Setup::new(&[("abort", "  mode: live\n  hold: 20s\n")]).await;
    let original = setup.vs();
    let d = setup.spawn("abort").await;
    let out = setup.cli(&d, &["abort"]);
    let id = drill_run_id(&out, &d.logs());
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    setup.s.dr.set_health_status(503);
    let report = verdict(d.addr, "abort", &id).await;
    assert_eq!(report["result"], "aborted", "{report:#}\n{}", d.logs());
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("failover target failover[0] turned unhealthy"),
        "{report:#}"
    );
    let ev = drill_events(&report);
    assert_events_in_order(&ev, &["verified", "aborted", "restored"]);
    assert!(
        ev.iter().position(|e| e == "aborted") < ev.iter().position(|e| e == "restored"),
        "{ev:?}"
    );
    assert!(
        report["playbooks"][0]["heldSeconds"].as_f64().unwrap() < 20.0,
        "aborted before the end of the hold: {report:#}"
    );
    assert_eq!(setup.vs(), original);
}

/// A playbook failed over for real refuses a drill (409), and nothing is written for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_refused_on_a_playbook_failed_over_for_real() {
    let setup = Setup::new(&[("refused", "  mode: live\n  hold: 2s\n")]).await;
    let d = setup.spawn("refused").await;
    setup.s.primary.set_health_status(503);
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let before = setup.s.vs_bytes().unwrap();
    let out = setup.cli(&d, &["refused"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("409") && err.contains("failed over"), "{err}");
    assert_eq!(setup.s.vs_bytes().unwrap(), before);
    let (_, body) = get(d.addr, "/v1/drills/refused/runs").await;
    let runs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs:#}");
    // The refusal of an authenticated call is audited.
    assert!(
        setup
            .s
            .audit()
            .iter()
            .any(|r| r.action == "drill-run" && r.outcome.starts_with("refused: ")),
        "refusal not audited"
    );
}

/// SIGKILL during the hold leaves traffic on the failover target; the next start rolls the
/// drill back (the exact original route) and records the run as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_hold_is_rolled_back_on_restart() {
    let setup = Setup::new(&[("killed", "  mode: live\n  hold: 60s\n")]).await;
    let original = setup.vs();
    let mut d = setup.spawn("killed-1").await;
    let out = setup.cli(&d, &["killed"]);
    let id = drill_run_id(&out, &d.logs());
    setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    // Into the hold: the report says the failover was verified.
    wait_verified(d.addr, "killed", &id).await;
    d.kill().unwrap();
    assert_ne!(setup.vs(), original, "killed while failed over");
    let d2 = setup.spawn("killed-2").await;
    setup
        .s
        .wait_routing(|r| r == Routing::Primary, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d2.logs()));
    let report = verdict(d2.addr, "killed", &id).await;
    assert_eq!(report["result"], "aborted", "{report:#}");
    assert!(
        report["reasons"][0].as_str().unwrap().contains("restarted"),
        "{report:#}"
    );
    assert!(drill_events(&report).contains(&"restarted".to_string()));
    assert_eq!(report["playbooks"][0]["restored"], true, "{report:#}");
    assert_eq!(setup.vs(), original);
    // The drill's hold is gone: nothing pins the playbook any more.
    let (_, body) = get(d2.addr, "/v1/overrides").await;
    assert!(!body.contains("drill:killed"), "{body}");
    assert!(
        !setup
            .s
            .dir
            .path()
            .join("drills/.in-flight")
            .join(format!("{id}.json"))
            .exists(),
        "in-flight record left behind"
    );
}

/// A real incident during the hold (the primary fails): the drill aborts, does not fail
/// back onto the failing primary, and hands the playbook to the engine (its hold released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_incident_during_the_hold_hands_over_to_the_engine() {
    let setup = Setup::new(&[("incident", "  mode: live\n  hold: 20s\n")]).await;
    let d = setup.spawn("incident").await;
    let out = setup.cli(&d, &["incident"]);
    let id = drill_run_id(&out, &d.logs());
    wait_verified(d.addr, "incident", &id).await;
    setup.s.primary.set_health_status(503);
    let report = verdict(d.addr, "incident", &id).await;
    assert_eq!(report["result"], "aborted", "{report:#}\n{}", d.logs());
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("real incident"),
        "{report:#}"
    );
    assert_eq!(report["playbooks"][0]["restored"], false, "{report:#}");
    // Traffic stays on the failover target, now the engine's call, with no drill hold left.
    let (routing, _) = setup
        .s
        .wait_routing(|r| r != Routing::Primary, WAIT)
        .await
        .unwrap();
    assert_eq!(routing, Routing::Failover { target: 0 });
    let (_, body) = get(d.addr, "/v1/overrides").await;
    assert!(!body.contains("drill:incident"), "{body}");
}

/// An error-budget floor read from a real Prometheus scraping the primary stand-in's
/// `istio_requests_total`: objective 99 % (budget 1 %), floor 50 %. With no errors the live
/// drill starts (the report shows 100 % remaining) and holds; once half the requests fail,
/// the budget is spent, the drill aborts within a reading or two and the route is the exact
/// original again. The next live run is refused (409) before anything moves, and a plan run
/// reports that a live run would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_budget_floor_aborts_the_hold_and_refuses_the_next_run() {
    let budget = format!(
        "  abort:\n    errorBudget:\n      query: '{}'\n      objective: 99\n      floor: 50\n",
        ratio_expr("primary", "10s")
    );
    let live = format!("  mode: live\n  hold: 30s\n{budget}");
    let plan = format!("  mode: plan\n{budget}");
    let setup = Setup::new(&[("budget", &live), ("budget-plan", &plan)]).await;
    let original = setup.vs();
    let mut prom = Prometheus::start(&[setup.s.primary.addr()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut d = Daemon::spawn_with(
        &setup.s.paths,
        "budget",
        &[
            std::ffi::OsStr::new("--tokens"),
            setup.tokens.as_os_str(),
            std::ffi::OsStr::new("--prometheus"),
            std::ffi::OsStr::new(&prom.url()),
        ],
    )
    .unwrap();
    d.wait_ready(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let logs = |d: &Daemon| format!("{}\n{}", d.logs(), prom.logs());
    // Prometheus has a rate for the primary: the budget is known and whole.
    prom.wait_value(&ratio_expr("primary", "10s"), |v| v == 0.0, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&d)));

    let out = setup.cli(&d, &["budget"]);
    let id = drill_run_id(&out, &d.logs());
    wait_verified(d.addr, "budget", &id).await;
    let running = run_report(d.addr, "budget", &id).await;
    let read = running["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["event"] == "error-budget")
        .unwrap_or_else(|| panic!("no error-budget step: {running:#}"));
    assert!(
        read["detail"]
            .as_str()
            .unwrap()
            .starts_with("error budget 100.0% remaining, floor 50%"),
        "{read:#}"
    );

    // Half the requests fail: the 10 s error ratio climbs far past the 1 % budget.
    setup.s.primary.set_error_share(0.5);
    let report = verdict(d.addr, "budget", &id).await;
    assert_eq!(report["result"], "aborted", "{report:#}\n{}", logs(&d));
    let why = report["reasons"][0].as_str().unwrap();
    assert!(
        why.starts_with("error budget 0.0% remaining, below the floor of 50%")
            && why.ends_with("during the hold"),
        "{report:#}"
    );
    let ev = drill_events(&report);
    assert_events_in_order(&ev, &["verified", "aborted", "restored"]);
    assert!(
        report["playbooks"][0]["heldSeconds"].as_f64().unwrap() < 30.0,
        "aborted before the end of the hold: {report:#}"
    );
    assert_eq!(setup.vs(), original, "the route is not the original");

    // The next live run is refused before any move.
    let out = setup.cli(&d, &["budget"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("409") && err.contains("below the floor of 50%"),
        "{err}"
    );
    let failovers = setup
        .s
        .audit()
        .iter()
        .filter(|r| {
            r.actor == "drill:budget" && r.action == "operator-failover" && r.outcome == "written"
        })
        .count();
    assert_eq!(failovers, 1, "the refused run moved traffic");
    assert_eq!(setup.vs(), original);

    // Plan mode reads the budget too and says a live run would be refused.
    let out = setup.cli(&d, &["budget-plan", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}\n{out:?}");
    assert!(
        text.contains("a live run would be refused: error budget 0.0% remaining"),
        "{text}"
    );
    assert_eq!(setup.vs(), original);

    // Errors stop but Prometheus is gone: an unknown budget refuses a live run too.
    setup.s.primary.set_error_share(0.0);
    prom.kill().unwrap();
    let out = setup.cli(&d, &["budget"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("409") && err.contains("error budget unknown: Prometheus unreachable"),
        "{err}"
    );
    assert_eq!(setup.vs(), original);
}
