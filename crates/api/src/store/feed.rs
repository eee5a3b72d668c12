//! The change feed: one task per process reads the watch log (`changes`) in resourceVersion order and fans every
//! change out in memory to any number of watchers; a watch costs no query per event.
//!
//! Order: resourceVersions come from a sequence, and transactions commit out of order, so the log can show 12
//! before 11 commits. The feed never skips: at a gap it waits briefly (keeping the rows it read beyond the gap, so
//! that only the gap is read again), then inserts a `GAP` row for the missing
//! number. That insert waits on the unique index while the transaction holding the number is still open, and fails
//! quietly (`on conflict do nothing`) once it committed its row; if that transaction rolled back, the `GAP` row takes
//! its place; if it has not logged yet, its own insert later fails and the store retries it with a new number.
//! Either way the feed resumes in exact order.
//!
//! Retention: the last [`BUFFER`] changes stay in memory; a watch from an older resourceVersion gets 410 Expired
//! and the client relists. Log rows older than [`RETENTION`] are pruned.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Result;

/// Changes kept in memory for watches that resume.
pub const BUFFER: usize = 20_000;
/// Age after which log rows are pruned.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);
/// How often the feed looks for changes when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// Changes read per query.
const PAGE: i64 = 1000;
/// How long a gap may stay open before the feed resolves it.
const GAP_GRACE: Duration = Duration::from_millis(30);
/// How often an open gap is looked at again (transactions usually commit within a few milliseconds).
const GAP_CHECK: Duration = Duration::from_millis(1);

/// One change, as watchers receive it.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource_version: i64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub event_type: String,
    pub kind: String,
    pub namespace: String,
    pub uid: Option<Uuid>,
    pub object: Value,
    /// The labels before this change when it changed them.
    pub previous_labels: Option<BTreeMap<String, String>>,
    /// The watch event line (`{"type","object"}` and a newline), serialized once for every watcher.
    pub line: OnceLock<bytes::Bytes>,
}

impl Change {
    /// The newline-terminated watch event of this change.
    pub fn line(&self) -> bytes::Bytes {
        self.line
            .get_or_init(|| {
                let mut line = serde_json::to_vec(&serde_json::json!({"type": self.event_type, "object": self.object}))
                    .expect("events serialize");
                line.push(b'\n');
                bytes::Bytes::from(line)
            })
            .clone()
    }
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    resource_version: i64,
    event_type: String,
    kind: String,
    namespace: String,
    uid: Option<Uuid>,
    object: Option<sqlx::types::Json<Value>>,
    previous_labels: Option<sqlx::types::Json<BTreeMap<String, String>>>,
}

/// What a watcher starts with: the buffered changes it missed, then the live ones.
pub struct Subscription {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
}

/// A watch that resumes too far back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub oldest: i64,
}

#[derive(Default)]
struct Buffer {
    /// Every resourceVersion after this one is in `changes` (or was a gap).
    start: i64,
    changes: VecDeque<Arc<Change>>,
}

/// The fan-out side of the feed.
pub struct ChangeFeed {
    /// Watch log rows read, for `/metrics`: about one per change while the feed keeps up.
    rows_read: prometheus_client::metrics::counter::Counter,
    cursor: AtomicI64,
    started: AtomicI64,
    buffer: RwLock<Buffer>,
    sender: broadcast::Sender<Arc<Change>>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed::new()
    }
}

impl ChangeFeed {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        ChangeFeed {
            rows_read: Default::default(),
            cursor: AtomicI64::new(0),
            started: AtomicI64::new(0),
            buffer: RwLock::default(),
            sender,
        }
    }

    /// The count of watch log rows read (shared: a clone counts along).
    pub fn rows_read(&self) -> prometheus_client::metrics::counter::Counter {
        self.rows_read.clone()
    }

    /// Whether the feed has read its starting point.
    pub fn is_running(&self) -> bool {
        self.started.load(Ordering::Acquire) == 1
    }

    /// The resourceVersion up to which every change has been fanned out. A list whose query starts after this was
    /// read sees every one of them, so this is a safe resourceVersion for the list.
    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// The buffered changes after `resource_version` and a receiver for the ones that follow, with nothing lost or
    /// repeated between the two.
    pub fn subscribe_from(&self, resource_version: i64) -> Result<Subscription, Expired> {
        let buffer = self.buffer.read().expect("feed buffer lock");
        let oldest =
            buffer.changes.front().map(|change| change.resource_version - 1).unwrap_or(buffer.start).max(buffer.start);
        if resource_version < oldest {
            return Err(Expired { oldest });
        }
        let receiver = self.sender.subscribe();
        let backlog =
            buffer.changes.iter().filter(|change| change.resource_version > resource_version).cloned().collect();
        Ok(Subscription { backlog, live: receiver })
    }

    fn publish(&self, change: Option<Change>, resource_version: i64) {
        let mut buffer = self.buffer.write().expect("feed buffer lock");
        if let Some(change) = change {
            let change = Arc::new(change);
            buffer.changes.push_back(change.clone());
            if buffer.changes.len() > BUFFER
                && let Some(dropped) = buffer.changes.pop_front()
            {
                buffer.start = dropped.resource_version;
            }
            let _ = self.sender.send(change);
        }
        self.cursor.store(resource_version, Ordering::Release);
    }

    /// Reads the log until `shutdown`. Start it once per process, after the migrations. It wakes when `commits`
    /// moves (this process's writes), on a notification (other processes'), or every [`POLL`].
    pub async fn run(self: Arc<Self>, store: super::Store, shutdown: CancellationToken) {
        let pool = store.pool().clone();
        let mut commits = store.commits();
        loop {
            match self.clone().follow(&pool, &mut commits, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "change feed interrupted; resuming");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        tracing::info!("change feed stopped");
    }

    async fn follow(
        self: Arc<Self>,
        pool: &sqlx::PgPool,
        commits: &mut tokio::sync::watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(super::CHANGES_CHANNEL).await?;
        // reads run on a connection of the feed's own: through the pool each would cost two more round trips (its
        // test on acquire and on release). A generic plan: the custom plan PostgreSQL otherwise makes for every
        // read (the cursor is always near the end of the index) cost more than the read itself.
        let options = pool.connect_options().as_ref().clone().options([("plan_cache_mode", "force_generic_plan")]);
        let mut reader = PgConnection::connect_with(&options).await?;
        if !self.is_running() {
            let (start,): (i64,) =
                sqlx::query_as("select coalesce(max(resource_version), 0) from changes").fetch_one(pool).await?;
            self.buffer.write().expect("feed buffer lock").start = start;
            self.cursor.store(start, Ordering::Release);
            self.started.store(1, Ordering::Release);
            tracing::info!(resource_version = start, "change feed started");
        }
        let mut gap_since: Option<(i64, tokio::time::Instant)> = None;
        // rows read beyond a gap: kept, so that while the gap is open only the gap is read again
        let mut beyond_gap: VecDeque<ChangeRow> = VecDeque::new();
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let cursor = self.cursor();
            let until = beyond_gap.front().map_or(i64::MAX, |row| row.resource_version);
            let rows: Vec<ChangeRow> = sqlx::query_as(
                "select resource_version, event_type, kind, namespace, uid, object, previous_labels from changes
                 where resource_version > $1 and resource_version < $2 order by resource_version limit $3",
            )
            .bind(cursor)
            .bind(until)
            .bind(PAGE)
            .fetch_all(&mut reader)
            .await?;
            self.rows_read.inc_by(rows.len() as u64);
            let full_page = rows.len() == PAGE as usize;
            let drained = !beyond_gap.is_empty();
            let mut rows: VecDeque<ChangeRow> = rows.into();
            rows.append(&mut beyond_gap);
            let mut expected = cursor + 1;
            while let Some(row) = rows.pop_front() {
                if row.resource_version != expected {
                    rows.push_front(row);
                    break;
                }
                expected += 1;
                let change = (row.event_type != "GAP").then(|| Change {
                    resource_version: row.resource_version,
                    event_type: row.event_type,
                    kind: row.kind,
                    namespace: row.namespace,
                    uid: row.uid,
                    object: row.object.map(|object| object.0).unwrap_or(Value::Null),
                    previous_labels: row.previous_labels.map(|labels| labels.0),
                    line: OnceLock::new(),
                });
                self.publish(change, row.resource_version);
            }
            if !rows.is_empty() {
                // `expected` is missing: its transaction has not committed yet (or rolled back)
                beyond_gap = rows;
                match gap_since {
                    Some((version, since)) if version == expected && since.elapsed() >= GAP_GRACE => {
                        fill_gap(pool, expected).await?;
                        gap_since = None;
                    }
                    Some((version, _)) if version == expected => tokio::time::sleep(GAP_CHECK).await,
                    _ => {
                        gap_since = Some((expected, tokio::time::Instant::now()));
                        tokio::time::sleep(GAP_CHECK).await;
                    }
                }
                continue;
            }
            if full_page || drained {
                continue; // read on: more may follow what was read
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                sqlx::query("delete from changes where created_at < now() - make_interval(secs => $1)")
                    .bind(RETENTION.as_secs_f64())
                    .execute(pool)
                    .await?;
                last_prune = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                notification = listener.recv() => { notification?; }
                _ = commits.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// Resolves a missing resourceVersion: waits for the transaction holding it (if it logged already) or takes the
/// number away from it (if it has not), in which case that transaction retries with a new one.
async fn fill_gap(pool: &sqlx::PgPool, resource_version: i64) -> Result<()> {
    let mut transaction = pool.begin().await?;
    sqlx::query("set local lock_timeout = '10s'").execute(&mut *transaction).await?;
    let filled = sqlx::query(
        "insert into changes (resource_version, event_type) values ($1, 'GAP') on conflict (resource_version) do nothing",
    )
    .bind(resource_version)
    .execute(&mut *transaction)
    .await;
    match filled {
        Ok(_) => transaction.commit().await?,
        // still held by a long transaction: try again on the next round
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {}
        Err(error) => return Err(error.into()),
    }
    Ok(())
}
