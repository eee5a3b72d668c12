//! Per-test databases, cloned from a migrated template database.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::PgServer;

/// A fresh database of its own for one test, with the given migrations applied.
///
/// It is a copy (`CREATE DATABASE ... TEMPLATE`) of a database migrated once per
/// server and migrator, so creating one costs a few tens of milliseconds however
/// many migrations there are. It lives until the server stops (process exit for
/// the shared server) unless you call [`TestDb::drop_database`].
#[derive(Debug)]
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:PORT/<name>`.
    pub url: String,
    /// `test_<uuid>`.
    pub name: String,
    /// A pool on this database (`max_connections(10)`).
    pub pool: PgPool,
}

impl TestDb {
    /// A new database on the [shared server](PgServer::shared) with `migrator`'s
    /// migrations applied.
    pub async fn new(migrator: &'static Migrator) -> TestDb {
        Self::new_on(shared_server().await, migrator).await
    }

    /// A new database on `server` (e.g. one from [`PgServer::start`]).
    pub async fn new_on(server: &PgServer, migrator: &Migrator) -> TestDb {
        let template = template_db(server, migrator).await;
        let name = format!("test_{}", Uuid::new_v4().simple());
        let mut admin = connect(&server.admin_url()).await;
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#)))
            .await
            .unwrap_or_else(|e| panic!("cls-testkit: CREATE DATABASE {name} TEMPLATE {template}: {e}"));
        let _ = admin.close().await;
        let url = server.url_for(&name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cls-testkit: connect to {url}: {e}"));
        TestDb { url, name, pool }
    }

    /// Closes the pool and drops the database (terminating any other
    /// connection to it), freeing its disk space before the server stops.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let admin_url = match self.url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/postgres"),
            None => unreachable!("TestDb url without a path: {}", self.url),
        };
        let mut admin = connect(&admin_url).await;
        admin
            .execute(AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name)))
            .await
            .unwrap_or_else(|e| panic!("cls-testkit: DROP DATABASE {}: {e}", self.name));
        let _ = admin.close().await;
    }
}

/// The shared server, without blocking the async runtime while it starts.
async fn shared_server() -> &'static PgServer {
    if let Some(server) = PgServer::shared_if_started() {
        return server;
    }
    match tokio::task::spawn_blocking(PgServer::shared).await {
        Ok(server) => server,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("cls-testkit: starting the shared server: {e}"),
    }
}

/// Connects, retrying briefly (e.g. when a busy server is out of connection slots).
async fn connect(url: &str) -> PgConnection {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match PgConnection::connect(url).await {
            Ok(conn) => return conn,
            Err(e) if attempt >= 20 => panic!("cls-testkit: connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `cls_template_<hash>`: identifies a migrator's content (checksums etc.).
fn template_name(migrator: &Migrator) -> String {
    let mut h = DefaultHasher::new();
    migrator.table_name.hash(&mut h);
    migrator.create_schemas.hash(&mut h);
    migrator.no_tx.hash(&mut h);
    for m in migrator.iter() {
        m.version.hash(&mut h);
        m.description.hash(&mut h);
        format!("{:?}", m.migration_type).hash(&mut h);
        m.checksum.hash(&mut h);
        m.no_tx.hash(&mut h);
    }
    format!("cls_template_{:016x}", h.finish())
}

type TemplateCells = HashMap<(PathBuf, String), Arc<OnceCell<()>>>;

/// Creates (once per server and migrator) the migrated template database.
async fn template_db(server: &PgServer, migrator: &Migrator) -> String {
    static TEMPLATES: LazyLock<Mutex<TemplateCells>> = LazyLock::new(Mutex::default);
    let name = template_name(migrator);
    let cell = TEMPLATES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((server.dir().to_path_buf(), name.clone()))
        .or_default()
        .clone();
    cell.get_or_init(|| create_template_db(server, migrator, &name)).await;
    name
}

async fn create_template_db(server: &PgServer, migrator: &Migrator, name: &str) {
    let mut admin = connect(&server.admin_url()).await;
    for sql in [
        // A previous attempt in this process may have failed half-way.
        format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#),
        format!(r#"CREATE DATABASE "{name}""#),
    ] {
        admin.execute(AssertSqlSafe(sql.clone())).await.unwrap_or_else(|e| panic!("cls-testkit: {sql}: {e}"));
    }
    let _ = admin.close().await;

    // A one-connection pool rather than a bare connection: `Migrator::run(&mut conn)`
    // makes the future non-`Send` (higher-ranked lifetime issue in `Acquire`).
    let url = server.url_for(name);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cls-testkit: connect to {url}: {e}"));
    if let Err(e) = migrator.run(&pool).await {
        panic!("cls-testkit: migrating template database {name}: {e}");
    }
    // No connection may remain to a database used as TEMPLATE. (PostgreSQL also
    // waits up to 5 s for a closing backend to go away.)
    pool.close().await;
}
