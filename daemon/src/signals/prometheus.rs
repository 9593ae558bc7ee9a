//! The Prometheus HTTP API client: instant queries, credentials, and the response read into a
//! number or a clear error.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

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

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

pub(super) fn parse_value(v: &Value) -> Result<f64, QueryError> {
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
