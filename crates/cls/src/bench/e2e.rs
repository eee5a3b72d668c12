//! `cls bench e2e`: apply to Ready through the real `cls up` (API, reconciler and the built-in controllers on the
//! in-process bus): a local Service with a trivial health check, from the POST to `Ready=True`. The baseline is
//! the floor of that path: starting the same process directly and waiting until it accepts connections.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::Environment;

const SAMPLES: usize = 30;

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn ready(object: &Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|conditions| {
        conditions.iter().any(|condition| condition["type"] == "Ready" && condition["status"] == "True")
    })
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let object: Value = client.get(url).send().await?.json().await?;
        if ready(&object) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not Ready within 30 s: {}", object["status"]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `cls bench e2e`.
pub async fn run(environment: &Environment) -> anyhow::Result<()> {
    let home = std::env::temp_dir().join(format!("cls-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["up", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &environment.database_url)
        .env("CLS_HOME", &home)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start cls up")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(base) = line.strip_prefix("cls api listening on ") {
                return anyhow::Ok(base.to_owned());
            }
        }
        bail!("cls up exited")
    })
    .await
    .context("cls up did not start")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = &environment.client;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|response| response.status() == 200) {
        if Instant::now() > deadline {
            bail!("cls up did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = measure(client, &base).await;
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_dir_all(&home);
    result
}

async fn measure(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let cluster: Value = client
        .post(format!("{base}/api/v1/clusters"))
        .json(&json!({"metadata": {"name": "bench", "namespace": "e2e"}, "spec": {"platform": {"type": "local"}}}))
        .send()
        .await?
        .json()
        .await?;
    let cluster_uid = cluster["metadata"]["uid"].as_str().context("cluster uid")?;
    wait_ready(client, &format!("{base}/api/v1/clusters/{cluster_uid}")).await?;

    let mut apply = Vec::with_capacity(SAMPLES);
    for index in 0..SAMPLES {
        let manifest = json!({"metadata": {"name": format!("s{index}"), "namespace": "e2e"}, "spec": {
            "clusterRef": {"name": "bench"},
            "run": {"command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "127.0.0.1"]},
            "ports": [{"name": "http", "port": 0}],
            "healthCheck": {"exec": {"command": ["true"]}, "periodSeconds": 1}}});
        let started = Instant::now();
        let created: Value =
            client.post(format!("{base}/api/v1/services")).json(&manifest).send().await?.json().await?;
        let uid = created["metadata"]["uid"].as_str().with_context(|| format!("service not created: {created}"))?;
        let url = format!("{base}/api/v1/services/{uid}");
        wait_ready(client, &url).await?;
        apply.push(started.elapsed().as_secs_f64() * 1000.0);
        client.delete(&url).send().await?;
    }

    let mut spawn = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let port = free_port()?;
        let started = Instant::now();
        let mut process = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        spawn.push(started.elapsed().as_secs_f64() * 1000.0);
        process.kill().await?;
    }
    apply.sort_by(f64::total_cmp);
    spawn.sort_by(f64::total_cmp);
    println!(
        "apply to Ready, local Service (python3 http.server, exec health check), {SAMPLES} samples: p50 {:.0} ms, p99 {:.0} ms",
        percentile(&apply, 0.5),
        percentile(&apply, 0.99)
    );
    println!(
        "baseline: the same process started directly until it accepts connections: p50 {:.0} ms, p99 {:.0} ms",
        percentile(&spawn, 0.5),
        percentile(&spawn, 0.99)
    );
    println!(
        "ratio: {:.2} (apply-to-Ready p99 over start-to-listening p99)",
        percentile(&apply, 0.99) / percentile(&spawn, 0.99)
    );
    Ok(())
}
