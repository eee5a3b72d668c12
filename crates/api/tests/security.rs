//! Authentication, authorization, audit and rate limits against the real API on a real database: two editors in two
//! namespaces over every endpoint and verb of both APIs (no read or write crosses the boundary), controller tokens
//! (their own report and finalizer only), gateway headers (trusted only from configured addresses), OIDC JWTs, the
//! audit log (exactly one record per mutating request, denied ones included) and per-identity rate limits.

mod common;

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::Duration;

use cls_api::auth::{AuthConfig, GatewayConfig, JwksSource, OidcConfig};
use cls_api::http::guard::Limits;
use cls_api::store::MIGRATOR;
use cls_api::{AppState, ScheduleConfig, Store};
use cls_testkit::TestDb;
use common::{TestApi, client_with, resource_version, token, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KUBE: &str = "/apis/cls.dev/v1alpha1";

/// One caller of the API.
struct Caller {
    base: String,
    client: reqwest::Client,
}

impl Caller {
    fn new(api: &TestApi, secret: &str) -> Caller {
        Caller { base: api.base.clone(), client: client_with(secret) }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.put(format!("{}{path}", self.base)).json(body)).await
    }

    async fn merge(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self
            .client
            .patch(format!("{}{path}", self.base))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string());
        self.send(request).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base))).await
    }

    /// Names of the items of a list, following `continue` with pages of `limit`.
    async fn names(&self, path: &str, limit: usize) -> Vec<String> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let (status, body) = self.get(&format!("{path}{separator}limit={limit}&continue={token}")).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            for item in body["items"].as_array().expect("items") {
                names.push(format!(
                    "{}/{}",
                    item["metadata"]["namespace"].as_str().unwrap_or(""),
                    item["metadata"]["name"]
                ));
            }
            match body["metadata"]["continue"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => return names.into_iter().map(|name| name.replace('"', "")).collect(),
            }
        }
    }
}

fn cluster(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
           "metadata": {"name": name, "namespace": namespace, "labels": {"tier": "gold"}},
           "spec": {"platform": {"type": "gcp", "region": "europe-west1"}}})
}

/// An API with two namespaces, `team-a` and `team-b`, each holding a Cluster and a Service, created by the admin.
struct Teams {
    api: TestApi,
    /// `(namespace, cluster uid, service uid)`
    objects: Vec<(String, String, String)>,
}

impl Teams {
    async fn start() -> Teams {
        let api = TestApi::start().await;
        let mut objects = Vec::new();
        for namespace in ["team-a", "team-b"] {
            let (status, created) = api.post("/api/v1/clusters", &cluster(namespace, "main")).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            let service = json!({"metadata": {"name": "web", "namespace": namespace},
                "spec": {"clusterRef": {"name": "main"}, "run": {"command": ["sleep", "60"]}}});
            let (status, service) = api.post("/api/v1/services", &service).await;
            assert_eq!(status, StatusCode::CREATED, "{service}");
            objects.push((namespace.to_owned(), uid(&created), uid(&service)));
        }
        Teams { api, objects }
    }

    async fn editor_of(&self, namespace: &str) -> Caller {
        let secret = token(&self.api.store, &format!("editor-{namespace}"), "editor", Some(&[namespace])).await;
        Caller::new(&self.api, &secret)
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_with_a_status_body_and_public_endpoints_need_none() {
    let api = TestApi::start().await;
    for path in ["/api/v1/clusters", &format!("{KUBE}/clusters"), "/apis", "/openapi/v3", "/api/v1/audit"] {
        let response = reqwest::get(api.url(path)).await.expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = response.json().await.expect("a Status");
        assert_eq!(
            (body["kind"].as_str(), body["reason"].as_str(), body["code"].as_i64()),
            (Some("Status"), Some("Unauthorized"), Some(401))
        );
    }
    let forged = Caller::new(&api, "cls_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(forged.get("/api/v1/clusters").await.0, StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/readyz", "/version", "/metrics", "/ui"] {
        let response = reqwest::get(api.url(path)).await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path} needs no token");
    }
}

#[tokio::test]
async fn no_read_crosses_a_namespace_boundary_on_either_api() {
    let teams = Teams::start().await;
    for (own, other) in [(0, 1), (1, 0)] {
        let (own_namespace, own_cluster, _) = &teams.objects[own];
        let (other_namespace, other_cluster, other_service) = &teams.objects[other];
        let caller = teams.editor_of(own_namespace).await;
        let expected = vec![format!("{own_namespace}/main")];

        // single objects: 404 as if they did not exist, on every read path
        for path in [
            format!("/api/v1/clusters/{other_cluster}"),
            format!("/api/v1/clusters/{other_cluster}/status"),
            format!("/api/v1/services/{other_service}"),
            format!("{KUBE}/namespaces/{other_namespace}/clusters/main"),
            format!("{KUBE}/namespaces/{other_namespace}/clusters/main/status"),
            format!("{KUBE}/namespaces/{other_namespace}/services/web"),
        ] {
            let (status, body) = caller.get(&path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert_eq!(body["reason"], "NotFound");
        }
        assert_eq!(caller.get(&format!("/api/v1/clusters/{own_cluster}")).await.0, StatusCode::OK);

        // lists, with and without selectors, paged one by one through continue tokens
        for path in [
            "/api/v1/clusters".to_owned(),
            "/api/v1/clusters?labelSelector=tier%3Dgold".to_owned(),
            "/api/v1/clusters?fieldSelector=metadata.name%3Dmain".to_owned(),
            format!("{KUBE}/clusters"),
            format!("{KUBE}/clusters?labelSelector=tier%3Dgold"),
            format!("{KUBE}/namespaces/{own_namespace}/clusters"),
        ] {
            assert_eq!(caller.names(&path, 1).await, expected, "{path}");
            assert_eq!(caller.names(&path, 500).await, expected, "{path}");
        }
        for path in [
            format!("/api/v1/clusters?namespace={other_namespace}"),
            format!("{KUBE}/namespaces/{other_namespace}/clusters"),
        ] {
            assert!(caller.names(&path, 1).await.is_empty(), "{path}");
        }

        // watches: the initial state and later changes of the other namespace never arrive
        let url = format!("{}{KUBE}/clusters?watch=true&resourceVersion=0&timeoutSeconds=2", teams.api.base);
        let watch = caller.client.get(&url).send().await.expect("watch");
        assert_eq!(watch.status(), StatusCode::OK);
        for (namespace, ..) in &teams.objects {
            let (status, body) = teams
                .api
                .merge(
                    &format!("{KUBE}/namespaces/{namespace}/clusters/main"),
                    &json!({"metadata": {"labels": {"touched": format!("pass-{own}")}}}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let text = watch.text().await.expect("the watch ends after timeoutSeconds");
        let events: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("an event")).collect();
        let seen: BTreeSet<String> = events
            .iter()
            .map(|event| event["object"]["metadata"]["namespace"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(seen, BTreeSet::from([own_namespace.clone()]), "{text}");
        assert!(events.iter().any(|event| event["type"] == "MODIFIED"), "its own change arrives: {text}");
    }
}

#[tokio::test]
async fn no_write_crosses_a_namespace_boundary_and_a_refused_write_changes_nothing() {
    let teams = Teams::start().await;
    let alice = teams.editor_of("team-a").await;
    let (_, other_cluster, other_service) = &teams.objects[1];
    let before = teams.api.get(&format!("/api/v1/clusters/{other_cluster}")).await.1;

    let patch = json!({"spec": {"release": {"version": "9.9"}}});
    let mut replaced = before.clone();
    replaced["spec"]["release"] = json!({"version": "9.9"});
    let report =
        json!({"controller": "x", "observedGeneration": 1, "conditions": [{"type": "Available", "status": "True"}]});
    let hidden = [
        alice.put(&format!("/api/v1/clusters/{other_cluster}"), &replaced).await,
        alice.merge(&format!("/api/v1/clusters/{other_cluster}"), &patch).await,
        alice.delete(&format!("/api/v1/clusters/{other_cluster}")).await,
        alice.delete(&format!("/api/v1/services/{other_service}")).await,
        alice.put(&format!("/api/v1/clusters/{other_cluster}/status"), &report).await,
        alice.put(&format!("{KUBE}/namespaces/team-b/clusters/main"), &replaced).await,
        alice.merge(&format!("{KUBE}/namespaces/team-b/clusters/main"), &patch).await,
        alice.delete(&format!("{KUBE}/namespaces/team-b/clusters/main")).await,
        alice
            .merge(
                &format!("{KUBE}/namespaces/team-b/clusters/main/status"),
                &json!({"status": {"controllers": [report]}}),
            )
            .await,
    ];
    for (index, (status, body)) in hidden.iter().enumerate() {
        assert_eq!(*status, StatusCode::NOT_FOUND, "write {index}: {body}");
    }
    let (status, body) = alice.post("/api/v1/clusters", &cluster("team-b", "intruder")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    let (status, _) = alice.post(&format!("{KUBE}/namespaces/team-b/clusters"), &cluster("team-b", "intruder")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let after = teams.api.get(&format!("/api/v1/clusters/{other_cluster}")).await.1;
    assert_eq!(resource_version(&after), resource_version(&before), "nothing changed: {after}");
    assert_eq!(teams.api.get("/api/v1/clusters?namespace=team-b").await.1["items"].as_array().map(Vec::len), Some(1));

    // within its namespace an editor writes
    let (status, body) = alice.merge(&format!("{KUBE}/namespaces/team-a/clusters/main"), &patch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.post("/api/v1/clusters", &cluster("team-a", "second")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = alice.delete(&format!("/api/v1/clusters/{}", uid(&body))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.delete(&format!("/api/v1/clusters/{}?force=true", teams.objects[0].1)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins force-delete: {body}");
}

#[tokio::test]
async fn viewers_read_and_write_nothing() {
    let teams = Teams::start().await;
    let secret = token(&teams.api.store, "viewer", "viewer", None).await;
    let viewer = Caller::new(&teams.api, &secret);
    assert_eq!(viewer.names("/api/v1/clusters", 500).await.len(), 2);
    let (namespace, cluster_uid, _) = &teams.objects[0];
    assert_eq!(
        viewer.merge(&format!("/api/v1/clusters/{cluster_uid}"), &json!({"metadata": {"labels": {"x": "y"}}})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(viewer.post("/api/v1/clusters", &cluster(namespace, "new")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(viewer.delete(&format!("{KUBE}/namespaces/{namespace}/clusters/main")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(viewer.get("/api/v1/audit").await.0, StatusCode::FORBIDDEN);
    assert_eq!(viewer.get("/api/v1/tokens").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_controller_token_writes_only_its_own_registration_report_and_finalizer() {
    let teams = Teams::start().await;
    let secret = token(&teams.api.store, "alpha", "controller:alpha", None).await;
    let alpha = Caller::new(&teams.api, &secret);
    let (namespace, cluster_uid, _) = teams.objects[0].clone();
    let item = format!("{KUBE}/namespaces/{namespace}/clusters/main");
    let registration =
        |name: &str| json!({"spec": {"kinds": ["Cluster"], "platforms": ["gcp"]}, "metadata": {"name": name}});

    assert!(alpha.put("/api/v1/controllers/alpha", &registration("alpha")).await.0.is_success());
    assert_eq!(alpha.put("/api/v1/controllers/beta", &registration("beta")).await.0, StatusCode::FORBIDDEN);
    let (status, object) = alpha.get(&format!("/api/v1/clusters/{cluster_uid}")).await;
    assert_eq!(status, StatusCode::OK, "controllers read their kinds");

    let report = |controller: &str| json!({"controller": controller, "observedGeneration": 1, "conditions": [{"type": "Available", "status": "True"}]});
    assert_eq!(alpha.put(&format!("/api/v1/clusters/{cluster_uid}/status"), &report("alpha")).await.0, StatusCode::OK);
    let (status, body) = alpha.put(&format!("/api/v1/clusters/{cluster_uid}/status"), &report("beta")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) =
        alpha.merge(&format!("{item}/status"), &json!({"status": {"controllers": [report("beta")]}})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not through the Kubernetes status subresource either");

    // the aggregate is the server's: a controller writing it changes nothing
    let before = teams.api.get(&format!("/api/v1/clusters/{cluster_uid}")).await.1;
    let forged = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Forged"}]}});
    let (status, after) = alpha.merge(&format!("{item}/status"), &forged).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resource_version(&after), resource_version(&before));
    assert_ne!(after["status"]["conditions"][0]["reason"], "Forged");

    // specs and other metadata: no; its own finalizer: yes; another controller's: no
    assert_eq!(alpha.merge(&item, &json!({"spec": {"release": {"version": "2"}}})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(alpha.merge(&item, &json!({"metadata": {"labels": {"owned": "alpha"}}})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(alpha.post("/api/v1/clusters", &cluster(&namespace, "mine")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(alpha.delete(&item).await.0, StatusCode::FORBIDDEN);
    let (status, body) = alpha.merge(&item, &json!({"metadata": {"finalizers": ["cls.dev/alpha"]}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        alpha.merge(&item, &json!({"metadata": {"finalizers": ["cls.dev/alpha", "cls.dev/beta"]}})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = alpha.merge(&item, &json!({"metadata": {"finalizers": []}})).await;
    assert_eq!(status, StatusCode::OK, "its own finalizer goes too: {body}");

    // a stale write answers 409 (re-read and retry), not 403, although the spec moved meanwhile
    let (_, mut stale) = alpha.get(&format!("/api/v1/clusters/{cluster_uid}")).await;
    let moved = json!({"spec": {"release": {"version": "3"}}});
    assert_eq!(teams.api.merge(&format!("/api/v1/clusters/{cluster_uid}"), &moved).await.0, StatusCode::OK);
    stale["metadata"]["finalizers"] = json!(["cls.dev/alpha"]);
    let (status, body) = alpha.put(&format!("/api/v1/clusters/{cluster_uid}"), &stale).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let _ = object;
}

async fn api_with(auth: AuthConfig, limits: Limits) -> TestApi {
    let db = TestDb::new(&MIGRATOR).await;
    let store = Store::new(db.pool.clone(), ScheduleConfig::default());
    TestApi::start_with_state(db, AppState::with_security(store, auth, limits)).await
}

#[tokio::test]
async fn gateway_headers_count_only_from_configured_addresses() {
    let group_roles = vec!["ops=admin".parse().expect("a group role")];
    let elsewhere = AuthConfig {
        gateway: Some(GatewayConfig::parse(&["10.0.0.0/8".into()]).expect("networks")),
        group_roles: group_roles.clone(),
        ..AuthConfig::default()
    };
    let api = api_with(elsewhere, Limits::default()).await;
    let forged = reqwest::Client::new()
        .post(api.url("/api/v1/clusters"))
        .header("x-remote-user", "mallory")
        .header("x-remote-group", "ops")
        .header("x-user-email", "mallory@example.com")
        .json(&cluster("default", "forged"))
        .send()
        .await
        .expect("sent");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "headers from a non-allowed address are ignored");
    assert_eq!(api.get("/api/v1/clusters").await.1["items"].as_array().map(Vec::len), Some(0));

    let loopback = AuthConfig {
        gateway: Some(GatewayConfig::parse(&["127.0.0.1".into()]).expect("address")),
        group_roles,
        ..AuthConfig::default()
    };
    let api = api_with(loopback, Limits::default()).await;
    let trusted = reqwest::Client::new()
        .post(api.url("/api/v1/clusters"))
        .header("x-user-email", "olive@example.com")
        .header("x-remote-group", "ops")
        .json(&cluster("default", "via-gateway"))
        .send()
        .await
        .expect("sent");
    assert_eq!(trusted.status(), StatusCode::CREATED);
    let unmapped = reqwest::Client::new()
        .get(api.url("/api/v1/clusters"))
        .header("x-remote-user", "guest")
        .header("x-remote-group", "visitors")
        .send()
        .await
        .expect("sent");
    assert_eq!(unmapped.status(), StatusCode::UNAUTHORIZED, "a user without a mapped group has no role");
    let audit = api.get("/api/v1/audit").await.1;
    assert_eq!(audit["items"][0]["user"], "olive@example.com", "{audit}");
}

#[tokio::test]
async fn oidc_tokens_are_checked_for_signature_issuer_audience_and_expiry() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = b"an-oidc-test-secret-of-32-bytes!";
    let jwks = json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
        "k": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)}]});
    let file = std::env::temp_dir().join(format!("cls-jwks-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, jwks.to_string()).expect("jwks written");
    let auth = AuthConfig {
        oidc: Some(OidcConfig {
            issuer: "https://issuer.example".into(),
            audience: "cls".into(),
            jwks: JwksSource::File(file.clone()),
            username_claim: "email".into(),
            groups_claim: "groups".into(),
        }),
        group_roles: vec!["readers=viewer@team-a".parse().expect("a group role")],
        ..AuthConfig::default()
    };
    let api = api_with(auth, Limits::default()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let jwt = |claims: Value, key: &[u8]| {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        encode(&header, &claims, &EncodingKey::from_secret(key)).expect("signed")
    };
    let claims = |audience: &str, expires: u64| json!({"iss": "https://issuer.example", "aud": audience, "exp": expires, "email": "rita@example.com", "groups": ["readers"]});
    let status = |token: String| {
        let client = client_with(&token);
        let url = api.url("/api/v1/clusters");
        async move { client.get(url).send().await.expect("sent").status() }
    };
    assert_eq!(status(jwt(claims("cls", now + 300), secret)).await, StatusCode::OK);
    assert_eq!(status(jwt(claims("other", now + 300), secret)).await, StatusCode::UNAUTHORIZED, "wrong audience");
    assert_eq!(status(jwt(claims("cls", now - 3600), secret)).await, StatusCode::UNAUTHORIZED, "expired");
    assert_eq!(
        status(jwt(claims("cls", now + 300), b"another-secret-of-thirty-two-byt")).await,
        StatusCode::UNAUTHORIZED,
        "bad signature"
    );
    let caller = client_with(&jwt(claims("cls", now + 300), secret));
    let created = caller.post(api.url("/api/v1/clusters")).json(&cluster("team-a", "x")).send().await.expect("sent");
    assert_eq!(created.status(), StatusCode::FORBIDDEN, "the group maps to a viewer");
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn the_audit_log_has_exactly_one_record_per_mutating_request_denied_ones_included() {
    let teams = Teams::start().await;
    let api = &teams.api;
    let (_, baseline) = api.get("/api/v1/audit?limit=1000").await;
    let already = baseline["items"].as_array().expect("items").len();
    let alice = teams.editor_of("team-a").await;
    let (namespace, cluster_uid, _) = teams.objects[0].clone();

    let (status, updated) =
        alice.merge(&format!("/api/v1/clusters/{cluster_uid}"), &json!({"spec": {"release": {"version": "2"}}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alice.post("/api/v1/clusters", &cluster("team-b", "nope")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(alice.delete(&format!("{KUBE}/namespaces/team-b/clusters/main")).await.0, StatusCode::NOT_FOUND);
    let anonymous = reqwest::Client::new()
        .delete(api.url(&format!("{KUBE}/namespaces/{namespace}/clusters/main")))
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(alice.get("/api/v1/clusters").await.0, StatusCode::OK, "reads are not audited");

    let (status, audit) = api.get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit["kind"], "AuditList");
    let records: Vec<&Value> = audit["items"].as_array().expect("items").iter().skip(already).collect();
    let summary: Vec<(String, String, String, String, i64)> = records
        .iter()
        .map(|record| {
            let text = |field: &str| record[field].as_str().unwrap_or_default().to_owned();
            (
                text("user"),
                text("verb"),
                text("resource"),
                format!("{}/{}", text("namespace"), text("name")),
                record["code"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("editor-team-a".into(), "patch".into(), "clusters".into(), format!("{namespace}/main"), 200),
            ("editor-team-a".into(), "create".into(), "clusters".into(), "team-b/nope".into(), 403),
            ("editor-team-a".into(), "delete".into(), "clusters".into(), "team-b/main".into(), 404),
            ("system:anonymous".into(), "delete".into(), "clusters".into(), format!("{namespace}/main"), 401),
        ],
        "{audit}"
    );
    let patch = records[0];
    assert_eq!(patch["uid"], cluster_uid.as_str());
    assert_eq!(patch["resourceVersionAfter"].as_i64(), Some(resource_version(&updated)));
    assert!(patch["resourceVersionBefore"].as_i64().expect("before") < resource_version(&updated));
    assert!(!patch["requestId"].as_str().unwrap_or_default().is_empty(), "{patch}");

    // paging with continue tokens
    let first = api.get("/api/v1/audit?limit=2").await.1;
    let next = first["metadata"]["continue"].as_str().expect("more pages");
    let second = api.get(&format!("/api/v1/audit?limit=2&continue={next}")).await.1;
    assert_ne!(first["items"][0], second["items"][0]);
}

/// The audit writer keeps its connection out of the pool; when the database drops it (as when it restarts), the
/// next records are stored on a fresh one, none lost.
#[tokio::test]
async fn audit_records_are_stored_after_the_database_dropped_the_audit_writers_connection() {
    let teams = Teams::start().await;
    let api = &teams.api;
    let (_, cluster_uid, _) = teams.objects[0].clone();
    let path = format!("/api/v1/clusters/{cluster_uid}");
    assert_eq!(api.merge(&path, &json!({"metadata": {"labels": {"round": "1"}}})).await.0, StatusCode::OK);
    let (_, before) = api.get("/api/v1/audit?limit=1000").await; // flushes: the writer has used its connection
    let already = before["items"].as_array().expect("items").len();

    api.drop_database_connections().await;
    for round in 2..5 {
        let patch = json!({"metadata": {"labels": {"round": round.to_string()}}});
        assert_eq!(api.merge(&path, &patch).await.0, StatusCode::OK, "round {round}");
    }

    let (status, audit) = api.get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let after: Vec<(String, i64)> = audit["items"].as_array().expect("items")[already..]
        .iter()
        .map(|record| (record["verb"].as_str().unwrap_or_default().to_owned(), record["code"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(after, vec![("patch".to_owned(), 200); 3], "{audit}");
}

#[tokio::test]
async fn each_identity_has_its_own_rate_limit_answered_with_429_and_retry_after() {
    let limits = Limits {
        rate: NonZeroU32::new(1),
        burst: NonZeroU32::new(3).expect("non-zero"),
        timeout: Duration::from_secs(30),
    };
    let api = api_with(AuthConfig::default(), limits).await;
    let other = client_with(&token(&api.store, "other", "viewer", None).await);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(api.client.get(api.url("/api/v1/clusters")).send().await.expect("sent"));
    }
    let limited = codes.pop().expect("five answers");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.expect("a Status");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        other.get(api.url("/api/v1/clusters")).send().await.expect("sent").status(),
        StatusCode::OK,
        "per identity"
    );
    assert_eq!(reqwest::get(api.url("/healthz")).await.expect("sent").status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_by_admins_through_the_api() {
    let api = TestApi::start().await;
    let (status, created) =
        api.post("/api/v1/tokens", &json!({"name": "ci", "role": "editor", "namespaces": ["team-a"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("the secret, once").to_owned();
    let ci = client_with(&secret);
    assert_eq!(ci.get(api.url("/api/v1/clusters")).send().await.expect("sent").status(), StatusCode::OK);
    let (_, listed) = api.get("/api/v1/tokens").await;
    assert!(listed.to_string().contains("\"ci\"") && !listed.to_string().contains(&secret), "{listed}");
    assert_eq!(api.post("/api/v1/tokens", &json!({"name": "ci", "role": "viewer"})).await.0, StatusCode::CONFLICT);
    let (status, body) = api.post("/api/v1/tokens", &json!({"name": "bad", "role": "root"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "role");
    assert_eq!(api.delete("/api/v1/tokens/ci").await.0, StatusCode::OK);
    assert_eq!(ci.get(api.url("/api/v1/clusters")).send().await.expect("sent").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.delete("/api/v1/tokens/nobody").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_request_over_the_timeout_answers_504_and_watches_are_exempt() {
    let limits = Limits { timeout: Duration::from_nanos(1), ..Limits::default() };
    let api = api_with(AuthConfig::default(), limits).await;
    let (status, body) = api.get("/api/v1/clusters").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["reason"], "Timeout");
    let url = api.url(&format!("{KUBE}/clusters?watch=true&timeoutSeconds=1"));
    let mut watch = api.client.get(&url).send().await.expect("sent");
    for _ in 0..100 {
        // 503 until the change feed runs, as a client would retry
        if watch.status() != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        watch = api.client.get(&url).send().await.expect("sent");
    }
    assert_eq!(watch.status(), StatusCode::OK);
}
