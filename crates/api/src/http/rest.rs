//! The thin REST API, `/api/v1`: the same objects as the Kubernetes group, addressed by uid (Controllers also by
//! name), with the same `Status` errors.

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cls_core::Kind;
use cls_core::access::Identity;
use cls_core::manifest::{self, Expect, Manifest};
use cls_core::resources::ControllerReport;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::body::Body;
use super::error::{ApiError, ApiResult};
use super::guard::{AuditNote, denied, seen, visible};
use super::query::Params;
use crate::store::{Change, ListJson, ObjectJson, ObjectKey, StoredObject};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/{plural}", get(list).post(create))
        .route("/api/v1/{plural}/{id}", get(read).put(replace).patch(patch).delete(delete))
        .route("/api/v1/{plural}/{id}/status", get(read_status).put(report))
}

fn kind_of(plural: &str) -> ApiResult<Kind> {
    Kind::from_plural(plural)
        .ok_or_else(|| ApiError::not_found(format!("the server could not find the requested resource ({plural})")))
}

/// Clusters and Services are addressed by uid; Controllers by uid or name.
fn key_of(kind: Kind, id: &str) -> ApiResult<ObjectKey> {
    match Uuid::parse_str(id) {
        Ok(uid) => Ok(ObjectKey::Uid(uid)),
        Err(_) if kind == Kind::Controller => Ok(ObjectKey::name("", id)),
        Err(_) => Err(ApiError::object_not_found(kind, id)),
    }
}

fn object(code: StatusCode, object: &StoredObject) -> Response {
    (code, axum::Json(object)).into_response()
}

/// A GET's 200 answer: the object's JSON as the store rendered it.
pub(crate) fn object_json(object: ObjectJson) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], object.body).into_response()
}

/// Parses a manifest for `kind`, 400/422 as it deserves.
pub fn parse_manifest(kind: Kind, document: Value, expect: Expect<'_>) -> ApiResult<Manifest> {
    manifest::parse(kind, document, expect).map_err(|error| ApiError::from_manifest(kind, error))
}

async fn list(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(plural): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let mut query = Params::parse(raw.as_deref())?.list_query(kind)?;
    query.visible_namespaces = identity.visible_namespaces(kind).map(|namespaces| namespaces.iter().cloned().collect());
    query.feed_cursor = state.feed_cursor();
    Ok(list_json(kind, state.store.list_json(kind, &query).await?))
}

/// A Kubernetes list of `kind` from JSON items: `{"apiVersion", "kind", "metadata", "items"}`, as [`ListBody`]
/// serializes it, with the items' text copied as it is.
pub(crate) fn list_json(kind: Kind, page: ListJson) -> Response {
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    let empty = ListBody { api_version: cls_core::API_VERSION, kind: kind.list_kind(), metadata, items: &[] };
    let mut body = serde_json::to_vec(&empty).expect("values serialize");
    // `...,"items":[]}` without its `]}`: the items go there
    body.truncate(body.len() - 2);
    body.reserve(page.items.iter().map(|item| item.len() + 1).sum::<usize>() + 2);
    for (index, item) in page.items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

async fn create(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(plural): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let manifest = parse_manifest(kind, body.document()?, Expect::default())?;
    note.creating(manifest.namespace.as_deref(), &manifest.name);
    let namespace = manifest.namespace.as_deref().unwrap_or_default();
    identity.may_create(kind, namespace).map_err(|denial| denied(denial, kind, &manifest.name))?;
    let created = state.store.create(&manifest).await?;
    note.after(&created);
    Ok(object(StatusCode::CREATED, &created))
}

async fn read(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path((plural, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let found = state.store.get_json(kind, &key_of(kind, &id)?).await?;
    if !identity.sees(kind, &found.namespace) {
        return Err(ApiError::object_not_found(kind, &found.name));
    }
    Ok(object_json(found))
}

async fn replace(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path((plural, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let document = body.document()?;
    if kind == Kind::Controller && Uuid::parse_str(&id).is_err() {
        // register or heartbeat
        identity.may_register(&id).map_err(|denial| denied(denial, kind, &id))?;
        let manifest = parse_manifest(kind, document, Expect { name: Some(&id), namespace: None })?;
        let (registered, change) = state.store.register_controller(&manifest).await?;
        note.after(&registered);
        let code = if change == Change::Created { StatusCode::CREATED } else { StatusCode::OK };
        return Ok(object(code, &registered));
    }
    let (updated, _) = state
        .store
        .update(kind, &key_of(kind, &id)?, |current| {
            note.before(current);
            seen(&identity, current)?;
            let expect = Expect { name: Some(&current.name), namespace: Some(&current.namespace) };
            let desired = parse_manifest(kind, document.clone(), expect)?;
            may_update(&identity, current, &desired)?;
            Ok::<_, ApiError>(desired)
        })
        .await??;
    note.after(&updated);
    Ok(object(StatusCode::OK, &updated))
}

async fn patch(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path((plural, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let patch = Patch::parse(&body)?;
    let (updated, _) = state
        .store
        .update(kind, &key_of(kind, &id)?, |current| {
            note.before(current);
            seen(&identity, current)?;
            let patched = patch.apply(current.to_json())?;
            let expect = Expect { name: Some(&current.name), namespace: Some(&current.namespace) };
            let desired = parse_manifest(kind, patched, expect)?;
            may_update(&identity, current, &desired)?;
            Ok::<_, ApiError>(desired)
        })
        .await??;
    note.after(&updated);
    Ok(object(StatusCode::OK, &updated))
}

/// Whether `identity` may turn `current` into `desired` (404 when it does not see it, 403 when it may not).
pub fn may_update(identity: &Identity, current: &StoredObject, desired: &Manifest) -> ApiResult<()> {
    if desired.resource_version.is_some_and(|version| version != current.resource_version) {
        // stale: the store answers 409 (and stores nothing), so that a controller re-reads rather than giving up
        return seen(identity, current);
    }
    let changed = desired.spec.to_value() != current.spec
        || desired.labels != current.labels
        || desired.annotations != current.annotations
        || desired.owner_references != current.owner_references;
    identity
        .may_update(current.kind, &current.namespace, &current.name, changed, &current.finalizers, &desired.finalizers)
        .map_err(|denial| denied(denial, current.kind, &current.name))
}

async fn delete(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path((plural, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let force = Params::parse(raw.as_deref())?.force()?;
    let key = key_of(kind, &id)?;
    let current = visible(&identity, state.store.get(kind, &key).await?)?;
    note.before(&current);
    identity
        .may_delete(kind, &current.namespace, &current.name, force)
        .map_err(|denial| denied(denial, kind, &current.name))?;
    let deleted = state.store.delete(kind, &ObjectKey::Uid(current.uid), force).await?;
    note.after(&deleted);
    Ok(object(StatusCode::OK, &deleted))
}

async fn read_status(
    state: State<AppState>,
    identity: Extension<Identity>,
    path: Path<(String, String)>,
) -> ApiResult<Response> {
    read(state, identity, path).await
}

async fn report(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path((plural, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    if !kind.reconciled() {
        return Err(ApiError::method_not_allowed());
    }
    let ObjectKey::Uid(uid) = key_of(kind, &id)? else {
        return Err(ApiError::object_not_found(kind, &id));
    };
    let report: ControllerReport =
        manifest::typed("", body.document()?).map_err(|error| ApiError::invalid(kind, &id, &[error]))?;
    identity.may_report(kind, "", &id, &report.controller).or_else(|denial| match denial {
        // the namespace is checked where the object is read
        cls_core::access::Denial::Hidden => Ok(()),
        forbidden => Err(denied(forbidden, kind, &id)),
    })?;
    let (updated, before) =
        state.store.report_visible(kind, uid, report, |namespace| identity.sees(kind, namespace)).await?;
    note.after(&updated);
    note.with_before(before);
    Ok(object(StatusCode::OK, &updated))
}

/// A Kubernetes list, serialized straight from the stored objects.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBody<'a> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Value,
    pub items: &'a [StoredObject],
}

/// A patch document: JSON merge patch (RFC 7386) or JSON patch (RFC 6902).
pub enum Patch {
    Merge(Value),
    Json(json_patch::Patch),
}

impl Patch {
    pub fn parse(body: &Body) -> ApiResult<Patch> {
        match body.media_type.as_str() {
            "application/merge-patch+json" | "application/json" => Ok(Patch::Merge(body.document()?)),
            "application/json-patch+json" => serde_json::from_slice(&body.bytes)
                .map(Patch::Json)
                .map_err(|error| ApiError::bad_request(format!("invalid JSON patch: {error}"))),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// Applies the patch to a whole object document. The result keeps the object's name: a patch that removes or
    /// renames it is refused with 422.
    pub fn apply(&self, mut document: Value) -> Result<Value, ApiError> {
        let name = document["metadata"]["name"].clone();
        let kind = document["kind"].as_str().and_then(Kind::from_kind_name).unwrap_or(Kind::Cluster);
        document = self.apply_unchecked(document)?;
        if document["metadata"]["name"] != name {
            let name = name.as_str().unwrap_or_default();
            let error = cls_core::validation::FieldError::immutable("metadata.name", &document["metadata"]["name"]);
            return Err(ApiError::invalid(kind, name, &[error]));
        }
        Ok(document)
    }

    fn apply_unchecked(&self, mut document: Value) -> Result<Value, ApiError> {
        match self {
            Patch::Merge(patch) => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut document, patch);
            }
            Patch::Json(patch) => {
                // `patch_unsafe`: the document is ours and dropped on error, so there is nothing to roll back, and
                // json-patch 5.0's rollback (`patch`) panics when a `move` fails after removing its source (found by
                // the json_patch fuzz target: copy to /status/copy, then move it under a missing parent).
                json_patch::patch_unsafe(&mut document, patch).map_err(|error| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("the JSON patch could not be applied: {error}"),
                    )
                })?;
            }
        }
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_patch(operations: Value) -> Patch {
        Patch::Json(serde_json::from_value(operations).expect("a JSON patch"))
    }

    #[test]
    fn a_json_patch_whose_move_fails_after_a_copy_is_refused_with_422() {
        let object = json!({"kind": "Cluster", "metadata": {"name": "dev"}, "spec": {"a": 1}, "status": {}});
        let patch = json_patch(json!([
            {"op": "copy", "from": "/spec", "path": "/status/copy"},
            {"op": "move", "from": "/status/copy", "path": "/missing/parent"},
        ]));
        let error = patch.apply(object).expect_err("the move has no parent to move to");
        assert_eq!(error.code, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn a_json_patch_that_applies_keeps_every_operation() {
        let object = json!({"kind": "Cluster", "metadata": {"name": "dev"}, "spec": {"a": 1}, "status": {}});
        let patch = json_patch(json!([
            {"op": "copy", "from": "/spec", "path": "/status/copy"},
            {"op": "move", "from": "/status/copy", "path": "/status/moved"},
        ]));
        let patched = patch.apply(object).expect("the patch applies");
        assert_eq!(patched["status"], json!({"moved": {"a": 1}}));
    }
}
