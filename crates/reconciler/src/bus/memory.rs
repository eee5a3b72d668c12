//! The in-process bus: a broadcast channel for `cls up`, where the relay and the controllers share one process.
//!
//! Like a topic without subscriptions, a message published while nobody subscribes is dropped; a subscriber that
//! falls more than the channel's capacity behind loses the oldest messages (it sees `Lagged`) and must resync by
//! listing, exactly as a controller would after a Pub/Sub outage. The periodic reconcile events repair the rest.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{BoxFuture, BusMessage, EventBus, Result};

/// Messages a subscriber may fall behind before it loses the oldest.
const CAPACITY: usize = 65_536;

#[derive(Clone, Debug)]
pub struct InProcessBus {
    sender: broadcast::Sender<Arc<BusMessage>>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        InProcessBus { sender: broadcast::channel(CAPACITY).0 }
    }
}

impl InProcessBus {
    pub fn new() -> InProcessBus {
        InProcessBus::default()
    }

    /// A new subscription: every message published from now on, in publish order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.sender.subscribe()
    }
}

impl EventBus for InProcessBus {
    fn publish<'a>(&'a self, messages: &'a [BusMessage]) -> BoxFuture<'a, Vec<Result<()>>> {
        Box::pin(async move {
            messages
                .iter()
                .map(|message| {
                    // An error only means that nobody subscribes right now: accepted and dropped, as on a topic.
                    let _ = self.sender.send(Arc::new(message.clone()));
                    Ok(())
                })
                .collect()
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}
