//! The console's static files, compiled into the binary (the page must work in an air-gapped
//! cluster: no CDN, no build step) and served with long cache lifetimes under versioned
//! paths.
//!
//! `htmx.min.js` is htmx 2.0.11 from the npm package `htmx.org` (`npm pack htmx.org@2`,
//! `package/dist/htmx.min.js`), SHA-256
//! `d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717`; its licence (Zero-Clause
//! BSD) is `daemon/assets/htmx.LICENSE`, served beside it.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// htmx.
pub const HTMX_PATH: &str = "/ui/assets/v1/htmx.min.js";
/// The console's own script (the live stream).
pub const JS_PATH: &str = "/ui/assets/v1/console.js";
/// The stylesheet.
pub const CSS_PATH: &str = "/ui/assets/v1/console.css";

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const HTMX_LICENSE: &str = include_str!("../../assets/htmx.LICENSE");
const JS: &str = include_str!("../../assets/console.js");
const CSS: &str = include_str!("../../assets/console.css");

/// `GET /ui/assets/v1/{file}`. The paths carry a version: a changed file gets a new path,
/// so a year of caching is safe.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx.LICENSE" => (HTMX_LICENSE, "text/plain; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
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
