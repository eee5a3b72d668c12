//! Storage of CLS objects in PostgreSQL.
//!
//! Data flow: a write locks the object's row (or relies on the unique constraint for creates), changes it, bumps its
//! `resource_version` from one global sequence, and writes its outbox event and schedule row in the same
//! transaction. Controller reports take the optimistic path: one read, then one statement that stores the report,
//! marks the aggregate dirty, writes the event and moves the schedule, guarded by the `status_seq` it read.
//! Reads fetch the row and, only when the cached aggregate is stale, the reports in the same statement; the fresh
//! aggregate is then cached with a compare-and-set on `status_seq`, so a report racing a read is never lost.

mod batch;
mod bodies;
mod connections;
pub mod feed;
mod object;
pub mod read;
mod registry;
mod report;
mod security;
mod write;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use cls_core::Kind;
use cls_core::validation::FieldErrors;
use thiserror::Error;
use uuid::Uuid;

pub use object::{ObjectJson, StoredObject};
pub use read::{ContinueToken, ListJson, ListQuery, ListResult};
pub use security::{AuditRecord, TokenRecord};
pub use write::Change;

use connections::KeptConnections;
use registry::RegistryCache;

/// The migrations of the object store, run by every role at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Advisory lock key under which migrations run, so that replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x0c15_0001;

/// The connection options for `database_url`, with the session settings every process of CLS wants.
///
/// `jit = off`: CLS runs short point queries. On a fresh database, whose small tables have no statistics yet, a GET's
/// estimated cost crossed `jit_above_cost` and each one spent ~90 ms compiling (seen with auto_explain while seeding
/// 3,000 Clusters: 6 s for 2,900, 21 s for 3,000).
pub fn connect_options(database_url: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    let options: sqlx::postgres::PgConnectOptions = database_url.parse()?;
    Ok(options.options([("jit", "off")]))
}

/// Runs the migrations under an advisory lock (idempotent).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut connection = pool.acquire().await?;
    sqlx::query("select pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *connection).await?;
    let result = MIGRATOR.run(&mut *connection).await;
    sqlx::query("select pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *connection).await?;
    result
}

/// How an object is addressed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    Uid(Uuid),
    /// `namespace` is empty for cluster-scoped kinds.
    Name {
        namespace: String,
        name: String,
    },
}

impl ObjectKey {
    pub fn name(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey::Name { namespace: namespace.into(), name: name.into() }
    }

    fn describe(&self) -> String {
        match self {
            ObjectKey::Uid(uid) => uid.to_string(),
            ObjectKey::Name { name, .. } => name.clone(),
        }
    }
}

/// Errors of the store. HTTP status codes are the transport's business; the variants say what went wrong.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{} {name:?} not found", kind.plural())]
    NotFound { kind: Kind, name: String },
    #[error("{} {name:?} already exists", kind.plural())]
    AlreadyExists { kind: Kind, name: String },
    #[error("operation cannot be fulfilled on {} {name:?}: {reason}", kind.plural())]
    Conflict { kind: Kind, name: String, reason: String },
    #[error("{kind} {name:?} is invalid")]
    Invalid { kind: Kind, name: String, errors: FieldErrors },
    #[error("{0}")]
    BadRequest(String),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    pub(crate) fn stale(kind: Kind, name: &str) -> Self {
        StoreError::Conflict {
            kind,
            name: name.to_owned(),
            reason: "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        }
    }

    /// Whether retrying the whole transaction can succeed (deadlock, serialization failure, or the change feed
    /// having declared this transaction's resourceVersion a gap).
    fn retryable(&self) -> bool {
        match self {
            StoreError::Database(error) => {
                is_watch_log_race(error)
                    || matches!(error, sqlx::Error::Database(database)
                        if matches!(database.code().as_deref(), Some("40001" | "40P01")))
            }
            _ => false,
        }
    }
}

/// Whether the change feed filled this write's resourceVersion as a gap before the write logged it; the write
/// is retried with a new resourceVersion.
pub(crate) fn is_watch_log_race(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.constraint() == Some("changes_pkey"))
}

/// Whether `error` means the database could not be reached (503) rather than refused the request.
pub fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // connection exceptions, admin/crash shutdown, cannot connect now, too many connections
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || ["57P01", "57P02", "57P03", "53300"].contains(&code.as_ref())
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_connection_error(&error) {
            return StoreError::Unavailable(error);
        }
        // data the database cannot represent (a NUL in text or JSON, bad encoding): the request's fault
        if let sqlx::Error::Database(database) = &error
            && matches!(database.code().as_deref(), Some("22P05" | "22021" | "22P02" | "54000"))
        {
            return StoreError::BadRequest(format!("the database refused the data: {}", database.message()));
        }
        StoreError::Database(error)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Cadences the scheduler uses; the store moves objects between them on every change.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleConfig {
    pub attention_interval: Duration,
    pub stable_interval: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { attention_interval: Duration::from_secs(30), stable_interval: Duration::from_secs(300) }
    }
}

/// The object store.
#[derive(Clone)]
pub struct Store {
    pool: sqlx::PgPool,
    schedule: ScheduleConfig,
    registry: RegistryCache,
    /// Concurrent GETs' shared statements.
    gets: batch::Batcher<read::GetItem, read::Fetched>,
    /// The connections of lists (generic plans; see [`read::list_pool`]).
    lists: sqlx::PgPool,
    /// The bodies of recent GETs, rendered once per version of their row.
    bodies: bodies::Bodies,
    /// Connections controller reports keep out of the pool's acquire and release round trips.
    reports: KeptConnections,
    /// The audit writer's connection, kept the same way.
    audit_connections: KeptConnections,
    /// The objects as this process's reports left them, so that the next report can skip its read.
    reported: report::Reported,
    /// Writes run to the end and roll back (`dryRun=All`).
    dry_run: bool,
    /// Counts committed writes: the change feed and the notifier wait on it.
    committed: Arc<watch::Sender<u64>>,
}

impl Store {
    pub fn new(pool: sqlx::PgPool, schedule: ScheduleConfig) -> Self {
        let (committed, _) = watch::channel(0);
        let bodies = bodies::Bodies::default();
        let gets = read::get_batcher(read::get_pool(&pool), bodies.clone());
        let lists = read::list_pool(&pool);
        let reports = KeptConnections::for_pool(&pool);
        let audit_connections = KeptConnections::new(1);
        Store {
            pool,
            schedule,
            registry: RegistryCache::default(),
            gets,
            lists,
            bodies,
            reports,
            audit_connections,
            reported: report::Reported::default(),
            dry_run: false,
            committed: Arc::new(committed),
        }
    }

    /// The count of GETs answered with a body this process held (PostgreSQL rendered it for an earlier GET of the
    /// same row version); shared, a clone counts along.
    pub fn get_bodies_reused(&self) -> prometheus_client::metrics::counter::Counter {
        self.bodies.reused_counter()
    }

    /// The same store with writes that validate, run and roll back, persisting nothing.
    pub fn dry_run(&self) -> Store {
        Store { dry_run: true, ..self.clone() }
    }

    /// Commits, or rolls back in a dry run.
    async fn finish(&self, transaction: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<()> {
        if self.dry_run {
            transaction.rollback().await?;
        } else {
            transaction.commit().await?;
            self.committed();
        }
        Ok(())
    }

    /// Signals a committed write.
    fn committed(&self) {
        self.committed.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver that changes after every write this store commits.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Channels woken after writes commit: the change feed of other API processes and the outbox relays listen.
pub const CHANGES_CHANNEL: &str = "cls_changes";
pub const OUTBOX_CHANNEL: &str = "cls_outbox";

/// Wakes the listeners of other processes after this store's writes commit, with one `NOTIFY` per burst of writes.
/// Writes do not notify themselves: a `NOTIFY` takes a database-wide lock until its transaction has committed, which
/// would serialize every write's commit (and its disk flush) behind the others.
pub async fn notify_listeners(store: Store, shutdown: tokio_util::sync::CancellationToken) {
    let mut commits = store.commits();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = commits.changed() => if changed.is_err() { return },
        }
        let notified = sqlx::query("select pg_notify($1, ''), pg_notify($2, '')")
            .bind(CHANGES_CHANNEL)
            .bind(OUTBOX_CHANNEL)
            .execute(&store.pool)
            .await;
        if let Err(error) = notified {
            tracing::debug!(error = %error, "cannot notify listeners; they poll");
        }
        // let the next burst gather
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs `attempt` again when the database reports a deadlock or serialization failure.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(error) if error.retryable() && tries < 5 => {
                tries += 1;
                tracing::debug!(tries, error = %error, "retrying transaction");
            }
            result => return result,
        }
    }
}

fn interval_seconds(interval: Duration) -> f64 {
    interval.as_secs_f64()
}
