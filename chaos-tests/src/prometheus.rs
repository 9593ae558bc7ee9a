//! A real Prometheus server for the SLO scenarios.
//!
//! [`Prometheus::start`] runs the `prometheus` binary (Debian package `prometheus`; or
//! `PROMETHEUS_BIN`) on a free loopback port with a 1 s scrape and evaluation interval, a
//! temporary configuration and a temporary TSDB directory, scraping the given stand-ins'
//! `/metrics`. It can be killed (SIGKILL) and restarted on the same port with the same TSDB,
//! the way a crashed Prometheus comes back. It is killed when dropped.
//!
//! There is no skipping: when the binary is missing, [`Prometheus::start`] fails with the
//! command that installs it.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use failoverd::slo::{QueryError, Sample, parse_response};
use serde_json::Value;
use tempfile::TempDir;

use crate::{POLL, free_addr, http_get};

/// How long Prometheus may take to become ready (`/-/ready` answers 200), also after a restart
/// (WAL replay).
pub const PROMETHEUS_READY_WITHIN: Duration = Duration::from_secs(30);

/// The message for a missing binary.
const NOT_FOUND: &str = "prometheus not found: install it with `apt-get install -y prometheus` \
                         (scripts/test.sh does this), or point PROMETHEUS_BIN at a binary";

/// The `prometheus` binary: `PROMETHEUS_BIN` when set, else `prometheus` on `PATH`, else
/// `/usr/bin/prometheus`. Fails (with the install command) when there is none.
pub fn prometheus_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("PROMETHEUS_BIN={} does not exist; {NOT_FOUND}", p.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("prometheus"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|p| p.is_file())
        .context(NOT_FOUND)
}

/// The configuration [`Prometheus::start`] writes: 1 s scrape and evaluation, one job
/// `standins` scraping `targets` (`/metrics`).
pub fn config_yaml(targets: &[SocketAddr]) -> String {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: standins\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{list}]\n"
    )
}

/// A running Prometheus (killed on drop).
#[derive(Debug)]
pub struct Prometheus {
    bin: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
    /// Holds `prometheus.yml`, `data/` (the TSDB) and `prometheus.log`.
    dir: TempDir,
    /// Feature flags (`--enable-feature=`), kept across [`Prometheus::restart`].
    features: Vec<String>,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port scraping `targets` every second, with a fresh
    /// TSDB; returns once `/-/ready` answers 200 (at most [`PROMETHEUS_READY_WITHIN`]).
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        Self::start_with_features(targets, &[]).await
    }

    /// [`Prometheus::start`] with feature flags, e.g. `exemplar-storage` (what a dashboard's
    /// exemplars need).
    pub async fn start_with_features(
        targets: &[SocketAddr],
        features: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = prometheus_bin()?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("prometheus.yml"), config_yaml(targets))?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        let mut p = Self {
            bin,
            child: None,
            addr: free_addr()?,
            dir,
            features: features.iter().map(|f| f.to_string()).collect(),
        };
        p.launch()?;
        p.wait_ready(PROMETHEUS_READY_WITHIN).await?;
        Ok(p)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.bin)
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", self.data_dir().display()))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--storage.tsdb.retention.time=1d")
            .args(
                self.features
                    .iter()
                    .map(|f| format!("--enable-feature={f}")),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (what `--prometheus` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The TSDB directory (`--storage.tsdb.path`), kept across [`Prometheus::restart`].
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where Prometheus's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// Prometheus's output, labelled, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- prometheus log ({}) ---\n{}",
            self.log_path().display(),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        )
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until `/-/ready` answers 200; fails early, with the log, when the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(s) = c.try_wait()?
            {
                bail!(
                    "prometheus exited ({s}) before it was ready\n{}",
                    self.logs()
                );
            }
            if self.child.is_none() {
                bail!("prometheus is not running");
            }
            if let Ok((200, _)) = http_get(self.addr, "/-/ready", Duration::from_secs(1)).await {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("prometheus not ready within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL: Prometheus dies without flushing anything (its WAL survives in the TSDB).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if c.try_wait()?.is_none() {
                c.kill().context("killing prometheus")?;
            }
            c.wait()?;
        }
        Ok(())
    }

    /// Starts Prometheus again (killing it first if it runs) on the same port with the same
    /// TSDB directory; returns once it is ready again (WAL replayed).
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        self.kill()?;
        self.launch()?;
        self.wait_ready(PROMETHEUS_READY_WITHIN).await
    }

    /// `GET path` on Prometheus (bounded to 2 s): status code and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addr, path, Duration::from_secs(2)).await
    }

    /// Runs an instant query over `/api/v1/query` and reads it the way failoverd does
    /// ([`parse_response`]): one value, or an error (an empty vector is
    /// [`QueryError::Empty`]).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Result<Sample, QueryError>> {
        let (code, body) = self
            .get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(parse_response(&v, code, false))
    }

    /// Polls `expr` every 200 ms until its value satisfies `pred` (at most `timeout`);
    /// returns the value. The error names the last result.
    pub async fn wait_value(
        &self,
        expr: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        loop {
            let last = match self.query(expr).await {
                Ok(Ok(s)) if pred(s.value) => return Ok(s.value),
                Ok(Ok(s)) => format!("value {}", s.value),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting on `{expr}` (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prometheus's own `/metrics`: the sum of `name`'s series whose labels include every
    /// `(label, value)` in `labels` (see [`sum_series`]).
    pub async fn self_metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (code, body) = self.get("/metrics").await?;
        if code != 200 {
            bail!("GET /metrics on prometheus answered {code}");
        }
        Ok(sum_series(&body, name, labels))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query string).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sums, in Prometheus text exposition (or OpenMetrics) `text`, the samples of the series
/// named exactly `name` whose label block contains each `label="value"` in `labels`.
/// (Enough for the harness's own counters; label values with `"` or `,` are not needed.)
pub fn sum_series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_block, value_part) = if let Some(r) = rest.strip_prefix('{') {
                let (b, v) = r.split_once('}')?;
                (b, v)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            let pairs: Vec<&str> = label_block.split(',').map(str::trim).collect();
            let all = labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
            if !all {
                return None;
            }
            value_part.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Writes `text` to `path` (creating parent directories).
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    File::create(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// A ratio SLO over a stand-in's `istio_requests_total` (errors: `response_code=~"5.."`),
/// evaluated every second with a 500 ms query timeout and one burn-rate pair, as one YAML
/// list item indented for a playbook's `spec.slos` (4 spaces).
pub fn ratio_slo_item(
    name: &str,
    target: &str,
    service: &str,
    objective: f64,
    (long, short, factor): (&str, &str, f64),
) -> String {
    format!(
        "    - name: {name}\n      target: {target}\n      evaluationInterval: 1s\n      \
         timeout: 500ms\n      ratio:\n        objective: {objective}\n        \
         errors: '{errors}'\n        total: '{total}'\n        \
         burnRates: [ {{ long: {long}, short: {short}, factor: {factor} }} ]\n",
        errors = errors_expr(service, "{{window}}"),
        total = total_expr(service, "{{window}}"),
    )
}

/// `sum(rate(istio_requests_total{destination_service="SERVICE",response_code=~"5.."}[WINDOW]))`
pub fn errors_expr(service: &str, window: &str) -> String {
    format!(
        "sum(rate(istio_requests_total{{destination_service=\"{service}\",response_code=~\"5..\"}}[{window}]))"
    )
}

/// `sum(rate(istio_requests_total{destination_service="SERVICE"}[WINDOW]))`
pub fn total_expr(service: &str, window: &str) -> String {
    format!("sum(rate(istio_requests_total{{destination_service=\"{service}\"}}[{window}]))")
}

/// The error ratio of `service` over `window` as one PromQL expression (what a ratio SLO
/// computes from its two queries).
pub fn ratio_expr(service: &str, window: &str) -> String {
    format!(
        "({}) / ({})",
        errors_expr(service, window),
        total_expr(service, window)
    )
}
