//! The Drill document (`kind: Drill`): what to exercise, when, how long, and what counts as
//! a pass. Parsed like playbooks (serde-saphyr, unknown fields refused, values located) and
//! checked by [`Drill::validate`], whose problems name file, line, column and field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveTime, Weekday};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::playbook::{self, API_VERSION, Duration, Metadata, Problem, check_dns_label};

/// Longest `hold`: a drill proves the path works; a day on the failover target is an outage
/// of the primary's capacity planning, not a drill.
pub const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(3600);

/// A drill file: a scheduled or on-demand failover exercise over one or more playbooks.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Drill {
    /// Must be `failoverd.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `Drill`.
    pub kind: String,
    /// Identity of the drill (`metadata.name` is used in the API, metrics and audit).
    pub metadata: Metadata,
    /// What to exercise and when.
    pub spec: DrillSpec,
}

/// The body of a drill.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillSpec {
    /// Playbooks (by `metadata.name`) the drill fails over together and back again.
    #[schemars(with = "Vec<String>")]
    pub playbooks: Spanned<Vec<Spanned<String>>>,
    /// When to run: six-field cron (`sec min hour day-of-month month day-of-week`), read in
    /// `timeZone`. When absent, the drill runs only on demand. Day-of-month and day-of-week
    /// must both match when both are restricted.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub schedule: Option<Spanned<String>>,
    /// IANA time zone for `schedule`, `windows` and `blockedDates` (default `UTC`).
    #[serde(default = "default_time_zone")]
    #[schemars(with = "String")]
    pub time_zone: Spanned<String>,
    /// When a drill may run (any one window suffices). Empty: at any time. A scheduled run
    /// outside every window is recorded as skipped; a manual one is refused unless forced.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Dates (`YYYY-MM-DD`, in `timeZone`) on which the drill never runs: change freezes,
    /// holidays, the day of a big release.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub blocked_dates: Vec<Spanned<String>>,
    /// `plan`: evaluate and report, write nothing. `live`: a real failover through the
    /// engine and the routing writer, a hold, and a failback.
    #[serde(default)]
    pub mode: Mode,
    /// How long traffic stays on the failover target in a live drill (at most 1h).
    #[serde(default = "default_hold")]
    #[schemars(with = "Duration")]
    pub hold: Spanned<Duration>,
    /// What a passing run must show.
    #[serde(default)]
    pub success: Success,
    /// When a live drill stops early and restores routing.
    #[serde(default)]
    pub abort: Abort,
    /// A fault drill: the fault failoverd writes into the guarded route so its own signals
    /// detect the outage (see [`super::inject`]). Absent: a forced failover as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<super::inject::Inject>")]
    pub inject: Option<Spanned<super::inject::Inject>>,
}

fn default_time_zone() -> Spanned<String> {
    Spanned::new("UTC".to_string(), Location::UNKNOWN, Location::UNKNOWN)
}

fn default_hold() -> Spanned<Duration> {
    Spanned::new(
        Duration::from_secs(60),
        Location::UNKNOWN,
        Location::UNKNOWN,
    )
}

/// `plan` or `live`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Evaluate everything (target health, the route that would be written), write nothing.
    #[default]
    Plan,
    /// Fail over for real, hold, fail back, verify.
    Live,
}

impl Mode {
    /// `plan` or `live`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plan => "plan",
            Mode::Live => "live",
        }
    }
}

/// An allowed window: some weekdays, between two times of day (in `timeZone`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Window {
    /// Weekdays (`Mon` … `Sun`, or full names); empty: every day. For a window that
    /// crosses midnight, the day is the day the window starts.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub days: Vec<Spanned<String>>,
    /// Start time of day, `HH:MM` (inclusive).
    #[schemars(with = "String")]
    pub start: Spanned<String>,
    /// End time of day, `HH:MM` (exclusive); earlier than `start` means the next day.
    #[schemars(with = "String")]
    pub end: Spanned<String>,
}

/// What a passing run must show.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Success {
    /// The failover (operator call to route written and read back) finishes within this.
    #[serde(default = "default_within")]
    #[schemars(with = "Duration")]
    pub failover_within: Spanned<Duration>,
    /// The failover target stays healthy for the whole hold.
    #[serde(default = "yes")]
    pub target_healthy_during_hold: bool,
    /// The failback (call to original route written and read back) finishes within this.
    #[serde(default = "default_within")]
    #[schemars(with = "Duration")]
    pub failback_within: Spanned<Duration>,
}

impl Default for Success {
    fn default() -> Self {
        Self {
            failover_within: default_within(),
            target_healthy_during_hold: true,
            failback_within: default_within(),
        }
    }
}

fn default_within() -> Spanned<Duration> {
    // The daemon's promise is a failover within 30 s of a fault; a forced move skips
    // detection, so it must be far quicker.
    Spanned::new(
        Duration::from_secs(10),
        Location::UNKNOWN,
        Location::UNKNOWN,
    )
}

fn yes() -> bool {
    true
}

/// When a live drill stops early. A real incident in scope (the primary failing, an
/// automatic move) and an operator freeze or override on a drilled playbook always abort
/// the drill: those are not options.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// Abort (and fail back at once) when the failover target turns unhealthy during the
    /// hold. Default true; with false the drill holds on and fails if
    /// `success.targetHealthyDuringHold` is set.
    #[serde(default = "yes")]
    pub target_unhealthy: bool,
    /// An error-budget floor: a live drill does not start, and aborts during the hold, when
    /// less than `floor` percent of the service's error budget remains, or when the budget
    /// cannot be read (a drill is optional; it never runs blind). Absent: no budget check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_budget: Option<ErrorBudget>,
}

impl Default for Abort {
    fn default() -> Self {
        Self {
            target_unhealthy: true,
            error_budget: None,
        }
    }
}

/// How much of the service's error budget must remain for a live drill to run. Remaining
/// budget (percent) = 100 × (1 − ratio / (1 − objective / 100)), where `ratio` is what
/// `query` returns.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ErrorBudget {
    /// PromQL instant query returning one value: the service's error ratio (0 to 1) over the
    /// SLO period, e.g. `sum(rate(errors_total[30d])) / sum(rate(requests_total[30d]))`. An
    /// empty result or NaN (no traffic) counts as unknown, never as a full budget.
    #[schemars(with = "String")]
    pub query: Spanned<String>,
    /// The SLO objective in percent, e.g. `99.9` (an error budget of 0.1 % of requests).
    /// Greater than 0 and less than 100.
    #[schemars(with = "f64")]
    pub objective: Spanned<f64>,
    /// Percent of the error budget that must remain (0 to 100), e.g. `25`: below it a live
    /// drill is refused before anything moves, or aborted and failed back during the hold.
    #[schemars(with = "f64")]
    pub floor: Spanned<f64>,
    /// Prometheus base URL, e.g. `http://prometheus.monitoring:9090`. Default: the daemon's
    /// `--prometheus` (config `prometheus:`), queried with its `prometheusClient` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub server: Option<Spanned<String>>,
}

impl ErrorBudget {
    /// The Prometheus server to ask: its own `server`, else `default` (None: there is none).
    pub fn server(&self, default: Option<&str>) -> Option<String> {
        self.server
            .as_ref()
            .map(|s| s.value.clone())
            .or_else(|| default.map(String::from))
    }
}

/// A validated drill with its file and the values parsed out of its strings.
#[derive(Clone, Debug)]
pub struct LoadedDrill {
    /// The file it came from.
    pub file: PathBuf,
    /// The document.
    pub drill: Drill,
    /// `spec.schedule`, parsed.
    pub schedule: Option<croner::Cron>,
    /// `spec.timeZone`, parsed.
    pub tz: chrono_tz::Tz,
    /// `spec.windows`, parsed.
    pub windows: Vec<TimeWindow>,
    /// `spec.blockedDates`, parsed.
    pub blocked: Vec<NaiveDate>,
}

impl LoadedDrill {
    /// The drill's name.
    pub fn name(&self) -> &str {
        &self.drill.metadata.name.value
    }

    /// The playbooks in scope.
    pub fn playbooks(&self) -> Vec<String> {
        self.drill
            .spec
            .playbooks
            .value
            .iter()
            .map(|p| p.value.clone())
            .collect()
    }
}

/// A parsed window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    /// Allowed start days (empty: every day).
    pub days: Vec<Weekday>,
    /// Inclusive start.
    pub start: NaiveTime,
    /// Exclusive end (before `start`: the next day).
    pub end: NaiveTime,
}

/// The cron parser tokio-cron-scheduler uses (seconds required, day-of-month AND
/// day-of-week), so what validates here is what the scheduler would accept.
pub fn parse_cron(s: &str) -> Result<croner::Cron, String> {
    if s.split_whitespace().count() != 6 {
        return Err(format!(
            "invalid cron `{s}`: expected six fields `sec min hour day-of-month month day-of-week`, e.g. `0 0 3 * * Tue`"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(s)
        .map_err(|e| format!("invalid cron `{s}`: {e}"))
}

fn parse_day(s: &str) -> Result<Weekday, String> {
    s.parse::<Weekday>()
        .map_err(|_| format!("invalid weekday `{s}`: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .map_err(|_| format!("invalid time of day `{s}`: expected HH:MM, e.g. `09:30`"))
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("invalid date `{s}`: expected YYYY-MM-DD, e.g. `2026-12-25`"))
}

/// Parses one drill document; syntax and type errors carry their YAML location.
pub fn parse(file: &str, text: &str) -> Result<Drill, Problem> {
    serde_saphyr::from_str::<Drill>(text).map_err(|e| playbook::yaml_problem(file, &e))
}

impl Drill {
    /// Checks the drill against the loaded playbook names; returns the parsed drill or every
    /// problem found.
    pub fn check(self, file: &Path, playbooks: &[&str]) -> Result<LoadedDrill, Vec<Problem>> {
        let f = file.display().to_string();
        let mut out = Vec::new();
        let mut push = |loc: Location, field: &str, message: String| {
            out.push(Problem {
                file: f.clone(),
                line: loc.line(),
                column: loc.column(),
                field: field.to_string(),
                message,
            });
        };
        let unknown = Location::UNKNOWN;
        if self.api_version != API_VERSION {
            push(
                unknown,
                "apiVersion",
                format!("expected `{API_VERSION}`, got `{}`", self.api_version),
            );
        }
        if self.kind != "Drill" {
            push(
                unknown,
                "kind",
                format!("expected `Drill`, got `{}`", self.kind),
            );
        }
        let name = &self.metadata.name;
        if let Err(e) = check_dns_label(&name.value) {
            push(name.referenced, "metadata.name", e);
        }
        let spec = &self.spec;
        if spec.playbooks.value.is_empty() {
            push(
                spec.playbooks.referenced,
                "spec.playbooks",
                "must name at least one playbook".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, p) in spec.playbooks.value.iter().enumerate() {
            let field = format!("spec.playbooks[{i}]");
            if !seen.insert(p.value.as_str()) {
                push(
                    p.referenced,
                    &field,
                    format!("playbook `{}` is listed twice", p.value),
                );
            } else if !playbooks.contains(&p.value.as_str()) {
                let known = if playbooks.is_empty() {
                    "none loaded; validate the drill together with its playbooks".to_string()
                } else {
                    playbooks.join(", ")
                };
                push(
                    p.referenced,
                    &field,
                    format!("unknown playbook `{}` (known: {known})", p.value),
                );
            }
        }
        let schedule = match &spec.schedule {
            Some(s) => match parse_cron(&s.value) {
                Ok(c) => Some(c),
                Err(e) => {
                    push(s.referenced, "spec.schedule", e);
                    None
                }
            },
            None => None,
        };
        let tz = match spec.time_zone.value.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                push(
                    spec.time_zone.referenced,
                    "spec.timeZone",
                    format!(
                        "unknown time zone `{}`: expected an IANA name such as `UTC` or `Asia/Jakarta`",
                        spec.time_zone.value
                    ),
                );
                chrono_tz::UTC
            }
        };
        let mut windows = Vec::new();
        for (i, w) in spec.windows.iter().enumerate() {
            let mut days = Vec::new();
            for (j, d) in w.days.iter().enumerate() {
                match parse_day(&d.value) {
                    Ok(d) => days.push(d),
                    Err(e) => push(d.referenced, &format!("spec.windows[{i}].days[{j}]"), e),
                }
            }
            let start = parse_time(&w.start.value)
                .map_err(|e| push(w.start.referenced, &format!("spec.windows[{i}].start"), e));
            let end = parse_time(&w.end.value)
                .map_err(|e| push(w.end.referenced, &format!("spec.windows[{i}].end"), e));
            if let (Ok(start), Ok(end)) = (start, end) {
                if start == end {
                    push(
                        w.end.referenced,
                        &format!("spec.windows[{i}].end"),
                        "window is empty: end equals start".into(),
                    );
                } else {
                    windows.push(TimeWindow { days, start, end });
                }
            }
        }
        let mut blocked = Vec::new();
        for (i, d) in spec.blocked_dates.iter().enumerate() {
            match parse_date(&d.value) {
                Ok(d) => blocked.push(d),
                Err(e) => push(d.referenced, &format!("spec.blockedDates[{i}]"), e),
            }
        }
        let hold = spec.hold.value.get();
        if hold.is_zero() {
            push(
                spec.hold.referenced,
                "spec.hold",
                "must be greater than 0s".into(),
            );
        } else if hold > MAX_HOLD {
            push(
                spec.hold.referenced,
                "spec.hold",
                format!("{} is longer than the 1h limit", spec.hold.value),
            );
        }
        for (field, d) in [
            ("spec.success.failoverWithin", &spec.success.failover_within),
            ("spec.success.failbackWithin", &spec.success.failback_within),
        ] {
            if d.value.get().is_zero() {
                push(d.referenced, field, "must be greater than 0s".into());
            }
        }
        if let Some(eb) = &spec.abort.error_budget {
            let field = "spec.abort.errorBudget";
            if eb.query.value.trim().is_empty() {
                push(
                    eb.query.referenced,
                    &format!("{field}.query"),
                    "must not be empty: a PromQL query returning the error ratio over the SLO period".into(),
                );
            }
            let o = eb.objective.value;
            if !(o > 0.0 && o < 100.0) {
                push(
                    eb.objective.referenced,
                    &format!("{field}.objective"),
                    format!(
                        "{o} is out of range: a percentage greater than 0 and less than 100, e.g. 99.9"
                    ),
                );
            }
            let f = eb.floor.value;
            if !(0.0..=100.0).contains(&f) {
                push(
                    eb.floor.referenced,
                    &format!("{field}.floor"),
                    format!("{f} is out of range: a percentage of the error budget from 0 to 100"),
                );
            }
            if let Some(s) = &eb.server
                && let Err(e) = check_server_url(&s.value)
            {
                push(s.referenced, &format!("{field}.server"), e);
            }
        }
        if let Some(i) = &spec.inject {
            for p in i
                .value
                .check(i.referenced, spec.abort.error_budget.is_some())
            {
                push(p.at, &p.field, p.message);
            }
        }
        if out.is_empty() {
            Ok(LoadedDrill {
                file: file.to_path_buf(),
                drill: self,
                schedule,
                tz,
                windows,
                blocked,
            })
        } else {
            Err(out)
        }
    }
}

fn check_server_url(s: &str) -> Result<(), String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(format!(
            "invalid Prometheus URL `{s}`: expected http(s)://host[:port][/prefix]"
        )),
    }
}

/// Drills whose error-budget floor has no Prometheus server: neither its own `server` nor
/// the daemon's default (`--prometheus`). One problem each, located at `errorBudget.query`
/// (the block's first required field), for `failoverd run` to refuse to start on.
pub fn check_servers(drills: &[LoadedDrill], default: Option<&str>) -> Vec<Problem> {
    drills
        .iter()
        .filter_map(|d| {
            let eb = d.drill.spec.abort.error_budget.as_ref()?;
            if eb.server(default).is_some() {
                return None;
            }
            Some(Problem {
                file: d.file.display().to_string(),
                line: eb.query.referenced.line(),
                column: eb.query.referenced.column(),
                field: "spec.abort.errorBudget.server".into(),
                message: format!(
                    "drill `{}` has an error-budget floor but no Prometheus server: set `server` or pass --prometheus",
                    d.name()
                ),
            })
        })
        .collect()
}

/// The JSON Schema of the drill format, generated from these types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Drill);
    serde_json::to_value(schema).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn drill_problems_are_located_by_line_and_column() {
        let text = "apiVersion: failoverd.dev/v1alpha1\nkind: Drill\nmetadata: { name: f }\nspec:\n  playbooks: [ web ]\n  mode: live\n  inject:\n    abort: { httpStatus: 700 }\n    scope: all\n";
        let d = super::parse("f.yaml", text).unwrap();
        let probs = d
            .check(std::path::Path::new("f.yaml"), &["web"])
            .unwrap_err();
        let shown: Vec<String> = probs.iter().map(|p| p.to_string()).collect();
        assert_eq!(probs.len(), 3, "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("f.yaml:8:") && s.contains("httpStatus")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("f.yaml:9:") && s.contains("allTraffic")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("f.yaml:9:") && s.contains("errorBudget")),
            "{shown:?}"
        );
        let plan = text
            .replace("mode: live", "mode: plan")
            .replace("700", "503")
            .replace("scope: all", "percentage: 50");
        let ok = super::parse("f.yaml", &plan).unwrap();
        assert!(ok.check(std::path::Path::new("f.yaml"), &["web"]).is_ok());
    }
}
