//! The console's static files, compiled into the binary (the page must work in an air-gapped
//! cluster: no CDN, no build step) and served with long cache lifetimes under paths that
//! carry their digest.
//!
//! `htmx.min.js` is htmx 2.0.11 from the npm package `htmx.org` (`npm pack htmx.org@2`,
//! `package/dist/htmx.min.js`), SHA-256
//! `d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717`; its licence (Zero-Clause
//! BSD) is `daemon/assets/htmx.LICENSE`, served beside it.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The assets' version in their paths: the first 12 hex digits of the SHA-256 of all of
/// them, so a changed file always gets a new path (and a year's caching stays correct).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for f in [HTMX, HTMX_LICENSE, JS, CSS] {
        h.update(f.as_bytes());
    }
    hex::encode(&h.finalize()[..6])
});

/// The path of asset `file` (`htmx.min.js`, `console.js`, `console.css`).
pub fn path(file: &str) -> String {
    format!("/ui/assets/{}/{file}", *VERSION)
}

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const HTMX_LICENSE: &str = include_str!("../../assets/htmx.LICENSE");
const JS: &str = include_str!("../../assets/console.js");
const CSS: &str = include_str!("../../assets/console.css");

/// `GET /ui/assets/{version}/{file}`. The current version is cached for a year; another
/// (a page from before an upgrade) gets today's file, not cached.
pub async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx.LICENSE" => (HTMX_LICENSE, "text/plain; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let cache = if version == *VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// Ensures the vendored htmx is the file whose digest the module documents (a silently
    /// swapped copy would fail here).
    #[test]
    fn htmx_is_the_recorded_file() {
        assert_eq!(
            hex::encode(Sha256::digest(super::HTMX.as_bytes())),
            "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
        );
    }
}
