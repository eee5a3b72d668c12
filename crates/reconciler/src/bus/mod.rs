//! The event bus: where the relay hands committed events over.
//!
//! Two implementations: [`PubSubBus`] (Google Cloud Pub/Sub, one topic, ordering key = object uid) and
//! [`InProcessBus`] (a broadcast channel, for `cls up` when every role runs in one process). A publish of a batch
//! answers one result per message, in order; the relay deletes an outbox row only after its message's `Ok`.

mod memory;
mod pubsub;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use cls_core::event::Event;
use thiserror::Error;

pub use memory::InProcessBus;
pub use pubsub::{PubSubBus, PubSubConfig};

/// The CloudEvents `ce-source` of every event CLS publishes.
pub const EVENT_SOURCE: &str = "/cls";

/// One message on the bus: the thin event (the JSON data) and its attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct BusMessage {
    pub event: Event,
    pub attributes: BTreeMap<String, String>,
}

impl BusMessage {
    /// The message for `event` about an object on `platform`, with the attributes of the contract.
    pub fn new(event: Event, platform: &str) -> BusMessage {
        let attributes = event.attributes(platform, EVENT_SOURCE);
        BusMessage { event, attributes }
    }

    /// The ordering key: the object's uid.
    pub fn ordering_key(&self) -> String {
        self.event.uid.to_string()
    }
}

#[derive(Debug, Error)]
pub enum BusError {
    #[error("publish to {topic} failed")]
    Publish {
        topic: String,
        #[source]
        source: google_cloud_pubsub::error::PublishError,
    },
    #[error("publish timed out after {seconds} s")]
    Timeout { seconds: u64 },
    #[error("pub/sub admin call on {resource} failed")]
    Admin {
        resource: String,
        #[source]
        source: google_cloud_pubsub::Error,
    },
    #[error("pub/sub client for {project} could not be built")]
    Client {
        project: String,
        #[source]
        source: google_cloud_gax::client_builder::Error,
    },
    #[error("event {id} could not be encoded")]
    Encode {
        id: uuid::Uuid,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// A boxed future, so that the bus can be chosen at run time (`Arc<dyn EventBus>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where committed events go.
///
/// Guarantees expected of an implementation: `publish` answers exactly one result per message, in input order; an
/// `Ok` means the bus has durably accepted the message; messages with the same ordering key are delivered in input
/// order. Duplicates are allowed (the relay republishes whatever it could not confirm).
pub trait EventBus: Send + Sync + 'static {
    /// Publishes a batch; one result per message, in order.
    fn publish<'a>(&'a self, messages: &'a [BusMessage]) -> BoxFuture<'a, Vec<Result<()>>>;

    /// Whether the bus is reachable (for `/readyz`).
    fn ready(&self) -> BoxFuture<'_, Result<()>>;

    /// A short name for logs and metrics (`pubsub`, `in-process`).
    fn name(&self) -> &'static str;
}
