//! The reconciler's operational endpoints: `/healthz` (the process lives), `/readyz` (database and bus reachable)
//! and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::bus::EventBus;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct OpsState {
    pub pool: sqlx::PgPool,
    pub bus: Arc<dyn EventBus>,
    pub metrics: Metrics,
    /// Set once the migrations ran.
    pub migrated: Arc<AtomicBool>,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if !state.migrated.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "database not migrated yet".to_owned());
    }
    if let Err(error) = sqlx::query("select 1").execute(&state.pool).await {
        tracing::debug!(error = %error, "readiness: database unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable".to_owned());
    }
    if let Err(error) = state.bus.ready().await {
        tracing::debug!(error = %error, "readiness: bus unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{} bus unreachable", state.bus.name()));
    }
    (StatusCode::OK, "ok".to_owned())
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}
