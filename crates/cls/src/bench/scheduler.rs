//! `cls bench scheduler`: a real `cls reconciler` process keeping a million objects on schedule (5% needing
//! attention, 30 s / 5 min cadences) in steady state. It prints reconcile events per second, the schedule lag
//! (now minus the oldest due tick, sampled every second) and the reconciler's resident memory, beside pgbench
//! simple-update (`-N`) on the same PostgreSQL.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::Environment;
use super::load::pgbench;

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

async fn reconcile_events(client: &reqwest::Client, metrics_url: &str) -> anyhow::Result<f64> {
    let text = client.get(metrics_url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("cls_reconciler_reconcile_events_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// `cls bench scheduler`.
pub async fn run(environment: &Environment, objects: i64, duration: Duration) -> anyhow::Result<()> {
    let seeding = Instant::now();
    // the objects of an earlier run on the same database go first (their schedules with them): the reconciler
    // would otherwise keep those on schedule too
    sqlx::query("delete from objects where kind = 'Cluster' and namespace = 'bench'")
        .execute(&environment.pool)
        .await?;
    sqlx::query(
        "insert into objects (uid, kind, namespace, name, spec, resource_version, platform)
         select gen_random_uuid(), 'Cluster', 'bench', 'c' || i, '{\"platform\":{\"type\":\"gcp\"}}'::jsonb,
                nextval('resource_version_seq'), 'gcp'
         from generate_series(1, $1) i",
    )
    .bind(objects)
    .execute(&environment.pool)
    .await?;
    // steady state from the first due tick on: ticks spread over one interval of each cadence, starting once the
    // seeding is done and the reconciler runs
    sqlx::query(
        "insert into schedules (uid, next_at, attention)
         select uid, now() + interval '30 seconds'
                     + case when a then interval '30 seconds' else interval '300 seconds' end * random(), a
         from (select uid, random() < 0.05 as a from objects where namespace = 'bench') o",
    )
    .execute(&environment.pool)
    .await?;
    sqlx::query("vacuum analyze").execute(&environment.pool).await?;
    println!("seeded {objects} objects in {:.0} s", seeding.elapsed().as_secs_f64());

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    drop(listener);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["reconciler", "--listen", &address.to_string()])
        .env("DATABASE_URL", &environment.database_url)
        .env_remove("CLS_PUBSUB_PROJECT")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start cls reconciler")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("listening on") {
                return anyhow::Ok(());
            }
        }
        bail!("cls reconciler exited")
    })
    .await
    .context("cls reconciler did not start")??;
    let metrics_url = format!("http://{address}/metrics");
    let pid = child.id().context("reconciler pid")?;

    // measure from a few seconds after the first tick was due
    let (due_in,): (f64,) = sqlx::query_as("select extract(epoch from min(next_at) - now())::float8 from schedules")
        .fetch_one(&environment.pool)
        .await?;
    tokio::time::sleep(Duration::from_secs_f64(due_in.max(0.0) + 5.0)).await;
    let started = Instant::now();
    let first = reconcile_events(&environment.client, &metrics_url).await?;
    let mut lags = Vec::new();
    let mut peak_kib = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (lag,): (f64,) = sqlx::query_as(
            "select coalesce(extract(epoch from now() - min(next_at))::float8, 0) from schedules where next_at < now()",
        )
        .fetch_one(&environment.pool)
        .await?;
        lags.push(lag.max(0.0));
        peak_kib = peak_kib.max(resident_kib(pid).unwrap_or_default());
    }
    let last = reconcile_events(&environment.client, &metrics_url).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = child.kill().await;
    let rate = (last - first) / elapsed;
    lags.sort_by(f64::total_cmp);
    let expected = objects as f64 * (0.05 / 30.0 + 0.95 / 300.0);
    println!(
        "{objects} objects, 5% needing attention: {rate:.0} reconcile events/s over {elapsed:.0} s (steady state needs {expected:.0}/s)"
    );
    println!(
        "schedule lag (now - oldest due tick), sampled each second: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );
    println!("cls reconciler resident memory: peak {:.1} MiB", peak_kib as f64 / 1024.0);
    let baseline = pgbench(environment, &["-N"], 2, Duration::from_secs(10)).await?;
    super::load::drop_pgbench_tables(environment).await?;
    println!("baseline pgbench simple-update (-N), 2 clients: {baseline:.0} tps");
    println!("ratio: {:.2} (reconcile events per simple-update transaction)", rate / baseline);
    Ok(())
}
