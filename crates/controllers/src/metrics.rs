//! Prometheus metrics of a controller: reconciles by result, failures by category, reconcile duration, messages
//! filtered out, dead-lettered and acknowledged.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub controller: String,
    pub category: String,
}

/// The metrics of every controller of a process (labelled by controller); cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reconciles: Family<ResultLabels, Counter>,
    pub failures: Family<CategoryLabels, Counter>,
    pub duration_seconds: Family<ControllerLabels, Histogram>,
    pub filtered: Family<ControllerLabels, Counter>,
    pub dead_lettered: Family<ControllerLabels, Counter>,
    pub reports: Family<ControllerLabels, Counter>,
    pub acked: Family<ControllerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cls_controller");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let failures = Family::<CategoryLabels, Counter>::default();
        let duration_seconds = Family::<ControllerLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 18))) as fn() -> Histogram,
        );
        let filtered = Family::<ControllerLabels, Counter>::default();
        let dead_lettered = Family::<ControllerLabels, Counter>::default();
        let reports = Family::<ControllerLabels, Counter>::default();
        let acked = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by result (ok, error, skipped)", reconciles.clone());
        registry.register("failures", "Failed reconciles by category (transient, permanent)", failures.clone());
        registry.register("reconcile_duration_seconds", "Duration of one reconcile", duration_seconds.clone());
        registry.register("filtered", "Messages filtered out (kind, platform, event type)", filtered.clone());
        registry.register("dead_lettered", "Messages moved to the dead-letter topic", dead_lettered.clone());
        registry.register("reports", "Reports written (no-op reports are not sent)", reports.clone());
        registry.register("acked", "Pub/Sub messages acknowledged (settled, filtered or dead-lettered)", acked.clone());
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            failures,
            duration_seconds,
            filtered,
            dead_lettered,
            reports,
            acked,
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics encode into a string");
        text
    }

    pub(crate) fn controller(name: &str) -> ControllerLabels {
        ControllerLabels { controller: name.to_owned() }
    }
}
