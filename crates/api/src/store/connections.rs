//! A few pool connections that the hot paths keep for themselves: GETs' shared statements, controller reports, and
//! the audit writer.
//!
//! sqlx's pool sends a round trip to the server when it hands a connection out (`test_before_acquire`) and
//! another when it takes one back (always, to make sure a dropped query left it clean): two round trips beside a
//! query, each waking a PostgreSQL backend. The hot paths instead take a connection from a small stack and put it
//! back after a query that succeeded, without a round trip (a report's two statements went from six round trips to
//! two: `cls bench write` 1,623-1,690 -> 2,350-2,561 reports/s in alternating runs).
//!
//! Guarantees: at most `limit` connections are held here (taken from the pool, so they count against its maximum);
//! GETs beyond that wait for one (FIFO). A connection is used at most [`RECYCLE_AFTER`] before it goes back through
//! the pool (which applies its lifetime limits). A connection whose query failed, or whose future was dropped
//! mid-query, is never put back: it returns to the pool, which tests it and closes it when it is broken.
//! Caveat: a connection broken while it sat here (the server restarted) fails its next query; the caller retries
//! such a connection error once on a connection from the pool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a kept connection serves before it goes back through the pool.
pub(crate) const RECYCLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct KeptConnections {
    idle: Arc<Mutex<Vec<Kept>>>,
    permits: Arc<Semaphore>,
}

struct Kept {
    connection: PoolConnection<Postgres>,
    since: Instant,
}

/// A connection lent to one query; [`KeptConnections::give_back`] after it succeeded, drop otherwise.
pub(crate) struct Lent {
    pub connection: PoolConnection<Postgres>,
    since: Instant,
    /// Whether it came from the stack (not tested since its last query).
    pub reused: bool,
    _permit: OwnedSemaphorePermit,
}

impl KeptConnections {
    /// Keeps up to a quarter of the pool's connections, at most 8 (a few busy backends saturate a small server).
    pub(crate) fn for_pool(pool: &PgPool) -> Self {
        KeptConnections::new((pool.options().get_max_connections() as usize / 4).clamp(1, 8))
    }

    /// Keeps up to `limit` connections.
    pub(crate) fn new(limit: usize) -> Self {
        KeptConnections {
            idle: Arc::new(Mutex::new(Vec::with_capacity(limit))),
            permits: Arc::new(Semaphore::new(limit)),
        }
    }

    pub(crate) async fn take(&self, pool: &PgPool) -> Result<Lent, sqlx::Error> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let kept = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or_default();
        if let Some(Kept { connection, since }) = kept {
            return Ok(Lent { connection, since, reused: true, _permit: permit });
        }
        let connection = pool.acquire().await?;
        Ok(Lent { connection, since: Instant::now(), reused: false, _permit: permit })
    }

    /// A connection from the pool (tested by it), kept afterwards like the others.
    pub(crate) async fn take_fresh(&self, pool: &PgPool) -> Result<Lent, sqlx::Error> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let connection = pool.acquire().await?;
        Ok(Lent { connection, since: Instant::now(), reused: false, _permit: permit })
    }

    /// Puts back a connection whose query succeeded; one that served long enough returns to the pool instead.
    pub(crate) fn give_back(&self, lent: Lent) {
        if lent.since.elapsed() >= RECYCLE_AFTER {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Kept { connection: lent.connection, since: lent.since });
        }
    }
}
