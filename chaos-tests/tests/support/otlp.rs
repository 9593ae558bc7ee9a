//! A real OTLP receiver for the trace tests (`tests/trace*.rs`): rotel (from PyPI, installed
//! by scripts/test.sh) with its debug log of every span received, parsed back into spans.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos_tests::{free_addr, wait_for};

const SEC: Duration = Duration::from_secs(1);
/// Spans are exported within 0.5 s of ending; the receiver prints them at once. Room for a
/// loaded box.
pub const SPANS_WITHIN: Duration = Duration::from_secs(10);

/// One span as rotel printed it.
#[derive(Clone, Debug, Default)]
pub struct Span {
    pub trace: String,
    pub parent: String,
    pub id: String,
    pub name: String,
    pub attrs: BTreeMap<String, String>,
}

/// The rotel agent shipped in the `rotel` PyPI package (`ROTEL_AGENT` overrides).
pub fn rotel_agent() -> PathBuf {
    if let Ok(p) = std::env::var("ROTEL_AGENT") {
        return p.into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "the OTLP receiver is missing: `python3 -m pip install rotel` (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A real OTLP receiver on loopback (HTTP and gRPC) printing every span it gets.
pub struct Receiver {
    child: Child,
    /// OTLP over HTTP.
    pub http: SocketAddr,
    /// OTLP over gRPC.
    pub grpc: SocketAddr,
    out: PathBuf,
}

impl Receiver {
    pub async fn start(dir: &Path) -> Self {
        let http = free_addr().unwrap();
        let grpc = free_addr().unwrap();
        let out = dir.join("rotel.out");
        let child = Command::new(rotel_agent())
            .args(["start", "--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-http-endpoint", &http.to_string()])
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent starts");
        wait_for("the OTLP receiver to listen", 10 * SEC, || {
            std::net::TcpStream::connect(http).ok()
        })
        .await
        .unwrap();
        Self {
            child,
            http,
            grpc,
            out,
        }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Every span printed so far.
    pub fn spans(&self) -> Vec<Span> {
        parse_spans(&self.text())
    }

    /// Waits until the spans of `trace` include every name in `names`; returns them all.
    pub async fn wait_trace(&self, trace: &str, names: &[&str]) -> Vec<Span> {
        let got = wait_for(
            &format!("spans {names:?} of trace {trace}"),
            SPANS_WITHIN,
            || {
                let spans: Vec<Span> = self
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace == trace)
                    .collect();
                names
                    .iter()
                    .all(|n| spans.iter().any(|s| s.name == *n))
                    .then_some(spans)
            },
        )
        .await;
        got.unwrap_or_else(|e| {
            let names: Vec<(String, String)> = self
                .spans()
                .into_iter()
                .map(|s| (s.trace, s.name))
                .collect();
            panic!("{e}; received: {names:?}")
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses rotel's detailed debug log: `Span #n` blocks with `Trace ID`, `Parent ID`, `ID`,
/// `Name` and `-> key: Type(value)` attribute lines.
pub fn parse_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut cur: Option<Span> = None;
    let mut in_attrs = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Span #") {
            spans.extend(cur.take());
            cur = Some(Span::default());
            in_attrs = false;
            continue;
        }
        if t.starts_with("ResourceSpans #") || t.starts_with("ScopeSpans #") {
            spans.extend(cur.take());
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        if let Some((k, v)) = t.split_once(':')
            && !t.starts_with("->")
        {
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => s.trace = v,
                "Parent ID" => s.parent = v,
                "ID" => s.id = v,
                "Name" => s.name = v,
                "Attributes" => in_attrs = true,
                _ => in_attrs = false,
            }
            continue;
        }
        if in_attrs && let Some(kv) = t.strip_prefix("->") {
            if let Some((k, v)) = kv.split_once(':') {
                let v = v.trim();
                // `Str(x)`, `Int(3)`, `Bool(true)`: the value inside the parentheses.
                let v = v
                    .split_once('(')
                    .and_then(|(_, rest)| rest.strip_suffix(')'))
                    .unwrap_or(v);
                s.attrs.insert(k.trim().to_string(), v.to_string());
            }
        } else if !t.starts_with("->") {
            in_attrs = false;
        }
    }
    spans.extend(cur);
    spans
}
