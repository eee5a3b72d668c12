//! The outbox relay: publishes committed outbox rows and deletes each only after the bus acknowledged it.
//!
//! Flow: wait for a `cls_outbox` notification (the API's notifier and the scheduler send one after they commit
//! when events commit) or the poll interval; in one transaction claim a batch, publish it, delete what the bus
//! acknowledged, commit. Repeat at once while batches come back full.
//!
//! Guarantees:
//! - Nothing committed is lost: a row goes only after its `Ok` from the bus. A relay that dies after the publish and
//!   before the commit leaves its rows behind (its transaction rolls back), so they are published again: duplicates,
//!   never gaps. Nothing rolled back is published: the relay only sees committed rows.
//! - Several relays share the work: claims use `FOR UPDATE SKIP LOCKED`, never "id > last seen" (sequence values
//!   commit out of order).
//! - Order per object: a relay claims only the oldest row of each uid (its head) with `SKIP LOCKED`, then that uid's
//!   following rows; so one uid's rows are with one relay at a time, published in id order under the uid as ordering
//!   key, and deleted only as a prefix of what was acknowledged.
//! - A bus that is down is retried with exponential backoff (up to `max_backoff`); the backlog drains when it returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cls_core::event::Event;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::{BusError, BusMessage, EventBus};
use crate::metrics::{EventTypeLabels, Metrics};

/// The channel the outbox trigger notifies.
pub const CHANNEL: &str = "cls_outbox";

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Heads (objects) claimed per batch.
    pub batch_size: i64,
    /// How often to look for rows without a notification (a notification can be missed while reconnecting).
    pub poll_interval: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit for one batch's publish.
    pub publish_timeout: Duration,
    /// Fault injection for tests: wait this long between the publish and the delete.
    pub pause_after_publish: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(15),
            pause_after_publish: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox query failed")]
    Database(#[from] sqlx::Error),
    #[error("{failed} of {total} messages were not acknowledged")]
    Bus {
        failed: usize,
        total: usize,
        #[source]
        source: BusError,
    },
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    event_type: String,
    kind: String,
    uid: Uuid,
    namespace: String,
    name: String,
    generation: i64,
    platform: String,
    reason: Option<String>,
    created_micros: i64,
}

impl OutboxRow {
    fn into_message(self) -> BusMessage {
        let time = jiff::Timestamp::from_microsecond(self.created_micros).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let event = Event {
            id: self.event_id,
            type_: self.event_type,
            kind: self.kind,
            uid: self.uid,
            namespace: self.namespace,
            name: self.name,
            generation: self.generation,
            reason: self.reason,
            time,
        };
        BusMessage::new(event, &self.platform)
    }
}

/// Claims the oldest row of up to `$1` uids that no other relay holds, and the rows following them.
const CLAIM: &str = "with heads as (
         select o.uid from outbox o
         where not exists (select 1 from outbox p where p.uid = o.uid and p.id < o.id)
         order by o.id
         limit $1
         for update of o skip locked)
     select id, event_id, event_type, kind, uid, namespace, name, generation, platform, reason,
            (extract(epoch from created_at) * 1000000)::bigint as created_micros
     from outbox
     where uid in (select uid from heads)
     order by id
     limit $1 * 8
     for update";

/// The relay; run one or many (in one process or several).
pub struct Relay {
    pool: sqlx::PgPool,
    bus: Arc<dyn EventBus>,
    config: RelayConfig,
    metrics: Metrics,
}

impl Relay {
    pub fn new(pool: sqlx::PgPool, bus: Arc<dyn EventBus>, config: RelayConfig, metrics: Metrics) -> Relay {
        Relay { pool, bus, config, metrics }
    }

    /// Relays until `shutdown`; the batch in flight finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        let mut backoff = self.config.min_backoff;
        tracing::info!(bus = self.bus.name(), "outbox relay started");
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                // Listen before claiming, so that a commit between the claim and the wait still wakes us.
                listener = self.listen().await;
            }
            let outcome = self.relay_once().await;
            let wait = match outcome {
                Ok(claimed) if claimed >= self.config.batch_size as usize => {
                    backoff = self.config.min_backoff;
                    continue;
                }
                Ok(_) => {
                    backoff = self.config.min_backoff;
                    None
                }
                Err(error) => {
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "outbox relay failed; backing off");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    if matches!(error, RelayError::Database(_)) {
                        listener = None;
                    }
                    Some(wait)
                }
            };
            match (wait, listener.as_mut()) {
                (Some(wait), _) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                (None, Some(active)) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        received = active.recv() => if let Err(error) = received {
                            tracing::debug!(error = %error, "outbox listener lost; polling until it is back");
                            listener = None;
                        }
                    }
                }
                (None, None) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(error = %error, "cannot listen for outbox notifications");
                return None;
            }
        };
        match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::debug!(error = %error, "cannot listen for outbox notifications");
                None
            }
        }
    }

    /// Claims one batch, publishes it, deletes what was acknowledged. Answers how many heads were claimed.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<OutboxRow> =
            sqlx::query_as(CLAIM).bind(self.config.batch_size).fetch_all(&mut *transaction).await?;
        if rows.is_empty() {
            transaction.commit().await?;
            return Ok(0);
        }
        let heads = rows.iter().map(|row| row.uid).collect::<HashSet<_>>().len();
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let messages: Vec<BusMessage> = rows.into_iter().map(OutboxRow::into_message).collect();

        let started = Instant::now();
        let results = match tokio::time::timeout(self.config.publish_timeout, self.bus.publish(&messages)).await {
            Ok(results) => results,
            Err(_) => {
                let seconds = self.config.publish_timeout.as_secs();
                messages.iter().map(|_| Err(BusError::Timeout { seconds })).collect()
            }
        };
        self.metrics.publish_duration_seconds.observe(started.elapsed().as_secs_f64());
        if !self.config.pause_after_publish.is_zero() {
            tokio::time::sleep(self.config.pause_after_publish).await;
        }

        // Delete, per uid, the acknowledged prefix: a later event of a uid whose earlier event failed is published
        // again after it, so that subscribers see the uid's events in order at least once.
        let mut blocked = HashSet::new();
        let mut acknowledged = Vec::with_capacity(ids.len());
        let mut first_error = None;
        let mut failed = 0;
        for ((id, message), result) in ids.iter().zip(&messages).zip(results) {
            match result {
                Ok(()) if !blocked.contains(&message.event.uid) => {
                    acknowledged.push(*id);
                    let labels = EventTypeLabels { event_type: message.event.type_.clone() };
                    self.metrics.events_published.get_or_create(&labels).inc();
                }
                Ok(()) => {}
                Err(error) => {
                    failed += 1;
                    blocked.insert(message.event.uid);
                    first_error.get_or_insert(error);
                }
            }
        }
        if !acknowledged.is_empty() {
            sqlx::query("delete from outbox where id = any($1)").bind(&acknowledged).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        match first_error {
            None => Ok(heads),
            Some(source) => {
                self.metrics.publish_errors.inc_by(failed as u64);
                Err(RelayError::Bus { failed, total: messages.len(), source })
            }
        }
    }
}
