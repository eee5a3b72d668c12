//! Wiring of the built-in controllers: `cls controller NAME` (one controller on Pub/Sub, with /healthz, /readyz,
//! /metrics and, for `local-process`, /logs) and the two controllers that `cls up` runs on its in-process bus.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Args, ValueEnum};
use cls_controllers::local_process::{self, LocalProcess};
use cls_controllers::{ApiClient, Metrics, Runtime, Source, port_allocator};
use cls_core::Kind;
use cls_reconciler::{InProcessBus, PubSubConfig};
use tokio_util::sync::CancellationToken;

use crate::PubSubArgs;
use crate::tokens::UpTokens;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BuiltIn {
    /// Runs the Services of local Clusters as supervised processes on this host.
    LocalProcess,
    /// Assigns `port: 0` and detects port conflicts.
    PortAllocator,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The controller to run.
    #[arg(value_enum)]
    pub name: BuiltIn,
    /// Address of /healthz, /readyz, /metrics (and /logs for local-process).
    #[arg(long, env = "CLS_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// The CLS API.
    #[arg(long, env = "CLS_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// The controller's API token (`cls token create --role controller:NAME`).
    #[arg(long, env = "CLS_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where local-process keeps pid files and logs (default: CLS_HOME/local-process).
    #[arg(long, env = "CLS_CONTROLLER_STATE")]
    pub state_dir: Option<PathBuf>,
    /// Objects reconciled at once.
    #[arg(long, env = "CLS_CONTROLLER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub pubsub: PubSubArgs,
}

#[derive(Clone)]
struct OpsState {
    api: ApiClient,
    metrics: Metrics,
    local: Option<Arc<Runtime<LocalProcess>>>,
}

fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/logs/{namespace}/{name}/{replica}", get(logs))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.api.ready().await { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "api unreachable") }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn logs(
    State(state): State<OpsState>,
    Path((namespace, name, replica)): Path<(String, String, usize)>,
) -> impl IntoResponse {
    let Some(local) = state.local else {
        return (StatusCode::NOT_FOUND, "logs are served by local-process".to_owned());
    };
    let path = local.reconciler().log_path(&namespace, &name, replica);
    match tokio::fs::read(&path).await {
        Ok(bytes) => (StatusCode::OK, String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => (StatusCode::NOT_FOUND, format!("no log for {namespace}/{name} replica {replica}")),
    }
}

fn state_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir),
        None => {
            let home = match std::env::var_os("CLS_HOME") {
                Some(home) => PathBuf::from(home),
                None => crate::default_home()?,
            };
            Ok(home.join("local-process"))
        }
    }
}

/// `cls controller NAME`: one built-in controller on Pub/Sub until `shutdown`.
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let project = args.pubsub.pubsub_project.clone().context(
        "cls controller consumes Pub/Sub: set CLS_PUBSUB_PROJECT (and PUBSUB_EMULATOR_HOST for the emulator)",
    )?;
    let config = PubSubConfig::new(project, &args.pubsub.pubsub_topic, args.pubsub.pubsub_emulator_host.clone());
    let api = ApiClient::new(&args.api_url).with_token(&args.token);
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("cls controller listening on http://{address}");
    let source = Source::PubSub { config, subscription: None };
    let (local, controller) = match args.name {
        BuiltIn::LocalProcess => {
            let mut config = local_process::config();
            config.concurrency = args.concurrency;
            let reconciler = LocalProcess::new(state_dir(args.state_dir)?);
            let runtime = Arc::new(Runtime::new(config, reconciler, api.clone(), metrics.clone()));
            let running = (*runtime).clone();
            let stop = shutdown.clone();
            let local = runtime.clone();
            let task = async move {
                let result = running.run(source, stop).await;
                local.reconciler().stop_all().await;
                result
            };
            (Some(runtime), tokio::spawn(task))
        }
        BuiltIn::PortAllocator => {
            let mut config = port_allocator::config();
            config.concurrency = args.concurrency;
            let runtime = Runtime::new(config, port_allocator::PortAllocator, api.clone(), metrics.clone());
            (None, tokio::spawn(runtime.run(source, shutdown.clone())))
        }
    };
    let app = ops_router(OpsState { api, metrics, local });
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future();
    let (served, controlled) = tokio::join!(served, controller);
    controlled.context("controller task panicked")?.context("controller failed")?;
    tracing::info!("controller stopped");
    served.context("ops server failed")
}

/// The built-in controllers of `cls up`, against the API at `api_address`, on the in-process bus (or on Pub/Sub
/// when configured). Stops the local processes before it returns.
pub async fn run_for_up(
    api_address: SocketAddr,
    tokens: &UpTokens,
    home: PathBuf,
    pubsub: &PubSubArgs,
    bus: InProcessBus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = ApiClient::new(format!("http://{api_address}"));
    let metrics = Metrics::new();
    let source = || match &pubsub.pubsub_project {
        Some(project) => Source::PubSub {
            config: PubSubConfig::new(project, &pubsub.pubsub_topic, pubsub.pubsub_emulator_host.clone()),
            subscription: None,
        },
        None => Source::InProcess(bus.clone()),
    };
    let local = Runtime::new(
        local_process::config(),
        LocalProcess::new(home.join("local-process")),
        api.clone().with_token(&tokens.local_process),
        metrics.clone(),
    );
    let ports = Runtime::new(
        port_allocator::config(),
        port_allocator::PortAllocator,
        api.with_token(&tokens.port_allocator),
        metrics,
    );
    let (local_result, ports_result) =
        tokio::join!(local.clone().run(source(), shutdown.clone()), ports.run(source(), shutdown.clone()));
    local.reconciler().stop_all().await;
    local_result?;
    ports_result?;
    Ok(())
}

/// Waits until every controller of `names` is registered with the API at `api_address` (at most
/// [`REGISTRATION_WAIT`]; a warning then), or until `shutdown`.
pub async fn wait_registered(api_address: SocketAddr, token: &str, names: &[&str], shutdown: &CancellationToken) {
    let api = ApiClient::new(format!("http://{api_address}")).with_token(token);
    let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
    loop {
        let mut missing = Vec::new();
        for name in names {
            if !matches!(api.find(Kind::Controller, "", name).await, Ok(Some(_))) {
                missing.push(*name);
            }
        }
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(?missing, "built-in controllers not registered yet; objects may be Ready without them");
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
}

/// How long `cls up` waits for its built-in controllers to register before it says it is ready anyway.
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
