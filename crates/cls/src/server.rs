//! Serving the API: database connection, migrations, HTTP server and graceful shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::tokens::{SecurityArgs, put_tokens};

/// Cancelled on ctrl-c or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, shutting down"),
            _ = terminate => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Whether serving on `listen` sends bearer tokens across a network in clear text: a non-loopback address without
/// TLS and without a TLS-terminating gateway in front.
fn exposes_plain_http(listen: SocketAddr, tls: bool, gateway: bool) -> bool {
    !listen.ip().is_loopback() && !tls && !gateway
}

/// A pool that connects on first use; a server that is down answers 503 until it is back.
///
/// While the server refuses connections, sqlx retries connecting until the acquire timeout, so that timeout is how
/// long a request waits before its 503: one second, not the five it was (requests sent during a short outage hung
/// until it ended instead of being answered). It also bounds the wait for a free connection under overload.
pub fn pool(database_url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(cls_api::store::connect_options(database_url).context("invalid DATABASE_URL")?))
}

/// Runs the migrations, retrying while the database is unreachable, until `shutdown` (which ends it quietly).
pub async fn migrate_with_retries(pool: &sqlx::PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match cls_api::store::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(error)) if cls_api::store::is_connection_error(&error) => {
                tracing::info!("waiting for the database");
            }
            Err(error) => return Err(error).context("migrations failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("shut down before the database was reachable");
                return Ok(());
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How an API process serves, beyond its database.
pub struct ApiSettings<'a> {
    pub listen: SocketAddr,
    pub schedule: cls_api::ScheduleConfig,
    pub security: &'a SecurityArgs,
    /// `(name, role, secret)` tokens stored before the API answers (those `cls up` makes).
    pub tokens: Vec<(String, String, String)>,
    /// HTTPS beside plain HTTP on the same port.
    pub tls: Option<Arc<cls_api::http::tls::ServerConfig>>,
}

/// Serves the API on `listen` until `shutdown`, then drains in-flight requests. `/healthz` answers at once; the
/// rest answers 503 until the migrations (run here, under an advisory lock) are done.
pub async fn serve(
    database_url: &str,
    settings: ApiSettings<'_>,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let ApiSettings { listen, schedule, security, tokens, tls } = settings;
    let auth = security.auth_config()?;
    if exposes_plain_http(listen, tls.is_some(), auth.gateway.is_some()) {
        tracing::warn!(
            %listen,
            "serving plain HTTP on a non-loopback address: bearer tokens cross the network in clear text; set \
             --tls-cert-file/--tls-key-file, put a TLS-terminating gateway in front (--trusted-gateway), or listen on \
             127.0.0.1"
        );
    }
    let pool = pool(database_url)?;
    let store = cls_api::Store::new(pool.clone(), schedule);
    let state = cls_api::AppState::with_security(store, auth, security.limits());
    // nothing has read it yet: until the migrations ran, only /healthz and /metrics answer
    state.migrated.store(false, Ordering::Release);
    let migrated = state.migrated.clone();
    let feed = state.feed.clone();
    let store = state.store.clone();
    let app = cls_api::router(state);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "api serving");
    // the one line scripts and tests wait for
    println!("cls api listening on http://{address}");
    on_listening(address);
    let listener = cls_api::http::tls::DualListener::new(listener, tls)?;
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<cls_api::http::tls::Peer>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let migrations = async {
        migrate_with_retries(&pool, &shutdown).await?;
        if shutdown.is_cancelled() {
            return anyhow::Ok(());
        }
        put_tokens(&store, &tokens).await?;
        migrated.store(true, Ordering::Release);
        tracing::info!("migrations applied; api ready");
        tokio::spawn(cls_api::store::notify_listeners(store.clone(), shutdown.clone()));
        feed.run(store, shutdown.clone()).await;
        anyhow::Ok(())
    };
    let (served, migrated) = tokio::join!(server, migrations);
    pool.close().await;
    tracing::info!("api stopped");
    served?;
    migrated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_loopback_address_without_tls_or_gateway_exposes_plain_http() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(exposes_plain_http(public, false, false));
        assert!(!exposes_plain_http(public, true, false));
        assert!(!exposes_plain_http(public, false, true));
        assert!(!exposes_plain_http(loopback, false, false));
        assert!(!exposes_plain_http("[::1]:8080".parse().unwrap(), false, false));
    }
}
