//! Shared test fixtures: a real API (the axum router on a loopback port) over a database of its own on the
//! testkit's throwaway PostgreSQL, and a small HTTP client for it.
#![allow(dead_code)]

use cls_api::store::MIGRATOR;
use cls_api::{AppState, ScheduleConfig, Store};
use cls_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct TestApi {
    pub base: String,
    /// Sends the admin `token` with every request.
    pub client: reqwest::Client,
    /// An admin token.
    pub token: String,
    pub db: TestDb,
    pub store: Store,
}

/// Stores a new token for `role` (limited to `namespaces` when given) and answers its secret.
pub async fn token(store: &Store, name: &str, role: &str, namespaces: Option<&[&str]>) -> String {
    let secret = cls_api::auth::generate_token();
    let namespaces: Option<Vec<String>> = namespaces.map(|list| list.iter().map(|n| n.to_string()).collect());
    store
        .put_token(name, &cls_api::auth::hash_token(&secret), role, namespaces.as_deref())
        .await
        .expect("the token is stored");
    secret
}

/// A client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a header value"));
    reqwest::Client::builder().default_headers(headers).build().expect("a client")
}

impl TestApi {
    pub async fn start() -> TestApi {
        TestApi::start_with(ScheduleConfig::default()).await
    }

    pub async fn start_with(schedule: ScheduleConfig) -> TestApi {
        let db = TestDb::new(&MIGRATOR).await;
        let store = Store::new(db.pool.clone(), schedule);
        TestApi::start_with_state(db, AppState::new(store)).await
    }

    /// Serves `state` (whose store is on `db`) with an admin token.
    pub async fn start_with_state(db: TestDb, state: AppState) -> TestApi {
        TestApi::serve(db, state, "test-admin").await
    }

    /// Another API process over the same database: its own pool, store, caches and change feed, on its own port,
    /// with an admin token of its own.
    pub async fn replica(&self) -> TestApi {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect_with(cls_api::store::connect_options(&self.db.url).expect("a database URL"))
            .await
            .expect("the replica connects");
        let db = TestDb { url: self.db.url.clone(), name: self.db.name.clone(), pool };
        let store = Store::new(db.pool.clone(), ScheduleConfig::default());
        TestApi::serve(db, AppState::new(store), "test-admin-replica").await
    }

    async fn serve(db: TestDb, state: AppState, token_name: &str) -> TestApi {
        let store = state.store.clone();
        tokio::spawn(state.feed.clone().run(state.store.clone(), tokio_util::sync::CancellationToken::new()));
        let app = cls_api::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .expect("serve")
        });
        let token = token(&store, token_name, "admin", None).await;
        TestApi { base, client: client_with(&token), token, db, store }
    }

    /// Terminates every other backend of the test database, as a server restart does to the API's connections;
    /// asserts that the API held some.
    pub async fn drop_database_connections(&self) {
        let terminated: Vec<(bool,)> = sqlx::query_as(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("backends terminated");
        assert!(!terminated.is_empty(), "the API held connections");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).header("content-type", content_type).body(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.put(self.url(path)).json(body)).await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: &Value) -> (StatusCode, Value) {
        let request = self.client.patch(self.url(path)).header("content-type", content_type).body(body.to_string());
        self.send(request).await
    }

    pub async fn merge(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.patch(path, "application/merge-patch+json", body).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Creates a Cluster and returns it (panics unless 201).
    pub async fn create_cluster(&self, name: &str, platform: &str) -> Value {
        let (status, body) = self
            .post("/api/v1/clusters", &json!({"metadata": {"name": name}, "spec": {"platform": {"type": platform}}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Creates a Service of `cluster` and returns it (panics unless 201).
    pub async fn create_service(&self, name: &str, cluster: &str) -> Value {
        let manifest = json!({"metadata": {"name": name},
            "spec": {"clusterRef": {"name": cluster}, "run": {"command": ["sleep", "60"]}}});
        let (status, body) = self.post("/api/v1/services", &manifest).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Registers a controller (panics unless 200/201).
    pub async fn register(&self, name: &str, kinds: &[&str], platforms: &[&str]) -> Value {
        let (status, body) = self
            .put(&format!("/api/v1/controllers/{name}"), &json!({"spec": {"kinds": kinds, "platforms": platforms}}))
            .await;
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status} {body}");
        body
    }

    /// Sends a report with `Available` (and optionally `Degraded`).
    pub async fn report(
        &self,
        plural: &str,
        uid: &str,
        controller: &str,
        generation: i64,
        available: bool,
    ) -> (StatusCode, Value) {
        let status = if available { "True" } else { "False" };
        let report = json!({"controller": controller, "observedGeneration": generation,
            "conditions": [{"type": "Available", "status": status, "reason": "Test"}]});
        self.put(&format!("/api/v1/{plural}/{uid}/status"), &report).await
    }

    /// Event types in the outbox for `uid`, in outbox order.
    pub async fn events(&self, uid: &str) -> Vec<String> {
        let uid: uuid::Uuid = uid.parse().expect("uid");
        sqlx::query_scalar("select event_type from outbox where uid = $1 order by id")
            .bind(uid)
            .fetch_all(&self.db.pool)
            .await
            .expect("outbox read")
    }
}

pub fn uid(object: &Value) -> String {
    object["metadata"]["uid"].as_str().expect("uid").to_owned()
}

pub fn resource_version(object: &Value) -> i64 {
    object["metadata"]["resourceVersion"].as_str().expect("resourceVersion").parse().expect("numeric resourceVersion")
}

pub fn generation(object: &Value) -> i64 {
    object["metadata"]["generation"].as_i64().expect("generation")
}

/// The status of condition `type_` in the aggregate.
pub fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {object}"))
}
