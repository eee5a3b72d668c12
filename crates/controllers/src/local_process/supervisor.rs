//! Supervision of one Service's processes: one task per replica starts the process (in a process group of its own,
//! its output appended to a log file per replica), health-checks it, restarts it with backoff when it exits or
//! fails its check `failureThreshold` times in a row, and stops it gracefully (SIGTERM to the group, SIGKILL after
//! a grace period) when the run is cancelled.
//!
//! Every running process has a pid file (`<state>/pids/<uid>-<replica>.pid`: pid and start time); a controller that
//! starts after a crash kills the process groups those files name ([`reap_leftovers`]) before it starts anything,
//! so a restart neither orphans nor duplicates processes. While the controller runs, a watchdog `sh` ([`Watchdog`])
//! blocks on a pipe only the controller holds; when the controller dies in any way (SIGKILL included) the pipe
//! closes and the watchdog kills every process group a pid file names, so nothing outlives the controller.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cls_core::Kind;
use cls_core::resources::HealthCheck;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::health;
use crate::port_allocator::AssignedPort;
use crate::runtime::Trigger;

/// How long a stopped process may take to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);
/// Checks run this often until the process is first healthy.
const STARTUP_PERIOD: Duration = Duration::from_millis(50);
/// Default `periodSeconds`.
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// What runs: a pure function of the spec and the assigned ports; a change replaces the processes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Desired {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub replicas: usize,
    pub health: Option<HealthCheck>,
    pub ports: Vec<AssignedPort>,
}

/// One replica's state, as the reconcile reports it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub pid: Option<u32>,
    pub healthy: bool,
    pub restarts: u32,
    /// Failures since the replica was last healthy.
    pub consecutive_failures: u32,
    pub last_failure: Option<String>,
    pub log: PathBuf,
}

/// The processes of one Service at one [`Desired`].
pub struct Run {
    pub desired: Desired,
    pub replicas: Vec<Arc<Mutex<ReplicaStatus>>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Run {
    pub fn start(
        uid: Uuid,
        log_base: &Path,
        state_dir: &Path,
        desired: Desired,
        trigger: Trigger,
        watchdog: Arc<Watchdog>,
    ) -> Run {
        let cancel = CancellationToken::new();
        let http = reqwest::Client::new();
        let mut replicas = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..desired.replicas {
            let log = log_base.with_file_name(format!(
                "{}-{index}.log",
                log_base.file_name().and_then(|name| name.to_str()).unwrap_or("service")
            ));
            let status = Arc::new(Mutex::new(ReplicaStatus { log: log.clone(), ..ReplicaStatus::default() }));
            replicas.push(status.clone());
            let replica = Replica {
                uid,
                index,
                desired: desired.clone(),
                status,
                log,
                pid_file: pid_file(state_dir, uid, index),
                trigger: trigger.clone(),
                cancel: cancel.clone(),
                http: http.clone(),
                watchdog: watchdog.clone(),
            };
            tasks.push(tokio::spawn(replica.supervise()));
        }
        Run { desired, replicas, cancel, tasks }
    }

    /// Stops every replica gracefully and waits for them.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(|status| status.lock().expect("status lock").clone()).collect()
    }
}

struct Replica {
    uid: Uuid,
    index: usize,
    desired: Desired,
    status: Arc<Mutex<ReplicaStatus>>,
    log: PathBuf,
    pid_file: PathBuf,
    trigger: Trigger,
    cancel: CancellationToken,
    http: reqwest::Client,
    watchdog: Arc<Watchdog>,
}

impl Replica {
    fn update(&self, change: impl FnOnce(&mut ReplicaStatus)) {
        change(&mut self.status.lock().expect("status lock"));
        self.trigger.reconcile(Kind::Service, self.uid);
    }

    #[tracing::instrument(skip_all, fields(uid = %self.uid, replica = self.index))]
    async fn supervise(self) {
        loop {
            let failure = match self.spawn() {
                Ok(child) => self.watch(child).await,
                Err(error) => Some(error),
            };
            let Some(failure) = failure else { return };
            tracing::info!(failure, "process failed; restarting");
            let mut failures = 0;
            self.update(|status| {
                status.pid = None;
                status.healthy = false;
                status.restarts += 1;
                status.consecutive_failures += 1;
                failures = status.consecutive_failures;
                status.last_failure = Some(failure);
            });
            let delay = FIRST_RESTART_DELAY.saturating_mul(2_u32.saturating_pow(failures.saturating_sub(1).min(10)));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay.min(MAX_RESTART_DELAY)) => {}
            }
        }
    }

    fn spawn(&self) -> Result<tokio::process::Child, String> {
        let (program, args) = self.desired.argv.split_first().ok_or("spec.run.command is empty")?;
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent).map_err(|error| format!("create {}: {error}", parent.display()))?;
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|error| format!("open {}: {error}", self.log.display()))?;
        let log_err = log.try_clone().map_err(|error| format!("dup log: {error}"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(self.desired.env.iter().map(|(name, value)| (name, value)))
            .env("CLS_REPLICA", self.index.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(directory) = &self.desired.working_dir {
            command.current_dir(directory);
        }
        let child = command.spawn().map_err(|error| format!("start {program}: {error}"))?;
        if let Some(pid) = child.id() {
            let started = start_time(pid).unwrap_or_default();
            if let Some(parent) = self.pid_file.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&self.pid_file, format!("{pid} {started}\n"));
            self.watchdog.watch(pid);
            tracing::info!(pid, program, "process started");
            self.update(|status| status.pid = Some(pid));
        }
        Ok(child)
    }

    /// Watches a running process until it fails (answers why) or the run is cancelled (answers `None`).
    async fn watch(&self, mut child: tokio::process::Child) -> Option<String> {
        let check = self.desired.health.clone();
        let period = check
            .as_ref()
            .and_then(|check| check.period_seconds)
            .filter(|seconds| *seconds > 0)
            .map_or(DEFAULT_PERIOD, |seconds| Duration::from_secs(seconds as u64));
        let threshold = check
            .as_ref()
            .and_then(|check| check.failure_threshold)
            .filter(|threshold| *threshold > 0)
            .map_or(DEFAULT_FAILURE_THRESHOLD, |threshold| threshold as u32);
        let mut healthy = false;
        let mut failures_in_row = 0;
        let failure = loop {
            let next = if healthy { period } else { STARTUP_PERIOD };
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let pid = child.id();
                    stop(&mut child).await;
                    pid.inspect(|pid| self.watchdog.unwatch(*pid));
                    let _ = std::fs::remove_file(&self.pid_file);
                    return None;
                }
                exit = child.wait() => {
                    break match exit {
                        Ok(status) => format!("process exited ({status})"),
                        Err(error) => format!("process lost: {error}"),
                    };
                }
                _ = tokio::time::sleep(next) => {
                    let result = match &check {
                        Some(check) => health::probe(check, &self.desired, &self.http).await,
                        None => Ok(()),
                    };
                    match result {
                        Ok(()) => {
                            failures_in_row = 0;
                            if !healthy {
                                healthy = true;
                                self.update(|status| {
                                    status.healthy = true;
                                    status.consecutive_failures = 0;
                                });
                            }
                        }
                        Err(reason) if healthy => {
                            failures_in_row += 1;
                            if failures_in_row >= threshold {
                                stop(&mut child).await;
                                break format!("health check failed {failures_in_row} times: {reason}");
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(pid) = self.status.lock().expect("status lock").pid {
            self.watchdog.unwatch(pid);
        }
        Some(failure)
    }
}

/// SIGTERM to the process group, SIGKILL after [`GRACE`].
async fn stop(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, "TERM").await;
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        signal_group(pid, "KILL").await;
        let _ = child.wait().await;
    }
    // Children the process left behind in its group.
    signal_group(pid, "KILL").await;
}

async fn signal_group(pid: u32, signal: &str) {
    let _ = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

fn pid_file(state_dir: &Path, uid: Uuid, index: usize) -> PathBuf {
    state_dir.join("pids").join(format!("{uid}-{index}.pid"))
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), to tell a pid reused by
/// another process from ours.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process groups that the pid files under `state_dir` name (left by a controller that did not stop
/// cleanly) and removes the files. Answers how many groups it killed.
pub fn reap_leftovers(state_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir.join("pids")) else { return 0 };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let recorded = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = recorded.split_whitespace();
        let pid: Option<u32> = fields.next().and_then(|pid| pid.parse().ok());
        let started: Option<u64> = fields.next().and_then(|started| started.parse().ok());
        if let (Some(pid), Some(started)) = (pid, started)
            && start_time(pid) == Some(started)
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            killed += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Keeps the process groups it is told of (`+PID` / `-PID` lines on stdin) and kills those left once stdin closes.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT QUIT TERM PIPE
pids=" "
while read -r line; do
  case "$line" in
    +*) pids="$pids${line#+} " ;;
    -*) pids=$(printf '%s' "$pids" | sed "s/ ${line#-} / /") ;;
  esac
done
for pid in $pids; do kill -KILL "-$pid" 2>/dev/null; done
"#;

/// The watchdog process of one controller (see the module docs); dropping it lets it act.
#[derive(Debug)]
pub struct Watchdog {
    child: Mutex<Option<std::process::Child>>,
}

impl Watchdog {
    pub fn start() -> Watchdog {
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("cls-local-process-watchdog")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Watchdog { child: Mutex::new(Some(child)) },
            Err(error) => {
                tracing::warn!(error = %error, "cannot start the process watchdog: processes may outlive a crash");
                Watchdog { child: Mutex::new(None) }
            }
        }
    }

    fn tell(&self, line: String) {
        use std::io::Write;
        let mut child = self.child.lock().expect("watchdog lock");
        if let Some(stdin) = child.as_mut().and_then(|child| child.stdin.as_mut()) {
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    pub fn watch(&self, pid: u32) {
        self.tell(format!("+{pid}\n"));
    }

    pub fn unwatch(&self, pid: u32) {
        self.tell(format!("-{pid}\n"));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let child = self.child.get_mut().map(Option::take).unwrap_or_default();
        if let Some(mut child) = child {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// `$(NAME)` in `text` replaced by the variable's value, as Kubernetes expands command and args; unknown names stay.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) if env.contains_key(&after[..end]) => {
                out.push_str(&env[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_in_arguments_and_unknown_ones_stay() {
        let env = BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]);
        assert_eq!(expand("--port=$(PORT)", &env), "--port=8080");
        assert_eq!(expand("$(NOPE) $(PORT)", &env), "$(NOPE) 8080");
        assert_eq!(expand("$(", &env), "$(");
    }

    #[test]
    fn a_recorded_pid_whose_start_time_differs_is_not_killed() {
        let dir = std::env::temp_dir().join(format!("cls-reap-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("pids")).unwrap();
        let own = std::process::id();
        std::fs::write(dir.join("pids").join("x-0.pid"), format!("{own} 1\n")).unwrap();
        assert_eq!(reap_leftovers(&dir), 0);
        assert!(!dir.join("pids").join("x-0.pid").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
