//! OTLP traces of decisions and moves (`tracing:` in the config, or `OTEL_*` variables).
//!
//! Off by default. When on, spans named `failoverd.*` (and only those) go to an OpenTelemetry
//! layer beside the log output; finished spans wait in a bounded queue and one thread of
//! their own exports them, so a collector that is down, slow or refusing never slows a
//! decision or a write: a full queue or a failed export drops spans and counts them in
//! `failoverd_trace_spans_dropped_total`. Decisions that move or refuse (`failoverd.decide`),
//! drills and mutating API calls are always sampled; other roots follow `sampleRatio`.
//!
//! The spans are at the TRACE level: with tracing off no layer wants them, so they cost
//! nothing and the log output is as before (the log filter never sees them unless it asks
//! for TRACE); with tracing on, the OpenTelemetry layer takes them by name.
//!
//! The trace of a move is linked from its audit record (`traceId`), the VirtualService
//! annotation [`ANNOTATION`] (W3C `traceparent`), the Kubernetes Event and the webhook body.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The VirtualService annotation holding the W3C `traceparent` of the write that set it.
pub const ANNOTATION: &str = "failoverd.dev/traceparent";

/// Finished spans waiting for export at most; more are dropped (and counted).
pub const QUEUE: usize = 2048;
/// Spans sent in one export request at most.
const BATCH: usize = 512;
/// A partial batch waits at most this long: a failover's trace reaches the collector within
/// about a second.
const LINGER: Duration = Duration::from_millis(500);

/// `failoverd_trace_spans_dropped_total`: one process-wide counter (the exporter starts
/// before the metrics registry exists), registered by [`crate::metrics::Metrics::new`].
pub static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// `tracing:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// Where spans go; tracing is on when an endpoint is set here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: Option<OtlpConfig>,
    /// Share of root spans sampled (0..=1, default 1); moves and refusals always are.
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans (default `OTEL_SERVICE_NAME`, else `failoverd`).
    pub service_name: Option<String>,
}

/// `tracing.otlp:` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpConfig {
    /// Collector URL, e.g. `http://otel-collector.monitoring:4318` (http/protobuf: spans
    /// are posted to `<endpoint>/v1/traces`) or `http://jaeger:4317` (grpc).
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    pub protocol: Option<String>,
    /// Extra request headers (e.g. a collector's API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// One export request's budget (default 10s).
    pub timeout: Option<crate::playbook::Duration>,
}

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// Tracing settings, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The URL export requests go to (for http/protobuf, ending in `/v1/traces`).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// One export request's budget.
    pub timeout: Duration,
    /// Share of root spans sampled.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
}

/// A problem with one key of `tracing:` (the key path, e.g. `tracing.otlp.endpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl TracingConfig {
    /// The settings from this config and the environment (`env`: a variable's value);
    /// `Ok(None)` when tracing is off (no endpoint anywhere). Keys in the file win over
    /// the variables.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, ConfigError> {
        let otlp = self.otlp.clone().unwrap_or_default();
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // The traces-only variables win over the generic ones, as the OTLP exporter
        // specification says; the file's keys win over both.
        let either = |specific: &'static str, generic: &'static str| {
            env(specific)
                .map(|v| (v, specific))
                .or_else(|| env(generic).map(|v| (v, generic)))
        };
        let endpoint_var = either(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        );
        let (endpoint, field) = match (&otlp.endpoint, endpoint_var) {
            (Some(e), _) => (e.clone(), "tracing.otlp.endpoint"),
            (None, Some((e, var))) => (e, var),
            (None, None) => {
                if self.otlp.is_some() || self.sample_ratio.is_some() {
                    return Err(bad(
                        "tracing.otlp.endpoint",
                        "tracing needs a collector: set `tracing.otlp.endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT)",
                    ));
                }
                return Ok(None);
            }
        };
        let protocol_var = either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        let (protocol, pfield) = match (&otlp.protocol, protocol_var) {
            (Some(p), _) => (p.clone(), "tracing.otlp.protocol"),
            (None, Some((p, var))) => (p, var),
            (None, None) => ("http/protobuf".into(), "tracing.otlp.protocol"),
        };
        let protocol = match protocol.as_str() {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(bad(
                    pfield,
                    format!("unknown protocol `{other}`: expected `http/protobuf` or `grpc`"),
                ));
            }
        };
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|e| bad(field, format!("invalid URL `{endpoint}`: {e}")))?;
        match (url.scheme(), protocol) {
            ("http", _) | ("https", Protocol::HttpProtobuf) => {}
            ("https", Protocol::Grpc) => {
                return Err(bad(
                    field,
                    "OTLP/gRPC over TLS is not built in: use `http/protobuf` with https, or a plain-text collector port",
                ));
            }
            (s, _) => {
                return Err(bad(
                    field,
                    format!(
                        "invalid URL `{endpoint}`: the scheme must be http or https, not `{s}`"
                    ),
                ));
            }
        }
        let endpoint = match protocol {
            // The traces-only variable is the full URL as given (the specification's rule);
            // a base URL (the file's key, the generic variable) gets the traces path.
            Protocol::HttpProtobuf
                if field != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
                    && !url.path().ends_with("/v1/traces") =>
            {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            }
            _ => endpoint,
        };
        let mut headers = BTreeMap::new();
        // Generic first, then the traces-only ones over them (per name), then the file's.
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let Some(h) = env(var) else { continue };
            for pair in h.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(bad(var, format!("`{pair}` is not `name=value`")));
                };
                headers.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        headers.extend(otlp.headers.clone());
        for (k, v) in &headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(bad(
                    "tracing.otlp.headers",
                    format!("`{k}` is not a valid header name"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(bad(
                    "tracing.otlp.headers",
                    format!("the value of `{k}` is not a valid header value"),
                ));
            }
        }
        let timeout = match otlp.timeout {
            Some(t) if t.get().is_zero() => {
                return Err(bad("tracing.otlp.timeout", "must be more than 0s"));
            }
            Some(t) => t.get(),
            None => match either(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ) {
                Some((ms, var)) => match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        return Err(bad(
                            var,
                            format!("`{ms}` is not a positive number of milliseconds"),
                        ));
                    }
                },
                None => Duration::from_secs(10),
            },
        };
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(bad(
                "tracing.sampleRatio",
                format!("{sample_ratio} is not between 0 and 1"),
            ));
        }
        let service_name = self
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "failoverd".into());
        if service_name.trim().is_empty() {
            return Err(bad("tracing.serviceName", "must not be empty"));
        }
        Ok(Some(Resolved {
            endpoint,
            protocol,
            headers,
            timeout,
            sample_ratio,
            service_name,
        }))
    }
}

/// The tracing layer for `r`: spans named `failoverd.*` become OTLP spans. The provider is
/// returned too; it lives as long as the process (dropping it stops the export thread).
pub fn layer<S>(
    r: &Resolved,
) -> std::io::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    SdkTracerProvider,
)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let processor = QueueProcessor::start(r.clone())?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::new(r.sample_ratio))
        .with_resource(
            Resource::builder()
                .with_service_name(r.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("failoverd");
    Ok((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false),
        provider,
    ))
}

/// Only failoverd's own spans are exported (not those of the HTTP or Kubernetes clients).
pub fn is_ours(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name().starts_with("failoverd.")
}

/// Always samples decisions that move or refuse, drills and mutating API calls; other spans
/// follow their parent, roots `sampleRatio`.
#[derive(Clone, Debug)]
struct Sampler {
    ratio: opentelemetry_sdk::trace::Sampler,
}

impl Sampler {
    fn new(ratio: f64) -> Self {
        Self {
            ratio: opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio),
            )),
        }
    }
}

impl ShouldSample for Sampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let always = matches!(name, "failoverd.decide" | "failoverd.drill.run")
            || (name == "failoverd.api"
                && attributes.iter().any(|kv| {
                    kv.key.as_str() == "http.request.method"
                        && !matches!(kv.value.as_str().as_ref(), "GET" | "HEAD" | "OPTIONS")
                }));
        if always {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: parent
                    .filter(|c| c.has_active_span())
                    .map(|c| c.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.ratio
            .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// A bounded queue of finished spans and the thread that exports them.
#[derive(Debug)]
struct QueueProcessor {
    tx: SyncSender<Msg>,
}

impl QueueProcessor {
    fn start(r: Resolved) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(r, rx))?;
        Ok(Self { tx })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Never waits: a full queue (the collector slow or down) drops the span.
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Span(Box::new(span)))
        {
            DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (tx, rx) = sync_channel(1);
        self.tx
            .try_send(Msg::Flush(tx))
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        rx.recv_timeout(Duration::from_secs(15))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(15)))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

/// One of the two exporters, built on the export thread (the gRPC one inside a runtime of
/// that thread's own; the HTTP one uses reqwest's blocking client, which needs none).
enum Exporter {
    Http(opentelemetry_otlp::SpanExporter),
    Grpc(opentelemetry_otlp::SpanExporter, tokio::runtime::Runtime),
}

impl Exporter {
    fn build(r: &Resolved) -> Result<Self, String> {
        let headers: std::collections::HashMap<String, String> =
            r.headers.clone().into_iter().collect();
        match r.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(r.endpoint.clone())
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(r.timeout)
                .with_headers(headers)
                .build()
                .map(Exporter::Http)
                .map_err(|e| e.to_string()),
            Protocol::Grpc => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &r.headers {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_lowercase().as_bytes()),
                        v.parse(),
                    ) {
                        metadata.insert(k, v);
                    }
                }
                let e = rt
                    .block_on(async {
                        opentelemetry_otlp::SpanExporter::builder()
                            .with_tonic()
                            .with_endpoint(r.endpoint.clone())
                            .with_timeout(r.timeout)
                            .with_metadata(metadata)
                            .build()
                    })
                    .map_err(|e| e.to_string())?;
                Ok(Exporter::Grpc(e, rt))
            }
        }
    }

    fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Exporter::Http(e) => futures::executor::block_on(e.export(batch)),
            Exporter::Grpc(e, rt) => rt.block_on(e.export(batch)),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Exporter::Http(e) | Exporter::Grpc(e, _) => e.set_resource(resource),
        }
    }
}

fn export_loop(r: Resolved, rx: Receiver<Msg>) {
    let mut exporter = match Exporter::build(&r) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(error = %e, endpoint = %r.endpoint, "cannot build the OTLP exporter; spans are dropped");
            None
        }
    };
    if let Some(e) = exporter.as_mut() {
        e.set_resource(
            &Resource::builder()
                .with_service_name(r.service_name.clone())
                .build(),
        );
    }
    let mut batch: Vec<SpanData> = Vec::new();
    let mut first: Option<Instant> = None;
    let mut failing = false;
    loop {
        let wait = first.map_or(Duration::from_secs(3600), |t| {
            LINGER.saturating_sub(t.elapsed())
        });
        let mut flush = None;
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(s)) => {
                first.get_or_insert_with(Instant::now);
                batch.push(*s);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Ok(Msg::Flush(done)) => flush = Some(done),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if batch.is_empty() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let sent = std::mem::take(&mut batch);
            first = None;
            let result = match &exporter {
                Some(e) => e.export(sent).map_err(|e| e.to_string()),
                None => Err("no exporter".into()),
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(endpoint = %r.endpoint, "OTLP export works again");
                    }
                    failing = false;
                }
                Err(e) => {
                    DROPPED.inc_by(n);
                    if !failing {
                        tracing::warn!(endpoint = %r.endpoint, error = %e, spans = n, "OTLP export failed; spans dropped (counted in failoverd_trace_spans_dropped_total)");
                    }
                    failing = true;
                }
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), when it is sampled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The trace id (32 hex digits) of a `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    traceparent.split('-').nth(1).map(str::to_string)
}

/// The trace id of `span`, when it is sampled.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    traceparent(span).as_deref().and_then(trace_id_of)
}

/// Makes the span of a W3C `traceparent` (from a caller, or carried across a queue) the
/// parent of `span`; a malformed value is ignored. Call before the span is first entered.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(TracingConfig::default().resolve(env(&[])).unwrap(), None);
    }

    #[test]
    fn env_endpoint_and_service_name() {
        let r = TracingConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
                ("OTEL_SERVICE_NAME", "failoverd-eu"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=abc, x-team = oncall"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(r.service_name, "failoverd-eu");
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.headers.get("x-team").map(String::as_str), Some("oncall"));
        assert_eq!(r.sample_ratio, 1.0);
    }

    #[test]
    fn traces_variables_win_over_the_generic_ones() {
        let r = TracingConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.0.0.1:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4318/custom/path",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=generic, x-team=oncall"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=traces"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "750"),
            ]))
            .unwrap()
            .unwrap();
        // The traces-only endpoint is the full URL: no `/v1/traces` appended.
        assert_eq!(r.endpoint, "http://127.0.0.1:4318/custom/path");
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.headers.get("x-key").map(String::as_str), Some("traces"));
        assert_eq!(r.headers.get("x-team").map(String::as_str), Some("oncall"));
        assert_eq!(r.timeout, Duration::from_millis(750));
        // Only the generic protocol given: it applies.
        let r = TracingConfig::default()
            .resolve(env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4317",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.protocol, Protocol::Grpc);
        // A bad traces-only value names that variable.
        let e = TracingConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "novalue"),
            ]))
            .unwrap_err();
        assert_eq!(e.field, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        let e = TracingConfig::default()
            .resolve(env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:4318",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "novalue"),
            ]))
            .unwrap_err();
        assert_eq!(e.field, "OTEL_EXPORTER_OTLP_TRACES_HEADERS");
    }

    #[test]
    fn file_keys_win_over_the_environment() {
        let c: TracingConfig = serde_saphyr::from_str(
            "otlp: { endpoint: 'http://127.0.0.1:4317', protocol: grpc, timeout: 2s }\nsampleRatio: 0.25\nserviceName: fd\n",
        )
        .unwrap();
        let r = c
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.0.0.1:4318"),
                ("OTEL_SERVICE_NAME", "other"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:4317");
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert_eq!(r.sample_ratio, 0.25);
        assert_eq!(r.service_name, "fd");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("otlp: { endpoint: 'ftp://x' }", "tracing.otlp.endpoint"),
            ("otlp: { endpoint: 'not a url' }", "tracing.otlp.endpoint"),
            (
                "otlp: { endpoint: 'http://x', protocol: thrift }",
                "tracing.otlp.protocol",
            ),
            (
                "otlp: { endpoint: 'https://x', protocol: grpc }",
                "tracing.otlp.endpoint",
            ),
            (
                "otlp: { endpoint: 'http://x' }\nsampleRatio: 1.5",
                "tracing.sampleRatio",
            ),
            (
                "otlp: { endpoint: 'http://x', headers: { 'bad header': v } }",
                "tracing.otlp.headers",
            ),
            (
                "otlp: { endpoint: 'http://x', timeout: 0s }",
                "tracing.otlp.timeout",
            ),
            ("sampleRatio: 0.5", "tracing.otlp.endpoint"),
        ];
        for (yaml, field) in cases {
            let c: TracingConfig = serde_saphyr::from_str(yaml).unwrap();
            let e = c.resolve(env(&[])).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e:?}");
        }
    }

    #[test]
    fn moves_are_sampled_at_ratio_zero() {
        let s = Sampler::new(0.0);
        let id = TraceId::from_bytes([7; 16]);
        let decide = s.should_sample(None, id, "failoverd.decide", &SpanKind::Internal, &[], &[]);
        assert_eq!(decide.decision, SamplingDecision::RecordAndSample);
        let post = s.should_sample(
            None,
            id,
            "failoverd.api",
            &SpanKind::Server,
            &[KeyValue::new("http.request.method", "POST")],
            &[],
        );
        assert_eq!(post.decision, SamplingDecision::RecordAndSample);
        let get = s.should_sample(
            None,
            id,
            "failoverd.api",
            &SpanKind::Server,
            &[KeyValue::new("http.request.method", "GET")],
            &[],
        );
        assert_eq!(get.decision, SamplingDecision::Drop);
    }
}
