//! The HTTP API: the thin REST API under `/api/v1`, health endpoints, and the error and body conventions shared
//! with the Kubernetes-compatible group.

pub mod body;
pub mod error;
mod query;
mod rest;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::store::Store;
use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(rest::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "not ready");
            ApiError::unavailable("the database is unavailable").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("the server could not find the requested resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
