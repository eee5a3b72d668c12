//! Watch over raw HTTP against the real CLS API: newline-delimited events, resourceVersion semantics (synthetic
//! ADDED from 0, resume from a list, 410 Expired before the feed's start), bookmarks, `sendInitialEvents`,
//! `timeoutSeconds`, selectors, status changes, and the order of events under concurrent writers whose transactions
//! commit out of order or roll back. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cls_api::{AppState, ScheduleConfig, Store};
use common::{TestApi, condition, resource_version, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const CLUSTERS: &str = "/apis/cls.dev/v1alpha1/namespaces/default/clusters";
/// What kube-rs sends for a streaming list.
const INITIAL_EVENTS: &str =
    "sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion=";
/// Upper bound of a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound of one wait for an event the server should send soon.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------------------------
// helpers

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test).await.expect("the test finished in time");
}

/// One watch response, read line by line.
struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Watch {
    /// Opens a watch; a 503 while the API's change feed is still starting is retried, as clients do.
    async fn open(client: &reqwest::Client, base: &str, query: &str) -> Watch {
        let url = format!("{base}{CLUSTERS}?watch=true&{query}");
        let request = async {
            loop {
                let response = client.get(&url).send().await.expect("watch request sent");
                if response.status() != StatusCode::SERVICE_UNAVAILABLE {
                    return response;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let response = tokio::time::timeout(WAIT, request).await.expect("the watch started in time");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok());
        assert_eq!(content_type, Some("application/json"), "{url}");
        Watch { response, buffer: Vec::new() }
    }

    /// The next event, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line[..end]).expect("each line is one JSON event"));
            }
            match self.response.chunk().await.expect("watch stream read") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "the stream ended in the middle of a line");
                    return None;
                }
            }
        }
    }

    async fn expect_event(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.next()).await.expect("an event in time").expect("the stream is open")
    }

    /// Every event until the stream ends (bounded).
    async fn rest(mut self) -> Vec<Value> {
        let mut events = Vec::new();
        let read = async {
            while let Some(event) = self.next().await {
                events.push(event);
            }
        };
        tokio::time::timeout(WAIT, read).await.expect("the stream ended in time");
        events
    }

    /// Reads events on a task, forwarding them, so that the server never waits on this reader.
    fn spawn(mut self) -> mpsc::UnboundedReceiver<Value> {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = self.next().await {
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        receiver
    }
}

fn kind_of(event: &Value) -> &str {
    event["type"].as_str().expect("event type")
}

fn name_of(event: &Value) -> &str {
    event["object"]["metadata"]["name"].as_str().expect("object name")
}

fn rv_of(event: &Value) -> i64 {
    resource_version(&event["object"])
}

/// `(type, name)` of each event.
fn summary(events: &[Value]) -> Vec<(String, String)> {
    events.iter().map(|event| (kind_of(event).to_owned(), name_of(event).to_owned())).collect()
}

fn pair(type_: &str, name: &str) -> (String, String) {
    (type_.to_owned(), name.to_owned())
}

async fn create(api: &TestApi, name: &str, labels: Value) -> Value {
    let manifest = json!({"metadata": {"name": name, "labels": labels}, "spec": {"platform": {"type": "gcp"}}});
    let (status, body) = api.post(CLUSTERS, &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "create {name}: {body}");
    body
}

async fn merge(api: &TestApi, name: &str, patch: Value) -> Value {
    let (status, body) = api.merge(&format!("{CLUSTERS}/{name}"), &patch).await;
    assert_eq!(status, StatusCode::OK, "patch {name}: {body}");
    body
}

async fn delete(api: &TestApi, name: &str) -> Value {
    let (status, body) = api.delete(&format!("{CLUSTERS}/{name}")).await;
    assert_eq!(status, StatusCode::OK, "delete {name}: {body}");
    body
}

/// A list of the namespace: its resourceVersion and items.
async fn list(api: &TestApi) -> (i64, Vec<Value>) {
    let (status, body) = api.get(CLUSTERS).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let version = body["metadata"]["resourceVersion"].as_str().expect("list resourceVersion").parse().expect("numeric");
    (version, body["items"].as_array().expect("items").clone())
}

/// A list whose resourceVersion covers every item in it, retried until it does: a list right after a write may
/// claim an older resourceVersion (see `a_list_resource_version_is_never_older_than_an_object_it_lists`); tests
/// about other things start from a settled one. Only for quiet moments (no concurrent writes).
async fn settled_list(api: &TestApi) -> (i64, Vec<Value>) {
    let settle = async {
        loop {
            let (version, items) = list(api).await;
            if items.iter().all(|item| resource_version(item) <= version) {
                return (version, items);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, settle).await.expect("a list caught up with its items")
}

// ---------------------------------------------------------------------------------------------------------------
// resourceVersion semantics

#[tokio::test]
async fn a_watch_from_resource_version_0_starts_with_a_synthetic_added_per_existing_object_then_live_events() {
    bounded(async {
        let api = TestApi::start().await;
        create(&api, "a", json!({})).await;
        create(&api, "b", json!({})).await;
        merge(&api, "b", json!({"metadata": {"labels": {"x": "1"}}})).await;
        let mut watch = Watch::open(&api.client, &api.base, "resourceVersion=0").await;
        let initial = [watch.expect_event().await, watch.expect_event().await];
        let names: BTreeSet<(String, String)> = summary(&initial).into_iter().collect();
        assert_eq!(names, BTreeSet::from([pair("ADDED", "a"), pair("ADDED", "b")]));
        for event in &initial {
            assert_eq!((rv_of(event) > 0, &event["object"]["kind"]), (true, &json!("Cluster")), "{event}");
        }
        let b = initial.iter().find(|event| name_of(event) == "b").expect("b");
        assert_eq!(b["object"]["metadata"]["labels"]["x"], "1", "the synthetic ADDED carries the current state");

        create(&api, "c", json!({})).await;
        merge(&api, "a", json!({"metadata": {"labels": {"y": "2"}}})).await;
        let live = [watch.expect_event().await, watch.expect_event().await];
        assert_eq!(summary(&live), [pair("ADDED", "c"), pair("MODIFIED", "a")]);
        assert_eq!(live[1]["object"]["metadata"]["labels"]["y"], "2");
    })
    .await
}

#[tokio::test]
async fn a_watch_from_a_listed_resource_version_delivers_every_later_change_and_nothing_earlier() {
    bounded(async {
        let api = TestApi::start().await;
        create(&api, "a", json!({})).await;
        create(&api, "b", json!({})).await;
        let (listed, items) = settled_list(&api).await;
        assert_eq!(items.len(), 2);
        merge(&api, "a", json!({"metadata": {"labels": {"step": "1"}}})).await;
        create(&api, "c", json!({})).await;
        delete(&api, "b").await;
        let watch = Watch::open(&api.client, &api.base, &format!("resourceVersion={listed}&timeoutSeconds=2")).await;
        merge(&api, "c", json!({"metadata": {"labels": {"step": "2"}}})).await;
        let events = watch.rest().await;
        let changes: Vec<(String, String)> = summary(&events)
            .into_iter()
            .filter(|(type_, name)| !(type_ == "MODIFIED" && name == "b")) // the deletionTimestamp, if logged
            .collect();
        assert_eq!(
            changes,
            [pair("MODIFIED", "a"), pair("ADDED", "c"), pair("DELETED", "b"), pair("MODIFIED", "c")],
            "{events:?}"
        );
        let versions: Vec<i64> = events.iter().map(rv_of).collect();
        assert!(versions.iter().all(|version| *version > listed), "{versions:?} after {listed}");
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "{versions:?}");
    })
    .await
}

/// The change feed reads on connections of its own; when the database drops them (as when it restarts), the feed
/// resumes and a watch open across the drop still gets every change, in order.
#[tokio::test]
async fn a_watch_keeps_receiving_changes_after_the_database_dropped_the_feeds_connections() {
    bounded(async {
        let api = TestApi::start().await;
        let created = create(&api, "a", json!({})).await;
        let mut watch =
            Watch::open(&api.client, &api.base, &format!("resourceVersion={}", resource_version(&created))).await;
        merge(&api, "a", json!({"metadata": {"labels": {"step": "1"}}})).await;
        assert_eq!(watch.expect_event().await["object"]["metadata"]["labels"]["step"], "1");

        api.drop_database_connections().await;
        merge(&api, "a", json!({"metadata": {"labels": {"step": "2"}}})).await;
        create(&api, "b", json!({})).await;

        let events = [watch.expect_event().await, watch.expect_event().await];
        assert_eq!(summary(&events), [pair("MODIFIED", "a"), pair("ADDED", "b")], "{events:?}");
        assert_eq!(events[0]["object"]["metadata"]["labels"]["step"], "2");
    })
    .await
}

/// While a transaction holds a resourceVersion open, the feed waits at the gap without reading the rows beyond it
/// again and again: every change is read from the log once.
#[tokio::test]
async fn rows_beyond_an_open_gap_are_read_once() {
    bounded(async {
        let db = cls_testkit::TestDb::new(&cls_api::store::MIGRATOR).await;
        let state = AppState::new(Store::new(db.pool.clone(), ScheduleConfig::default()));
        let rows_read = state.feed.rows_read();
        let api = TestApi::start_with_state(db, state).await;
        let created = create(&api, "first", json!({})).await;
        let mut watch =
            Watch::open(&api.client, &api.base, &format!("resourceVersion={}", resource_version(&created))).await;
        let before = rows_read.get();

        // a transaction takes the next number and logs it, uncommitted: the gap stays open until it ends
        let mut holder = api.db.pool.begin().await.expect("begin");
        let (held,): (i64,) =
            sqlx::query_as("select nextval('resource_version_seq')").fetch_one(&mut *holder).await.expect("nextval");
        sqlx::query("insert into changes (resource_version, event_type) values ($1, 'GAP')")
            .bind(held)
            .execute(&mut *holder)
            .await
            .expect("logged");
        const WRITES: u64 = 10;
        for index in 0..WRITES {
            create(&api, &format!("beyond-{index}"), json!({})).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the feed looks at the gap meanwhile
        holder.commit().await.expect("commit");

        for index in 0..WRITES {
            let event = watch.expect_event().await;
            assert_eq!(event["object"]["metadata"]["name"], format!("beyond-{index}"), "{event}");
        }
        let read = rows_read.get() - before;
        assert!(read <= WRITES + 2, "{read} rows read for {WRITES} changes and one gap");
    })
    .await
}

#[tokio::test]
async fn a_list_resource_version_is_never_older_than_an_object_it_lists() {
    bounded(async {
        let api = TestApi::start().await;
        for index in 0..40 {
            let created = create(&api, &format!("o-{index}"), json!({})).await;
            let (listed, items) = list(&api).await;
            let newest = items.iter().map(resource_version).max().expect("items");
            assert!(
                listed >= newest,
                "list after create #{index} (resourceVersion {}) claims resourceVersion {listed}, older than an \
                 item it contains ({newest}): a watch from it replays that change",
                resource_version(&created)
            );
        }
    })
    .await
}

#[tokio::test]
async fn bookmarks_carry_a_resource_version_and_come_only_when_allowed() {
    bounded(async {
        let api = TestApi::start().await;
        let created = create(&api, "a", json!({})).await;
        let (listed, _) = settled_list(&api).await;
        let with =
            Watch::open(&api.client, &api.base, &format!("resourceVersion={listed}&allowWatchBookmarks=true")).await;
        let without = Watch::open(&api.client, &api.base, &format!("resourceVersion={listed}&timeoutSeconds=12")).await;
        let (mut with, without) = (with, without.spawn());
        let bookmark = with.expect_event().await;
        assert_eq!(kind_of(&bookmark), "BOOKMARK", "{bookmark}");
        assert_eq!(bookmark["object"]["kind"], "Cluster");
        assert_eq!(bookmark["object"]["apiVersion"], "cls.dev/v1alpha1");
        assert!(rv_of(&bookmark) >= listed.max(resource_version(&created)), "{bookmark}");

        let mut without = without;
        let rest = tokio::time::timeout(WAIT, async {
            let mut events = Vec::new();
            while let Some(event) = without.recv().await {
                events.push(event);
            }
            events
        })
        .await
        .expect("the watch without bookmarks ended");
        assert!(rest.is_empty(), "no bookmarks unless allowed: {rest:?}");
    })
    .await
}

#[tokio::test]
async fn send_initial_events_ends_the_initial_events_with_a_bookmark_annotated_initial_events_end() {
    bounded(async {
        let api = TestApi::start().await;
        create(&api, "a", json!({})).await;
        create(&api, "b", json!({})).await;
        let (settled, _) = settled_list(&api).await;
        let mut watch = Watch::open(&api.client, &api.base, INITIAL_EVENTS).await;
        let initial = [watch.expect_event().await, watch.expect_event().await];
        let names: BTreeSet<(String, String)> = summary(&initial).into_iter().collect();
        assert_eq!(names, BTreeSet::from([pair("ADDED", "a"), pair("ADDED", "b")]));
        let end = watch.expect_event().await;
        assert_eq!(kind_of(&end), "BOOKMARK", "{end}");
        assert_eq!(end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true", "{end}");
        assert!(rv_of(&end) >= settled, "{end}");
        create(&api, "c", json!({})).await;
        let live = watch.expect_event().await;
        assert_eq!(summary(&[live]), [pair("ADDED", "c")]);
    })
    .await
}

#[tokio::test]
async fn the_initial_events_end_bookmark_is_never_older_than_an_initial_object() {
    bounded(async {
        let api = TestApi::start().await;
        for index in 0..20 {
            create(&api, &format!("o-{index}"), json!({})).await;
            let mut watch = Watch::open(&api.client, &api.base, INITIAL_EVENTS).await;
            let mut newest = 0;
            let end = loop {
                let event = watch.expect_event().await;
                if kind_of(&event) == "BOOKMARK" {
                    break rv_of(&event);
                }
                newest = newest.max(rv_of(&event));
            };
            assert!(
                end >= newest,
                "after create #{index}: the initial-events-end bookmark ({end}) is older than an initial object \
                 ({newest}); a watcher resuming from it replays that change"
            );
        }
    })
    .await
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream() {
    bounded(async {
        let api = TestApi::start().await;
        create(&api, "a", json!({})).await;
        let started = Instant::now();
        let events = Watch::open(&api.client, &api.base, "resourceVersion=0&timeoutSeconds=1").await.rest().await;
        let elapsed = started.elapsed();
        assert_eq!(summary(&events), [pair("ADDED", "a")]);
        assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    })
    .await
}

#[tokio::test]
async fn a_resource_version_older_than_the_feed_start_gets_http_200_and_an_error_event_410_expired() {
    bounded(async {
        let api = TestApi::start().await;
        for name in ["a", "b", "c"] {
            create(&api, name, json!({})).await;
        }
        // a second API process over the same database whose change feed starts now, after those changes
        let state = AppState::new(Store::new(api.db.pool.clone(), ScheduleConfig::default()));
        tokio::spawn(state.feed.clone().run(state.store.clone(), tokio_util::sync::CancellationToken::new()));
        tokio::time::timeout(WAIT, async {
            while !state.feed.is_running() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the second feed started");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = cls_api::router(state);
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

        let events = Watch::open(&api.client, &base, "resourceVersion=1").await.rest().await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(kind_of(&events[0]), "ERROR");
        let status = &events[0]["object"];
        assert_eq!(status["kind"], "Status", "{status}");
        assert_eq!(status["code"], 410, "{status}");
        assert_eq!(status["reason"], "Expired", "{status}");

        // a resume from its own list works
        let response = api.client.get(format!("{base}{CLUSTERS}")).send().await.expect("list");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("a list");
        let listed = body["metadata"]["resourceVersion"].as_str().expect("list resourceVersion").to_owned();
        let mut watch = Watch::open(&api.client, &base, &format!("resourceVersion={listed}")).await;
        merge(&api, "a", json!({"metadata": {"labels": {"after": "restart"}}})).await;
        assert_eq!(summary(&[watch.expect_event().await]), [pair("MODIFIED", "a")]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// filters and status

#[tokio::test]
async fn label_and_field_selectors_filter_watch_events() {
    bounded(async {
        let api = TestApi::start().await;
        let (listed, _) = settled_list(&api).await;
        let blue = Watch::open(
            &api.client,
            &api.base,
            &format!("resourceVersion={listed}&labelSelector=team%3Dblue&timeoutSeconds=2"),
        )
        .await;
        let named = Watch::open(
            &api.client,
            &api.base,
            &format!("resourceVersion={listed}&fieldSelector=metadata.name%3Dx&timeoutSeconds=2"),
        )
        .await;
        create(&api, "x", json!({"team": "blue"})).await;
        create(&api, "y", json!({"team": "red"})).await;
        create(&api, "z", json!({"team": "blue"})).await;
        merge(&api, "y", json!({"metadata": {"annotations": {"note": "1"}}})).await;
        merge(&api, "x", json!({"metadata": {"annotations": {"note": "2"}}})).await;
        let (blue, named) = tokio::join!(blue.rest(), named.rest());
        assert_eq!(summary(&blue), [pair("ADDED", "x"), pair("ADDED", "z"), pair("MODIFIED", "x")]);
        assert_eq!(summary(&named), [pair("ADDED", "x"), pair("MODIFIED", "x")]);
    })
    .await
}

#[tokio::test]
async fn an_object_leaving_a_label_selector_arrives_as_deleted_and_one_entering_it_as_added() {
    bounded(async {
        let api = TestApi::start().await;
        create(&api, "x", json!({"team": "blue"})).await;
        create(&api, "y", json!({"team": "red"})).await;
        let (listed, _) = settled_list(&api).await;
        let watch = Watch::open(
            &api.client,
            &api.base,
            &format!("resourceVersion={listed}&labelSelector=team%3Dblue&timeoutSeconds=2"),
        )
        .await;
        merge(&api, "x", json!({"metadata": {"labels": {"team": "red"}}})).await;
        merge(&api, "y", json!({"metadata": {"labels": {"team": "blue"}}})).await;
        let events = watch.rest().await;
        // as kube-apiserver does: otherwise a reflector with this selector keeps x forever and never learns of y
        assert_eq!(summary(&events), [pair("DELETED", "x"), pair("ADDED", "y")], "{events:?}");
    })
    .await
}

#[tokio::test]
async fn a_controller_report_through_the_thin_rest_api_arrives_as_modified() {
    bounded(async {
        let api = TestApi::start().await;
        api.register("x", &["Cluster"], &[]).await;
        let created = create(&api, "s", json!({})).await;
        let (listed, _) = settled_list(&api).await;
        let mut watch = Watch::open(&api.client, &api.base, &format!("resourceVersion={listed}")).await;
        let (status, reported) = api.report("clusters", &uid(&created), "x", 1, true).await;
        assert_eq!(status, StatusCode::OK, "{reported}");
        let event = watch.expect_event().await;
        assert_eq!(summary(std::slice::from_ref(&event)), [pair("MODIFIED", "s")]);
        assert_eq!(condition(&event["object"], "Ready")["status"], "True", "{event}");
        assert_eq!(event["object"]["status"]["controllers"][0]["controller"], "x");
        assert_eq!(rv_of(&event), resource_version(&reported));
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// order under concurrency

const WRITERS: usize = 8;
const ROUNDS: usize = 36;

/// What the writers did that watchers must see.
#[derive(Default)]
struct Written {
    /// resourceVersions answered to successful writes.
    versions: Vec<i64>,
    deletes: usize,
}

/// Writer `writer`: merge patches of its object, creates (and deletes) of its own extra objects, duplicate creates
/// (409, which consume a resourceVersion and roll back) and dry-run creates (which take one and roll back).
async fn write(api: Arc<TestApi>, writer: usize, progress: Arc<AtomicUsize>) -> Written {
    let mut written = Written::default();
    let own = format!("obj-{writer}");
    for round in 0..ROUNDS {
        let extra = format!("obj-{writer}-{}", round / 6);
        match round % 6 {
            0 => written.versions.push(resource_version(&create(&api, &extra, json!({"writer": own})).await)),
            1 => {
                let manifest = json!({"metadata": {"name": own}, "spec": {"platform": {"type": "gcp"}}});
                let (status, body) = api.post(CLUSTERS, &manifest).await;
                assert_eq!(status, StatusCode::CONFLICT, "{body}");
            }
            2 => {
                let manifest =
                    json!({"metadata": {"name": format!("{extra}-dry")}, "spec": {"platform": {"type": "gcp"}}});
                let (status, body) = api.post(&format!("{CLUSTERS}?dryRun=All"), &manifest).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
            5 => {
                written.versions.push(resource_version(&delete(&api, &extra).await));
                written.deletes += 1;
            }
            _ => {
                let patch = json!({"metadata": {"labels": {"round": round.to_string()}}});
                written.versions.push(resource_version(&merge(&api, &own, patch).await));
            }
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    written
}

/// Transactions that take a resourceVersion, hold it a while, and roll back.
async fn hold_and_roll_back(api: Arc<TestApi>, times: usize) {
    for _ in 0..times {
        let mut transaction = api.db.pool.begin().await.expect("begin");
        sqlx::query("select nextval('resource_version_seq')").execute(&mut *transaction).await.expect("nextval");
        tokio::time::sleep(Duration::from_millis(60)).await;
        transaction.rollback().await.expect("rollback");
    }
}

/// Receives events until `done` says the collection is complete.
async fn collect(
    receiver: &mut mpsc::UnboundedReceiver<Value>,
    events: &mut Vec<Value>,
    done: impl Fn(&[Value]) -> bool,
) {
    let read = async {
        while !done(events) {
            events.push(receiver.recv().await.expect("the watch is open"));
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the watch caught up in time; got {} events", events.len()));
}

fn complete(expected: &BTreeSet<i64>, deletes: usize) -> impl Fn(&[Value]) -> bool + '_ {
    move |events| {
        let versions: BTreeSet<i64> = events.iter().map(rv_of).collect();
        expected.is_subset(&versions) && events.iter().filter(|event| kind_of(event) == "DELETED").count() >= deletes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_writers_and_rolled_back_transactions_never_reorder_skip_or_invent_watch_events() {
    bounded(async {
        let api = Arc::new(TestApi::start().await);
        for writer in 0..WRITERS {
            create(&api, &format!("obj-{writer}"), json!({})).await;
        }
        let (start, _) = settled_list(&api).await;
        let mut first = Watch::open(&api.client, &api.base, &format!("resourceVersion={start}")).await.spawn();

        let progress = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> =
            (0..WRITERS).map(|writer| tokio::spawn(write(api.clone(), writer, progress.clone()))).collect();
        let holders: Vec<_> = (0..2).map(|_| tokio::spawn(hold_and_roll_back(api.clone(), 10))).collect();

        // two more watchers, started halfway: one from a list, one with initial events
        tokio::time::timeout(WAIT, async {
            while progress.load(Ordering::Relaxed) < WRITERS * ROUNDS / 2 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the writers got halfway");
        let (middle, _) = list(&api).await;
        let mut second = Watch::open(&api.client, &api.base, &format!("resourceVersion={middle}")).await.spawn();
        let mut third = Watch::open(&api.client, &api.base, INITIAL_EVENTS).await.spawn();

        let mut written = Written::default();
        for writer in writers {
            let done = tokio::time::timeout(WAIT * 4, writer).await.expect("writer finished").expect("writer");
            written.versions.extend(done.versions);
            written.deletes += done.deletes;
        }
        for holder in holders {
            holder.await.expect("holder");
        }
        let expected: BTreeSet<i64> = written.versions.iter().copied().collect();
        assert_eq!(expected.len(), written.versions.len(), "every write got its own resourceVersion");

        // the first watcher: everything after `start`, in order, once, and nothing else
        let mut all = Vec::new();
        collect(&mut first, &mut all, complete(&expected, written.deletes)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(event) = first.try_recv() {
            all.push(event);
        }
        let versions: Vec<i64> = all.iter().map(rv_of).collect();
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "resourceVersions strictly increase: {versions:?}");
        for version in &expected {
            assert_eq!(versions.iter().filter(|seen| *seen == version).count(), 1, "write {version} seen once");
        }
        for event in all.iter().filter(|event| !expected.contains(&rv_of(event))) {
            assert!(kind_of(event) == "DELETED", "an event no write answered with: {event}");
        }
        assert_eq!(all.iter().filter(|event| kind_of(event) == "DELETED").count(), written.deletes);
        assert!(all.iter().all(|event| !name_of(event).ends_with("-dry")), "a dry run reached the watch");

        // the final state of every object in the watch is what a GET answers
        let mut last: BTreeMap<String, &Value> = BTreeMap::new();
        for event in &all {
            last.insert(name_of(event).to_owned(), event);
        }
        for (name, event) in &last {
            let (status, current) = api.get(&format!("{CLUSTERS}/{name}")).await;
            if kind_of(event) == "DELETED" {
                assert_eq!(status, StatusCode::NOT_FOUND, "{name} was deleted: {current}");
            } else {
                assert_eq!(status, StatusCode::OK, "{current}");
                assert_eq!(&event["object"], &current, "the watch's last state of {name} is the current one");
            }
        }

        // the second watcher saw exactly the first one's events after `middle`, in the same order
        let later: Vec<&Value> = all.iter().filter(|event| rv_of(event) > middle).collect();
        let mut seen_later = Vec::new();
        collect(&mut second, &mut seen_later, |events| events.len() >= later.len()).await;
        assert_eq!(seen_later.iter().collect::<Vec<_>>(), later, "two watchers agree on the events and their order");

        // the third: a snapshot, the end bookmark, then live events each identical to the first watcher's
        let mut initial = Vec::new();
        collect(&mut third, &mut initial, |events| events.last().is_some_and(|event| kind_of(event) == "BOOKMARK"))
            .await;
        let bookmark = rv_of(initial.last().expect("bookmark"));
        let mut state: BTreeMap<String, Value> = initial[..initial.len() - 1]
            .iter()
            .map(|event| (name_of(event).to_owned(), event["object"].clone()))
            .collect();
        let by_version: BTreeMap<i64, &Value> = all.iter().map(|event| (rv_of(event), event)).collect();
        let mut live = Vec::new();
        let final_version = *versions.last().expect("events");
        collect(&mut third, &mut live, |events| events.last().is_some_and(|event| rv_of(event) >= final_version)).await;
        let live_versions: Vec<i64> = live.iter().map(rv_of).collect();
        assert!(live_versions.windows(2).all(|pair| pair[0] < pair[1]), "{live_versions:?}");
        for event in &live {
            assert!(rv_of(event) > bookmark, "a live event older than the initial-events-end bookmark: {event}");
            assert_eq!(Some(&event), by_version.get(&rv_of(event)), "the same change, seen by both watchers");
            if kind_of(event) == "DELETED" {
                state.remove(name_of(event));
            } else {
                state.insert(name_of(event).to_owned(), event["object"].clone());
            }
        }
        let (_, items) = list(&api).await;
        let gaps: i64 = sqlx::query_scalar("select count(*) from changes where event_type = 'GAP'")
            .fetch_one(&api.db.pool)
            .await
            .expect("count gaps");
        assert!(gaps > 0, "the rolled-back transactions left resourceVersions for the feed to resolve");
        let current: BTreeMap<String, Value> =
            items.into_iter().map(|item| (item["metadata"]["name"].as_str().expect("name").to_owned(), item)).collect();
        assert_eq!(state, current, "a snapshot plus the live events is the current state");
    })
    .await
}
