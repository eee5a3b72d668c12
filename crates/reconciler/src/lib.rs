//! The reconciler: the outbox relay that publishes committed events to the bus (Google Cloud Pub/Sub or the
//! in-process bus), and the two-speed scheduler that claims due `schedules` rows and writes `*.reconcile` events.
//!
//! Data flow: the API writes one `outbox` row per spec change, deletion and report in the transaction of the change,
//! and keeps a `schedules` row per object whose cadence (`attention`) moves with every report and spec change. The
//! [`scheduler`] turns due schedule rows into `*.reconcile` outbox rows; the [`relay`] publishes every outbox row on
//! the [`bus`] and deletes it once acknowledged. Both run in any number of replicas ([`run`] starts one of each).

pub mod bus;
pub mod metrics;
pub mod ops;
pub mod relay;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use bus::{BusMessage, EventBus, InProcessBus, PubSubBus, PubSubConfig};
pub use metrics::Metrics;
pub use relay::{Relay, RelayConfig};
pub use scheduler::{Scheduler, SchedulerConfig};

/// How often the shared gauges (outbox depth and age, schedule lag) are sampled.
const SAMPLE_PERIOD: Duration = Duration::from_secs(5);

/// Runs a relay, a scheduler and the metrics sampler until `shutdown`, then waits for them to finish their batch.
pub async fn run(
    pool: sqlx::PgPool,
    bus: Arc<dyn EventBus>,
    relay: RelayConfig,
    scheduler: SchedulerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let relay = Relay::new(pool.clone(), bus, relay, metrics.clone());
    let scheduler = Scheduler::new(pool.clone(), scheduler, metrics.clone());
    tokio::join!(
        relay.run(shutdown.clone()),
        scheduler.run(shutdown.clone()),
        metrics::sample(pool, metrics, SAMPLE_PERIOD, shutdown.clone()),
    );
}
