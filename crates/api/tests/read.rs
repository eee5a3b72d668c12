//! GET of one object, against a real PostgreSQL: the body PostgreSQL renders for a fresh row must be the object the
//! aggregating path (and every list) renders, for every shape of metadata, and a stale aggregate must be
//! recomputed and cached by the read.

mod common;

use std::time::Duration;

use cls_api::store::ObjectKey;
use cls_core::Kind;
use common::{TestApi, condition, uid};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(120), test).await.expect("test finished within 120 s");
}

/// The item of `list` (a list response body) named `name`.
fn item<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("{name} in {list}"))
}

/// GETs `path` and checks that the answer is JSON.
async fn get_json(api: &TestApi, path: &str) -> Value {
    let response = api.client.get(api.url(path)).send().await.expect("request sent");
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok());
    assert_eq!(content_type, Some("application/json"), "GET {path}");
    response.json().await.expect("a JSON body")
}

/// The store's two renderings of one object: PostgreSQL's (GET) and serde's (lists, writes).
async fn both_renderings(api: &TestApi, kind: Kind, key: &ObjectKey) -> (Value, Value) {
    let rendered = api.store.get_json(kind, key).await.expect("get_json");
    let fast: Value = serde_json::from_slice(&rendered.body).expect("the rendered body is JSON");
    let slow = api.store.get(kind, key).await.expect("get").to_json();
    (fast, slow)
}

#[tokio::test]
async fn a_get_answers_the_object_a_list_shows_for_every_shape_of_metadata() {
    bounded(async {
        let api = TestApi::start().await;
        api.register("watcher", &["Cluster", "Service"], &[]).await;
        // every optional metadata field, strings that need escaping, and JSON of every type in the spec
        let odd = "quote \" backslash \\ newline \n tab \t bell \u{7} apostrophe ' unicode é ✓ 𝄞 </script>";
        let manifest = json!({
            "apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "full", "labels": {"team": "a", "tier": "gold"},
                         "annotations": {"note": odd, "empty": ""}, "finalizers": ["cls.dev/test"]},
            "spec": {"platform": {"type": "gcp", "region": "europe-west1",
                                  "config": {"int": 100000, "negative": -3, "float": 1.5, "big": 9007199254740993_u64,
                                             "bool": true, "null": null, "list": [1, "two", {"three": [3]}],
                                             "odd": odd, "nested": {"b": {}, "a": []}}},
                     "release": {"version": "1.2.3", "channel": "stable"}}});
        let response = api
            .client
            .patch(api.url("/apis/cls.dev/v1alpha1/namespaces/default/clusters/full?fieldManager=read-test"))
            .header("content-type", "application/apply-patch+yaml")
            .body(manifest.to_string())
            .send()
            .await
            .expect("apply sent");
        assert_eq!(response.status(), StatusCode::CREATED);
        api.create_cluster("plain", "local").await;
        api.create_service("web", "plain").await;
        let (status, _) = api.delete("/apis/cls.dev/v1alpha1/namespaces/default/clusters/full").await;
        assert_eq!(status, StatusCode::OK, "deleting with a finalizer leaves the object");

        let clusters = get_json(&api, "/apis/cls.dev/v1alpha1/namespaces/default/clusters").await;
        let services = get_json(&api, "/apis/cls.dev/v1alpha1/namespaces/default/services").await;
        let controllers = get_json(&api, "/apis/cls.dev/v1alpha1/controllers").await;
        let cases = [
            ("clusters", "full", item(&clusters, "full")),
            ("clusters", "plain", item(&clusters, "plain")),
            ("services", "web", item(&services, "web")),
        ];
        for (plural, name, listed) in cases {
            let by_name = get_json(&api, &format!("/apis/cls.dev/v1alpha1/namespaces/default/{plural}/{name}")).await;
            let by_uid = get_json(&api, &format!("/api/v1/{plural}/{}", uid(listed))).await;
            assert_eq!(&by_name, listed, "GET by name of {plural}/{name}");
            assert_eq!(&by_uid, listed, "GET by uid of {plural}/{name}");
        }
        let full = item(&clusters, "full");
        assert_eq!(full["metadata"]["annotations"]["note"], odd);
        assert!(full["metadata"]["deletionTimestamp"].is_string(), "{full}");
        assert!(full["metadata"]["managedFields"].is_array(), "{full}");
        assert!(item(&services, "web")["metadata"]["ownerReferences"].is_array());
        assert!(item(&clusters, "plain")["metadata"].get("labels").is_none(), "empty fields are left out");

        // cluster-scoped: no namespace in the metadata
        let listed = item(&controllers, "watcher");
        let by_name = get_json(&api, "/apis/cls.dev/v1alpha1/controllers/watcher").await;
        assert_eq!(&by_name, listed);
        assert_eq!(&get_json(&api, "/api/v1/controllers/watcher").await, listed);
        assert!(by_name["metadata"].get("namespace").is_none(), "{by_name}");

        // and the store's two renderings agree object by object
        let keys = [
            (Kind::Cluster, ObjectKey::name("default", "full")),
            (Kind::Cluster, ObjectKey::name("default", "plain")),
            (Kind::Service, ObjectKey::name("default", "web")),
            (Kind::Controller, ObjectKey::name("", "watcher")),
        ];
        for (kind, key) in keys {
            let (fast, slow) = both_renderings(&api, kind, &key).await;
            assert_eq!(fast, slow, "{kind} {key:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_get_after_a_report_recomputes_the_aggregate_caches_it_and_then_renders_the_cached_one() {
    bounded(async {
        let api = TestApi::start().await;
        api.register("infra", &["Cluster"], &["gcp"]).await;
        let created = api.create_cluster("prod", "gcp").await;
        let id = uid(&created);
        let path = format!("/api/v1/clusters/{id}");
        let before = get_json(&api, &path).await;
        assert_eq!(condition(&before, "Ready")["status"], "False");

        let (status, _) = api.report("clusters", &id, "infra", 1, true).await;
        assert_eq!(status, StatusCode::OK);
        let stale: (bool,) = sqlx::query_as("select status_cached_seq = status_seq from objects where uid = $1::uuid")
            .bind(&id)
            .fetch_one(&api.db.pool)
            .await
            .expect("cache state");
        assert!(!stale.0, "a report leaves the cached aggregate stale");

        let after = get_json(&api, &path).await;
        assert_eq!(condition(&after, "Ready")["status"], "True", "{after}");
        assert_eq!(after["status"]["controllers"][0]["controller"], "infra");
        let fresh: (bool,) = sqlx::query_as("select status_cached_seq = status_seq from objects where uid = $1::uuid")
            .bind(&id)
            .fetch_one(&api.db.pool)
            .await
            .expect("cache state");
        assert!(fresh.0, "the read cached the aggregate");

        // the cached aggregate is what the next GET renders, by uid and by name
        assert_eq!(get_json(&api, &path).await, after);
        assert_eq!(get_json(&api, "/apis/cls.dev/v1alpha1/namespaces/default/clusters/prod").await, after);
    })
    .await;
}

#[tokio::test]
async fn a_get_of_a_missing_object_is_404_by_uid_and_by_name() {
    bounded(async {
        let api = TestApi::start().await;
        let (status, body) = api.get(&format!("/api/v1/clusters/{}", uuid::Uuid::new_v4())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["kind"], "Status");
        let (status, body) = api.get("/apis/cls.dev/v1alpha1/namespaces/default/services/nothing").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["reason"], "NotFound");
        let (status, _) = api.get("/apis/cls.dev/v1alpha1/controllers/nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn a_get_succeeds_after_the_database_dropped_every_connection_it_kept() {
    bounded(async {
        let api = TestApi::start().await;
        let created = api.create_cluster("steady", "gcp").await;
        let path = format!("/api/v1/clusters/{}", uid(&created));
        let before = get_json(&api, &path).await;

        // as when the server restarts: every other backend of this database goes away
        api.drop_database_connections().await;

        for _ in 0..3 {
            assert_eq!(get_json(&api, &path).await, before);
        }
    })
    .await;
}

/// Regression: on a fresh database the never-analyzed one-row `registry_epoch` was estimated at ~1,500 rows, every
/// GET's cost crossed `jit_above_cost`, and each GET compiled its plan (~90 ms). The migrations leave statistics
/// for it, and CLS's connections run without JIT.
#[tokio::test]
async fn a_fresh_database_plans_gets_cheaply_and_sessions_run_without_jit() {
    bounded(async {
        let db = cls_testkit::TestDb::new(&cls_api::store::MIGRATOR).await;
        let estimate: f32 = sqlx::query_scalar("select reltuples from pg_class where relname = 'registry_epoch'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(estimate, 1.0, "registry_epoch has statistics saying one row");
        let plan: Value = sqlx::query_scalar(
            "explain (format json) select o.uid from objects o cross join registry_epoch e \
             where o.kind = 'Cluster' and o.uid = gen_random_uuid()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let rows = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap();
        assert!(rows <= 1.0, "a GET's join is estimated at {rows} rows: {plan}");

        let options = cls_api::store::connect_options(&db.url).unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        let jit: String = sqlx::query_scalar("show jit").fetch_one(&pool).await.unwrap();
        assert_eq!(jit, "off");
    })
    .await;
}

/// Concurrent GETs share statements (one per kind and key shape in each batch): every GET must still get its own
/// object, by uid and by name and across kinds, a missing one (another namespace, another kind's uid, an unknown
/// uid) 404, and a stale aggregate its recomputed status.
#[tokio::test]
async fn concurrent_gets_sharing_statements_each_answer_their_own_object() {
    bounded(async {
        let api = TestApi::start().await;
        api.register("infra", &["Cluster"], &["gcp"]).await;
        let mut clusters = Vec::new();
        for index in 0..20 {
            clusters.push(api.create_cluster(&format!("c{index}"), "gcp").await);
        }
        let service = api.create_service("web", "c0").await;
        // each object's first read caches its aggregate, so that the shared statements render them
        for object in clusters.iter().chain([&service]) {
            let kind = if object["kind"] == "Service" { Kind::Service } else { Kind::Cluster };
            api.store.get_json(kind, &ObjectKey::Uid(uid(object).parse().expect("a uuid"))).await.expect("cached");
        }
        let (status, _) = api.report("clusters", &uid(&clusters[1]), "infra", 1, true).await;
        assert_eq!(status, StatusCode::OK, "c1's cached aggregate is stale after this report");

        let uid_of = |object: &Value| ObjectKey::Uid(uid(object).parse().expect("a uuid"));
        let mut cases: Vec<(Kind, ObjectKey, Option<String>)> = Vec::new();
        for (index, cluster) in clusters.iter().enumerate() {
            let name = format!("c{index}");
            cases.push((Kind::Cluster, uid_of(cluster), Some(name.clone())));
            cases.push((Kind::Cluster, ObjectKey::name("default", &name), Some(name.clone())));
            cases.push((Kind::Cluster, ObjectKey::Uid(uuid::Uuid::new_v4()), None));
            cases.push((Kind::Cluster, ObjectKey::name("elsewhere", &name), None));
            cases.push((Kind::Service, uid_of(cluster), None));
        }
        cases.push((Kind::Service, uid_of(&service), Some("web".into())));
        cases.push((Kind::Service, ObjectKey::name("default", "web"), Some("web".into())));

        let rounds: Vec<&(Kind, ObjectKey, Option<String>)> = (0..5).flat_map(|_| cases.iter()).collect();
        let answers =
            futures::future::join_all(rounds.iter().map(|(kind, key, _)| api.store.get_json(*kind, key))).await;
        for ((kind, key, expected), answer) in rounds.into_iter().zip(answers) {
            match (expected, answer) {
                (Some(name), Ok(found)) => {
                    let body: Value = serde_json::from_slice(&found.body).expect("a JSON body");
                    assert_eq!(body["metadata"]["name"], name.as_str(), "{kind:?} {key:?}");
                    assert_eq!(body["kind"], kind.as_str(), "{kind:?} {key:?}");
                    if name == "c1" {
                        assert_eq!(condition(&body, "Ready")["status"], "True", "recomputed: {body}");
                    }
                }
                (None, Err(cls_api::store::StoreError::NotFound { .. })) => {}
                (expected, answer) => panic!("{kind:?} {key:?}: expected {expected:?}, got {answer:?}"),
            }
        }
    })
    .await;
}

/// A GET answers the body this process held only while the row has the version it was rendered from: a change by
/// another API process, a report, and a change that leaves the resourceVersion as it was (made in SQL) each show
/// at once, by uid and by name; an unchanged row is not rendered again, and `/metrics` counts the reuse.
#[tokio::test]
async fn a_get_reuses_a_held_body_only_while_the_row_is_unchanged() {
    bounded(async {
        let api = TestApi::start().await;
        let replica = api.replica().await;
        api.register("infra", &["Cluster"], &["gcp"]).await;
        let created = api.create_cluster("prod", "gcp").await;
        let id = uid(&created);
        let by_uid = format!("/api/v1/clusters/{id}");
        let by_name = "/apis/cls.dev/v1alpha1/namespaces/default/clusters/prod";
        let reused = || api.store.get_bodies_reused().get();

        // the first GET computes and caches the aggregate (a new row version); the next ones render and keep
        let first = get_json(&api, &by_uid).await;
        for path in [by_uid.as_str(), by_name] {
            assert_eq!(get_json(&api, path).await, first, "{path}");
        }
        let before = reused();
        assert_eq!(get_json(&api, &by_uid).await, first);
        assert_eq!(get_json(&api, by_name).await, first);
        assert_eq!(reused(), before + 2, "both GETs answered the bodies held since the first ones");
        let (_, metrics) = api.get("/metrics").await;
        let text = metrics.as_str().map(str::to_owned).unwrap_or_else(|| metrics.to_string());
        assert!(text.contains("cls_api_get_bodies_reused_total"), "{text}");

        // a label change through the other process
        let (status, _) = replica.merge(by_name, &json!({"metadata": {"labels": {"team": "b"}}})).await;
        assert_eq!(status, StatusCode::OK);
        for path in [by_uid.as_str(), by_name] {
            assert_eq!(get_json(&api, path).await["metadata"]["labels"]["team"], "b", "{path}");
        }

        // a report through the other process (the aggregate is recomputed by the next read)
        let (status, _) = replica.report("clusters", &id, "infra", 1, true).await;
        assert_eq!(status, StatusCode::OK);
        for path in [by_uid.as_str(), by_name] {
            assert_eq!(condition(&get_json(&api, path).await, "Ready")["status"], "True", "{path}");
        }

        // a change that keeps the resourceVersion: only the row's version tells
        sqlx::query("update objects set annotations = '{\"edited\": \"in SQL\"}' where uid = $1::uuid")
            .bind(&id)
            .execute(&api.db.pool)
            .await
            .expect("update");
        for path in [by_uid.as_str(), by_name] {
            let body = get_json(&api, path).await;
            assert_eq!(body["metadata"]["annotations"]["edited"], "in SQL", "{path}");
            assert_eq!(body, get_json(&api, path).await, "{path}: held and rendered bodies agree");
        }

        let (status, _) = replica.delete(by_name).await;
        assert_eq!(status, StatusCode::OK);
        for path in [by_uid.as_str(), by_name] {
            let response = api.client.get(api.url(path)).send().await.expect("request sent");
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
    })
    .await;
}

/// When this process holds a body for every GET of a shared statement, the statement only checks their versions:
/// the GETs whose row changed meanwhile must still answer the new object (rendered by a second statement), the
/// others the held body, and an object deleted meanwhile 404.
#[tokio::test]
async fn concurrent_gets_holding_bodies_answer_each_change() {
    bounded(async {
        let api = TestApi::start().await;
        let mut uids = Vec::new();
        for index in 0..12 {
            uids.push(uid(&api.create_cluster(&format!("c{index}"), "gcp").await));
        }
        let keys: Vec<(usize, ObjectKey)> = uids
            .iter()
            .enumerate()
            .flat_map(|(index, id)| {
                [
                    (index, ObjectKey::Uid(id.parse().expect("a uuid"))),
                    (index, ObjectKey::name("default", format!("c{index}"))),
                ]
            })
            .collect();
        // every key's body is held (the first GET caches the aggregate, the second renders the body kept)
        for _ in 0..2 {
            for (_, key) in &keys {
                api.store.get_json(Kind::Cluster, key).await.expect("found");
            }
        }
        // every third object changes in SQL (its resourceVersion stays), the last one is deleted
        for (index, id) in uids.iter().enumerate().filter(|(index, _)| index % 3 == 0) {
            sqlx::query("update objects set annotations = jsonb_build_object('round', $2::text) where uid = $1::uuid")
                .bind(id)
                .bind(index.to_string())
                .execute(&api.db.pool)
                .await
                .expect("update");
        }
        sqlx::query("delete from objects where uid = $1::uuid").bind(&uids[11]).execute(&api.db.pool).await.unwrap();

        let rounds: Vec<&(usize, ObjectKey)> = (0..5).flat_map(|_| keys.iter()).collect();
        let answers =
            futures::future::join_all(rounds.iter().map(|(_, key)| api.store.get_json(Kind::Cluster, key))).await;
        for ((index, key), answer) in rounds.into_iter().zip(answers) {
            match answer {
                Ok(found) => {
                    assert_ne!(*index, 11, "{key:?}: deleted, yet found");
                    let body: Value = serde_json::from_slice(&found.body).expect("a JSON body");
                    assert_eq!(body["metadata"]["name"], format!("c{index}"), "{key:?}");
                    let expected = if index % 3 == 0 { json!({"round": index.to_string()}) } else { Value::Null };
                    assert_eq!(body["metadata"]["annotations"], expected, "{key:?}");
                }
                Err(cls_api::store::StoreError::NotFound { .. }) => assert_eq!(*index, 11, "{key:?}: not found"),
                Err(error) => panic!("{key:?}: {error}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn lists_run_on_connections_of_their_own() {
    bounded(async {
        let api = TestApi::start().await;
        api.create_cluster("prod", "gcp").await;
        let path = "/apis/cls.dev/v1alpha1/namespaces/default/clusters";
        // the GET caches the aggregate: the list then needs nothing but its own statement
        get_json(&api, &format!("{path}/prod")).await;
        // take every connection the pool will give (some are kept by the store's writers)
        let mut held = Vec::new();
        while let Ok(connection) = tokio::time::timeout(Duration::from_millis(500), api.db.pool.acquire()).await {
            held.push(connection.expect("a connection of the pool"));
        }
        assert!(!held.is_empty());
        let list = tokio::time::timeout(Duration::from_secs(10), get_json(&api, path))
            .await
            .expect("the list answered while every connection of the pool was taken");
        assert_eq!(list["items"][0]["metadata"]["name"], "prod");
        drop(held);
    })
    .await;
}

/// Lists of JSON render their items in PostgreSQL once the items' aggregates are cached: the rendered page must
/// equal the page the typed path serializes (items, resourceVersion, continue tokens, page by page), and a page
/// holding a stale aggregate (after a report) must show it recomputed.
#[tokio::test]
async fn a_list_renders_its_items_in_postgresql_and_equals_the_typed_list() {
    bounded(async {
        let api = TestApi::start().await;
        api.register("infra", &["Cluster"], &["gcp"]).await;
        let mut uids = Vec::new();
        for name in ["a", "b", "c", "d", "e"] {
            uids.push(uid(&api.create_cluster(name, "gcp").await));
        }
        let (status, _) = api
            .merge(
                "/apis/cls.dev/v1alpha1/namespaces/default/clusters/b",
                &json!({"metadata": {"labels": {"team": "x"}, "annotations": {"note": "quote \" and é"}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let parse = |items: &[bytes::Bytes]| -> Vec<Value> {
            items.iter().map(|item| serde_json::from_slice(item).expect("an item is JSON")).collect()
        };
        let query = |after: Option<cls_api::store::ContinueToken>| cls_api::store::ListQuery {
            namespace: Some("default".into()),
            limit: Some(2),
            continue_after: after,
            ..Default::default()
        };

        // the first list finds every aggregate stale: it takes the typed path, which caches them
        let first = api.store.list_json(Kind::Cluster, &query(None)).await.expect("list");
        assert!(std::str::from_utf8(&first.items[1]).unwrap().contains(r#""labels":{"team":"x"}"#), "typed");
        // page by page, the rendered list equals the typed one
        let mut after = None;
        let mut names = Vec::new();
        loop {
            let rendered = api.store.list_json(Kind::Cluster, &query(after.clone())).await.expect("list");
            let typed = api.store.list(Kind::Cluster, &query(after.clone())).await.expect("list");
            let typed_items: Vec<Value> =
                typed.items.iter().map(|item| serde_json::to_value(item).expect("serializes")).collect();
            assert_eq!(parse(&rendered.items), typed_items);
            assert_eq!(rendered.resource_version, typed.resource_version);
            assert_eq!(rendered.continue_token, typed.continue_token);
            names.extend(typed_items.iter().map(|item| item["metadata"]["name"].as_str().unwrap().to_owned()));
            match rendered.continue_token {
                Some(token) => after = Some(cls_api::store::ContinueToken::decode(&token).expect("a token")),
                None => break,
            }
        }
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // a token from another namespace: one before this one continues from its start, one after ends the list
        let token = |namespace: &str| cls_api::store::ContinueToken { namespace: namespace.into(), name: "x".into() };
        let page = api.store.list_json(Kind::Cluster, &query(Some(token("aaa")))).await.expect("list");
        assert_eq!(parse(&page.items)[0]["metadata"]["name"], "a");
        let page = api.store.list_json(Kind::Cluster, &query(Some(token("zzz")))).await.expect("list");
        assert!(page.items.is_empty() && page.continue_token.is_none());
        // PostgreSQL prints jsonb with a space after each colon: this page was rendered there
        let rendered = api.store.list_json(Kind::Cluster, &query(None)).await.expect("list");
        assert!(std::str::from_utf8(&rendered.items[1]).unwrap().contains(r#""labels":{"team": "x"}"#), "rendered");

        // a report makes b's aggregate stale: its page shows it recomputed
        let (status, _) = api.report("clusters", &uids[1], "infra", 1, true).await;
        assert_eq!(status, StatusCode::OK);
        let page = parse(&api.store.list_json(Kind::Cluster, &query(None)).await.expect("list").items);
        assert_eq!(condition(&page[1], "Ready")["status"], "True", "{}", page[1]);
        assert_eq!(condition(&page[0], "Ready")["status"], "False", "{}", page[0]);
    })
    .await;
}
