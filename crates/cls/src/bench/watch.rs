//! `cls bench watch`: one change at a time reaching 100 and 1,000 watchers of the same namespace. Latency runs from
//! just before the PATCH is sent to the moment each watcher has read the event off its stream. The baseline is the
//! floor any PostgreSQL-fed watch has: a LISTEN/NOTIFY round trip on the same server.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::Environment;

const CHANGES: usize = 50;
const SPACING: Duration = Duration::from_millis(40);

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

/// Opens a watch and forwards the resourceVersion of every event with the time it was read.
async fn watcher(
    environment: &Environment,
    from: &str,
    events: mpsc::UnboundedSender<(i64, Instant)>,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/apis/cls.dev/v1alpha1/namespaces/default/clusters?watch=true&resourceVersion={from}&fieldSelector=metadata.name%3Dwatched-0",
        environment.base
    );
    let mut response = environment.client.get(url).send().await?.error_for_status()?;
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let now = Instant::now();
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line).unwrap_or_default();
                let version =
                    event["object"]["metadata"]["resourceVersion"].as_str().and_then(|text| text.parse().ok());
                if let Some(version) = version
                    && events.send((version, now)).is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(())
}

async fn notify_round_trips(environment: &Environment) -> anyhow::Result<Vec<f64>> {
    let mut listener = PgListener::connect(&environment.database_url).await?;
    listener.listen("cls_bench").await?;
    let mut samples = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        let started = Instant::now();
        sqlx::query("select pg_notify('cls_bench', '')").execute(&environment.pool).await?;
        listener.recv().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(SPACING).await;
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// `cls bench watch`.
pub async fn run(environment: &Environment) -> anyhow::Result<()> {
    let uids = environment.seed_clusters("watched", 1).await?;
    let url = format!("{}/api/v1/clusters/{}", environment.base, uids[0]);
    let notify = notify_round_trips(environment).await?;
    let mut worst_ratio: f64 = 0.0;
    for watchers in [100, 1000] {
        let list: Value = environment
            .client
            .get(format!("{}/apis/cls.dev/v1alpha1/namespaces/default/clusters", environment.base))
            .send()
            .await?
            .json()
            .await?;
        let from = list["metadata"]["resourceVersion"].as_str().context("list resourceVersion")?.to_owned();
        let (sender, mut receiver) = mpsc::unbounded_channel();
        for _ in 0..watchers {
            watcher(environment, &from, sender.clone()).await?;
        }
        drop(sender);
        let mut sent: Vec<(i64, Instant)> = Vec::with_capacity(CHANGES);
        for change in 0..CHANGES {
            let started = Instant::now();
            let response = environment
                .client
                .patch(&url)
                .header("content-type", "application/merge-patch+json")
                .body(json!({"metadata": {"labels": {"change": change.to_string()}}}).to_string())
                .send()
                .await?;
            let body: Value = response.error_for_status()?.json().await?;
            let version: i64 = body["metadata"]["resourceVersion"].as_str().context("resourceVersion")?.parse()?;
            sent.push((version, started));
            tokio::time::sleep(SPACING).await;
        }
        let expected = watchers * CHANGES;
        let mut latencies = Vec::with_capacity(expected);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while latencies.len() < expected {
            let Ok(Some((version, received))) = tokio::time::timeout_at(deadline, receiver.recv()).await else {
                bail!("only {} of {expected} deliveries arrived within 30 s", latencies.len());
            };
            if let Some((_, started)) = sent.iter().find(|(sent_version, _)| *sent_version == version) {
                latencies.push(received.duration_since(*started).as_secs_f64() * 1000.0);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let p99 = percentile(&latencies, 0.99);
        println!(
            "{watchers} watchers, {CHANGES} changes: {} deliveries, change-to-delivery p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
            latencies.len(),
            percentile(&latencies, 0.5),
            latencies.last().copied().unwrap_or_default(),
        );
        worst_ratio = worst_ratio.max(p99 / percentile(&notify, 0.99));
    }
    println!(
        "baseline LISTEN/NOTIFY round trip on the same PostgreSQL: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&notify, 0.5),
        percentile(&notify, 0.99)
    );
    println!("ratio: {worst_ratio:.2} (watch p99 over NOTIFY p99; lower is better)");
    Ok(())
}
