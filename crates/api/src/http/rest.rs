//! The thin REST API, `/api/v1`: the same objects as the Kubernetes group, addressed by uid (Controllers also by
//! name), with the same `Status` errors.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cls_core::Kind;
use cls_core::manifest::{self, Expect, Manifest};
use cls_core::resources::ControllerReport;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::body::Body;
use super::error::{ApiError, ApiResult};
use super::query::Params;
use crate::store::{Change, ObjectJson, ObjectKey, StoredObject};

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
    Path(plural): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let query = Params::parse(raw.as_deref())?.list_query(kind)?;
    let mut query = query;
    query.feed_cursor = state.feed_cursor();
    let page = state.store.list(kind, &query).await?;
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    Ok(axum::Json(ListBody {
        api_version: cls_core::API_VERSION,
        kind: kind.list_kind(),
        metadata,
        items: &page.items,
    })
    .into_response())
}

async fn create(State(state): State<AppState>, Path(plural): Path<String>, body: Body) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let manifest = parse_manifest(kind, body.document()?, Expect::default())?;
    let created = state.store.create(&manifest).await?;
    Ok(object(StatusCode::CREATED, &created))
}

async fn read(State(state): State<AppState>, Path((plural, id)): Path<(String, String)>) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    Ok(object_json(state.store.get_json(kind, &key_of(kind, &id)?).await?))
}

async fn replace(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let document = body.document()?;
    if kind == Kind::Controller && Uuid::parse_str(&id).is_err() {
        // register or heartbeat
        let manifest = parse_manifest(kind, document, Expect { name: Some(&id), namespace: None })?;
        let (registered, change) = state.store.register_controller(&manifest).await?;
        let code = if change == Change::Created { StatusCode::CREATED } else { StatusCode::OK };
        return Ok(object(code, &registered));
    }
    let (updated, _) = state
        .store
        .update(kind, &key_of(kind, &id)?, |current| {
            let expect = Expect { name: Some(&current.name), namespace: Some(&current.namespace) };
            parse_manifest(kind, document.clone(), expect)
        })
        .await??;
    Ok(object(StatusCode::OK, &updated))
}

async fn patch(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let patch = Patch::parse(&body)?;
    let (updated, _) = state
        .store
        .update(kind, &key_of(kind, &id)?, |current| {
            let patched = patch.apply(current.to_json())?;
            let expect = Expect { name: Some(&current.name), namespace: Some(&current.namespace) };
            parse_manifest(kind, patched, expect)
        })
        .await??;
    Ok(object(StatusCode::OK, &updated))
}

async fn delete(
    State(state): State<AppState>,
    Path((plural, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let kind = kind_of(&plural)?;
    let force = Params::parse(raw.as_deref())?.force()?;
    let deleted = state.store.delete(kind, &key_of(kind, &id)?, force).await?;
    Ok(object(StatusCode::OK, &deleted))
}

async fn read_status(State(state): State<AppState>, Path((plural, id)): Path<(String, String)>) -> ApiResult<Response> {
    read(State(state), Path((plural, id))).await
}

async fn report(
    State(state): State<AppState>,
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
    let updated = state.store.report(kind, uid, report).await?;
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
                json_patch::patch(&mut document, patch).map_err(|error| {
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
