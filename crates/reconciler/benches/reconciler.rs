//! Reconciler benchmark (a command, not a timed test): `cargo bench -p cls-reconciler --bench reconciler`.
//!
//! On the testkit's throwaway PostgreSQL it measures, each beside a baseline from the same run and server:
//! - scheduler: reconcile events/s while draining `CLS_BENCH_OBJECTS` (default 100,000) due schedule rows (5% need
//!   attention), against pgbench's simple-update (`-N`) transactions/s with one client;
//! - relay: publish latency from the commit of an API create to an in-process subscriber (p50/p99), against the
//!   latency of the create itself.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cls_api::store::MIGRATOR;
use cls_reconciler::{InProcessBus, Metrics, Relay, RelayConfig, Scheduler, SchedulerConfig};
use cls_testkit::{PgServer, TestDb};
use tokio_util::sync::CancellationToken;

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

fn pgbench_simple_update_tps(server: &PgServer, seconds: u32) -> f64 {
    let bin = server.bin_dir();
    let url = server.admin_url();
    let initialized =
        Command::new(bin.join("pgbench")).args(["-i", "-q", "-s", "10", &url]).output().expect("pgbench -i");
    assert!(initialized.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&initialized.stderr));
    let run = Command::new(bin.join("pgbench"))
        .args(["-N", "-c", "1", "-j", "1", "-T", &seconds.to_string(), &url])
        .output()
        .expect("pgbench -N");
    let text = String::from_utf8_lossy(&run.stdout);
    text.lines()
        .find(|line| line.starts_with("tps ="))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}"))
}

async fn scheduler_events_per_second(objects: i64) -> (f64, Duration) {
    let db = TestDb::new(&MIGRATOR).await;
    sqlx::query(
        "insert into objects (uid, kind, namespace, name, spec, resource_version, platform)
         select gen_random_uuid(), 'Cluster', 'default', 'c' || i, '{}'::jsonb, nextval('resource_version_seq'), 'local'
         from generate_series(1, $1) i",
    )
    .bind(objects)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into schedules (uid, next_at, attention)
         select uid, now() - interval '1 second' * random(), random() < 0.05 from objects",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("vacuum analyze").execute(&db.pool).await.unwrap();
    let scheduler = Scheduler::new(db.pool.clone(), SchedulerConfig::default(), Metrics::new());
    let started = Instant::now();
    let mut emitted = 0;
    let mut batch_times = Vec::new();
    loop {
        let batch = Instant::now();
        let claimed = scheduler.tick().await.expect("tick");
        if claimed == 0 {
            break;
        }
        batch_times.push(batch.elapsed());
        emitted += claimed;
    }
    let elapsed = started.elapsed();
    assert_eq!(emitted as i64, objects, "every due row fired once");
    (emitted as f64 / elapsed.as_secs_f64(), percentile(&mut batch_times, 0.99))
}

async fn publish_latency(samples: usize) -> (Duration, Duration, Duration) {
    let db = TestDb::new(&MIGRATOR).await;
    let bus = InProcessBus::new();
    let mut subscription = bus.subscribe();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(db.pool.clone(), Arc::new(bus), RelayConfig::default(), Metrics::new());
    tokio::spawn(relay.run(shutdown.clone()));
    // the API's path: a write through the store, then its notifier's NOTIFY wakes the relay
    let store = cls_api::Store::new(db.pool.clone(), cls_api::ScheduleConfig::default());
    tokio::spawn(cls_api::store::notify_listeners(store.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::with_capacity(samples);
    let mut commits = Vec::with_capacity(samples);
    for index in 0..samples {
        let manifest = cls_core::manifest::parse(
            cls_core::Kind::Cluster,
            serde_json::json!({"metadata": {"name": format!("c{index}")}, "spec": {"platform": {"type": "local"}}}),
            cls_core::manifest::Expect::default(),
        )
        .expect("manifest");
        let started = Instant::now();
        store.create(&manifest).await.expect("create");
        let committed = Instant::now();
        commits.push(committed - started);
        tokio::time::timeout(Duration::from_secs(5), subscription.recv()).await.expect("published in time").unwrap();
        latencies.push(committed.elapsed());
    }
    shutdown.cancel();
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    (p50, p99, percentile(&mut commits, 0.99))
}

fn main() {
    let objects: i64 = std::env::var("CLS_BENCH_OBJECTS").ok().and_then(|value| value.parse().ok()).unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let server = PgServer::shared();

    let (p50, p99, commit_p99) = runtime.block_on(publish_latency(1000));
    println!("relay: publish latency from commit p50 {p50:?} p99 {p99:?} (API create, in-process bus, 1000 events)");
    println!("relay baseline: latency of the create itself p99 {commit_p99:?}");

    let (rate, batch_p99) = runtime.block_on(scheduler_events_per_second(objects));
    println!("scheduler: {rate:.0} reconcile events/s draining {objects} due rows (batch p99 {batch_p99:?})");
    let tps = pgbench_simple_update_tps(server, 10);
    println!("scheduler baseline: pgbench -N (simple-update, 1 client) {tps:.0} tps on the same server");
    println!("ratio: {:.2}", rate / tps);
}
