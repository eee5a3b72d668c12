//! Wiring of the `cls` roles: flags, logging, shutdown, and the subcommands.

mod bench;
mod controller;
mod kubeconfig;
mod postgres;
mod reconciler;
mod server;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

pub use controller::ControllerArgs;
pub use reconciler::{PubSubArgs, ReconcilerArgs};

/// CLS: a Kubernetes-style control plane for cluster lifecycle.
#[derive(Debug, Parser)]
#[command(name = "cls", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "CLS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process: PostgreSQL (its own under CLS_HOME unless DATABASE_URL is set),
    /// migrations and the API.
    Up(UpArgs),
    /// Run the API server against DATABASE_URL.
    Api(ApiArgs),
    /// Run the database migrations against DATABASE_URL and exit.
    Migrate(DatabaseArgs),
    /// Print the CustomResourceDefinitions of the cls.dev group (YAML), as `crds/` holds them.
    Crds,
    /// Benchmarks, each beside a baseline measured in the same run (needs `wrk` and `pgbench`).
    Bench(bench::BenchArgs),
    /// Run the reconciler (outbox relay and scheduler) against DATABASE_URL and Pub/Sub.
    Reconciler(ReconcilerArgs),
    /// Run one built-in controller (local-process, port-allocator) against the API and Pub/Sub.
    Controller(ControllerArgs),
    /// Create, list and revoke API tokens (in DATABASE_URL, or through the API `cls up` serves).
    Token(tokens::TokenArgs),
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Reconcile cadence while an object needs attention (not Ready, Degraded, deleting).
    #[arg(long, env = "CLS_ATTENTION_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub attention_interval: Duration,
    /// Reconcile cadence while an object is stable.
    #[arg(long, env = "CLS_STABLE_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub stable_interval: Duration,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to serve on.
    #[arg(long, env = "CLS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub security: tokens::SecurityArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to serve on.
    #[arg(long, env = "CLS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL connection URL; when unset, `cls up` runs its own PostgreSQL and keeps its data across runs.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where `cls up` keeps its state (default: ~/.cls).
    #[arg(long, env = "CLS_HOME")]
    pub home: Option<PathBuf>,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub pubsub: PubSubArgs,
    /// Run the built-in controllers (local-process, port-allocator); `false` leaves every report to outside
    /// controllers.
    #[arg(long, env = "CLS_BUILTIN_CONTROLLERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub builtin_controllers: bool,
    #[command(flatten)]
    pub security: tokens::SecurityArgs,
}

/// Installs the tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the chosen role until it finishes or a shutdown signal arrives.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = server::shutdown_signal();
    match cli.command {
        Command::Bench(args) => bench::run(args).await,
        Command::Crds => {
            print!("{}", cls_core::crd::crds_yaml());
            Ok(())
        }
        Command::Migrate(args) => {
            let pool = server::pool(&args.database_url)?;
            server::migrate_with_retries(&pool, &shutdown).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(args) => tokens::run(args).await,
        Command::Api(args) => {
            let schedule = schedule_config(&args.schedule);
            let database_url = &args.database.database_url;
            let settings = server::ApiSettings {
                listen: args.listen,
                schedule,
                security: &args.security,
                tokens: Vec::new(),
                tls: args.security.tls()?,
            };
            server::serve(database_url, settings, shutdown, |_| {}).await
        }
        Command::Reconciler(args) => reconciler::run(args, shutdown).await,
        Command::Controller(args) => controller::run(args, shutdown).await,
        Command::Up(args) => {
            let schedule = schedule_config(&args.schedule);
            let home = match args.home {
                Some(home) => home,
                None => default_home()?,
            };
            std::fs::create_dir_all(&home)?;
            let kubeconfig_home = home.clone();
            let controllers_home = home.clone();
            let in_process = cls_reconciler::InProcessBus::new();
            let tokens = tokens::UpTokens::generate();
            // kubectl sends its token only over TLS: serve HTTPS (and plain HTTP) with a certificate of our own,
            // unless one is given
            let (tls, authority) = match args.security.tls()? {
                Some(tls) => (tls, None),
                None => {
                    let certificates = tls::LocalCertificates::generate(args.listen)?;
                    certificates.write_authority(&home)?;
                    let config = cls_api::http::tls::server_config(
                        certificates.cert_pem.as_bytes(),
                        certificates.key_pem.as_bytes(),
                    )?;
                    (config, Some(certificates.ca_pem))
                }
            };
            let (api_address_sender, api_address) = tokio::sync::watch::channel(None);
            // `DATABASE_URL=` (set but empty) means unset, as in most tools
            let (database_url, embedded) = match args.database_url.filter(|url| !url.trim().is_empty()) {
                Some(url) => (url, None),
                None => {
                    let embedded = tokio::task::spawn_blocking(move || postgres::Embedded::start(&home)).await??;
                    (embedded.url(), Some(embedded))
                }
            };
            let serve = async {
                let write_kubeconfig = |address| {
                    let written = kubeconfig::write(&kubeconfig_home, address, &tokens.admin, authority.as_deref())
                        .inspect_err(|error| tracing::warn!(error = %error, "cannot write the kubeconfig"))
                        .ok();
                    let _ = api_address_sender.send(Some((address, written)));
                };
                let settings = server::ApiSettings {
                    listen: args.listen,
                    schedule,
                    security: &args.security,
                    tokens: tokens.entries(),
                    tls: Some(tls),
                };
                let served = server::serve(&database_url, settings, shutdown.clone(), write_kubeconfig).await;
                shutdown.cancel();
                served
            };
            let reconciler = reconciler::run_for_up(
                &database_url,
                &args.pubsub,
                &args.schedule,
                in_process.clone(),
                shutdown.clone(),
            );
            let controllers = async {
                if !args.builtin_controllers {
                    return Ok(());
                }
                // the API may fail before it serves (then `shutdown` is cancelled): nothing to wait for
                let Some((address, _)) = serving(api_address.clone(), &shutdown).await else {
                    return Ok(());
                };
                controller::run_for_up(
                    address,
                    &tokens,
                    controllers_home,
                    &args.pubsub,
                    in_process.clone(),
                    shutdown.clone(),
                )
                .await
            };
            // "ready" once the API serves and the built-in controllers are registered: until a controller is
            // registered it is in no required set, and a Service applied meanwhile could be Ready without it
            let announce = async {
                let Some((address, kubeconfig)) = serving(api_address.clone(), &shutdown).await else { return };
                if args.builtin_controllers {
                    let names = [cls_controllers::local_process::NAME, cls_controllers::port_allocator::NAME];
                    controller::wait_registered(address, &tokens.admin, &names, &shutdown).await;
                }
                if let Some(path) = kubeconfig {
                    println!("kubectl is ready: export KUBECONFIG={}", path.display());
                    println!("then: kubectl apply -f examples/ && kubectl get clusters,services");
                }
                println!("dashboard: http://{address}/ui#token={}", tokens.admin);
            };
            let (served, reconciled, controlled, ()) = tokio::join!(serve, reconciler, controllers, announce);
            if let Err(error) = reconciled {
                tracing::error!(error = %error, "reconciler failed");
            }
            if let Err(error) = controlled {
                tracing::error!(error = %error, "controllers failed");
            }
            if let Some(embedded) = embedded {
                tokio::task::spawn_blocking(move || embedded.stop()).await?;
            }
            served
        }
    }
}

/// The API's address and the kubeconfig written for it, once `cls up`'s API serves; `None` when it stopped first.
async fn serving(
    mut api_address: tokio::sync::watch::Receiver<Option<(SocketAddr, Option<PathBuf>)>>,
    shutdown: &CancellationToken,
) -> Option<(SocketAddr, Option<PathBuf>)> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        served = api_address.wait_for(Option::is_some) => served.ok().and_then(|served| served.clone()),
    }
}

fn schedule_config(args: &ScheduleArgs) -> cls_api::ScheduleConfig {
    cls_api::ScheduleConfig { attention_interval: args.attention_interval, stable_interval: args.stable_interval }
}

pub(crate) fn default_home() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set; set CLS_HOME"))?;
    Ok(PathBuf::from(home).join(".cls"))
}
