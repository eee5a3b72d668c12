//! `/openapi.json`: OpenAPI 3 for the thin REST API `/api/v1`, built from the same schemas as the CRDs.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use cls_core::Kind;
use cls_core::resources::ControllerReport;
use serde_json::{Map, Value, json};

use crate::kube::openapi::{OBJECT_META, component_name, kind_schema, object_meta_schema};

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn status_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference("Status")}}})
}

fn errors(codes: &[(&str, &str)]) -> Map<String, Value> {
    codes.iter().map(|(code, description)| ((*code).to_owned(), status_response(description))).collect()
}

fn object_response(kind: Kind, description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference(&component_name(kind))}}})
}

fn body(kind: Kind) -> Value {
    let schema = reference(&component_name(kind));
    json!({"required": true, "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn operation(summary: String, parameters: Vec<Value>, request: Option<Value>, responses: Map<String, Value>) -> Value {
    let mut operation = json!({"summary": summary, "parameters": parameters, "responses": responses});
    if let Some(request) = request {
        operation["requestBody"] = request;
    }
    operation
}

fn with(mut responses: Map<String, Value>, code: &str, response: Value) -> Map<String, Value> {
    responses.insert(code.to_owned(), response);
    responses
}

fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        let plural = kind.plural();
        let name = kind.as_str();
        let id = if kind == Kind::Controller { "uid or name" } else { "uid" };
        let list_parameters = {
            let mut parameters = vec![
                query("labelSelector", "Kubernetes label selector", json!({"type": "string"})),
                query(
                    "fieldSelector",
                    "metadata.name, metadata.namespace and per-kind fields",
                    json!({"type": "string"}),
                ),
                query("limit", "page size (default 500, at most 1000)", json!({"type": "integer", "minimum": 0})),
                query("continue", "the continue token of the previous page", json!({"type": "string"})),
            ];
            if kind.namespaced() {
                parameters.insert(0, query("namespace", "only this namespace", json!({"type": "string"})));
            }
            parameters
        };
        let list_response = json!({"description": format!("a {}", kind.list_kind()), "content": {"application/json": {
            "schema": {"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object", "properties": {
                    "resourceVersion": {"type": "string"}, "continue": {"type": "string"}}},
                "items": {"type": "array", "items": reference(&component_name(kind))}}}}}});
        let bad = errors(&[
            ("400", "malformed request"),
            ("401", "no valid credentials"),
            ("403", "not allowed for this identity"),
            ("422", "invalid object"),
            ("429", "over the identity's rate limit"),
            ("503", "database unavailable"),
        ]);
        paths.insert(
            format!("/api/v1/{plural}"),
            json!({
                "get": operation(format!("list {plural}"), list_parameters, None, with(bad.clone(), "200", list_response)),
                "post": operation(format!("create a {name}"), vec![], Some(body(kind)),
                    with(with(with(bad.clone(), "201", object_response(kind, "created")), "409", status_response("already exists")),
                         "413", status_response("body over 3 MiB"))),
            }),
        );
        let item_errors = with(
            with(bad.clone(), "404", status_response("not found")),
            "409",
            status_response("stale resourceVersion"),
        );
        let patch_body = json!({"required": true, "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}}});
        let id_parameter = path_parameter("id", id);
        paths.insert(
            format!("/api/v1/{plural}/{{id}}"),
            json!({
                "get": operation(format!("read a {name}"), vec![id_parameter.clone()], None,
                    with(item_errors.clone(), "200", object_response(kind, "the object"))),
                "put": operation(
                    if kind == Kind::Controller { "replace a Controller, or register one by name (heartbeat)".to_owned() }
                    else { format!("replace a {name}") },
                    vec![id_parameter.clone()], Some(body(kind)),
                    with(item_errors.clone(), "200", object_response(kind, "the object"))),
                "patch": operation(format!("patch a {name}"), vec![id_parameter.clone()], Some(patch_body),
                    with(with(item_errors.clone(), "200", object_response(kind, "the object")), "415", status_response("unsupported patch type"))),
                "delete": operation(format!("delete a {name}"),
                    vec![id_parameter.clone(), query("force", "remove at once, finalizers or not", json!({"type": "boolean"}))],
                    None, with(item_errors.clone(), "200", object_response(kind, "the object as last stored"))),
            }),
        );
        if kind.reconciled() {
            let report =
                json!({"required": true, "content": {"application/json": {"schema": reference("ControllerReport")}}});
            paths.insert(
                format!("/api/v1/{plural}/{{id}}/status"),
                json!({
                    "get": operation(format!("read a {name} with its aggregated status"), vec![id_parameter.clone()], None,
                        with(item_errors.clone(), "200", object_response(kind, "the object"))),
                    "put": operation("report a controller's status".to_owned(), vec![id_parameter], Some(report),
                        with(item_errors, "200", object_response(kind, "the object with the new aggregate"))),
                }),
            );
        }
        schemas.insert(component_name(kind), kind_schema(kind));
    }
    admin_paths(&mut paths);
    for (path, summary) in [("/healthz", "the process lives"), ("/readyz", "the database answers")] {
        paths.insert(
            path.to_owned(),
            json!({"get": {"summary": summary, "security": [], "responses": {
            "200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "503": status_response("not ready")}}}),
        );
    }
    let (report, definitions) = openapi_schema::<ControllerReport>();
    schemas.insert("ControllerReport".into(), report);
    schemas.extend(definitions);
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    schemas.insert(
        "Status".into(),
        json!({"type": "object", "description": "a Kubernetes Status (every error)",
        "properties": {"kind": {"type": "string"}, "apiVersion": {"type": "string"}, "status": {"type": "string"},
                       "message": {"type": "string"}, "reason": {"type": "string"}, "code": {"type": "integer"},
                       "details": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
    );
    for schema in schemas.values_mut() {
        to_openapi_3_0(schema);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "CLS thin REST API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}

/// Tokens and the audit log (admins only).
fn admin_paths(paths: &mut Map<String, Value>) {
    let denied = errors(&[
        ("400", "malformed request"),
        ("401", "no valid credentials"),
        ("403", "admins only"),
        ("503", "database unavailable"),
    ]);
    let listed =
        |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"type": "object"}}}});
    let token_request = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
            "name": {"type": "string"},
            "role": {"type": "string", "description": "admin, editor, viewer or controller:NAME"},
            "namespaces": {"type": "array", "items": {"type": "string"}}}}}}});
    paths.insert(
        "/api/v1/tokens".into(),
        json!({
            "get": operation("list tokens (never their secrets)".into(), vec![], None, with(denied.clone(), "200", listed("a TokenList"))),
            "post": operation("create a token; the answer holds its secret, this once".into(), vec![], Some(token_request),
                with(with(with(denied.clone(), "201", listed("the token and its secret")), "409", status_response("name taken")),
                     "422", status_response("invalid name, role or namespace"))),
        }),
    );
    paths.insert(
        "/api/v1/tokens/{id}".into(),
        json!({"delete": operation("revoke a token".into(), vec![path_parameter("id", "name or id")], None,
            with(with(denied.clone(), "200", listed("the revoked token")), "404", status_response("no such token")))}),
    );
    paths.insert(
        "/api/v1/audit".into(),
        json!({"get": operation("audit records, oldest first".into(), vec![
                query("limit", "page size (default 500, at most 1000)", json!({"type": "integer", "minimum": 0})),
                query("continue", "the continue token of the previous page", json!({"type": "string"}))],
            None, with(denied, "200", listed("an AuditList")))}),
    );
}

/// Rewrites JSON Schema 2020 forms OpenAPI 3.0 does not know: `"type": [T, "null"]` becomes `"type": T,
/// "nullable": true`, and `const` becomes a one-value `enum`.
fn to_openapi_3_0(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            if let Some(Value::Array(types)) = fields.get("type").cloned() {
                let concrete: Vec<Value> = types.iter().filter(|type_| *type_ != "null").cloned().collect();
                if concrete.len() == 1 {
                    fields.insert("type".into(), concrete[0].clone());
                    if concrete.len() < types.len() {
                        fields.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
            if let Some(constant) = fields.remove("const") {
                fields.insert("enum".into(), Value::Array(vec![constant]));
            }
            fields.values_mut().for_each(to_openapi_3_0);
        }
        Value::Array(items) => items.iter_mut().for_each(to_openapi_3_0),
        _ => {}
    }
}

/// The OpenAPI 3.0 schema of `T` and the schemas it refers to (for `components.schemas`).
fn openapi_schema<T: schemars::JsonSchema>() -> (Value, Map<String, Value>) {
    let generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<T>()).expect("schema serializes");
    let fields = schema.as_object_mut().expect("a schema object");
    fields.remove("$schema");
    let definitions = fields
        .remove("components")
        .and_then(|mut components| components.get_mut("schemas").map(Value::take))
        .and_then(|schemas| schemas.as_object().cloned())
        .unwrap_or_default();
    (schema, definitions)
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_to_a_component() {
        let document = document();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        assert!(document["paths"]["/api/v1/clusters/{id}/status"]["put"].is_object());
        assert!(document["paths"].get("/api/v1/controllers/{id}/status").is_none());
    }
}
