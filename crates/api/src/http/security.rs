//! Admin endpoints of the thin REST API: tokens (`/api/v1/tokens`) and the audit log (`/api/v1/audit`).
//!
//! `POST /api/v1/tokens` with `{"name", "role", "namespaces"?}` answers 201 with the record and, this once, its
//! secret in `token`; `GET` lists them (never a secret); `DELETE /api/v1/tokens/{id or name}` revokes one.
//! `GET /api/v1/audit?limit=N&continue=T` lists audit records oldest first, as a Kubernetes-style list.

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use cls_core::access::{Identity, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::Body;
use super::error::{ApiError, ApiResult};
use super::guard::{AuditNote, forbidden};
use crate::auth::{generate_token, hash_token};

/// Audit records per page by default and at most.
const AUDIT_PAGE: i64 = 500;
const AUDIT_PAGE_MAX: i64 = 1_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/audit", get(list_audit))
}

fn admin(identity: &Identity, what: &str) -> ApiResult<()> {
    identity.may_administer(what).map_err(|_| forbidden(format!("{} ({}) cannot {what}", identity.user, identity.role)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{field}: {message}"));
    error.details = Some(
        json!({"kind": "tokens", "causes": [{"reason": "FieldValueInvalid", "message": message.to_string(), "field": field}]}),
    );
    error
}

/// Checks a token request: a DNS-label name, a known role, valid namespace names.
fn parse_new_token(document: Value) -> ApiResult<(String, Role, Option<Vec<String>>)> {
    let request: NewToken = serde_json::from_value(document)
        .map_err(|error| ApiError::bad_request(format!("invalid token request: {error}")))?;
    if let Some(problem) = cls_core::validation::dns_label_problem(&request.name) {
        return Err(invalid("name", problem));
    }
    let role: Role = request.role.parse().map_err(|error| invalid("role", error))?;
    if let Some(namespaces) = &request.namespaces {
        for (index, namespace) in namespaces.iter().enumerate() {
            if let Some(problem) = cls_core::validation::dns_label_problem(namespace) {
                return Err(invalid(&format!("namespaces[{index}]"), problem));
            }
        }
    }
    Ok((request.name, role, request.namespaces))
}

async fn create_token(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    body: Body,
) -> ApiResult<Response> {
    admin(&identity, "create tokens")?;
    let (name, role, namespaces) = parse_new_token(body.document()?)?;
    note.name(&name);
    let secret = generate_token();
    let record = state
        .store
        .create_token(&name, &hash_token(&secret), &role.to_string(), namespaces.as_deref())
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "AlreadyExists", format!("token {name:?} already exists"))
        })?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_tokens(State(state): State<AppState>, Extension(identity): Extension<Identity>) -> ApiResult<Response> {
    admin(&identity, "list tokens")?;
    let items = state.store.list_tokens().await?;
    Ok(Json(json!({"apiVersion": "v1", "kind": "TokenList", "metadata": {}, "items": items})).into_response())
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Extension(note): Extension<AuditNote>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    admin(&identity, "revoke tokens")?;
    note.name(&id);
    let record =
        state.store.revoke_token(&id).await?.ok_or_else(|| ApiError::not_found(format!("token {id:?} not found")))?;
    state.auth.forget_tokens();
    Ok(Json(record).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct AuditParams {
    limit: Option<i64>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

async fn list_audit(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    admin(&identity, "read the audit log")?;
    // every record this process has answered is stored before the page is read
    state.audit.flush().await;
    let params: AuditParams = serde_urlencoded::from_str(raw.as_deref().unwrap_or_default().trim_start_matches('&'))
        .map_err(|error| ApiError::bad_request(format!("invalid query: {error}")))?;
    let limit = match params.limit {
        None | Some(0) => AUDIT_PAGE,
        Some(limit) if limit < 0 => return Err(ApiError::bad_request("limit must not be negative")),
        Some(limit) => limit.min(AUDIT_PAGE_MAX),
    };
    let after = match params.continue_token.as_deref().filter(|token| !token.is_empty()) {
        None => 0,
        Some(token) => token.parse::<i64>().map_err(|_| ApiError::bad_request("invalid continue token"))?,
    };
    let records = state.store.list_audit(after, limit + 1).await?;
    let more = records.len() as i64 > limit;
    let items = &records[..records.len().min(limit as usize)];
    let mut metadata = json!({});
    if more && let Some(last) = items.last() {
        metadata["continue"] = json!(last.id.to_string());
    }
    Ok(Json(json!({"apiVersion": "v1", "kind": "AuditList", "metadata": metadata, "items": items})).into_response())
}
