//! Create, read, list, replace, patch and delete through the thin REST API, against a real PostgreSQL.

mod common;

use common::{TestApi, generation, resource_version, uid};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_created_cluster_can_be_read_back_by_uid() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;
    assert_eq!(generation(&created), 1);
    let (status, read) = api.get(&format!("/api/v1/clusters/{}", uid(&created))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["metadata"]["name"], "dev");
    assert_eq!(read["spec"], json!({"platform": {"type": "gcp"}}));
    assert_eq!(resource_version(&read), resource_version(&created));
}
