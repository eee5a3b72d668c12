//! The runtime that drives a [`Reconcile`]: registration and heartbeat, the message source (Pub/Sub subscription or
//! in-process bus), self-filtering, per-uid serialization, finalizers, preconditions, reports, retries and the
//! dead-letter topic.
//!
//! Data flow: a message (or a [`Trigger`], or a requeue timer) becomes a *delivery* queued on its uid's slot. One
//! worker per uid drains the slot: all deliveries queued so far are settled by one reconcile (level triggered: the
//! reconcile reads the current object, so later deliveries of the same uid add nothing). Workers of different uids
//! run in parallel up to `concurrency`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cls_core::Kind;
use cls_core::condition::same_conditions_ignoring_time;
use cls_core::event::Event;
use cls_core::resources::{ControllerReport, ControllerSpec};
use cls_reconciler::{BusMessage, EventBus, InProcessBus, PubSubBus, PubSubConfig};
use google_cloud_pubsub::subscriber::MessageStream;
use google_cloud_pubsub::subscriber::handler::Handler;
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::client::{ApiClient, ApiError, Object};
use crate::metrics::{ControllerLabels, Metrics, ResultLabels};
use crate::sdk::{Action, ControllerConfig, Outcome, Precondition, Reconcile, ReconcileError, Request};

/// How long shutdown waits for running reconciles.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// While no message arrived for this long, the runtime checks that its subscription still exists. One that vanished
/// (an emulator restarted, a subscription expired) is created again at once: the subscriber's own stream resume backs
/// off up to a minute and would then only report `NOT_FOUND`. Events published while it was missing never reach the
/// new subscription, so its creation is followed by a resync of every covered object.
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(2);

/// Messages leased at once by the process (shared by its streaming pulls).
const MAX_OUTSTANDING: i64 = 10_000;
/// Re-reads after a 409 before the reconcile counts as failed.
const CONFLICT_RETRIES: usize = 5;

/// Where the messages come from.
pub enum Source {
    /// The in-process bus of `cls up`; retries and dead letters stay in the process.
    InProcess(InProcessBus),
    /// A Pub/Sub subscription (`cls-<controller>` unless named), created with the platform filter when missing.
    PubSub { config: PubSubConfig, subscription: Option<String> },
}

/// Asks the runtime to reconcile an object soon (for example when a supervised process dies); cheap to clone.
#[derive(Clone, Debug)]
pub struct Trigger {
    sender: mpsc::UnboundedSender<(Kind, Uuid)>,
}

impl Trigger {
    pub fn reconcile(&self, kind: Kind, uid: Uuid) {
        let _ = self.sender.send((kind, uid));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pub/sub setup for controller {controller} failed")]
    PubSub {
        controller: String,
        #[source]
        source: cls_reconciler::bus::BusError,
    },
}

enum Acker {
    PubSub { handler: Handler, message_id: String },
    Local,
}

struct Delivery {
    acker: Acker,
    attempt: u32,
    message: Option<Arc<BusMessage>>,
}

/// The streaming pulls of a subscription, and whether this call created the subscription.
struct Subscribed {
    streams: Vec<MessageStream>,
    created: bool,
}

/// A stream's pending `next()`, owning the stream so that it can outlive one `select!` (see `Runtime::pull`).
type NextMessage = Pin<Box<dyn Future<Output = (MessageStream, Option<PulledMessage>)> + Send>>;
type PulledMessage = google_cloud_pubsub::Result<(google_cloud_pubsub::model::Message, Handler)>;

fn next_message(mut stream: MessageStream) -> NextMessage {
    Box::pin(async move {
        let received = stream.next().await;
        (stream, received)
    })
}

struct Slot {
    kind: Kind,
    queued: Vec<Delivery>,
}

type ObjectKey = (Kind, String, String);

struct Inner<R> {
    config: ControllerConfig,
    reconciler: R,
    api: ApiClient,
    metrics: Metrics,
    labels: ControllerLabels,
    permits: Semaphore,
    slots: Mutex<HashMap<Uuid, Slot>>,
    waiters: Mutex<HashMap<ObjectKey, HashSet<(Kind, Uuid)>>>,
    /// Counts wake-ups: a reconcile that saw it move while it evaluated preconditions may have missed its own
    /// wake-up (the awaited object changed before it registered as a waiter) and looks again at once.
    wakes: AtomicU64,
    requeues: Mutex<HashMap<Uuid, Instant>>,
    attempts: Mutex<HashMap<String, u32>>,
    dead_letter: Mutex<Option<PubSubBus>>,
    trigger: Trigger,
    triggers: Mutex<Option<mpsc::UnboundedReceiver<(Kind, Uuid)>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// A controller: its configuration, its logic and the API it talks to. Cheap to clone.
pub struct Runtime<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for Runtime<R> {
    fn clone(&self) -> Self {
        Runtime { inner: self.inner.clone() }
    }
}

impl<R: Reconcile> Runtime<R> {
    pub fn new(config: ControllerConfig, reconciler: R, api: ApiClient, metrics: Metrics) -> Runtime<R> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let labels = Metrics::controller(&config.name);
        let permits = Semaphore::new(config.concurrency.max(1));
        Runtime {
            inner: Arc::new(Inner {
                config,
                reconciler,
                api,
                metrics,
                labels,
                permits,
                slots: Mutex::default(),
                waiters: Mutex::default(),
                wakes: AtomicU64::new(0),
                requeues: Mutex::default(),
                attempts: Mutex::default(),
                dead_letter: Mutex::default(),
                trigger: Trigger { sender },
                triggers: Mutex::new(Some(receiver)),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn trigger(&self) -> Trigger {
        self.inner.trigger.clone()
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.inner.config
    }

    pub fn reconciler(&self) -> &R {
        &self.inner.reconciler
    }

    /// Runs until `shutdown`: registers and heartbeats, consumes `source`, reconciles. Then waits (bounded) for
    /// running reconciles; messages not yet settled are redelivered by Pub/Sub.
    #[tracing::instrument(skip_all, fields(controller = %self.inner.config.name))]
    pub async fn run(self, source: Source, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let stop = inner.shutdown.clone();
        let _stop_guard = stop.clone().drop_guard();
        let linked = shutdown.clone();
        let stop_on_shutdown = stop.clone();
        inner.tasks.spawn(async move {
            tokio::select! {
                _ = linked.cancelled() => stop_on_shutdown.cancel(),
                _ = stop_on_shutdown.cancelled() => {}
            }
        });
        inner.tasks.spawn(self.clone().heartbeat());
        let mut triggers = inner.triggers.lock().expect("triggers lock").take().expect("a runtime runs once");
        tracing::info!(platforms = ?inner.config.platforms, "controller running");
        match source {
            Source::InProcess(bus) => {
                let mut receiver = bus.subscribe();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        Some((kind, uid)) = triggers.recv() => self.dispatch(kind, uid, local(1)),
                        received = receiver.recv() => match received {
                            Ok(message) => self.handle(message, Acker::Local, 1),
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                tracing::warn!(missed, "fell behind the in-process bus; resyncing");
                                inner.tasks.spawn(self.clone().resync());
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        },
                    }
                }
            }
            Source::PubSub { config, subscription } => {
                let subscription = subscription.unwrap_or_else(|| format!("cls-{}", inner.config.name));
                let Some(subscribed) = self.subscribe(&config, &subscription, inner.config.streams.max(1)).await?
                else {
                    return Ok(());
                };
                for stream in subscribed.streams {
                    inner.tasks.spawn(self.clone().pull(config.clone(), subscription.clone(), stream));
                }
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        Some((kind, uid)) = triggers.recv() => self.dispatch(kind, uid, local(1)),
                    }
                }
            }
        }
        stop.cancel();
        inner.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, inner.tasks.wait()).await.is_err() {
            tracing::warn!("reconciles still running at shutdown");
        }
        tracing::info!("controller stopped");
        Ok(())
    }

    /// Creates the topic, the subscription (with the platform filter) and the dead-letter topic, retrying until they
    /// exist or shutdown; answers `count` streaming pulls on the subscription.
    async fn subscribe(
        &self,
        config: &PubSubConfig,
        subscription: &str,
        count: usize,
    ) -> Result<Option<Subscribed>, RuntimeError> {
        let inner = &self.inner;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.try_subscribe(config, subscription, count).await {
                Ok(subscribed) => return Ok(Some(subscribed)),
                Err(error) => tracing::warn!(error = %error, "waiting for pub/sub"),
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_subscribe(
        &self,
        config: &PubSubConfig,
        subscription: &str,
        count: usize,
    ) -> Result<Subscribed, RuntimeError> {
        let inner = &self.inner;
        let wrap = |source| RuntimeError::PubSub { controller: inner.config.name.clone(), source };
        let topics = config.topic_admin().await.map_err(wrap)?;
        config.ensure_topic(&topics).await.map_err(wrap)?;
        let subscriptions = config.subscription_admin().await.map_err(wrap)?;
        let filter = inner.config.subscription_filter();
        let created = config.ensure_subscription(&subscriptions, subscription, &filter).await.map_err(wrap)?;
        let mut dead_letter_config = config.clone();
        dead_letter_config.topic = dead_letter_topic(&inner.config.name);
        let dead_letter = PubSubBus::connect(dead_letter_config).await.map_err(wrap)?;
        *inner.dead_letter.lock().expect("dead letter lock") = Some(dead_letter);
        let subscriber = config.subscriber().await.map_err(wrap)?;
        tracing::info!(subscription, filter, streams = count, "subscribed");
        // the lease limit is the process's, shared by its streams
        let outstanding = (MAX_OUTSTANDING / count.max(1) as i64).max(1);
        let streams = (0..count)
            .map(|_| {
                subscriber
                    .subscribe(config.subscription_path(subscription))
                    .set_max_outstanding_messages(outstanding)
                    .build()
            })
            .collect();
        Ok(Subscribed { streams, created })
    }

    /// One new stream on `subscription` (created again when missing, and then every covered object is resynced:
    /// what was published while it was missing never reaches it); `None` when shutting down or failing.
    async fn reopen(&self, config: &PubSubConfig, subscription: &str) -> Option<MessageStream> {
        match self.subscribe(config, subscription, 1).await {
            Ok(Some(mut subscribed)) if !subscribed.streams.is_empty() => {
                if subscribed.created {
                    tracing::warn!(subscription, "subscription created again; resyncing what it may have missed");
                    self.inner.tasks.spawn(self.clone().resync());
                }
                Some(subscribed.streams.remove(0))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::error!(error = %error, "cannot reopen the subscription stream");
                None
            }
        }
    }

    /// Consumes one streaming pull until shutdown, reopening it when it ends or its subscription is gone.
    ///
    /// The pending `next()` lives across the loop's iterations and is dropped only to replace its stream:
    /// `MessageStream::next` is not cancel-safe while it opens the streaming pull (it waits there for the response
    /// headers, which the emulator sends only with the first messages), and dropping it then cancels the RPC. The
    /// emulator never learns of that cancel (its `onRstStreamRead` fails with a `NoSuchMethodError`): it keeps the
    /// dead stream as a consumer and hands it messages, which then hold their ordering key for the 60 s stream ack
    /// deadline. Polled in a `select!` beside the subscription check, that happened every check on a quiet new
    /// subscription, for example after an emulator restart.
    async fn pull(self, config: PubSubConfig, subscription: String, stream: MessageStream) {
        let stop = self.inner.shutdown.clone();
        let mut admin = None;
        let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_message = Instant::now();
        let mut next = next_message(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = check.tick() => {
                    if last_message.elapsed() < SUBSCRIPTION_CHECK {
                        continue;
                    }
                    if admin.is_none() {
                        admin = config.subscription_admin().await.ok();
                    }
                    let Some(client) = &admin else { continue };
                    let missing = config.subscription_missing(client, &subscription);
                    if tokio::time::timeout(SUBSCRIPTION_CHECK, missing).await.unwrap_or(false) {
                        tracing::warn!(subscription, "subscription is gone; subscribing again");
                        match self.reopen(&config, &subscription).await {
                            Some(reopened) => next = next_message(reopened),
                            None => break,
                        }
                    }
                }
                (stream, received) = &mut next => match received {
                    Some(Ok((message, handler))) => {
                        last_message = Instant::now();
                        next = next_message(stream);
                        self.receive(message, handler);
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error, "subscription stream failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        next = next_message(stream);
                    }
                    None => {
                        tracing::warn!("subscription stream ended; reopening");
                        match self.reopen(&config, &subscription).await {
                            Some(reopened) => next = next_message(reopened),
                            None => break,
                        }
                    }
                },
            }
        }
        tracing::debug!("subscription stream stopped");
    }

    fn receive(&self, message: google_cloud_pubsub::model::Message, handler: Handler) {
        let message_id = message.message_id.clone();
        let event: Event = match serde_json::from_slice(&message.data) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(error = %error, message_id, "undecodable message; acknowledged and dropped");
                self.inner.metrics.filtered.get_or_create(&self.inner.labels).inc();
                return self.settle_ok(Acker::PubSub { handler, message_id });
            }
        };
        let attempt = match handler.delivery_attempt() {
            Some(attempt) => attempt.max(1) as u32,
            None => {
                let mut attempts = self.inner.attempts.lock().expect("attempts lock");
                let seen = attempts.entry(message_id.clone()).or_insert(0);
                *seen += 1;
                *seen
            }
        };
        let attributes: BTreeMap<String, String> = message.attributes.into_iter().collect();
        let bus_message = Arc::new(BusMessage { event, attributes });
        self.handle(bus_message, Acker::PubSub { handler, message_id }, attempt);
    }

    /// Self-filtering of one message: wakes objects waiting on its object, drops what this controller does not
    /// cover, and queues the rest.
    fn handle(&self, message: Arc<BusMessage>, acker: Acker, attempt: u32) {
        let inner = &self.inner;
        let event = &message.event;
        let Some(kind) = Kind::from_kind_name(&event.kind) else {
            return self.settle_ok(acker);
        };
        self.wake((kind, event.namespace.clone(), event.name.clone()));
        let platform = message.attributes.get("platform").map(String::as_str).unwrap_or_default();
        let event_kind = event.type_.rsplit('.').next().unwrap_or_default();
        if !inner.config.covers(kind, platform) || event_kind == "status" {
            inner.metrics.filtered.get_or_create(&inner.labels).inc();
            return self.settle_ok(acker);
        }
        if event_kind == "deleted" {
            let runtime = self.clone();
            let uid = event.uid;
            inner.tasks.spawn(async move { runtime.inner.reconciler.forget(kind, uid).await });
            return self.settle_ok(acker);
        }
        self.dispatch(kind, event.uid, Delivery { acker, attempt, message: Some(message.clone()) });
    }

    fn wake(&self, key: ObjectKey) {
        self.inner.wakes.fetch_add(1, Ordering::AcqRel);
        let waiting = self.inner.waiters.lock().expect("waiters lock").remove(&key);
        for (kind, uid) in waiting.into_iter().flatten() {
            self.dispatch(kind, uid, local(1));
        }
    }

    fn dispatch(&self, kind: Kind, uid: Uuid, delivery: Delivery) {
        let mut slots = self.inner.slots.lock().expect("slots lock");
        if let Some(slot) = slots.get_mut(&uid) {
            slot.queued.push(delivery);
            return;
        }
        slots.insert(uid, Slot { kind, queued: vec![delivery] });
        drop(slots);
        self.inner.tasks.spawn(self.clone().work(uid));
    }

    /// The one worker of `uid`: reconciles until its slot is empty.
    async fn work(self, uid: Uuid) {
        let inner = &self.inner;
        loop {
            let (kind, deliveries) = {
                let mut slots = inner.slots.lock().expect("slots lock");
                let Some(slot) = slots.get_mut(&uid) else { return };
                if slot.queued.is_empty() {
                    slots.remove(&uid);
                    return;
                }
                (slot.kind, std::mem::take(&mut slot.queued))
            };
            let Ok(permit) = inner.permits.acquire().await else { return };
            let started = Instant::now();
            let result = self.reconcile_once(kind, uid).await;
            drop(permit);
            inner.metrics.duration_seconds.get_or_create(&inner.labels).observe(started.elapsed().as_secs_f64());
            match result {
                Ok(action) => {
                    self.count("ok");
                    for delivery in deliveries {
                        self.settle_ok(delivery.acker);
                    }
                    if let Action::Requeue(after) = action {
                        self.requeue(kind, uid, after);
                    }
                }
                Err(error) => {
                    self.count("error");
                    let category = error.category();
                    inner
                        .metrics
                        .failures
                        .get_or_create(&crate::metrics::CategoryLabels {
                            controller: inner.config.name.clone(),
                            category: category.to_owned(),
                        })
                        .inc();
                    tracing::warn!(%uid, error = %error, source = ?std::error::Error::source(&error), "reconcile failed");
                    self.fail(kind, uid, deliveries, &error).await;
                }
            }
        }
    }

    fn count(&self, result: &str) {
        let labels = ResultLabels { controller: self.inner.config.name.clone(), result: result.to_owned() };
        self.inner.metrics.reconciles.get_or_create(&labels).inc();
    }

    /// Acknowledges a Pub/Sub message (a local delivery needs nothing) and forgets its delivery count.
    fn settle_ok(&self, acker: Acker) {
        if let Acker::PubSub { handler, message_id } = acker {
            self.inner.attempts.lock().expect("attempts lock").remove(&message_id);
            handler.ack();
            self.inner.metrics.acked.get_or_create(&self.inner.labels).inc();
        }
    }

    /// Settles failed deliveries: retried with backoff (nack on Pub/Sub, a local retry otherwise), or moved to the
    /// dead-letter topic once a message was delivered `max_deliveries` times or the error is permanent.
    async fn fail(&self, kind: Kind, uid: Uuid, deliveries: Vec<Delivery>, error: &ReconcileError) {
        let inner = &self.inner;
        let mut local_attempt = None;
        for delivery in deliveries {
            if !error.retriable() || delivery.attempt >= inner.config.max_deliveries {
                self.dead_letter(delivery, error).await;
                continue;
            }
            let backoff = inner.config.backoff(delivery.attempt);
            match delivery.acker {
                Acker::PubSub { handler, .. } => {
                    let stop = inner.shutdown.clone();
                    inner.tasks.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        handler.nack();
                    });
                }
                Acker::Local => {
                    let attempt = delivery.attempt.max(local_attempt.map_or(0, |(attempt, _)| attempt));
                    local_attempt = Some((attempt, delivery.message));
                }
            }
        }
        if let Some((attempt, message)) = local_attempt {
            let backoff = inner.config.backoff(attempt);
            let runtime = self.clone();
            let stop = inner.shutdown.clone();
            inner.tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {
                        runtime.dispatch(kind, uid, Delivery { acker: Acker::Local, attempt: attempt + 1, message });
                    }
                }
            });
        }
    }

    async fn dead_letter(&self, delivery: Delivery, error: &ReconcileError) {
        let inner = &self.inner;
        inner.metrics.dead_lettered.get_or_create(&inner.labels).inc();
        let bus = inner.dead_letter.lock().expect("dead letter lock").clone();
        tracing::error!(attempt = delivery.attempt, error = %error, "giving up on a message: dead-lettered");
        match (delivery.acker, delivery.message, bus) {
            (Acker::PubSub { handler, message_id }, Some(message), Some(bus)) => {
                let mut dead = (*message).clone();
                dead.attributes.insert("cls-dead-letter-reason".into(), error.to_string());
                dead.attributes.insert("cls-delivery-attempts".into(), delivery.attempt.to_string());
                dead.attributes.insert("cls-controller".into(), inner.config.name.clone());
                match bus.publish(std::slice::from_ref(&dead)).await.pop() {
                    Some(Ok(())) => {
                        self.settle_ok(Acker::PubSub { handler, message_id });
                    }
                    _ => {
                        tracing::warn!("dead-letter publish failed; the message stays on the subscription");
                        handler.nack();
                    }
                }
            }
            (acker, _, _) => self.settle_ok(acker),
        }
    }

    fn requeue(&self, kind: Kind, uid: Uuid, after: Duration) {
        let inner = &self.inner;
        let at = Instant::now() + after;
        {
            let mut requeues = inner.requeues.lock().expect("requeues lock");
            if requeues.get(&uid).is_some_and(|scheduled| *scheduled <= at) {
                return;
            }
            requeues.insert(uid, at);
        }
        let runtime = self.clone();
        let stop = inner.shutdown.clone();
        inner.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(at.into()) => {
                    let mut requeues = runtime.inner.requeues.lock().expect("requeues lock");
                    if requeues.get(&uid) == Some(&at) {
                        requeues.remove(&uid);
                    }
                    drop(requeues);
                    runtime.dispatch(kind, uid, local(1));
                }
            }
        });
    }

    /// One level-triggered pass over the current object, re-reading after a 409.
    #[tracing::instrument(skip_all, fields(controller = %self.inner.config.name, %uid, generation))]
    async fn reconcile_once(&self, kind: Kind, uid: Uuid) -> Result<Action, ReconcileError> {
        let inner = &self.inner;
        for _ in 0..CONFLICT_RETRIES {
            let wakes_before = inner.wakes.load(Ordering::Acquire);
            let Some(object) = inner.api.get(kind, uid).await? else {
                inner.reconciler.forget(kind, uid).await;
                return Ok(Action::AwaitChange);
            };
            tracing::Span::current().record("generation", object.generation);
            let (cluster, platform) = self.platform_of(&object).await?;
            if !inner.config.covers(kind, &platform) {
                inner.metrics.filtered.get_or_create(&inner.labels).inc();
                return Ok(Action::AwaitChange);
            }
            let request = Request { object, cluster, platform, api: inner.api.clone(), trigger: inner.trigger.clone() };
            let finalizer = inner.config.finalizer();
            let has_finalizer = request.object.finalizers.contains(&finalizer);
            if request.object.deleting {
                if has_finalizer {
                    inner.reconciler.cleanup(&request).await?;
                    if !self.set_finalizer(&request.object, false).await? {
                        continue;
                    }
                }
                return Ok(Action::AwaitChange);
            }
            if inner.reconciler.uses_finalizer(kind) && !has_finalizer {
                self.set_finalizer(&request.object, true).await?;
                continue;
            }
            let unmet = self.unmet(&request).await?;
            let outcome = if unmet.is_empty() {
                inner.reconciler.reconcile(&request).await?
            } else {
                let awaited: Vec<String> = unmet.iter().map(|(description, _)| description.clone()).collect();
                {
                    let mut waiters = inner.waiters.lock().expect("waiters lock");
                    for (_, key) in unmet {
                        waiters.entry(key).or_default().insert((kind, uid));
                    }
                }
                let recheck = if inner.wakes.load(Ordering::Acquire) == wakes_before {
                    inner.config.precondition_recheck
                } else {
                    Duration::from_millis(50)
                };
                Outcome::progressing("PreconditionsNotMet", format!("waiting for {}", awaited.join(", ")))
                    .requeue(recheck)
            };
            match self.report(&request.object, &outcome).await {
                Ok(()) => return Ok(outcome.action),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ReconcileError::Transient(format!("{CONFLICT_RETRIES} conflicts in a row on {} {uid}", kind.as_str())))
    }

    async fn platform_of(&self, object: &Object) -> Result<(Option<Object>, String), ApiError> {
        match object.kind {
            Kind::Service => {
                let spec = object.service_spec().unwrap_or_default();
                let cluster = self.inner.api.find(Kind::Cluster, &object.namespace, &spec.cluster_ref.name).await?;
                let platform = cluster
                    .as_ref()
                    .and_then(|cluster| cluster.cluster_spec().ok())
                    .map(|spec| spec.platform.type_)
                    .unwrap_or_default();
                Ok((cluster, platform))
            }
            _ => Ok((None, object.cluster_spec().map(|spec| spec.platform.type_).unwrap_or_default())),
        }
    }

    /// Adds or removes this controller's finalizer; `false` when the object changed meanwhile (409: re-read).
    async fn set_finalizer(&self, object: &Object, present: bool) -> Result<bool, ApiError> {
        let finalizer = self.inner.config.finalizer();
        let mut finalizers: Vec<String> = object.finalizers.iter().filter(|f| **f != finalizer).cloned().collect();
        if present {
            finalizers.push(finalizer);
        }
        let mut document = object.document.clone();
        document["metadata"]["finalizers"] = Value::from(finalizers);
        if let Some(status) = document.as_object_mut() {
            status.remove("status");
        }
        match self.inner.api.replace(object.kind, object.uid, &document).await {
            Ok(_) => Ok(true),
            Err(ApiError::Status { code: 409, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The unmet preconditions: what is awaited, and the object whose change may meet it.
    async fn unmet(&self, request: &Request) -> Result<Vec<(String, ObjectKey)>, ApiError> {
        let object = &request.object;
        let mut unmet = Vec::new();
        for precondition in &self.inner.config.preconditions {
            match precondition {
                Precondition::ControllerAvailable(controller, kind) => {
                    if *kind == object.kind && !object.reports(controller, "Available") {
                        unmet.push((
                            format!("{controller} to report Available on {} {}", object.kind.as_str(), object.key()),
                            (object.kind, object.namespace.clone(), object.name.clone()),
                        ));
                    }
                }
                Precondition::ClusterReady if object.kind == Kind::Service => {
                    let name = object.service_spec().unwrap_or_default().cluster_ref.name;
                    let key = (Kind::Cluster, object.namespace.clone(), name.clone());
                    match &request.cluster {
                        Some(cluster) if cluster.ready() => {}
                        Some(_) => unmet.push((format!("Cluster {}/{name} to be Ready", object.namespace), key)),
                        None => unmet.push((format!("Cluster {}/{name} to exist", object.namespace), key)),
                    }
                }
                Precondition::DependenciesReady if object.kind == Kind::Service => {
                    for name in object.service_spec().unwrap_or_default().depends_on {
                        let key = (Kind::Service, object.namespace.clone(), name.clone());
                        match self.inner.api.find(Kind::Service, &object.namespace, &name).await? {
                            Some(dependency) if dependency.ready() => {}
                            Some(_) => unmet.push((format!("Service {}/{name} to be Ready", object.namespace), key)),
                            None => unmet.push((format!("Service {}/{name} to exist", object.namespace), key)),
                        }
                    }
                }
                Precondition::ClusterReady | Precondition::DependenciesReady => {}
            }
        }
        Ok(unmet)
    }

    /// Reports `outcome` at the generation reconciled, unless the stored report says the same already.
    async fn report(&self, object: &Object, outcome: &Outcome) -> Result<(), ApiError> {
        let inner = &self.inner;
        let name = &inner.config.name;
        if let Some(stored) = object.report_of(name)
            && stored.observed_generation == object.generation
            && same_conditions_ignoring_time(&stored.conditions, &outcome.conditions)
            && stored.data == outcome.data
        {
            return Ok(());
        }
        let report = ControllerReport {
            controller: name.clone(),
            observed_generation: object.generation,
            conditions: outcome.conditions.clone(),
            data: outcome.data.clone(),
            last_report_time: None,
        };
        inner.api.report(object.kind, object.uid, &report).await?;
        inner.metrics.reports.get_or_create(&inner.labels).inc();
        Ok(())
    }

    /// Registers the controller, then heartbeats; the first success starts a resync of every covered object (unless
    /// `resync_on_start` is off).
    async fn heartbeat(self) {
        let inner = &self.inner;
        let spec = ControllerSpec {
            kinds: inner.config.kinds.iter().map(|kind| kind.as_str().to_owned()).collect(),
            platforms: inner.config.platforms.clone(),
            required: inner.config.required,
            description: inner.config.description.clone(),
        };
        let mut registered = false;
        loop {
            let delay = match inner.api.register(&inner.config.name, &spec).await {
                Ok(()) => {
                    if !registered {
                        registered = true;
                        tracing::info!("registered");
                        if inner.config.resync_on_start {
                            inner.tasks.spawn(self.clone().resync());
                        }
                    }
                    inner.config.heartbeat
                }
                Err(error) => {
                    tracing::warn!(error = %error, "registration failed; retrying");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Queues every object of the covered kinds: after a start (state outside may need repair) or a lag.
    async fn resync(self) {
        let inner = &self.inner;
        for kind in inner.config.kinds.clone() {
            loop {
                match inner.api.list(kind, "").await {
                    Ok(objects) => {
                        for object in objects {
                            self.dispatch(kind, object.uid, local(1));
                        }
                        break;
                    }
                    Err(error) => tracing::warn!(error = %error, "resync list failed; retrying"),
                }
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

fn local(attempt: u32) -> Delivery {
    Delivery { acker: Acker::Local, attempt, message: None }
}

/// `cls-<controller>-dead-letter`.
pub fn dead_letter_topic(controller: &str) -> String {
    format!("cls-{controller}-dead-letter")
}
