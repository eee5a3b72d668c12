//! The HTTP API: the thin REST API under `/api/v1`, health endpoints, and the error and body conventions shared
//! with the Kubernetes-compatible group.

pub mod body;
pub mod error;
pub mod guard;
pub mod metrics;
mod openapi;
pub(crate) mod query;
pub(crate) mod rest;
pub(crate) mod security;
pub mod tls;
pub(crate) mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::{AuthConfig, Authenticator};
use crate::store::Store;
use crate::store::feed::ChangeFeed;
use error::ApiError;

/// What every handler shares: one `Arc`, so that the clones axum makes for every request (each middleware and
/// each `State` extractor) cost one reference count, not one per field (they showed at ~5% of a GET's CPU).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct SharedState {
    pub store: Store,
    /// The change feed behind watches and list resourceVersions; `run` it after the migrations.
    pub feed: Arc<ChangeFeed>,
    /// False until the database is migrated: until then only `/healthz` and `/metrics` answer, everything else 503.
    pub migrated: Arc<AtomicBool>,
    /// Request, pool and watch metrics served at `/metrics`.
    pub metrics: metrics::HttpMetrics,
    /// Who is calling: bearer tokens, OIDC, trusted gateway headers.
    pub auth: Authenticator,
    /// Per-identity rate limits and the request timeout.
    pub limiter: guard::Limiter,
    /// Where the audit records of mutating requests go.
    pub audit: guard::AuditLog,
}

impl AppState {
    /// State for a store whose database is already migrated, authenticating bearer tokens only, with the
    /// default limits.
    pub fn new(store: Store) -> Self {
        AppState::with_security(store, AuthConfig::default(), guard::Limits::default())
    }

    /// State with the given authentication settings and limits; starts the audit writer, so it needs a Tokio
    /// runtime.
    pub fn with_security(store: Store, auth: AuthConfig, limits: guard::Limits) -> Self {
        let feed = Arc::new(ChangeFeed::new());
        let metrics = metrics::HttpMetrics::with_counters(feed.rows_read(), store.get_bodies_reused());
        AppState(Arc::new(SharedState {
            auth: Authenticator::new(store.clone(), auth),
            limiter: guard::Limiter::new(limits),
            audit: guard::AuditLog::start(store.clone()),
            store,
            metrics,
            feed,
            migrated: Arc::new(AtomicBool::new(true)),
        }))
    }

    /// The change feed's cursor, for a list about to be read (`None` while the feed is not running).
    pub fn feed_cursor(&self) -> Option<i64> {
        self.feed.is_running().then(|| self.feed.cursor())
    }
}

async fn until_migrated(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.migrated.load(Ordering::Acquire) || matches!(request.uri().path(), "/healthz" | "/metrics") {
        next.run(request).await
    } else {
        ApiError::unavailable("the server is starting: waiting for the database").into_response()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .merge(ui::routes())
        .merge(security::routes())
        .merge(rest::routes())
        .merge(crate::kube::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), until_migrated))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::observe))
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
