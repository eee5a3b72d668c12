//! Fault injection through real processes: the `cls` binary (`cls api`, `cls reconciler`, `cls controller`) against a
//! real PostgreSQL (the testkit's) and the real Pub/Sub emulator, all on loopback, each scenario bounded in time.
//!
//! 1. `kill -9` of the API under concurrent writers: every acknowledged write survives, no refused one appears.
//! 2. PostgreSQL stopped like a crash and started again under load: 503 Status answers (never 500) while it is down,
//!    recovery within 5 s of it being back, no acknowledged write lost.
//! 3. The emulator killed and a fresh one started on its port: every event committed meanwhile is delivered, and a
//!    real controller converges within two scheduler intervals.
//! 4. Four `cls reconciler` replicas, one SIGKILLed and one SIGSTOPped (inside a scheduler transaction) for longer
//!    than the attention interval: no object ticks twice within an interval, none misses one.
//!
//! Reports delivered twice and out of order are covered at the API level by `crates/api/tests/report_order.rs`.
//!
//! Run: `cargo test -p cls --test faults`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cls_api::store::MIGRATOR;
use cls_core::event::Event;
use cls_reconciler::PubSubConfig;
use cls_testkit::eventually;
use cls_testkit::{PgServer, PubSubEmulator, TestDb};
use common::Cls;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PROJECT: &str = "faults-project";

/// Every HTTP client of this suite is made here: it sends an admin token of the database at `database_url` (made
/// once per database with `cls token create`).
fn http(database_url: &str) -> reqwest::Client {
    static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let token = {
        let mut tokens = TOKENS.lock().expect("tokens");
        match tokens.iter().find(|(url, _)| url == database_url) {
            Some((_, token)) => token.clone(),
            None => {
                let token = common::create_token(database_url, "admin", &[]);
                tokens.push((database_url.to_owned(), token.clone()));
                token
            }
        }
    };
    common::client_builder_with(&token).timeout(Duration::from_secs(15)).build().expect("http client")
}

/// Starts `cls ARGS` off the async threads (it blocks until the process prints its address).
async fn start(args: &[&str], envs: &[(&str, &str)]) -> Cls {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let envs: Vec<(String, String)> =
        envs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        Cls::start(&args, &envs)
    })
    .await
    .expect("cls started")
}

fn cluster_manifest(name: &str, region: &str) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
           "spec": {"platform": {"type": "gcp", "region": region}}})
}

fn is_status_body(body: &Value) -> bool {
    body["kind"] == "Status" && body["apiVersion"] == "v1"
}

// ---------------------------------------------------------------------------------------------------------------
// Write load: writers creating and updating Clusters, every write carrying a unique token (its region), and a ledger
// of what each write got back.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Create,
    Update,
    /// A PUT carrying the resourceVersion of the create, after an acknowledged update: 409.
    StaleUpdate,
    /// A second create of an existing name: 409.
    DuplicateCreate,
    /// A create with an invalid name: 422.
    InvalidCreate,
}

impl WriteKind {
    fn expected_refusal(self) -> Option<StatusCode> {
        match self {
            WriteKind::Create | WriteKind::Update => None,
            WriteKind::StaleUpdate | WriteKind::DuplicateCreate => Some(StatusCode::CONFLICT),
            WriteKind::InvalidCreate => Some(StatusCode::UNPROCESSABLE_ENTITY),
        }
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Acknowledged { resource_version: i64 },
    Refused(StatusCode, Value),
    ServerError(StatusCode, Value),
    NoAnswer(#[allow(dead_code, reason = "shown by {:?} when an assertion fails")] String),
}

#[derive(Clone, Debug)]
struct Write {
    kind: WriteKind,
    uid: Option<String>,
    token: String,
    outcome: Outcome,
    answered_at: Instant,
}

impl Write {
    fn acknowledged(&self) -> Option<i64> {
        match self.outcome {
            Outcome::Acknowledged { resource_version } => Some(resource_version),
            _ => None,
        }
    }

    /// No answer, or a 5xx: it may or may not have been applied.
    fn ambiguous(&self) -> bool {
        matches!(self.outcome, Outcome::NoAnswer(_) | Outcome::ServerError(..))
    }
}

struct Load {
    stop: CancellationToken,
    writers: Vec<tokio::task::JoinHandle<Vec<Write>>>,
}

impl Load {
    /// `writers` concurrent writers against whatever base URL `base` holds at each request.
    fn start(writers: usize, base: watch::Receiver<String>, database_url: &str) -> Load {
        let stop = CancellationToken::new();
        let writers = (0..writers)
            .map(|index| {
                let writer = Writer { index, client: http(database_url), base: base.clone(), ledger: Vec::new() };
                tokio::spawn(writer.run(stop.clone()))
            })
            .collect();
        Load { stop, writers }
    }

    /// Stops the writers; answers every write of each, in the order it was made.
    async fn stop(self) -> Vec<Vec<Write>> {
        self.stop.cancel();
        let mut ledgers = Vec::new();
        for writer in self.writers {
            ledgers.push(writer.await.expect("writer finished"));
        }
        ledgers
    }
}

struct Writer {
    index: usize,
    client: reqwest::Client,
    base: watch::Receiver<String>,
    ledger: Vec<Write>,
}

impl Writer {
    async fn run(mut self, stop: CancellationToken) -> Vec<Write> {
        let mut iteration = 0;
        while !stop.is_cancelled() {
            iteration += 1;
            self.round(iteration).await;
        }
        self.ledger
    }

    /// One object: create, two updates, a stale update, a duplicate create, an invalid create.
    async fn round(&mut self, iteration: usize) {
        let name = format!("w{}-{iteration}", self.index);
        let created = self.write(WriteKind::Create, None, &name, None).await;
        let (Some(created_version), Some(uid)) = (created.acknowledged(), created.outcome_uid()) else {
            if created.ambiguous() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return;
        };
        let mut updated = false;
        for _ in 0..2 {
            updated |= self.write(WriteKind::Update, Some(&uid), &name, None).await.acknowledged().is_some();
        }
        if updated {
            self.write(WriteKind::StaleUpdate, Some(&uid), &name, Some(created_version)).await;
        }
        self.write(WriteKind::DuplicateCreate, None, &name, None).await;
        self.write(WriteKind::InvalidCreate, None, &format!("W{}_{iteration}", self.index), None).await;
    }

    async fn write(&mut self, kind: WriteKind, uid: Option<&str>, name: &str, version: Option<i64>) -> Answer {
        let token = format!("t-{}", Uuid::new_v4().simple());
        let mut manifest = cluster_manifest(name, &token);
        if let Some(version) = version {
            manifest["metadata"]["resourceVersion"] = json!(version.to_string());
        }
        let base = self.base.borrow().clone();
        let request = match uid {
            Some(uid) => self.client.put(format!("{base}/api/v1/clusters/{uid}")),
            None => self.client.post(format!("{base}/api/v1/clusters")),
        };
        let answer = match request.json(&manifest).send().await {
            Ok(response) => {
                let status = response.status();
                match response.text().await {
                    Ok(text) => Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text)))),
                    Err(error) => Err(format!("body: {error}")),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        let (outcome, body) = match answer {
            Ok((status, body)) if status.is_success() => {
                let resource_version = body["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|version| version.parse().ok())
                    .unwrap_or_else(|| panic!("a {status} without a resourceVersion: {body}"));
                (Outcome::Acknowledged { resource_version }, body)
            }
            Ok((status, body)) if status.is_client_error() => (Outcome::Refused(status, body.clone()), body),
            Ok((status, body)) => (Outcome::ServerError(status, body.clone()), body),
            Err(error) => (Outcome::NoAnswer(error), Value::Null),
        };
        let uid = uid.map(str::to_owned).or_else(|| body["metadata"]["uid"].as_str().map(str::to_owned));
        let write = Write { kind, uid: uid.clone(), token, outcome, answered_at: Instant::now() };
        self.ledger.push(write.clone());
        Answer { write, uid }
    }
}

struct Answer {
    write: Write,
    uid: Option<String>,
}

impl Answer {
    fn acknowledged(&self) -> Option<i64> {
        self.write.acknowledged()
    }

    fn ambiguous(&self) -> bool {
        self.write.ambiguous()
    }

    fn outcome_uid(&self) -> Option<String> {
        self.uid.clone()
    }
}

/// Counts of (acknowledged, refused, ambiguous) writes.
fn tally(ledgers: &[Vec<Write>]) -> (usize, usize, usize) {
    let writes = ledgers.iter().flatten();
    let acknowledged = writes.clone().filter(|write| write.acknowledged().is_some()).count();
    let refused = writes.clone().filter(|write| matches!(write.outcome, Outcome::Refused(..))).count();
    let ambiguous = writes.filter(|write| write.ambiguous()).count();
    (acknowledged, refused, ambiguous)
}

/// Checks the ledgers against the database and the API after the fault:
/// - every refusal is the one its write must get (409 for a stale or duplicate write, 422 for an invalid one), and
///   every 5xx is a 503 with a `Status` body;
/// - no refused write's token is in any change the database logged;
/// - every acknowledged write is in the change log under the resourceVersion it was answered with;
/// - each object now has at least the last acknowledged resourceVersion, and its content is the last acknowledged
///   write's or that of an ambiguous write made after it.
async fn verify(ledgers: &[Vec<Write>], database_url: &str, base: &str) {
    let pool = sqlx::PgPool::connect(database_url).await.expect("verification connects");
    let client = http(database_url);
    for write in ledgers.iter().flatten() {
        match &write.outcome {
            Outcome::Refused(status, body) => {
                assert_eq!(Some(*status), write.kind.expected_refusal(), "{:?} refused: {body}", write.kind);
                assert!(is_status_body(body), "a refusal without a Status body: {body}");
                let logged: i64 = sqlx::query_scalar(
                    "select count(*) from changes where object -> 'spec' -> 'platform' ->> 'region' = $1",
                )
                .bind(&write.token)
                .fetch_one(&pool)
                .await
                .expect("changes read");
                assert_eq!(logged, 0, "a refused {:?} ({status}) was applied", write.kind);
            }
            Outcome::ServerError(status, body) => {
                assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{:?}: {body}", write.kind);
                assert!(is_status_body(body), "a 503 without a Status body: {body}");
            }
            Outcome::Acknowledged { resource_version } => {
                let uid: Uuid = write.uid.as_deref().and_then(|uid| uid.parse().ok()).expect("acknowledged uid");
                let logged: bool = sqlx::query_scalar(
                    "select exists (select 1 from changes where uid = $1 and resource_version = $2
                                    and object -> 'spec' -> 'platform' ->> 'region' = $3)",
                )
                .bind(uid)
                .bind(resource_version)
                .bind(&write.token)
                .fetch_one(&pool)
                .await
                .expect("changes read");
                assert!(logged, "acknowledged {:?} of {uid} at {resource_version} is not in the log", write.kind);
            }
            Outcome::NoAnswer(_) => {}
        }
    }
    for ledger in ledgers {
        let mut per_object: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
        for write in ledger {
            if let (Some(uid), WriteKind::Create | WriteKind::Update | WriteKind::StaleUpdate) =
                (&write.uid, write.kind)
            {
                per_object.entry(uid).or_default().push(write);
            }
        }
        for (uid, writes) in per_object {
            let Some(last) = writes.iter().rposition(|write| write.acknowledged().is_some()) else { continue };
            let mut allowed: HashSet<&str> = HashSet::from([writes[last].token.as_str()]);
            allowed
                .extend(writes[last + 1..].iter().filter(|write| write.ambiguous()).map(|write| write.token.as_str()));
            let floor = writes.iter().filter_map(|write| write.acknowledged()).max().expect("one acknowledged");
            let response = client.get(format!("{base}/api/v1/clusters/{uid}")).send().await.expect("get sent");
            assert_eq!(response.status(), StatusCode::OK, "cluster {uid} is gone");
            let object: Value = response.json().await.expect("object");
            let version: i64 = object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).expect("rv");
            assert!(version >= floor, "cluster {uid} went back from {floor} to {version}");
            let region = object["spec"]["platform"]["region"].as_str().unwrap_or_default();
            assert!(allowed.contains(region), "cluster {uid} holds {region}, not its last acknowledged write");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. kill -9 of the API

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_kill_9_of_the_api_and_refused_writes_never_appear() {
    tokio::time::timeout(Duration::from_secs(90), async {
        // Arrange: an API and six writers.
        let db = TestDb::new(&MIGRATOR).await;
        let envs = [("DATABASE_URL", db.url.as_str()), ("RUST_LOG", "warn")];
        let mut api = start(&["api"], &envs).await;
        api.wait_ready().await;
        let (base_sender, base) = watch::channel(api.base.clone());
        let load = Load::start(6, base, &db.url);
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // Act: SIGKILL in the middle of the load, then a new API on the same database.
        api.child.kill().expect("SIGKILL");
        let killed_at = Instant::now();
        api.child.wait().expect("reaped");
        drop(api);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let api = start(&["api"], &envs).await;
        api.wait_ready().await;
        base_sender.send(api.base.clone()).expect("writers listen");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ledgers = load.stop().await;

        // Assert
        let (acknowledged, refused, ambiguous) = tally(&ledgers);
        eprintln!("kill -9: {acknowledged} acknowledged, {refused} refused, {ambiguous} without an answer");
        let writes = || ledgers.iter().flatten();
        assert!(writes().any(|write| write.answered_at < killed_at && write.acknowledged().is_some()));
        assert!(writes().any(|write| write.answered_at > killed_at && write.acknowledged().is_some()));
        assert!(ambiguous > 0, "the kill cut no write off");
        assert!(refused > 0, "no write was refused");
        verify(&ledgers, &db.url, &api.base).await;
    })
    .await
    .expect("the scenario finished in time");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. PostgreSQL crash and restart

/// One request of the prober: when it was sent and answered, and what it got.
struct Probe {
    sent_at: Instant,
    answered_at: Instant,
    answer: Result<(StatusCode, Value), String>,
}

/// Sends `GET /api/v1/clusters?limit=1` every 100 ms without waiting for the previous answer, until `stop`.
fn start_prober(base: String, client: reqwest::Client, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<Probe>> {
    tokio::spawn(async move {
        let mut probes = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            let request = client.get(format!("{base}/api/v1/clusters?limit=1"));
            probes.spawn(async move {
                let sent_at = Instant::now();
                let answer = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.json::<Value>().await.unwrap_or(Value::Null);
                        Ok((status, body))
                    }
                    Err(error) => Err(error.to_string()),
                };
                Probe { sent_at, answered_at: Instant::now(), answer }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut done = Vec::new();
        while let Some(probe) = probes.join_next().await {
            done.push(probe.expect("probe task"));
        }
        done.sort_by_key(|probe| probe.sent_at);
        done
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_answers_503_while_postgres_is_down_recovers_within_5_s_and_loses_no_acknowledged_write() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // Arrange: a PostgreSQL of this test's own, with durable commits (the testkit turns them off) so that what
        // was acknowledged survives an immediate stop.
        let server = Arc::new(tokio::task::spawn_blocking(PgServer::start).await.expect("postgres started"));
        let db = TestDb::new_on(&server, &MIGRATOR).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("alter database \"{}\" set synchronous_commit = on", db.name)))
            .execute(&db.pool)
            .await
            .expect("durable commits");
        db.pool.close().await;
        let api = start(&["api"], &[("DATABASE_URL", db.url.as_str()), ("RUST_LOG", "warn")]).await;
        api.wait_ready().await;
        let (_base_sender, base) = watch::channel(api.base.clone());
        let load = Load::start(4, base, &db.url);
        let probing = CancellationToken::new();
        let prober = start_prober(api.base.clone(), http(&db.url), probing.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Act: stop PostgreSQL like a crash, keep it down for 2 s under load, start it again.
        let stopping = server.clone();
        tokio::task::spawn_blocking(move || stopping.stop_immediate()).await.expect("stopped");
        let stopped_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let starting = server.clone();
        tokio::task::spawn_blocking(move || starting.restart()).await.expect("restarted");
        let back_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        probing.cancel();
        let ledgers = load.stop().await;
        let probes = prober.await.expect("prober");

        // Assert: while down, 503 Status answers and never a 500.
        for probe in &probes {
            match &probe.answer {
                Ok((status, body)) if status.is_server_error() => {
                    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                    assert!(is_status_body(body), "a 503 without a Status body: {body}");
                }
                Ok((status, body)) => assert_eq!(*status, StatusCode::OK, "{body}"),
                Err(error) => panic!("the API did not answer: {error}"),
            }
        }
        let while_down: Vec<&Probe> =
            probes.iter().filter(|probe| probe.sent_at > stopped_at && probe.answered_at < back_at).collect();
        assert!(!while_down.is_empty(), "no probe was answered while PostgreSQL was down");
        assert!(
            while_down.iter().all(|probe| matches!(probe.answer, Ok((StatusCode::SERVICE_UNAVAILABLE, _)))),
            "a probe got an answer other than 503 while PostgreSQL was down"
        );
        let slowest_503 = while_down.iter().map(|probe| probe.answered_at - probe.sent_at).max().unwrap_or_default();
        assert!(slowest_503 <= Duration::from_secs(2), "a 503 took {slowest_503:?}");

        // Assert: recovered within 5 s of PostgreSQL being back, and stayed so.
        let first_read = probes
            .iter()
            .filter(|probe| probe.sent_at >= back_at && matches!(probe.answer, Ok((StatusCode::OK, _))))
            .map(|probe| probe.answered_at - back_at)
            .min()
            .expect("a read succeeded after the restart");
        let first_write = ledgers
            .iter()
            .flatten()
            .filter(|write| write.answered_at > back_at && write.acknowledged().is_some())
            .map(|write| write.answered_at - back_at)
            .min()
            .expect("a write succeeded after the restart");
        let (acknowledged, refused, ambiguous) = tally(&ledgers);
        eprintln!(
            "postgres restart: {} probes answered 503 while down (slowest {slowest_503:?}); first read {first_read:?} \
             and first write {first_write:?} after it was back; {acknowledged} writes acknowledged, {refused} refused, \
             {ambiguous} 503 or unanswered",
            while_down.len()
        );
        assert!(first_read <= Duration::from_secs(5), "reads recovered only {first_read:?} after the restart");
        assert!(first_write <= Duration::from_secs(5), "writes recovered only {first_write:?} after the restart");
        assert!(
            probes
                .iter()
                .filter(|probe| probe.sent_at > back_at + Duration::from_secs(5))
                .all(|probe| matches!(probe.answer, Ok((StatusCode::OK, _)))),
            "a read failed more than 5 s after the restart"
        );
        assert!(
            ledgers.iter().flatten().all(|write| !matches!(write.outcome, Outcome::NoAnswer(_))),
            "the API left a write unanswered"
        );
        verify(&ledgers, &db.url, &api.base).await;
    })
    .await
    .expect("the scenario finished in time");
}

// ---------------------------------------------------------------------------------------------------------------
// Pub/Sub: a test subscription of its own and what arrives on it.

async fn topic_and_subscription(config: &PubSubConfig, subscription: &str) {
    let topics = config.topic_admin().await.expect("topic admin");
    config.ensure_topic(&topics).await.expect("topic created");
    let subscriptions = config.subscription_admin().await.expect("subscription admin");
    config.ensure_subscription(&subscriptions, subscription, "").await.expect("subscription created");
}

/// Everything a subscription receives (acknowledged at once), until dropped.
struct Collector {
    received: Arc<Mutex<Vec<Event>>>,
    stop: CancellationToken,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Collector {
    async fn start(config: &PubSubConfig, subscription: &str) -> Collector {
        let subscriber = config.subscriber().await.expect("subscriber");
        let path = config.subscription_path(subscription);
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (sink, stopped) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stream = subscriber.subscribe(path).set_max_outstanding_messages(10_000_i64).build();
            loop {
                let next = tokio::select! {
                    _ = stopped.cancelled() => break,
                    next = stream.next() => next,
                };
                let Some(Ok((message, handler))) = next else { break };
                handler.ack();
                let event: Event = serde_json::from_slice(&message.data).expect("data is an event");
                sink.lock().expect("collector lock").push(event);
            }
        });
        Collector { received, stop }
    }

    fn snapshot(&self) -> Vec<Event> {
        self.received.lock().expect("collector lock").clone()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. The emulator killed and started again

const EMULATOR_ATTENTION: Duration = Duration::from_secs(3);

fn service_manifest(name: &str, cluster: &str) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
           "spec": {"clusterRef": {"name": cluster}, "image": "nginx", "ports": [{"name": "http", "port": 0}]}})
}

async fn create(client: &reqwest::Client, base: &str, plural: &str, manifest: &Value) -> Value {
    let response = client.post(format!("{base}/api/v1/{plural}")).json(manifest).send().await.expect("create sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("created object")
}

async fn is_ready(client: &reqwest::Client, base: &str, plural: &str, uid: &str) -> bool {
    let Ok(response) = client.get(format!("{base}/api/v1/{plural}/{uid}")).send().await else { return false };
    let object: Value = response.json().await.unwrap_or(Value::Null);
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_while_the_emulator_is_down_are_delivered_and_a_controller_converges_within_two_intervals() {
    tokio::time::timeout(Duration::from_secs(150), async {
        // Arrange: an emulator of this test's own, the API, a reconciler and the port-allocator controller.
        let emulator = Arc::new(tokio::task::spawn_blocking(PubSubEmulator::start).await.expect("emulator"));
        let db = TestDb::new(&MIGRATOR).await;
        let topic = format!("faults-{}", Uuid::new_v4().simple());
        let config = PubSubConfig::new(PROJECT, &topic, Some(emulator.host()));
        topic_and_subscription(&config, "faults-all").await;
        let collector = Collector::start(&config, "faults-all").await;
        let attention = format!("{}s", EMULATOR_ATTENTION.as_secs());
        let host = emulator.host();
        let envs = [
            ("DATABASE_URL", db.url.as_str()),
            ("CLS_PUBSUB_PROJECT", PROJECT),
            ("CLS_PUBSUB_TOPIC", topic.as_str()),
            ("PUBSUB_EMULATOR_HOST", host.as_str()),
            ("CLS_ATTENTION_INTERVAL", attention.as_str()),
            ("CLS_STABLE_INTERVAL", "60s"),
            ("RUST_LOG", "warn"),
        ];
        let api = start(&["api"], &envs).await;
        api.wait_ready().await;
        let reconciler = start(&["reconciler"], &envs).await;
        let mut controller_envs = envs.to_vec();
        controller_envs.push(("CLS_API_URL", api.base.as_str()));
        let controller_token = common::create_token(&db.url, "controller:port-allocator", &[]);
        controller_envs.push(("CLS_TOKEN", controller_token.as_str()));
        let controller = start(&["controller", "port-allocator"], &controller_envs).await;
        reconciler.wait_ready().await;
        controller.wait_ready().await;
        let client = http(&db.url);
        create(&client, &api.base, "clusters", &cluster_manifest("lab", "europe-west1")).await;
        let before = create(&client, &api.base, "services", &service_manifest("before", "lab")).await;
        let before_uid = before["metadata"]["uid"].as_str().expect("uid").to_owned();
        eventually(Duration::from_secs(30), "the first Service to be Ready", || {
            is_ready(&client, &api.base, "services", &before_uid)
        })
        .await;

        // Act: kill the emulator, make changes, start a fresh emulator on the same port.
        let stopping = emulator.clone();
        tokio::task::spawn_blocking(move || stopping.stop()).await.expect("emulator stopped");
        let mut during = Vec::new();
        for index in 0..5 {
            let service =
                create(&client, &api.base, "services", &service_manifest(&format!("during-{index}"), "lab")).await;
            during.push(service["metadata"]["uid"].as_str().expect("uid").to_owned());
        }
        tokio::time::sleep(EMULATOR_ATTENTION).await;
        // Hold the relay back (its claim waits on this lock) until the test's subscription exists again: the fresh
        // emulator knows no topic or subscription, and what the relay publishes before they exist reaches nobody.
        let gate_pool = sqlx::PgPool::connect(&db.url).await.expect("gate connects");
        let mut gate = gate_pool.begin().await.expect("gate");
        sqlx::query("lock table outbox in exclusive mode").execute(&mut *gate).await.expect("outbox locked");
        let meanwhile: HashSet<Uuid> = sqlx::query_scalar("select event_id from outbox")
            .fetch_all(&mut *gate)
            .await
            .expect("outbox read")
            .into_iter()
            .collect();
        // The old collector goes while the emulator is down: a streaming pull cancelled on the fresh emulator would
        // stay there as a consumer of the new subscription (the emulator misses client cancels) and take messages.
        drop(collector);
        let starting = emulator.clone();
        tokio::task::spawn_blocking(move || starting.resume()).await.expect("emulator started");
        topic_and_subscription(&config, "faults-all").await;
        let collector = Collector::start(&config, "faults-all").await;
        gate.commit().await.expect("gate opened");
        let back_at = Instant::now();

        // Assert: every event committed meanwhile arrives; the controller makes every new Service Ready within two
        // scheduler intervals of the emulator being back.
        assert!(meanwhile.len() >= during.len(), "the outage held {} events", meanwhile.len());
        let mut converged = HashMap::new();
        let deadline = back_at + Duration::from_secs(30);
        while converged.len() < during.len() && Instant::now() < deadline {
            for uid in &during {
                if !converged.contains_key(uid) && is_ready(&client, &api.base, "services", uid).await {
                    converged.insert(uid.clone(), back_at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eventually(Duration::from_secs(30), "every event committed while the emulator was down", || async {
            let seen: HashSet<Uuid> = collector.snapshot().iter().map(|event| event.id).collect();
            meanwhile.is_subset(&seen)
        })
        .await;
        let slowest = converged.values().max().copied();
        eprintln!(
            "emulator restart: {} events of the outage delivered; {} of {} Services Ready, the last {slowest:?} after \
             the emulator was back (bound {:?})",
            meanwhile.len(),
            converged.len(),
            during.len(),
            EMULATOR_ATTENTION * 2
        );
        for uid in during.iter().filter(|uid| !converged.contains_key(*uid)) {
            let reconciles = collector.snapshot().iter().filter(|event| event.uid.to_string() == *uid).count();
            eprintln!("service {uid}: not Ready although {reconciles} of its events were delivered to the topic");
        }
        assert_eq!(converged.len(), during.len(), "Services not Ready 30 s after the emulator was back");
        assert!(slowest.is_some_and(|slowest| slowest <= EMULATOR_ATTENTION * 2), "converged in {slowest:?}");
        drop((controller, reconciler, api));
    })
    .await
    .expect("the scenario finished in time");
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Four reconciler replicas, one killed, one stopped

const REPLICA_ATTENTION: Duration = Duration::from_secs(2);

/// Whether the replica connected as `application` holds a scheduler transaction that locked rows (a claim assigns a
/// transaction id).
async fn in_scheduler_transaction(pool: &sqlx::PgPool, application: &str) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from pg_stat_activity where application_name = $1 and backend_xid is not null
                        and (query like '%schedules%' or query like '%pg_notify%'))",
    )
    .bind(application)
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity read")
}

/// SIGSTOPs `replica` while it holds a scheduler transaction (retrying for up to 10 s); answers whether it caught one.
async fn stop_inside_a_scheduler_transaction(replica: &Cls, application: &str, pool: &sqlx::PgPool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if in_scheduler_transaction(pool, application).await {
            replica.signal("STOP");
            tokio::time::sleep(Duration::from_millis(50)).await;
            if in_scheduler_transaction(pool, application).await {
                return true;
            }
            replica.signal("CONT");
        }
    }
    replica.signal("STOP");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_reconcilers_with_one_killed_and_one_stopped_fire_every_tick_once() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // Arrange: 150 Clusters that need attention (no controller reports on them), a topic of this test's own.
        let emulator = PubSubEmulator::shared();
        let db = TestDb::new(&MIGRATOR).await;
        let topic = format!("faults-{}", Uuid::new_v4().simple());
        let config = PubSubConfig::new(PROJECT, &topic, Some(emulator.host()));
        topic_and_subscription(&config, "faults-ticks").await;
        let collector = Collector::start(&config, "faults-ticks").await;
        let attention = format!("{}ms", REPLICA_ATTENTION.as_millis());
        let host = emulator.host();
        let envs = |database_url: &str| {
            vec![
                ("DATABASE_URL".to_owned(), database_url.to_owned()),
                ("CLS_PUBSUB_PROJECT".to_owned(), PROJECT.to_owned()),
                ("CLS_PUBSUB_TOPIC".to_owned(), topic.clone()),
                ("PUBSUB_EMULATOR_HOST".to_owned(), host.clone()),
                ("CLS_ATTENTION_INTERVAL".to_owned(), attention.clone()),
                ("CLS_STABLE_INTERVAL".to_owned(), "60s".to_owned()),
                ("RUST_LOG".to_owned(), "warn".to_owned()),
            ]
        };
        let as_refs = |envs: &[(String, String)]| -> Vec<(String, String)> { envs.to_vec() };
        let api_envs = as_refs(&envs(&db.url));
        let api_envs: Vec<(&str, &str)> = api_envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let api = start(&["api"], &api_envs).await;
        api.wait_ready().await;
        let client = http(&db.url);
        let mut creating = tokio::task::JoinSet::new();
        for writer in 0..5 {
            let (client, base) = (client.clone(), api.base.clone());
            creating.spawn(async move {
                for index in 0..30 {
                    create(&client, &base, "clusters", &cluster_manifest(&format!("r{writer}-{index}"), "x")).await;
                }
            });
        }
        while let Some(done) = creating.join_next().await {
            done.expect("clusters created");
        }
        drop(api);

        // Act: four replicas, each connected under an application name of its own.
        let mut replicas = Vec::new();
        for index in 0..4 {
            let url = format!("{}?application_name=faults-replica-{index}", db.url);
            let owned = envs(&url);
            let refs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            replicas.push(start(&["reconciler"], &refs).await);
        }
        for replica in &replicas {
            replica.wait_ready().await;
        }
        let started_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        replicas[0].child.kill().expect("SIGKILL");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let caught = stop_inside_a_scheduler_transaction(&replicas[1], "faults-replica-1", &db.pool).await;
        assert!(caught, "replica 1 was never seen inside a scheduler transaction");
        let stopped_at = Instant::now();
        tokio::time::sleep(REPLICA_ATTENTION * 2).await;
        replicas[1].signal("CONT");
        tokio::time::sleep(REPLICA_ATTENTION * 3).await;
        let running_for = started_at.elapsed();
        // Freeze the schedule, then let the relays drain what was scheduled.
        sqlx::query("update schedules set next_at = now() + interval '1 hour'")
            .execute(&db.pool)
            .await
            .expect("schedule frozen");
        let frozen_at: f64 = sqlx::query_scalar("select extract(epoch from now())::float8")
            .fetch_one(&db.pool)
            .await
            .expect("clock read");
        eventually(Duration::from_secs(30), "the outbox to drain", || async {
            sqlx::query_scalar::<_, i64>("select count(*) from outbox").fetch_one(&db.pool).await.expect("count") == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for replica in replicas.drain(1..) {
            let (status, _) = replica.terminate();
            assert!(status.success(), "a replica exited with {status}");
        }

        // Assert: per object, consecutive ticks an interval apart (a double fire would be ~0 apart, a lost tick two
        // intervals) from the first to the freeze.
        let interval = REPLICA_ATTENTION.as_secs_f64();
        let mut ticks: BTreeMap<Uuid, BTreeMap<Uuid, f64>> = BTreeMap::new();
        for event in collector.snapshot().into_iter().filter(|event| event.type_ == "cluster.reconcile") {
            let at = event.time.as_microsecond() as f64 / 1e6;
            ticks.entry(event.uid).or_default().insert(event.id, at);
        }
        assert_eq!(ticks.len(), 150, "every object ticked");
        let mut widest: f64 = 0.0;
        let mut narrowest = f64::MAX;
        for (uid, events) in &ticks {
            let mut times: Vec<f64> = events.values().copied().collect();
            times.sort_by(f64::total_cmp);
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                widest = widest.max(gap);
                narrowest = narrowest.min(gap);
                assert!(gap >= 0.9 * interval, "object {uid}: two ticks {gap:.3} s apart (fired twice)");
                assert!(gap <= 1.75 * interval, "object {uid}: two ticks {gap:.3} s apart (a tick was lost)");
            }
            let last = times.last().copied().unwrap_or_default();
            assert!(frozen_at - last <= 1.75 * interval, "object {uid}: no tick in the last {:.3} s", frozen_at - last);
        }
        let total: usize = ticks.values().map(BTreeMap::len).sum();
        eprintln!(
            "replicas: {total} ticks of 150 objects in {running_for:?}, gaps {narrowest:.3}..{widest:.3} s for an \
             interval of {interval} s; replica 1 stopped inside a scheduler transaction at {:?}",
            stopped_at - started_at
        );
    })
    .await
    .expect("the scenario finished in time");
}
