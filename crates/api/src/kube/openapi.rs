//! OpenAPI v3 for the group, generated from the CRD schemas: `/openapi/v3` lists the group document, whose hash
//! changes with the schema. PATCH operations declare `fieldValidation`, so kubectl leaves validation to the server;
//! component schemas carry `x-kubernetes-group-version-kind`, so `kubectl explain` works. `/openapi/v2` is 404.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use cls_core::{GROUP, Kind, VERSION};
use serde_json::{Map, Value, json};

use crate::http::error::ApiError;

pub(crate) fn component_name(kind: Kind) -> String {
    format!("dev.cls.{VERSION}.{}", kind.as_str())
}

fn gvk(kind: Kind) -> Value {
    json!({"group": GROUP, "version": VERSION, "kind": kind.as_str()})
}

pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

pub(crate) fn object_meta_schema() -> Value {
    let string = json!({"type": "string"});
    let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "description": "Standard object metadata.",
        "type": "object",
        "properties": {
            "name": string, "namespace": string, "uid": string, "resourceVersion": string,
            "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": map, "annotations": map,
            "finalizers": {"type": "array", "items": string},
            "generateName": string, "selfLink": string,
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        },
    })
}

pub(crate) fn kind_schema(kind: Kind) -> Value {
    let mut schema = cls_core::crd::schema(kind);
    let properties = schema["properties"].as_object_mut().expect("schema has properties");
    properties.insert("apiVersion".into(), json!({"type": "string", "description": "cls.dev/v1alpha1"}));
    properties.insert("kind".into(), json!({"type": "string", "description": kind.as_str()}));
    properties.insert("metadata".into(), json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}]}));
    schema["x-kubernetes-group-version-kind"] = json!([gvk(kind)]);
    schema
}

fn reference(kind: Kind) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", component_name(kind))})
}

fn operation(kind: Kind, action: &str, with_body: bool) -> Value {
    let mut parameters = vec![
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}}),
        json!({"name": "fieldManager", "in": "query", "schema": {"type": "string"}}),
    ];
    let mut operation = json!({
        "operationId": format!("{action}{}", kind.as_str()),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference(kind)}}}},
    });
    if action == "patch" {
        parameters.push(json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}));
        parameters.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}}));
        let schema = json!({"schema": {"type": "object"}});
        operation["requestBody"] = json!({"content": {
            "application/json-patch+json": schema, "application/merge-patch+json": schema,
            "application/apply-patch+yaml": schema}});
    } else if with_body {
        parameters.push(json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}));
        operation["requestBody"] = json!({"content": {"application/json": {"schema": reference(kind)}}});
    }
    operation["parameters"] = Value::Array(parameters);
    operation
}

fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        let collection = if kind.namespaced() {
            format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{}", kind.plural())
        } else {
            format!("/apis/{GROUP}/{VERSION}/{}", kind.plural())
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(kind, "list", false), "post": operation(kind, "post", true)}),
        );
        let item = json!({
            "get": operation(kind, "get", false), "put": operation(kind, "put", true),
            "patch": operation(kind, "patch", true), "delete": operation(kind, "delete", false),
        });
        if kind.reconciled() {
            paths.insert(format!("{collection}/{{name}}/status"), item.clone());
        }
        paths.insert(format!("{collection}/{{name}}"), item);
        schemas.insert(component_name(kind), kind_schema(kind));
    }
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    json!({
        "openapi": "3.0.0",
        "info": {"title": "CLS", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

struct Documents {
    group: String,
    hash: String,
}

static DOCUMENTS: LazyLock<Documents> = LazyLock::new(|| {
    let group = document().to_string();
    let mut hasher = DefaultHasher::new();
    group.hash(&mut hasher);
    Documents { group, hash: format!("{:016X}", hasher.finish()) }
});

pub async fn index() -> axum::Json<Value> {
    let url = format!("/openapi/v3/apis/{GROUP}/{VERSION}?hash={}", DOCUMENTS.hash);
    axum::Json(json!({"paths": {format!("apis/{GROUP}/{VERSION}"): {"serverRelativeURL": url}}}))
}

pub async fn group(RawQuery(_query): RawQuery) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENTS.group.clone()).into_response()
}

pub async fn v2() -> ApiError {
    ApiError::not_found("the server could not find the requested resource (OpenAPI v2 is not served; use /openapi/v3)")
}
