//! Prometheus metrics of the API and the request id.
//!
//! One middleware ([`observe`]) wraps every route: it takes the request's `X-Request-Id` (or makes one), opens the
//! `request` span that every log line of the request carries, echoes the id in the response, and counts the request
//! by method, route template (axum's matched path, so `/api/v1/clusters/{uid}` rather than one series per object)
//! and status code. A watch response's body holds a guard that keeps the `watchers` gauge up until the stream ends.
//! The database pool gauges are sampled when `/metrics` is scraped.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_stream::StreamExt;
use tracing::Instrument;

use super::AppState;

/// The header that carries the request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of requests that matched no route (one series for all of them).
const UNMATCHED: &str = "unmatched";

/// The request id, as the middleware put it in the request's extensions (for handlers that record it, such as
/// audit records).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The API's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct HttpMetrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pool_connections: Gauge,
    pool_idle_connections: Gauge,
    pool_max_connections: Gauge,
    watchers: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        HttpMetrics::with_counters(Counter::default(), Counter::default())
    }

    /// The metrics, with `feed_rows_read` (the change feed's count of watch log rows read) and `bodies_reused`
    /// (the store's count of GETs answered with a held body) among them.
    pub fn with_counters(feed_rows_read: Counter, bodies_reused: Counter) -> HttpMetrics {
        let mut registry = Registry::with_prefix("cls_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let pool_connections = Gauge::default();
        let pool_idle_connections = Gauge::default();
        let pool_max_connections = Gauge::default();
        let watchers = Gauge::default();
        // seconds since the Unix epoch at start, so that dashboards can tell restarts
        let start_time_seconds = Gauge::<f64, AtomicU64>::default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        start_time_seconds.set(now.as_secs_f64());
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by method and route template (a watch counts until its stream starts)",
            duration_seconds.clone(),
        );
        registry.register("db_pool_connections", "Open database connections of this process", pool_connections.clone());
        registry.register(
            "db_pool_idle_connections",
            "Open database connections not in use",
            pool_idle_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "The database pool's connection limit",
            pool_max_connections.clone(),
        );
        registry.register("watchers", "Watch streams open on this process", watchers.clone());
        registry.register(
            "change_feed_rows_read",
            "Watch log rows the change feed read (about one per change while it keeps up)",
            feed_rows_read,
        );
        registry.register(
            "get_bodies_reused",
            "GETs answered with a body this process held for the row's version, not rendered again",
            bodies_reused,
        );
        registry.register(
            "start_time_seconds",
            "Process start, seconds since the Unix epoch",
            start_time_seconds.clone(),
        );
        HttpMetrics {
            registry: Arc::new(registry),
            requests,
            duration_seconds,
            pool_connections,
            pool_idle_connections,
            pool_max_connections,
            watchers,
        }
    }

    /// Watch streams open now.
    pub fn watchers(&self) -> i64 {
        self.watchers.get()
    }

    /// The OpenMetrics text exposition, with the pool gauges sampled from `pool` now.
    pub fn encode(&self, pool: &sqlx::PgPool) -> String {
        self.pool_connections.set(i64::from(pool.size()));
        self.pool_idle_connections.set(i64::try_from(pool.num_idle()).unwrap_or(i64::MAX));
        self.pool_max_connections.set(i64::from(pool.options().get_max_connections()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    fn record(&self, method: &Method, route: &str, code: u16, started: Instant) {
        let method = method.as_str().to_owned();
        let route = route.to_owned();
        self.duration_seconds
            .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
            .observe(started.elapsed().as_secs_f64());
        self.requests.get_or_create(&RequestLabels { method, route, code }).inc();
    }
}

/// `GET /metrics`: Prometheus (OpenMetrics) text; needs no token.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.encode(state.store.pool());
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// A request id from the client is kept when it is printable ASCII of a sane length; otherwise a new one is made.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= 128 && value.bytes().all(|byte| byte.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| matches!(pair, "watch=true" | "watch=1" | "watch=True" | "watch"))
    })
}

/// The middleware: request id, the request span, and the request metrics.
pub(crate) async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, |path| path.as_str()).to_owned();
    let method = request.method().clone();
    let watch = is_watch(request.uri().query());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let code = response.status().as_u16();
    state.metrics.record(&method, &route, code, started);
    span.in_scope(|| {
        if response.status().is_server_error() {
            tracing::warn!(code, elapsed_ms = started.elapsed().as_millis() as u64, "request failed");
        } else {
            tracing::debug!(code, elapsed_ms = started.elapsed().as_millis() as u64, "request answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if watch && response.status().is_success() {
        response = count_watcher(response, state.metrics.watchers.clone());
    }
    response
}

/// Keeps `watchers` one higher while the response body lives (hyper drops it when the stream ends or the client
/// goes away).
fn count_watcher(response: Response, watchers: Gauge) -> Response {
    struct Watching(Gauge);
    impl Drop for Watching {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    watchers.inc();
    let guard = Watching(watchers);
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_is_recognised_in_any_position_of_the_query() {
        assert!(is_watch(Some("watch=true")));
        assert!(is_watch(Some("resourceVersion=5&watch=1")));
        assert!(!is_watch(Some("watcher=true")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(None));
    }

    #[tokio::test]
    async fn request_counts_are_exposed_by_route_template_and_code() {
        let metrics = HttpMetrics::new();
        metrics.record(&Method::GET, "/api/v1/clusters/{uid}", 404, Instant::now());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let text = metrics.encode(&pool);
        assert!(
            text.contains(r#"cls_api_http_requests_total{method="GET",route="/api/v1/clusters/{uid}",code="404"} 1"#),
            "{text}"
        );
        assert!(text.contains("cls_api_db_pool_max_connections 3"), "{text}");
        assert!(text.contains("cls_api_watchers 0"), "{text}");
    }
}
