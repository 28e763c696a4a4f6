use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::consumer::{Consumer, Delivery, Settle};
use super::{BusError, Envelope, EventBus, Subscription};

/// The monolith's bus: events go from a relay straight to the consumers' runtimes in this
/// process. Nothing is stored here: the publishers' outboxes are the durable copy, and
/// `publish` answers only once every consumer has settled every event, so a crash before
/// that leaves the rows unsent and the relay publishes them again after restart.
#[derive(Default)]
pub struct InProcessBus {
    consumers: RwLock<Vec<Arc<Consumer>>>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.consumers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Takes the lag added by a publish back off when the publish ends, however it ends.
struct LagGuard(Vec<(metrics::Gauge, f64)>);

impl Drop for LagGuard {
    fn drop(&mut self) {
        for (gauge, pending) in &self.0 {
            gauge.decrement(*pending);
        }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), BusError> {
        let consumers = self.consumers();
        let events: Vec<Arc<Envelope>> = events.into_iter().map(Arc::new).collect();
        let wanted: Vec<Vec<Arc<Envelope>>> = consumers
            .iter()
            .map(|consumer| {
                events
                    .iter()
                    .filter(|event| consumer.wants(&event.event_type))
                    .cloned()
                    .collect()
            })
            .collect();
        let count = wanted.iter().map(Vec::len).sum();
        let (settle, settled) = Settle::new(count);
        // Consumer lag, under the name the NATS bus reports it: here, the events handed to
        // a consumer and not yet settled (a publish waits for them all).
        let lag: Vec<(metrics::Gauge, f64)> = consumers
            .iter()
            .zip(&wanted)
            .filter(|(_, events)| !events.is_empty())
            .map(|(consumer, events)| {
                let gauge = metrics::gauge!(
                    "bazaar_bus_consumer_pending",
                    "consumer" => consumer.consumer_name().to_owned()
                );
                let pending = events.len() as f64;
                gauge.increment(pending);
                (gauge, pending)
            })
            .collect();
        let _lag = LagGuard(lag);
        for (consumer, events) in consumers.iter().zip(wanted) {
            if events.is_empty() {
                continue;
            }
            let deliveries = events
                .into_iter()
                .map(|event| Delivery {
                    event,
                    settle: Arc::clone(&settle),
                })
                .collect();
            consumer.deliver(deliveries).await?;
        }
        settled.await.map_err(|_| {
            BusError::Unavailable("a consumer stopped before settling its events".into())
        })
    }

    fn kind(&self) -> &'static str {
        "in_process"
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<(), BusError> {
        if subscription.event_types.is_empty() {
            return Err(BusError::InvalidSubscription(format!(
                "consumer {} names no event type",
                subscription.consumer
            )));
        }
        let mut consumers = self
            .consumers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if consumers
            .iter()
            .any(|existing| existing.consumer_name() == subscription.consumer)
        {
            return Err(BusError::InvalidSubscription(format!(
                "consumer {} is already subscribed",
                subscription.consumer
            )));
        }
        consumers.push(Arc::new(Consumer::start(subscription)));
        Ok(())
    }
}
