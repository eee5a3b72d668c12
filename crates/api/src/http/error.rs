//! The one HTTP error type: every failure is a Kubernetes `Status` body with the matching code. 5xx bodies say
//! little; the log says all.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cls_core::manifest::ManifestError;
use cls_core::validation::FieldError;
use cls_core::{GROUP, Kind};
use serde_json::{Value, json};

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn details(kind: Kind, name: &str) -> Value {
    json!({"name": name, "group": GROUP, "kind": kind.plural()})
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn object_not_found(kind: Kind, name: &str) -> Self {
        let mut error = ApiError::not_found(format!("{}.{GROUP} \"{name}\" not found", kind.plural()));
        error.details = Some(details(kind, name));
        error
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
            ),
        )
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn too_large() -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", "the request body is larger than 3 MiB")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }

    /// 422 naming every failing field, with kubectl's message shape.
    pub fn invalid(kind: Kind, name: &str, errors: &[FieldError]) -> Self {
        let summary = match errors {
            [one] => one.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|error| json!({"reason": error.reason.as_str(), "message": error.message, "field": error.field}))
            .collect();
        let mut details = details(Kind::from_kind_name(kind.as_str()).unwrap_or(kind), name);
        details["kind"] = json!(kind.as_str());
        details["causes"] = Value::Array(causes);
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{kind}.{GROUP} \"{name}\" is invalid: {summary}"),
            details: Some(details),
        }
    }

    pub fn from_manifest(kind: Kind, error: ManifestError) -> Self {
        match error {
            ManifestError::BadRequest(message) => ApiError::bad_request(message),
            ManifestError::Invalid { name, errors } => ApiError::invalid(kind, &name, &errors),
        }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        body
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { kind, name } => ApiError::object_not_found(kind, &name),
            StoreError::AlreadyExists { kind, name } => {
                let mut api = ApiError::new(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{}.{GROUP} \"{name}\" already exists", kind.plural()),
                );
                api.details = Some(details(kind, &name));
                api
            }
            StoreError::Conflict { kind, name, reason } => {
                let mut api = ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {}.{GROUP} \"{name}\": {reason}", kind.plural()),
                );
                api.details = Some(details(kind, &name));
                api
            }
            StoreError::Invalid { kind, name, errors } => ApiError::invalid(kind, &name, &errors),
            StoreError::BadRequest(message) => ApiError::bad_request(message),
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry later")
            }
            StoreError::Database(source) => {
                tracing::error!(error = %source, "database error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "an internal error occurred")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_field_as_a_cause() {
        let errors =
            vec![FieldError::required("spec.platform.type"), FieldError::invalid("spec.replicas", -1, "must be >= 0")];
        let body = ApiError::invalid(Kind::Service, "web", &errors).body();
        assert_eq!(body["code"], 422);
        assert_eq!(body["reason"], "Invalid");
        assert_eq!(body["details"]["causes"][0]["field"], "spec.platform.type");
        assert_eq!(body["details"]["causes"][1]["field"], "spec.replicas");
        assert!(
            body["message"].as_str().unwrap().starts_with("Service.cls.dev \"web\" is invalid: [spec.platform.type")
        );
    }

    #[test]
    fn not_found_names_the_resource_like_kube_apiserver() {
        let body = ApiError::from(StoreError::NotFound { kind: Kind::Cluster, name: "nope".into() }).body();
        assert_eq!(body["message"], "clusters.cls.dev \"nope\" not found");
        assert_eq!(body["details"]["kind"], "clusters");
    }
}
