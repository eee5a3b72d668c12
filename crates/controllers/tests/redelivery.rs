//! The controller SDK on the real Pub/Sub emulator, the real PostgreSQL and the real API: redelivery of transient
//! failures with backoff, the dead-letter topic after `max_deliveries` while other objects keep flowing, and
//! subscriber-side platform filtering (the emulator accepts a subscription filter but does not apply it).
//!
//! Each test starts its own API (`cls_api::router` over a database of its own, with the change feed) on a loopback
//! port, a relay publishing its outbox to a topic of its own on the shared emulator, and a test controller written
//! against the SDK's public API, the way a user would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cls_api::store::MIGRATOR;
use cls_api::{AppState, ScheduleConfig, Store};
use cls_controllers::metrics::{CategoryLabels, ControllerLabels};
use cls_controllers::{
    ApiClient, ControllerConfig, Metrics, Object, Outcome, Reconcile, ReconcileError, Request, Runtime, Source,
    dead_letter_topic,
};
use cls_core::Kind;
use cls_core::event::Event;
use cls_reconciler::{PubSubBus, PubSubConfig, Relay, RelayConfig};
use cls_testkit::{PubSubEmulator, TestDb};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PROJECT: &str = "test-project";
/// Bounds every wait for a state inside a test.
const WAIT: Duration = Duration::from_secs(30);
/// Bounds a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------------------
// The test controller: a few dozen lines against the SDK.

/// One call of `reconcile`.
#[derive(Clone, Debug)]
struct Call {
    kind: Kind,
    name: String,
    platform: String,
    at: Instant,
}

/// Reconciles to `Available`, except: names in `flaky` fail transiently their first N times, names in `poison` always
/// fail transiently, names in `broken` fail permanently. Records every call.
#[derive(Clone, Default)]
struct Scripted {
    flaky: HashMap<String, usize>,
    poison: HashSet<String>,
    broken: HashSet<String>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Scripted {
    fn calls_of(&self, name: &str) -> Vec<Call> {
        self.calls.lock().unwrap().iter().filter(|call| call.name == name).cloned().collect()
    }
}

impl Reconcile for Scripted {
    async fn reconcile(&self, request: &Request) -> Result<Outcome, ReconcileError> {
        let name = request.object.name.clone();
        let seen = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                kind: request.object.kind,
                name: name.clone(),
                platform: request.platform.clone(),
                at: Instant::now(),
            });
            calls.iter().filter(|call| call.name == name).count()
        };
        if self.broken.contains(&name) {
            return Err(ReconcileError::Permanent(format!("{name} can never work")));
        }
        if self.poison.contains(&name) {
            return Err(ReconcileError::Transient(format!("{name} fails every time")));
        }
        if self.flaky.get(&name).is_some_and(|failures| seen <= *failures) {
            return Err(ReconcileError::Transient(format!("{name} failed on call {seen}")));
        }
        Ok(Outcome::available("Reconciled", format!("call {seen}")))
    }

    async fn cleanup(&self, _request: &Request) -> Result<(), ReconcileError> {
        Ok(())
    }

    /// Nothing outside to clean up: no finalizer (and so no finalizer update adding events of its own).
    fn uses_finalizer(&self, _kind: Kind) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixtures

/// A real API over a database of its own, and a relay publishing its outbox to a topic of its own on the emulator.
struct Env {
    api: ApiClient,
    http: reqwest::Client,
    events: PubSubConfig,
    stop: CancellationToken,
    _db: TestDb,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Env {
    async fn start(emulator: &PubSubEmulator) -> Env {
        let stop = CancellationToken::new();
        let db = TestDb::new(&MIGRATOR).await;
        let store = Store::new(db.pool.clone(), ScheduleConfig::default());
        let token = cls_api::auth::generate_token();
        store.put_token("test-admin", &cls_api::auth::hash_token(&token), "admin", None).await.expect("token stored");
        let state = AppState::new(store.clone());
        tokio::spawn(state.feed.clone().run(store, stop.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let serving = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, cls_api::router(state))
                .with_graceful_shutdown(serving.cancelled_owned())
                .await
                .expect("serve")
        });

        let topic = format!("cls-events-{}", Uuid::new_v4().simple());
        let events = PubSubConfig::new(PROJECT, topic, Some(emulator.host()));
        let bus = PubSubBus::connect(events.clone()).await.expect("bus connects (and creates the topic)");
        let relay = RelayConfig {
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..RelayConfig::default()
        };
        let relay = Relay::new(db.pool.clone(), Arc::new(bus), relay, cls_reconciler::Metrics::new());
        tokio::spawn(relay.run(stop.clone()));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a header value"));
        let http = reqwest::Client::builder().default_headers(headers).build().expect("a client");
        Env { api: ApiClient::new(base).with_token(&token), http, events, stop, _db: db }
    }

    /// Runs `reconciler` as controller `config.name` on the emulator; returns once it is registered and its
    /// subscription `cls-<name>` exists (so that no event published afterwards can miss it).
    async fn run_controller(&self, config: ControllerConfig, reconciler: Scripted, metrics: Metrics) {
        let name = config.name.clone();
        let runtime = Runtime::new(config, reconciler, self.api.clone(), metrics);
        let source = Source::PubSub { config: self.events.clone(), subscription: None };
        tokio::spawn(runtime.run(source, self.stop.clone()));
        let registered = format!("{}/api/v1/controllers/{name}", self.api.base());
        eventually("the controller to register", || async {
            self.http.get(&registered).send().await.is_ok_and(|response| response.status() == 200)
        })
        .await;
        let admin = self.events.subscription_admin().await.expect("subscription admin");
        let path = self.events.subscription_path(&format!("cls-{name}"));
        eventually("the controller's subscription", || async {
            admin.get_subscription().set_subscription(&path).send().await.is_ok()
        })
        .await;
        // The first registration starts a resync (a list of every Cluster); let it see the empty database first, so
        // that every reconcile below is caused by a Pub/Sub delivery.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn create(&self, plural: &str, manifest: Value) -> Object {
        let url = format!("{}/api/v1/{plural}", self.api.base());
        let response = self.http.post(&url).json(&manifest).send().await.expect("create sent");
        let status = response.status();
        let body: Value = response.json().await.expect("create answers json");
        assert_eq!(status, 201, "create {plural}: {body}");
        Object::from_document(body).expect("an object")
    }

    async fn cluster(&self, name: &str, platform: &str) -> Object {
        let manifest = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"platform": {"type": platform}}});
        self.create("clusters", manifest).await
    }

    async fn service(&self, name: &str, cluster: &str) -> Object {
        let manifest = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterRef": {"name": cluster}, "run": {"command": ["sleep", "60"]}}});
        self.create("services", manifest).await
    }

    async fn get(&self, object: &Object) -> Object {
        self.api.get(object.kind, object.uid).await.expect("get").expect("the object exists")
    }

    /// Whether `controller` reports `Available=True` at the object's generation and the object is Ready.
    async fn available(&self, object: &Object, controller: &str) -> bool {
        let current = self.get(object).await;
        current.reports(controller, "Available") && current.ready()
    }
}

/// A message as a test subscription received it.
#[derive(Clone, Debug)]
struct Received {
    event: Event,
    attributes: HashMap<String, String>,
    at: Instant,
}

/// Creates `topic` and a subscription `<topic>-test` on it with `filter`, and collects (and acknowledges) everything
/// it receives until `stop`.
async fn collect(
    events: &PubSubConfig,
    topic: &str,
    filter: &str,
    stop: CancellationToken,
) -> Arc<Mutex<Vec<Received>>> {
    let mut config = events.clone();
    config.topic = topic.to_owned();
    let topics = config.topic_admin().await.expect("topic admin");
    config.ensure_topic(&topics).await.expect("topic created");
    let subscriptions = config.subscription_admin().await.expect("subscription admin");
    let name = format!("{topic}-test");
    config.ensure_subscription(&subscriptions, &name, filter).await.expect("subscription created");
    let subscriber = config.subscriber().await.expect("subscriber");
    let mut stream = subscriber.subscribe(config.subscription_path(&name)).build();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = stream.next() => next,
            };
            let Some(Ok((message, handler))) = next else { break };
            handler.ack();
            let event: Event = serde_json::from_slice(&message.data).expect("the data is an event");
            let attributes = message.attributes.into_iter().collect();
            sink.lock().unwrap().push(Received { event, attributes, at: Instant::now() });
        }
    });
    received
}

/// Waits until `probe` answers true, or panics after [`WAIT`].
async fn eventually<F, Fut>(what: &str, probe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    cls_testkit::eventually(WAIT, what, probe).await;
}

/// A controller name of this test's own (the emulator, its topics and subscriptions are shared by the process).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

fn counter(family: &Family<ControllerLabels, Counter>, name: &str) -> u64 {
    family.get_or_create(&ControllerLabels { controller: name.to_owned() }).get()
}

fn failures(metrics: &Metrics, controller: &str, category: &str) -> u64 {
    let labels = CategoryLabels { controller: controller.to_owned(), category: category.to_owned() };
    metrics.failures.get_or_create(&labels).get()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_failure_is_redelivered_with_backoff_and_then_reports_available() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Arrange: a controller whose reconcile of `flaky` fails its first two times.
        let env = Env::start(PubSubEmulator::shared()).await;
        let name = unique("flaky");
        let mut config = ControllerConfig::new(&name, &[Kind::Cluster]).platforms(&["local"]);
        config.initial_backoff = Duration::from_millis(300);
        config.max_deliveries = 5;
        let reconciler = Scripted { flaky: HashMap::from([("flaky".to_owned(), 2)]), ..Scripted::default() };
        let metrics = Metrics::new();
        env.run_controller(config, reconciler.clone(), metrics.clone()).await;

        // Act
        let cluster = env.cluster("flaky", "local").await;

        // Assert: Available (and Ready) after the third delivery of cluster.created.
        eventually("flaky to become Available", || env.available(&cluster, &name)).await;
        let calls = reconciler.calls_of("flaky");
        assert_eq!(calls.len(), 3, "two failures and one success: {calls:?}");
        let gaps: Vec<Duration> = calls.windows(2).map(|pair| pair[1].at - pair[0].at).collect();
        assert!(gaps[0] >= Duration::from_millis(300), "first retry after the initial backoff: {gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(600), "the backoff doubles: {gaps:?}");
        let report = env.get(&cluster).await;
        let report = report.report_of(&name).expect("a report");
        assert_eq!(report.observed_generation, 1);
        assert_eq!(failures(&metrics, &name, "transient"), 2);
        assert_eq!(counter(&metrics.dead_lettered, &name), 0, "nothing dead-lettered");

        // The successful delivery was acknowledged: it is not delivered again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(reconciler.calls_of("flaky").len(), 3);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_after_max_deliveries_while_other_objects_become_available() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Arrange: `poison` always fails transiently, `broken` fails permanently; retries are slow enough (1 s, then
        // 2 s) that the other objects must flow past the poison message to be Available before it is dead-lettered.
        let env = Env::start(PubSubEmulator::shared()).await;
        let name = unique("poison");
        let mut config = ControllerConfig::new(&name, &[Kind::Cluster]).platforms(&["local"]);
        config.initial_backoff = Duration::from_secs(1);
        config.max_deliveries = 3;
        let reconciler = Scripted {
            poison: HashSet::from(["poison".to_owned()]),
            broken: HashSet::from(["broken".to_owned()]),
            ..Scripted::default()
        };
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let dead = collect(&env.events, &dead_letter_topic(&name), "", stop).await;
        let metrics = Metrics::new();
        env.run_controller(config, reconciler.clone(), metrics.clone()).await;

        // Act
        let poison = env.cluster("poison", "local").await;
        let broken = env.cluster("broken", "local").await;
        let mut good = Vec::new();
        for index in 0..5 {
            good.push(env.cluster(&format!("good-{index}"), "local").await);
        }

        // Assert: the others become Available while the poison message is still being retried...
        let deadline = Instant::now() + WAIT;
        let good_available_at = loop {
            let mut all = true;
            for object in &good {
                all &= env.available(object, &name).await;
            }
            if all {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "the good objects did not become Available");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // ...and then it lands on the dead-letter topic after 3 deliveries; the permanent failure after 1.
        eventually("two dead letters", || async { dead.lock().unwrap().len() >= 2 }).await;
        let dead_letters = dead.lock().unwrap().clone();
        let of = |uid: Uuid| dead_letters.iter().find(|message| message.event.uid == uid).cloned();
        let poisoned = of(poison.uid).expect("the poison message is dead-lettered");
        assert_eq!(poisoned.event.type_, "cluster.created");
        assert_eq!(poisoned.attributes["cls-delivery-attempts"], "3");
        assert_eq!(poisoned.attributes["cls-controller"], name);
        assert!(poisoned.attributes["cls-dead-letter-reason"].contains("poison fails every time"));
        assert_eq!(poisoned.attributes["platform"], "local", "the original attributes are kept");
        assert_eq!(poisoned.attributes["uid"], poison.uid.to_string());
        assert!(
            good_available_at < poisoned.at,
            "the other objects were Available only after the poison message was dead-lettered"
        );
        let rejected = of(broken.uid).expect("the permanent failure is dead-lettered");
        assert_eq!(rejected.attributes["cls-delivery-attempts"], "1", "a permanent error is not retried");
        assert!(rejected.attributes["cls-dead-letter-reason"].contains("permanent"));
        assert_eq!(dead_letters.len(), 2, "only the failing objects are dead-lettered: {dead_letters:?}");

        assert_eq!(reconciler.calls_of("poison").len(), 3);
        assert_eq!(reconciler.calls_of("broken").len(), 1);
        assert_eq!(counter(&metrics.dead_lettered, &name), 2);
        assert_eq!(failures(&metrics, &name, "transient"), 3);
        assert_eq!(failures(&metrics, &name, "permanent"), 1);
        for object in [&poison, &broken] {
            let current = env.get(object).await;
            assert!(current.report_of(&name).is_none(), "a failed reconcile reported: {:?}", current.status);
            assert!(!current.ready());
        }

        // Dead-lettered messages were acknowledged: no further deliveries.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(reconciler.calls_of("poison").len(), 3);
        assert_eq!(reconciler.calls_of("broken").len(), 1);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gcp_clusters_events_never_reach_a_local_controllers_reconcile_although_the_emulator_delivers_them() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Arrange: a `local` controller of Clusters and Services, and a probe subscription with the same filter.
        let env = Env::start(PubSubEmulator::shared()).await;
        let name = unique("local");
        let config = ControllerConfig::new(&name, &[Kind::Cluster, Kind::Service]).platforms(&["local"]);
        let filter = config.subscription_filter();
        assert_eq!(filter, r#"attributes.platform = "local""#);
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let probe = collect(&env.events, &env.events.topic, &filter, stop).await;
        let reconciler = Scripted::default();
        let metrics = Metrics::new();
        env.run_controller(config, reconciler.clone(), metrics.clone()).await;

        // Act: a gcp Cluster and its Service first, then a local Cluster and its Service.
        let far = env.cluster("far", "gcp").await;
        let far_web = env.service("far-web", "far").await;
        eventually("the emulator to deliver the gcp events despite the filter", || async {
            let received = probe.lock().unwrap();
            [far.uid, far_web.uid].iter().all(|uid| received.iter().any(|message| message.event.uid == *uid))
        })
        .await;
        eventually("the controller to receive and drop the gcp events", || async {
            counter(&metrics.filtered, &name) >= 2
        })
        .await;
        let near = env.cluster("near", "local").await;
        let near_web = env.service("near-web", "near").await;

        // Assert: the local objects are reconciled (so the controller consumed its subscription past the gcp
        // events), the gcp ones never.
        eventually("near to become Available", || env.available(&near, &name)).await;
        eventually("near-web to become Available", || env.available(&near_web, &name)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = reconciler.calls.lock().unwrap().clone();
        assert!(calls.iter().all(|call| call.platform == "local"), "a non-local object was reconciled: {calls:?}");
        let names: HashSet<(Kind, &str)> = calls.iter().map(|call| (call.kind, call.name.as_str())).collect();
        assert_eq!(names, HashSet::from([(Kind::Cluster, "near"), (Kind::Service, "near-web")]));
        for object in [&far, &far_web] {
            let current = env.get(object).await;
            assert!(current.report_of(&name).is_none(), "the local controller reported on gcp: {:?}", current.status);
        }
        assert_eq!(failures(&metrics, &name, "transient") + failures(&metrics, &name, "permanent"), 0);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_after_a_quiet_spell_on_a_new_subscription_are_all_delivered_at_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Arrange: a controller whose fresh subscription stays quiet for several subscription checks. Its streaming
        // pull has received nothing yet (the emulator answers its headers only with the first messages), which is
        // where a cancelled pull used to be left behind on the emulator, taking a share of the messages.
        let env = Env::start(PubSubEmulator::shared()).await;
        let name = unique("quiet");
        let config = ControllerConfig::new(&name, &[Kind::Cluster]).platforms(&["local"]);
        let reconciler = Scripted::default();
        env.run_controller(config, reconciler.clone(), Metrics::new()).await;
        tokio::time::sleep(Duration::from_millis(6_500)).await;

        // Act: a dozen Clusters, one ordering key each.
        let mut clusters = Vec::new();
        for index in 0..12 {
            clusters.push(env.cluster(&format!("quiet-{index}"), "local").await);
        }

        // Assert: every one is reconciled within seconds (a message handed to a dead stream waits for its 60 s ack
        // deadline).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pending = clusters.clone();
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for cluster in pending {
                if !env.available(&cluster, &name).await {
                    still.push(cluster);
                }
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<&str> = pending.iter().map(|cluster| cluster.name.as_str()).collect();
        assert!(names.is_empty(), "not reconciled 10 s after their events: {names:?}");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_whose_event_was_published_while_the_subscription_was_gone_is_reconciled_once_it_is_back() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Arrange: a controller running, and a probe subscription that sees every event of the topic.
        let env = Env::start(PubSubEmulator::shared()).await;
        let name = unique("gone");
        let config = ControllerConfig::new(&name, &[Kind::Cluster]).platforms(&["local"]);
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let probe = collect(&env.events, &env.events.topic, "", stop).await;
        let reconciler = Scripted::default();
        env.run_controller(config, reconciler.clone(), Metrics::new()).await;
        let admin = env.events.subscription_admin().await.expect("subscription admin");
        let subscription = format!("cls-{name}");

        // Act: delete the controller's subscription and create a Cluster, until its event was published while the
        // subscription was missing (the controller may create it again first).
        let mut attempt = 0;
        let missed = loop {
            attempt += 1;
            assert!(attempt <= 5, "the controller always recreated its subscription before the publish");
            admin
                .delete_subscription()
                .set_subscription(env.events.subscription_path(&subscription))
                .send()
                .await
                .expect("subscription deleted");
            let cluster = env.cluster(&format!("missed-{attempt}"), "local").await;
            eventually("the probe to receive the Cluster's event", || async {
                probe.lock().unwrap().iter().any(|message| message.event.uid == cluster.uid)
            })
            .await;
            if env.events.subscription_missing(&admin, &subscription).await {
                break cluster;
            }
        };

        // Assert: the controller creates its subscription again and reconciles the Cluster although its only event
        // never reached the subscription (no scheduler runs here to send another).
        eventually("the missed Cluster to become Available", || env.available(&missed, &name)).await;
    })
    .await
    .expect("the test finished in time");
}
