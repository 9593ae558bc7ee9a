#![allow(clippy::unwrap_used)]

use std::path::Path;

use jiff::Timestamp;

use super::report::{Leg, Run, RunStore, Verdict};
use super::spec::{LoadedDrill, Mode, parse};
use super::window::{gate, next_run};
use crate::playbook::Problem;

const KNOWN: &[&str] = &["case-management", "identity"];

fn drill(spec: &str) -> String {
    format!(
        "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: {{ name: weekly }}\nspec:\n  playbooks: [ case-management ]\n{spec}"
    )
}

fn load(spec: &str) -> Result<LoadedDrill, Vec<Problem>> {
    let text = drill(spec);
    parse("d.yaml", &text)
        .map_err(|p| vec![p])?
        .check(Path::new("d.yaml"), KNOWN)
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// The design's example drill is valid, with the documented defaults.
#[test]
fn design_example_is_valid() {
    let d = load(
        "  schedule: \"0 0 3 * * Tue\"\n  timeZone: Asia/Jakarta\n  mode: live\n  hold: 2m\n  \
         success: { failoverWithin: 10s }\n  blockedDates: [ \"2026-12-25\" ]\n",
    )
    .unwrap();
    assert_eq!(d.name(), "weekly");
    assert_eq!(d.drill.spec.mode, Mode::Live);
    assert_eq!(d.drill.spec.hold.value.get().as_secs(), 120);
    assert!(d.drill.spec.success.target_healthy_during_hold);
    assert!(d.drill.spec.abort.target_unhealthy);
    assert_eq!(d.tz, chrono_tz::Asia::Jakarta);
    assert_eq!(d.blocked.len(), 1);
    // Without a mode, a drill only plans.
    assert_eq!(load("").unwrap().drill.spec.mode, Mode::Plan);
}

/// Each bad value is refused with its field, line and column.
#[test]
fn bad_values_name_field_and_line() {
    for (spec, field, text, line) in [
        (
            "  schedule: \"0 3 * * Tue\"\n",
            "spec.schedule",
            "six fields",
            6,
        ),
        (
            "  schedule: \"0 0 25 * * Tue\"\n",
            "spec.schedule",
            "invalid cron",
            6,
        ),
        (
            "  timeZone: Mars/Olympus\n",
            "spec.timeZone",
            "unknown time zone",
            6,
        ),
        ("  hold: 0s\n", "spec.hold", "greater than 0s", 6),
        ("  hold: 2h\n", "spec.hold", "1h limit", 6),
        (
            "  blockedDates: [ \"2026-13-01\" ]\n",
            "spec.blockedDates[0]",
            "YYYY-MM-DD",
            6,
        ),
        (
            "  windows:\n    - { days: [ Mon, Funday ], start: \"09:00\", end: \"17:00\" }\n",
            "spec.windows[0].days[1]",
            "weekday",
            7,
        ),
        (
            "  windows:\n    - { start: \"9am\", end: \"17:00\" }\n",
            "spec.windows[0].start",
            "HH:MM",
            7,
        ),
        (
            "  windows:\n    - { start: \"09:00\", end: \"09:00\" }\n",
            "spec.windows[0].end",
            "empty",
            7,
        ),
        (
            "  success: { failoverWithin: 0s }\n",
            "spec.success.failoverWithin",
            "greater than 0s",
            6,
        ),
    ] {
        let problems = load(spec).unwrap_err();
        assert!(
            problems.iter().any(|p| p.field == field
                && p.message.contains(text)
                && p.line == line
                && p.column > 0),
            "{spec}: {problems:?}"
        );
    }
}

/// Scope: unknown and repeated playbooks, an empty list.
#[test]
fn scope_must_name_loaded_playbooks_once() {
    let text = "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: d }\nspec:\n  playbooks: [ identity, nope, identity ]\n";
    let problems = parse("d.yaml", text)
        .unwrap()
        .check(Path::new("d.yaml"), KNOWN)
        .unwrap_err();
    assert!(
        problems.iter().any(|p| p.field == "spec.playbooks[1]"
            && p.message.contains("unknown playbook `nope`")
            && p.line == 5),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.field == "spec.playbooks[2]" && p.message.contains("twice")),
        "{problems:?}"
    );
    let empty = "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: d }\nspec:\n  playbooks: []\n";
    let problems = parse("d.yaml", empty)
        .unwrap()
        .check(Path::new("d.yaml"), KNOWN)
        .unwrap_err();
    assert!(
        problems.iter().any(|p| p.field == "spec.playbooks"),
        "{problems:?}"
    );
}

/// Unknown fields are refused at parse time, located.
#[test]
fn unknown_field_is_refused() {
    let p = parse("d.yaml", &drill("  holdd: 2m\n")).unwrap_err();
    assert!(p.message.contains("holdd"), "{p}");
    assert_eq!(p.line, 6);
    let p = parse("d.yaml", &drill("  abort: { onMeteor: true }\n")).unwrap_err();
    assert!(p.message.contains("onMeteor"), "{p}");
}

/// Windows in the drill's zone: weekdays, times, midnight crossing; blocked dates win.
#[test]
fn windows_and_blocked_dates_with_fixed_instants() {
    let d = load(
        "  timeZone: Asia/Jakarta\n  windows:\n    - { days: [ Tue, Wed ], start: \"02:00\", end: \"04:00\" }\n    \
         - { days: [ Sat ], start: \"23:00\", end: \"01:00\" }\n  blockedDates: [ \"2026-12-22\" ]\n",
    )
    .unwrap();
    // Jakarta is UTC+7 all year. 2026-12-01 is a Tuesday.
    for (utc, allowed, why) in [
        ("2026-12-01T19:30:00Z", true, "Wed 02:30 local"),
        ("2026-11-30T19:30:00Z", true, "Tue 02:30 local"),
        (
            "2026-11-30T21:00:00Z",
            false,
            "Tue 04:00 local: end is exclusive",
        ),
        ("2026-11-30T18:59:59Z", false, "Tue 01:59:59 local"),
        ("2026-12-02T19:30:00Z", false, "Thu 02:30 local"),
        ("2026-12-05T16:30:00Z", true, "Sat 23:30 local"),
        (
            "2026-12-05T17:30:00Z",
            true,
            "Sun 00:30 local: Saturday's window",
        ),
        ("2026-12-06T16:30:00Z", false, "Sun 23:30 local"),
        (
            "2026-12-21T19:30:00Z",
            false,
            "Tue 2026-12-22 02:30 local: blocked",
        ),
        ("2026-12-28T19:30:00Z", true, "Tue 2026-12-29 02:30 local"),
    ] {
        let g = gate(&d, ts(utc));
        assert_eq!(g.is_none(), allowed, "{why}: {g:?}");
    }
    assert!(
        gate(&d, ts("2026-12-21T19:30:00Z"))
            .unwrap()
            .contains("blocked date")
    );
    // No windows: any time but a blocked date.
    let open = load("  blockedDates: [ \"2026-12-25\" ]\n").unwrap();
    assert!(gate(&open, ts("2026-12-24T23:59:59Z")).is_none());
    assert!(gate(&open, ts("2026-12-25T00:00:00Z")).is_some());
}

/// The next run is computed in the drill's zone, across daylight-saving changes.
#[test]
fn next_run_follows_the_time_zone() {
    let d = load("  schedule: \"0 0 3 * * Tue\"\n  timeZone: Asia/Jakarta\n").unwrap();
    // Tuesday 03:00 in Jakarta is Monday 20:00 UTC.
    assert_eq!(
        next_run(&d, ts("2026-11-28T00:00:00Z")),
        Some(ts("2026-11-30T20:00:00Z"))
    );
    // Strictly after now.
    assert_eq!(
        next_run(&d, ts("2026-11-30T20:00:00Z")),
        Some(ts("2026-12-07T20:00:00Z"))
    );
    // Berlin: 03:00 local is 01:00 UTC in winter and 01:00 UTC+2 = 01:00 UTC in summer.
    let b = load("  schedule: \"0 30 9 * * *\"\n  timeZone: Europe/Berlin\n").unwrap();
    assert_eq!(
        next_run(&b, ts("2026-03-28T12:00:00Z")),
        Some(ts("2026-03-29T07:30:00Z")),
        "after the spring change 09:30 is UTC+2"
    );
    assert_eq!(
        next_run(&b, ts("2026-03-27T12:00:00Z")),
        Some(ts("2026-03-28T08:30:00Z")),
        "before it 09:30 is UTC+1"
    );
    assert_eq!(
        next_run(&load("").unwrap(), ts("2026-11-28T00:00:00Z")),
        None
    );
}

fn run(drill: &str, id: &str, started: &str) -> Run {
    Run {
        id: id.into(),
        drill: drill.into(),
        mode: "live".into(),
        trigger: "manual".into(),
        requested_by: "alice@oncall".into(),
        reason: "test".into(),
        started: ts(started),
        finished: Some(ts(started)),
        result: Verdict::Passed,
        reasons: vec![],
        timeline: vec![],
        playbooks: vec![Leg {
            playbook: "case-management".into(),
            failover_seconds: Some(0.012),
            restored: true,
            ..Leg::default()
        }],
    }
}

/// Reports persist, reload newest first, and stay bounded; in-flight records round-trip.
#[test]
fn run_store_is_bounded_and_persistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RunStore::open(dir.path());
    for i in 0..super::report::KEEP_RUNS + 5 {
        let started = format!("2026-11-{:02}T00:00:00Z", 1 + i);
        store
            .save(&run("weekly", &format!("r{i:02}"), &started))
            .unwrap();
    }
    let mut flying = run("weekly", "r-flying", "2026-11-28T00:00:00Z");
    flying.result = Verdict::Running;
    store.write_in_flight(&flying).unwrap();
    let again = RunStore::open(dir.path());
    let list = again.list("weekly");
    assert_eq!(list.len(), super::report::KEEP_RUNS);
    assert_eq!(list[0].id, format!("r{:02}", super::report::KEEP_RUNS + 4));
    assert!(again.get("weekly", "r00").is_none(), "oldest dropped");
    let files = std::fs::read_dir(dir.path().join("weekly"))
        .unwrap()
        .count();
    assert_eq!(
        files,
        super::report::KEEP_RUNS,
        "dropped runs are deleted on disk"
    );
    assert_eq!(again.in_flight(), vec![flying.clone()]);
    again.clear_in_flight(&flying.id).unwrap();
    assert!(again.in_flight().is_empty());
}

/// The Markdown page carries the verdict, measured times and timeline.
#[test]
fn markdown_report_has_verdict_and_times() {
    let mut r = run("weekly", "dr-1", "2026-11-28T00:00:00Z");
    r.step(
        Some("case-management"),
        "written",
        "failover to failover[0] | held",
    );
    let md = r.markdown();
    assert!(md.contains("**Result: PASSED**"), "{md}");
    assert!(md.contains("| case-management | — | 0.012 s |"), "{md}");
    assert!(md.contains("failover[0] \\| held"), "pipes escaped: {md}");
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's example drills load against the repository's playbooks, and point the
/// editor at the schema.
#[test]
fn repository_drills_load() {
    let dir = repo().join("playbooks");
    let playbooks = crate::playbook::load_paths(std::slice::from_ref(&dir)).unwrap();
    let drills = super::spec::load_paths(&[dir], &playbooks).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<&str> = drills.iter().map(|d| d.name()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "daily-identity-plan",
            "weekly-case-management",
            "weekly-case-management-fault"
        ]
    );
    for d in &drills {
        let text = std::fs::read_to_string(&d.file).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("# yaml-language-server: $schema=../drill.schema.json"),
            "{}",
            d.file.display()
        );
    }
}

/// The committed drill.schema.json matches the types (`UPDATE_SCHEMA=1` rewrites it).
#[test]
fn committed_drill_schema_is_current() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&super::spec::json_schema()).unwrap()
    );
    let path = repo().join("playbooks/drill.schema.json");
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale (or missing): regenerate it with \
         `UPDATE_SCHEMA=1 cargo test -p failoverd --lib drill` and commit the result.",
        path.display()
    );
}

/// The controller's hook refuses a drill's failover unless the playbook is in normal
/// operation without someone else's override; other callers and calls pass through.
#[test]
fn controller_hook_refuses_drill_failover_outside_normal_operation() {
    use crate::engine::{Actor, Routing, State};
    use crate::overrides::{OverrideKind, OverrideRecord};
    use crate::shared::ControlKind;
    let now = ts("2026-11-28T00:00:00Z");
    let drill = Actor {
        identity: "drill:weekly".into(),
        reason: "test".into(),
    };
    let alice = Actor {
        identity: "alice@oncall".into(),
        reason: "INC-1".into(),
    };
    let failover = ControlKind::Failover {
        target: None,
        force: false,
        break_glass: None,
        ttl: std::time::Duration::from_secs(60),
    };
    let normal = State::resume(Routing::Primary, now);
    let failed_over = State::resume(Routing::Failover { target: 0 }, now);
    let freeze = |playbook: &str, actor: &str| OverrideRecord {
        id: "ov-1".into(),
        playbook: playbook.into(),
        kind: OverrideKind::Freeze,
        actor: actor.into(),
        reason: "change freeze".into(),
        created: now,
        until: now,
        target: None,
        force: false,
        break_glass: None,
    };
    let hook = super::refuse_drill_failover;
    assert_eq!(hook(&drill, &failover, "demo", &normal, &[]), None);
    assert!(hook(&drill, &failover, "demo", &failed_over, &[]).is_some());
    assert!(hook(&drill, &failover, "demo", &normal, &[freeze("demo", "bob")]).is_some());
    // Another playbook's freeze, or the drill's own hold, do not count.
    assert_eq!(
        hook(
            &drill,
            &failover,
            "demo",
            &normal,
            &[freeze("other", "bob")]
        ),
        None
    );
    assert_eq!(
        hook(
            &drill,
            &failover,
            "demo",
            &normal,
            &[freeze("demo", "drill:weekly")]
        ),
        None
    );
    // Operators and a drill's failback are not the hook's business.
    assert_eq!(hook(&alice, &failover, "demo", &failed_over, &[]), None);
    assert_eq!(
        hook(
            &drill,
            &ControlKind::Failback { force: false },
            "demo",
            &failed_over,
            &[]
        ),
        None
    );
}

/// Remaining budget = 100 × (1 − ratio / (1 − objective/100)); nonsense inputs give None.
#[test]
fn remaining_budget_math() {
    use super::budget::remaining_percent;
    for (ratio, objective, want) in [
        (0.0, 99.9, Some(100.0)),
        (0.0005, 99.9, Some(50.0)),
        (0.001, 99.9, Some(0.0)),
        (0.004, 99.9, Some(-300.0)),
        (0.0025, 99.0, Some(75.0)),
        (0.01, 95.0, Some(80.0)),
        (1.0, 50.0, Some(-100.0)),
        (-0.1, 99.9, None),
        (f64::INFINITY, 99.9, None),
        (f64::NAN, 99.9, None),
        (0.001, 100.0, None),
        (0.001, 0.0, None),
    ] {
        let got = remaining_percent(ratio, objective);
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{ratio} {objective}: {g} != {w}"),
            (None, None) => {}
            _ => panic!("{ratio} {objective}: got {got:?}, want {want:?}"),
        }
    }
}

fn budget_drill(block: &str) -> Result<LoadedDrill, Vec<Problem>> {
    load(&format!(
        "  mode: live\n  abort:\n    errorBudget:\n{block}"
    ))
}

/// The verdict on a reading: at or above the floor runs; below it, an error, or a value
/// that is no ratio refuses, and the reason names the remaining budget and the floor.
#[test]
fn budget_judgement() {
    use super::budget::judge;
    let d = budget_drill("      query: q\n      objective: 99.9\n      floor: 25\n").unwrap();
    let eb = d.drill.spec.abort.error_budget.clone().unwrap();
    for (reading, ok, text) in [
        (Ok(0.0), true, "error budget 100.0% remaining, floor 25%"),
        (Ok(0.0007), true, "error budget 30.0% remaining, floor 25%"),
        (
            Ok(0.0008),
            false,
            "error budget 20.0% remaining, below the floor of 25%",
        ),
        (
            Ok(0.5),
            false,
            "error budget 0.0% remaining, below the floor of 25%",
        ),
        (
            Err("empty result (no series)".to_string()),
            false,
            "error budget unknown: empty result (no series)",
        ),
        (
            Ok(-1.0),
            false,
            "error budget unknown: the query returned -1",
        ),
        (Ok(f64::INFINITY), false, "error budget unknown"),
    ] {
        let got = judge(&eb, reading.clone());
        let msg = match &got {
            Ok(m) | Err(m) => m,
        };
        assert_eq!(got.is_ok(), ok, "{reading:?}: {got:?}");
        assert!(msg.starts_with(text), "{reading:?}: {msg}");
    }
}

/// Bad error-budget values are refused at load with their field and line; a drill without
/// `errorBudget` has none; a floor with no Prometheus anywhere is a problem for `run`.
#[test]
fn error_budget_validation() {
    let ok = "      query: 'sum(rate(e[30d])) / sum(rate(r[30d]))'\n      objective: 99.9\n      floor: 25\n";
    let d = budget_drill(ok).unwrap();
    let eb = d.drill.spec.abort.error_budget.as_ref().unwrap();
    assert_eq!(eb.objective.value, 99.9);
    assert_eq!(eb.floor.value, 25.0);
    assert!(eb.server.is_none());
    assert!(load("").unwrap().drill.spec.abort.error_budget.is_none());
    for (block, field, text, line) in [
        (
            "      query: ''\n      objective: 99.9\n      floor: 25\n",
            "spec.abort.errorBudget.query",
            "must not be empty",
            9,
        ),
        (
            "      query: '  '\n      objective: 99.9\n      floor: 25\n",
            "spec.abort.errorBudget.query",
            "must not be empty",
            9,
        ),
        (
            "      query: q\n      objective: 100\n      floor: 25\n",
            "spec.abort.errorBudget.objective",
            "out of range",
            10,
        ),
        (
            "      query: q\n      objective: 0\n      floor: 25\n",
            "spec.abort.errorBudget.objective",
            "out of range",
            10,
        ),
        (
            "      query: q\n      objective: -5\n      floor: 25\n",
            "spec.abort.errorBudget.objective",
            "out of range",
            10,
        ),
        (
            "      query: q\n      objective: 99.9\n      floor: 101\n",
            "spec.abort.errorBudget.floor",
            "out of range",
            11,
        ),
        (
            "      query: q\n      objective: 99.9\n      floor: -1\n",
            "spec.abort.errorBudget.floor",
            "out of range",
            11,
        ),
        (
            "      query: q\n      objective: 99.9\n      floor: 25\n      server: prometheus:9090\n",
            "spec.abort.errorBudget.server",
            "invalid Prometheus URL",
            12,
        ),
    ] {
        let problems = budget_drill(block).unwrap_err();
        assert!(
            problems.iter().any(|p| p.field == field
                && p.message.contains(text)
                && p.line == line
                && p.column > 0),
            "{block}: {problems:?}"
        );
    }
    // Missing fields are parse errors.
    let p = parse(
        "d.yaml",
        &drill("  abort:\n    errorBudget: { query: q, floor: 25 }\n"),
    )
    .unwrap_err();
    assert!(p.message.contains("objective"), "{p}");
    // The server: its own, else the daemon's default, else a located problem.
    use super::spec::check_servers;
    let drills = vec![d];
    assert!(check_servers(&drills, Some("http://prom:9090")).is_empty());
    let problems = check_servers(&drills, None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "spec.abort.errorBudget.server");
    assert_eq!(problems[0].line, 9);
    assert!(problems[0].message.contains("--prometheus"), "{problems:?}");
    let own = budget_drill(&format!(
        "{ok}      server: http://prom.monitoring:9090/prefix\n"
    ))
    .unwrap();
    assert!(check_servers(std::slice::from_ref(&own), None).is_empty());
    assert_eq!(
        own.drill
            .spec
            .abort
            .error_budget
            .unwrap()
            .server(Some("http://other:1")),
        Some("http://prom.monitoring:9090/prefix".to_string())
    );
}
