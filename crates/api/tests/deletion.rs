//! The end of an object's life through the thin REST API, against a real PostgreSQL: DELETE, finalizers, the
//! Cluster-to-Service cascade and `?force=true`.

mod common;

use common::{TestApi, generation, resource_version, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEEP: &str = "example.com/keep";

fn cluster_path(object: &Value) -> String {
    format!("/api/v1/clusters/{}", uid(object))
}

fn service_path(object: &Value) -> String {
    format!("/api/v1/services/{}", uid(object))
}

/// Creates a Cluster holding `finalizers`.
async fn cluster_with_finalizers(api: &TestApi, name: &str, finalizers: &[&str]) -> Value {
    let manifest =
        json!({"metadata": {"name": name, "finalizers": finalizers}, "spec": {"platform": {"type": "local"}}});
    let (status, body) = api.post("/api/v1/clusters", &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Creates a Service of `cluster` holding `finalizers`.
async fn service_with_finalizers(api: &TestApi, name: &str, cluster: &str, finalizers: &[&str]) -> Value {
    let manifest = json!({"metadata": {"name": name, "finalizers": finalizers},
        "spec": {"clusterRef": {"name": cluster}, "run": {"command": ["sleep", "60"]}}});
    let (status, body) = api.post("/api/v1/services", &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Asserts that GET `path` answers 404 with a NotFound `Status`.
async fn assert_gone(api: &TestApi, path: &str) {
    let (status, body) = api.get(path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{path} still there: {body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
}

fn deletion_timestamp(object: &Value) -> &Value {
    &object["metadata"]["deletionTimestamp"]
}

#[tokio::test]
async fn delete_without_finalizers_removes_the_object_and_answers_200_with_it() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;

    let (status, deleted) = api.delete(&cluster_path(&created)).await;

    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["kind"], "Cluster");
    assert_eq!(deleted["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(deleted["metadata"]["name"], "dev");
    assert_gone(&api, &cluster_path(&created)).await;
}

#[tokio::test]
async fn delete_with_a_finalizer_keeps_the_object_deleting_and_a_second_delete_changes_nothing() {
    let api = TestApi::start().await;
    let created = cluster_with_finalizers(&api, "dev", &[KEEP]).await;
    let path = cluster_path(&created);

    let (status, deleted) = api.delete(&path).await;
    let (_, first) = api.get(&path).await;
    let (again_status, _) = api.delete(&path).await;
    let (_, second) = api.get(&path).await;

    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert!(deletion_timestamp(&deleted).is_string(), "{deleted}");
    assert!(deletion_timestamp(&first).is_string(), "{first}");
    assert_eq!(first["metadata"]["finalizers"], json!([KEEP]));
    assert_eq!(generation(&first), 2);
    assert!(resource_version(&first) > resource_version(&created));
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(deletion_timestamp(&second), deletion_timestamp(&first));
    assert_eq!(generation(&second), 2);
    assert_eq!(resource_version(&second), resource_version(&first));
}

#[tokio::test]
async fn removing_the_last_finalizer_by_merge_patch_removes_a_deleting_object() {
    let api = TestApi::start().await;
    let created = cluster_with_finalizers(&api, "dev", &[KEEP]).await;
    let path = cluster_path(&created);
    api.delete(&path).await;

    let (status, body) = api.merge(&path, &json!({"metadata": {"finalizers": null}})).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_gone(&api, &path).await;
}

#[tokio::test]
async fn adding_a_new_finalizer_to_a_deleting_object_gets_422() {
    let api = TestApi::start().await;
    let created = cluster_with_finalizers(&api, "dev", &[KEEP]).await;
    let path = cluster_path(&created);
    api.delete(&path).await;
    let (_, deleting) = api.get(&path).await;

    let patch = json!({"metadata": {"finalizers": [KEEP, "example.com/late"]}});
    let (status, body) = api.merge(&path, &patch).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.finalizers[1]", "{body}");
    let (_, after) = api.get(&path).await;
    assert_eq!(after["metadata"]["finalizers"], json!([KEEP]));
    assert_eq!(resource_version(&after), resource_version(&deleting));
}

#[tokio::test]
async fn deleting_a_cluster_cascades_to_its_services_and_waits_for_the_last_finalizer() {
    let api = TestApi::start().await;
    let cluster = api.create_cluster("dev", "local").await;
    let held = service_with_finalizers(&api, "web", "dev", &["cls.dev/local-process"]).await;
    let free = service_with_finalizers(&api, "db", "dev", &[]).await;
    api.create_cluster("prod", "local").await;
    let bystander = api.create_service("api", "prod").await;

    let (status, body) = api.delete(&cluster_path(&cluster)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_gone(&api, &service_path(&free)).await;
    let (_, held_now) = api.get(&service_path(&held)).await;
    assert!(deletion_timestamp(&held_now).is_string(), "{held_now}");
    let (cluster_status, cluster_now) = api.get(&cluster_path(&cluster)).await;
    assert_eq!(cluster_status, StatusCode::OK, "the Cluster must wait for its Services: {cluster_now}");
    assert!(deletion_timestamp(&cluster_now).is_string(), "{cluster_now}");
    let (_, bystander_now) = api.get(&service_path(&bystander)).await;
    assert!(bystander_now["metadata"].get("deletionTimestamp").is_none(), "{bystander_now}");

    let (release_status, released) = api.merge(&service_path(&held), &json!({"metadata": {"finalizers": null}})).await;

    assert_eq!(release_status, StatusCode::OK, "{released}");
    assert_gone(&api, &service_path(&held)).await;
    assert_gone(&api, &cluster_path(&cluster)).await;
}

#[tokio::test]
async fn force_delete_removes_an_object_with_finalizers_at_once() {
    let api = TestApi::start().await;
    let cluster = cluster_with_finalizers(&api, "dev", &[KEEP]).await;
    let service = service_with_finalizers(&api, "web", "dev", &[KEEP]).await;

    let (service_status, _) = api.delete(&format!("{}?force=true", service_path(&service))).await;
    let (cluster_status, _) = api.delete(&format!("{}?force=true", cluster_path(&cluster))).await;

    assert_eq!(service_status, StatusCode::OK);
    assert_eq!(cluster_status, StatusCode::OK);
    assert_gone(&api, &service_path(&service)).await;
    assert_gone(&api, &cluster_path(&cluster)).await;
}

#[tokio::test]
async fn a_service_cannot_be_created_for_a_cluster_that_is_being_deleted() {
    let api = TestApi::start().await;
    let cluster = cluster_with_finalizers(&api, "dev", &[KEEP]).await;
    api.delete(&cluster_path(&cluster)).await;

    let manifest = json!({"metadata": {"name": "web"}, "spec": {"clusterRef": {"name": "dev"}, "image": "nginx"}});
    let (status, body) = api.post("/api/v1/services", &manifest).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.clusterRef.name", "{body}");
    assert_eq!(body["details"]["causes"].as_array().map(Vec::len), Some(1), "{body}");
}
