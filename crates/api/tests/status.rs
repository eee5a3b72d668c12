//! Controller reports, their aggregation into `status`, the lazy aggregate cache and the schedule rows, through the
//! thin REST API against a real PostgreSQL. Outbox events are in `outbox.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cls_api::ScheduleConfig;
use common::{TestApi, condition, generation, resource_version, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// Registers a controller with an explicit `required` flag (panics unless 200/201).
async fn register(api: &TestApi, name: &str, kinds: &[&str], platforms: &[&str], required: bool) {
    let manifest = json!({"spec": {"kinds": kinds, "platforms": platforms, "required": required}});
    let (status, body) = api.put(&format!("/api/v1/controllers/{name}"), &manifest).await;
    assert!(status == StatusCode::CREATED || status == StatusCode::OK, "registering {name}: {status} {body}");
}

/// A report body with `conditions` given as `(type, status)` pairs.
fn report_body(controller: &str, generation: i64, conditions: &[(&str, &str)], data: Value) -> Value {
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(type_, status)| json!({"type": type_, "status": status, "reason": "Test", "message": "from the test"}))
        .collect();
    json!({"controller": controller, "observedGeneration": generation, "conditions": conditions, "data": data})
}

async fn send_report(api: &TestApi, plural: &str, uid: &str, body: &Value) -> (StatusCode, Value) {
    api.put(&format!("/api/v1/{plural}/{uid}/status"), body).await
}

/// Sends `Available=<available>` at `generation` and asserts 200.
async fn report_ok(
    api: &TestApi,
    plural: &str,
    uid: &str,
    controller: &str,
    generation: i64,
    available: &str,
) -> Value {
    let body = report_body(controller, generation, &[("Available", available)], json!({}));
    let (status, object) = send_report(api, plural, uid, &body).await;
    assert_eq!(status, StatusCode::OK, "report of {controller}: {object}");
    object
}

/// GETs an object and asserts 200.
async fn read(api: &TestApi, plural: &str, uid: &str) -> Value {
    let (status, object) = api.get(&format!("/api/v1/{plural}/{uid}")).await;
    assert_eq!(status, StatusCode::OK, "{object}");
    object
}

/// Changes the Cluster's spec (its region), which bumps its generation.
async fn change_spec(api: &TestApi, uid: &str, region: &str) -> Value {
    let patch = json!({"spec": {"platform": {"region": region}}});
    let (status, object) = api.merge(&format!("/api/v1/clusters/{uid}"), &patch).await;
    assert_eq!(status, StatusCode::OK, "{object}");
    object
}

fn ready_status(object: &Value) -> &str {
    condition(object, "Ready")["status"].as_str().expect("Ready status")
}

fn ready_reason(object: &Value) -> &str {
    condition(object, "Ready")["reason"].as_str().expect("Ready reason")
}

fn ready_message(object: &Value) -> &str {
    condition(object, "Ready")["message"].as_str().expect("Ready message")
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or_else(|| panic!("phase in {object}"))
}

fn parse_uid(uid: &str) -> Uuid {
    uid.parse().expect("uid")
}

/// The stored report of `controller` on `uid`: (observed_generation, data).
async fn stored_report(api: &TestApi, uid: &str, controller: &str) -> Option<(i64, Option<Value>)> {
    sqlx::query_as("select observed_generation, data from reports where uid = $1 and controller = $2")
        .bind(parse_uid(uid))
        .bind(controller)
        .fetch_optional(&api.db.pool)
        .await
        .expect("reports read")
}

async fn outbox_count(api: &TestApi, uid: &str) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where uid = $1")
        .bind(parse_uid(uid))
        .fetch_one(&api.db.pool)
        .await
        .expect("outbox read")
}

/// The aggregate cache of one object as stored.
#[derive(Debug)]
struct Cache {
    /// `status_cached_seq is distinct from status_seq`.
    stale: bool,
    /// Whether the cache was computed with the current registry epoch.
    current_epoch: bool,
    /// The row version: it changes whenever the row is rewritten.
    xmin: i64,
    status: Option<Value>,
}

async fn cache(api: &TestApi, uid: &str) -> Cache {
    let (stale, current_epoch, xmin, status): (bool, bool, i64, Option<Value>) = sqlx::query_as(
        "select o.status_cached_seq is distinct from o.status_seq, o.status_epoch is not distinct from e.epoch,
                o.xmin::text::bigint, o.status
         from objects o cross join registry_epoch e where o.uid = $1",
    )
    .bind(parse_uid(uid))
    .fetch_one(&api.db.pool)
    .await
    .expect("objects read");
    Cache { stale, current_epoch, xmin, status }
}

/// The schedule row of `uid`: (attention, seconds from the database's `now()` to `next_at`).
async fn schedule(api: &TestApi, uid: &str) -> Option<(bool, f64)> {
    sqlx::query_as("select attention, extract(epoch from next_at - now())::float8 from schedules where uid = $1")
        .bind(parse_uid(uid))
        .fetch_optional(&api.db.pool)
        .await
        .expect("schedules read")
}

const FAST: Duration = Duration::from_secs(2);
const SLOW: Duration = Duration::from_secs(600);

async fn start_with_short_cadences() -> TestApi {
    TestApi::start_with(ScheduleConfig { attention_interval: FAST, stable_interval: SLOW }).await
}

/// Asserts the schedule row says `attention` with `next_at` about `interval` after the database's now (a little
/// jitter and the time the test itself takes are tolerated).
async fn assert_scheduled(api: &TestApi, uid: &str, attention: bool, interval: Duration) {
    let (found_attention, seconds) = schedule(api, uid).await.expect("a schedule row");
    assert_eq!(found_attention, attention, "attention");
    let interval = interval.as_secs_f64();
    assert!(
        seconds > interval * 0.5 && seconds <= interval * 1.2,
        "next_at is {seconds:.2}s from now, expected about {interval}s"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// reports

#[tokio::test]
async fn a_report_answers_200_with_the_object_and_its_aggregate() {
    let api = TestApi::start().await;
    register(&api, "ctl", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let body = report_body("ctl", 1, &[("Available", "True")], json!({"endpoint": "10.0.0.1"}));
    let (status, object) = send_report(&api, "clusters", &cluster, &body).await;

    assert_eq!(status, StatusCode::OK, "{object}");
    assert_eq!(uid(&object), cluster);
    assert_eq!(object["kind"], "Cluster");
    assert_eq!(object["metadata"]["name"], "dev");
    let reports = object["status"]["controllers"].as_array().expect("status.controllers");
    assert_eq!(reports.len(), 1, "{object}");
    assert_eq!(reports[0]["controller"], "ctl");
    assert_eq!(reports[0]["observedGeneration"], 1);
    assert_eq!(reports[0]["data"], json!({"endpoint": "10.0.0.1"}));
    assert!(reports[0]["lastReportTime"].is_string(), "{object}");
    assert_eq!(ready_status(&object), "True");
    assert_eq!(phase(&object), "Ready");
}

#[tokio::test]
async fn a_report_ahead_of_the_object_generation_is_rejected_with_422() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let (status, body) =
        send_report(&api, "clusters", &cluster, &report_body("ctl", 2, &[("Available", "True")], json!({}))).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(stored_report(&api, &cluster, "ctl").await, None);
    assert_eq!(api.events(&cluster).await, vec!["cluster.created"]);
}

#[tokio::test]
async fn a_report_older_than_the_controllers_stored_report_is_a_409_and_stores_nothing() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    change_spec(&api, &cluster, "r2").await;
    let newer = report_body("ctl", 2, &[("Available", "True")], json!({"seen": 2}));
    assert_eq!(send_report(&api, "clusters", &cluster, &newer).await.0, StatusCode::OK);
    let version_before = resource_version(&read(&api, "clusters", &cluster).await);
    let events_before = outbox_count(&api, &cluster).await;

    let late = report_body("ctl", 1, &[("Available", "False")], json!({"seen": 1}));
    let (status, body) = send_report(&api, "clusters", &cluster, &late).await;

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(stored_report(&api, &cluster, "ctl").await, Some((2, Some(json!({"seen": 2})))));
    assert_eq!(outbox_count(&api, &cluster).await, events_before);
    let after = read(&api, "clusters", &cluster).await;
    assert_eq!(resource_version(&after), version_before);
    assert_eq!(after["status"]["controllers"][0]["data"], json!({"seen": 2}));
}

#[tokio::test]
async fn a_report_without_an_available_condition_is_rejected_with_422() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let body = report_body("ctl", 1, &[("Progressing", "True")], json!({}));
    let (status, answer) = send_report(&api, "clusters", &cluster, &body).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(stored_report(&api, &cluster, "ctl").await, None);
    assert_eq!(outbox_count(&api, &cluster).await, 1);
}

#[tokio::test]
async fn a_report_that_changes_nothing_is_a_no_op_without_resource_version_bump_or_event() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    let mut body = report_body("ctl", 1, &[("Available", "True"), ("Progressing", "False")], json!({"n": 1}));
    body["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
    let (status, first) = send_report(&api, "clusters", &cluster, &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let events_before = outbox_count(&api, &cluster).await;

    body["conditions"][0]["lastTransitionTime"] = json!("2021-06-01T12:00:00Z");
    let (status, again) = send_report(&api, "clusters", &cluster, &body).await;

    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(resource_version(&again), resource_version(&first));
    assert_eq!(resource_version(&read(&api, "clusters", &cluster).await), resource_version(&first));
    assert_eq!(outbox_count(&api, &cluster).await, events_before);
}

#[tokio::test]
async fn a_report_that_changes_data_bumps_resource_version_and_writes_one_status_event_of_its_kind() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    let service = uid(&api.create_service("web", "dev").await);

    for (plural, uid, event) in [("clusters", &cluster, "cluster.status"), ("services", &service, "service.status")] {
        let (_, first) =
            send_report(&api, plural, uid, &report_body("ctl", 1, &[("Available", "True")], json!({"n": 1}))).await;
        let events_before = api.events(uid).await;

        let (status, second) =
            send_report(&api, plural, uid, &report_body("ctl", 1, &[("Available", "True")], json!({"n": 2}))).await;

        assert_eq!(status, StatusCode::OK, "{second}");
        assert!(resource_version(&second) > resource_version(&first), "{plural}: resourceVersion did not move");
        assert_eq!(resource_version(&read(&api, plural, uid).await), resource_version(&second));
        let events = api.events(uid).await;
        assert_eq!(events.len(), events_before.len() + 1, "{plural}: {events:?}");
        assert_eq!(events.last().map(String::as_str), Some(event));
    }
}

#[tokio::test]
async fn reports_on_controllers_are_refused_with_405() {
    let api = TestApi::start().await;
    register(&api, "ctl", &["Cluster"], &[], true).await;
    let (_, controller) = api.get("/api/v1/controllers/ctl").await;

    let body = report_body("ctl", 1, &[("Available", "True")], json!({}));
    let (by_uid, answer) = send_report(&api, "controllers", &uid(&controller), &body).await;
    let (by_name, _) = send_report(&api, "controllers", "ctl", &body).await;

    assert_eq!(by_uid, StatusCode::METHOD_NOT_ALLOWED, "{answer}");
    assert_eq!(by_name, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_report_on_an_unknown_uid_is_a_404() {
    let api = TestApi::start().await;
    let unknown = Uuid::new_v4().to_string();
    let body = report_body("ctl", 1, &[("Available", "True")], json!({}));

    let (cluster_status, answer) = send_report(&api, "clusters", &unknown, &body).await;
    let (service_status, _) = send_report(&api, "services", &unknown, &body).await;

    assert_eq!(cluster_status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(service_status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------------------------
// aggregation

#[tokio::test]
async fn without_registered_controllers_an_object_is_pending_for_no_controllers_with_all_three_conditions() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let object = read(&api, "clusters", &cluster).await;

    assert_eq!(ready_status(&object), "False");
    assert_eq!(ready_reason(&object), "NoControllers");
    assert_eq!(phase(&object), "Pending");
    for type_ in ["Ready", "Degraded", "Progressing"] {
        let status = condition(&object, type_)["status"].as_str().unwrap_or_default();
        assert!(status == "True" || status == "False", "{type_} is {status:?}");
    }
    assert_eq!(object["status"]["conditions"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn the_required_set_counts_only_required_controllers_that_cover_the_kind_and_the_platform() {
    let api = TestApi::start().await;
    register(&api, "gke", &["Cluster", "Service"], &["gcp"], true).await;
    register(&api, "ports", &["Cluster", "Service"], &[], true).await;
    register(&api, "observer", &["Cluster", "Service"], &[], false).await;
    let local = uid(&api.create_cluster("dev", "local").await);
    let local_service = uid(&api.create_service("web", "dev").await);
    let gcp = uid(&api.create_cluster("prod", "gcp").await);
    let gcp_service = uid(&api.create_service("api", "prod").await);

    for (plural, object) in
        [("clusters", &local), ("services", &local_service), ("clusters", &gcp), ("services", &gcp_service)]
    {
        report_ok(&api, plural, object, "ports", 1, "True").await;
        report_ok(&api, plural, object, "observer", 1, "False").await;
    }

    let local_cluster = read(&api, "clusters", &local).await;
    assert_eq!(ready_status(&local_cluster), "True", "gke or observer blocked a local Cluster: {local_cluster}");
    let local_service = read(&api, "services", &local_service).await;
    assert_eq!(ready_status(&local_service), "True", "{local_service}");
    for (plural, object) in [("clusters", &gcp), ("services", &gcp_service)] {
        let object = read(&api, plural, object).await;
        assert_eq!(ready_status(&object), "False", "{object}");
        assert_eq!(ready_reason(&object), "ControllersPending");
        assert!(ready_message(&object).contains("gke"), "{object}");
    }
    report_ok(&api, "services", &gcp_service, "gke", 1, "True").await;
    assert_eq!(ready_status(&read(&api, "services", &gcp_service).await), "True");
}

#[tokio::test]
async fn an_object_names_who_is_pending_and_who_is_not_available_until_every_required_controller_is_available() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    register(&api, "beta", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    let waiting = read(&api, "clusters", &cluster).await;
    assert_eq!((ready_status(&waiting), ready_reason(&waiting)), ("False", "ControllersPending"));
    assert!(ready_message(&waiting).contains("beta") && !ready_message(&waiting).contains("alpha"), "{waiting}");
    assert_eq!(phase(&waiting), "Progressing");
    assert_eq!(condition(&waiting, "Progressing")["status"], "True");

    report_ok(&api, "clusters", &cluster, "beta", 1, "False").await;
    let refused = read(&api, "clusters", &cluster).await;
    assert_eq!((ready_status(&refused), ready_reason(&refused)), ("False", "ControllersNotAvailable"));
    assert!(ready_message(&refused).contains("beta") && !ready_message(&refused).contains("alpha"), "{refused}");

    report_ok(&api, "clusters", &cluster, "beta", 1, "True").await;
    let ready = read(&api, "clusters", &cluster).await;
    assert_eq!(ready_status(&ready), "True", "{ready}");
    assert_eq!(phase(&ready), "Ready");
    assert_eq!(condition(&ready, "Degraded")["status"], "False");
    assert_eq!(condition(&ready, "Progressing")["status"], "False");
    assert_eq!(ready["status"]["observedGeneration"], 1);
    assert_eq!(ready["status"]["lastReadyGeneration"], 1);
}

#[tokio::test]
async fn a_degraded_report_at_the_current_generation_fails_the_object() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let body = report_body("alpha", 1, &[("Available", "False"), ("Degraded", "True")], json!({}));
    assert_eq!(send_report(&api, "clusters", &cluster, &body).await.0, StatusCode::OK);
    let object = read(&api, "clusters", &cluster).await;

    assert_eq!(condition(&object, "Degraded")["status"], "True", "{object}");
    assert!(condition(&object, "Degraded")["message"].as_str().unwrap_or_default().contains("alpha"));
    assert_eq!(condition(&object, "Progressing")["status"], "False");
    assert_eq!(phase(&object), "Failed");
}

#[tokio::test]
async fn after_a_spec_change_the_object_is_not_ready_until_reports_at_the_new_generation_arrive() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    register(&api, "beta", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    report_ok(&api, "clusters", &cluster, "beta", 1, "True").await;
    assert_eq!(ready_status(&read(&api, "clusters", &cluster).await), "True");

    assert_eq!(generation(&change_spec(&api, &cluster, "r2").await), 2);
    let changed = read(&api, "clusters", &cluster).await;
    assert_eq!((ready_status(&changed), ready_reason(&changed)), ("False", "ControllersPending"), "{changed}");
    assert_eq!(phase(&changed), "Pending");
    assert_eq!(changed["status"]["observedGeneration"], 1);
    assert_eq!(changed["status"]["lastReadyGeneration"], 1);

    report_ok(&api, "clusters", &cluster, "alpha", 2, "True").await;
    let half = read(&api, "clusters", &cluster).await;
    assert_eq!(ready_status(&half), "False");
    assert!(ready_message(&half).contains("beta") && !ready_message(&half).contains("alpha"), "{half}");
    assert_eq!(half["status"]["observedGeneration"], 1);
    assert_eq!(half["status"]["lastReadyGeneration"], 1);
    assert_eq!(phase(&half), "Progressing");

    report_ok(&api, "clusters", &cluster, "beta", 2, "True").await;
    let ready = read(&api, "clusters", &cluster).await;
    assert_eq!(ready_status(&ready), "True", "{ready}");
    assert_eq!(ready["status"]["observedGeneration"], 2);
    assert_eq!(ready["status"]["lastReadyGeneration"], 2);
}

#[tokio::test]
async fn the_last_ready_generation_is_kept_even_when_nobody_read_the_object_while_it_was_ready() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    read(&api, "clusters", &cluster).await;
    let reported = report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    assert_eq!(reported["status"]["lastReadyGeneration"], 1, "{reported}");

    change_spec(&api, &cluster, "r2").await;
    let object = read(&api, "clusters", &cluster).await;

    assert_eq!(object["status"]["lastReadyGeneration"], 1, "generation 1 was Ready: {}", object["status"]);
}

#[tokio::test]
async fn ready_keeps_its_last_transition_time_across_reports_that_do_not_flip_it_and_moves_it_when_it_flips() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    let ready_body = |n: i64| report_body("alpha", 1, &[("Available", "True")], json!({"n": n}));
    assert_eq!(send_report(&api, "clusters", &cluster, &ready_body(1)).await.0, StatusCode::OK);
    let first = read(&api, "clusters", &cluster).await;
    let became_ready = condition(&first, "Ready")["lastTransitionTime"].clone();
    let degraded_since = condition(&first, "Degraded")["lastTransitionTime"].clone();
    assert!(became_ready.is_string(), "{first}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    assert_eq!(send_report(&api, "clusters", &cluster, &ready_body(2)).await.0, StatusCode::OK);
    let still = read(&api, "clusters", &cluster).await;
    assert_eq!(ready_status(&still), "True");
    assert_eq!(condition(&still, "Ready")["lastTransitionTime"], became_ready, "Ready did not flip");

    report_ok(&api, "clusters", &cluster, "alpha", 1, "False").await;
    let flipped = read(&api, "clusters", &cluster).await;
    assert_eq!(ready_status(&flipped), "False");
    let flipped_at = condition(&flipped, "Ready")["lastTransitionTime"].as_str().expect("lastTransitionTime");
    assert!(flipped_at > became_ready.as_str().unwrap_or_default(), "{flipped_at} after {became_ready}");
    assert_eq!(condition(&flipped, "Degraded")["lastTransitionTime"], degraded_since, "Degraded did not flip");
}

#[tokio::test]
async fn registering_a_new_required_controller_makes_a_ready_object_not_ready_on_the_next_read() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    assert_eq!(ready_status(&read(&api, "clusters", &cluster).await), "True");

    register(&api, "beta", &["Cluster"], &[], true).await;
    let object = read(&api, "clusters", &cluster).await;

    assert_eq!((ready_status(&object), ready_reason(&object)), ("False", "ControllersPending"), "{object}");
    assert!(ready_message(&object).contains("beta"), "{object}");
}

// ---------------------------------------------------------------------------------------------------------------
// laziness and compare-and-set

#[tokio::test]
async fn a_report_leaves_the_cached_aggregate_stale_and_the_next_read_caches_it_exactly_once() {
    let api = TestApi::start().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    read(&api, "clusters", &cluster).await;
    assert!(!cache(&api, &cluster).await.stale, "a read cached the aggregate");

    report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    assert!(cache(&api, &cluster).await.stale, "the report marked the aggregate stale");

    let object = read(&api, "clusters", &cluster).await;
    let cached = cache(&api, &cluster).await;
    assert!(!cached.stale && cached.current_epoch, "the read cached the aggregate: {cached:?}");
    assert_eq!(cached.status.as_ref(), Some(&object["status"]));
    assert_eq!(ready_status(&object), "True");

    let again = read(&api, "clusters", &cluster).await;
    let untouched = cache(&api, &cluster).await;
    assert_eq!(untouched.xmin, cached.xmin, "a clean read rewrote the row");
    assert!(!untouched.stale);
    assert_eq!(again["status"], object["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reports_and_reads_lose_no_report_and_leave_a_clean_cache_that_agrees() {
    const CONTROLLERS: usize = 8;
    const READERS: usize = 8;
    let api = TestApi::start().await;
    let names: Vec<String> = (0..CONTROLLERS).map(|index| format!("racer-{index}")).collect();
    for name in &names {
        register(&api, name, &["Cluster"], &[], true).await;
    }

    let mut partial_reads = 0;
    for round in 0..4 {
        let cluster = uid(&api.create_cluster(&format!("race-{round}"), "local").await);
        let object_url = api.url(&format!("/api/v1/clusters/{cluster}"));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (client, url, done) = (api.client.clone(), object_url.clone(), done.clone());
                tokio::spawn(async move {
                    // reads that landed between the first report and the last
                    let mut partial = 0;
                    while !done.load(Ordering::Acquire) {
                        let response = client.get(&url).send().await.expect("GET");
                        assert_eq!(response.status(), StatusCode::OK);
                        let object: Value = response.json().await.expect("object");
                        let seen = object["status"]["controllers"].as_array().map_or(0, Vec::len);
                        partial += usize::from(seen > 0 && ready_status(&object) != "True");
                    }
                    partial
                })
            })
            .collect();
        let reporters: Vec<_> = names
            .iter()
            .map(|name| {
                let (client, url) = (api.client.clone(), format!("{object_url}/status"));
                let steps = [
                    report_body(name, 1, &[("Available", "False")], json!({"step": 0})),
                    report_body(name, 1, &[("Available", "True")], json!({"step": 1})),
                ];
                tokio::spawn(async move {
                    for step in steps {
                        let response = client.put(&url).json(&step).send().await.expect("PUT");
                        let status = response.status();
                        assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap_or_default());
                    }
                })
            })
            .collect();
        for reporter in reporters {
            reporter.await.expect("reporter");
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            partial_reads += reader.await.expect("reader");
        }

        let object = read(&api, "clusters", &cluster).await;
        let reports = object["status"]["controllers"].as_array().expect("status.controllers");
        let mut reported: Vec<&str> = reports.iter().filter_map(|report| report["controller"].as_str()).collect();
        reported.sort_unstable();
        assert_eq!(reported, names.iter().map(String::as_str).collect::<Vec<_>>(), "round {round}");
        assert!(reports.iter().all(|report| report["data"] == json!({"step": 1})), "round {round}: {object}");
        assert_eq!(ready_status(&object), "True", "round {round}: {object}");
        let cached = cache(&api, &cluster).await;
        assert!(!cached.stale && cached.current_epoch, "round {round}: {cached:?}");
        assert_eq!(cached.status.as_ref(), Some(&object["status"]), "round {round}");
    }
    assert!(partial_reads > 0, "no read landed between the reports, so nothing raced");
}

// ---------------------------------------------------------------------------------------------------------------
// schedule rows

#[tokio::test]
async fn a_new_object_is_scheduled_for_attention_one_attention_interval_from_now() {
    let api = start_with_short_cadences().await;

    let cluster = uid(&api.create_cluster("dev", "local").await);

    assert_scheduled(&api, &cluster, true, FAST).await;
}

#[tokio::test]
async fn a_ready_report_moves_the_schedule_to_the_stable_cadence_and_a_spec_change_moves_it_back() {
    let api = start_with_short_cadences().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    report_ok(&api, "clusters", &cluster, "alpha", 1, "True").await;
    assert_scheduled(&api, &cluster, false, SLOW).await;

    change_spec(&api, &cluster, "r2").await;
    assert_scheduled(&api, &cluster, true, FAST).await;
}

#[tokio::test]
async fn a_degraded_object_stays_on_the_attention_cadence_even_when_available() {
    let api = start_with_short_cadences().await;
    register(&api, "alpha", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let body = report_body("alpha", 1, &[("Available", "True"), ("Degraded", "True")], json!({}));
    let (status, object) = send_report(&api, "clusters", &cluster, &body).await;

    assert_eq!(status, StatusCode::OK, "{object}");
    assert_eq!(condition(&object, "Degraded")["status"], "True");
    assert_scheduled(&api, &cluster, true, FAST).await;
}

#[tokio::test]
async fn the_schedule_row_disappears_when_the_object_is_removed() {
    let api = start_with_short_cadences().await;
    let plain = uid(&api.create_cluster("plain", "local").await);
    let manifest = json!({"metadata": {"name": "held", "finalizers": ["cls.dev/test"]},
        "spec": {"platform": {"type": "local"}}});
    let (status, held) = api.post("/api/v1/clusters", &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let held = uid(&held);

    assert_eq!(api.delete(&format!("/api/v1/clusters/{plain}")).await.0, StatusCode::OK);
    assert_eq!(api.delete(&format!("/api/v1/clusters/{held}")).await.0, StatusCode::OK);
    assert_eq!(schedule(&api, &plain).await, None, "removed at once");
    assert_scheduled(&api, &held, true, FAST).await;

    let release = json!({"metadata": {"finalizers": []}});
    assert_eq!(api.merge(&format!("/api/v1/clusters/{held}"), &release).await.0, StatusCode::OK);
    assert_eq!(schedule(&api, &held).await, None, "removed once the finalizer was gone");
}

/// Reports keep a few connections out of the pool; when the database drops them (as when it restarts), the next
/// reports succeed on fresh connections and are stored.
#[tokio::test]
async fn reports_succeed_after_the_database_dropped_every_connection_they_kept() {
    let api = TestApi::start().await;
    register(&api, "infra", &["Cluster"], &[], true).await;
    let mut uids = Vec::new();
    for index in 0..4 {
        uids.push(uid(&api.create_cluster(&format!("kept-{index}"), "gcp").await));
    }
    let api = &api;
    let report = |round: i64| report_body("infra", 1, &[("Available", "True")], json!({ "round": round }));
    // reports at once, so that several connections are kept
    let body = report(1);
    let first = futures::future::join_all(uids.iter().map(|uid| send_report(api, "clusters", uid, &body)));
    let first: Vec<(StatusCode, Value)> = first.await;
    assert!(first.iter().all(|(status, _)| *status == StatusCode::OK), "{first:?}");

    api.drop_database_connections().await;

    for round in 2..5 {
        for uid in &uids {
            let (status, object) = send_report(api, "clusters", uid, &report(round)).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {object}");
            let stored = stored_report(api, uid, "infra").await.and_then(|(_, data)| data);
            assert_eq!(stored, Some(json!({ "round": round })), "round {round}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// reports that start from the object as this process's last report left it

/// The watch log's copy of the object at `resource_version`.
async fn logged_object(api: &TestApi, resource_version: i64) -> Value {
    let (object,): (Value,) = sqlx::query_as("select object from changes where resource_version = $1")
        .bind(resource_version)
        .fetch_one(&api.db.pool)
        .await
        .expect("the change is logged");
    object
}

/// A process keeps the object as its last report left it and starts the next report from there; whatever another
/// process changed meanwhile (the labels, the registry, a newer report) is neither lost nor overwritten: the report
/// answers, logs and decides from the object as it is.
#[tokio::test]
async fn a_report_after_another_replica_changed_the_object_starts_from_the_object_as_it_is() {
    let api = TestApi::start().await;
    let other = api.replica().await;
    register(&api, "infra", &["Cluster"], &[], true).await;
    let cluster = uid(&api.create_cluster("shared", "gcp").await);
    let report = |round: i64, generation: i64| {
        report_body("infra", generation, &[("Available", "True")], json!({ "round": round }))
    };
    let (status, first) = send_report(&api, "clusters", &cluster, &report(1, 1)).await;
    assert_eq!((status, ready_status(&first)), (StatusCode::OK, "True"), "{first}");

    // labels changed through the other process
    let labels = json!({"metadata": {"labels": {"team": "blue"}}});
    assert_eq!(other.merge(&format!("/api/v1/clusters/{cluster}"), &labels).await.0, StatusCode::OK);
    let (status, object) = send_report(&api, "clusters", &cluster, &report(2, 1)).await;
    assert_eq!(status, StatusCode::OK, "{object}");
    assert_eq!(object["metadata"]["labels"]["team"], "blue", "{object}");
    assert_eq!(logged_object(&api, resource_version(&object)).await["metadata"]["labels"]["team"], "blue");

    // a required controller registered through the other process: the object is no longer Ready
    register(&other, "network", &["Cluster"], &[], true).await;
    let (status, object) = send_report(&api, "clusters", &cluster, &report(3, 1)).await;
    assert_eq!(status, StatusCode::OK, "{object}");
    assert_eq!((ready_status(&object), ready_reason(&object)), ("False", "ControllersPending"), "{object}");
    assert_eq!(ready_status(&logged_object(&api, resource_version(&object)).await), "False");

    // a newer report stored through the other process: an older one here is refused and stores nothing
    change_spec(&other, &cluster, "europe-west1").await;
    let (status, object) = send_report(&other, "clusters", &cluster, &report(4, 2)).await;
    assert_eq!(status, StatusCode::OK, "{object}");
    let (status, refused) = send_report(&api, "clusters", &cluster, &report(5, 1)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(stored_report(&api, &cluster, "infra").await, Some((2, Some(json!({ "round": 4 })))));
}
