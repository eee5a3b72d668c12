//! The controller's view of the CLS API: the thin REST `/api/v1`, by uid.
//!
//! Everything a controller needs and nothing more: read an object, list a Cluster's Services, find an object by
//! name, register (heartbeat), report, and replace an object's metadata (its finalizers) with optimistic
//! concurrency (`metadata.resourceVersion`, 409 when stale).

use std::time::Duration;

use cls_core::condition::find;
use cls_core::resources::{ClusterSpec, ControllerReport, ControllerSpec, ObjectStatus, ServiceSpec};
use cls_core::{ConditionStatus, Kind};
use reqwest::StatusCode;
use serde_json::{Value, json};
use thiserror::Error;
use uuid::Uuid;

/// How long one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {code}: {message}")]
    Status { url: String, code: u16, message: String },
    #[error("{url} answered with a body that is not an object")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Whether a retry may succeed (transport errors, 409, 429, 5xx).
    pub fn transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            ApiError::Decode { .. } => false,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A Cluster or Service as the API serves it, with the fields controllers use most parsed out.
#[derive(Clone, Debug)]
pub struct Object {
    pub kind: Kind,
    pub uid: Uuid,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub resource_version: String,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub spec: Value,
    pub status: ObjectStatus,
    /// The whole document, as served.
    pub document: Value,
}

impl Object {
    pub fn from_document(document: Value) -> Result<Object, serde_json::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Metadata {
            name: String,
            #[serde(default)]
            namespace: String,
            uid: Uuid,
            generation: i64,
            resource_version: String,
            #[serde(default)]
            deletion_timestamp: Option<String>,
            #[serde(default)]
            finalizers: Vec<String>,
        }
        let metadata: Metadata = serde_json::from_value(document["metadata"].clone())?;
        let kind_name = document["kind"].as_str().unwrap_or_default();
        let kind = Kind::from_kind_name(kind_name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown kind {kind_name:?}")))?;
        let status: ObjectStatus = if document["status"].is_null() {
            ObjectStatus::default()
        } else {
            serde_json::from_value(document["status"].clone())?
        };
        Ok(Object {
            kind,
            uid: metadata.uid,
            namespace: metadata.namespace,
            name: metadata.name,
            generation: metadata.generation,
            resource_version: metadata.resource_version,
            deleting: metadata.deletion_timestamp.is_some(),
            finalizers: metadata.finalizers,
            spec: document["spec"].clone(),
            status,
            document,
        })
    }

    pub fn service_spec(&self) -> Result<ServiceSpec, serde_json::Error> {
        serde_json::from_value(self.spec.clone())
    }

    pub fn cluster_spec(&self) -> Result<ClusterSpec, serde_json::Error> {
        serde_json::from_value(self.spec.clone())
    }

    /// The named controller's report, if any.
    pub fn report_of(&self, controller: &str) -> Option<&ControllerReport> {
        self.status.controllers.iter().find(|report| report.controller == controller)
    }

    /// Whether the aggregate says `Ready=True` (always at the current generation, by construction).
    pub fn ready(&self) -> bool {
        find(&self.status.conditions, "Ready").is_some_and(|ready| ready.status == ConditionStatus::True)
    }

    /// Whether `controller` reported `type_=True` at the object's current generation.
    pub fn reports(&self, controller: &str, type_: &str) -> bool {
        self.report_of(controller).is_some_and(|report| {
            report.observed_generation == self.generation
                && find(&report.conditions, type_).is_some_and(|condition| condition.status == ConditionStatus::True)
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A client of the thin REST API; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// `base` is the API's root, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> ApiClient {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("an http client builds");
        ApiClient { http, base: base.into().trim_end_matches('/').to_owned() }
    }

    /// The same client, sending `Authorization: Bearer TOKEN` (a `controller:<name>` token) with every request.
    pub fn with_token(mut self, token: &str) -> ApiClient {
        let mut headers = reqwest::header::HeaderMap::new();
        match reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
            Err(_) => tracing::warn!("the API token is not a valid header value; requests go without it"),
        }
        self.http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .expect("an http client builds");
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<Value> {
        let response = request.send().await.map_err(|source| ApiError::Transport { url: url.to_owned(), source })?;
        let code = response.status();
        let bytes = response.bytes().await.map_err(|source| ApiError::Transport { url: url.to_owned(), source })?;
        if !code.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|body| body["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiError::Status { url: url.to_owned(), code: code.as_u16(), message });
        }
        serde_json::from_slice(&bytes).map_err(|source| ApiError::Decode { url: url.to_owned(), source })
    }

    fn object(url: &str, document: Value) -> Result<Object> {
        Object::from_document(document).map_err(|source| ApiError::Decode { url: url.to_owned(), source })
    }

    /// The object with `uid`, or `None` when it is gone.
    pub async fn get(&self, kind: Kind, uid: Uuid) -> Result<Option<Object>> {
        let url = format!("{}/api/v1/{}/{uid}", self.base, kind.plural());
        match self.send(self.http.get(&url), &url).await {
            Ok(document) => Self::object(&url, document).map(Some),
            Err(ApiError::Status { code: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The object `namespace/name` of `kind`, or `None`.
    pub async fn find(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>> {
        let url = format!(
            "{}/api/v1/{}?namespace={namespace}&fieldSelector=metadata.name%3D{name}",
            self.base,
            kind.plural()
        );
        let list = self.send(self.http.get(&url), &url).await?;
        match list["items"].as_array().and_then(|items| items.first()) {
            Some(item) => Self::object(&url, item.clone()).map(Some),
            None => Ok(None),
        }
    }

    /// The Services of Cluster `namespace/cluster`.
    pub async fn services_of(&self, namespace: &str, cluster: &str) -> Result<Vec<Object>> {
        self.list(Kind::Service, &format!("namespace={namespace}&fieldSelector=spec.clusterRef.name%3D{cluster}")).await
    }

    /// Every object of `kind` matching `query` (`namespace=...&fieldSelector=...`, or empty), all pages.
    pub async fn list(&self, kind: Kind, query: &str) -> Result<Vec<Object>> {
        let mut objects = Vec::new();
        let mut token = String::new();
        loop {
            let mut url = format!("{}/api/v1/{}?limit=1000", self.base, kind.plural());
            if !query.is_empty() {
                url.push('&');
                url.push_str(query);
            }
            if !token.is_empty() {
                url.push_str(&format!("&continue={token}"));
            }
            let list = self.send(self.http.get(&url), &url).await?;
            for item in list["items"].as_array().into_iter().flatten() {
                objects.push(Self::object(&url, item.clone())?);
            }
            match list["metadata"]["continue"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => return Ok(objects),
            }
        }
    }

    /// Registers the controller or records its heartbeat.
    pub async fn register(&self, name: &str, spec: &ControllerSpec) -> Result<()> {
        let url = format!("{}/api/v1/controllers/{name}", self.base);
        let manifest = json!({"apiVersion": cls_core::API_VERSION, "kind": "Controller", "metadata": {"name": name}, "spec": spec});
        self.send(self.http.put(&url).json(&manifest), &url).await.map(drop)
    }

    /// Stores a report; answers the object as it became.
    pub async fn report(&self, kind: Kind, uid: Uuid, report: &ControllerReport) -> Result<Object> {
        let url = format!("{}/api/v1/{}/{uid}/status", self.base, kind.plural());
        let document = self.send(self.http.put(&url).json(report), &url).await?;
        Self::object(&url, document)
    }

    /// Replaces the object with `document` (which carries `metadata.resourceVersion`: 409 when stale).
    pub async fn replace(&self, kind: Kind, uid: Uuid, document: &Value) -> Result<Option<Object>> {
        let url = format!("{}/api/v1/{}/{uid}", self.base, kind.plural());
        match self.send(self.http.put(&url).json(document), &url).await {
            Ok(document) => Self::object(&url, document).map(Some),
            Err(ApiError::Status { code: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Deletes the object (used by tests and tools).
    pub async fn delete(&self, kind: Kind, uid: Uuid) -> Result<()> {
        let url = format!("{}/api/v1/{}/{uid}", self.base, kind.plural());
        match self.send(self.http.delete(&url), &url).await {
            Ok(_) | Err(ApiError::Status { code: 404, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether the API answers `/readyz`.
    pub async fn ready(&self) -> bool {
        let url = format!("{}/readyz", self.base);
        self.http.get(&url).send().await.is_ok_and(|response| response.status() == StatusCode::OK)
    }
}
