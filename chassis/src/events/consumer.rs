//! The consumer runtime every bus implementation feeds: one subscription's events, in order
//! per key, with retries and dead letters.
//!
//! Events are spread over a few lanes by key. A lane takes the events a bus hands it
//! together (an outbox relay's batch), handles the different keys among them at once and
//! each key's events one after the other, and takes the next batch only when this one is
//! done, so order per key holds. When an event fails, its key leaves the lane: a retry
//! task takes that event and every later event of the same key (retrying with exponential
//! backoff and jitter, then parking in the consumer's dead letters), while the lane goes on
//! with every other key. A poison event therefore delays its own key only. A handler that
//! panics has failed that attempt, like one that returns an error.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::{BusError, Envelope, EventHandler, HandlerError, Subscription};

/// Lanes per consumer: enough to keep a slow key from holding up many others, few enough
/// that a two-core machine does not thrash.
const LANES: usize = 4;
/// Batches waiting per lane before `deliver` waits (back-pressure on the relay).
const LANE_CAPACITY: usize = 256;
/// Keys a lane hands to the handler at once, each key's events still one after the other.
/// A relay's batch is at most a few hundred events, so this bounds what one lane asks of
/// its module's writer at a moment.
const KEYS_AT_ONCE: usize = 64;

/// Counts down the deliveries of one published batch; fires when all are settled.
pub(crate) struct Settle {
    remaining: AtomicUsize,
    /// Whether any of the deliveries was parked as a dead letter rather than handled.
    parked: std::sync::atomic::AtomicBool,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Settle {
    pub(crate) fn new(count: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let settle = Arc::new(Self {
            remaining: AtomicUsize::new(count),
            parked: std::sync::atomic::AtomicBool::new(false),
            done: Mutex::new(Some(sender)),
        });
        if count == 0 {
            settle.fire();
        }
        (settle, receiver)
    }

    fn one_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.fire();
        }
    }

    fn one_parked(&self) {
        self.parked.store(true, Ordering::Release);
        self.one_done();
    }

    /// Whether a delivery was parked as a dead letter (known once the batch has settled).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn any_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    fn fire(&self) {
        let sender = self
            .done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(sender) = sender {
            let _receiver_gone = sender.send(());
        }
    }
}

/// One event on its way to one consumer.
pub(crate) struct Delivery {
    pub(crate) event: Arc<Envelope>,
    pub(crate) settle: Arc<Settle>,
}

struct Shared {
    subscription: Subscription,
    /// Keys taken out of their lane by a failure, with the events that arrived since.
    blocked: Mutex<HashMap<String, VecDeque<Delivery>>>,
}

impl Shared {
    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Delivery>>> {
        self.blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn consumer(&self) -> &str {
        &self.subscription.consumer
    }

    async fn attempt(&self, event: &Envelope) -> Result<(), HandlerError> {
        let outcome = handle(self.subscription.handler.as_ref(), event).await;
        if let Err(error) = &outcome {
            metrics::counter!("bazaar_event_handler_failures_total", "consumer" => self.consumer().to_owned())
                .increment(1);
            tracing::warn!(consumer = self.consumer(), event_id = %event.id, event_type = %event.event_type, %error, "event handler failed");
        }
        outcome
    }
}

/// Hands `event` to `handler`, a panic included in the failures: a panic that unwound
/// into a lane or retry task would end that task, leaving its batch unsettled (the relay's
/// publish waiting for ever) and its keys with nobody to handle them.
pub(crate) async fn handle(
    handler: &dyn EventHandler,
    event: &Envelope,
) -> Result<(), HandlerError> {
    // A messaging "process" span, continuing the trace of the change that raised the event.
    let span = tracing::info_span!(
        "handle event",
        otel.name = %format_args!("process {}", event.event_type),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.message.id = %event.id,
        bazaar.event_type = %event.event_type,
    );
    crate::trace::continue_from(&span, &event.trace_context);
    // Unwind safety: the consumer's own state is not touched while the handler runs, and
    // whatever state the handler left half-changed is its own, as it is for an error.
    AssertUnwindSafe(handler.handle(event).instrument(span))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            Err(HandlerError(format!("the handler panicked: {message}")))
        })
}

/// A running subscription.
pub(crate) struct Consumer {
    name: String,
    event_types: HashSet<String>,
    lanes: Vec<mpsc::Sender<Vec<Delivery>>>,
}

impl Consumer {
    pub(crate) fn consumer_name(&self) -> &str {
        self.name.as_str()
    }

    pub(crate) fn start(subscription: Subscription) -> Self {
        let event_types = subscription.event_types.iter().cloned().collect();
        let name = subscription.consumer.clone();
        // Listed at zero from the start, so that dashboards and alerts see the series
        // before the first failure.
        metrics::counter!("bazaar_event_handler_failures_total", "consumer" => name.clone())
            .increment(0);
        metrics::counter!("bazaar_dead_letters_total", "consumer" => name.clone()).increment(0);
        let shared = Arc::new(Shared {
            subscription,
            blocked: Mutex::new(HashMap::new()),
        });
        let lanes = (0..LANES)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(LANE_CAPACITY);
                tokio::spawn(run_lane(Arc::clone(&shared), receiver));
                sender
            })
            .collect();
        Self {
            event_types,
            lanes,
            name,
        }
    }

    pub(crate) fn wants(&self, event_type: &str) -> bool {
        self.event_types.contains(event_type)
    }

    pub(crate) async fn deliver(&self, deliveries: Vec<Delivery>) -> Result<(), BusError> {
        let mut per_lane: Vec<Vec<Delivery>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for delivery in deliveries {
            per_lane[lane_of(&delivery.event.key, self.lanes.len())].push(delivery);
        }
        for (lane, batch) in self.lanes.iter().zip(per_lane) {
            if !batch.is_empty() {
                lane.send(batch)
                    .await
                    .map_err(|_| BusError::Unavailable("the consumer has stopped".into()))?;
            }
        }
        Ok(())
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

async fn run_lane(shared: Arc<Shared>, mut receiver: mpsc::Receiver<Vec<Delivery>>) {
    while let Some(batch) = receiver.recv().await {
        // A key's events one after the other, different keys' at once: a handler that
        // waits for its database's commit then holds up only its own key, and the
        // handlers waiting together share one of the writer's batches (an event of a
        // lane used to wait for every event before it). The whole batch is settled or
        // taken over by a retry before the next is taken, so order per key holds across
        // batches too.
        futures::stream::iter(by_key(batch))
            .for_each_concurrent(KEYS_AT_ONCE, |deliveries| {
                deliver_in_order(&shared, deliveries)
            })
            .await;
    }
}

/// A batch's deliveries grouped by key, each group in the batch's order.
fn by_key(batch: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for delivery in batch {
        let next = groups.len();
        let group = *group_of.entry(delivery.event.key.clone()).or_insert(next);
        if group == next {
            groups.push(Vec::new());
        }
        groups[group].push(delivery);
    }
    groups
}

/// Hands one key's deliveries to the handler in order. After a failure the key belongs
/// to its retry task, and the rest queue behind the failed event there.
async fn deliver_in_order(shared: &Arc<Shared>, deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        let delivery = {
            let mut blocked = shared.blocked();
            match blocked.get_mut(&delivery.event.key) {
                // An earlier event of this key is being retried: queue behind it.
                Some(queue) => {
                    queue.push_back(delivery);
                    continue;
                }
                None => delivery,
            }
        };
        match shared.attempt(&delivery.event).await {
            Ok(()) => delivery.settle.one_done(),
            Err(error) => {
                shared
                    .blocked()
                    .insert(delivery.event.key.clone(), VecDeque::new());
                tokio::spawn(retry_key(Arc::clone(shared), delivery, error));
            }
        }
    }
}

/// Settles a failed event and then every event of its key that queued up meanwhile, in
/// order, before giving the key back to its lane.
async fn retry_key(shared: Arc<Shared>, first: Delivery, error: HandlerError) {
    let key = first.event.key.clone();
    let mut failed = Some((first, error));
    loop {
        if let Some((delivery, error)) = failed.take() {
            retry_until_settled(&shared, delivery, error).await;
        }
        let next = {
            let mut blocked = shared.blocked();
            let next = blocked.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_none() {
                blocked.remove(&key);
            }
            next
        };
        let Some(delivery) = next else { break };
        match shared.attempt(&delivery.event).await {
            Ok(()) => delivery.settle.one_done(),
            Err(error) => failed = Some((delivery, error)),
        }
    }
}

async fn retry_until_settled(shared: &Shared, delivery: Delivery, mut error: HandlerError) {
    let policy = shared.subscription.retry;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempts = 1;
    while attempts < policy.max_attempts {
        tokio::time::sleep(delays.next().unwrap_or(policy.max_delay)).await;
        attempts += 1;
        match shared.attempt(&delivery.event).await {
            Ok(()) => {
                delivery.settle.one_done();
                return;
            }
            Err(next) => error = next,
        }
    }
    // Parking must not lose the event: if the consumer's database is down too, keep trying.
    loop {
        match shared
            .subscription
            .dead_letters
            .park(shared.consumer(), &delivery.event, &error.0, attempts)
            .await
        {
            Ok(()) => break,
            Err(park_error) => {
                tracing::error!(consumer = shared.consumer(), event_id = %delivery.event.id, %park_error, "cannot park a dead letter; retrying");
                tokio::time::sleep(policy.max_delay).await;
            }
        }
    }
    metrics::counter!("bazaar_dead_letters_total", "consumer" => shared.consumer().to_owned())
        .increment(1);
    tracing::error!(consumer = shared.consumer(), event_id = %delivery.event.id, event_type = %delivery.event.event_type, attempts, %error, "event parked as a dead letter");
    delivery.settle.one_parked();
}
