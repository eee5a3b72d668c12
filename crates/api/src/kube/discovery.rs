//! Discovery: `/version`, `/api`, `/api/v1`, `/apis` (plain `APIGroupList` or aggregated v2, chosen by `Accept`) and
//! `/apis/cls.dev/v1alpha1`.

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use cls_core::{GROUP, Kind, VERSION};
use serde_json::{Value, json};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers.get(ACCEPT).and_then(|accept| accept.to_str().ok()).is_some_and(|accept| {
        accept.split(',').any(|media| {
            media.contains("as=APIGroupDiscoveryList") && media.contains("v=v2") && !media.contains("v2beta1")
        })
    })
}

fn aggregated(body: Value) -> Response {
    ([(CONTENT_TYPE, AGGREGATED)], body.to_string()).into_response()
}

fn verbs() -> Value {
    json!(["create", "delete", "get", "list", "patch", "update", "watch"])
}

fn scope(kind: Kind) -> &'static str {
    if kind.namespaced() { "Namespaced" } else { "Cluster" }
}

pub async fn version() -> axum::Json<Value> {
    axum::Json(json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "cls",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0",
        "compiler": "gc", "platform": "linux/amd64",
        "cls": env!("CARGO_PKG_VERSION"),
    }))
}

pub async fn core_versions(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated(json!({
            "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": [{"metadata": {"name": ""}, "versions": [{"version": "v1", "resources": [], "freshness": "Current"}]}],
        }));
    }
    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}))
    .into_response()
}

pub async fn core_resources() -> axum::Json<Value> {
    axum::Json(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": []}))
}

pub async fn groups(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        let resources: Vec<Value> = Kind::ALL
            .into_iter()
            .map(|kind| {
                let response_kind = json!({"group": GROUP, "version": VERSION, "kind": kind.as_str()});
                // a Controller's status is its heartbeat, written through its registration, not a subresource
                let subresources = if kind.reconciled() {
                    json!([{"subresource": "status", "responseKind": response_kind, "verbs": ["get", "patch", "update"]}])
                } else {
                    json!([])
                };
                json!({
                    "resource": kind.plural(), "singularResource": kind.singular(), "scope": scope(kind),
                    "responseKind": response_kind, "verbs": verbs(), "shortNames": kind.short_names(),
                    "categories": ["cls"], "subresources": subresources,
                })
            })
            .collect();
        return aggregated(json!({
            "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": [{"metadata": {"name": GROUP, "creationTimestamp": null},
                       "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}]}],
        }));
    }
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1",
        "groups": [{"name": GROUP, "versions": [version], "preferredVersion": version}]}))
    .into_response()
}

pub async fn group_resources() -> axum::Json<Value> {
    let mut resources = Vec::new();
    for kind in Kind::ALL {
        resources.push(json!({
            "name": kind.plural(), "singularName": kind.singular(), "namespaced": kind.namespaced(),
            "kind": kind.as_str(), "verbs": verbs(), "shortNames": kind.short_names(), "categories": ["cls"],
        }));
        if kind.reconciled() {
            resources.push(json!({
                "name": format!("{}/status", kind.plural()), "singularName": "", "namespaced": kind.namespaced(),
                "kind": kind.as_str(), "verbs": ["get", "patch", "update"],
            }));
        }
    }
    axum::Json(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"), "resources": resources}))
}
