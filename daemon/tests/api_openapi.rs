#![allow(clippy::unwrap_used)]
//! The OpenAPI document: the copy in `docs/openapi.json` is current, every route is
//! documented and served. Regenerate the copy with
//! `UPDATE_OPENAPI=1 cargo test -p failoverd --test api_openapi`.

use std::path::Path;

use serde_json::{Value, json};

mod support;

use support::api::{Fixture, Payload};

/// Ensures `docs/openapi.json` is the generated document (regenerate with
/// `UPDATE_OPENAPI=1 cargo test -p failoverd --test api_openapi`).
#[test]
fn openapi_copy_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let now = failoverd::api::openapi_json();
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == now,
        "docs/openapi.json is stale; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p failoverd --test api_openapi`"
    );
}

/// Ensures every route registered under /v1 is in the OpenAPI document and vice versa, every
/// protected operation names the `bearer` scheme, and all `$ref`s resolve.
#[test]
fn openapi_documents_every_route() {
    let doc: Value = serde_json::from_str(&failoverd::api::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer")
    );
    let registered = failoverd::api::registered_routes();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    for (m, p) in &registered {
        assert!(p.starts_with("/v1/"), "{p}");
        let op = &doc["paths"][*p][m.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{m} {p} is registered but not documented");
        let security = op.get("security");
        if *p == "/v1/openapi.json" {
            assert!(security.is_none(), "the document itself is open");
        } else {
            assert_eq!(security, Some(&json!([{ "bearer": [] }])), "{m} {p}");
            assert!(op["responses"]["401"].is_object(), "{m} {p}: no 401");
        }
        // 202: a call that starts work in the background (a drill run).
        assert!(
            op["responses"]["200"].is_object() || op["responses"]["202"].is_object(),
            "{m} {p}: no 200 (or 202)"
        );
    }
    for (m, p) in &documented {
        assert!(
            registered
                .iter()
                .any(|(rm, rp)| rm.as_str() == m && rp == p),
            "{m} {p} is documented but not registered"
        );
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
}

/// Ensures every registered route answers on its method (401 without a token, 200 for the
/// open document), and GET /v1/openapi.json serves the generated document without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_route_is_served() {
    let f = Fixture::new().await;
    let d = f.start(true).await;
    for (m, p) in failoverd::api::registered_routes() {
        let concrete = p.replace("{name}", "demo").replace("{id}", "ov-00000000");
        let r = d.call(m.as_str(), &concrete, None, Payload::None).await;
        if p == "/v1/openapi.json" {
            assert_eq!(r.status, 200, "{r:?}");
            let served: Value = r.body;
            let generated: Value = serde_json::from_str(&failoverd::api::openapi_json()).unwrap();
            assert_eq!(served, generated);
            assert!(
                r.headers[reqwest::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
        } else {
            r.assert_error(401, &format!("{m} {p}"));
        }
    }
    d.shutdown().await;
}
