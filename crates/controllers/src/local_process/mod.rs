//! `local-process` (Clusters and Services on platform `local`): a local Cluster is an environment on this host; its
//! Services run as supervised processes ([`supervisor`]).
//!
//! Preconditions: the Service's Cluster is Ready, its `dependsOn` Services are Ready (so Services start in dependency
//! order), and `port-allocator` reported its ports (`data.ports`), which the processes get as `PORT` (the first) and
//! `PORT_<NAME>`; `$(VAR)` in `command` and `args` expands as in Kubernetes. `replicas` processes run, each with
//! `CLS_REPLICA` set; `Available` is True when every replica passes its health check (or, without one, runs).
//! Repeated failures make the report `Degraded` with the restart count. A spec change (or new ports) replaces the
//! processes; deletion stops them gracefully before the finalizer goes.

pub mod health;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cls_core::{Condition, ConditionStatus, Kind};
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::port_allocator::{self, AssignedPort, reported_ports};
use crate::sdk::{ControllerConfig, Outcome, Precondition, Reconcile, ReconcileError, Request};
use supervisor::{Desired, Run};

pub const NAME: &str = "local-process";
/// Consecutive failures of a replica after which the Service reports Degraded.
const DEGRADED_AFTER: u32 = 3;
/// A safety net: reconcile a running Service this often even without a trigger.
const RESYNC: Duration = Duration::from_secs(60);

pub fn config() -> ControllerConfig {
    ControllerConfig::new(NAME, &[Kind::Cluster, Kind::Service])
        .platforms(&["local"])
        .description("runs the Services of local Clusters as supervised processes on this host")
        .precondition(Precondition::ClusterReady)
        .precondition(Precondition::DependenciesReady)
        .precondition(Precondition::ControllerAvailable(port_allocator::NAME.to_owned(), Kind::Service))
}

/// The controller's state: the runs by Service uid.
pub struct LocalProcess {
    state_dir: PathBuf,
    runs: Mutex<HashMap<Uuid, Run>>,
    watchdog: std::sync::Arc<supervisor::Watchdog>,
}

impl LocalProcess {
    /// Keeps its pid files and logs under `state_dir`; kills process groups a previous controller left behind.
    pub fn new(state_dir: impl Into<PathBuf>) -> LocalProcess {
        let state_dir = state_dir.into();
        let reaped = supervisor::reap_leftovers(&state_dir);
        if reaped > 0 {
            tracing::warn!(reaped, "stopped processes left by an earlier controller");
        }
        let _ = std::fs::create_dir_all(state_dir.join("pids"));
        let watchdog = std::sync::Arc::new(supervisor::Watchdog::start());
        LocalProcess { state_dir, runs: Mutex::default(), watchdog }
    }

    /// The log of replica `replica` of Service `namespace/name`.
    pub fn log_path(&self, namespace: &str, name: &str, replica: usize) -> PathBuf {
        log_path(&self.state_dir, namespace, name, replica)
    }

    /// Stops every process (on shutdown).
    pub async fn stop_all(&self) {
        let runs: Vec<Run> = self.runs.lock().await.drain().map(|(_, run)| run).collect();
        for run in runs {
            run.stop().await;
        }
    }

    async fn stop(&self, uid: Uuid) {
        let run = self.runs.lock().await.remove(&uid);
        if let Some(run) = run {
            run.stop().await;
        }
    }
}

/// `<state>/logs/<namespace>/<name>-<replica>.log`.
pub fn log_path(state_dir: &Path, namespace: &str, name: &str, replica: usize) -> PathBuf {
    state_dir.join("logs").join(namespace).join(format!("{name}-{replica}.log"))
}

/// What the spec and the assigned ports ask to run.
pub fn desired(spec: &cls_core::ServiceSpec, ports: &[AssignedPort]) -> Result<Desired, String> {
    let run =
        spec.run.as_ref().ok_or("the local platform runs processes: set spec.run (spec.image is for containers)")?;
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    for (index, port) in ports.iter().enumerate() {
        if index == 0 {
            variables.insert("PORT".into(), port.port.to_string());
        }
        let name = port.name.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        variables.insert(format!("PORT_{name}"), port.port.to_string());
    }
    for variable in &run.env {
        let value = supervisor::expand(&variable.value, &variables);
        variables.insert(variable.name.clone(), value);
    }
    let argv = run.command.iter().chain(&run.args).map(|part| supervisor::expand(part, &variables)).collect();
    Ok(Desired {
        argv,
        env: variables.into_iter().collect(),
        working_dir: run.working_dir.as_ref().map(PathBuf::from),
        replicas: usize::try_from(spec.replicas).unwrap_or(0),
        health: spec.health_check.clone(),
        ports: ports.to_vec(),
    })
}

/// The report for a run's replica statuses. Pure.
pub fn outcome(desired: &Desired, statuses: &[supervisor::ReplicaStatus]) -> Outcome {
    let ready = statuses.iter().filter(|status| status.healthy).count();
    let restarts: u32 = statuses.iter().map(|status| status.restarts).sum();
    let failing = statuses.iter().map(|status| status.consecutive_failures).max().unwrap_or(0);
    let data = json!({
        "ports": desired.ports,
        "replicas": desired.replicas,
        "readyReplicas": ready,
        "restarts": restarts,
        "pids": statuses.iter().filter_map(|status| status.pid).collect::<Vec<_>>(),
        "logs": statuses.iter().map(|status| status.log.display().to_string()).collect::<Vec<_>>(),
    });
    let mut result = if desired.replicas == 0 {
        Outcome::available("ScaledToZero", "replicas is 0: nothing runs")
    } else if ready == desired.replicas {
        Outcome::available(
            "ProcessesHealthy",
            format!("{ready}/{} replicas healthy, {restarts} restarts", desired.replicas),
        )
    } else {
        Outcome::progressing("Starting", format!("{ready}/{} replicas healthy, {restarts} restarts", desired.replicas))
    };
    result = if failing >= DEGRADED_AFTER {
        let last = statuses.iter().filter_map(|status| status.last_failure.clone()).next_back().unwrap_or_default();
        result.with_condition(Condition::new(
            "Degraded",
            ConditionStatus::True,
            "RestartingRepeatedly",
            format!("restarted {restarts} times ({failing} failures in a row); last: {last}"),
        ))
    } else {
        result.with_condition(Condition::new("Degraded", ConditionStatus::False, "AsExpected", "processes are stable"))
    };
    result.with_data(data).requeue(RESYNC)
}

impl Reconcile for LocalProcess {
    async fn reconcile(&self, request: &Request) -> Result<Outcome, ReconcileError> {
        let object = &request.object;
        if object.kind == Kind::Cluster {
            std::fs::create_dir_all(self.state_dir.join("logs").join(&object.namespace))
                .map_err(|error| ReconcileError::Transient(format!("cannot create the log directory: {error}")))?;
            return Ok(Outcome::available(
                "EnvironmentReady",
                format!("processes run on this host; state in {}", self.state_dir.display()),
            )
            .with_data(json!({"stateDir": self.state_dir.display().to_string()})));
        }
        let spec = object.service_spec().map_err(|error| ReconcileError::Permanent(format!("bad spec: {error}")))?;
        let ports = reported_ports(object, port_allocator::NAME);
        let desired = match desired(&spec, &ports) {
            Ok(desired) => desired,
            Err(message) => {
                self.stop(object.uid).await;
                return Ok(Outcome::progressing("NotRunnable", message.clone()).with_condition(Condition::new(
                    "Degraded",
                    ConditionStatus::True,
                    "NotRunnable",
                    message,
                )));
            }
        };
        let mut runs = self.runs.lock().await;
        let replace = runs.get(&object.uid).is_some_and(|run| run.desired != desired);
        if replace && let Some(previous) = runs.remove(&object.uid) {
            tracing::info!(uid = %object.uid, generation = object.generation, "spec changed: replacing processes");
            previous.stop().await;
        }
        let run = runs.entry(object.uid).or_insert_with(|| {
            let log_base = log_path(&self.state_dir, &object.namespace, &object.name, 0).with_file_name(&object.name);
            Run::start(
                object.uid,
                &log_base,
                &self.state_dir,
                desired.clone(),
                request.trigger.clone(),
                self.watchdog.clone(),
            )
        });
        Ok(outcome(&run.desired, &run.statuses()))
    }

    async fn cleanup(&self, request: &Request) -> Result<(), ReconcileError> {
        self.stop(request.object.uid).await;
        Ok(())
    }

    fn uses_finalizer(&self, kind: Kind) -> bool {
        kind == Kind::Service
    }

    async fn forget(&self, _kind: Kind, uid: Uuid) {
        self.stop(uid).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use supervisor::ReplicaStatus;

    fn spec() -> cls_core::ServiceSpec {
        serde_json::from_value(json!({
            "clusterRef": {"name": "dev"},
            "run": {"command": ["server", "--port=$(PORT)"], "env": [{"name": "URL", "value": "http://x:$(PORT_HTTP)"}]},
            "replicas": 2
        }))
        .unwrap()
    }

    #[test]
    fn ports_become_variables_and_expand_in_arguments_and_env() {
        let ports = vec![AssignedPort { name: "http".into(), port: 4000, protocol: "TCP".into() }];
        let desired = desired(&spec(), &ports).unwrap();
        assert_eq!(desired.argv, vec!["server", "--port=4000"]);
        assert!(desired.env.contains(&("URL".into(), "http://x:4000".into())));
        assert!(desired.env.contains(&("PORT_HTTP".into(), "4000".into())));
        assert_eq!(desired.replicas, 2);
    }

    #[test]
    fn repeated_failures_degrade_with_the_restart_count() {
        let desired = desired(&spec(), &[]).unwrap();
        let failing = ReplicaStatus {
            restarts: 4,
            consecutive_failures: 3,
            last_failure: Some("exited".into()),
            ..ReplicaStatus::default()
        };
        let healthy = ReplicaStatus { healthy: true, ..ReplicaStatus::default() };
        let outcome = outcome(&desired, &[failing, healthy]);
        let degraded = cls_core::condition::find(&outcome.conditions, "Degraded").unwrap();
        assert_eq!(degraded.status, ConditionStatus::True);
        assert!(degraded.message.as_deref().unwrap().contains("restarted 4 times"), "{degraded:?}");
        let available = cls_core::condition::find(&outcome.conditions, "Available").unwrap();
        assert_eq!(available.status, ConditionStatus::False);
    }

    #[test]
    fn an_image_service_is_not_runnable_here() {
        let spec: cls_core::ServiceSpec =
            serde_json::from_value(json!({"clusterRef": {"name": "dev"}, "image": "nginx"})).unwrap();
        assert!(desired(&spec, &[]).is_err());
    }
}
