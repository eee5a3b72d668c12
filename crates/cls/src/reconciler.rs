//! Wiring of the reconciler: `cls reconciler` (relay, scheduler and ops endpoints against DATABASE_URL and Pub/Sub)
//! and the reconciler that `cls up` runs in its own process.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use cls_reconciler::{EventBus, InProcessBus, Metrics, PubSubBus, PubSubConfig, RelayConfig, SchedulerConfig};
use tokio_util::sync::CancellationToken;

use crate::{DatabaseArgs, ScheduleArgs, server};

#[derive(Debug, Args)]
pub struct PubSubArgs {
    /// Google Cloud project of the Pub/Sub topic; without it `cls up` uses the in-process bus.
    #[arg(long, env = "CLS_PUBSUB_PROJECT")]
    pub pubsub_project: Option<String>,
    /// The topic every event goes to (created when missing).
    #[arg(long, env = "CLS_PUBSUB_TOPIC", default_value = "cls-events")]
    pub pubsub_topic: String,
    /// `HOST:PORT` of a Pub/Sub emulator.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReconcilerArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CLS_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub pubsub: PubSubArgs,
}

fn scheduler_config(schedule: &ScheduleArgs) -> SchedulerConfig {
    SchedulerConfig {
        attention_interval: schedule.attention_interval,
        stable_interval: schedule.stable_interval,
        ..SchedulerConfig::default()
    }
}

async fn connect_bus(args: &PubSubArgs, shutdown: &CancellationToken) -> anyhow::Result<Option<Arc<dyn EventBus>>> {
    let Some(project) = &args.pubsub_project else {
        return Ok(Some(Arc::new(InProcessBus::new())));
    };
    let config = PubSubConfig::new(project, &args.pubsub_topic, args.pubsub_emulator_host.clone());
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match PubSubBus::connect(config.clone()).await {
            Ok(bus) => return Ok(Some(Arc::new(bus))),
            Err(error) => tracing::warn!(error = %error, "waiting for pub/sub"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// `cls reconciler`: serves the ops endpoints at once, migrates, connects the bus and runs until `shutdown`.
pub async fn run(args: ReconcilerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = server::pool(&args.database.database_url)?;
    let metrics = Metrics::new();
    let migrated = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("cls reconciler listening on http://{address}");
    server::migrate_with_retries(&pool, &shutdown).await?;
    migrated.store(true, Ordering::Release);
    let Some(bus) = connect_bus(&args.pubsub, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(%address, bus = bus.name(), "reconciler running");
    let state =
        cls_reconciler::ops::OpsState { pool: pool.clone(), bus: bus.clone(), metrics: metrics.clone(), migrated };
    let app = cls_reconciler::ops::router(state);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future();
    let reconciler = cls_reconciler::run(
        pool.clone(),
        bus,
        RelayConfig::default(),
        scheduler_config(&args.schedule),
        metrics,
        shutdown.clone(),
    );
    let (served, ()) = tokio::join!(served, reconciler);
    pool.close().await;
    tracing::info!("reconciler stopped");
    served.context("ops server failed")
}

/// The reconciler of `cls up`: on its own pool, after the migrations (which the API runs too, under a lock), on the
/// in-process bus unless Pub/Sub is configured. Runs until `shutdown`.
pub async fn run_for_up(
    database_url: &str,
    pubsub: &PubSubArgs,
    schedule: &ScheduleArgs,
    in_process: InProcessBus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = server::pool(database_url)?;
    server::migrate_with_retries(&pool, &shutdown).await?;
    // the controllers of `cls up` subscribe to this very bus
    let bus = match pubsub.pubsub_project {
        None => Some(Arc::new(in_process) as Arc<dyn EventBus>),
        Some(_) => connect_bus(pubsub, &shutdown).await?,
    };
    let Some(bus) = bus else {
        return Ok(());
    };
    cls_reconciler::run(
        pool.clone(),
        bus,
        RelayConfig::default(),
        scheduler_config(schedule),
        Metrics::new(),
        shutdown,
    )
    .await;
    pool.close().await;
    Ok(())
}
