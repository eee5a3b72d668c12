//! The controller SDK and the built-in controllers ([`local_process`], [`port_allocator`]).
//!
//! A platform controller is a [`ControllerConfig`] (name, kinds, platforms, required, [`Precondition`]s) and an
//! implementation of [`Reconcile`] (`reconcile` answers an [`Outcome`]: the report's conditions and data and an
//! [`Action`]; `cleanup` undoes what `reconcile` created outside). [`Runtime::run`] does the rest:
//!
//! ```no_run
//! use cls_controllers::{ApiClient, ControllerConfig, Metrics, Outcome, Reconcile, ReconcileError, Request, Runtime};
//! use cls_core::Kind;
//!
//! struct Echo;
//!
//! impl Reconcile for Echo {
//!     async fn reconcile(&self, request: &Request) -> Result<Outcome, ReconcileError> {
//!         Ok(Outcome::available("Echoed", format!("saw generation {}", request.object.generation)))
//!     }
//!     async fn cleanup(&self, _request: &Request) -> Result<(), ReconcileError> {
//!         Ok(())
//!     }
//! }
//!
//! # async fn run(bus: cls_reconciler::InProcessBus) {
//! let config = ControllerConfig::new("echo", &[Kind::Cluster]).platforms(&["gcp"]);
//! let runtime = Runtime::new(config, Echo, ApiClient::new("http://127.0.0.1:8080"), Metrics::new());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! runtime.run(cls_controllers::Source::InProcess(bus), shutdown).await.unwrap();
//! # }
//! ```
//!
//! # Expected flow
//!
//! 1. At start the runtime registers the `Controller` object (`PUT /api/v1/controllers/<name>`), then heartbeats it
//!    every `heartbeat`; the first success queues every existing object of its kinds (a resync, so that state
//!    outside — processes, ports — is repaired after a restart without waiting for the scheduler; off with
//!    `resync_on_start = false`).
//! 2. On Pub/Sub it creates the topic when missing, its subscription `cls-<name>` with the filter
//!    `attributes.platform = "..."` when missing (message ordering on) and its dead-letter topic
//!    `cls-<name>-dead-letter`. On the in-process bus of `cls up` it subscribes to the broadcast channel.
//! 3. Each message is filtered again by its attributes (the emulator ignores filters): kinds and platforms the
//!    controller does not cover, and `*.status` events, are acknowledged and dropped. Any event first wakes the
//!    objects whose preconditions wait on the event's object.
//! 4. Events are only triggers: the runtime reads the current object by uid, and for a Service its Cluster (whose
//!    `platform.type` is the Service's platform), and filters again on the platform read.
//! 5. Deleting object with the finalizer `cls.dev/<name>`: `cleanup`, then the finalizer is removed (the API removes
//!    the object once no finalizer is left). Otherwise, when [`Reconcile::uses_finalizer`], the finalizer is added
//!    *before* the first `reconcile`.
//! 6. Preconditions are checked; while one is unmet the runtime reports `Available=False`, `Progressing=True` with
//!    reason `PreconditionsNotMet` and a message naming what is awaited (`waiting for Service default/web to be
//!    Ready`), and reconciles again when the awaited object changes (or after `precondition_recheck`).
//! 7. `reconcile`; the outcome is reported with `observedGeneration` = the generation read in step 4, unless the
//!    stored report already says the same (no request at all). A 409 (a newer report is stored, or the object
//!    changed under a finalizer update) re-reads the object and starts over.
//! 8. [`Action::Requeue`] reconciles again after the delay; [`Trigger::reconcile`] does so at once (a supervised
//!    process died).
//!
//! # Guarantees
//!
//! - One uid is never reconciled twice at once in one process; up to `concurrency` uids are reconciled at once.
//!   Deliveries that arrive while a uid is being reconciled are settled together by the next reconcile of it.
//! - A message is acknowledged only after a reconcile that started after it arrived succeeded (and its report was
//!   stored), so a crash redelivers it.
//! - A failed reconcile is retried with exponential backoff (`initial_backoff` doubling up to `max_backoff`): on
//!   Pub/Sub the message is nacked after the backoff, in process it is queued again. After `max_deliveries`
//!   deliveries, or at once for a [`ReconcileError::Permanent`] error, the message is published to the dead-letter
//!   topic (with attributes `cls-dead-letter-reason`, `cls-delivery-attempts`, `cls-controller`) and acknowledged;
//!   other uids keep flowing meanwhile (ordering keys are per uid).
//! - A report never goes backwards: the API refuses a report older than the stored one (409), and the runtime then
//!   re-reads instead of overwriting.
//! - `cleanup` runs before the finalizer is removed, and again if removing it failed; it must be idempotent.
//!
//! # Assumptions and caveats
//!
//! - Delivery attempts are counted in the process (by Pub/Sub message id) unless the subscription has a dead-letter
//!   policy: a restart resets the count. Competing consumers of one subscription each count their own.
//! - A controller never writes another controller's report; it may read them (`Request::object.report_of`).
//! - A force-deleted object (`?force=true`) skips `cleanup`; the runtime calls [`Reconcile::forget`] when it sees the
//!   `deleted` event or reads a 404.
//!
//! # Metrics
//!
//! `cls_controller_reconciles_total{controller,result}`, `cls_controller_failures_total{controller,category}`,
//! `cls_controller_reconcile_duration_seconds{controller}`, `cls_controller_filtered_total`,
//! `cls_controller_dead_lettered_total`, `cls_controller_reports_total`, `cls_controller_acked_total`
//! ([`Metrics::encode`]).

pub mod client;
pub mod local_process;
pub mod metrics;
pub mod port_allocator;
pub mod runtime;
pub mod sdk;

pub use client::{ApiClient, ApiError, Object};
pub use metrics::Metrics;
pub use runtime::{Runtime, RuntimeError, Source, Trigger, dead_letter_topic};
pub use sdk::{Action, ControllerConfig, Outcome, Precondition, Reconcile, ReconcileError, Request};
