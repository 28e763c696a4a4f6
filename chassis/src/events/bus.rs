use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Envelope;

/// Why a handler could not apply an event; it will be retried, then parked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    pub fn new(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

/// Reacts to events. Delivery is at least once: a handler records what it handled in its
/// inbox ([`crate::events::Inbox`]) so that a redelivered event has no second effect.
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError>;
}

/// Where a consumer parks an event it keeps failing on: the consumer's own database.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    async fn park(
        &self,
        consumer: &str,
        event: &Envelope,
        error: &str,
        attempts: u32,
    ) -> Result<(), HandlerError>;
}

/// How often, and how patiently, a failing event is retried before it is parked.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// A consumer's interest: which event types, handled by what, parked where.
#[derive(Clone)]
pub struct Subscription {
    /// Names the consumer, like a durable queue: every event goes once to each consumer.
    pub consumer: String,
    pub event_types: Vec<String>,
    pub handler: Arc<dyn EventHandler>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.consumer)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot take events now (a broker down, the process stopping); the outbox
    /// keeps them and the relay tries again.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
}

/// Carries events from publishers' outboxes to consumers. Implementations: in-process (the
/// monolith); a broker (split mode) implements the same two calls.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Takes a batch and answers once it is safe to mark the batch sent: in-process, when
    /// every subscriber has settled every event (handled it, or parked it as a dead
    /// letter); on a broker, when the broker has stored the batch. Order is kept per key.
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), BusError>;

    /// Delivers the subscription's event types to its handler from now on.
    async fn subscribe(&self, subscription: Subscription) -> Result<(), BusError>;

    /// What `/health/ready` calls the bus: `in_process`, `nats`.
    fn kind(&self) -> &'static str;

    /// Whether the bus can carry events now; the error says what is wrong.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
