//! HTTP load with `wrk` against the API, beside `pgbench` on the same PostgreSQL.

use std::time::Duration;

use anyhow::{Context, bail};
use cls_api::store::ContinueToken;
use serde_json::json;
use tokio::process::Command;

use super::Environment;

/// What `wrk --latency` reports.
#[derive(Debug)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn lua_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("{{{}}}", quoted.join(","))
}

fn milliseconds(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(number) = text.strip_suffix("us") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix("ms") {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().ok().map(|value| value * factor)
}

/// Runs `wrk` with a Lua `script` that defines `request`.
async fn wrk(environment: &Environment, script: &str, connections: u32, duration: Duration) -> anyhow::Result<Load> {
    let path = std::env::temp_dir().join(format!("cls-bench-{}-{connections}.lua", std::process::id()));
    // every request carries the admin token: `wrk.format` without headers uses `wrk.headers`, scripts with their
    // own headers add `auth`
    // `invocation` tells one wrk run from the others (report data must differ from run to run)
    let script = format!(
        "auth = \"Bearer {}\"\nwrk.headers[\"Authorization\"] = auth\ninvocation = \"{}\"\n{script}",
        environment.token,
        uuid::Uuid::new_v4()
    );
    std::fs::write(&path, script)?;
    let output = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", duration.as_secs().max(1)),
            "--latency",
        ])
        .arg("-s")
        .arg(&path)
        .arg(&environment.base)
        .output()
        .await
        .context("cannot run wrk: install it (Debian: apt-get install wrk)")?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    if let Some(line) = text.lines().find(|line| line.contains("Non-2xx or 3xx responses")) {
        bail!("the API answered errors under load: {}", line.trim());
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines().find_map(|line| line.trim().strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
    };
    let requests_per_second = field("Requests/sec:").and_then(|value| value.parse().ok());
    let p50 = field("50%").and_then(|value| milliseconds(&value));
    let p99 = field("99%").and_then(|value| milliseconds(&value));
    match (requests_per_second, p50, p99) {
        (Some(requests_per_second), Some(p50_ms), Some(p99_ms)) => Ok(Load { requests_per_second, p50_ms, p99_ms }),
        _ => bail!("cannot read wrk's output: {text}"),
    }
}

/// pgbench against the same server: `-i` once, then a run with `arguments`; answers transactions per second.
pub(super) async fn pgbench(
    environment: &Environment,
    arguments: &[&str],
    clients: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    ensure_pgbench_tables(environment).await?;
    let binary = environment.bin_dir.join("pgbench");
    let output = Command::new(&binary)
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &duration.as_secs().max(1).to_string()])
        .args(arguments)
        .arg(&environment.database_url)
        .output()
        .await
        .context("cannot run pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        .with_context(|| format!("cannot read pgbench's output: {text}{}", String::from_utf8_lossy(&output.stderr)))
}

/// `pgbench -i -s 10` unless its tables exist.
async fn ensure_pgbench_tables(environment: &Environment) -> anyhow::Result<()> {
    let binary = environment.bin_dir.join("pgbench");
    let initialized: Option<(i64,)> =
        sqlx::query_as("select 1::bigint from pg_tables where tablename = 'pgbench_accounts'")
            .fetch_optional(&environment.pool)
            .await?;
    if initialized.is_none() {
        let init = Command::new(&binary).args(["-i", "-q", "-s", "10"]).arg(&environment.database_url).output().await?;
        if !init.status.success() {
            bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
        }
    }
    Ok(())
}

/// One measurement of an interleaved run: HTTP load from `wrk`, or a `pgbench` baseline.
enum Run<'a> {
    Wrk { script: &'a str, connections: u32 },
    Pgbench { arguments: &'a [&'a str], clients: u32 },
}

/// A measurement over its rounds: the mean rate (every round lasts as long), the median of the rounds' p50 and the
/// highest of their p99 (`wrk` only).
#[derive(Debug)]
struct Figure {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Rounds an interleaved run is cut into.
const ROUNDS: u32 = 4;

/// Runs `runs` for `duration` each, cut into [`ROUNDS`] rounds that take turns: A B C, then C B A, and so on. This
/// machine is shared and its speed drifts by tens of percent within a minute (pgbench -S alone: 33,000-57,000 tps
/// in consecutive runs); one measurement after the other put that drift between a figure and its baseline, taking
/// turns puts it on both.
async fn interleaved<const N: usize>(
    environment: &Environment,
    runs: &[Run<'_>; N],
    duration: Duration,
) -> anyhow::Result<[Figure; N]> {
    let round = Duration::from_secs((duration.as_secs() / u64::from(ROUNDS)).max(1));
    let mut loads: [Vec<Load>; N] = std::array::from_fn(|_| Vec::new());
    for number in 0..ROUNDS {
        for index in round_order(number, runs.len()) {
            let load = match &runs[index] {
                Run::Wrk { script, connections } => wrk(environment, script, *connections, round).await?,
                Run::Pgbench { arguments, clients } => Load {
                    requests_per_second: pgbench(environment, arguments, *clients, round).await?,
                    p50_ms: f64::NAN,
                    p99_ms: f64::NAN,
                },
            };
            loads[index].push(load);
        }
    }
    Ok(loads.map(|rounds| summarize(&rounds)))
}

/// The order of `count` measurements in round `number`: forwards, then backwards.
fn round_order(number: u32, count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    if number % 2 == 1 {
        order.reverse();
    }
    order
}

fn summarize(rounds: &[Load]) -> Figure {
    let mut p50: Vec<f64> = rounds.iter().map(|load| load.p50_ms).collect();
    p50.sort_by(f64::total_cmp);
    Figure {
        per_second: rounds.iter().map(|load| load.requests_per_second).sum::<f64>() / rounds.len().max(1) as f64,
        p50_ms: p50.get(p50.len() / 2).copied().unwrap_or(f64::NAN),
        p99_ms: rounds.iter().map(|load| load.p99_ms).fold(f64::NAN, f64::max),
    }
}

pub(super) async fn drop_pgbench_tables(environment: &Environment) -> anyhow::Result<()> {
    sqlx::query("drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers")
        .execute(&environment.pool)
        .await?;
    Ok(())
}

/// GETs round-robin over `paths`, from a random start. The requests are formatted once per thread, in `init`
/// (after wrk has set the Host header), not once per request: the load generator shares the machine's cores with
/// the API and PostgreSQL, so its CPU per request counts against the figure.
fn get_script(paths: &[String]) -> String {
    format!(
        r#"local paths = {}
local requests = {{}}
local i = math.random(1, #paths)
init = function(args)
  for index, path in ipairs(paths) do
    requests[index] = wrk.format("GET", path)
  end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
"#,
        lua_list(paths)
    )
}

/// `cls bench read`.
pub async fn read(environment: &Environment, duration: Duration) -> anyhow::Result<()> {
    let uids = environment.seed_clusters("read", 1000).await?;
    let by_uid: Vec<String> = uids.iter().map(|uid| format!("/api/v1/clusters/{uid}")).collect();
    let by_name: Vec<String> = (0..uids.len())
        .map(|index| format!("/apis/cls.dev/v1alpha1/namespaces/default/clusters/read-{index}"))
        .collect();
    for path in &by_uid {
        environment.client.get(format!("{}{path}", environment.base)).send().await?.error_for_status()?;
    }
    let (uid_script, name_script) = (get_script(&by_uid), get_script(&by_name));
    let mut lowest = f64::MAX;
    for connections in [8, 64] {
        let runs = [
            Run::Wrk { script: &uid_script, connections },
            Run::Wrk { script: &name_script, connections },
            Run::Pgbench { arguments: &["-S"], clients: connections },
        ];
        let [uid, name, baseline] = interleaved(environment, &runs, duration).await?;
        println!(
            "GET by uid,  concurrency {connections}: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
            uid.per_second, uid.p50_ms, uid.p99_ms
        );
        println!(
            "GET by name, concurrency {connections}: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
            name.per_second, name.p50_ms, name.p99_ms
        );
        println!("baseline pgbench select-only (-S), {connections} clients: {:.0} tps", baseline.per_second);
        lowest = lowest.min(uid.per_second / baseline.per_second).min(name.per_second / baseline.per_second);
    }
    drop_pgbench_tables(environment).await?;
    println!("ratio: {lowest:.2}");
    Ok(())
}

/// `cls bench write`.
pub async fn write(environment: &Environment, duration: Duration) -> anyhow::Result<()> {
    let uids = environment.seed_clusters("write", 1000).await?;
    environment
        .client
        .put(format!("{}/api/v1/controllers/bench", environment.base))
        .json(&json!({"spec": {"kinds": ["Cluster"], "platforms": ["gcp"]}}))
        .send()
        .await?
        .error_for_status()?;
    let script = write_script(&uids);
    let runs = [Run::Wrk { script: &script, connections: 8 }, Run::Pgbench { arguments: &["-N"], clients: 8 }];
    let [load, baseline] = interleaved(environment, &runs, duration).await?;
    drop_pgbench_tables(environment).await?;
    println!(
        "controller report (PUT status), concurrency 8: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        load.per_second, load.p50_ms, load.p99_ms
    );
    println!("baseline pgbench simple-update (-N), 8 clients: {:.0} tps", baseline.per_second);
    println!("ratio: {:.2}", load.per_second / baseline.per_second);
    Ok(())
}

/// PUTs of the `bench` controller's report round-robin over `uids`. Every report carries data no other request
/// carries (wrk's threads each run their own Lua state with the same random sequence, so the thread's number is
/// part of the data and of the starting point, and each wrk run has its own `invocation`): none is a no-op.
fn write_script(uids: &[String]) -> String {
    format!(
        r#"local uids = {}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local i = nil
local n = 0
local headers = {{["Content-Type"] = "application/json", ["Authorization"] = auth}}
request = function()
  if i == nil then i = (id * 7919) % #uids end
  i = i % #uids + 1
  n = n + 1
  local body = '{{"controller":"bench","observedGeneration":1,"conditions":[{{"type":"Available","status":"True"}}],"data":{{"run":"' .. invocation .. '","thread":' .. id .. ',"n":' .. n .. '}}}}'
  return wrk.format("PUT", "/api/v1/clusters/" .. uids[i] .. "/status", headers, body)
end
"#,
        lua_list(uids)
    )
}

/// `cls bench list`.
pub async fn list(environment: &Environment, duration: Duration) -> anyhow::Result<()> {
    let count = 10_000;
    environment.seed_clusters("list", count).await?;
    let mut names: Vec<String> = (0..count).map(|index| format!("list-{index}")).collect();
    names.sort();
    let pages: Vec<String> = names
        .iter()
        .step_by(7)
        .map(|name| {
            let token = ContinueToken { namespace: "default".into(), name: name.clone() }.encode();
            format!("/apis/cls.dev/v1alpha1/namespaces/default/clusters?limit=10&continue={token}")
        })
        .collect();
    let script = get_script(&pages);
    let runs = [Run::Wrk { script: &script, connections: 10 }, Run::Pgbench { arguments: &["-S"], clients: 10 }];
    let [load, baseline] = interleaved(environment, &runs, duration).await?;
    drop_pgbench_tables(environment).await?;
    println!(
        "list 10 of {count} Clusters, concurrency 10: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        load.per_second, load.p50_ms, load.p99_ms
    );
    println!("for reference, the Go system this replaces published p99 31.4 ms at 789 req/s (its own hardware)");
    println!("baseline pgbench select-only (-S), 10 clients: {:.0} tps", baseline.per_second);
    println!("ratio: {:.2}", load.per_second / baseline.per_second);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_take_turns_forwards_then_backwards() {
        assert_eq!(round_order(0, 3), [0, 1, 2]);
        assert_eq!(round_order(1, 3), [2, 1, 0]);
        assert_eq!(round_order(2, 3), [0, 1, 2]);
    }

    #[test]
    fn a_figure_is_the_mean_rate_the_median_p50_and_the_highest_p99_of_its_rounds() {
        let load = |requests_per_second, p50_ms, p99_ms| Load { requests_per_second, p50_ms, p99_ms };
        let figure = summarize(&[load(10.0, 1.0, 5.0), load(20.0, 3.0, 2.0), load(30.0, 2.0, 9.0)]);
        assert_eq!((figure.per_second, figure.p50_ms, figure.p99_ms), (20.0, 2.0, 9.0));
        // pgbench rounds have no latencies
        let baseline = summarize(&[load(5.0, f64::NAN, f64::NAN), load(7.0, f64::NAN, f64::NAN)]);
        assert_eq!(baseline.per_second, 6.0);
        assert!(baseline.p50_ms.is_nan() && baseline.p99_ms.is_nan());
    }

    #[test]
    fn wrk_latencies_read_in_milliseconds() {
        assert_eq!(milliseconds("512.00us"), Some(0.512));
        assert_eq!(milliseconds("1.50ms"), Some(1.5));
        assert_eq!(milliseconds("2.00s"), Some(2000.0));
    }
}
