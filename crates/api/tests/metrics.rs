//! `/metrics` and the request id against the real router: requests counted by route template and code, the pool
//! gauges, watch streams counted while open, and `X-Request-Id` kept or generated and echoed.

mod common;

use std::time::{Duration, Instant};

use common::TestApi;
use serde_json::json;

async fn metrics(api: &TestApi) -> String {
    let response = api.client.get(api.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    response.text().await.expect("body")
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_for_watchers(api: &TestApi, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(api).await;
        if sample(&text, "cls_api_watchers") == Some(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "cls_api_watchers never became {expected}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A watch response (200), once the change feed runs (503 before).
async fn open_watch(api: &TestApi, path: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = api.client.get(api.url(path)).send().await.expect("watch request");
        if response.status() == 200 {
            return response;
        }
        assert!(Instant::now() < deadline, "watch answered {}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_code() {
    let api = TestApi::start().await;
    let cluster = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "counted"},
                         "spec": {"platform": {"type": "local"}}});
    let (status, created) = api.post("/api/v1/clusters", &cluster).await;
    assert_eq!(status, 201);
    let uid = created["metadata"]["uid"].as_str().unwrap();
    api.get(&format!("/api/v1/clusters/{uid}")).await;
    api.get(&format!("/api/v1/clusters/{}", uuid::Uuid::new_v4())).await;
    api.get("/no/such/path").await;

    let text = metrics(&api).await;

    let series = |route: &str, method: &str, code: u16| {
        format!(r#"cls_api_http_requests_total{{method="{method}",route="{route}",code="{code}"}}"#)
    };
    assert_eq!(sample(&text, &series("/api/v1/{plural}", "POST", 201)), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("/api/v1/{plural}/{id}", "GET", 200)), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("/api/v1/{plural}/{id}", "GET", 404)), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("unmatched", "GET", 404)), Some(1.0), "{text}");
    assert!(!text.contains(uid), "object uids never become label values");
    assert!(
        text.contains(r#"cls_api_http_request_duration_seconds_count{method="GET",route="/api/v1/{plural}/{id}"} 2"#),
        "{text}"
    );
    assert!(sample(&text, "cls_api_db_pool_connections").is_some_and(|open| open >= 1.0), "{text}");
    assert!(sample(&text, "cls_api_db_pool_idle_connections").is_some(), "{text}");
}

#[tokio::test]
async fn open_watch_streams_are_counted_until_they_close() {
    let api = TestApi::start().await;
    wait_for_watchers(&api, 0.0).await;

    let first = open_watch(&api, "/apis/cls.dev/v1alpha1/clusters?watch=true").await;
    let second = open_watch(&api, "/apis/cls.dev/v1alpha1/services?watch=1").await;
    wait_for_watchers(&api, 2.0).await;

    drop(first);
    wait_for_watchers(&api, 1.0).await;
    let ended = open_watch(&api, "/apis/cls.dev/v1alpha1/clusters?watch=true&timeoutSeconds=0").await;
    ended.text().await.unwrap();
    wait_for_watchers(&api, 1.0).await;
    drop(second);
    wait_for_watchers(&api, 0.0).await;
}

#[tokio::test]
async fn a_request_id_is_echoed_or_generated() {
    let api = TestApi::start().await;

    let given = api.client.get(api.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    let generated = api.client.get(api.url("/api/v1/clusters")).send().await.unwrap();
    let refused = api.client.get(api.url("/healthz")).header("x-request-id", "has space").send().await.unwrap();

    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "a generated id is a UUID: {id}");
    assert_ne!(refused.headers()["x-request-id"], "has space");
}
