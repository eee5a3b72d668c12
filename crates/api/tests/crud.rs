//! Create, read, list, replace, patch and register through the thin REST API, against a real PostgreSQL: versions,
//! preconditions, server-owned fields, `Status` errors, the Service-to-Cluster reference, lists, Controllers and
//! concurrent writers. The end of an object's life (DELETE, finalizers, cascade) is in `deletion.rs`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{TestApi, generation, resource_version, uid};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

const JSON_PATCH: &str = "application/json-patch+json";

/// Asserts that `body` is a Kubernetes `Status` failure with this code and reason.
fn assert_status(status: StatusCode, body: &Value, code: u16, reason: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

/// The fields named by `details.causes`, sorted.
fn cause_fields(body: &Value) -> Vec<String> {
    let causes = body["details"]["causes"].as_array().unwrap_or_else(|| panic!("causes in {body}"));
    let fields: BTreeSet<String> = causes.iter().map(|cause| cause["field"].as_str().unwrap().to_owned()).collect();
    fields.into_iter().collect()
}

/// Any method, any content type, any bytes.
async fn send_raw(api: &TestApi, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = api.client.request(method, api.url(path)).header("content-type", content_type).body(body);
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body read");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `path` with its query parameters percent-encoded.
fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let url = Url::parse_with_params(&format!("http://x{path}"), params).expect("url");
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// Names of a list's items, in order.
fn names(list: &Value) -> Vec<String> {
    let items = list["items"].as_array().unwrap_or_else(|| panic!("items in {list}"));
    items.iter().map(|item| item["metadata"]["name"].as_str().expect("name").to_owned()).collect()
}

fn cluster_path(object: &Value) -> String {
    format!("/api/v1/clusters/{}", uid(object))
}

// ---- generation and resourceVersion ----

#[tokio::test]
async fn a_put_of_the_same_manifest_changes_neither_generation_nor_resource_version() {
    let api = TestApi::start().await;
    let manifest = json!({"metadata": {"name": "dev", "labels": {"team": "a"}},
        "spec": {"platform": {"type": "gcp", "region": "eu"}}});
    let (_, created) = api.post("/api/v1/clusters", &manifest).await;

    let (status, same_manifest) = api.put(&cluster_path(&created), &manifest).await;
    let (status_echo, echoed) = api.put(&cluster_path(&created), &created).await;

    assert_eq!(status, StatusCode::OK, "{same_manifest}");
    assert_eq!(status_echo, StatusCode::OK, "{echoed}");
    for body in [&same_manifest, &echoed] {
        assert_eq!(generation(body), 1);
        assert_eq!(resource_version(body), resource_version(&created));
    }
}

#[tokio::test]
async fn a_label_only_change_bumps_resource_version_but_not_generation() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;

    let (status, labelled) = api.merge(&cluster_path(&created), &json!({"metadata": {"labels": {"team": "a"}}})).await;

    assert_eq!(status, StatusCode::OK, "{labelled}");
    assert_eq!(labelled["metadata"]["labels"], json!({"team": "a"}));
    assert_eq!(generation(&labelled), 1);
    assert!(resource_version(&labelled) > resource_version(&created));
}

#[tokio::test]
async fn merge_and_json_patches_each_change_the_spec_and_bump_generation() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;
    let path = cluster_path(&created);

    let (merge_status, merged) = api.merge(&path, &json!({"spec": {"platform": {"region": "eu"}}})).await;
    let ops = json!([{"op": "replace", "path": "/spec/platform/region", "value": "us"},
        {"op": "add", "path": "/spec/release", "value": {"version": "1.2.3"}}]);
    let (json_status, patched) = api.patch(&path, JSON_PATCH, &ops).await;

    assert_eq!(merge_status, StatusCode::OK, "{merged}");
    assert_eq!(merged["spec"]["platform"], json!({"type": "gcp", "region": "eu"}));
    assert_eq!(generation(&merged), 2);
    assert!(resource_version(&merged) > resource_version(&created));
    assert_eq!(json_status, StatusCode::OK, "{patched}");
    assert_eq!(patched["spec"], json!({"platform": {"type": "gcp", "region": "us"}, "release": {"version": "1.2.3"}}));
    assert_eq!(generation(&patched), 3);
    assert!(resource_version(&patched) > resource_version(&merged));
}

// ---- preconditions ----

#[tokio::test]
async fn a_put_or_a_merge_patch_carrying_a_stale_resource_version_gets_409_conflict_and_changes_nothing() {
    let api = TestApi::start().await;
    let stale = api.create_cluster("dev", "gcp").await;
    let (_, current) = api.merge(&cluster_path(&stale), &json!({"metadata": {"labels": {"v": "2"}}})).await;
    let mut update = stale.clone();
    update["spec"]["platform"]["region"] = json!("eu");
    let patch = json!({"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"], "labels": {"v": "3"}}});

    let (put_status, put_body) = api.put(&cluster_path(&stale), &update).await;
    let (patch_status, patch_body) = api.merge(&cluster_path(&stale), &patch).await;

    assert_status(put_status, &put_body, 409, "Conflict");
    assert_status(patch_status, &patch_body, 409, "Conflict");
    let (_, after) = api.get(&cluster_path(&stale)).await;
    assert_eq!(resource_version(&after), resource_version(&current));
    assert_eq!(generation(&after), 1);
    assert_eq!(after["spec"], json!({"platform": {"type": "gcp"}}));
    assert_eq!(after["metadata"]["labels"], json!({"v": "2"}));
}

// ---- server-owned fields ----

fn with_server_owned_fields(mut object: Value) -> Value {
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!("00000000-0000-4000-8000-000000000001");
    metadata["generation"] = json!(42);
    metadata["creationTimestamp"] = json!("2000-01-01T00:00:00Z");
    metadata["deletionTimestamp"] = json!("2000-01-02T00:00:00Z");
    object["status"] = json!({"phase": "Ready", "observedGeneration": 42,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Faked"}]});
    object
}

fn assert_server_owned_fields_untouched(object: &Value, uid_before: Option<&str>) {
    assert_ne!(object["metadata"]["uid"], "00000000-0000-4000-8000-000000000001", "{object}");
    if let Some(before) = uid_before {
        assert_eq!(object["metadata"]["uid"], before);
    }
    assert_eq!(generation(object), 1, "{object}");
    assert_ne!(object["metadata"]["creationTimestamp"], "2000-01-01T00:00:00Z");
    assert!(object["metadata"].get("deletionTimestamp").is_none(), "{object}");
    assert_ne!(object["status"]["phase"], "Ready", "{object}");
    assert!(object["status"].get("observedGeneration").is_none(), "{object}");
    assert_eq!(common::condition(object, "Ready")["status"], "False");
}

#[tokio::test]
async fn server_owned_fields_sent_on_create_are_ignored_not_rejected() {
    let api = TestApi::start().await;
    let mut manifest =
        with_server_owned_fields(json!({"metadata": {"name": "dev"}, "spec": {"platform": {"type": "gcp"}}}));
    manifest["metadata"]["resourceVersion"] = json!("999");

    let (status, created) = api.post("/api/v1/clusters", &manifest).await;

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_server_owned_fields_untouched(&created, None);
    assert_ne!(resource_version(&created), 999);
    let (_, read) = api.get(&cluster_path(&created)).await;
    assert_server_owned_fields_untouched(&read, Some(&uid(&created)));
}

#[tokio::test]
async fn server_owned_fields_sent_on_put_and_patch_are_ignored_not_rejected() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;
    let mut update = with_server_owned_fields(created.clone());
    update["metadata"]["labels"] = json!({"team": "a"});

    let (put_status, replaced) = api.put(&cluster_path(&created), &update).await;
    let patch = with_server_owned_fields(json!({"metadata": {}}));
    let (patch_status, patched) = api.merge(&cluster_path(&created), &patch).await;

    assert_eq!(put_status, StatusCode::OK, "{replaced}");
    assert_server_owned_fields_untouched(&replaced, Some(&uid(&created)));
    assert_eq!(replaced["metadata"]["labels"], json!({"team": "a"}));
    assert_eq!(patch_status, StatusCode::OK, "{patched}");
    assert_server_owned_fields_untouched(&patched, Some(&uid(&created)));
    assert_eq!(resource_version(&patched), resource_version(&replaced), "a patch of server-owned fields is a no-op");
}

// ---- errors ----

#[tokio::test]
async fn malformed_json_and_malformed_yaml_get_400_bad_request() {
    let api = TestApi::start().await;

    let (status, body) = api.post_raw("/api/v1/clusters", "application/json", "{\"metadata\": {\"name\": ").await;
    let (yaml_status, yaml) = api.post_raw("/api/v1/clusters", "application/yaml", "metadata: [name: dev\n  - :").await;

    assert_status(status, &body, 400, "BadRequest");
    assert_status(yaml_status, &yaml, 400, "BadRequest");
}

#[tokio::test]
async fn a_yaml_manifest_is_accepted_on_post() {
    let api = TestApi::start().await;
    let yaml = "apiVersion: cls.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: dev\n  labels:\n    team: a\n\
                spec:\n  platform:\n    type: local\n";

    let (status, created) = api.post_raw("/api/v1/clusters", "application/yaml", yaml).await;

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["name"], "dev");
    assert_eq!(created["metadata"]["labels"], json!({"team": "a"}));
    assert_eq!(created["spec"], json!({"platform": {"type": "local"}}));
}

#[tokio::test]
async fn an_invalid_service_gets_422_naming_every_failing_field() {
    let api = TestApi::start().await;
    api.create_cluster("dev", "local").await;
    let service = json!({"metadata": {"name": "Bad_Name"},
        "spec": {"clusterRef": {"name": "dev"}, "replicas": -1, "ports": [{"port": 70000}]}});

    let (status, body) = api.post("/api/v1/services", &service).await;

    assert_status(status, &body, 422, "Invalid");
    assert_eq!(cause_fields(&body), ["metadata.name", "spec.ports[0].port", "spec.replicas", "spec.run"]);
    assert_eq!(body["details"]["kind"], "Service");
}

#[tokio::test]
async fn an_unknown_uid_or_a_non_uuid_cluster_id_gets_404_not_found() {
    let api = TestApi::start().await;

    let (unknown_status, unknown) = api.get("/api/v1/clusters/6f1c7a52-8d0e-4b8a-9c39-0d1f2e3a4b5c").await;
    let (non_uuid_status, non_uuid) = api.get("/api/v1/clusters/not-a-uuid").await;

    assert_status(unknown_status, &unknown, 404, "NotFound");
    assert_status(non_uuid_status, &non_uuid, 404, "NotFound");
}

#[tokio::test]
async fn a_duplicate_name_gets_409_already_exists_but_the_same_name_in_another_namespace_is_fine() {
    let api = TestApi::start().await;
    api.create_cluster("dev", "gcp").await;

    let (duplicate_status, duplicate) = api.post("/api/v1/clusters", &cluster_in("default", "dev")).await;
    let (other_status, other) = api.post("/api/v1/clusters", &cluster_in("other", "dev")).await;

    assert_status(duplicate_status, &duplicate, 409, "AlreadyExists");
    assert_eq!(other_status, StatusCode::CREATED, "{other}");
    assert_eq!(other["metadata"]["namespace"], "other");
}

fn cluster_in(namespace: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace}, "spec": {"platform": {"type": "gcp"}}})
}

#[tokio::test]
async fn a_body_over_3_mib_gets_413_request_entity_too_large() {
    let api = TestApi::start().await;
    let huge = "x".repeat(3 * 1024 * 1024 + 1);
    let manifest =
        json!({"metadata": {"name": "big", "annotations": {"a": huge}}, "spec": {"platform": {"type": "gcp"}}});

    let (status, body) = api.post_raw("/api/v1/clusters", "application/json", manifest.to_string()).await;

    assert_status(status, &body, 413, "RequestEntityTooLarge");
}

#[tokio::test]
async fn an_unknown_plural_gets_404_and_a_wrong_method_gets_405_with_a_status_body() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;

    let (plural_status, plural) = api.get("/api/v1/pods").await;
    let (method_status, method) = api.post(&cluster_path(&created), &json!({})).await;

    assert_status(plural_status, &plural, 404, "NotFound");
    assert_status(method_status, &method, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn a_strategic_merge_patch_gets_415_unsupported_media_type() {
    let api = TestApi::start().await;
    let created = api.create_cluster("dev", "gcp").await;
    let patch = json!({"metadata": {"labels": {"a": "b"}}});

    let (status, body) = api.patch(&cluster_path(&created), "application/strategic-merge-patch+json", &patch).await;

    assert_status(status, &body, 415, "UnsupportedMediaType");
}

#[tokio::test]
async fn annotations_over_256_kib_in_total_get_422() {
    let api = TestApi::start().await;
    let half = "x".repeat(128 * 1024);
    let manifest = json!({"metadata": {"name": "dev", "annotations": {"a": half, "b": half}},
        "spec": {"platform": {"type": "gcp"}}});

    let (status, body) = api.post("/api/v1/clusters", &manifest).await;

    assert_status(status, &body, 422, "Invalid");
    assert_eq!(cause_fields(&body), ["metadata.annotations"]);
}

#[tokio::test]
async fn a_wrong_kind_in_the_body_gets_400() {
    let api = TestApi::start().await;
    let manifest = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service", "metadata": {"name": "dev"},
        "spec": {"platform": {"type": "gcp"}}});

    let (status, body) = api.post("/api/v1/clusters", &manifest).await;

    assert_status(status, &body, 400, "BadRequest");
}

/// One hostile request a line: method, target (`clusters`, `services`, the `cluster`/`service` under test or a new
/// `controller`), content type (`application/` left off; `json`, `yaml`, `merge`) and body, in which the test
/// expands the upper-case placeholders.
const HOSTILE: &str = r#"
POST clusters json []
POST clusters json BRACKETS
POST clusters json {"metadata":{"name":"h"},"spec":{"platform":{"config":JSON_DEEP}}}
POST clusters json INVALID_UTF8
POST clusters yaml YAML_DEEP
PATCH cluster merge {"spec":{"platform":{"config":JSON_DEEP}}}
POST clusters json {"metadata":{"name":"h","labels":{"LONG":"x"}},"spec":{}}
POST clusters json {"metadata":{"name":"LONG"},"spec":{}}
POST clusters json null
POST clusters json "cluster"
POST clusters json {"metadata":{"name":"h"},"spec":{"platform":{"type":"gcp"}},"x":1e999}
POST clusters json {"metadata":[],"spec":{"platform":{"type":"gcp"}}}
POST clusters json {"metadata":{"name":"h"},"spec":[]}
POST clusters json {"metadata":{"name":"h"},"spec":{"platform":[]}}
POST clusters json {"metadata":null,"spec":null}
POST clusters json {"metadata":{"name":null},"spec":{"platform":null}}
POST clusters json {"metadata":{"name":"h","labels":{"a":null}},"spec":{}}
POST clusters json {"metadata":{"name":"h","labels":["a"]},"spec":{}}
POST clusters json {"metadata":{"name":"h","labels":{"-bad":"x"}},"spec":{}}
POST clusters json {"metadata":{"name":"h","labels":{"a/b/c":"x"}},"spec":{}}
POST clusters json {"metadata":{"name":"h","labels":{"":"x"}},"spec":{}}
POST clusters json {"metadata":{"name":"h","labels":{"app":"ünïcødé"}},"spec":{}}
POST clusters json {"metadata":{"name":"ünïcødé"},"spec":{"platform":{"type":"gcp"}}}
POST clusters json {"metadata":{"name":"名前🚀"},"spec":{"platform":{"type":"gcp"}}}
POST clusters json {"metadata":{"name":"a\u0000b"},"spec":{"platform":{"type":"gcp"}}}
POST clusters json {"metadata":{"name":"h"},"spec":{"platform":{"type":"GCP☃"}}}
POST clusters json {"metadata":{"name":"h"},"spec":{"platform":{"type":"gcp","region":"eu\u0000west"}}}
POST clusters json {"metadata":{"name":"h","annotations":{"a":"\u0000"}},"spec":{"platform":{"type":"gcp"}}}
POST clusters yaml {metadata: !!binary AAAA, spec: {platform: {type: gcp}}}
POST clusters yaml {a: &a [x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], g: [*f,*f,*f,*f,*f,*f,*f,*f,*f]}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"image":"x","replicas":123456789012345678901234567890}}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"image":"x","replicas":1.5}}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"image":"x","ports":[{"port":18446744073709551616}]}}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"image":"x","ports":{"port":80}}}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"image":"x","dependsOn":[null,{}]}}
POST services json {"metadata":{"name":"h"},"spec":{"clusterRef":{"name":"dev"},"run":{"command":["sleep\u0000"]}}}
PUT cluster json {"spec":[]}
PUT cluster json {"metadata":{"name":"other"},"spec":{"platform":{"type":"gcp"}}}
PUT cluster json {"metadata":{"resourceVersion":"abc"},"spec":{"platform":{"type":"gcp"}}}
PUT cluster json {"metadata":{"resourceVersion":"99999999999999999999999"},"spec":{"platform":{"type":"gcp"}}}
PUT cluster json {"kind":5,"spec":{"platform":{"type":"gcp"}}}
PUT cluster json {"metadata":{"annotations":{"a":"\u0000"}},"spec":{"platform":{"type":"gcp"}}}
PUT service json {"spec":{"clusterRef":{"name":"dev"},"image":"x","replicas":"many"}}
PUT service json {"spec":{"clusterRef":null,"run":{"command":[1,2]}}}
PATCH cluster merge []
PATCH cluster merge null
PATCH cluster merge {"spec":null}
PATCH cluster merge {"spec":[]}
PATCH cluster merge {"metadata":{"labels":{"bad key":"x"}}}
PATCH cluster merge {"metadata":{"annotations":{"a":"\u0000"}}}
PUT controller json {"spec":{"kinds":["Pod"],"platforms":["GCP"]}}
PUT controller json {"spec":{"kinds":["Cluster"],"description":"\u0000"}}
PATCH service merge {"spec":{"replicas":-5,"ports":[{"port":-1,"protocol":"SCTP"}]}}
PATCH cluster json-patch+json [{"op":"test","path":"/spec/platform/type","value":"aws"}]
PATCH cluster json-patch+json [{"op":"remove","path":"/metadata"}]
PATCH cluster json-patch+json [{"op":"replace","path":"","value":[]}]
PATCH cluster json-patch+json [{"op":"remove","path":"/spec/nothing/here"}]
PATCH cluster json-patch+json [{"op":"frobnicate","path":"/spec"}]
PATCH cluster json-patch+json {"op":"remove","path":"/spec"}
PATCH cluster json-patch+json [{"op":"replace","path":"/metadata/labels","value":[1]}]
PATCH cluster apply-patch+yaml spec: {}
"#;

#[tokio::test]
async fn hostile_inputs_get_4xx_status_bodies_never_5xx_and_change_nothing() {
    let api = TestApi::start().await;
    let labelled = json!({"metadata": {"name": "dev", "labels": {"team": "a"}, "annotations": {"note": "keep"}},
        "spec": {"platform": {"type": "gcp"}}});
    let (_, dev) = api.post("/api/v1/clusters", &labelled).await;
    let web = api.create_service("web", "dev").await;
    let nested = format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let expand = |body: &str| match body {
        "INVALID_UTF8" => b"{\"metadata\":\xff\xfe}".to_vec(),
        _ => body
            .replace("BRACKETS", &"[".repeat(100_000))
            .replace("YAML_DEEP", &format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)))
            .replace("JSON_DEEP", &nested)
            .replace("LONG", &"k".repeat(64))
            .into_bytes(),
    };
    let requests = HOSTILE.lines().filter(|line| !line.is_empty()).map(|line| {
        let mut parts = line.splitn(4, ' ').map(str::to_owned);
        let mut next = || parts.next().expect("method, target, content type and body");
        (next(), next(), next(), expand(&next()))
    });

    let mut failures = Vec::new();
    for (method, target, kind, body) in requests {
        let path = match target.as_str() {
            "cluster" => cluster_path(&dev),
            "service" => format!("/api/v1/services/{}", uid(&web)),
            "controller" => "/api/v1/controllers/hostile".to_owned(),
            plural => format!("/api/v1/{plural}"),
        };
        let content_type = match kind.as_str() {
            "json" => "application/json".to_owned(),
            "yaml" => "application/yaml".to_owned(),
            "merge" => "application/merge-patch+json".to_owned(),
            other => format!("application/{other}"),
        };
        let shown: String = String::from_utf8_lossy(&body).chars().take(100).collect();
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (status, answer) = send_raw(&api, method.clone(), &path, &content_type, body).await;
        let is_status =
            answer["kind"] == "Status" && answer["status"] == "Failure" && answer["code"] == status.as_u16();
        if !status.is_client_error() || !is_status {
            failures.push(format!("{method} {target} ({kind}) {shown} -> {status} {answer}"));
        }
    }

    let (_, cluster_after) = api.get(&cluster_path(&dev)).await;
    if cluster_after["metadata"] != dev["metadata"] {
        failures.push(format!("the Cluster changed: {} became {}", dev["metadata"], cluster_after["metadata"]));
    }
    let (_, service_after) = api.get(&format!("/api/v1/services/{}", uid(&web))).await;
    if service_after["metadata"] != web["metadata"] {
        failures.push(format!("the Service changed: {} became {}", web["metadata"], service_after["metadata"]));
    }
    let (_, clusters) = api.get("/api/v1/clusters").await;
    if names(&clusters) != ["dev"] {
        failures.push(format!("Clusters were created: {:?}", names(&clusters)));
    }
    assert!(failures.is_empty(), "hostile inputs that were not refused with a 4xx Status:\n{}", failures.join("\n"));
}

// ---- the Service's Cluster ----

#[tokio::test]
async fn a_service_must_reference_an_existing_cluster_in_its_own_namespace() {
    let api = TestApi::start().await;
    api.post("/api/v1/clusters", &cluster_in("other", "dev")).await;
    let service = |namespace: &str| {
        json!({"metadata": {"name": "web", "namespace": namespace},
            "spec": {"clusterRef": {"name": "dev"}, "image": "nginx"}})
    };

    let (missing_status, missing) = api.post("/api/v1/services", &service("default")).await;
    let (same_status, same) = api.post("/api/v1/services", &service("other")).await;

    assert_status(missing_status, &missing, 422, "Invalid");
    assert_eq!(cause_fields(&missing), ["spec.clusterRef.name"]);
    assert_eq!(same_status, StatusCode::CREATED, "{same}");
}

#[tokio::test]
async fn a_service_gets_a_controller_owner_reference_to_its_cluster() {
    let api = TestApi::start().await;
    let cluster = api.create_cluster("dev", "local").await;

    let service = api.create_service("web", "dev").await;

    let references = service["metadata"]["ownerReferences"].as_array().expect("ownerReferences");
    assert_eq!(references.len(), 1, "{service}");
    assert_eq!(references[0]["kind"], "Cluster");
    assert_eq!(references[0]["name"], "dev");
    assert_eq!(references[0]["uid"], cluster["metadata"]["uid"]);
    assert_eq!(references[0]["controller"], true);
}

#[tokio::test]
async fn a_services_cluster_ref_name_and_a_clusters_platform_type_are_immutable() {
    let api = TestApi::start().await;
    let cluster = api.create_cluster("dev", "local").await;
    api.create_cluster("prod", "local").await;
    let service = api.create_service("web", "dev").await;
    let mut moved = service.clone();
    moved["spec"]["clusterRef"]["name"] = json!("prod");

    let (service_status, service_body) = api.put(&format!("/api/v1/services/{}", uid(&service)), &moved).await;
    let replatform = json!({"spec": {"platform": {"type": "aws"}}});
    let (cluster_status, cluster_body) = api.merge(&cluster_path(&cluster), &replatform).await;

    assert_status(service_status, &service_body, 422, "Invalid");
    assert_eq!(cause_fields(&service_body), ["spec.clusterRef.name"]);
    assert_status(cluster_status, &cluster_body, 422, "Invalid");
    assert_eq!(cause_fields(&cluster_body), ["spec.platform.type"]);
    let (_, cluster_after) = api.get(&cluster_path(&cluster)).await;
    assert_eq!(cluster_after["spec"]["platform"]["type"], "local");
}

// ---- lists ----

#[tokio::test]
async fn a_list_has_the_kubernetes_list_shape_and_filters_by_namespace() {
    let api = TestApi::start().await;
    api.post("/api/v1/clusters", &cluster_in("default", "a")).await;
    api.post("/api/v1/clusters", &cluster_in("other", "b")).await;

    let (status, all) = api.get("/api/v1/clusters").await;
    let (_, other) = api.get("/api/v1/clusters?namespace=other").await;

    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["apiVersion"], "cls.dev/v1alpha1");
    assert_eq!(all["kind"], "ClusterList");
    assert!(all["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv.parse::<i64>().is_ok()), "{all}");
    assert_eq!(names(&all), ["a", "b"]);
    for item in all["items"].as_array().expect("items") {
        assert_eq!(item["apiVersion"], "cls.dev/v1alpha1");
        assert_eq!(item["kind"], "Cluster");
    }
    assert_eq!(names(&other), ["b"]);
}

#[tokio::test]
async fn label_selectors_filter_with_every_operator() {
    let api = TestApi::start().await;
    for (name, labels) in [
        ("a", json!({"env": "prod", "tier": "web"})),
        ("b", json!({"env": "dev", "tier": "db"})),
        ("c", json!({"env": "staging"})),
        ("d", json!({})),
    ] {
        let manifest = json!({"metadata": {"name": name, "labels": labels}, "spec": {"platform": {"type": "gcp"}}});
        assert_eq!(api.post("/api/v1/clusters", &manifest).await.0, StatusCode::CREATED);
    }
    let cases: [(&str, &[&str]); 8] = [
        ("env=prod", &["a"]),
        ("env==prod", &["a"]),
        ("env!=prod", &["b", "c", "d"]),
        ("env in (prod,dev)", &["a", "b"]),
        ("env notin (prod,dev)", &["c", "d"]),
        ("tier", &["a", "b"]),
        ("!tier", &["c", "d"]),
        ("env,tier!=db", &["a", "c"]),
    ];

    for (selector, expected) in cases {
        let (status, list) = api.get(&with_query("/api/v1/clusters", &[("labelSelector", selector)])).await;

        assert_eq!(status, StatusCode::OK, "{selector}: {list}");
        assert_eq!(names(&list), expected, "{selector}");
    }
}

#[tokio::test]
async fn a_field_selector_on_metadata_name_works_and_an_unsupported_field_gets_400() {
    let api = TestApi::start().await;
    api.create_cluster("a", "gcp").await;
    api.create_cluster("b", "gcp").await;

    let (_, by_name) = api.get(&with_query("/api/v1/clusters", &[("fieldSelector", "metadata.name=b")])).await;
    let (_, not_name) = api.get(&with_query("/api/v1/clusters", &[("fieldSelector", "metadata.name!=b")])).await;
    let (status, body) = api.get(&with_query("/api/v1/clusters", &[("fieldSelector", "spec.colour=blue")])).await;

    assert_eq!(names(&by_name), ["b"]);
    assert_eq!(names(&not_name), ["a"]);
    assert_status(status, &body, 400, "BadRequest");
}

#[tokio::test]
async fn limit_and_continue_page_through_25_objects_in_namespace_name_order_without_duplicates_or_gaps() {
    let api = TestApi::start().await;
    let mut expected = Vec::new();
    for index in 0..25 {
        // created out of order, across three namespaces
        let (namespace, name) = (["zeta", "alpha", "default"][index % 3], format!("c{:02}", (index * 7) % 25));
        let (status, body) = api.post("/api/v1/clusters", &cluster_in(namespace, &name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        expected.push((namespace.to_owned(), name));
    }
    expected.sort();

    let (mut seen, mut pages, mut token) = (Vec::new(), 0, None::<String>);
    loop {
        let mut params = vec![("limit", "7")];
        if let Some(token) = &token {
            params.push(("continue", token));
        }
        let (status, page) = api.get(&with_query("/api/v1/clusters", &params)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            let metadata = &item["metadata"];
            seen.push((
                metadata["namespace"].as_str().unwrap().to_owned(),
                metadata["name"].as_str().unwrap().to_owned(),
            ));
        }
        match page["metadata"]["continue"].as_str().filter(|token| !token.is_empty()) {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }

    assert_eq!(pages, 4);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_garbage_continue_token_gets_400() {
    let api = TestApi::start().await;

    let (status, body) = api.get("/api/v1/clusters?limit=5&continue=garbage!!token").await;
    let (json_status, json_body) = api.get("/api/v1/clusters?limit=5&continue=e30").await;

    assert_status(status, &body, 400, "BadRequest");
    assert_status(json_status, &json_body, 400, "BadRequest");
}

// ---- controllers ----

#[tokio::test]
async fn a_controller_registers_with_201_heartbeats_with_200_and_can_be_read_and_deleted_by_name() {
    let api = TestApi::start().await;
    let path = "/api/v1/controllers/gke-operator";
    let manifest = json!({"spec": {"kinds": ["Cluster"], "platforms": ["gcp"]}});

    let (created_status, created) = api.put(path, &manifest).await;
    let (beat_status, beat) = api.put(path, &manifest).await;
    let changed = json!({"spec": {"kinds": ["Cluster", "Service"], "platforms": ["gcp"]}});
    let (changed_status, changed) = api.put(path, &changed).await;
    let (read_status, read) = api.get(path).await;
    let (delete_status, _) = api.delete(path).await;
    let (gone_status, gone) = api.get(path).await;

    assert_eq!(created_status, StatusCode::CREATED, "{created}");
    assert_eq!(generation(&created), 1);
    assert!(created["status"]["lastHeartbeatTime"].is_string(), "{created}");
    assert_eq!(beat_status, StatusCode::OK, "{beat}");
    assert!(beat["status"]["lastHeartbeatTime"].is_string(), "{beat}");
    assert_eq!(generation(&beat), 1);
    assert_eq!(changed_status, StatusCode::OK, "{changed}");
    assert_eq!(generation(&changed), 2);
    assert_eq!(read_status, StatusCode::OK, "{read}");
    assert_eq!(read["metadata"]["name"], "gke-operator");
    assert_eq!(read["spec"]["kinds"], json!(["Cluster", "Service"]));
    assert_eq!(delete_status, StatusCode::OK);
    assert_status(gone_status, &gone, 404, "NotFound");
}

// ---- concurrency ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_label_merge_patches_lose_no_update() {
    let api = Arc::new(TestApi::start().await);
    let path = cluster_path(&api.create_cluster("dev", "gcp").await);

    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let (api, path) = (api.clone(), path.clone());
            tokio::spawn(async move {
                api.merge(&path, &json!({"metadata": {"labels": {format!("w{writer}"): "1"}}})).await
            })
        })
        .collect();
    for writer in writers {
        let (status, body) = writer.await.expect("writer");
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (_, after) = api.get(&path).await;
    let labels = after["metadata"]["labels"].as_object().expect("labels");
    assert_eq!(labels.len(), 16, "{after}");
    assert!((0..16).all(|writer| labels.get(&format!("w{writer}")) == Some(&json!("1"))), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_write_puts_with_preconditions_count_every_successful_write() {
    const WRITERS: usize = 16;
    const INCREMENTS: usize = 4;
    let api = Arc::new(TestApi::start().await);
    let path = cluster_path(&api.create_cluster("dev", "gcp").await);

    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (api, path) = (api.clone(), path.clone());
            tokio::spawn(async move {
                let mut successes = 0;
                while successes < INCREMENTS {
                    let (_, mut object) = api.get(&path).await;
                    let count: usize =
                        object["metadata"]["annotations"]["count"].as_str().unwrap_or("0").parse().unwrap();
                    object["metadata"]["annotations"] = json!({"count": (count + 1).to_string()});
                    match api.put(&path, &object).await {
                        (StatusCode::OK, _) => successes += 1,
                        (StatusCode::CONFLICT, body) => assert_eq!(body["reason"], "Conflict", "{body}"),
                        (status, body) => panic!("unexpected {status}: {body}"),
                    }
                }
                successes
            })
        })
        .collect();
    let mut total = 0;
    for writer in writers {
        total += writer.await.expect("writer");
    }

    let (_, after) = api.get(&path).await;
    assert_eq!(total, WRITERS * INCREMENTS);
    assert_eq!(after["metadata"]["annotations"]["count"], json!(total.to_string()));
}
