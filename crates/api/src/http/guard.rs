//! The security layer every request passes through: authentication, per-identity rate limits, request timeouts
//! and the audit record of each mutating request.
//!
//! Flow: a public path (`/healthz`, `/readyz`, `/version`, `/metrics`, the `/ui` page) goes straight through.
//! Anything else is authenticated into an [`Identity`] (401 with a `Status` body when that fails), counted against
//! its identity's rate limit (429 with `Retry-After`), and run under the request timeout (504; watches are exempt,
//! they end by `timeoutSeconds`). Handlers find the identity in the request's extensions and decide what it may do
//! with `cls_core::access`. A mutating request (POST, PUT, PATCH, DELETE) also gets an [`AuditNote`] in which the
//! handler notes the object and its resourceVersions before and after; once the response is known, one audit record
//! with the identity, the code and the request id goes to the [`AuditLog`], whether the request was allowed or not.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use cls_core::access::{Denial, Identity};
use cls_core::{GROUP, Kind, VERSION};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use super::metrics::RequestId;
use crate::auth::AuthError;
use crate::store::{AuditRecord, StoredObject};

/// The user name audit records carry for a request that did not authenticate.
pub const ANONYMOUS: &str = "system:anonymous";
/// Identities tracked by the rate limiter before idle ones are forgotten.
const LIMITER_MAX_KEYS: usize = 10_000;

/// Request limits: per-identity rate and the request timeout.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Sustained requests per second per identity; `None`: no rate limit.
    pub rate: Option<NonZeroU32>,
    /// Requests an identity may send at once above the rate.
    pub burst: NonZeroU32,
    /// Longest a request (not a watch) may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rate: NonZeroU32::new(5_000),
            burst: NonZeroU32::new(10_000).expect("non-zero"),
            timeout: Duration::from_secs(60),
        }
    }
}

/// The per-identity rate limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    limits: Limits,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        let limiter =
            limits.rate.map(|rate| Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(limits.burst))));
        Limiter { limits, limiter }
    }

    pub fn timeout(&self) -> Duration {
        self.limits.timeout
    }

    /// `Err(wait)` when `user` is over its rate.
    fn check(&self, user: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > LIMITER_MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&user.to_owned()).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
        })
    }
}

/// Audit records per statement at most.
const AUDIT_BATCH: usize = 512;

enum AuditCommand {
    Record(Box<AuditRecord>),
    /// Answered once every record sent before it is stored (or failed).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The audit writer: requests hand their record over without waiting, and one task stores whatever has arrived
/// meanwhile in one statement. A reader of the audit log flushes it first, so it sees every record this process
/// has answered. Records still in memory when the process dies are lost (as are records whose statement fails
/// while the database is down; the log says so).
#[derive(Clone)]
pub struct AuditLog {
    sender: tokio::sync::mpsc::UnboundedSender<AuditCommand>,
}

impl AuditLog {
    /// Starts the writer task (on the current Tokio runtime).
    pub fn start(store: crate::store::Store) -> AuditLog {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut records = Vec::new();
            let mut flushes = Vec::new();
            while let Some(command) = receiver.recv().await {
                let mut next = Some(command);
                while let Some(command) = next.take() {
                    match command {
                        AuditCommand::Record(record) => records.push(*record),
                        AuditCommand::Flush(done) => flushes.push(done),
                    }
                    if records.len() < AUDIT_BATCH {
                        next = receiver.try_recv().ok();
                    }
                }
                if let Err(error) = store.append_audit(&records).await {
                    tracing::error!(error = %error, lost = records.len(), "cannot write audit records");
                }
                records.clear();
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        AuditLog { sender }
    }

    fn append(&self, record: AuditRecord) {
        if self.sender.send(AuditCommand::Record(Box::new(record))).is_err() {
            tracing::error!("the audit writer has stopped; a record is lost");
        }
    }

    /// Waits until every record appended before is stored.
    pub async fn flush(&self) {
        let (done, stored) = tokio::sync::oneshot::channel();
        if self.sender.send(AuditCommand::Flush(done)).is_ok() {
            let _ = stored.await;
        }
    }
}

/// What a handler notes about the object a mutating request touched.
#[derive(Clone, Debug, Default)]
pub struct AuditNote(Arc<Mutex<AuditRecord>>);

impl AuditNote {
    fn with(&self, change: impl FnOnce(&mut AuditRecord)) {
        change(&mut self.0.lock().expect("audit note"));
    }

    /// The object as it was before the request.
    pub fn before(&self, object: &StoredObject) {
        self.with(|record| {
            record.uid = Some(object.uid);
            record.namespace.clone_from(&object.namespace);
            record.name.clone_from(&object.name);
            record.resource_version_before = Some(object.resource_version);
        });
    }

    /// The object as the request left it.
    pub fn after(&self, object: &StoredObject) {
        self.with(|record| {
            record.uid = Some(object.uid);
            record.namespace.clone_from(&object.namespace);
            record.name.clone_from(&object.name);
            record.resource_version_after = Some(object.resource_version);
        });
    }

    /// The object's resourceVersion before the request, when only that is known.
    pub fn with_before(&self, resource_version: i64) {
        self.with(|record| record.resource_version_before = Some(resource_version));
    }

    /// A name the request addressed that is not an object (a token).
    pub fn name(&self, name: &str) {
        self.with(|record| name.clone_into(&mut record.name));
    }

    /// The namespace and name of an object about to be created.
    pub fn creating(&self, namespace: Option<&str>, name: &str) {
        self.with(|record| {
            namespace.unwrap_or_default().clone_into(&mut record.namespace);
            name.clone_into(&mut record.name);
        });
    }
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/version" | "/metrics" | "/ui" | "/ui/")
}

fn is_mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| matches!(pair, "watch=true" | "watch=1" | "watch=True" | "watch"))
    })
}

/// Resource, namespace and name as the path names them (handlers refine them).
fn addressed(path: &str) -> (String, String, String) {
    let kube = format!("/apis/{GROUP}/{VERSION}/");
    let segments: Vec<&str> = if let Some(rest) = path.strip_prefix(&kube) {
        rest.split('/').collect()
    } else if let Some(rest) = path.strip_prefix("/api/v1/") {
        rest.split('/').collect()
    } else {
        return (path.to_owned(), String::new(), String::new());
    };
    let (namespace, rest) = match segments.as_slice() {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (namespace.to_string(), rest),
        rest => (String::new(), rest),
    };
    match rest {
        [plural] => (plural.to_string(), namespace, String::new()),
        [plural, name] => (plural.to_string(), namespace, name.to_string()),
        [plural, name, sub, ..] => (format!("{plural}/{sub}"), namespace, name.to_string()),
        [] => (String::new(), namespace, String::new()),
    }
}

fn unauthorized(error: &AuthError) -> Response {
    match error {
        AuthError::Unavailable(_) => {
            tracing::warn!(error = %error, "cannot check credentials");
            ApiError::unavailable("the credential store is unavailable; retry later").into_response()
        }
        _ => {
            let body = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", format!("Unauthorized: {error}"));
            let mut response = body.into_response();
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"cls\""));
            response
        }
    }
}

fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut error =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "too many requests, please try again later");
    error.details = Some(serde_json::json!({"retryAfterSeconds": seconds}));
    let mut response = error.into_response();
    response.headers_mut().insert("retry-after", HeaderValue::from(seconds));
    response
}

/// The middleware: see the module documentation.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if is_public(&path) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let note = is_mutating(&method).then(|| {
        let (resource, namespace, name) = addressed(&path);
        let note = AuditNote::default();
        note.with(|record| {
            record.verb = verb(&method).to_owned();
            record.resource = resource;
            record.namespace = namespace;
            record.name = name;
            record.request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
        });
        note
    });
    let extensions = request.extensions();
    let peer = (extensions.get::<ConnectInfo<super::tls::Peer>>().map(|info| info.0.0))
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0))
        .map(|address| address.ip());
    let (user, response) = match state.auth.authenticate(request.headers(), peer).await {
        Err(error) => (ANONYMOUS.to_owned(), unauthorized(&error)),
        Ok(identity) => {
            let user = identity.user.clone();
            let response = match state.limiter.check(&user) {
                Err(wait) => too_many(wait),
                Ok(()) => {
                    let watch = is_watch(request.uri().query());
                    request.extensions_mut().insert(identity);
                    if let Some(note) = &note {
                        request.extensions_mut().insert(note.clone());
                    }
                    if watch {
                        next.run(request).await
                    } else {
                        match tokio::time::timeout(state.limiter.timeout(), next.run(request)).await {
                            Ok(response) => response,
                            Err(_) => ApiError::new(
                                StatusCode::GATEWAY_TIMEOUT,
                                "Timeout",
                                "the request did not complete in time; it may still take effect",
                            )
                            .into_response(),
                        }
                    }
                }
            };
            (user, response)
        }
    };
    if let Some(note) = note {
        let mut record = std::mem::take(&mut *note.0.lock().expect("audit note"));
        record.time = Utc::now();
        record.user = user;
        record.code = i32::from(response.status().as_u16());
        state.audit.append(record);
    }
    response
}

fn verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The error a refused request answers: 404 as if the object did not exist, or 403 with the reason.
pub fn denied(denial: Denial, kind: Kind, name: &str) -> ApiError {
    match denial {
        Denial::Hidden => ApiError::object_not_found(kind, name),
        Denial::Forbidden(reason) => forbidden(reason),
    }
}

pub fn forbidden(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Forbidden", reason)
}

/// Answers 404 unless `identity` sees `object`.
pub fn visible(identity: &Identity, object: StoredObject) -> Result<StoredObject, ApiError> {
    seen(identity, &object)?;
    Ok(object)
}

/// 404 unless `identity` sees `object`.
pub fn seen(identity: &Identity, object: &StoredObject) -> Result<(), ApiError> {
    if identity.sees(object.kind, &object.namespace) {
        Ok(())
    } else {
        Err(ApiError::object_not_found(object.kind, &object.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_namespace_and_object() {
        let kube = format!("/apis/{GROUP}/{VERSION}");
        assert_eq!(
            addressed(&format!("{kube}/namespaces/a/clusters/x/status")),
            ("clusters/status".into(), "a".into(), "x".into())
        );
        assert_eq!(addressed(&format!("{kube}/namespaces/a/clusters")), ("clusters".into(), "a".into(), "".into()));
        assert_eq!(addressed(&format!("{kube}/controllers/c")), ("controllers".into(), "".into(), "c".into()));
        assert_eq!(addressed("/api/v1/services/123"), ("services".into(), "".into(), "123".into()));
        assert_eq!(addressed("/api/v1/tokens"), ("tokens".into(), "".into(), "".into()));
    }

    #[test]
    fn watches_are_recognized_by_their_query() {
        assert!(is_watch(Some("watch=true&resourceVersion=1")));
        assert!(is_watch(Some("&watch=1")));
        assert!(!is_watch(Some("watcher=true")));
        assert!(!is_watch(None));
    }

    #[test]
    fn the_limiter_refuses_beyond_the_burst_and_says_how_long_to_wait() {
        let limiter = Limiter::new(Limits {
            rate: NonZeroU32::new(1),
            burst: NonZeroU32::new(2).expect("non-zero"),
            timeout: Duration::from_secs(1),
        });
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").expect_err("over the burst");
        assert!(wait <= Duration::from_secs(1));
        assert!(limiter.check("b").is_ok(), "limits are per identity");
        let response = too_many(wait);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");
    }
}
