//! The two-speed scheduler against the real PostgreSQL (no relay runs, so its events stay in the outbox to count).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cls_api::ScheduleConfig;
use cls_reconciler::{Metrics, Scheduler, SchedulerConfig};
use common::Fixture;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const HELPER: &str = "CLS_RECONCILER_SCHEDULER_HELPER";
const ATTENTION: Duration = Duration::from_secs(1);
const STABLE: Duration = Duration::from_secs(5);

fn scheduler_config() -> SchedulerConfig {
    SchedulerConfig {
        attention_interval: ATTENTION,
        stable_interval: STABLE,
        poll_interval: Duration::from_millis(50),
        batch_size: 50,
        ..SchedulerConfig::default()
    }
}

fn start_scheduler(pool: sqlx::PgPool) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(Scheduler::new(pool, scheduler_config(), Metrics::new()).run(shutdown.clone()));
    shutdown
}

/// `(uid, reason, seconds since the first event)` of every reconcile event, oldest first.
async fn reconcile_events(fixture: &Fixture) -> Vec<(Uuid, String, f64)> {
    sqlx::query_as(
        "select uid, reason, extract(epoch from created_at - min(created_at) over ())::float8
         from outbox where event_type like '%.reconcile' order by created_at, id",
    )
    .fetch_all(&fixture.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_objects_reconcile_at_the_fast_cadence_and_ready_ones_at_the_slow_one() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // Arrange: three Ready clusters and three that are not.
        let fixture = Fixture::new(ScheduleConfig { attention_interval: ATTENTION, stable_interval: STABLE }).await;
        fixture.register_controller("probe").await;
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for index in 0..3 {
            let object = fixture.create_cluster(&format!("ready-{index}"), "local").await;
            fixture.report(object.uid, "probe", 1, true).await;
            ready.push(object.uid);
            let object = fixture.create_cluster(&format!("failing-{index}"), "local").await;
            fixture.report(object.uid, "probe", 1, false).await;
            not_ready.push(object.uid);
        }

        // Act
        let scheduler = start_scheduler(fixture.db.pool.clone());
        tokio::time::sleep(Duration::from_millis(11_500)).await;
        scheduler.cancel();

        // Assert
        let events = reconcile_events(&fixture).await;
        let mut per_uid: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for (uid, reason, _) in events {
            per_uid.entry(uid).or_default().push(reason);
        }
        for uid in &not_ready {
            let reasons = per_uid.get(uid).cloned().unwrap_or_default();
            assert!((9..=12).contains(&reasons.len()), "fast cadence: {} events in 11.5 s", reasons.len());
            assert!(reasons.iter().all(|reason| reason == "not_ready"), "reasons: {reasons:?}");
        }
        for uid in &ready {
            let reasons = per_uid.get(uid).cloned().unwrap_or_default();
            assert!((2..=3).contains(&reasons.len()), "slow cadence: {} events in 11.5 s", reasons.len());
            assert!(reasons.iter().all(|reason| reason == "periodic"), "reasons: {reasons:?}");
        }
    })
    .await
    .expect("test finished in time");
}

/// Not a test by itself: a killable scheduler replica for `four_scheduler_replicas_with_one_killed_fire_each_tick_once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process"]
async fn scheduler_helper_process() {
    let Ok(database_url) = std::env::var(HELPER) else { return };
    let pool = sqlx::PgPool::connect(&database_url).await.expect("helper connects");
    let scheduler = Scheduler::new(pool, scheduler_config(), Metrics::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let claimed = scheduler.tick().await.expect("helper tick");
        if claimed > 0 {
            println!("TICKED {claimed}");
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_scheduler_replicas_with_one_killed_fire_each_due_tick_once() {
    tokio::time::timeout(Duration::from_secs(90), async {
        // Arrange: 300 objects that need attention (nothing reports on them): a tick every second each.
        let fixture = Fixture::new(ScheduleConfig { attention_interval: ATTENTION, stable_interval: STABLE }).await;
        for index in 0..300 {
            fixture.create_cluster(&format!("c{index}"), "local").await;
        }
        sqlx::query("delete from outbox").execute(&fixture.db.pool).await.unwrap();
        sqlx::query("update schedules set next_at = now()").execute(&fixture.db.pool).await.unwrap();

        // Act: three replicas here (each with a pool of its own) and one in a process that is killed mid-run.
        let mut replicas = Vec::new();
        for _ in 0..3 {
            let pool = sqlx::PgPool::connect(&fixture.db.url).await.unwrap();
            replicas.push(start_scheduler(pool));
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["scheduler_helper_process", "--exact", "--ignored", "--nocapture"])
            .env(HELPER, &fixture.db.url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ticked = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).filter(|line| line.starts_with("TICKED")).count()
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        for replica in &replicas {
            replica.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Assert: per object, consecutive ticks are an interval apart (a tick fired twice would be ~0 apart) and
        // never much more (a lost tick would leave a gap of two intervals).
        assert!(ticked.await.unwrap() > 0, "the killed replica took part before it died");
        let events = reconcile_events(&fixture).await;
        let mut per_uid: BTreeMap<Uuid, Vec<f64>> = BTreeMap::new();
        for (uid, _, at) in events {
            per_uid.entry(uid).or_default().push(at);
        }
        assert_eq!(per_uid.len(), 300, "every object was reconciled");
        for (uid, times) in &per_uid {
            assert!(times.len() >= 6, "object {uid}: only {} ticks in 8 s", times.len());
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(gap >= 0.9, "object {uid}: two ticks {gap:.3} s apart (fired twice)");
                assert!(gap <= 1.9, "object {uid}: two ticks {gap:.3} s apart (a tick was lost)");
            }
        }
    })
    .await
    .expect("test finished in time");
}
