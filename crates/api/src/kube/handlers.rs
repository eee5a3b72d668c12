//! Handlers of `/apis/cls.dev/v1alpha1`: each route shape (all namespaces or cluster-scoped, namespaced; collection,
//! item, status) resolves to a [`Target`], and one function per verb serves them all.

use std::sync::Mutex;

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cls_core::access::Identity;
use cls_core::manifest::{self, Expect};
use cls_core::resources::ControllerReport;
use cls_core::{GROUP, Kind, VERSION};
use serde::Deserialize;
use serde_json::{Value, json};

use super::apply::apply;
use super::discovery;
use super::fields::{FieldValidation, unknown_fields};
use super::openapi;
use super::params::KubeParams;
use super::table::{IncludeObject, TABLE_CONTENT_TYPE, table, wants_table};
use crate::http::AppState;
use crate::http::body::Body;
use crate::http::error::{ApiError, ApiResult};
use crate::http::guard::{AuditNote, denied, seen, visible};
use crate::http::rest::{Patch, list_json, may_update, object_json, parse_manifest};
use crate::store::{ObjectKey, Store, StoreError, StoredObject};

pub fn routes() -> Router<AppState> {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::groups))
        .route(&base, get(discovery::group_resources))
        .route("/openapi/v3", get(openapi::index))
        .route(&format!("/openapi/v3/apis/{GROUP}/{VERSION}"), get(openapi::group))
        .route("/openapi/v2", get(openapi::v2))
        .route(&format!("{base}/{{plural}}"), get(list).post(create))
        .route(&format!("{base}/{{plural}}/{{name}}"), get(read).put(replace).patch(patch).delete(delete))
        .route(&format!("{base}/{{plural}}/{{name}}/status"), get(read).put(put_status).patch(patch_status))
        .route(&format!("{base}/namespaces/{{namespace}}/{{plural}}"), get(list).post(create))
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{plural}}/{{name}}"),
            get(read).put(replace).patch(patch).delete(delete),
        )
        .route(
            &format!("{base}/namespaces/{{namespace}}/{{plural}}/{{name}}/status"),
            get(read).put(put_status).patch(patch_status),
        )
}

/// The path parameters of every route shape: all namespaces or cluster-scoped, or namespaced; collection or item.
#[derive(Debug, Deserialize)]
struct PathParams {
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
}

impl PathParams {
    fn target(&self) -> ApiResult<Target> {
        Target::resolve(&self.plural, self.namespace.clone())
    }

    /// The target, the object's name and the query parameters of a request on one object.
    fn item(&self, raw: Option<&str>) -> ApiResult<(Target, String, KubeParams)> {
        let target = self.target()?;
        target.require_scope()?;
        Ok((target, self.name.clone().unwrap_or_default(), KubeParams::parse(raw)?))
    }
}

/// What a request addresses.
#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    /// `None` on a cluster-wide path: all namespaces (lists) or a cluster-scoped kind.
    namespace: Option<String>,
}

impl Target {
    fn resolve(plural: &str, namespace: Option<String>) -> ApiResult<Target> {
        let kind = Kind::from_plural(plural).ok_or_else(|| {
            ApiError::not_found(format!("the server could not find the requested resource ({plural}.{GROUP})"))
        })?;
        if namespace.is_some() && !kind.namespaced() {
            return Err(ApiError::not_found(format!("{plural}.{GROUP} is cluster-scoped")));
        }
        Ok(Target { kind, namespace })
    }

    /// For items and creates: namespaced kinds need a namespace in the path.
    fn require_scope(&self) -> ApiResult<()> {
        if self.kind.namespaced() && self.namespace.is_none() {
            return Err(ApiError::not_found(format!(
                "the server could not find the requested resource: {}.{GROUP} is namespaced",
                self.kind.plural()
            )));
        }
        Ok(())
    }

    /// 404 for an object in a namespace `identity` does not see.
    fn check_visible(&self, identity: &Identity, name: &str) -> ApiResult<()> {
        if identity.sees(self.kind, self.namespace.as_deref().unwrap_or_default()) {
            Ok(())
        } else {
            Err(ApiError::object_not_found(self.kind, name))
        }
    }

    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::name(self.namespace.clone().unwrap_or_default(), name)
    }
}

/// A JSON response with optional `Warning` headers.
fn respond(code: StatusCode, body: Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(body)).into_response();
    add_warnings(&mut response, warnings);
    response
}

fn add_warnings(response: &mut Response, warnings: &[String]) {
    for warning in warnings {
        let text = format!("299 - {}", serde_json::to_string(warning).unwrap_or_default());
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", value);
        }
    }
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(ACCEPT).and_then(|value| value.to_str().ok())
}

/// The object, or a one-row Table when kubectl asked for one.
fn object_response(
    code: StatusCode,
    object: &StoredObject,
    headers: &HeaderMap,
    params: &KubeParams,
    warnings: &[String],
) -> Response {
    if wants_table(accept(headers)) {
        let metadata = json!({"resourceVersion": object.resource_version.to_string()});
        let body = table(
            object.kind,
            std::slice::from_ref(object),
            metadata,
            IncludeObject::parse(params.include_object.as_deref()),
        );
        let mut response = respond(code, body, warnings);
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TABLE_CONTENT_TYPE));
        return response;
    }
    let mut response = (code, axum::Json(object)).into_response();
    add_warnings(&mut response, warnings);
    response
}

fn store_for(state: &AppState, params: &KubeParams) -> ApiResult<Store> {
    Ok(if params.dry_run()? { state.store.dry_run() } else { state.store.clone() })
}

/// Unknown fields of `document` under the requested `fieldValidation`: an error when Strict, warnings when Warn.
fn check_fields(kind: Kind, document: &Value, params: &KubeParams) -> ApiResult<Vec<String>> {
    let validation = FieldValidation::parse(params.field_validation.as_deref()).map_err(ApiError::bad_request)?;
    if validation == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown: Vec<String> =
        unknown_fields(kind, document).into_iter().map(|field| format!("unknown field \"{field}\"")).collect();
    if validation == FieldValidation::Strict && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!("strict decoding error: {}", unknown.join(", "))));
    }
    Ok(unknown)
}

// ----- verbs -----

async fn list(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let target = path.target()?;
    let params = KubeParams::parse(raw.as_deref())?;
    let mut query = params.list_params().list_query(target.kind)?;
    query.namespace = target.namespace.clone();
    query.visible_namespaces =
        identity.visible_namespaces(target.kind).map(|namespaces| namespaces.iter().cloned().collect());
    if params.watch()? {
        return super::watch::watch(state, target.kind, query, params, wants_table(accept(&headers))).await;
    }
    query.feed_cursor = state.feed_cursor();
    if !wants_table(accept(&headers)) {
        return Ok(list_json(target.kind, state.store.list_json(target.kind, &query).await?));
    }
    let page = state.store.list(target.kind, &query).await?;
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    let body = table(target.kind, &page.items, metadata, IncludeObject::parse(params.include_object.as_deref()));
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TABLE_CONTENT_TYPE));
    Ok(response)
}

async fn create(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let target = path.target()?;
    target.require_scope()?;
    let params = KubeParams::parse(raw.as_deref())?;
    let document = body.document()?;
    let warnings = check_fields(target.kind, &document, &params)?;
    let expect = Expect { namespace: target.namespace.as_deref(), name: None };
    let manifest = parse_manifest(target.kind, document, expect)?;
    note.creating(manifest.namespace.as_deref(), &manifest.name);
    identity
        .may_create(target.kind, manifest.namespace.as_deref().unwrap_or_default())
        .map_err(|denial| denied(denial, target.kind, &manifest.name))?;
    let created = store_for(&state, &params)?.create(&manifest).await?;
    note.after(&created);
    Ok(object_response(StatusCode::CREATED, &created, &headers, &params, &warnings))
}

async fn read(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (target, name, params) = path.item(raw.as_deref())?;
    // the path names the namespace: nothing outside the caller's namespaces is read at all
    target.check_visible(&identity, &name)?;
    if !wants_table(accept(&headers)) {
        return Ok(object_json(state.store.get_json(target.kind, &target.key(&name)).await?));
    }
    let object = visible(&identity, state.store.get(target.kind, &target.key(&name)).await?)?;
    Ok(object_response(StatusCode::OK, &object, &headers, &params, &[]))
}

async fn replace(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (target, name, params) = path.item(raw.as_deref())?;
    target.check_visible(&identity, &name)?;
    let document = body.document()?;
    let warnings = check_fields(target.kind, &document, &params)?;
    let expect = Expect { namespace: target.namespace.as_deref(), name: Some(&name) };
    let manifest = parse_manifest(target.kind, document, expect)?;
    let (updated, _) = store_for(&state, &params)?
        .update(target.kind, &target.key(&name), |current| {
            note.before(current);
            may_update(&identity, current, &manifest)?;
            Ok::<_, ApiError>(manifest.clone())
        })
        .await??;
    note.after(&updated);
    Ok(object_response(StatusCode::OK, &updated, &headers, &params, &warnings))
}

async fn patch(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (target, name, params) = path.item(raw.as_deref())?;
    target.check_visible(&identity, &name)?;
    let store = store_for(&state, &params)?;
    let key = target.key(&name);
    let expect = Expect { namespace: target.namespace.as_deref(), name: Some(&name) };
    let warnings = Mutex::new(Vec::new());
    if body.media_type == "application/apply-patch+yaml" {
        let manager =
            params.field_manager.clone().filter(|manager| !manager.is_empty()).ok_or_else(|| {
                ApiError::bad_request("PATCH of type application/apply-patch+yaml requires fieldManager")
            })?;
        let applied = body.document()?;
        *warnings.lock().expect("warnings") = check_fields(target.kind, &applied, &params)?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let updated = store
            .update(target.kind, &key, |current| {
                note.before(current);
                let desired =
                    parse_manifest(target.kind, apply(Some(&current.to_json()), &applied, &manager, &now)?, expect)?;
                may_update(&identity, current, &desired)?;
                Ok::<_, ApiError>(desired)
            })
            .await;
        let warnings = warnings.into_inner().expect("warnings");
        return match updated {
            Ok(result) => {
                let (object, _) = result?;
                note.after(&object);
                Ok(object_response(StatusCode::OK, &object, &headers, &params, &warnings))
            }
            Err(StoreError::NotFound { .. }) => {
                let manifest = parse_manifest(target.kind, apply(None, &applied, &manager, &now)?, expect)?;
                identity
                    .may_create(target.kind, manifest.namespace.as_deref().unwrap_or_default())
                    .map_err(|denial| denied(denial, target.kind, &manifest.name))?;
                let created = store.create(&manifest).await?;
                note.after(&created);
                Ok(object_response(StatusCode::CREATED, &created, &headers, &params, &warnings))
            }
            Err(error) => Err(error.into()),
        };
    }
    let patch = match body.media_type.as_str() {
        "application/json" => return Err(ApiError::unsupported_media_type(&body.media_type)),
        _ => Patch::parse(&body)?,
    };
    let (updated, _) = store
        .update(target.kind, &key, |current| {
            note.before(current);
            seen(&identity, current)?;
            let patched = patch.apply(current.to_json())?;
            *warnings.lock().expect("warnings") = check_fields(target.kind, &patched, &params)?;
            let desired = parse_manifest(target.kind, patched, expect)?;
            may_update(&identity, current, &desired)?;
            Ok::<_, ApiError>(desired)
        })
        .await??;
    note.after(&updated);
    let warnings = warnings.into_inner().expect("warnings");
    Ok(object_response(StatusCode::OK, &updated, &headers, &params, &warnings))
}

async fn delete(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (target, name, params) = path.item(raw.as_deref())?;
    identity
        .may_delete(target.kind, target.namespace.as_deref().unwrap_or_default(), &name, false)
        .map_err(|denial| denied(denial, target.kind, &name))?;
    let deleted = store_for(&state, &params)?.delete(target.kind, &target.key(&name), false).await?;
    note.after(&deleted);
    Ok(object_response(StatusCode::OK, &deleted, &headers, &params, &[]))
}

/// PUT or PATCH of `/status`: each `status.controllers[]` entry that differs from the stored one is a controller
/// report; the aggregate fields are read-only and ignored.
async fn put_status(
    state: State<AppState>,
    caller: Caller,
    path: Path<PathParams>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    write_status(state, caller, path, raw, headers, body, false).await
}

async fn patch_status(
    state: State<AppState>,
    caller: Caller,
    path: Path<PathParams>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    write_status(state, caller, path, raw, headers, body, true).await
}

/// The identity of a request and its audit note.
type Caller = (Extension<Identity>, Extension<AuditNote>);

async fn write_status(
    State(state): State<AppState>,
    (Extension(identity), Extension(note)): Caller,
    Path(path): Path<PathParams>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
    is_patch: bool,
) -> ApiResult<Response> {
    let (target, name, params) = path.item(raw.as_deref())?;
    if !target.kind.reconciled() {
        return Err(ApiError::method_not_allowed());
    }
    target.check_visible(&identity, &name)?;
    let store = store_for(&state, &params)?;
    let current = state.store.get(target.kind, &target.key(&name)).await?;
    note.before(&current);
    let current_json = current.to_json();
    let document = if is_patch {
        match body.media_type.as_str() {
            "application/apply-patch+yaml" => {
                let mut merged = current_json.clone();
                json_patch::merge(&mut merged, &body.document()?);
                merged
            }
            "application/json" => return Err(ApiError::unsupported_media_type(&body.media_type)),
            _ => Patch::parse(&body)?.apply(current_json.clone())?,
        }
    } else {
        body.document()?
    };
    if let Some(version) = document["metadata"]["resourceVersion"].as_str()
        && !version.is_empty()
        && version != current.resource_version.to_string()
    {
        return Err(StoreError::stale(target.kind, &name).into());
    }
    let entries = document["status"]["controllers"].as_array().cloned().unwrap_or_default();
    let stored = current_json["status"]["controllers"].as_array().cloned().unwrap_or_default();
    let mut latest = current;
    for (index, entry) in entries.into_iter().enumerate() {
        let unchanged = stored.iter().any(|stored| same_report(stored, &entry));
        if unchanged {
            continue;
        }
        let report: ControllerReport = manifest::typed(&format!("status.controllers[{index}]"), entry)
            .map_err(|error| ApiError::invalid(target.kind, &name, &[error]))?;
        identity
            .may_report(target.kind, &latest.namespace, &name, &report.controller)
            .map_err(|denial| denied(denial, target.kind, &name))?;
        latest = store.report(target.kind, latest.uid, report).await?;
    }
    note.after(&latest);
    Ok(object_response(StatusCode::OK, &latest, &headers, &params, &[]))
}

fn same_report(stored: &Value, entry: &Value) -> bool {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(fields) = value.as_object_mut() {
            fields.remove("lastReportTime");
        }
        value
    };
    strip(stored) == strip(entry)
}
