//! Events between modules (spec §5).
//!
//! Without features: the [`Envelope`] every event travels in, and the ports — [`EventBus`]
//! (publish a batch; subscribe a handler under a consumer name) and [`EventHandler`]. With
//! `server`: the in-process bus, the consumer runtime (order per key, retries with
//! backoff, dead letters), the transactional outbox and its relay, and the inbox.
//!
//! Modules only ever see the ports, the outbox helper (`Database::write_with_events`) and
//! the inbox: moving events onto a broker replaces the bus implementation and touches no
//! module.

mod bus;
mod envelope;

pub use bus::{
    BusError, DeadLetterStore, EventBus, EventHandler, HandlerError, RetryPolicy, Subscription,
};
pub use envelope::Envelope;

#[cfg(feature = "server")]
mod consumer;
#[cfg(feature = "server")]
pub mod dead_letters;
#[cfg(feature = "server")]
mod in_process;
#[cfg(feature = "server")]
mod inbox;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "server")]
pub mod outbox;
#[cfg(feature = "server")]
pub(crate) mod schema;

#[cfg(feature = "server")]
pub use in_process::InProcessBus;
#[cfg(feature = "server")]
pub use inbox::{Applied, Inbox};
#[cfg(feature = "nats")]
pub use nats::NatsBus;
#[cfg(feature = "server")]
pub use outbox::{Events, OutboxRelay, RelaySettings};
