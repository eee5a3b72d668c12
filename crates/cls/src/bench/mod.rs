//! `cls bench`: benchmarks that print their figure beside a baseline measured in the same run on the same
//! PostgreSQL, and end with `ratio: R`. Each starts what it needs: its own PostgreSQL (or `DATABASE_URL`) and the
//! API in this process on a loopback port. HTTP load comes from `wrk` (Debian package `wrk`), the baselines from
//! `pgbench` against the same server (`cls bench controller`: a plain Pub/Sub subscriber on the same emulator).

mod controller;
mod e2e;
mod load;
mod scheduler;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::postgres::{self, Embedded};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// PostgreSQL to use; by default a temporary one of its own. pgbench tables are created in it and dropped.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// How long each measurement runs in all (`read`, `write` and `list` take it in four rounds, taking turns with
    /// their baseline).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub duration: Duration,
    #[command(subcommand)]
    pub which: Bench,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// GET one object by uid and by namespace/name at concurrency 8 and 64, against pgbench select-only.
    Read,
    /// Controller status reports at concurrency 8, against pgbench simple-update (-N).
    Write,
    /// List 10,000 Clusters in pages of 10 at concurrency 10: p50/p99 and requests/s, against pgbench select-only.
    List,
    /// Apply to Ready of a local Service through a real `cls up`, against starting the same process directly.
    E2e,
    /// One change reaching 100 and 1,000 watchers: delivery p50/p99, against a LISTEN/NOTIFY round trip.
    Watch,
    /// A `cls reconciler` keeping `--objects` objects (5% needing attention) on schedule: events/s, schedule lag,
    /// resident memory, against pgbench simple-update (-N).
    Scheduler {
        #[arg(long, default_value_t = 1_000_000)]
        objects: i64,
    },
    /// One SDK controller process with a no-op reconcile consuming reconcile events of `--objects` Clusters from a
    /// Pub/Sub emulator: reconciles/s and reconcile p50/p99, against a plain subscriber acking the same messages.
    Controller {
        /// Clusters the events are about (one ordering key each). The emulator runs a thread per ordering key and
        /// subscription: at 6,000 its own plain subscriber fell from ~3,000 to ~750 msgs/s on this machine.
        #[arg(long, default_value_t = 3_000)]
        objects: usize,
        /// Reconcile events published (round-robin over the objects) before the controller starts. Deliveries of
        /// one object that arrive while it is being reconciled coalesce into one reconcile.
        #[arg(long, default_value_t = 15_000)]
        messages: usize,
        /// Reconciles running at once in the controller (`ControllerConfig::concurrency`).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Streaming pulls of the controller (`ControllerConfig::streams`) and of the baseline subscriber.
        #[arg(long, default_value_t = 2)]
        streams: usize,
    },
    /// The controller process of `cls bench controller` (started by it).
    #[command(hide = true)]
    ControllerProcess(controller::ProcessArgs),
}

/// The system under test: a database and the API serving it.
pub(crate) struct Environment {
    pub base: String,
    pub database_url: String,
    pub pool: sqlx::PgPool,
    pub bin_dir: PathBuf,
    /// Sends the admin `token` with every request.
    pub client: reqwest::Client,
    /// An admin token of the API.
    pub token: String,
    shutdown: CancellationToken,
    embedded: Option<Embedded>,
}

impl Environment {
    async fn start(database_url: Option<String>) -> anyhow::Result<Environment> {
        let (database_url, embedded) = match database_url {
            Some(url) => (url, None),
            None => {
                let embedded = tokio::task::spawn_blocking(Embedded::start_temporary).await??;
                (embedded.url(), Some(embedded))
            }
        };
        let bin_dir = match &embedded {
            Some(embedded) => embedded.bin_dir().to_path_buf(),
            None => postgres::find_binaries()?,
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(64)
            .connect_with(cls_api::store::connect_options(&database_url)?)
            .await?;
        cls_api::store::migrate(&pool).await?;
        let store = cls_api::Store::new(pool.clone(), cls_api::ScheduleConfig::default());
        let token = cls_api::auth::generate_token();
        store.put_token("bench-admin", &cls_api::auth::hash_token(&token), "admin", None).await?;
        // the load generators are one identity: no rate limit
        let limits = cls_api::http::guard::Limits { rate: None, ..Default::default() };
        let state = cls_api::AppState::with_security(store, Default::default(), limits);
        let shutdown = CancellationToken::new();
        tokio::spawn(state.feed.clone().run(state.store.clone(), shutdown.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = cls_api::router(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        while !state.feed.is_running() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let client = reqwest::Client::builder().pool_max_idle_per_host(2048).default_headers(headers).build()?;
        Ok(Environment {
            base: format!("http://{address}"),
            database_url,
            pool,
            bin_dir,
            client,
            token,
            shutdown,
            embedded,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.pool.close().await;
        if let Some(embedded) = self.embedded {
            let _ = tokio::task::spawn_blocking(move || embedded.stop()).await;
        }
    }

    /// Creates `count` Clusters named `prefix-N` in `default` (in parallel) and returns their uids. One that an
    /// earlier run on the same database left is used as it is, so that a benchmark runs again on `--database-url`.
    pub async fn seed_clusters(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let client = self.client.clone();
            let name = format!("{prefix}-{index}");
            let url = format!("{}/api/v1/clusters", self.base);
            let existing = format!("{}/apis/cls.dev/v1alpha1/namespaces/default/clusters/{name}", self.base);
            let permit = semaphore.clone().acquire_owned().await?;
            let manifest = json!({"metadata": {"name": name, "labels": {"bench": prefix}},
                                  "spec": {"platform": {"type": "gcp", "region": "europe-west1"}}});
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let mut response = client.post(url).json(&manifest).send().await?;
                if response.status() == StatusCode::CONFLICT {
                    response = client.get(existing).send().await?;
                }
                let status = response.status();
                let body: Value = response.json().await?;
                if !status.is_success() {
                    bail!("seeding failed with {status}: {body}");
                }
                anyhow::Ok(body["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
            }));
        }
        let mut uids = Vec::with_capacity(count);
        for task in tasks {
            uids.push(task.await??);
        }
        Ok(uids)
    }
}

impl Environment {
    /// Sends every request (16 at a time); fails on the first answer that is not a success.
    pub async fn send_all(&self, requests: Vec<reqwest::RequestBuilder>) -> anyhow::Result<()> {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::with_capacity(requests.len());
        for request in requests {
            let permit = semaphore.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let response = request.send().await?;
                let status = response.status();
                if !status.is_success() {
                    bail!("request failed with {status}: {}", response.text().await.unwrap_or_default());
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }
}

/// Runs one benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Bench::ControllerProcess(process) = args.which {
        return controller::process(process).await;
    }
    let environment = Environment::start(args.database_url.clone()).await.context("cannot start the benchmark")?;
    let result = match args.which {
        Bench::Read => load::read(&environment, args.duration).await,
        Bench::Write => load::write(&environment, args.duration).await,
        Bench::List => load::list(&environment, args.duration).await,
        Bench::Watch => watch::run(&environment).await,
        Bench::E2e => e2e::run(&environment).await,
        Bench::Scheduler { objects } => scheduler::run(&environment, objects, args.duration).await,
        Bench::Controller { objects, messages, concurrency, streams } => {
            controller::run(&environment, objects, messages, concurrency, streams).await
        }
        Bench::ControllerProcess(_) => unreachable!("handled above"),
    };
    environment.stop().await;
    result
}
