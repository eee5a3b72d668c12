//! The outbox: which changes write which event rows (in the same transaction as the change), through the thin REST
//! API against a real PostgreSQL.

mod common;

use common::{TestApi, resource_version, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// One outbox row: (event_type, kind, namespace, name, generation, platform).
type Row = (String, String, String, String, i64, String);

/// The outbox rows of `uid`, in outbox order.
async fn rows(api: &TestApi, uid: &str) -> Vec<Row> {
    let uid: Uuid = uid.parse().expect("uid");
    sqlx::query_as(
        "select event_type, kind, namespace, name, generation, platform from outbox where uid = $1 order by id",
    )
    .bind(uid)
    .fetch_all(&api.db.pool)
    .await
    .expect("outbox read")
}

async fn total(api: &TestApi) -> i64 {
    sqlx::query_scalar("select count(*) from outbox").fetch_one(&api.db.pool).await.expect("outbox count")
}

fn row(event: &str, kind: &str, name: &str, generation: i64, platform: &str) -> Row {
    (event.into(), kind.into(), "default".into(), name.into(), generation, platform.into())
}

fn path(plural: &str, uid: &str) -> String {
    format!("/api/v1/{plural}/{uid}")
}

/// Creates an object with finalizers and returns its uid (panics unless 201).
async fn create_held(api: &TestApi, plural: &str, manifest: Value) -> String {
    let (status, body) = api.post(&format!("/api/v1/{plural}"), &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    uid(&body)
}

#[tokio::test]
async fn creating_a_cluster_writes_exactly_one_created_event() {
    let api = TestApi::start().await;

    let cluster = uid(&api.create_cluster("dev", "local").await);

    assert_eq!(rows(&api, &cluster).await, vec![row("cluster.created", "Cluster", "dev", 1, "local")]);
    assert_eq!(total(&api).await, 1);
}

#[tokio::test]
async fn a_spec_change_writes_an_updated_event_at_the_new_generation() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let (status, body) = api.merge(&path("clusters", &cluster), &json!({"spec": {"release": {"version": "2"}}})).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        rows(&api, &cluster).await,
        vec![
            row("cluster.created", "Cluster", "dev", 1, "local"),
            row("cluster.updated", "Cluster", "dev", 2, "local")
        ]
    );
}

#[tokio::test]
async fn a_label_only_change_and_a_no_op_put_write_no_event() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let (labelled, body) =
        api.merge(&path("clusters", &cluster), &json!({"metadata": {"labels": {"team": "a"}}})).await;
    assert_eq!(labelled, StatusCode::OK, "{body}");
    assert_eq!(body["metadata"]["labels"]["team"], "a");
    let (unchanged, again) = api.put(&path("clusters", &cluster), &body).await;
    assert_eq!(unchanged, StatusCode::OK, "{again}");
    assert_eq!(resource_version(&again), resource_version(&body), "the PUT changed nothing");

    assert_eq!(api.events(&cluster).await, vec!["cluster.created"]);
}

#[tokio::test]
async fn deleting_without_finalizers_writes_deleting_then_deleted() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    let (status, body) = api.delete(&path("clusters", &cluster)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        rows(&api, &cluster).await,
        vec![
            row("cluster.created", "Cluster", "dev", 1, "local"),
            row("cluster.deleting", "Cluster", "dev", 2, "local"),
            row("cluster.deleted", "Cluster", "dev", 2, "local"),
        ]
    );
}

#[tokio::test]
async fn deleting_with_a_finalizer_writes_deleting_and_writes_deleted_only_when_the_finalizer_is_removed() {
    let api = TestApi::start().await;
    let manifest = json!({"metadata": {"name": "dev", "finalizers": ["cls.dev/test"]},
        "spec": {"platform": {"type": "local"}}});
    let cluster = create_held(&api, "clusters", manifest).await;

    let (status, body) = api.delete(&path("clusters", &cluster)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.events(&cluster).await, vec!["cluster.created", "cluster.deleting"]);

    let (status, body) = api.merge(&path("clusters", &cluster), &json!({"metadata": {"finalizers": []}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.events(&cluster).await, vec!["cluster.created", "cluster.deleting", "cluster.deleted"]);
    assert_eq!(api.get(&path("clusters", &cluster)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rejected_writes_and_rejected_reports_write_no_event() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "local").await;
    let cluster = uid(&created);
    let before = total(&api).await;

    let immutable = json!({"metadata": {"name": "dev"}, "spec": {"platform": {"type": "gcp"}}});
    let (status, body) = api.put(&path("clusters", &cluster), &immutable).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let invalid = json!({"metadata": {"name": "Not_A_Label"}, "spec": {"platform": {"type": "local"}}});
    assert_eq!(api.post("/api/v1/clusters", &invalid).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let duplicate = json!({"metadata": {"name": "dev"}, "spec": {"platform": {"type": "local"}}});
    assert_eq!(api.post("/api/v1/clusters", &duplicate).await.0, StatusCode::CONFLICT);
    api.merge(&path("clusters", &cluster), &json!({"metadata": {"labels": {"moved": "on"}}})).await;
    let stale = json!({"metadata": {"name": "dev", "resourceVersion": resource_version(&created).to_string()},
        "spec": {"platform": {"type": "local", "region": "elsewhere"}}});
    let (status, body) = api.put(&path("clusters", &cluster), &stale).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api.report("clusters", &cluster, "ctl", 5, true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(total(&api).await, before, "{:?}", api.events(&cluster).await);
}

#[tokio::test]
async fn deleting_a_cluster_cascades_deleting_and_deleted_events_to_its_services() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    let services = [uid(&api.create_service("web", "dev").await), uid(&api.create_service("db", "dev").await)];

    let (status, body) = api.delete(&path("clusters", &cluster)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    for service in &services {
        assert_eq!(api.events(service).await, vec!["service.created", "service.deleting", "service.deleted"]);
    }
    assert_eq!(api.events(&cluster).await, vec!["cluster.created", "cluster.deleting", "cluster.deleted"]);
}

#[tokio::test]
async fn a_deleting_cluster_is_deleted_only_after_its_held_service_is() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);
    let manifest = json!({"metadata": {"name": "web", "finalizers": ["cls.dev/test"]},
        "spec": {"clusterRef": {"name": "dev"}, "run": {"command": ["sleep", "60"]}}});
    let service = create_held(&api, "services", manifest).await;

    assert_eq!(api.delete(&path("clusters", &cluster)).await.0, StatusCode::OK);
    assert_eq!(api.events(&service).await, vec!["service.created", "service.deleting"]);
    assert_eq!(api.events(&cluster).await, vec!["cluster.created", "cluster.deleting"]);

    let (status, body) = api.merge(&path("services", &service), &json!({"metadata": {"finalizers": []}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.events(&service).await, vec!["service.created", "service.deleting", "service.deleted"]);
    assert_eq!(api.events(&cluster).await, vec!["cluster.created", "cluster.deleting", "cluster.deleted"]);
}

#[tokio::test]
async fn the_events_of_one_object_are_written_in_the_order_of_its_changes() {
    let api = TestApi::start().await;
    let cluster = uid(&api.create_cluster("dev", "local").await);

    api.merge(&path("clusters", &cluster), &json!({"spec": {"release": {"version": "2"}}})).await;
    api.report("clusters", &cluster, "ctl", 2, true).await;
    api.merge(&path("clusters", &cluster), &json!({"spec": {"release": {"version": "3"}}})).await;
    api.report("clusters", &cluster, "ctl", 3, false).await;
    api.delete(&path("clusters", &cluster)).await;

    let expected = ["created", "updated", "status", "updated", "status", "deleting", "deleted"];
    let expected: Vec<String> = expected.iter().map(|event| format!("cluster.{event}")).collect();
    assert_eq!(api.events(&cluster).await, expected);
    let generations: Vec<i64> = rows(&api, &cluster).await.into_iter().map(|row| row.4).collect();
    assert_eq!(generations, vec![1, 2, 2, 3, 3, 4, 4]);
}

#[tokio::test]
async fn service_events_carry_the_platform_of_their_cluster() {
    let api = TestApi::start().await;
    api.create_cluster("prod", "gcp").await;

    let service = uid(&api.create_service("api", "prod").await);
    api.report("services", &service, "ctl", 1, true).await;

    assert_eq!(
        rows(&api, &service).await,
        vec![row("service.created", "Service", "api", 1, "gcp"), row("service.status", "Service", "api", 1, "gcp")]
    );
}

#[tokio::test]
async fn controllers_write_no_outbox_rows_when_registered_heartbeating_changed_or_deleted() {
    let api = TestApi::start().await;

    api.register("ctl", &["Cluster"], &[]).await;
    api.register("ctl", &["Cluster"], &[]).await;
    api.register("ctl", &["Cluster", "Service"], &["local"]).await;
    let (status, body) = api.delete("/api/v1/controllers/ctl").await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: Vec<String> = sqlx::query_scalar("select event_type from outbox order by id")
        .fetch_all(&api.db.pool)
        .await
        .expect("outbox read");
    assert_eq!(rows, Vec::<String>::new());
}
