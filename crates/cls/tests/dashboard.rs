//! The `/ui` dashboard in headless Chromium against the real `cls up`: the page loads, asks for a token, sends the
//! one from the URL fragment, shows objects created through the API and turns a Cluster Ready when a controller
//! reports. The browser side is `tests/ui/dashboard.mjs` (Playwright's `playwright-core`, driving Debian's
//! `/usr/bin/chromium`); screenshots are kept in `target/ui-artifacts/`.
//!
//! Chromium is installed with apt-get when missing; the test is skipped (and says so) only when that fails too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cls_testkit::TestDb;
use common::{Cls, run_bounded};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed when missing. `None` when it is missing and cannot be installed.
fn chromium() -> Option<&'static str> {
    if Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM);
    }
    eprintln!("{CHROMIUM} is missing: trying apt-get install -y chromium");
    let mut install = Command::new("sh");
    install
        .args(["-c", "apt-get update -qq && apt-get install -y -qq chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    let (installed, output) = run_bounded(&mut install, Duration::from_secs(480));
    if installed && Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM);
    }
    eprintln!("apt-get install chromium failed:\n{output}");
    None
}

/// `tests/ui` with `playwright-core` installed (npm, from the committed lock file).
fn browser_test_project() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    if !project.join("node_modules/playwright-core/package.json").exists() {
        let mut install = Command::new("npm");
        install.args(["ci", "--no-audit", "--no-fund"]).current_dir(&project);
        let (installed, output) = run_bounded(&mut install, Duration::from_secs(300));
        assert!(installed, "npm ci in {} failed:\n{output}", project.display());
    }
    project
}

#[tokio::test]
async fn dashboard_shows_objects_created_through_the_api_and_updates_when_their_status_changes() {
    let Some(chromium) = chromium() else {
        println!("SKIPPED dashboard test: {CHROMIUM} is missing and `apt-get install -y chromium` failed");
        return;
    };
    let project = browser_test_project();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("ui-artifacts");
    for stale in ["dashboard.png", "dashboard-pending.png", "dashboard-failure.png"] {
        let _ = std::fs::remove_file(artifacts.join(stale));
    }
    let db = TestDb::new(&cls_api::store::MIGRATOR).await;
    let home = std::env::temp_dir().join(format!("cls-ui-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).expect("home");
    let home_text = home.display().to_string();
    let cls = Cls::start(&["up"], &[("DATABASE_URL", &db.url), ("CLS_HOME", &home_text)]);
    cls.wait_ready().await;

    let page = reqwest::get(format!("{}/ui", cls.base)).await.expect("GET /ui");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("body").contains("CLS dashboard"));

    let mut node = Command::new("node");
    node.arg("dashboard.mjs")
        .current_dir(&project)
        .env("CLS_BASE", &cls.base)
        .env("CLS_TOKEN", cls.up_token())
        .env("CLS_UI_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium);
    let (passed, output) = tokio::task::spawn_blocking(move || run_bounded(&mut node, Duration::from_secs(150)))
        .await
        .expect("browser test thread");
    println!("{output}");
    assert!(passed, "the browser test failed:\n{output}");
    let screenshot = std::fs::read(artifacts.join("dashboard.png")).expect("the screenshot is kept");
    assert!(screenshot.starts_with(b"\x89PNG"), "the screenshot is a PNG");

    drop(cls);
    let _ = std::fs::remove_dir_all(&home);
}
