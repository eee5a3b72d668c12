//! Google Cloud Pub/Sub: one topic (default `cls-events`), ordering key = object uid, JSON data, CloudEvents binding
//! attributes plus the plain filter attributes.
//!
//! The `google-cloud-pubsub` crate does not read `PUBSUB_EMULATOR_HOST`; [`PubSubConfig::emulator_host`] carries it,
//! and with it every client gets the plain-HTTP endpoint and anonymous credentials (without them the first call
//! waits for a metadata server that is not there). Without it the clients use Application Default Credentials.
//!
//! Failures: a failed message pauses its ordering key in the publisher (so that later messages of the key cannot
//! overtake it); the bus resumes the key after reporting the failure, and the relay publishes the message again. A
//! topic that disappeared (an emulator restarted) is created again when [`PubSubConfig::recreate_missing_topic`].

use std::sync::Arc;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::{Message, Subscription};
use google_cloud_pubsub::retry_policy::RetryableErrors;

use super::{BoxFuture, BusError, BusMessage, EventBus, Result};

/// How long the publisher retries one batch before the relay hears of the failure and backs off.
const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(5);
/// How long the publisher waits to fill a batch.
const BATCH_DELAY: Duration = Duration::from_millis(2);

/// Where the bus is.
#[derive(Clone, Debug)]
pub struct PubSubConfig {
    pub project: String,
    /// The topic's short name (`cls-events`).
    pub topic: String,
    /// `HOST:PORT` of an emulator (`PUBSUB_EMULATOR_HOST`).
    pub emulator_host: Option<String>,
    /// Create the topic again when a publish finds it gone.
    pub recreate_missing_topic: bool,
}

impl PubSubConfig {
    pub fn new(project: impl Into<String>, topic: impl Into<String>, emulator_host: Option<String>) -> Self {
        PubSubConfig { project: project.into(), topic: topic.into(), emulator_host, recreate_missing_topic: true }
    }

    /// `projects/P/topics/T`.
    pub fn topic_path(&self) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic)
    }

    /// `projects/P/subscriptions/NAME`.
    pub fn subscription_path(&self, name: &str) -> String {
        format!("projects/{}/subscriptions/{name}", self.project)
    }

    fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|host| format!("http://{host}"))
    }

    fn client_error(&self) -> impl Fn(google_cloud_gax::client_builder::Error) -> BusError + '_ {
        |source| BusError::Client { project: self.project.clone(), source }
    }

    pub async fn topic_admin(&self) -> Result<TopicAdmin> {
        let mut builder = TopicAdmin::builder();
        if let Some(endpoint) = self.endpoint() {
            builder = builder.with_endpoint(endpoint).with_credentials(anonymous());
        }
        builder.build().await.map_err(self.client_error())
    }

    pub async fn subscription_admin(&self) -> Result<SubscriptionAdmin> {
        let mut builder = SubscriptionAdmin::builder();
        if let Some(endpoint) = self.endpoint() {
            builder = builder.with_endpoint(endpoint).with_credentials(anonymous());
        }
        builder.build().await.map_err(self.client_error())
    }

    pub async fn subscriber(&self) -> Result<Subscriber> {
        let mut builder = Subscriber::builder();
        if let Some(endpoint) = self.endpoint() {
            builder = builder.with_endpoint(endpoint).with_credentials(anonymous());
        }
        builder.build().await.map_err(self.client_error())
    }

    async fn publisher(&self) -> Result<Publisher> {
        let mut builder = Publisher::builder(self.topic_path())
            .set_delay_threshold(BATCH_DELAY)
            .with_retry_policy(RetryableErrors.with_time_limit(PUBLISH_RETRY_LIMIT));
        if let Some(endpoint) = self.endpoint() {
            builder = builder.with_endpoint(endpoint).with_credentials(anonymous());
        }
        builder.build().await.map_err(self.client_error())
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, admin: &TopicAdmin) -> Result<()> {
        let topic = self.topic_path();
        match admin.create_topic().set_name(&topic).send().await {
            Ok(_) => {
                tracing::info!(%topic, "topic created");
                Ok(())
            }
            Err(error) if has_code(&error, Code::AlreadyExists) => Ok(()),
            Err(source) => Err(BusError::Admin { resource: topic, source }),
        }
    }

    /// Creates a subscription on the topic unless it exists: message ordering on, and `filter` (for example
    /// `attributes.platform = "gcp"`) when not empty. Subscribers check the attributes too: the emulator accepts a
    /// filter without applying it. Answers whether this call created it (then nothing published before reached it).
    pub async fn ensure_subscription(&self, admin: &SubscriptionAdmin, name: &str, filter: &str) -> Result<bool> {
        let path = self.subscription_path(name);
        let subscription = Subscription::new()
            .set_name(&path)
            .set_topic(self.topic_path())
            .set_enable_message_ordering(true)
            .set_ack_deadline_seconds(30)
            .set_filter(filter);
        match admin.create_subscription().with_request(subscription).send().await {
            Ok(_) => Ok(true),
            Err(error) if has_code(&error, Code::AlreadyExists) => Ok(false),
            Err(source) => Err(BusError::Admin { resource: path, source }),
        }
    }

    /// Whether the subscription is known to be gone (`NOT_FOUND`); an unreachable service answers false.
    pub async fn subscription_missing(&self, admin: &SubscriptionAdmin, name: &str) -> bool {
        let path = self.subscription_path(name);
        match admin.get_subscription().set_subscription(&path).send().await {
            Ok(_) => false,
            Err(error) => has_code(&error, Code::NotFound),
        }
    }
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

fn has_code(error: &google_cloud_pubsub::Error, code: Code) -> bool {
    error.status().is_some_and(|status| status.code == code)
}

/// The Pub/Sub implementation of [`EventBus`].
#[derive(Clone)]
pub struct PubSubBus {
    config: Arc<PubSubConfig>,
    admin: TopicAdmin,
    publisher: Publisher,
}

impl PubSubBus {
    /// Connects and creates the topic when missing.
    pub async fn connect(config: PubSubConfig) -> Result<PubSubBus> {
        let admin = config.topic_admin().await?;
        config.ensure_topic(&admin).await?;
        let publisher = config.publisher().await?;
        Ok(PubSubBus { config: Arc::new(config), admin, publisher })
    }

    pub fn config(&self) -> &PubSubConfig {
        &self.config
    }

    async fn publish_batch(&self, messages: &[BusMessage]) -> Vec<Result<()>> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let data = match serde_json::to_vec(&message.event) {
                Ok(data) => data,
                Err(source) => {
                    pending.push(Err(BusError::Encode { id: message.event.id, source }));
                    continue;
                }
            };
            let outgoing = Message::new()
                .set_data(data)
                .set_attributes(message.attributes.clone())
                .set_ordering_key(message.ordering_key());
            pending.push(Ok(self.publisher.publish(outgoing)));
        }
        let mut results = Vec::with_capacity(messages.len());
        let mut topic_missing = false;
        for (message, publish) in messages.iter().zip(pending) {
            let result = match publish {
                Ok(future) => future.await.map(drop).map_err(|source| {
                    if let PublishError::Rpc(error) = &source {
                        topic_missing |= has_code(error, Code::NotFound);
                    }
                    // The key is paused after a failure; the relay publishes it again, so let it through.
                    self.publisher.resume_publish(message.ordering_key());
                    BusError::Publish { topic: self.config.topic_path(), source }
                }),
                Err(error) => Err(error),
            };
            results.push(result);
        }
        if topic_missing && self.config.recreate_missing_topic {
            tracing::warn!(topic = %self.config.topic_path(), "topic is gone; creating it again");
            if let Err(error) = self.config.ensure_topic(&self.admin).await {
                tracing::warn!(error = %error, "cannot create the topic");
            }
        }
        results
    }
}

impl EventBus for PubSubBus {
    fn publish<'a>(&'a self, messages: &'a [BusMessage]) -> BoxFuture<'a, Vec<Result<()>>> {
        Box::pin(self.publish_batch(messages))
    }

    fn ready(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let topic = self.config.topic_path();
            self.admin
                .get_topic()
                .set_topic(&topic)
                .send()
                .await
                .map(drop)
                .map_err(|source| BusError::Admin { resource: topic, source })
        })
    }

    fn name(&self) -> &'static str {
        "pubsub"
    }
}
