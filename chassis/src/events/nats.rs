//! The NATS JetStream event bus (`bus.kind = "nats"`): events cross processes through a
//! broker, with the in-process bus's promise — every committed event reaches each consumer,
//! in order per key, applied once.
//!
//! The shape. One stream (`bus.stream`) holds `bazaar.events.>`. An event is stored under
//! `bazaar.events.p<k>.<type>`, where `k` is a stable hash of its key modulo
//! `bus.partitions`. A consumer name has one durable pull consumer per partition
//! (`<consumer>-p<k>`) with one message in flight (`max_ack_pending = 1`): every instance
//! of the consumer pulls from every partition, JetStream hands each message to one of
//! them, and a partition's next message waits until the last one is acked. So a key's
//! events are handled one after the other, in order, by whichever instance, and instances
//! share the work. The partition count decides where a key's events live: it is fixed for
//! a deployment (changing it needs an empty stream).
//!
//! Publishing. Each event is published with `Nats-Msg-Id` = its id, so that JetStream drops
//! a copy within its duplicate window; `publish` answers only when every event's publish
//! ack has come back, and after a lost or late ack publishes again, the same ids, from the
//! first unacknowledged event on, so that a partition keeps the batch's order.
//!
//! Consuming reuses the consumer runtime of the in-process bus (lanes, retries with
//! backoff, dead letters): a message is acked once the runtime settled it (handled, its
//! inbox transaction committed, or parked as a dead letter); while it is retried the bus
//! tells JetStream it is still at work, so the message stays this instance's. A consumer
//! that crashes before the ack gets the message redelivered, and its inbox makes that a
//! no-op. A lost connection or a broker restart ends the pull; it is started again, the
//! durable consumer re-created if the broker lost it, after a backoff.

use std::collections::HashSet;
use std::hash::Hasher as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use super::consumer::{Consumer, Delivery, Settle};
use super::{BusError, Envelope, EventBus, Subscription};
use crate::config::NatsSettings;

/// Subjects of the stream; an event's is `<SUBJECT_PREFIX>.p<k>.<type>`.
const SUBJECT_PREFIX: &str = "bazaar.events";

/// The NATS JetStream bus; see the module documentation.
pub struct NatsBus {
    jetstream: jetstream::Context,
    settings: NatsSettings,
    consumers: Mutex<HashSet<String>>,
    pulls: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("stream", &self.settings.stream)
            .field("partitions", &self.settings.partitions)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for pull in self.pulls().drain(..) {
            pull.abort();
        }
    }
}

impl NatsBus {
    /// Connects to `settings.url` and creates the stream if it is missing. The client
    /// reconnects by itself after a lost connection.
    pub async fn connect(settings: NatsSettings) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("bazaar")
            .event_callback(|event| {
                tracing::info!(%event, "NATS connection");
                std::future::ready(())
            })
            .connection_timeout(settings.publish_timeout)
            .request_timeout(Some(settings.publish_timeout))
            .max_reconnects(None)
            .connect(settings.url.expose())
            .await
            .map_err(|error| {
                BusError::Unavailable(format!(
                    "cannot connect to NATS at {}: {error}",
                    settings.url
                ))
            })?;
        let bus = Self {
            jetstream: jetstream::new(client),
            settings,
            consumers: Mutex::new(HashSet::new()),
            pulls: Mutex::new(Vec::new()),
        };
        bus.stream().await?;
        Ok(bus)
    }

    /// The stream, created with the settings' retention and duplicate window if missing.
    async fn stream(&self) -> Result<stream::Stream, BusError> {
        ensure_stream(&self.jetstream, &self.settings).await
    }

    fn pulls(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.pulls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes `events` without waiting for their acks; answers the ack futures in order,
    /// stopping at the first event that could not be sent.
    async fn send(
        &self,
        events: &[(String, Envelope, Vec<u8>)],
    ) -> Vec<Result<jetstream::context::PublishAckFuture, String>> {
        let mut acks = Vec::with_capacity(events.len());
        for (subject, event, body) in events {
            let mut message = jetstream::message::PublishMessage::build()
                .payload(body.clone().into())
                .message_id(event.id.to_string());
            for (name, value) in &event.trace_context {
                message = message.header(name.as_str(), value.as_str());
            }
            let sent = self
                .jetstream
                .send_publish(subject.clone(), message)
                .await
                .map_err(|error| error.to_string());
            let failed = sent.is_err();
            acks.push(sent);
            if failed {
                break;
            }
        }
        acks
    }
}

async fn ensure_stream(
    jetstream: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<stream::Stream, BusError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            max_age: settings.max_age,
            duplicate_window: settings.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|error| {
            BusError::Unavailable(format!(
                "cannot create or open the JetStream stream {}: {error}",
                settings.stream
            ))
        })
}

impl NatsBus {
    /// The partition that holds `key`'s events when the stream has `partitions`.
    pub fn partition_of(key: &str, partitions: u16) -> u16 {
        partition_of(key, partitions)
    }
}

/// The partition of `key`: FNV-1a of its bytes, the same in every process and version.
fn partition_of(key: &str, partitions: u16) -> u16 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    (hasher.finish() % u64::from(partitions.max(1))) as u16
}

fn subject_of(event: &Envelope, partitions: u16) -> String {
    format!(
        "{SUBJECT_PREFIX}.p{}.{}",
        partition_of(&event.key, partitions),
        event.event_type
    )
}

/// A NATS consumer name may not hold `.`, `*`, `>` or white space.
fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), BusError> {
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_vec(&event)
                .map_err(|error| BusError::Unavailable(format!("cannot encode event: {error}")))?;
            prepared.push((subject_of(&event, self.settings.partitions), event, body));
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(self.settings.publish_attempts as usize)
            .build();
        // Events before `acked` are stored; the rest are (re)published in order.
        let mut acked = 0;
        let mut last_error = String::new();
        loop {
            let acks = self.send(&prepared[acked..]).await;
            for ack in acks {
                let stored = match ack {
                    Ok(ack) => tokio::time::timeout(self.settings.publish_timeout, ack)
                        .await
                        .map_err(|_| "no publish ack in time".to_owned())
                        .and_then(|ack| ack.map_err(|error| error.to_string())),
                    Err(error) => Err(error),
                };
                match stored {
                    Ok(_) => acked += 1,
                    Err(error) => {
                        last_error = error;
                        break;
                    }
                }
            }
            if acked == prepared.len() {
                metrics::counter!("bazaar_bus_published_total").increment(acked as u64);
                return Ok(());
            }
            metrics::counter!("bazaar_bus_publish_failures_total").increment(1);
            match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(BusError::Unavailable(format!(
                        "NATS did not store the events: {last_error}"
                    )));
                }
            }
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    /// Connected, and the stream is there.
    async fn check(&self) -> Result<(), String> {
        let state = self.jetstream.client().connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(format!("not connected to NATS ({state})"));
        }
        self.jetstream
            .get_stream(&self.settings.stream)
            .await
            .map(drop)
            .map_err(|error| format!("stream {}: {error}", self.settings.stream))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<(), BusError> {
        if subscription.event_types.is_empty() {
            return Err(BusError::InvalidSubscription(format!(
                "consumer {} names no event type",
                subscription.consumer
            )));
        }
        if !valid_consumer_name(&subscription.consumer) {
            return Err(BusError::InvalidSubscription(format!(
                "consumer {:?}: a name for NATS is letters, digits, '-' and '_'",
                subscription.consumer
            )));
        }
        {
            let mut consumers = self
                .consumers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !consumers.insert(subscription.consumer.clone()) {
                return Err(BusError::InvalidSubscription(format!(
                    "consumer {} is already subscribed",
                    subscription.consumer
                )));
            }
        }
        let name = subscription.consumer.clone();
        let runtime = Arc::new(Consumer::start(subscription));
        // Created here, so that a start-up against a broker that refuses them fails.
        let stream = self.stream().await?;
        let mut pulls = Vec::with_capacity(usize::from(self.settings.partitions));
        for partition in 0..self.settings.partitions {
            let pull = PartitionPull {
                jetstream: self.jetstream.clone(),
                settings: self.settings.clone(),
                durable: format!("{name}-p{partition}"),
                filter: format!("{SUBJECT_PREFIX}.p{partition}.>"),
                runtime: Arc::clone(&runtime),
            };
            pull.consumer(&stream).await?;
            pulls.push(tokio::spawn(pull.run()));
        }
        pulls.push(tokio::spawn(report_lag(
            self.jetstream.clone(),
            self.settings.clone(),
            name,
        )));
        self.pulls().extend(pulls);
        Ok(())
    }
}

/// One consumer name's pull from one partition.
struct PartitionPull {
    jetstream: jetstream::Context,
    settings: NatsSettings,
    durable: String,
    filter: String,
    runtime: Arc<Consumer>,
}

impl PartitionPull {
    async fn consumer(
        &self,
        stream: &stream::Stream,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        stream
            .get_or_create_consumer(
                &self.durable,
                pull::Config {
                    durable_name: Some(self.durable.clone()),
                    filter_subject: self.filter.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    max_ack_pending: 1,
                    // Bazaar parks failing events itself; JetStream never gives up on one.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| {
                BusError::Unavailable(format!(
                    "cannot create the JetStream consumer {}: {error}",
                    self.durable
                ))
            })
    }

    /// Pulls for ever: a pull that ends (connection lost, broker restarted, consumer
    /// deleted) starts again after a backoff.
    async fn run(self) {
        let mut delays = backoff();
        loop {
            match self.pull().await {
                Ok(()) => delays = backoff(),
                Err(error) => {
                    tracing::warn!(consumer = %self.durable, %error, "NATS pull ended; starting again");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// One pull, until it fails. Its requests expire soon and the broker's heartbeats are
    /// watched, so that a broker that restarted (and forgot the requests) is noticed within
    /// seconds; a request left over from a dropped pull expires as soon.
    async fn pull(&self) -> Result<(), String> {
        let stream = ensure_stream(&self.jetstream, &self.settings)
            .await
            .map_err(|error| error.to_string())?;
        let consumer = self
            .consumer(&stream)
            .await
            .map_err(|error| error.to_string())?;
        let mut messages = consumer
            .stream()
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 3)
            .messages()
            .await
            .map_err(|error| error.to_string())?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| error.to_string())?;
            self.settle(message).await?;
        }
        Ok(())
    }

    /// Hands one message to the consumer runtime and acks it once settled.
    async fn settle(&self, message: jetstream::Message) -> Result<(), String> {
        let event: Envelope = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                // Not an event Bazaar wrote: nobody can handle it, and retrying changes nothing.
                tracing::error!(consumer = %self.durable, subject = %message.subject, %error, "undecodable message on the event stream; terminated");
                self.ack(&message, AckKind::Term).await;
                return Ok(());
            }
        };
        if !self.runtime.wants(&event.event_type) {
            self.ack(&message, AckKind::Ack).await;
            return Ok(());
        }
        if message.info().is_ok_and(|info| info.delivered > 1) {
            metrics::counter!("bazaar_bus_redelivered_total", "consumer" => self.runtime.consumer_name().to_owned()).increment(1);
        }
        metrics::counter!("bazaar_bus_delivered_total", "consumer" => self.runtime.consumer_name().to_owned()).increment(1);
        let (settle, settled) = Settle::new(1);
        self.runtime
            .deliver(vec![Delivery {
                event: Arc::new(event),
                settle: Arc::clone(&settle),
            }])
            .await
            .map_err(|error| error.to_string())?;
        // While the runtime retries, JetStream must not hand the message to another instance.
        let mut still_working = tokio::time::interval(self.settings.ack_wait / 3);
        still_working.tick().await;
        tokio::pin!(settled);
        loop {
            tokio::select! {
                outcome = &mut settled => {
                    outcome.map_err(|_| "the consumer stopped before settling the event".to_owned())?;
                    break;
                }
                _ = still_working.tick() => {
                    let _not_fatal = message.ack_with(AckKind::Progress).await;
                }
            }
        }
        // A parked event is the consumer's dead letter now: the broker stops offering it.
        let kind = if settle.any_parked() {
            AckKind::Term
        } else {
            AckKind::Ack
        };
        self.ack(&message, kind).await;
        Ok(())
    }

    /// Acks and waits for JetStream to confirm, trying again through a reconnect: an ack
    /// lost with the connection would hold the partition until `ack_wait` ran out. After
    /// `ack_wait` it gives up; JetStream then redelivers, and the inbox drops the copy.
    async fn ack(&self, message: &jetstream::Message, kind: AckKind) {
        let consumer = self.runtime.consumer_name().to_owned();
        let deadline = tokio::time::Instant::now() + self.settings.ack_wait;
        let mut delays = backoff();
        loop {
            match message.double_ack_with(kind).await {
                Ok(()) => {
                    metrics::counter!("bazaar_bus_acked_total", "consumer" => consumer)
                        .increment(1);
                    return;
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(consumer = %self.durable, %error, "ack not confirmed; trying again");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                }
                Err(error) => {
                    tracing::warn!(consumer = %self.durable, %error, "ack not confirmed; JetStream will deliver the event again");
                    return;
                }
            }
        }
    }
}

/// How long a pull request waits on the broker before the client makes a new one.
const PULL_EXPIRES: Duration = Duration::from_secs(6);

/// How often a consumer's lag is read from JetStream.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `bazaar_bus_consumer_pending{consumer}` at the events waiting for `consumer` (not
/// delivered yet, or delivered and not acked), over its partitions.
async fn report_lag(jetstream: jetstream::Context, settings: NatsSettings, consumer: String) {
    let mut every = tokio::time::interval(LAG_INTERVAL);
    loop {
        every.tick().await;
        let Ok(stream) = jetstream.get_stream(&settings.stream).await else {
            continue;
        };
        let mut pending = 0_u64;
        for partition in 0..settings.partitions {
            let durable = format!("{consumer}-p{partition}");
            if let Ok(mut pull) = stream.get_consumer::<pull::Config>(&durable).await
                && let Ok(info) = pull.info().await
            {
                pending += info.num_pending + info.num_ack_pending as u64;
            }
        }
        metrics::gauge!("bazaar_bus_consumer_pending", "consumer" => consumer.clone())
            .set(pending as f64);
    }
}

fn backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        // Pinned (FNV-1a 64): a change would move keys between partitions in running
        // deployments, and break the order of their events.
        assert_eq!(partition_of("order-1", 16), 13);
        assert_eq!(partition_of("order-1", 64), 45);
        assert_eq!(partition_of("0190c3a2-5f00-7000-8000-0000000000a1", 16), 10);
        let spread: HashSet<u16> = (0..200)
            .map(|n| partition_of(&format!("key-{n}"), 16))
            .collect();
        assert_eq!(spread.len(), 16, "200 keys use every partition");
        assert!(spread.iter().all(|p| *p < 16));
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn consumer_names_are_what_nats_takes() {
        assert!(valid_consumer_name("notifications"));
        assert!(valid_consumer_name("orders_saga-2"));
        assert!(!valid_consumer_name("a.b"));
        assert!(!valid_consumer_name("a b"));
        assert!(!valid_consumer_name(""));
    }
}
