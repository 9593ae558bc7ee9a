//! A VirtualService's whole `http[]` as Envoy serves it: routes in order, first match wins; a
//! route without `match` matches every request; `match[]` entries are ORed, the conditions
//! inside one entry ANDed.

use anyhow::Context;
use serde_json::Value;

use super::Destination;
use super::fault::Fault;
use super::matching::{MatchEntry, Request};

/// One compiled `http[]` route.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    /// `name`, if any.
    pub name: Option<String>,
    /// `match[]` (empty: matches everything).
    pub matches: Vec<MatchEntry>,
    /// `fault`, if any.
    pub fault: Option<Fault>,
    /// `route[]`'s destinations (empty when the route has no `route`, e.g. a redirect, which
    /// this proxy does not implement: such a request is answered 503).
    pub destinations: Vec<Destination>,
}

impl HttpRoute {
    /// Whether `req` is served by this route.
    pub fn matches(&self, req: &Request) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }
}

/// Every `http[]` route of a VirtualService, compiled.
#[derive(Clone, Debug, Default)]
pub struct HttpRoutes {
    /// The routes in order.
    pub routes: Vec<HttpRoute>,
    /// Fields met that this proxy does not implement, by path (`http[0].match[0].queryParams`,
    /// `http[2].redirect`): match entries holding one never match.
    pub unsupported: Vec<String>,
}

impl HttpRoutes {
    /// The first route `req` matches (Envoy answers 404 when none does).
    pub fn select(&self, req: &Request) -> Option<&HttpRoute> {
        self.routes.iter().find(|r| r.matches(req))
    }

    /// The index in `http[]` of the first route `req` matches.
    pub fn select_index(&self, req: &Request) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(req))
    }
}

/// Compiles `spec.http` of a VirtualService object. An error names the field (bad regex,
/// bad fault, destination without host): Istio refuses such an object, and the proxy keeps
/// the routes in force.
pub fn http_routes_of(vs: &Value) -> anyhow::Result<HttpRoutes> {
    let http = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .context("no spec.http")?;
    let mut out = HttpRoutes::default();
    for (i, r) in http.iter().enumerate() {
        let at = format!("http[{i}]");
        let mut matches = Vec::new();
        if let Some(ms) = r.get("match") {
            let ms = ms
                .as_array()
                .with_context(|| format!("{at}.match: expected a list"))?;
            for (j, m) in ms.iter().enumerate() {
                let entry = MatchEntry::parse(m, &format!("{at}.match[{j}]"))?;
                out.unsupported.extend(entry.unsupported.iter().cloned());
                matches.push(entry);
            }
        }
        let fault = r
            .get("fault")
            .map(|f| Fault::parse(f, &format!("{at}.fault")))
            .transpose()?;
        let destinations = match r.get("route") {
            Some(_) => super::destinations(r).with_context(|| format!("{at}.route"))?,
            None => {
                out.unsupported.push(format!("{at} (no route)"));
                Vec::new()
            }
        };
        for k in [
            "redirect",
            "directResponse",
            "delegate",
            "rewrite",
            "mirror",
        ] {
            if r.get(k).is_some() {
                out.unsupported.push(format!("{at}.{k}"));
            }
        }
        out.routes.push(HttpRoute {
            name: r.get("name").and_then(Value::as_str).map(str::to_string),
            matches,
            fault,
            destinations,
        });
    }
    Ok(out)
}
