//! What a controller author writes against: [`ControllerConfig`], [`Precondition`], the [`Reconcile`] trait,
//! [`Outcome`], [`Action`] and [`ReconcileError`]. The runtime that drives them is in [`crate::runtime`].

use std::future::Future;
use std::time::Duration;

use cls_core::{Condition, ConditionStatus, Kind};
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

use crate::client::{ApiClient, ApiError, Object};
use crate::runtime::Trigger;

/// Who the controller is and how its runtime behaves.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The controller's name: its `Controller` object, its report, its finalizer `cls.dev/<name>`, its subscription
    /// `cls-<name>` and its dead-letter topic `cls-<name>-dead-letter`.
    pub name: String,
    pub kinds: Vec<Kind>,
    /// Platforms it acts on; empty means all.
    pub platforms: Vec<String>,
    /// Whether objects wait for its `Available=True` to be Ready.
    pub required: bool,
    pub description: Option<String>,
    /// What must hold before `reconcile` runs.
    pub preconditions: Vec<Precondition>,
    /// Reconciles running at once (different uids; one uid is never reconciled twice at once).
    pub concurrency: usize,
    /// Deliveries of one message before it goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// First retry delay after a failure; doubles per attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Period of the `Controller` heartbeat.
    pub heartbeat: Duration,
    /// How often the runtime re-checks an object whose preconditions are unmet (status events wake it sooner).
    pub precondition_recheck: Duration,
    /// Whether the first registration queues every object of its kinds (repairs state outside after a restart).
    /// A controller that keeps nothing outside may rely on the scheduler's periodic events instead.
    pub resync_on_start: bool,
    /// Streaming pulls opened on the Pub/Sub subscription (the emulator serves about 2,000 messages/s per stream).
    pub streams: usize,
}

impl ControllerConfig {
    pub fn new(name: impl Into<String>, kinds: &[Kind]) -> ControllerConfig {
        ControllerConfig {
            name: name.into(),
            kinds: kinds.to_vec(),
            platforms: Vec::new(),
            required: true,
            description: None,
            preconditions: Vec::new(),
            concurrency: 16,
            max_deliveries: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            heartbeat: Duration::from_secs(30),
            precondition_recheck: Duration::from_secs(10),
            resync_on_start: true,
            streams: 1,
        }
    }

    pub fn platforms(mut self, platforms: &[&str]) -> Self {
        self.platforms = platforms.iter().map(|platform| (*platform).to_owned()).collect();
        self
    }

    pub fn precondition(mut self, precondition: Precondition) -> Self {
        self.preconditions.push(precondition);
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// `cls.dev/<name>`.
    pub fn finalizer(&self) -> String {
        format!("cls.dev/{}", self.name)
    }

    /// The delay before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2_u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The Pub/Sub subscription filter: the platforms, when any (kinds are checked by the runtime, because status
    /// events of other kinds wake objects waiting on them).
    pub fn subscription_filter(&self) -> String {
        let clauses: Vec<String> =
            self.platforms.iter().map(|platform| format!("attributes.platform = \"{platform}\"")).collect();
        match clauses.len() {
            0 => String::new(),
            1 => clauses[0].clone(),
            _ => format!("({})", clauses.join(" OR ")),
        }
    }

    /// Whether the controller acts on `kind` objects on `platform`.
    pub fn covers(&self, kind: Kind, platform: &str) -> bool {
        self.kinds.contains(&kind) && (self.platforms.is_empty() || self.platforms.iter().any(|p| p == platform))
    }
}

/// A condition the runtime checks before calling `reconcile`; while one is unmet it reports `Available=False` with
/// reason `PreconditionsNotMet` and a message naming what is awaited, and reconciles again when that changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// On objects of the given kind: the named controller reports `Available=True` on the object at its current
    /// generation.
    ControllerAvailable(String, Kind),
    /// The Service's Cluster is Ready (Services only).
    ClusterReady,
    /// Every Service named in `spec.dependsOn` exists and is Ready (Services only).
    DependenciesReady,
}

/// What to do after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, even without an event.
    Requeue(Duration),
    /// Wait for the next event.
    AwaitChange,
}

/// A reconcile's result: the report's conditions and data, and what to do next. The runtime reports them with the
/// generation it read.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub conditions: Vec<Condition>,
    pub data: Option<Value>,
    pub action: Action,
}

impl Outcome {
    /// `Available=True` with `reason` and `message`.
    pub fn available(reason: &str, message: impl Into<String>) -> Outcome {
        Outcome {
            conditions: vec![Condition::new("Available", ConditionStatus::True, reason, message)],
            data: None,
            action: Action::AwaitChange,
        }
    }

    /// `Available=False, Progressing=True`.
    pub fn progressing(reason: &str, message: impl Into<String>) -> Outcome {
        let message = message.into();
        Outcome {
            conditions: vec![
                Condition::new("Available", ConditionStatus::False, reason, message.clone()),
                Condition::new("Progressing", ConditionStatus::True, reason, message),
            ],
            data: None,
            action: Action::AwaitChange,
        }
    }

    /// Adds (or replaces) a condition.
    pub fn with_condition(mut self, condition: Condition) -> Outcome {
        self.conditions.retain(|existing| existing.type_ != condition.type_);
        self.conditions.push(condition);
        self
    }

    pub fn with_data(mut self, data: Value) -> Outcome {
        self.data = Some(data);
        self
    }

    pub fn requeue(mut self, after: Duration) -> Outcome {
        self.action = Action::Requeue(after);
        self
    }
}

/// Why a reconcile failed. `Transient` failures are retried with backoff (nacked on Pub/Sub) and dead-lettered
/// after `max_deliveries`; `Permanent` ones are dead-lettered at once.
#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
    #[error("api call failed")]
    Api(#[from] ApiError),
}

impl ReconcileError {
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Transient(_) => "transient",
            ReconcileError::Permanent(_) => "permanent",
            ReconcileError::Api(error) if error.transient() => "api",
            ReconcileError::Api(_) => "permanent",
        }
    }

    pub fn retriable(&self) -> bool {
        self.category() != "permanent"
    }
}

/// What `reconcile` and `cleanup` get: the current object (read after the event arrived), its Cluster (for a
/// Service), the platform, and handles on the API and the runtime.
#[derive(Clone, Debug)]
pub struct Request {
    pub object: Object,
    pub cluster: Option<Object>,
    pub platform: String,
    pub api: ApiClient,
    pub trigger: Trigger,
}

impl Request {
    pub fn uid(&self) -> Uuid {
        self.object.uid
    }
}

/// A controller's logic. Both methods must be idempotent: they are not told why they run, and may run again for
/// the same generation (redelivery, requeue, restart).
pub trait Reconcile: Send + Sync + 'static {
    /// Brings the world in line with `request.object` and says how it went.
    fn reconcile(&self, request: &Request) -> impl Future<Output = Result<Outcome, ReconcileError>> + Send;

    /// Removes what `reconcile` created outside, when the object is deleted. Runs before the finalizer is removed;
    /// on error the finalizer stays and the runtime retries.
    fn cleanup(&self, request: &Request) -> impl Future<Output = Result<(), ReconcileError>> + Send;

    /// Whether the controller creates anything outside for objects of `kind` (then the runtime adds its finalizer
    /// before the first `reconcile` and calls `cleanup` on deletion).
    fn uses_finalizer(&self, kind: Kind) -> bool {
        let _ = kind;
        true
    }

    /// Called when an object is gone without `cleanup` (force-deleted); forget local state.
    fn forget(&self, kind: Kind, uid: Uuid) -> impl Future<Output = ()> + Send {
        let _ = (kind, uid);
        async {}
    }
}
