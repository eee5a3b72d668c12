//! The real `cls api`'s operational surface: `/metrics` answers while the database is down, and a request's
//! `X-Request-Id` comes back in the response and in the span of its log lines.

mod common;

use std::time::{Duration, Instant};

use common::Cls;
use serde_json::Value;

/// `cls api` against a closed port: it serves, and never becomes ready.
fn api_with_the_database_down() -> Cls {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{closed_port}/none");
    Cls::start(&["api"], &[("DATABASE_URL", &url), ("RUST_LOG", "info")])
}

#[tokio::test]
async fn the_request_id_is_echoed_and_carried_by_the_request_log_span() {
    let api = api_with_the_database_down();
    let client = reqwest::Client::new();

    let response =
        client.get(format!("{}/api/v1/clusters", api.base)).header("x-request-id", "trace-me-42").send().await.unwrap();
    let metrics = client.get(format!("{}/metrics", api.base)).send().await.unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    assert_eq!(metrics.status(), 200, "/metrics answers while the database is down");
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"cls_api_http_requests_total{method="GET",route="/api/v1/{plural}",code="503"} 1"#),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = api.logs.recv_timeout(remaining).expect("a log line of the failed request");
        let Ok(log) = serde_json::from_str::<Value>(&line) else { continue };
        if log["span"]["request_id"] == "trace-me-42" {
            assert_eq!(log["span"]["route"], "/api/v1/{plural}");
            assert_eq!(log["fields"]["code"], 503);
            break;
        }
    }
}
