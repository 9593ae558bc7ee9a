//! Istio's `HTTPMatchRequest` as Envoy applies it: the request a route is matched against, and
//! the compiled match conditions of one `http[].match[]` entry.
//!
//! Supported: `uri`, `method`, `authority` and `headers` (each a `StringMatch`: `exact`,
//! `prefix`, `regex`), `ignoreUriCase` and `name` (a label). Any other field (`queryParams`,
//! `sourceLabels`, `withoutHeaders`, `port`, `gateways`, `scheme`, `sourceNamespace`, `statPrefix`,
//! ...) makes the entry never match, and is noted so a test can see it met one.

use anyhow::{Context, bail};
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// The parts of an incoming HTTP/1.1 request that routes match on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`GET`).
    pub method: String,
    /// The request target, query string included (`/healthz?x=1`).
    pub path: String,
    /// Header fields in order, names lower-cased (HTTP names are case-insensitive).
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Parses a request head (request line and header fields, up to the blank line). A
    /// request line that is missing parts yields `GET /`, as before this parser existed.
    pub fn parse_head(head: &str) -> Self {
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("GET").to_string();
        let path = first.next().unwrap_or("/").to_string();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Self {
            method,
            path,
            headers,
        }
    }

    /// The value of header `name` (any case); several fields of that name are joined with
    /// `,` as Envoy's header matcher sees them. None when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The path without its query string (what Envoy's `path` and `safe_regex` see).
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

/// Istio's `StringMatch`.
#[derive(Clone, Debug)]
pub enum StringMatch {
    /// `exact`: the whole value equals.
    Exact(String),
    /// `prefix`: the value starts with.
    Prefix(String),
    /// `regex`: RE2 syntax, matching the whole value (compiled anchored).
    Regex(Regex),
    /// `{}` (no field set): for headers, the header is present.
    Present,
}

impl StringMatch {
    /// Compiles a `StringMatch` object found at `at` (for errors). `ignore_case` folds ASCII
    /// case (only `ignoreUriCase` sets it).
    pub fn parse(v: &Value, at: &str, ignore_case: bool) -> anyhow::Result<Self> {
        let obj = v
            .as_object()
            .with_context(|| format!("{at}: expected an object with exact, prefix or regex"))?;
        let set: Vec<&String> = obj.keys().collect();
        if set.len() > 1 {
            bail!("{at}: only one of exact, prefix, regex may be set (found {set:?})");
        }
        let text = |k: &str| {
            obj[k]
                .as_str()
                .map(|s| s.to_string())
                .with_context(|| format!("{at}.{k}: expected a string"))
        };
        let fold = |s: String| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s
            }
        };
        Ok(match set.first().map(|s| s.as_str()) {
            None => StringMatch::Present,
            Some("exact") => StringMatch::Exact(fold(text("exact")?)),
            Some("prefix") => StringMatch::Prefix(fold(text("prefix")?)),
            Some("regex") => {
                let src = text("regex")?;
                // RE2 full-string match, as Envoy's safe_regex: anchor the whole pattern.
                let re = RegexBuilder::new(&format!("^(?:{src})$"))
                    .case_insensitive(ignore_case)
                    .build()
                    .with_context(|| format!("{at}.regex: invalid regular expression {src:?}"))?;
                StringMatch::Regex(re)
            }
            Some(other) => bail!("{at}: unknown StringMatch field {other:?}"),
        })
    }

    /// Whether `value` satisfies the match (`Present` always does: the caller checks presence).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Regex(re) => re.is_match(value),
            StringMatch::Present => true,
        }
    }
}

/// One compiled `http[].match[]` entry: every condition must hold.
#[derive(Clone, Debug, Default)]
pub struct MatchEntry {
    uri: Option<StringMatch>,
    ignore_uri_case: bool,
    method: Option<StringMatch>,
    authority: Option<StringMatch>,
    headers: Vec<(String, StringMatch)>,
    /// Fields present that this proxy does not implement (`http[0].match[1].queryParams`).
    pub unsupported: Vec<String>,
}

/// Match fields this proxy implements (others make the entry never match).
const SUPPORTED: &[&str] = &[
    "uri",
    "method",
    "authority",
    "headers",
    "ignoreUriCase",
    "name",
];

impl MatchEntry {
    /// Compiles one match entry found at `at` (e.g. `http[0].match[1]`). A malformed
    /// condition (bad regex, two of exact/prefix/regex) is an error: Istio's validation
    /// refuses such an object.
    pub fn parse(v: &Value, at: &str) -> anyhow::Result<Self> {
        let obj = v
            .as_object()
            .with_context(|| format!("{at}: expected an object"))?;
        let ignore_uri_case = obj
            .get("ignoreUriCase")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut m = MatchEntry {
            ignore_uri_case,
            ..Self::default()
        };
        for (k, val) in obj {
            let here = format!("{at}.{k}");
            match k.as_str() {
                "uri" => m.uri = Some(StringMatch::parse(val, &here, ignore_uri_case)?),
                "method" => m.method = Some(StringMatch::parse(val, &here, false)?),
                "authority" => m.authority = Some(StringMatch::parse(val, &here, false)?),
                "headers" => {
                    let hs = val
                        .as_object()
                        .with_context(|| format!("{here}: expected a map of header names"))?;
                    for (name, sm) in hs {
                        let sm = StringMatch::parse(sm, &format!("{here}.{name}"), false)?;
                        m.headers.push((name.to_ascii_lowercase(), sm));
                    }
                }
                _ if SUPPORTED.contains(&k.as_str()) => {}
                _ => m.unsupported.push(here),
            }
        }
        Ok(m)
    }

    /// Whether `req` satisfies every condition; never true for an entry with an unsupported
    /// field (treating it as a match would route traffic Envoy might not).
    pub fn matches(&self, req: &Request) -> bool {
        if !self.unsupported.is_empty() {
            return false;
        }
        if let Some(uri) = &self.uri {
            // Envoy: `path` (exact) and `safe_regex` see the path without its query string;
            // `prefix` sees the whole :path.
            let target = match uri {
                StringMatch::Prefix(_) => req.path.as_str(),
                _ => req.path_only(),
            };
            let target = if self.ignore_uri_case && !matches!(uri, StringMatch::Regex(_)) {
                target.to_ascii_lowercase()
            } else {
                target.to_string()
            };
            if !uri.matches(&target) {
                return false;
            }
        }
        if let Some(m) = &self.method
            && !m.matches(&req.method)
        {
            return false;
        }
        if let Some(a) = &self.authority {
            match req.header("host") {
                Some(h) if a.matches(&h) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, sm)| req.header(name).is_some_and(|v| sm.matches(&v)))
    }
}
