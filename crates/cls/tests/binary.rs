//! The real `cls` binary: `cls up` with and without `DATABASE_URL`, `cls api` while the database is down,
//! `cls migrate`, and graceful shutdown on SIGTERM.

mod common;

use std::path::PathBuf;
use std::process::Command;

use cls_testkit::{PgServer, TestDb};
use common::{BINARY, Cls, client_with, create_token};
use serde_json::{Value, json};

fn cluster(name: &str) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
           "spec": {"platform": {"type": "local"}}})
}

#[tokio::test]
async fn cls_up_with_a_database_url_serves_the_api_and_exits_cleanly_on_sigterm() {
    let db = TestDb::new(&cls_api::store::MIGRATOR).await;
    let cls = Cls::start(&["up"], &[("DATABASE_URL", &db.url)]);
    let client = cls.up_client();
    cls.wait_ready().await;

    let created = client.post(cls.url("/api/v1/clusters")).json(&cluster("dev")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let listed: Value = client.get(cls.url("/api/v1/clusters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"][0]["metadata"]["name"], "dev");

    let (status, _) = cls.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn cls_up_without_a_database_url_runs_its_own_postgres_and_keeps_the_data_across_runs() {
    let home = tempdir();
    let home_text = home.display().to_string();

    let first = Cls::start(&["up"], &[("CLS_HOME", &home_text)]);
    let client = first.up_client();
    first.wait_ready().await;
    let created = client.post(first.url("/api/v1/clusters")).json(&cluster("kept")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let (status, logs) = first.terminate();
    assert!(status.success(), "exit status {status}");
    let data_dir = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|log| log["fields"]["data"].as_str().map(PathBuf::from))
        .expect("cls up logs its PostgreSQL data directory");
    assert!(!postgres_running(&data_dir), "embedded PostgreSQL still running after cls up stopped");

    // set but empty counts as unset (it did not: `cls up` failed on the empty URL)
    let second = Cls::start(&["up"], &[("CLS_HOME", &home_text), ("DATABASE_URL", "")]);
    let fresh = second.up_client();
    second.wait_ready().await;
    let listed: Value = fresh.get(second.url("/api/v1/clusters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"][0]["metadata"]["name"], "kept");
    let stale = client.get(second.url("/api/v1/clusters")).send().await.unwrap();
    assert_eq!(stale.status(), 401, "each cls up replaces its admin token");
    let (status, _) = second.terminate();
    assert!(status.success(), "exit status {status}");

    if let Some(base) = data_dir.parent().filter(|base| base.starts_with("/var/lib/cls")) {
        let _ = std::fs::remove_dir_all(base);
    }
    let _ = std::fs::remove_dir_all(&home);
}

/// Regression: when the API of `cls up` failed before serving, the built-in controllers waited for its address
/// forever and `cls up` hung silently (even through SIGTERM) instead of exiting with the error.
#[test]
fn cls_up_with_a_malformed_database_url_exits_with_the_error() {
    let home = tempdir();
    let mut child = Command::new(BINARY)
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", "not a url")
        .env("CLS_HOME", &home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("cls up with a malformed DATABASE_URL still runs after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("invalid DATABASE_URL"), "{stderr}");
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn cls_api_answers_healthz_while_the_database_is_down_and_503_elsewhere() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{closed_port}/none");
    let cls = Cls::start(&["api"], &[("DATABASE_URL", &url)]);
    let client = reqwest::Client::new();

    let health = client.get(cls.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(cls.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let list = client.get(cls.url("/api/v1/clusters")).send().await.unwrap();
    assert_eq!(list.status(), 503);
    let body: Value = list.json().await.unwrap();
    assert_eq!(body["kind"], "Status");

    let (status, _) = cls.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn cls_migrate_is_idempotent() {
    let server = PgServer::shared();
    let admin = sqlx::PgPool::connect(&server.admin_url()).await.unwrap();
    let name = format!("migrate_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&admin).await.unwrap();
    let url = server.url_for(&name);
    for _ in 0..2 {
        let status = Command::new(BINARY).arg("migrate").env("DATABASE_URL", &url).status().unwrap();
        assert!(status.success());
    }
    let database = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name in ('objects', 'reports', 'outbox', 'schedules')",
    )
    .fetch_one(&database)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

#[tokio::test]
async fn cls_token_creates_lists_and_revokes_tokens_in_the_database_and_through_the_api() {
    let db = TestDb::new(&cls_api::store::MIGRATOR).await;
    let home = tempdir();
    let home_text = home.display().to_string();
    let cls =
        Cls::start(&["up", "--builtin-controllers=false"], &[("DATABASE_URL", &db.url), ("CLS_HOME", &home_text)]);
    cls.wait_ready().await;
    let _ = cls.up_token();

    // with DATABASE_URL: straight into PostgreSQL
    let viewer = create_token(&db.url, "viewer", &["team-a"]);
    let listed = client_with(&viewer).get(cls.url("/api/v1/clusters")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let refused = client_with(&viewer).post(cls.url("/api/v1/clusters")).json(&cluster("x")).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // without: through the API of the kubeconfig that cls up wrote, with its admin token
    let token = |args: &[&str]| {
        let output = Command::new(BINARY)
            .arg("token")
            .args(args)
            .env_remove("DATABASE_URL")
            .env("CLS_HOME", &home_text)
            .output()
            .unwrap();
        assert!(output.status.success(), "cls token {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let editor = token(&["create", "--role", "editor", "--name", "ci-editor"]).trim().to_owned();
    let created = client_with(&editor).post(cls.url("/api/v1/clusters")).json(&cluster("by-ci")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let list = token(&["list"]);
    assert!(list.contains("ci-editor") && list.contains("editor"), "{list}");
    assert!(!list.contains(&editor), "secrets are never listed");
    token(&["revoke", "ci-editor"]);
    let revoked = client_with(&editor).get(cls.url("/api/v1/clusters")).send().await.unwrap();
    assert_eq!(revoked.status(), 401, "a revoked token stops working at once on the API that revoked it");
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    let _ = std::fs::remove_dir_all(&home);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cls-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn postgres_running(data_dir: &std::path::Path) -> bool {
    std::fs::read_to_string(data_dir.join("postmaster.pid")).is_ok_and(|pid_file| {
        pid_file.lines().next().is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// A benchmark runs again on a database where an earlier run left its Clusters (it used to stop at the first
/// seeding conflict): `cls bench write` twice on one `--database-url`.
#[tokio::test]
async fn cls_bench_write_runs_twice_on_one_database() {
    let db = TestDb::new(&cls_api::store::MIGRATOR).await;
    for run in 0..2 {
        let output = tokio::process::Command::new(BINARY)
            .args(["bench", "write", "--duration", "1s", "--database-url", &db.url])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("ratio:"),
            "run {run}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let clusters: i64 =
        sqlx::query_scalar("select count(*) from objects where kind = 'Cluster'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(clusters, 1000, "the second run used the first one's Clusters");
}
