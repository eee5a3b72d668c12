//! Prometheus metrics of the reconciler: outbox depth and age, events published per type, publish errors, scheduled
//! events and schedule lag.
//!
//! Depth, age and lag are sampled from the database every few seconds by [`sample`], so that every replica reports
//! the shared state; counters and histograms count what this replica did.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The reconciler's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub outbox_depth: Gauge,
    pub outbox_age_seconds: Gauge<f64, AtomicU64>,
    pub schedule_lag_seconds: Gauge<f64, AtomicU64>,
    pub events_published: Family<EventTypeLabels, Counter>,
    pub publish_errors: Counter,
    pub publish_duration_seconds: Histogram,
    pub reconcile_events: Family<ReasonLabels, Counter>,
    pub claimed_tick_lag_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cls_reconciler");
        let outbox_depth = Gauge::default();
        let outbox_age_seconds = Gauge::<f64, AtomicU64>::default();
        let schedule_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let events_published = Family::<EventTypeLabels, Counter>::default();
        let publish_errors = Counter::default();
        let publish_duration_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let reconcile_events = Family::<ReasonLabels, Counter>::default();
        let claimed_tick_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("outbox_depth", "Events committed and not yet published", outbox_depth.clone());
        registry.register(
            "outbox_age_seconds",
            "Age of the oldest event not yet published",
            outbox_age_seconds.clone(),
        );
        registry.register(
            "schedule_lag_seconds",
            "How long the oldest due schedule row has been due (now - oldest due)",
            schedule_lag_seconds.clone(),
        );
        registry.register("events_published", "Events the bus acknowledged, per type", events_published.clone());
        registry.register("publish_errors", "Messages the bus did not acknowledge", publish_errors.clone());
        registry.register(
            "publish_duration_seconds",
            "Time to publish one claimed batch",
            publish_duration_seconds.clone(),
        );
        registry.register("reconcile_events", "Reconcile events scheduled, per reason", reconcile_events.clone());
        registry.register(
            "claimed_tick_lag_seconds",
            "How late each schedule tick was when claimed",
            claimed_tick_lag_seconds.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            outbox_depth,
            outbox_age_seconds,
            schedule_lag_seconds,
            events_published,
            publish_errors,
            publish_duration_seconds,
            reconcile_events,
            claimed_tick_lag_seconds,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Samples outbox depth and age and schedule lag every `period` until `shutdown`.
pub async fn sample(pool: sqlx::PgPool, metrics: Metrics, period: Duration, shutdown: CancellationToken) {
    loop {
        let sampled: Result<(i64, f64, f64), sqlx::Error> = sqlx::query_as(
            "select (select count(*) from outbox),
                    coalesce((select extract(epoch from now() - min(created_at))::float8 from outbox), 0),
                    coalesce((select extract(epoch from now() - min(next_at))::float8
                              from schedules where next_at <= now()), 0)",
        )
        .fetch_one(&pool)
        .await;
        match sampled {
            Ok((depth, age, lag)) => {
                metrics.outbox_depth.set(depth);
                metrics.outbox_age_seconds.set(age);
                metrics.schedule_lag_seconds.set(lag);
            }
            Err(error) => tracing::debug!(error = %error, "cannot sample the outbox and schedules"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    tracing::info!("metrics sampler stopped");
}
