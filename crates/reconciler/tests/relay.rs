//! The outbox relay against the real PostgreSQL and the real Pub/Sub emulator.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cls_api::ScheduleConfig;
use cls_core::Kind;
use cls_reconciler::{Metrics, PubSubBus, PubSubConfig, Relay, RelayConfig};
use cls_testkit::PubSubEmulator;
use cls_testkit::eventually;
use common::{Collector, Fixture, topic};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const HELPER: &str = "CLS_RECONCILER_RELAY_HELPER";

fn fast_relay() -> RelayConfig {
    RelayConfig {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..RelayConfig::default()
    }
}

async fn start_relay(fixture: &Fixture, config: PubSubConfig, relay: RelayConfig) -> CancellationToken {
    let bus = PubSubBus::connect(config).await.expect("bus connects");
    let shutdown = CancellationToken::new();
    let relay = Relay::new(fixture.db.pool.clone(), Arc::new(bus), relay, Metrics::new());
    tokio::spawn(relay.run(shutdown.clone()));
    shutdown
}

fn types_of(received: &[common::Received], uid: Uuid) -> Vec<String> {
    received.iter().filter(|message| message.event.uid == uid).map(|message| message.event.type_.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_deletions_and_reports_publish_their_event_types_with_exact_attributes_in_order_per_uid() {
    tokio::time::timeout(Duration::from_secs(90), async {
        // Arrange
        let emulator = PubSubEmulator::shared();
        let fixture = Fixture::new(ScheduleConfig::default()).await;
        let config = topic(&emulator.host()).await;
        let collector = Collector::start(&config).await;
        let relay = start_relay(&fixture, config.clone(), fast_relay()).await;
        fixture.register_controller("probe").await;

        // Act: a Cluster's whole life, a Service, a refused duplicate and a rolled-back transaction.
        let cluster = fixture.create_cluster("alpha", "gcp").await;
        fixture.move_cluster(cluster.uid, "gcp", "us-east1").await;
        fixture.report(cluster.uid, "probe", 2, true).await;
        fixture.store.delete(Kind::Cluster, &cls_api::store::ObjectKey::Uid(cluster.uid), false).await.unwrap();
        let other = fixture.create_cluster("beta", "aws").await;
        let duplicate =
            fixture.store.create(&common::manifest(Kind::Cluster, common::cluster("beta", "aws", "x"))).await;
        assert!(duplicate.is_err(), "a second Cluster named beta is refused");
        let service = fixture
            .create(
                Kind::Service,
                json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service",
                       "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"clusterRef": {"name": "beta"}, "image": "nginx"}}),
            )
            .await;
        let rolled_back = Uuid::new_v4();
        let mut transaction = fixture.db.pool.begin().await.unwrap();
        sqlx::query(
            "insert into outbox (event_id, event_type, kind, uid, namespace, name, generation, platform)
             values (gen_random_uuid(), 'cluster.created', 'Cluster', $1, 'default', 'ghost', 1, 'gcp')",
        )
        .bind(rolled_back)
        .execute(&mut *transaction)
        .await
        .unwrap();
        transaction.rollback().await.unwrap();

        // Assert
        let received = collector
            .wait_until(Duration::from_secs(30), "every event", |received| {
                types_of(received, cluster.uid).len() >= 5
                    && !types_of(received, other.uid).is_empty()
                    && !types_of(received, service.uid).is_empty()
            })
            .await;
        assert_eq!(
            types_of(&received, cluster.uid),
            ["cluster.created", "cluster.updated", "cluster.status", "cluster.deleting", "cluster.deleted"]
        );
        assert_eq!(types_of(&received, other.uid), ["cluster.created"], "the refused duplicate emitted nothing");
        assert_eq!(types_of(&received, service.uid), ["service.created"]);
        assert!(types_of(&received, rolled_back).is_empty(), "a rolled-back event is never published");

        let generations: Vec<i64> = received
            .iter()
            .filter(|message| message.event.uid == cluster.uid)
            .map(|message| message.event.generation)
            .collect();
        assert_eq!(generations, [1, 2, 2, 3, 3]);
        for message in received.iter().filter(|message| message.event.uid == cluster.uid) {
            let event = &message.event;
            let suffix = event.type_.strip_prefix("cluster.").unwrap();
            let expected: BTreeMap<String, String> = [
                ("ce-specversion", "1.0".to_owned()),
                ("ce-id", event.id.to_string()),
                ("ce-type", format!("dev.cls.cluster.{suffix}")),
                ("ce-source", "/cls".to_owned()),
                ("ce-time", event.time.to_string()),
                ("ce-subject", "default/alpha".to_owned()),
                ("event_type", event.type_.clone()),
                ("kind", "Cluster".to_owned()),
                ("platform", "gcp".to_owned()),
                ("namespace", "default".to_owned()),
                ("name", "alpha".to_owned()),
                ("uid", cluster.uid.to_string()),
                ("generation", event.generation.to_string()),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
            assert_eq!(message.attributes, expected);
            assert_eq!(message.ordering_key, cluster.uid.to_string());
            assert_eq!(
                (event.kind.as_str(), event.namespace.as_str(), event.name.as_str()),
                ("Cluster", "default", "alpha")
            );
        }
        let service_message = received.iter().find(|message| message.event.uid == service.uid).unwrap();
        assert_eq!(service_message.attributes["kind"], "Service");
        assert_eq!(service_message.attributes["platform"], "aws", "a Service's platform is its Cluster's");
        assert_eq!(service_message.attributes["ce-type"], "dev.cls.service.created");
        eventually(Duration::from_secs(10), "the outbox to empty", || async { fixture.outbox_depth().await == 0 })
            .await;
        relay.cancel();
    })
    .await
    .expect("test finished in time");
}

/// Not a test by itself: the killable relay process of `a_relay_killed_between_publish_and_delete_loses_nothing`.
#[tokio::test]
#[ignore = "helper process"]
async fn relay_helper_process() {
    let Ok(spec) = std::env::var(HELPER) else { return };
    let [database_url, emulator_host, topic]: [&str; 3] =
        spec.split(' ').collect::<Vec<_>>().try_into().expect("helper spec: URL HOST TOPIC");
    let pool = sqlx::PgPool::connect(database_url).await.expect("helper connects");
    let config = PubSubConfig::new(common::PROJECT, topic, Some(emulator_host.to_owned()));
    let bus = PubSubBus::connect(config).await.expect("helper bus");
    let relay = RelayConfig { pause_after_publish: Duration::from_secs(60), ..RelayConfig::default() };
    println!("HELPER READY");
    let shutdown = CancellationToken::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(100),
        Relay::new(pool, Arc::new(bus), relay, Metrics::new()).run(shutdown),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_between_publish_and_delete_loses_nothing() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // Arrange: 20 events committed, no relay yet.
        let emulator = PubSubEmulator::shared();
        let fixture = Fixture::new(ScheduleConfig::default()).await;
        let config = topic(&emulator.host()).await;
        let collector = Collector::start(&config).await;
        let mut uids = HashSet::new();
        for index in 0..20 {
            uids.insert(fixture.create_cluster(&format!("c{index}"), "local").await.uid);
        }
        let committed: HashSet<Uuid> = sqlx::query_scalar("select event_id from outbox")
            .fetch_all(&fixture.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(committed.len(), 20);

        // Act: a relay process publishes everything, then is killed before it deletes.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["relay_helper_process", "--exact", "--ignored", "--nocapture"])
            .env(HELPER, format!("{} {} {}", fixture.db.url, emulator.host(), config.topic))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("HELPER READY"))
        });
        assert!(ready.await.unwrap(), "helper started");
        collector
            .wait_until(Duration::from_secs(30), "the helper's publish", |received| {
                received.iter().map(|message| message.event.id).collect::<HashSet<_>>() == committed
            })
            .await;
        assert_eq!(fixture.outbox_depth().await, 20, "published but not yet deleted");
        child.kill().unwrap(); // SIGKILL: between publish and delete
        child.wait().unwrap();

        // Assert: another relay publishes the rows again and deletes them.
        let relay = start_relay(&fixture, config.clone(), fast_relay()).await;
        eventually(Duration::from_secs(30), "the outbox to empty", || async { fixture.outbox_depth().await == 0 })
            .await;
        let received = collector
            .wait_until(Duration::from_secs(30), "the republished events", |received| received.len() >= 40)
            .await;
        let mut counts: HashMap<Uuid, usize> = HashMap::new();
        for message in &received {
            *counts.entry(message.event.id).or_default() += 1;
        }
        for id in &committed {
            assert!(counts.get(id).copied().unwrap_or(0) >= 1, "event {id} was lost");
        }
        assert_eq!(received.iter().map(|message| message.event.uid).collect::<HashSet<_>>(), uids);
        relay.cancel();
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_after_the_emulator_stops_and_starts_again() {
    tokio::time::timeout(Duration::from_secs(150), async {
        // Arrange: an emulator of this test's own. The relay does not create the topic again by itself here, so that
        // the test's subscription exists before the backlog drains (the emulator forgets everything when stopped).
        let emulator = tokio::task::spawn_blocking(PubSubEmulator::start).await.unwrap();
        let emulator = Arc::new(emulator);
        let fixture = Fixture::new(ScheduleConfig::default()).await;
        let mut config = topic(&emulator.host()).await;
        config.recreate_missing_topic = false;
        let collector = Collector::start(&config).await;
        let relay = start_relay(&fixture, config.clone(), fast_relay()).await;
        let before = fixture.create_cluster("before", "local").await;
        collector.wait_until(Duration::from_secs(20), "the first event", |received| !received.is_empty()).await;

        // Act: stop the emulator, make changes, start it again.
        let stopping = emulator.clone();
        tokio::task::spawn_blocking(move || stopping.stop()).await.unwrap();
        let mut during = Vec::new();
        for index in 0..10 {
            let object = fixture.create_cluster(&format!("during-{index}"), "local").await;
            fixture.move_cluster(object.uid, "local", "elsewhere").await;
            during.push(object.uid);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fixture.outbox_depth().await, 20, "nothing is deleted while the bus is down");
        // Hold the relay back (its claim waits on this lock, and no publish is in flight once we hold it) until the
        // topic and the test's subscription exist again, or it could publish into a topic nobody subscribes to yet.
        let mut gate = fixture.db.pool.begin().await.unwrap();
        sqlx::query("lock table outbox in exclusive mode").execute(&mut *gate).await.unwrap();
        let starting = emulator.clone();
        tokio::task::spawn_blocking(move || starting.resume()).await.unwrap();
        common::create_topic_and_subscription(&config).await;
        let collector = Collector::start(&config).await;
        gate.commit().await.unwrap();

        // Assert
        let received = collector
            .wait_until(Duration::from_secs(60), "every event made during the outage", |received| {
                during.iter().all(|uid| types_of(received, *uid).len() >= 2)
            })
            .await;
        for uid in &during {
            let types = types_of(&received, *uid);
            assert_eq!(types, ["cluster.created", "cluster.updated"], "in order, once each after the restart");
        }
        assert!(types_of(&received, before.uid).is_empty(), "published before the outage, not again");
        eventually(Duration::from_secs(10), "the outbox to empty", || async { fixture.outbox_depth().await == 0 })
            .await;
        relay.cancel();
    })
    .await
    .expect("test finished in time");
}

/// Relays sharing one outbox: each claims heads the other does not hold (SKIP LOCKED), so the work is split and,
/// with no failure, every event goes out exactly once and in order per object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_one_outbox_without_publishing_an_event_twice() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // Arrange: a backlog of 400 events on 100 objects, committed while no relay runs
        let fixture = Fixture::new(ScheduleConfig::default()).await;
        for index in 0..100 {
            let cluster = fixture.create_cluster(&format!("shared-{index}"), "gcp").await;
            for region in ["a", "b", "c"] {
                fixture.move_cluster(cluster.uid, "gcp", region).await;
            }
        }
        let buses: Vec<cls_reconciler::InProcessBus> = (0..2).map(|_| cls_reconciler::InProcessBus::new()).collect();
        let mut subscriptions: Vec<_> = buses.iter().map(|bus| bus.subscribe()).collect();
        let shutdown = CancellationToken::new();
        let config = RelayConfig { batch_size: 5, ..fast_relay() };

        // Act: two relays drain it together
        for bus in buses {
            let relay = Relay::new(fixture.db.pool.clone(), Arc::new(bus), config.clone(), Metrics::new());
            tokio::spawn(relay.run(shutdown.clone()));
        }
        let mut published: Vec<Vec<(Uuid, String, Uuid)>> = vec![Vec::new(), Vec::new()];
        while published.iter().map(Vec::len).sum::<usize>() < 400 {
            for (index, subscription) in subscriptions.iter_mut().enumerate() {
                while let Ok(message) = subscription.try_recv() {
                    published[index].push((message.event.uid, message.event.type_.clone(), message.event.id));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (index, subscription) in subscriptions.iter_mut().enumerate() {
            while let Ok(message) = subscription.try_recv() {
                published[index].push((message.event.uid, message.event.type_.clone(), message.event.id));
            }
        }
        shutdown.cancel();

        // Assert: both relays worked, nothing went out twice, each object's events kept their order
        assert!(
            published.iter().all(|messages| !messages.is_empty()),
            "one relay did all the work: {:?}",
            published.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let ids: HashSet<Uuid> = published.iter().flatten().map(|(_, _, id)| *id).collect();
        assert_eq!(ids.len(), 400, "events published twice or lost");
        assert_eq!(published.iter().map(Vec::len).sum::<usize>(), 400);
        for messages in &published {
            let mut per_object: HashMap<Uuid, Vec<&str>> = HashMap::new();
            for (uid, type_, _) in messages {
                per_object.entry(*uid).or_default().push(type_);
            }
            for (uid, types) in per_object {
                let created = types.iter().position(|type_| *type_ == "cluster.created");
                assert!(created.is_none_or(|position| position == 0), "events of {uid} out of order: {types:?}");
            }
        }
        let (depth,): (i64,) = sqlx::query_as("select count(*) from outbox").fetch_one(&fixture.db.pool).await.unwrap();
        assert_eq!(depth, 0);
    })
    .await
    .expect("the test finished in time");
}
