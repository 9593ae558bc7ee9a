//! A parser for the Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text.
//!
//! Written here rather than taken from `prometheus-parse`, which loses data on realistic
//! pages (metric names with `:`, label values holding `,`, `=`, `}` or `\"`, OpenMetrics
//! counters, fractional timestamps); see the tests in `tests/scrape.rs`. Errors name the
//! line; a page with any malformed line is rejected whole, as Prometheus does, so a
//! half-read page never becomes a signal.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Which text format a page is in (from the `Content-Type` of the scrape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: timestamps are integer milliseconds.
    PrometheusText,
    /// `application/openmetrics-text`: timestamps are seconds (may be fractional);
    /// counters' samples carry a `_total` suffix.
    OpenMetrics,
}

impl Format {
    /// The format announced by a `Content-Type` header value (Prometheus text when
    /// absent or unrecognised).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.trim_start().starts_with("application/openmetrics-text") => {
                Self::OpenMetrics
            }
            _ => Self::PrometheusText,
        }
    }
}

/// A metric family's declared type (`# TYPE`); `Untyped` when none was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonic counter (resets to 0 on restart).
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count` samples).
    Histogram,
    /// OpenMetrics gauge histogram.
    GaugeHistogram,
    /// Summary.
    Summary,
    /// OpenMetrics info.
    Info,
    /// OpenMetrics stateset.
    StateSet,
    /// No type declared (`untyped`, OpenMetrics `unknown`).
    Untyped,
}

impl MetricType {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "gaugehistogram" => Self::GaugeHistogram,
            "summary" => Self::Summary,
            "info" => Self::Info,
            "stateset" => Self::StateSet,
            "untyped" | "unknown" => Self::Untyped,
            _ => return None,
        })
    }
}

/// A sample's labels in the order written: (name, unescaped value).
pub type Labels = Vec<(Arc<str>, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's metric name as written (e.g. `http_requests_total`).
    pub name: Arc<str>,
    /// Labels in the order written, values unescaped.
    pub labels: Labels,
    /// The value (NaN and ±Inf allowed).
    pub value: f64,
    /// Timestamp in seconds since the epoch, exactly as written (converted from
    /// milliseconds for Prometheus text); `None` when absent.
    pub timestamp: Option<f64>,
    /// Type of the family the sample belongs to.
    pub metric_type: MetricType,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A malformed page: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exposition line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was expected.
    pub message: String,
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses a whole page. Any malformed line rejects the page (with its line number).
pub fn parse(text: &str, format: Format) -> Result<Vec<Sample>, ParseError> {
    let mut types: HashMap<&str, MetricType> = HashMap::new();
    // Interned names: pages repeat a few hundred names over thousands of series.
    let mut names: HashMap<&str, (Arc<str>, MetricType)> = HashMap::new();
    let mut label_names: HashMap<&str, Arc<str>> = HashMap::new();
    let mut out = Vec::new();
    let mut saw_eof = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| ParseError {
            line: line_no,
            message,
        };
        let line = raw.trim_end_matches('\r');
        if saw_eof {
            if line.is_empty() {
                continue;
            }
            return Err(err("content after # EOF".to_owned()));
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_name(name).map_err(&err)?;
                    let kind = MetricType::parse(kind.trim())
                        .ok_or_else(|| err(format!("unknown metric type {:?}", kind.trim())))?;
                    if types.insert(name, kind).is_some() {
                        return Err(err(format!("second TYPE line for {name}")));
                    }
                }
                (Some("EOF"), None, None) => saw_eof = true,
                _ => {} // HELP, UNIT and free comments carry nothing we use.
            }
            continue;
        }
        let (name, rest) = split_name(line).map_err(&err)?;
        let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
            parse_labels(body, &mut label_names).map_err(&err)?
        } else {
            (Vec::new(), rest)
        };
        let (value, timestamp) = parse_value_and_timestamp(rest, format).map_err(&err)?;
        let (name, metric_type) = names
            .entry(name)
            .or_insert_with(|| (Arc::from(name), family_type(name, &types)))
            .clone();
        out.push(Sample {
            name,
            labels,
            value,
            timestamp,
            metric_type,
        });
    }
    Ok(out)
}

/// The type of the family a sample name belongs to: its own `# TYPE`, or that of the
/// name without a type-specific suffix (`foo_total` belongs to counter `foo`).
fn family_type(name: &str, types: &HashMap<&str, MetricType>) -> MetricType {
    if let Some(t) = types.get(name) {
        return *t;
    }
    const SUFFIXES: &[(&str, &[MetricType])] = &[
        ("_total", &[MetricType::Counter]),
        (
            "_created",
            &[
                MetricType::Counter,
                MetricType::Histogram,
                MetricType::Summary,
            ],
        ),
        (
            "_bucket",
            &[MetricType::Histogram, MetricType::GaugeHistogram],
        ),
        ("_count", &[MetricType::Histogram, MetricType::Summary]),
        ("_sum", &[MetricType::Histogram, MetricType::Summary]),
        ("_gcount", &[MetricType::GaugeHistogram]),
        ("_gsum", &[MetricType::GaugeHistogram]),
        ("_info", &[MetricType::Info]),
    ];
    for (suffix, allowed) in SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(t) = types.get(base)
            && allowed.contains(t)
        {
            return *t;
        }
    }
    MetricType::Untyped
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn check_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(&b) if is_name_start(b) && bytes[1..].iter().all(|&b| is_name_char(b)) => Ok(()),
        _ => Err(format!("invalid metric name {name:?}")),
    }
}

fn split_name(line: &str) -> Result<(&str, &str), String> {
    let bytes = line.as_bytes();
    if !bytes.first().is_some_and(|&b| is_name_start(b)) {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let end = bytes
        .iter()
        .position(|&b| !is_name_char(b))
        .unwrap_or(bytes.len());
    Ok(line.split_at(end))
}

fn parse_labels<'a>(
    mut s: &'a str,
    interned: &mut HashMap<&'a str, Arc<str>>,
) -> Result<(Labels, &'a str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let bytes = s.as_bytes();
        if !bytes
            .first()
            .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
        {
            return Err(format!("expected a label name at {:?}", truncate(s)));
        }
        let end = bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(bytes.len());
        let (name, rest) = s.split_at(end);
        let rest = rest.trim_start();
        let rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {name}"))?
            .trim_start();
        let rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' to open the value of label {name}"))?;
        let (value, rest) = parse_quoted(rest).map_err(|e| format!("label {name}: {e}"))?;
        if labels
            .iter()
            .any(|(k, _): &(Arc<str>, String)| &**k == name)
        {
            return Err(format!("duplicate label {name}"));
        }
        let key = interned
            .entry(name)
            .or_insert_with(|| Arc::from(name))
            .clone();
        labels.push((key, value));
        s = rest.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

/// A quoted string after its opening quote: (unescaped value, rest after the closing quote).
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let bytes = s.as_bytes();
    // Fast path: no escapes.
    let Some(stop) = bytes.iter().position(|&b| b == b'"' || b == b'\\') else {
        return Err("unterminated value".to_owned());
    };
    if bytes[stop] == b'"' {
        return Ok((s[..stop].to_owned(), &s[stop + 1..]));
    }
    let mut value = String::with_capacity(s.len().min(256));
    value.push_str(&s[..stop]);
    let mut chars = s[stop..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[stop + i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("invalid escape \\{other}")),
                None => return Err("unterminated value".to_owned()),
            },
            '\n' => return Err("raw newline in value".to_owned()),
            c => value.push(c),
        }
    }
    Err("unterminated value".to_owned())
}

fn parse_value_and_timestamp(rest: &str, format: Format) -> Result<(f64, Option<f64>), String> {
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a space before the value at {:?}",
            truncate(rest)
        ));
    }
    // OpenMetrics exemplars follow " # "; they carry nothing we use.
    let rest = match rest.find(" # ") {
        Some(at) if format == Format::OpenMetrics => &rest[..at],
        _ => rest,
    };
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| "missing value".to_owned())
        .and_then(parse_float)?;
    let timestamp = match fields.next() {
        None => None,
        Some(ts) => {
            let parsed = parse_float(ts).map_err(|_| format!("invalid timestamp {ts:?}"))?;
            if !parsed.is_finite() {
                return Err(format!("invalid timestamp {ts:?}"));
            }
            Some(match format {
                Format::PrometheusText => parsed / 1000.0,
                Format::OpenMetrics => parsed,
            })
        }
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    Ok((value, timestamp))
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .ok()
            // Rust also accepts "infinity" and the like; the format does not.
            .filter(|_| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            })
            .ok_or_else(|| format!("invalid number {s:?}")),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}
