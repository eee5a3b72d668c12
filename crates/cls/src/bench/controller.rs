//! `cls bench controller`: one controller process, built with the SDK (`cls_controllers::Runtime`), whose reconcile
//! is a no-op answering `Available`, consuming its subscription on a real Pub/Sub emulator. The baseline is the
//! emulator itself: a plain `google-cloud-pubsub` subscriber that only acknowledges the same messages.
//!
//! Flow: start the emulator (the test kit's, on a free loopback port); create the topic, the controller's
//! subscription `cls-bench-noop` and the baseline's `bench-raw` (both as the SDK creates them: ordering on, platform
//! filter); seed `--objects` Clusters on platform `gcp` through the API, store on each the report the no-op
//! reconcile produces and read each once (which stores its aggregate), so that every reconcile of the run is a
//! steady-state one: one GET, no write. Publish `--messages` `cluster.reconcile` events round-robin over the objects
//! (ordering key = uid): both subscriptions hold the same backlog. Start the controller process (`cls bench
//! controller-process`, a hidden child mode of this binary; no resync at start, so every reconcile comes from a
//! message) and read its `/metrics` every 100 ms until it acknowledged every message; rates are taken between 10%
//! and 90% of the messages acknowledged (steady state, without start and tail). Then the controller stops and the
//! plain subscriber drains `bench-raw`, measured the same way.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use clap::Args;
use cls_controllers::{
    ApiClient, ControllerConfig, Metrics, Outcome, Reconcile, ReconcileError, Request, Runtime, Source,
};
use cls_core::Kind;
use cls_core::event::{Event, EventKind, event_type};
use cls_core::resources::ControllerReport;
use cls_reconciler::{BusMessage, EventBus, PubSubBus, PubSubConfig};
use cls_testkit::PubSubEmulator;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Environment;

const CONTROLLER: &str = "bench-noop";
const PROJECT: &str = "cls-bench";
const TOPIC: &str = "cls-events";
const PLATFORM: &str = "gcp";
const RAW_SUBSCRIPTION: &str = "bench-raw";
/// Messages leased at once by the baseline subscriber: the SDK's setting.
const MAX_OUTSTANDING: i64 = 10_000;
/// Messages published at once while building the backlog.
const PUBLISH_CHUNK: usize = 100;
/// A run that acknowledges nothing for this long has failed.
const STALL: Duration = Duration::from_secs(30);

/// The hidden child mode: the no-op controller, with `/metrics` on `--listen`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    #[arg(long)]
    pub api_url: String,
    #[arg(long)]
    pub pubsub_emulator_host: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// The API token the controller presents.
    #[arg(long, env = "CLS_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Reconciles to `Available` without doing anything.
struct NoOp;

impl NoOp {
    fn outcome() -> Outcome {
        Outcome::available("NoOp", "nothing to do")
    }
}

impl Reconcile for NoOp {
    async fn reconcile(&self, _request: &Request) -> Result<Outcome, ReconcileError> {
        Ok(NoOp::outcome())
    }

    async fn cleanup(&self, _request: &Request) -> Result<(), ReconcileError> {
        Ok(())
    }

    fn uses_finalizer(&self, _kind: Kind) -> bool {
        false
    }
}

fn controller_config(concurrency: usize, streams: usize) -> ControllerConfig {
    let mut config = ControllerConfig::new(CONTROLLER, &[Kind::Cluster])
        .platforms(&[PLATFORM])
        .description("the no-op controller of cls bench controller");
    config.concurrency = concurrency;
    config.streams = streams;
    // every reconcile of the run comes from a message (the objects already carry this controller's report)
    config.resync_on_start = false;
    config
}

fn pubsub_config(emulator_host: &str) -> PubSubConfig {
    PubSubConfig::new(PROJECT, TOPIC, Some(emulator_host.to_owned()))
}

/// `cls bench controller-process`: runs until killed.
pub async fn process(args: ProcessArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let metrics = Metrics::new();
    let served = metrics.clone();
    let app = Router::new().route("/metrics", get(move || std::future::ready(served.encode())));
    tokio::spawn(axum::serve(listener, app).into_future());
    println!("listening on {address}");
    let api = ApiClient::new(args.api_url).with_token(&args.token);
    let runtime = Runtime::new(controller_config(args.concurrency, args.streams), NoOp, api, metrics);
    let source = Source::PubSub { config: pubsub_config(&args.pubsub_emulator_host), subscription: None };
    runtime.run(source, CancellationToken::new()).await?;
    Ok(())
}

/// The controller's counters at one moment.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: Option<Instant>,
    acked: f64,
    reconciles_ok: f64,
    reconciles_error: f64,
    reports: f64,
    /// `(le, cumulative count)` of the reconcile duration histogram.
    buckets: Vec<(f64, f64)>,
}

impl Sample {
    fn parse(text: &str) -> Sample {
        let mut sample = Sample::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if series.starts_with("cls_controller_acked_total") {
                sample.acked += value;
            } else if series.starts_with("cls_controller_reports_total") {
                sample.reports += value;
            } else if series.starts_with("cls_controller_reconciles_total") && series.contains("result=\"ok\"") {
                sample.reconciles_ok += value;
            } else if series.starts_with("cls_controller_reconciles_total") && series.contains("result=\"error\"") {
                sample.reconciles_error += value;
            } else if series.starts_with("cls_controller_reconcile_duration_seconds_bucket") {
                let le = series.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                sample.buckets.push((le, value));
            }
        }
        sample
    }
}

/// The upper bound of the bucket holding the `fraction` quantile of the observations between `first` and `last`.
fn quantile(first: &Sample, last: &Sample, fraction: f64) -> f64 {
    let counts: Vec<(f64, f64)> = last
        .buckets
        .iter()
        .map(|(le, count)| {
            let before = first.buckets.iter().find(|(other, _)| other == le).map_or(0.0, |(_, count)| *count);
            (*le, count - before)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, count)| *count);
    counts.iter().find(|(_, count)| *count >= total * fraction).map_or(f64::NAN, |(le, _)| *le)
}

fn milliseconds(seconds: f64) -> String {
    if seconds.is_finite() { format!("{:.1} ms", seconds * 1000.0) } else { "over the largest bucket".to_owned() }
}

/// `cls bench controller`.
pub async fn run(
    environment: &Environment,
    objects: usize,
    messages: usize,
    concurrency: usize,
    streams: usize,
) -> anyhow::Result<()> {
    if objects == 0 || messages < 10 {
        bail!("--objects must be positive and --messages at least 10");
    }
    let emulator = tokio::task::spawn_blocking(PubSubEmulator::start)
        .await
        .context("cannot start the Pub/Sub emulator (java and the emulator jar are needed)")?;
    let result = measure(environment, &emulator.host(), objects, messages, concurrency, streams).await;
    let _ = tokio::task::spawn_blocking(move || drop(emulator)).await;
    result
}

async fn measure(
    environment: &Environment,
    emulator_host: &str,
    objects: usize,
    messages: usize,
    concurrency: usize,
    streams: usize,
) -> anyhow::Result<()> {
    let pubsub = pubsub_config(emulator_host);
    let controller = controller_config(concurrency, streams);
    pubsub.ensure_topic(&pubsub.topic_admin().await?).await?;
    let subscriptions = pubsub.subscription_admin().await?;
    for subscription in [format!("cls-{CONTROLLER}"), RAW_SUBSCRIPTION.to_owned()] {
        pubsub.ensure_subscription(&subscriptions, &subscription, &controller.subscription_filter()).await?;
    }

    let seeding = Instant::now();
    let uids = environment.seed_clusters("ctl", objects).await?;
    let report = ControllerReport {
        controller: CONTROLLER.to_owned(),
        observed_generation: 1,
        conditions: NoOp::outcome().conditions,
        ..ControllerReport::default()
    };
    let urls: Vec<String> = uids.iter().map(|uid| format!("{}/api/v1/clusters/{uid}", environment.base)).collect();
    let client = &environment.client;
    environment.send_all(urls.iter().map(|url| client.put(format!("{url}/status")).json(&report)).collect()).await?;
    // the first read after a report computes and stores the aggregate: done here, so that the run only reads
    environment.send_all(urls.iter().map(|url| client.get(url)).collect()).await?;
    println!(
        "seeded {objects} Clusters on platform {PLATFORM}, each with the no-op controller's report, in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let publishing = Instant::now();
    publish(&pubsub, &uids, messages).await?;
    let published = publishing.elapsed().as_secs_f64();
    println!(
        "published {messages} cluster.reconcile events round-robin over them in {published:.1} s ({:.0}/s)",
        messages as f64 / published
    );

    let (first, last) = run_controller(environment, emulator_host, &controller, messages).await?;
    let (Some(first_at), Some(last_at)) = (first.at, last.at) else { bail!("no samples") };
    let elapsed = (last_at - first_at).as_secs_f64();
    let reconciles = (last.reconciles_ok - first.reconciles_ok) / elapsed;
    let acked = (last.acked - first.acked) / elapsed;
    println!(
        "controller {CONTROLLER} (one process, concurrency {concurrency}, {streams} streaming pull(s)): {reconciles:.0} reconciles/s, {acked:.0} \
         messages acked/s in steady state (10% to 90% of the messages, {elapsed:.1} s); reconcile duration \
         p50 <= {}, p99 <= {}; during the whole run: {} reports written, {} failed reconciles",
        milliseconds(quantile(&first, &last, 0.5)),
        milliseconds(quantile(&first, &last, 0.99)),
        last.reports,
        last.reconciles_error,
    );

    let raw = drain_raw(&pubsub, messages, streams).await?;
    println!(
        "baseline: a plain google-cloud-pubsub subscriber acking the same {messages} messages from the same \
         emulator ({streams} streaming pull(s)): {raw:.0} msgs/s (10% to 90%)"
    );
    let verdict = if reconciles >= 1000.0 { "met" } else { "NOT met" };
    println!("target 1,000 reconciles/s from one controller process: {verdict}");
    println!("ratio: {:.2} (controller reconciles/s over raw msgs/s)", reconciles / raw);
    Ok(())
}

async fn publish(pubsub: &PubSubConfig, uids: &[String], messages: usize) -> anyhow::Result<()> {
    let bus = PubSubBus::connect(pubsub.clone()).await?;
    let uids: Vec<Uuid> = uids.iter().map(|uid| uid.parse()).collect::<Result<_, _>>()?;
    let all: Vec<BusMessage> = (0..messages)
        .map(|index| {
            let object = index % uids.len();
            let event = Event {
                id: Uuid::new_v4(),
                type_: event_type(Kind::Cluster, EventKind::Reconcile),
                kind: Kind::Cluster.as_str().to_owned(),
                uid: uids[object],
                namespace: "default".to_owned(),
                name: format!("ctl-{object}"),
                generation: 1,
                reason: Some("periodic".to_owned()),
                time: jiff::Timestamp::now(),
            };
            BusMessage::new(event, PLATFORM)
        })
        .collect();
    // as the relay does: what the bus could not confirm is published again. The publisher sends one request per
    // ordering key (here: per message) and the emulator serves each request on a thread of its own, so the chunks
    // stay small: 500 at once made it run thousands of threads and time out.
    for chunk in all.chunks(PUBLISH_CHUNK) {
        let mut pending = chunk.to_vec();
        for attempt in 1.. {
            let results = bus.publish(&pending).await;
            let mut failed = Vec::new();
            let mut last_error = None;
            for (message, result) in pending.into_iter().zip(results) {
                if let Err(error) = result {
                    failed.push(message);
                    last_error = Some(error);
                }
            }
            match last_error {
                None => break,
                Some(error) if attempt >= 10 => {
                    bail!("publish to the emulator failed 10 times: {error} ({error:?})");
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            pending = failed;
        }
    }
    Ok(())
}

/// Starts the controller process, samples its metrics until it acknowledged `messages`, and answers the samples at
/// 10% and 90% of them.
async fn run_controller(
    environment: &Environment,
    emulator_host: &str,
    controller: &ControllerConfig,
    messages: usize,
) -> anyhow::Result<(Sample, Sample)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench", "controller-process", "--api-url", &environment.base])
        .args(["--pubsub-emulator-host", emulator_host, "--concurrency", &controller.concurrency.to_string()])
        .args(["--streams", &controller.streams.to_string()])
        .env("RUST_LOG", "warn")
        .env("CLS_TOKEN", &environment.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the controller process")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(address) = line.strip_prefix("listening on ") {
                return anyhow::Ok(address.to_owned());
            }
        }
        bail!("the controller process exited")
    })
    .await
    .context("the controller process did not start")??;
    let metrics_url = format!("http://{address}/metrics");
    let sample = || async {
        let text = environment.client.get(&metrics_url).send().await?.error_for_status()?.text().await?;
        let mut sample = Sample::parse(&text);
        sample.at = Some(Instant::now());
        anyhow::Ok(sample)
    };
    let (low, high) = (messages as f64 * 0.1, messages as f64 * 0.9);
    let (mut first, mut last) = (None, None);
    let mut progress = (0.0, Instant::now());
    let result = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current = match sample().await {
            Ok(current) => current,
            Err(error) => break Err(error),
        };
        if first.is_none() && current.acked >= low {
            first = Some(current.clone());
        }
        if last.is_none() && current.acked >= high {
            last = Some(current.clone());
        }
        if current.acked >= messages as f64 {
            break Ok(());
        }
        if current.acked > progress.0 {
            progress = (current.acked, Instant::now());
        } else if progress.1.elapsed() > STALL {
            break Err(anyhow::anyhow!(
                "the controller acknowledged {} of {messages} messages and nothing more for {STALL:?}",
                current.acked
            ));
        }
    };
    let _ = child.kill().await;
    result?;
    Ok((first.context("no sample at 10%")?, last.context("no sample at 90%")?))
}

/// Acknowledges `messages` from the baseline subscription on `streams` streaming pulls (sharing the lease limit, as
/// in the SDK); answers messages/s between 10% and 90% of them.
async fn drain_raw(pubsub: &PubSubConfig, messages: usize, streams: usize) -> anyhow::Result<f64> {
    let subscriber = pubsub.subscriber().await?;
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    for _ in 0..streams.max(1) {
        let mut stream = subscriber
            .subscribe(pubsub.subscription_path(RAW_SUBSCRIPTION))
            .set_max_outstanding_messages((MAX_OUTSTANDING / streams.max(1) as i64).max(1))
            .build();
        let sender = sender.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = stream.next() => next,
                };
                let outcome = match next {
                    Some(Ok((_message, handler))) => {
                        handler.ack();
                        Ok(())
                    }
                    Some(Err(error)) => Err(format!("the baseline subscription failed: {error}")),
                    None => Err("the baseline subscription ended".to_owned()),
                };
                let failed = outcome.is_err();
                if sender.send(outcome).is_err() || failed {
                    return;
                }
            }
        });
    }
    let (low, high) = (messages / 10, messages * 9 / 10);
    let (mut first, mut last) = (None, None);
    let mut count = 0;
    while count < messages {
        match tokio::time::timeout(STALL, received.recv()).await {
            Ok(Some(Ok(()))) => count += 1,
            Ok(Some(Err(error))) => bail!(error),
            Ok(None) => bail!("the baseline streams stopped"),
            Err(_) => bail!("the baseline received {count} of {messages} messages and nothing more for {STALL:?}"),
        }
        if count == low {
            first = Some(Instant::now());
        }
        if count == high {
            last = Some(Instant::now());
        }
    }
    let (Some(first), Some(last)) = (first, last) else { bail!("too few messages") };
    Ok((high - low) as f64 / (last - first).as_secs_f64())
}
