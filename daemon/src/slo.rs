//! SLO signals from Prometheus: instant queries over the HTTP API, threshold and
//! multiwindow burn-rate evaluation, and Unknown kept apart from healthy and unhealthy.
//! `scrape` SLOs skip Prometheus: each reads its metrics page directly on its own timer
//! (see [`spawn`]) and reports through the same [`SloResult`] channel.
//!
//! Every SLO is evaluated on a grid aligned to its `evaluationInterval`, so SLOs with the
//! same interval are due in the same tick, and an expression shared by many playbooks is
//! queried once per tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use failover_probes::Outcome;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::playbook::{Loaded, RatioSlo, ScrapeSlo, SloSpec, WINDOW_PLACEHOLDER};

/// Queries in flight at once: enough to finish a tick of a large fleet quickly, few enough
/// not to look like an attack to a shared Prometheus.
const MAX_CONCURRENT_QUERIES: usize = 16;

/// Why a query gave no usable value. Each maps to a bounded metric label.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryError {
    /// Connection refused, DNS, reset.
    Unreachable(String),
    /// No answer within the query timeout.
    Timeout,
    /// HTTP error status without a Prometheus error body.
    Http(u16),
    /// Prometheus refused the expression (`bad_data`): a playbook error, not an outage.
    BadData(String),
    /// Another Prometheus error (`execution`, `timeout`, `unavailable`, ...).
    Prometheus(String),
    /// The result was an empty vector: no series matched.
    Empty,
    /// The vector had more than one series: the expression must aggregate to one value.
    MultipleSeries(usize),
    /// The value was NaN (e.g. 0/0).
    NotANumber,
    /// The value was ±Inf (e.g. x/0), or a rate below zero: no reading to judge by. Unknown,
    /// never healthy: `-Inf` is below every `above` threshold and `errors / +Inf` is 0.
    NotFinite(f64),
    /// The response was not the Prometheus API format.
    Malformed(String),
}

impl QueryError {
    /// Bounded label for `failoverd_signal_unknown_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            QueryError::Unreachable(_) => "unreachable",
            QueryError::Timeout => "timeout",
            QueryError::Http(_) => "http_error",
            QueryError::BadData(_) => "bad_data",
            QueryError::Prometheus(_) => "prometheus_error",
            QueryError::Empty => "empty_result",
            QueryError::MultipleSeries(_) => "multiple_series",
            QueryError::NotANumber => "nan",
            QueryError::NotFinite(_) => "not_finite",
            QueryError::Malformed(_) => "malformed",
        }
    }

    fn retryable(&self) -> bool {
        matches!(
            self,
            QueryError::Unreachable(_) | QueryError::Timeout | QueryError::Http(500..=599)
        )
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Unreachable(e) => write!(f, "Prometheus unreachable: {e}"),
            QueryError::Timeout => f.write_str("Prometheus query timed out"),
            QueryError::Http(s) => write!(f, "Prometheus answered HTTP {s}"),
            QueryError::BadData(e) => write!(f, "Prometheus rejected the query (bad_data): {e}"),
            QueryError::Prometheus(e) => write!(f, "Prometheus error: {e}"),
            QueryError::Empty => f.write_str("empty result (no series)"),
            QueryError::MultipleSeries(n) => {
                write!(f, "query returned {n} series; it must aggregate to one")
            }
            QueryError::NotANumber => f.write_str("value is NaN"),
            QueryError::NotFinite(v) if *v < 0.0 && v.is_finite() => {
                write!(f, "value {v} is negative where a rate was expected")
            }
            QueryError::NotFinite(v) => write!(f, "value is {v}, not a finite number"),
            QueryError::Malformed(e) => write!(f, "unexpected Prometheus response: {e}"),
        }
    }
}

/// One value with the warnings Prometheus attached.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The value (may be ±Inf; NaN is an error).
    pub value: f64,
    /// Prometheus warnings (partial data and the like).
    pub warnings: Vec<String>,
}

/// A Prometheus HTTP API client for instant queries.
#[derive(Clone, Debug)]
pub struct PromClient {
    http: reqwest::Client,
    auth: Option<Auth>,
}

/// Credentials sent with every query.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, not even in a debug log.
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// How failoverd talks to Prometheus (config key `prometheusClient`).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConfig {
    /// File holding a bearer token (re-read at start).
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// HTTP basic authentication.
    pub basic_auth: Option<BasicAuthConfig>,
    /// PEM bundle of CAs to trust for an `https://` Prometheus (in addition to the system's).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Basic-auth settings.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuthConfig {
    /// User name.
    pub username: String,
    /// File holding the password.
    pub password_file: std::path::PathBuf,
}

impl ClientConfig {
    /// Builds the client; every error names the config field.
    pub fn build(&self) -> Result<PromClient, String> {
        let read = |field: &str, p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("prometheusClient.{field}: cannot read {}: {e}", p.display()))
        };
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                format!("prometheusClient.caFile: cannot read {}: {e}", ca.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("prometheusClient.caFile: {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "prometheusClient.caFile: {} holds no PEM certificate",
                    ca.display()
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let auth = match (&self.bearer_token_file, &self.basic_auth) {
            (Some(_), Some(_)) => {
                return Err("prometheusClient: give bearerTokenFile or basicAuth, not both".into());
            }
            (Some(p), None) => Some(Auth::Bearer(read("bearerTokenFile", p)?)),
            (None, Some(b)) => Some(Auth::Basic {
                username: b.username.clone(),
                password: read("basicAuth.passwordFile", &b.password_file)?,
            }),
            (None, None) => None,
        };
        let http = builder
            .build()
            .map_err(|e| format!("prometheusClient: cannot build the HTTP client: {e}"))?;
        Ok(PromClient { http, auth })
    }
}

impl PromClient {
    /// Wraps an HTTP client (one per process; the caller installs the TLS provider).
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, auth: None }
    }

    /// Runs an instant query; `Ok` only for exactly one non-NaN value (scalar or one series).
    /// An empty vector is [`QueryError::Empty`] unless `empty_is_zero`.
    pub async fn query(
        &self,
        server: &str,
        expr: &str,
        timeout: Duration,
        empty_is_zero: bool,
    ) -> Result<Sample, QueryError> {
        // Keep any path prefix (Prometheus behind `--web.route-prefix` or a proxy).
        let base = format!("{}/api/v1/query", server.trim_end_matches('/'));
        let mut url = reqwest::Url::parse(&base)
            .map_err(|e| QueryError::Malformed(format!("bad server URL `{server}`: {e}")))?;
        url.query_pairs_mut().append_pair("query", expr);
        let mut req = self.http.get(url);
        req = match &self.auth {
            Some(Auth::Bearer(t)) => req.bearer_auth(t),
            Some(Auth::Basic { username, password }) => req.basic_auth(username, Some(password)),
            None => req,
        };
        let resp = match tokio::time::timeout(timeout, req.send()).await {
            Err(_) => return Err(QueryError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(QueryError::Timeout),
            Ok(Err(e)) => return Err(QueryError::Unreachable(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let body: Value = match tokio::time::timeout(timeout, resp.json::<Value>()).await {
            Err(_) => return Err(QueryError::Timeout),
            Ok(Ok(v)) => v,
            Ok(Err(_)) if !status.is_success() => return Err(QueryError::Http(status.as_u16())),
            Ok(Err(e)) => return Err(QueryError::Malformed(e.to_string())),
        };
        parse_response(&body, status.as_u16(), empty_is_zero)
    }

    /// Runs a query, retrying once after a transient failure if `budget` leaves room.
    pub async fn query_with_retry(
        &self,
        server: &str,
        expr: &str,
        timeout: Duration,
        budget: Duration,
        empty_is_zero: bool,
    ) -> Result<Sample, QueryError> {
        let start = Instant::now();
        match self.query(server, expr, timeout, empty_is_zero).await {
            Err(e)
                if e.retryable()
                    && start.elapsed() + timeout + Duration::from_millis(100) < budget =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.query(server, expr, timeout, empty_is_zero).await
            }
            r => r,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn parse_value(v: &Value) -> Result<f64, QueryError> {
    let s = v
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| QueryError::Malformed("sample without a string value".into()))?;
    let x: f64 = s
        .parse()
        .map_err(|_| QueryError::Malformed(format!("value `{s}` is not a number")))?;
    if x.is_nan() {
        return Err(QueryError::NotANumber);
    }
    Ok(x)
}

/// Reads an `/api/v1/query` response body.
pub fn parse_response(
    body: &Value,
    http_status: u16,
    empty_is_zero: bool,
) -> Result<Sample, QueryError> {
    let status = body.get("status").and_then(Value::as_str);
    if status == Some("error") {
        let kind = body.get("errorType").and_then(Value::as_str).unwrap_or("");
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Err(if kind == "bad_data" {
            QueryError::BadData(msg)
        } else {
            QueryError::Prometheus(format!("{kind}: {msg}"))
        });
    }
    if status != Some("success") {
        return Err(if (200..300).contains(&http_status) {
            QueryError::Malformed("no `status: success`".into())
        } else {
            QueryError::Http(http_status)
        });
    }
    let warnings = body
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let data = body
        .get("data")
        .ok_or_else(|| QueryError::Malformed("no data".into()))?;
    let value = match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => parse_value(data.get("result").unwrap_or(&Value::Null))?,
        Some("vector") => {
            let result = data
                .get("result")
                .and_then(Value::as_array)
                .ok_or_else(|| QueryError::Malformed("vector without result".into()))?;
            match result.as_slice() {
                [] if empty_is_zero => 0.0,
                [] => return Err(QueryError::Empty),
                [one] => parse_value(one.get("value").unwrap_or(&Value::Null))?,
                many => return Err(QueryError::MultipleSeries(many.len())),
            }
        }
        other => {
            return Err(QueryError::Malformed(format!(
                "result type {} (expected scalar or vector)",
                other.unwrap_or("none")
            )));
        }
    };
    Ok(Sample { value, warnings })
}

/// Formats a window the way PromQL writes durations (`30s`, `5m`, `1h30m`).
pub fn promql_duration(d: Duration) -> String {
    let mut secs = d.as_secs().max(1);
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= n {
            out.push_str(&format!("{}{unit}", secs / n));
            secs %= n;
        }
    }
    out
}

/// The query for one window of a ratio SLO expression.
pub fn windowed(expr: &str, window: Duration) -> String {
    expr.replace(WINDOW_PLACEHOLDER, &promql_duration(window))
}

/// Every query an SLO needs: (expression, empty-is-zero).
pub fn queries(slo: &SloSpec) -> Vec<(String, bool)> {
    if let Some(p) = &slo.prometheus {
        return vec![(p.query.value.clone(), false)];
    }
    let Some(r) = &slo.ratio else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in &r.burn_rates {
        for w in [b.long.get(), b.short.get()] {
            // No error series at all is zero errors; no *total* series is no data.
            let e = (windowed(&r.errors.value, w), true);
            let t = (windowed(&r.total.value, w), false);
            for q in [e, t] {
                if !out.contains(&q) {
                    out.push(q);
                }
            }
        }
    }
    out
}

/// The verdict of one evaluation, with the values that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Healthy, Unhealthy(explanation) or Unknown(reason).
    pub outcome: Outcome,
    /// The values seen, e.g. "error ratio 0.31 over 5m and 0.22 over 1h (limit 14.4 × 0.001)".
    pub detail: String,
    /// Bounded reason label when Unknown.
    pub unknown_label: Option<&'static str>,
}

fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.01 && x.abs() < 1e6 {
        format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.3e}")
    }
}

fn unknown(e: &QueryError, what: &str) -> Evaluation {
    Evaluation {
        outcome: Outcome::Unknown(format!("{what}: {e}")),
        detail: String::new(),
        unknown_label: Some(e.label()),
    }
}

/// Judges an SLO from query results (pure).
pub fn evaluate(
    slo: &SloSpec,
    results: &HashMap<String, Result<Sample, QueryError>>,
) -> Evaluation {
    let get = |q: &str| {
        results
            .get(q)
            .cloned()
            .unwrap_or(Err(QueryError::Malformed("not queried".into())))
    };
    if let Some(p) = &slo.prometheus {
        return match get(&p.query.value) {
            Err(e) => unknown(&e, "query"),
            // ±Inf would compare as a breach or as healthy depending on its sign and the
            // threshold's direction: neither is a measurement.
            Ok(s) if !s.value.is_finite() => unknown(&QueryError::NotFinite(s.value), "query"),
            Ok(s) => {
                let (breach, cmp, limit) = match (p.above, p.below) {
                    (Some(a), _) => (s.value > a, "above", a),
                    (_, Some(b)) => (s.value < b, "below", b),
                    _ => (false, "?", f64::NAN),
                };
                let detail = format!(
                    "value {} ({} {cmp} {})",
                    fmt_num(s.value),
                    if breach { "is" } else { "not" },
                    fmt_num(limit)
                );
                Evaluation {
                    outcome: if breach {
                        Outcome::Unhealthy(detail.clone())
                    } else {
                        Outcome::Healthy
                    },
                    detail,
                    unknown_label: None,
                }
            }
        };
    }
    let Some(r) = &slo.ratio else {
        return Evaluation {
            outcome: Outcome::Unknown("no SLO form".into()),
            detail: String::new(),
            unknown_label: Some("malformed"),
        };
    };
    evaluate_ratio(r, &get)
}

fn evaluate_ratio(r: &RatioSlo, get: &dyn Fn(&str) -> Result<Sample, QueryError>) -> Evaluation {
    let budget = 1.0 - r.objective / 100.0;
    // Rates are finite and non-negative; anything else (±Inf, a negative rate from a foreign
    // expression) is no reading, so Unknown: `errors / +Inf` would read as 0, i.e. healthy.
    let rate = |q: String| -> Result<f64, QueryError> {
        let v = get(&q)?.value;
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(QueryError::NotFinite(v))
        }
    };
    let ratio = |w: Duration| -> Result<f64, QueryError> {
        let errors = rate(windowed(&r.errors.value, w))?;
        let total = rate(windowed(&r.total.value, w))?;
        // No traffic in the window: nothing failed.
        let ratio = if total == 0.0 { 0.0 } else { errors / total };
        if ratio.is_finite() {
            Ok(ratio)
        } else {
            Err(QueryError::NotFinite(ratio))
        }
    };
    let mut parts = Vec::new();
    let mut first_unknown: Option<Evaluation> = None;
    let mut breach: Option<String> = None;
    for b in &r.burn_rates {
        let (long, short) = (ratio(b.long.get()), ratio(b.short.get()));
        let limit = b.factor * budget;
        match (long, short) {
            (Ok(l), Ok(s)) => {
                let text = format!(
                    "error ratio {} over {} and {} over {} (limit {} × {})",
                    fmt_num(s),
                    promql_duration(b.short.get()),
                    fmt_num(l),
                    promql_duration(b.long.get()),
                    fmt_num(b.factor),
                    fmt_num(budget)
                );
                if l > limit && s > limit && breach.is_none() {
                    breach = Some(format!("{text}: both windows above"));
                }
                parts.push(text);
            }
            (Err(e), _) | (_, Err(e)) => {
                first_unknown.get_or_insert_with(|| {
                    unknown(
                        &e,
                        &format!(
                            "burn rate {}/{}",
                            promql_duration(b.long.get()),
                            promql_duration(b.short.get())
                        ),
                    )
                });
            }
        }
    }
    let detail = parts.join("; ");
    match (breach, first_unknown) {
        (Some(b), _) => Evaluation {
            outcome: Outcome::Unhealthy(b),
            detail,
            unknown_label: None,
        },
        (None, Some(mut u)) => {
            u.detail = detail;
            u
        }
        (None, None) => Evaluation {
            outcome: Outcome::Healthy,
            detail,
            unknown_label: None,
        },
    }
}

/// One SLO evaluation result for the controller.
#[derive(Clone, Debug)]
pub struct SloResult {
    /// Playbook index.
    pub playbook: usize,
    /// SLO index within the playbook.
    pub slo: usize,
    /// The evaluation.
    pub eval: Evaluation,
    /// When it finished.
    pub at: Instant,
}

struct Entry {
    playbook: usize,
    slo: usize,
    spec: SloSpec,
    server: String,
    interval: Duration,
    next: Instant,
}

/// The Prometheus server each SLO uses (its own `server`, else the default); always None
/// for a `scrape` SLO, which needs none (see [`needs_server`]).
pub fn server_for(slo: &SloSpec, default: Option<&str>) -> Option<String> {
    if slo.scrape.is_some() {
        return None;
    }
    slo.server
        .as_ref()
        .map(|s| s.value.clone())
        .or_else(|| default.map(String::from))
}

/// Whether an SLO is read through Prometheus (and so needs a server).
pub fn needs_server(slo: &SloSpec) -> bool {
    slo.scrape.is_none()
}

/// Spawns the SLO evaluators: one task for every Prometheus SLO, one per `scrape` SLO.
/// Returns None when no playbook has SLOs; the handle finishes once all have stopped.
pub fn spawn(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: PromClient,
    tx: mpsc::Sender<SloResult>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut scrapes = tokio::task::JoinSet::new();
    for (pi, l) in playbooks.iter().enumerate() {
        for (si, s) in l.playbook.spec.slos.iter().enumerate() {
            if s.scrape.is_some() {
                scrapes.spawn(run_scrape(pi, si, s.clone(), tx.clone(), shutdown.clone()));
            }
        }
    }
    let prom = spawn_prometheus(playbooks, default_server, client, tx, shutdown);
    if prom.is_none() && scrapes.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        if let Some(p) = prom {
            let _ = p.await;
        }
        while scrapes.join_next().await.is_some() {}
    }))
}

/// Bounded label for `failoverd_signal_unknown_total{reason}` from a scrape SLO's reason.
fn scrape_unknown_label(reason: &str) -> &'static str {
    if reason.starts_with("scrape") {
        "scrape_failed"
    } else if reason.starts_with("series vanished") {
        "series_vanished"
    } else if reason.starts_with("no series match") {
        "empty_result"
    } else if reason.starts_with("no requests") {
        "no_traffic"
    } else if reason.starts_with("first scrape") || reason.starts_with("too few samples") {
        "too_few_samples"
    } else if reason.ends_with("not a counter reading")
        || reason.starts_with("counter increases overflow")
    {
        // The same label as a Prometheus value that is ±Inf.
        "not_finite"
    } else {
        "malformed"
    }
}

/// Builds the error-ratio signal of a scrape SLO: requests are the `metric` series that
/// `matchers` select, failures those that `errorWhen` also selects; the window is counted in
/// scrape intervals, and at least two must be in it before there is a verdict.
pub fn scrape_signal(
    sc: &ScrapeSlo,
    interval: Duration,
) -> Result<failover_probes::scrape::ErrorRatio, String> {
    use failover_probes::scrape::{ErrorRatio, Matcher, Selector};
    let parse = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(l, v)| Matcher::parse(l, v).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
    };
    let total = Selector {
        name: sc.metric.value.clone(),
        matchers: parse(&sc.matchers)?,
    };
    let mut errors = total.clone();
    errors.matchers.extend(parse(&sc.error_when)?);
    let interval_nanos = interval.as_nanos().max(1);
    let intervals = usize::try_from(sc.window.get().as_nanos().div_ceil(interval_nanos))
        .unwrap_or(usize::MAX)
        .max(2);
    Ok(ErrorRatio::new(errors, total, intervals, sc.above).with_min_intervals(2))
}

/// Scrapes one `scrape` SLO's page every `evaluationInterval` until shutdown, judging each
/// scrape into an [`SloResult`]. A failed scrape, a vanished series, too few samples or no
/// traffic are Unknown: never healthy, never zero.
async fn run_scrape(
    playbook: usize,
    slo: usize,
    spec: SloSpec,
    tx: mpsc::Sender<SloResult>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(sc) = spec.scrape.as_ref() else {
        return;
    };
    let interval = spec.evaluation_interval.get().max(Duration::from_millis(1));
    let timeout = spec.timeout.get();
    let window = promql_duration(sc.window.get());
    let send = |eval: Evaluation| SloResult {
        playbook,
        slo,
        eval,
        at: Instant::now(),
    };
    let unknown_eval = |reason: String| Evaluation {
        unknown_label: Some(scrape_unknown_label(&reason)),
        outcome: Outcome::Unknown(reason),
        detail: String::new(),
    };
    // The same shared client as the probes: no pooling (a pooled connection could hide a
    // dead listener), no proxy, no redirects; never Prometheus's credentials.
    let (client, mut signal) = match (failover_probes::http_client(), scrape_signal(sc, interval)) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) => {
            let _ = tx.send(send(unknown_eval(format!("scrape: {e}")))).await;
            return;
        }
        (_, Err(e)) => {
            let _ = tx.send(send(unknown_eval(format!("malformed: {e}")))).await;
            return;
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        let eval = match failover_probes::scrape::scrape(&client, &sc.url.value, timeout).await {
            Err(reason) => unknown_eval(reason),
            Ok((samples, _)) => match signal.observe(&samples) {
                (Outcome::Unknown(reason), _) => unknown_eval(reason),
                (outcome, ratio) => Evaluation {
                    outcome,
                    detail: format!(
                        "error ratio {} over {window} (limit {})",
                        ratio.map(fmt_num).unwrap_or_default(),
                        fmt_num(sc.above)
                    ),
                    unknown_label: None,
                },
            },
        };
        if tx.send(send(eval)).await.is_err() {
            return;
        }
    }
}

/// Spawns the Prometheus evaluator. Returns None when no SLO reads Prometheus.
fn spawn_prometheus(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: PromClient,
    tx: mpsc::Sender<SloResult>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let start = Instant::now();
    let mut entries: Vec<Entry> = Vec::new();
    for (pi, l) in playbooks.iter().enumerate() {
        for (si, s) in l.playbook.spec.slos.iter().enumerate() {
            let Some(server) = server_for(s, default_server) else {
                continue;
            };
            entries.push(Entry {
                playbook: pi,
                slo: si,
                spec: s.clone(),
                server,
                interval: s.evaluation_interval.get(),
                next: start,
            });
        }
    }
    if entries.is_empty() {
        return None;
    }
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES));
    Some(tokio::spawn(async move {
        loop {
            let Some(due_at) = entries.iter().map(|e| e.next).min() else {
                return;
            };
            tokio::select! {
                _ = shutdown.changed() => { if *shutdown.borrow() { return; } continue; }
                _ = tokio::time::sleep_until(due_at) => {}
            }
            let now = Instant::now();
            let due: Vec<usize> = (0..entries.len())
                .filter(|i| entries[*i].next <= now)
                .collect();
            // Deduplicate: one query per (server, expression) per tick.
            let mut wanted: HashMap<(String, String), (bool, Duration, Duration)> = HashMap::new();
            for &i in &due {
                let e = &entries[i];
                for (q, zero) in queries(&e.spec) {
                    let slot = wanted.entry((e.server.clone(), q)).or_insert((
                        zero,
                        e.spec.timeout.get(),
                        e.interval,
                    ));
                    slot.1 = slot.1.max(e.spec.timeout.get());
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for ((server, q), (zero, timeout, budget)) in wanted {
                let client = client.clone();
                let sem = sem.clone();
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let r = client
                        .query_with_retry(&server, &q, timeout, budget, zero)
                        .await;
                    ((server, q), r)
                });
            }
            let mut results: HashMap<(String, String), Result<Sample, QueryError>> = HashMap::new();
            while let Some(r) = set.join_next().await {
                if let Ok((k, v)) = r {
                    results.insert(k, v);
                }
            }
            for &i in &due {
                let e = &mut entries[i];
                let per: HashMap<String, Result<Sample, QueryError>> = queries(&e.spec)
                    .into_iter()
                    .filter_map(|(q, _)| {
                        results
                            .get(&(e.server.clone(), q.clone()))
                            .map(|r| (q, r.clone()))
                    })
                    .collect();
                let eval = evaluate(&e.spec, &per);
                // Stay on the grid (start + k × interval) so equal intervals share ticks.
                while e.next <= now {
                    e.next += e.interval;
                }
                let r = SloResult {
                    playbook: e.playbook,
                    slo: e.slo,
                    eval,
                    at: Instant::now(),
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// Checks every query of every SLO against a live Prometheus (for `validate --prometheus`).
/// Returns `(playbook, slo, problem)` for each query Prometheus rejects or cannot run.
pub async fn check_live(
    playbooks: &[Loaded],
    default_server: Option<&str>,
    client: &PromClient,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in playbooks {
        for s in l.playbook.spec.slos.iter().filter(|s| needs_server(s)) {
            let Some(server) = server_for(s, default_server) else {
                out.push((
                    l.playbook.name().to_string(),
                    s.name.value.clone(),
                    "no Prometheus server: set `server` or pass --prometheus".into(),
                ));
                continue;
            };
            for (q, zero) in queries(s) {
                // Empty, NaN or many series are run-time conditions (no traffic yet, a
                // label not present); only a refused or unrunnable query is a playbook problem.
                let r = client
                    .query(&server, &q, Duration::from_secs(5), zero)
                    .await;
                if let Err(
                    e @ (QueryError::BadData(_)
                    | QueryError::Unreachable(_)
                    | QueryError::Timeout
                    | QueryError::Http(_)
                    | QueryError::Prometheus(_)
                    | QueryError::Malformed(_)),
                ) = r
                {
                    out.push((
                        l.playbook.name().to_string(),
                        s.name.value.clone(),
                        format!("{e}; query: {q}"),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// Ensures vector, scalar, empty, multi-series, NaN, ±Inf, warnings and error bodies are
    /// each read correctly.
    #[test]
    fn parses_prometheus_responses() {
        let vec1 = json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"0.25"]}]},"warnings":["partial"]});
        assert_eq!(
            parse_response(&vec1, 200, false),
            Ok(Sample {
                value: 0.25,
                warnings: vec!["partial".into()]
            })
        );
        let scalar =
            json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"+Inf"]}});
        assert_eq!(
            parse_response(&scalar, 200, false).unwrap().value,
            f64::INFINITY
        );
        let empty = json!({"status":"success","data":{"resultType":"vector","result":[]}});
        assert_eq!(parse_response(&empty, 200, false), Err(QueryError::Empty));
        assert_eq!(parse_response(&empty, 200, true).unwrap().value, 0.0);
        let nan = json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"NaN"]}]}});
        assert_eq!(
            parse_response(&nan, 200, false),
            Err(QueryError::NotANumber)
        );
        let two = json!({"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}});
        assert_eq!(
            parse_response(&two, 200, false),
            Err(QueryError::MultipleSeries(2))
        );
        let bad = json!({"status":"error","errorType":"bad_data","error":"parse error"});
        assert!(matches!(
            parse_response(&bad, 400, false),
            Err(QueryError::BadData(_))
        ));
        assert_eq!(
            parse_response(&json!(null), 502, false),
            Err(QueryError::Http(502))
        );
        let matrix = json!({"status":"success","data":{"resultType":"matrix","result":[]}});
        assert!(matches!(
            parse_response(&matrix, 200, false),
            Err(QueryError::Malformed(_))
        ));
    }

    /// Ensures windows are written the way PromQL reads them.
    #[test]
    fn windows() {
        assert_eq!(promql_duration(Duration::from_secs(300)), "5m");
        assert_eq!(promql_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(promql_duration(Duration::from_secs(6 * 3600)), "6h");
        assert_eq!(
            windowed("rate(x[{{window}}])", Duration::from_secs(30)),
            "rate(x[30s])"
        );
    }

    fn ratio_slo() -> SloSpec {
        let y = r#"
name: budget
target: primary
ratio:
  objective: 99.9
  errors: 'sum(rate(e[{{window}}]))'
  total: 'sum(rate(t[{{window}}]))'
  burnRates: [ { long: 1h, short: 5m, factor: 14.4 } ]
"#;
        serde_saphyr::from_str(y).unwrap()
    }

    fn results(
        pairs: &[(&str, Result<f64, QueryError>)],
    ) -> HashMap<String, Result<Sample, QueryError>> {
        pairs
            .iter()
            .map(|(q, r)| {
                (
                    q.to_string(),
                    r.clone().map(|value| Sample {
                        value,
                        warnings: vec![],
                    }),
                )
            })
            .collect()
    }

    /// Ensures a non-finite reading is Unknown with a reason, never Healthy (nor a breach on
    /// a value that is no measurement): ±Inf against either threshold direction, ±Inf or a
    /// negative rate in either part of a ratio.
    #[test]
    fn non_finite_values_are_unknown() {
        let threshold = |dir: &str| -> SloSpec {
            serde_saphyr::from_str(&format!(
                "name: lat\ntarget: primary\nprometheus: {{ query: q, {dir}: 0.5 }}\n"
            ))
            .unwrap()
        };
        for dir in ["above", "below"] {
            let slo = threshold(dir);
            for v in [f64::INFINITY, f64::NEG_INFINITY] {
                let e = evaluate(&slo, &results(&[("q", Ok(v))]));
                assert!(
                    matches!(&e.outcome, Outcome::Unknown(r) if r.contains("not a finite number")),
                    "{dir} {v}: {e:?}"
                );
                assert_eq!(e.unknown_label, Some("not_finite"));
            }
            // A finite value is still judged.
            let e = evaluate(&slo, &results(&[("q", Ok(0.7))]));
            assert_eq!(
                matches!(e.outcome, Outcome::Unhealthy(_)),
                dir == "above",
                "{e:?}"
            );
        }
        let slo = ratio_slo();
        let queries = [
            "sum(rate(e[1h]))",
            "sum(rate(t[1h]))",
            "sum(rate(e[5m]))",
            "sum(rate(t[5m]))",
        ];
        for bad in [f64::INFINITY, f64::NEG_INFINITY, -3.0] {
            for q in queries {
                let pairs: Vec<(&str, Result<f64, QueryError>)> = queries
                    .iter()
                    .map(|k| (*k, Ok(if *k == q { bad } else { 10.0 })))
                    .collect();
                let e = evaluate(&slo, &results(&pairs));
                assert!(
                    matches!(&e.outcome, Outcome::Unknown(r) if r.contains(&bad.to_string())),
                    "{q} = {bad}: {e:?}"
                );
                assert_eq!(e.unknown_label, Some("not_finite"), "{q} = {bad}");
            }
        }
        // A scrape SLO's non-counter value is counted under the same label.
        use failover_probes::exposition::{Format, parse};
        use failover_probes::scrape::{CounterTracker, Selector};
        let mut t = CounterTracker::new(Selector {
            name: "rq_total".into(),
            matchers: vec![],
        });
        let page = parse("rq_total{code=\"500\"} +Inf\n", Format::PrometheusText).unwrap();
        let reason = t.observe(&page).unwrap_err();
        assert_eq!(scrape_unknown_label(&reason), "not_finite", "{reason}");
    }

    /// Ensures the multiwindow rule: both windows above factor × budget is a breach; a short
    /// spike alone is not; missing total data is Unknown, not healthy; no traffic is healthy.
    #[test]
    fn burn_rate_rule() {
        let slo = ratio_slo();
        let (e1h, t1h, e5m, t5m) = (
            "sum(rate(e[1h]))",
            "sum(rate(t[1h]))",
            "sum(rate(e[5m]))",
            "sum(rate(t[5m]))",
        );
        let both = evaluate(
            &slo,
            &results(&[
                (e1h, Ok(31.0)),
                (t1h, Ok(100.0)),
                (e5m, Ok(22.0)),
                (t5m, Ok(100.0)),
            ]),
        );
        assert!(
            matches!(&both.outcome, Outcome::Unhealthy(r) if r.contains("0.22 over 5m") && r.contains("0.31 over 1h")),
            "{both:?}"
        );
        let spike = evaluate(
            &slo,
            &results(&[
                (e1h, Ok(1.0)),
                (t1h, Ok(100.0)),
                (e5m, Ok(50.0)),
                (t5m, Ok(100.0)),
            ]),
        );
        assert_eq!(spike.outcome, Outcome::Healthy, "{spike:?}");
        let down = evaluate(
            &slo,
            &results(&[
                (e1h, Ok(1.0)),
                (t1h, Err(QueryError::Unreachable("refused".into()))),
                (e5m, Ok(1.0)),
                (t5m, Ok(100.0)),
            ]),
        );
        assert!(matches!(down.outcome, Outcome::Unknown(_)));
        assert_eq!(down.unknown_label, Some("unreachable"));
        let idle = evaluate(
            &slo,
            &results(&[
                (e1h, Ok(0.0)),
                (t1h, Ok(0.0)),
                (e5m, Ok(0.0)),
                (t5m, Ok(0.0)),
            ]),
        );
        assert_eq!(idle.outcome, Outcome::Healthy);
        assert_eq!(queries(&slo).len(), 4);
    }
}

#[cfg(test)]
mod client_tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::get;

    use super::*;

    /// Ensures configured credentials reach Prometheus: a bearer token from its file, or basic
    /// auth; and that both at once, or an unreadable file, are refused naming the field.
    #[tokio::test]
    async fn sends_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/api/v1/query",
            get(move |h: HeaderMap| {
                let s2 = s2.clone();
                async move {
                    let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    s2.lock().unwrap().push(auth);
                    axum::Json(serde_json::json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"1"]}}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let bearer = ClientConfig {
            bearer_token_file: Some(token.clone()),
            ..ClientConfig::default()
        };
        let basic = ClientConfig {
            basic_auth: Some(BasicAuthConfig {
                username: "prom".into(),
                password_file: token.clone(),
            }),
            ..ClientConfig::default()
        };
        for c in [bearer, basic] {
            let v = c
                .build()
                .unwrap()
                .query(&url, "1", Duration::from_secs(2), false)
                .await
                .unwrap();
            assert_eq!(v.value, 1.0);
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "Bearer s3cret".to_string(),
                "Basic cHJvbTpzM2NyZXQ=".to_string()
            ]
        );
        let both = ClientConfig {
            bearer_token_file: Some(token.clone()),
            basic_auth: Some(BasicAuthConfig {
                username: "x".into(),
                password_file: token,
            }),
            ..ClientConfig::default()
        };
        assert!(both.build().unwrap_err().contains("not both"));
        let missing = ClientConfig {
            bearer_token_file: Some(dir.path().join("nope")),
            ..ClientConfig::default()
        };
        assert!(
            missing
                .build()
                .unwrap_err()
                .contains("prometheusClient.bearerTokenFile")
        );
        let bad_ca = ClientConfig {
            ca_file: Some(dir.path().join("nope.pem")),
            ..ClientConfig::default()
        };
        assert!(
            bad_ca
                .build()
                .unwrap_err()
                .contains("prometheusClient.caFile")
        );
    }
}

#[cfg(test)]
mod scrape_tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::get;

    use super::*;
    use crate::playbook::Validate;
    use crate::playbook::{Loaded, parse};

    fn playbook(url: &str) -> Loaded {
        let text = format!(
            "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: pb }}\nspec:\n  \
             virtualService: {{ namespace: ns, name: web }}\n  \
             primary: {{ host: web.ns.svc.cluster.local }}\n  \
             failover:\n    - {{ host: web.dr.svc.cluster.local }}\n  \
             probes:\n    - {{ name: dr, target: \"failover[0]\", tcp: {{ address: \"web.dr:80\" }} }}\n  \
             slos:\n    - name: sidecar\n      target: primary\n      evaluationInterval: 100ms\n      \
             timeout: 90ms\n      scrape:\n        url: {url}\n        metric: reqs_total\n        \
             matchers: {{ svc: '=~web.*' }}\n        errorWhen: {{ code: '=~5..' }}\n        \
             window: 200ms\n        above: 0.1\n"
        );
        let playbook = parse("pb.yaml", &text).unwrap();
        assert_eq!(playbook.validate("pb.yaml"), vec![]);
        Loaded {
            file: "pb.yaml".into(),
            playbook,
        }
    }

    /// Ensures bad scrape SLOs are refused naming the field and line.
    #[test]
    fn scrape_validation() {
        let good = playbook("http://127.0.0.1:9/metrics");
        let text = serde_json::to_string(&good.playbook).unwrap();
        assert!(text.contains("errorWhen"));
        let base = |url: &str, extra: (&str, &str)| {
            let t = format!(
                "apiVersion: failoverd.dev/v1alpha1\nkind: Playbook\nmetadata: {{ name: pb }}\nspec:\n  \
                 virtualService: {{ namespace: ns, name: web }}\n  \
                 primary: {{ host: web.ns.svc.cluster.local }}\n  \
                 failover:\n    - {{ host: web.dr.svc.cluster.local }}\n  \
                 probes:\n    - {{ name: dr, target: \"failover[0]\", tcp: {{ address: \"web.dr:80\" }} }}\n  \
                 slos:\n    - name: sidecar\n      target: primary\n      scrape:\n        url: {url}\n        \
                 metric: reqs_total\n        errorWhen: {{ code: '=~5..' }}\n        window: 30s\n        above: 0.1\n"
            )
            .replacen(extra.0, extra.1, 1);
            parse("pb.yaml", &t).unwrap().validate("pb.yaml")
        };
        for (url, extra, field) in [
            ("ftp://x/m", ("", ""), "spec.slos[0].scrape.url"),
            (
                "http://x/m",
                ("metric: reqs_total", "metric: 'reqs total'"),
                "spec.slos[0].scrape.metric",
            ),
            (
                "http://x/m",
                ("code: '=~5..'", "code: '=~(5'"),
                "spec.slos[0].scrape.errorWhen.code",
            ),
            (
                "http://x/m",
                ("window: 30s", "window: 9s"),
                "spec.slos[0].scrape.window",
            ),
            (
                "http://x/m",
                ("above: 0.1", "above: 1.5"),
                "spec.slos[0].scrape.above",
            ),
            (
                "http://x/m",
                (
                    "      scrape:",
                    "      server: http://prom:9090\n      scrape:",
                ),
                "spec.slos[0].server",
            ),
        ] {
            let found = base(url, extra);
            assert!(
                found.iter().any(|p| p.field == field && p.line > 0),
                "{field}: {found:?}"
            );
        }
        assert_eq!(base("http://x/m", ("", "")), vec![]);
    }

    /// Ensures a scrape SLO reports through the SLO channel: Unknown until two intervals
    /// are in the window, then healthy at 0 % and unhealthy at 50 % errors, Unknown (never
    /// healthy) when a counted series vanishes or the page cannot be read.
    #[tokio::test]
    async fn scrape_slo_results() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // (ok, errors, include the ok series)
        let page: Arc<Mutex<(u64, u64, bool)>> = Arc::new(Mutex::new((0, 0, true)));
        let p2 = page.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let p2 = p2.clone();
                async move {
                    let mut p = p2.lock().unwrap();
                    let mut text = String::new();
                    if p.2 {
                        text.push_str(&format!("reqs_total{{svc=\"web\",code=\"200\"}} {}\n", p.0));
                    }
                    text.push_str(&format!("reqs_total{{svc=\"web\",code=\"503\"}} {}\n", p.1));
                    text.push_str("reqs_total{svc=\"other\",code=\"503\"} 1000000\n");
                    // Traffic moves on between scrapes: 100 requests per scrape.
                    p.0 += 100;
                    text
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let (tx, mut rx) = mpsc::channel(64);
        let (stop_tx, stop) = watch::channel(false);
        let task = spawn(
            &[playbook(&url)],
            None,
            PromClient::new(reqwest::Client::new()),
            tx,
            stop,
        )
        .unwrap();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .eval
        };
        let first = next().await;
        assert_eq!(first.unknown_label, Some("too_few_samples"), "{first:?}");
        // Bounded: a healthy verdict must come within a few scrapes.
        let mut seen_healthy = false;
        for _ in 0..20 {
            let e = next().await;
            if e.outcome == Outcome::Healthy {
                seen_healthy = true;
                break;
            }
            assert!(matches!(e.outcome, Outcome::Unknown(_)), "{e:?}");
        }
        assert!(seen_healthy);
        // Errors: 100 more 503s per scrape against 100 more 200s → 50 %.
        {
            let p3 = page.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    p3.lock().unwrap().1 += 100;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        let mut seen_unhealthy = false;
        for _ in 0..20 {
            let e = next().await;
            if let Outcome::Unhealthy(r) = &e.outcome {
                assert!(r.contains("error ratio"), "{r}");
                seen_unhealthy = true;
                break;
            }
        }
        assert!(seen_unhealthy);
        page.lock().unwrap().2 = false;
        let mut seen_vanished = false;
        for _ in 0..20 {
            let e = next().await;
            if e.unknown_label == Some("series_vanished") {
                seen_vanished = true;
                break;
            }
        }
        assert!(seen_vanished);
        server.abort();
        let _ = server.await;
        let mut seen_failed = false;
        for _ in 0..20 {
            let e = next().await;
            assert_ne!(e.outcome, Outcome::Healthy, "{e:?}");
            if e.unknown_label == Some("scrape_failed") {
                seen_failed = true;
                break;
            }
        }
        assert!(seen_failed);
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
