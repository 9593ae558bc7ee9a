//! Validation: what fits the types but makes no sense (references, ranges, sense of the
//! durations), with the probe library's option checks asked of the caller.

use std::collections::HashMap;

use super::API_VERSION;
use super::duration;
use super::model::{Destination, Playbook};
use super::names::{check_dns_label, check_dns_subdomain, check_host};
use super::problem::{OptionProblem, Problem};
use super::signals::{GrpcCheck, HttpCheck, ScrapeSlo, SloSpec, TcpCheck, WINDOW_PLACEHOLDER};
use super::target::Target;

impl Playbook {
    /// Checks references and sense; returns every problem found (empty when valid).
    ///
    /// The options only the probe library can judge (URL and header syntax, regexes, CA
    /// files, addresses, scrape matchers) are asked of `checks`; the daemon passes the probe
    /// library's own checks, so a playbook is refused for exactly what its probes would fail on.
    pub fn validate_with(&self, file: &str, checks: &dyn ProbeChecks) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |loc: serde_saphyr::Location, field: &str, message: String| {
            out.push(Problem {
                file: file.to_string(),
                line: loc.line(),
                column: loc.column(),
                field: field.to_string(),
                message,
            });
        };
        let unknown = serde_saphyr::Location::UNKNOWN;
        if self.api_version != API_VERSION {
            push(
                unknown,
                "apiVersion",
                format!("expected `{API_VERSION}`, got `{}`", self.api_version),
            );
        }
        if self.kind != "Playbook" {
            push(
                unknown,
                "kind",
                format!("expected `Playbook`, got `{}`", self.kind),
            );
        }
        let name = &self.metadata.name;
        if let Err(e) = check_dns_label(&name.value) {
            push(name.referenced, "metadata.name", e);
        }
        let spec = &self.spec;
        for (field, v) in [
            (
                "spec.virtualService.namespace",
                &spec.virtual_service.namespace,
            ),
            ("spec.virtualService.name", &spec.virtual_service.name),
        ] {
            if let Err(e) = check_dns_subdomain(v) {
                push(unknown, field, e);
            }
        }
        if let Some(r) = &spec.route
            && r.value.trim().is_empty()
        {
            push(r.referenced, "spec.route", "must not be empty".into());
        }
        let check_dest =
            |field: String,
             d: &Destination,
             push: &mut dyn FnMut(serde_saphyr::Location, &str, String)| {
                if let Err(e) = check_host(&d.host.value) {
                    push(d.host.referenced, &format!("{field}.host"), e);
                }
                if let Some(s) = &d.subset
                    && let Err(e) = check_dns_label(&s.value)
                {
                    push(s.referenced, &format!("{field}.subset"), e);
                }
                if let Some(p) = d.port
                    && !(1..=65535).contains(&p)
                {
                    push(
                        d.host.referenced,
                        &format!("{field}.port"),
                        format!("port {p} is not in 1..=65535"),
                    );
                }
            };
        check_dest("spec.primary".into(), &spec.primary, &mut push);
        if spec.failover.value.is_empty() {
            push(
                spec.failover.referenced,
                "spec.failover",
                "must list at least one failover target".into(),
            );
        }
        for (i, d) in spec.failover.value.iter().enumerate() {
            check_dest(format!("spec.failover[{i}]"), d, &mut push);
            if d.host.value == spec.primary.host.value
                && d.subset.as_ref().map(|s| &s.value)
                    == spec.primary.subset.as_ref().map(|s| &s.value)
                && d.port == spec.primary.port
            {
                push(
                    d.host.referenced,
                    &format!("spec.failover[{i}]"),
                    "is the same destination as spec.primary".into(),
                );
            }
        }
        let threshold = &spec.trigger.failure_threshold;
        if threshold.value < 1 {
            push(
                threshold.referenced,
                "spec.trigger.failureThreshold",
                "must be at least 1".into(),
            );
        }
        if let Some(v) = &spec.trigger.vantages
            && v.min.value < 1
        {
            push(
                v.min.referenced,
                "spec.trigger.vantages.min",
                "must be at least 1 (1: this replica's view alone decides)".into(),
            );
        }
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut watched: Vec<Target> = Vec::new();
        let n_failover = spec.failover.value.len();
        for (i, p) in spec.probes.iter().enumerate() {
            let field = format!("spec.probes[{i}]");
            if p.name.value.trim().is_empty() {
                push(
                    p.name.referenced,
                    &format!("{field}.name"),
                    "must not be empty".into(),
                );
            } else if names.insert(&p.name.value, ()).is_some() {
                push(
                    p.name.referenced,
                    &format!("{field}.name"),
                    format!("duplicate signal name `{}`", p.name.value),
                );
            }
            check_target(p.target.value, n_failover)
                .map(|t| watched.push(t))
                .unwrap_or_else(|e| push(p.target.referenced, &format!("{field}.target"), e));
            match (&p.http, &p.tcp, &p.grpc) {
                (Some(h), None, None) => {
                    if let Err(e) = checks.http(h) {
                        push(
                            h.url.referenced,
                            &format!("{field}.http.{}", e.field),
                            e.message,
                        );
                    }
                    if let Some(c) = h.connect_timeout
                        && (c.get().is_zero() || c > p.timeout.value)
                    {
                        push(
                            h.url.referenced,
                            &format!("{field}.http.connectTimeout"),
                            format!(
                                "connectTimeout {c} must be greater than 0s and at most timeout {}",
                                p.timeout.value
                            ),
                        );
                    }
                }
                (None, None, Some(g)) => {
                    if let Err(e) = checks.grpc(g) {
                        push(
                            g.address.referenced,
                            &format!("{field}.grpc.{}", e.field),
                            e.message,
                        );
                    }
                    if let Some(c) = g.connect_timeout
                        && (c.get().is_zero() || c > p.timeout.value)
                    {
                        push(
                            g.address.referenced,
                            &format!("{field}.grpc.connectTimeout"),
                            format!(
                                "connectTimeout {c} must be greater than 0s and at most timeout {}",
                                p.timeout.value
                            ),
                        );
                    }
                }
                (None, Some(t), None) => {
                    if let Err(e) = checks.tcp(t) {
                        push(
                            t.address.referenced,
                            &format!("{field}.tcp.{}", e.field),
                            e.message,
                        );
                    }
                }
                _ => push(
                    p.name.referenced,
                    &field,
                    "needs exactly one of `http`, `tcp`, `grpc`".into(),
                ),
            }
            if p.interval.get().is_zero() {
                push(
                    p.name.referenced,
                    &format!("{field}.interval"),
                    "must be greater than 0s".into(),
                );
            }
            if p.timeout.value.get().is_zero() || p.timeout.value >= p.interval {
                let loc = if p.timeout.referenced == unknown {
                    p.name.referenced
                } else {
                    p.timeout.referenced
                };
                push(
                    loc,
                    &format!("{field}.timeout"),
                    format!(
                        "timeout {} must be greater than 0s and shorter than interval {}",
                        p.timeout.value, p.interval
                    ),
                );
            } else if let Err(e) = p.timeout.value.at_most(duration::bounds::TIMEOUT) {
                push(p.timeout.referenced, &format!("{field}.timeout"), e);
            }
        }
        for (i, s) in spec.slos.iter().enumerate() {
            let field = format!("spec.slos[{i}]");
            if s.name.value.trim().is_empty() {
                push(
                    s.name.referenced,
                    &format!("{field}.name"),
                    "must not be empty".into(),
                );
            } else if names.insert(&s.name.value, ()).is_some() {
                push(
                    s.name.referenced,
                    &format!("{field}.name"),
                    format!("duplicate signal name `{}`", s.name.value),
                );
            }
            check_target(s.target.value, n_failover)
                .map(|t| watched.push(t))
                .unwrap_or_else(|e| push(s.target.referenced, &format!("{field}.target"), e));
            match (&s.prometheus, &s.ratio, &s.scrape) {
                (None, None, Some(sc)) => {
                    check_scrape(sc, s, &field, checks, &mut push);
                }
                (Some(q), None, None) => {
                    if q.query.value.trim().is_empty() {
                        push(
                            q.query.referenced,
                            &format!("{field}.prometheus.query"),
                            "must not be empty".into(),
                        );
                    }
                    match (q.above, q.below) {
                        (Some(v), None) | (None, Some(v)) if v.is_finite() => {}
                        _ => push(
                            q.query.referenced,
                            &format!("{field}.prometheus"),
                            "needs exactly one finite threshold: `above` or `below`".into(),
                        ),
                    }
                }
                (None, Some(r), None) => {
                    if !(r.objective > 0.0 && r.objective < 100.0) {
                        push(
                            r.errors.referenced,
                            &format!("{field}.ratio.objective"),
                            format!(
                                "must be a percentage strictly between 0 and 100, got {}",
                                r.objective
                            ),
                        );
                    }
                    for (what, q) in [("errors", &r.errors), ("total", &r.total)] {
                        if !q.value.contains(WINDOW_PLACEHOLDER) {
                            push(
                                q.referenced,
                                &format!("{field}.ratio.{what}"),
                                format!(
                                    "must contain `{WINDOW_PLACEHOLDER}` where the window goes, e.g. `[{WINDOW_PLACEHOLDER}]`"
                                ),
                            );
                        }
                    }
                    if r.burn_rates.is_empty() {
                        push(
                            r.errors.referenced,
                            &format!("{field}.ratio.burnRates"),
                            "must not be empty".into(),
                        );
                    }
                    for (j, b) in r.burn_rates.iter().enumerate() {
                        if b.short.get().is_zero()
                            || b.short >= b.long
                            || !(b.factor.is_finite() && b.factor > 0.0)
                        {
                            push(
                                r.errors.referenced,
                                &format!("{field}.ratio.burnRates[{j}]"),
                                "needs 0 < short < long and a positive factor".into(),
                            );
                        }
                    }
                }
                _ => push(
                    s.name.referenced,
                    &field,
                    "needs exactly one of `prometheus`, `ratio`, `scrape`".into(),
                ),
            }
            if let Some(u) = &s.server
                && !(u.value.starts_with("http://") || u.value.starts_with("https://"))
            {
                push(
                    u.referenced,
                    &format!("{field}.server"),
                    format!("`{}` is not an http(s) URL", u.value),
                );
            }
            if s.evaluation_interval.get().is_zero() {
                push(
                    s.name.referenced,
                    &format!("{field}.evaluationInterval"),
                    "must be greater than 0s".into(),
                );
            }
            if s.timeout.get().is_zero() || s.timeout >= s.evaluation_interval {
                push(
                    s.name.referenced,
                    &format!("{field}.timeout"),
                    format!(
                        "query timeout {} must be greater than 0s and shorter than evaluationInterval {}",
                        s.timeout, s.evaluation_interval
                    ),
                );
            }
        }
        if !watched.contains(&Target::Primary) {
            push(
                name.referenced,
                "spec.probes",
                "no probe or SLO watches `primary`: failoverd could never notice it failing".into(),
            );
        }
        for i in 0..n_failover {
            if !watched.contains(&Target::Failover(i)) {
                let loc = spec.failover.value[i].host.referenced;
                push(
                    loc,
                    &format!("spec.failover[{i}]"),
                    format!(
                        "no probe or SLO watches `failover[{i}]`: failoverd never routes to a target it cannot see"
                    ),
                );
            }
        }
        let steps = &spec.failback.steps;
        let ok = !steps.value.is_empty()
            && steps.value.last() == Some(&100)
            && steps.value.windows(2).all(|w| w[0] < w[1])
            && steps.value.first().is_some_and(|s| *s >= 1);
        if !ok {
            push(
                steps.referenced,
                "spec.failback.steps",
                format!(
                    "must be strictly increasing percentages in 1..=100 ending at 100, got {:?}",
                    steps.value
                ),
            );
        }
        if steps.value.len() > 1 && spec.failback.step_interval.get().is_zero() {
            push(
                steps.referenced,
                "spec.failback.stepInterval",
                "must be greater than 0s when there is more than one step".into(),
            );
        }
        out.extend(self.residency_problems(file));
        out
    }
}

/// Most evaluations one `scrape` window may span (one sample of two counters is kept for each).
pub const MAX_SCRAPE_SAMPLES: u128 = 10_000;

/// Checks a `scrape` SLO: URL, metric name, matchers, window and threshold.
fn check_scrape(
    sc: &ScrapeSlo,
    s: &SloSpec,
    field: &str,
    checks: &dyn ProbeChecks,
    push: &mut dyn FnMut(serde_saphyr::Location, &str, String),
) {
    let at = sc.url.referenced;
    match url::Url::parse(&sc.url.value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        Ok(u) => push(
            at,
            &format!("{field}.scrape.url"),
            format!(
                "`{}` must be an http:// or https:// URL with a host (got scheme {:?})",
                sc.url.value,
                u.scheme()
            ),
        ),
        Err(e) => push(
            at,
            &format!("{field}.scrape.url"),
            format!("`{}` is not a URL: {e}", sc.url.value),
        ),
    }
    let name = &sc.metric.value;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !name_ok {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.metric"),
            format!("`{name}` is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        );
    }
    for (what, map) in [("matchers", &sc.matchers), ("errorWhen", &sc.error_when)] {
        for (label, value) in map {
            if let Err(message) = checks.matcher(label, value) {
                push(
                    sc.metric.referenced,
                    &format!("{field}.scrape.{what}.{label}"),
                    message,
                );
            }
        }
    }
    if sc.error_when.is_empty() {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.errorWhen"),
            "must name at least one label (e.g. `response_code: \"=~5..\"`): without it every request counts as failed".into(),
        );
    }
    if sc.window.get() < s.evaluation_interval.get().saturating_mul(2) {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.window"),
            format!(
                "window {} must be at least 2 × evaluationInterval ({}): a ratio needs two counter increases",
                sc.window, s.evaluation_interval
            ),
        );
    }
    // One sample per evaluation is kept for the whole window: bound how many.
    let per_window = sc
        .window
        .get()
        .as_nanos()
        .checked_div(s.evaluation_interval.get().as_nanos())
        .unwrap_or(u128::MAX);
    if per_window > MAX_SCRAPE_SAMPLES {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.window"),
            format!(
                "window {} holds {per_window} evaluations of {}; at most {MAX_SCRAPE_SAMPLES} (raise evaluationInterval or shorten the window)",
                sc.window, s.evaluation_interval
            ),
        );
    }
    if !(sc.above.is_finite() && (0.0..1.0).contains(&sc.above)) {
        push(
            sc.metric.referenced,
            &format!("{field}.scrape.above"),
            format!("must be a ratio with 0 ≤ above < 1, got {}", sc.above),
        );
    }
    if let Some(u) = &s.server {
        push(
            u.referenced,
            &format!("{field}.server"),
            "does not apply to `scrape` (the page is read directly, not through Prometheus)".into(),
        );
    }
}

fn check_target(t: Target, n_failover: usize) -> Result<Target, String> {
    match t {
        Target::Failover(i) if i >= n_failover => Err(format!(
            "target `failover[{i}]` does not exist: spec.failover has {n_failover} entr{}",
            if n_failover == 1 { "y" } else { "ies" }
        )),
        t => Ok(t),
    }
}

/// The checks of probe and scrape options that belong to the code that runs them (URL and
/// header syntax, regexes, CA files, addresses, label matchers). They need the network
/// crates, so [`Playbook::validate_with`] asks its caller for them instead of depending on
/// those crates: the daemon passes the probe library's checks.
pub trait ProbeChecks {
    /// Checks an `http` probe's options.
    fn http(&self, check: &HttpCheck) -> Result<(), OptionProblem>;
    /// Checks a `grpc` probe's options.
    fn grpc(&self, check: &GrpcCheck) -> Result<(), OptionProblem>;
    /// Checks a `tcp` probe's options.
    fn tcp(&self, check: &TcpCheck) -> Result<(), OptionProblem>;
    /// Checks one `scrape` label matcher (`value`, `=~regex`, `!=value`, `!~regex`).
    fn matcher(&self, label: &str, value: &str) -> Result<(), String>;
}
