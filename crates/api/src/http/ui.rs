//! The dashboard at `/ui`: one static page (`crates/api/ui/index.html`, vanilla JavaScript, no build step) compiled
//! into the binary. The page itself is public; it reads everything through the Kubernetes-compatible API (list, then
//! watch from the list's resourceVersion) with the bearer token the user gives it, so it sees what the token may see.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("../../ui/index.html");

/// The page's inline script and style are its own; it talks to this origin only and may not be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/ui", get(index)).route("/ui/", get(|| async { Redirect::permanent("/ui") }))
}

async fn index() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CONTENT_SECURITY_POLICY),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        INDEX,
    )
        .into_response()
}
