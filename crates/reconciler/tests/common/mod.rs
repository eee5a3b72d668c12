//! Fixtures: a migrated database of its own on the testkit's PostgreSQL with the real object store on it, a topic
//! and subscription of their own on the real Pub/Sub emulator, and a collector of what arrives.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cls_api::store::{MIGRATOR, ObjectKey, StoredObject};
use cls_api::{ScheduleConfig, Store};
use cls_core::Kind;
use cls_core::event::Event;
use cls_core::manifest::{Expect, Manifest, parse};
use cls_core::resources::ControllerReport;
use cls_reconciler::PubSubConfig;
use cls_testkit::TestDb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PROJECT: &str = "test-project";

pub struct Fixture {
    pub db: TestDb,
    pub store: Store,
}

impl Fixture {
    pub async fn new(schedule: ScheduleConfig) -> Fixture {
        let db = TestDb::new(&MIGRATOR).await;
        let store = Store::new(db.pool.clone(), schedule);
        Fixture { db, store }
    }

    pub async fn create(&self, kind: Kind, document: Value) -> StoredObject {
        let manifest = manifest(kind, document);
        self.store.create(&manifest).await.expect("object created")
    }

    pub async fn create_cluster(&self, name: &str, platform: &str) -> StoredObject {
        self.create(Kind::Cluster, cluster(name, platform, "europe-west1")).await
    }

    /// Replaces the Cluster's spec with one in `region` (a spec change: generation + 1).
    pub async fn move_cluster(&self, uid: Uuid, platform: &str, region: &str) {
        let document = cluster("ignored", platform, region);
        self.store
            .update(Kind::Cluster, &ObjectKey::Uid(uid), |current| {
                let mut manifest = manifest(Kind::Cluster, document.clone());
                manifest.name = current.name.clone();
                Ok::<Manifest, Infallible>(manifest)
            })
            .await
            .expect("update stored")
            .expect("update accepted");
    }

    pub async fn register_controller(&self, name: &str) {
        let document = json!({
            "apiVersion": "cls.dev/v1alpha1", "kind": "Controller", "metadata": {"name": name},
            "spec": {"kinds": ["Cluster"], "platforms": [], "required": true}
        });
        self.store.register_controller(&manifest(Kind::Controller, document)).await.expect("controller registered");
    }

    pub async fn report(&self, uid: Uuid, controller: &str, generation: i64, available: bool) {
        let report: ControllerReport = serde_json::from_value(json!({
            "controller": controller, "observedGeneration": generation,
            "conditions": [{"type": "Available", "status": if available { "True" } else { "False" },
                            "reason": "Probe", "message": "probe"}]
        }))
        .expect("report parses");
        self.store.report(Kind::Cluster, uid, report).await.expect("report stored");
    }

    pub async fn outbox_depth(&self) -> i64 {
        sqlx::query_scalar("select count(*) from outbox").fetch_one(&self.db.pool).await.expect("count outbox")
    }
}

pub fn manifest(kind: Kind, document: Value) -> Manifest {
    parse(kind, document, Expect::default()).expect("manifest is valid")
}

pub fn cluster(name: &str, platform: &str, region: &str) -> Value {
    json!({
        "apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"platform": {"type": platform, "region": region}, "release": {"version": "1.0"}}
    })
}

/// A topic and subscription of this test's own on `emulator_host`.
pub async fn topic(emulator_host: &str) -> PubSubConfig {
    let name = format!("cls-events-{}", Uuid::new_v4().simple());
    let config = PubSubConfig::new(PROJECT, name, Some(emulator_host.to_owned()));
    create_topic_and_subscription(&config).await;
    config
}

pub async fn create_topic_and_subscription(config: &PubSubConfig) {
    let topics = config.topic_admin().await.expect("topic admin");
    config.ensure_topic(&topics).await.expect("topic created");
    let subscriptions = config.subscription_admin().await.expect("subscription admin");
    config.ensure_subscription(&subscriptions, &subscription_name(config), "").await.expect("subscription created");
}

fn subscription_name(config: &PubSubConfig) -> String {
    format!("{}-all", config.topic)
}

/// One message as a subscriber saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub event: Event,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: String,
    pub at: Instant,
}

/// Everything the test subscription receives (acknowledged at once), until dropped.
pub struct Collector {
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Collector {
    pub async fn start(config: &PubSubConfig) -> Collector {
        let subscriber = config.subscriber().await.expect("subscriber");
        let path = config.subscription_path(&subscription_name(config));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let sink = received.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut stream = subscriber.subscribe(path).build();
            loop {
                let next = tokio::select! {
                    _ = stopped.cancelled() => break,
                    next = stream.next() => next,
                };
                let Some(Ok((message, handler))) = next else { break };
                handler.ack();
                let event: Event = serde_json::from_slice(&message.data).expect("data is an event");
                let attributes = message.attributes.into_iter().collect();
                let ordering_key = message.ordering_key;
                sink.lock().unwrap().push(Received { event, attributes, ordering_key, at: Instant::now() });
            }
        });
        Collector { received, stop }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived, or panics after `limit`.
    pub async fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let snapshot = self.snapshot();
            if done(&snapshot) {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; got {} messages",
                snapshot.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
