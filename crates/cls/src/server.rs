//! Serving the API: database connection, migrations, HTTP server and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

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

/// Connects to PostgreSQL, waiting up to 30 s for it to accept connections.
pub async fn connect(database_url: &str) -> anyhow::Result<sqlx::PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(database_url)
        .context("invalid DATABASE_URL")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::query("select 1").execute(&pool).await {
            Ok(_) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %error, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("cannot connect to the database"),
        }
    }
}

/// Migrates and serves the API on `listen` until `shutdown`, then drains in-flight requests.
pub async fn serve(
    database_url: &str,
    listen: SocketAddr,
    schedule: cls_api::ScheduleConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = connect(database_url).await?;
    cls_api::store::migrate(&pool).await.context("migrations failed")?;
    let store = cls_api::Store::new(pool.clone(), schedule);
    let app = cls_api::router(cls_api::AppState { store });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "api serving");
    // the one line scripts and tests wait for
    println!("cls api listening on http://{address}");
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    pool.close().await;
    tracing::info!("api stopped");
    Ok(())
}
