//! Test harness for CLS integration tests: real, throwaway PostgreSQL servers
//! and databases, with no setup beyond having the PostgreSQL server binaries
//! installed (Debian/Ubuntu: `apt-get install postgresql-15`).
//!
//! ```no_run
//! use cls_testkit::TestDb;
//!
//! static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./test-migrations");
//!
//! # async fn example() {
//! // In a #[tokio::test]: a brand-new, migrated database on the shared server.
//! let db = TestDb::new(&MIGRATOR).await;
//! let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db.pool).await.unwrap();
//! assert_eq!(one, 1);
//! # }
//! ```
//!
//! * [`PgServer::shared`] starts one server per test process (~0.2-0.5 s, from a
//!   cached `initdb` template); with `cargo test` all tests of a binary share it,
//!   with cargo-nextest each test process gets its own.
//! * [`TestDb::new`] gives each test its own database, cloned from a template
//!   database migrated once per server and migrator.
//! * [`PgServer::start`] gives a test a server of its own, e.g. to crash it with
//!   [`PgServer::stop_immediate`] and bring it back with [`PgServer::restart`].
//!
//! Servers listen on 127.0.0.1 only, run without durability (`fsync=off`), and are
//! stopped and deleted by a watchdog process when the test process exits in any way.
//!
//! Environment overrides: `CLS_TESTKIT_PG_BIN` (binaries directory),
//! `CLS_TESTKIT_DIR` (where server directories go).

mod db;
mod env;
pub mod pubsub;
mod server;

pub use db::TestDb;
pub use pubsub::PubSubEmulator;
pub use server::PgServer;

/// Waits until `probe` answers true, polling every 25 ms, or panics after `limit` naming `what` was awaited.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, probe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !probe().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::{Ipv4Addr, TcpStream};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use sqlx::migrate::Migrator;
    use sqlx::{Connection, PgConnection};

    use super::*;

    static MIGRATOR: Migrator = sqlx::migrate!("./test-migrations");

    async fn select_one(url: &str) -> i32 {
        let mut conn = PgConnection::connect(url).await.expect("connect");
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.expect("select 1");
        conn.close().await.expect("close");
        one
    }

    #[tokio::test]
    async fn shared_server_answers_select_1() {
        let server = PgServer::shared();
        assert!(std::ptr::eq(server, PgServer::shared()));
        assert_eq!(select_one(&server.admin_url()).await, 1);
        assert!(server.bin_dir().join("pgbench").exists());
        eprintln!("shared server {} started in {:?}", server.version(), server.startup_time());
    }

    #[tokio::test]
    async fn two_test_dbs_are_distinct() {
        let a = TestDb::new(&MIGRATOR).await;
        let b = TestDb::new(&MIGRATOR).await;
        assert_ne!(a.name, b.name);
        assert_ne!(a.url, b.url);

        let current = |db: &TestDb| {
            let pool = db.pool.clone();
            async move { sqlx::query_scalar::<_, String>("SELECT current_database()").fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(current(&a).await, a.name);
        assert_eq!(current(&b).await, b.name);

        // Migrated, and independent.
        sqlx::query("INSERT INTO testkit_probe (note) VALUES ('a')").execute(&a.pool).await.unwrap();
        let count = |db: &TestDb| {
            let pool = db.pool.clone();
            async move { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM testkit_probe").fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(count(&a).await, 1);
        assert_eq!(count(&b).await, 0);

        b.drop_database().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_test_dbs() {
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            set.spawn(async {
                let db = TestDb::new(&MIGRATOR).await;
                sqlx::query("INSERT INTO testkit_probe (note) VALUES ('x')").execute(&db.pool).await.unwrap();
                db.name
            });
        }
        let mut names = Vec::new();
        while let Some(name) = set.join_next().await {
            names.push(name.unwrap());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
        eprintln!("8 concurrent TestDb::new in {:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn owned_server_stop_and_restart() {
        let server = PgServer::start();
        let dir = server.dir().to_path_buf();
        assert!(!std::ptr::eq(&server, PgServer::shared()));
        assert_eq!(select_one(&server.admin_url()).await, 1);

        let db = TestDb::new_on(&server, &MIGRATOR).await;
        db.pool.close().await;
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        // The server runs with synchronous_commit=off; make this commit reach the WAL.
        sqlx::query("SET synchronous_commit = on").execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO testkit_probe (note) VALUES ('durable')").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        server.stop_immediate();
        assert!(!server.is_running());
        assert!(PgConnection::connect(&server.admin_url()).await.is_err());
        server.stop_immediate(); // idempotent

        server.restart();
        assert!(server.is_running());
        assert_eq!(select_one(&server.admin_url()).await, 1);
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM testkit_probe").fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, 1, "committed row survives the crash (WAL was written)");
        conn.close().await.unwrap();

        server.restart(); // also works while running
        assert_eq!(select_one(&server.admin_url()).await, 1);

        let port = server.port();
        drop(server);
        assert!(!dir.exists(), "drop removes {}", dir.display());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn failed_start_is_reported_not_hung() {
        let server = PgServer::start();
        server.stop_immediate();
        // Someone else takes the port while the server is down.
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, server.port())).unwrap();
        let t0 = Instant::now();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()))
            .expect_err("restart must fail while the port is taken");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("could not bind"), "unexpected message: {msg}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        drop(squatter);
        server.restart();
        assert!(server.is_running());
    }

    const HELPER_ENV: &str = "CLS_TESTKIT_WATCHDOG_HELPER";

    /// Not a test by itself: run as a child process by `watchdog_cleans_up_after_sigkill`.
    #[test]
    #[ignore = "helper process for watchdog_cleans_up_after_sigkill"]
    fn watchdog_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        let server = PgServer::shared();
        println!("HELPER {} {}", server.port(), server.dir().display());
        std::thread::sleep(Duration::from_secs(120));
    }

    #[test]
    fn watchdog_cleans_up_after_sigkill() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["tests::watchdog_helper", "--exact", "--ignored", "--nocapture"])
            .env(HELPER_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .find(|l| l.starts_with("HELPER "))
            .expect("helper printed its server");
        let mut parts = line.split(' ').skip(1);
        let port: u16 = parts.next().unwrap().parse().unwrap();
        let dir = PathBuf::from(parts.next().unwrap());
        assert!(dir.join("data").exists());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());

        child.kill().unwrap(); // SIGKILL: no destructor, no atexit
        child.wait().unwrap();

        let deadline = Instant::now() + Duration::from_secs(20);
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!dir.exists(), "watchdog removed {}", dir.display());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }
}
