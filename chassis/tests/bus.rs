//! The EventBus conformance suite: one set of cases, run against every bus — the
//! in-process bus and the NATS JetStream bus (on a `nats-server` the test starts itself).
//! Events go the way they do in Bazaar: committed with an outbox row, published by the
//! relay, handled by the consumer runtime, parked in the consumer's dead letters.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chassis::config::NatsSettings;
use chassis::db::Database;
use chassis::events::dead_letters::DeadLetters;
use chassis::events::outbox::{OutboxRelay, RelaySettings};
use chassis::events::{
    Applied, Envelope, EventBus, EventHandler, HandlerError, InProcessBus, Inbox, NatsBus,
    RetryPolicy, Subscription,
};
use chassis::secret::SecretUrl;
use chassis::testing::{NatsServer, TestDatabase};
use common::{EVENT, MIGRATIONS, Recorder, TestError, count_items, event, eventually, items};
use diesel::prelude::*;

const PARTITIONS: u16 = 8;

#[derive(Debug, Clone, Copy)]
enum Kind {
    InProcess,
    Nats,
}

/// A bus of one kind, and a database with an outbox and dead letters.
struct Harness {
    kind: Kind,
    db: Database,
    in_process: Arc<InProcessBus>,
    nats: Option<NatsServer>,
    _test_db: TestDatabase,
}

impl Harness {
    async fn new(kind: Kind) -> Option<Self> {
        let nats = match kind {
            Kind::InProcess => None,
            Kind::Nats => Some(NatsServer::start()?),
        };
        let test_db = TestDatabase::sqlite();
        let db = test_db.open(MIGRATIONS).await;
        Some(Self {
            kind,
            db,
            in_process: Arc::new(InProcessBus::new()),
            nats,
            _test_db: test_db,
        })
    }

    fn nats_settings(&self) -> Option<NatsSettings> {
        self.nats_settings_with(Duration::from_secs(30))
    }

    fn nats_settings_with(&self, ack_wait: Duration) -> Option<NatsSettings> {
        let server = self.nats.as_ref()?;
        Some(NatsSettings {
            url: SecretUrl::new(server.url()),
            stream: "CONFORMANCE".into(),
            partitions: PARTITIONS,
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(120),
            ack_wait,
            publish_timeout: Duration::from_secs(2),
            publish_attempts: 3,
        })
    }

    /// A bus as one process sees it: in-process, the one bus; on NATS, a connection of
    /// its own, as another process would have.
    async fn bus(&self) -> Arc<dyn EventBus> {
        match self.nats_settings() {
            None => self.in_process.clone(),
            Some(settings) => Arc::new(NatsBus::connect(settings).await.expect("connects")),
        }
    }

    async fn subscribe(&self, bus: &dyn EventBus, consumer: &str, handler: Arc<dyn EventHandler>) {
        self.subscribe_with(bus, consumer, handler, quick_retry())
            .await;
    }

    async fn subscribe_with(
        &self,
        bus: &dyn EventBus,
        consumer: &str,
        handler: Arc<dyn EventHandler>,
        retry: RetryPolicy,
    ) {
        bus.subscribe(Subscription {
            consumer: consumer.into(),
            event_types: vec![EVENT.into()],
            handler,
            dead_letters: Arc::new(DeadLetters::new(self.db.clone())),
            retry,
        })
        .await
        .expect("subscribes");
    }

    /// The outbox relay, publishing to a bus of its own (another process, on NATS).
    async fn relay(&self) -> tokio::task::JoinHandle<()> {
        let relay = RelaySettings {
            poll_interval: Duration::from_millis(100),
            ..RelaySettings::default()
        };
        OutboxRelay::new("test", self.db.clone(), self.bus().await, relay).spawn()
    }

    /// Commits one item and its event together.
    async fn commit(&self, event: Envelope) {
        self.db
            .write_with_events(move |conn, events| {
                diesel::insert_into(items::table)
                    .values((items::id.eq(event.id.to_string()), items::n.eq(1_i64)))
                    .execute(conn)?;
                events.push(event.clone());
                Ok::<_, TestError>(())
            })
            .await
            .expect("commits");
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn sorted(mut ids: Vec<uuid::Uuid>) -> Vec<uuid::Uuid> {
    ids.sort();
    ids
}

/// Every committed event reaches each of two consumers, once.
async fn every_event_reaches_each_consumer_once(kind: Kind) {
    let Some(harness) = Harness::new(kind).await else {
        return;
    };
    let bus = harness.bus().await;
    let (first, second) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    harness
        .subscribe(bus.as_ref(), "first", first.clone())
        .await;
    harness
        .subscribe(bus.as_ref(), "second", second.clone())
        .await;
    let relay = harness.relay().await;
    let mut sent = Vec::new();
    for n in 0..60 {
        let event = event(&format!("key-{}", n % 7), n);
        sent.push(event.id);
        harness.commit(event).await;
    }
    eventually("both consumers handled all 60", || {
        first.handled() == 60 && second.handled() == 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for recorder in [&first, &second] {
        assert_eq!(
            sorted(recorder.ids()),
            sorted(sent.clone()),
            "each event once"
        );
    }
    relay.abort();
}

/// A key's events are handled in the order they were committed.
async fn events_of_a_key_arrive_in_order(kind: Kind) {
    let Some(harness) = Harness::new(kind).await else {
        return;
    };
    let bus = harness.bus().await;
    let recorder = Arc::new(Recorder::default());
    harness
        .subscribe(bus.as_ref(), "ordered", recorder.clone())
        .await;
    let relay = harness.relay().await;
    let mut committed: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for n in 0..200 {
        let key = format!("key-{}", n % 10);
        let event = event(&key, n);
        committed.entry(key).or_default().push(event.id);
        harness.commit(event).await;
    }
    eventually("all 200 handled", || recorder.handled() == 200).await;
    let mut handled: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for event in recorder.seen.lock().expect("lock").iter() {
        handled.entry(event.key.clone()).or_default().push(event.id);
    }
    assert_eq!(handled, committed, "per key, the commit order");
    relay.abort();
}

/// Two instances of one consumer share the events; none is handled twice, and a key's
/// events are handled in order whichever instance takes each. In one process the
/// in-process bus has one instance per consumer name, and refuses a second.
async fn instances_of_one_consumer_share_the_events(kind: Kind) {
    let Some(harness) = Harness::new(kind).await else {
        return;
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let instance = || {
        Arc::new(Recorder {
            log: Some(log.clone()),
            ..Recorder::default()
        })
    };
    let (one, two) = (instance(), instance());
    let first_bus = harness.bus().await;
    harness
        .subscribe(first_bus.as_ref(), "shared", one.clone())
        .await;
    let second_bus = harness.bus().await;
    if let Kind::InProcess = harness.kind {
        let refused = second_bus
            .subscribe(Subscription {
                consumer: "shared".into(),
                event_types: vec![EVENT.into()],
                handler: two.clone(),
                dead_letters: Arc::new(DeadLetters::new(harness.db.clone())),
                retry: quick_retry(),
            })
            .await;
        assert!(refused.is_err(), "one instance per name in a process");
        return;
    }
    harness
        .subscribe(second_bus.as_ref(), "shared", two.clone())
        .await;
    let relay = harness.relay().await;
    let mut sent = Vec::new();
    let mut committed: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for n in 0..200 {
        let key = format!("key-{}", n % 40);
        let event = event(&key, n);
        sent.push(event.id);
        committed.entry(key).or_default().push(event.id);
        harness.commit(event).await;
    }
    eventually("the two instances handled 200 in all", || {
        one.handled() + two.handled() == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = one.ids();
    all.extend(two.ids());
    assert_eq!(
        sorted(all),
        sorted(sent),
        "every event once, over both instances"
    );
    let mut handled: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for event in log.lock().expect("lock").iter() {
        handled.entry(event.key.clone()).or_default().push(event.id);
    }
    assert_eq!(
        handled, committed,
        "per key, the commit order, across instances"
    );
    assert!(
        one.handled() > 0 && two.handled() > 0,
        "both instances worked: {} and {}",
        one.handled(),
        two.handled()
    );
    relay.abort();
}

/// An event that keeps failing is parked in the consumer's dead letters, and meanwhile the
/// other keys go on (on NATS: the keys of the other partitions; a partition's next event
/// waits for the one before it).
async fn a_poison_event_is_parked_and_other_keys_go_on(kind: Kind) {
    let Some(harness) = Harness::new(kind).await else {
        return;
    };
    let bus = harness.bus().await;
    let recorder = Arc::new(Recorder {
        poison: Some("bad".into()),
        ..Recorder::default()
    });
    let slow_retries = RetryPolicy {
        max_attempts: 3,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(1),
    };
    harness
        .subscribe_with(bus.as_ref(), "patient", recorder.clone(), slow_retries)
        .await;
    let relay = harness.relay().await;
    let poison = event("bad", 0);
    harness.commit(poison.clone()).await;
    let bad_partition = NatsBus::partition_of("bad", PARTITIONS);
    let mut elsewhere = HashSet::new();
    for n in 1..50 {
        let key = format!("good-{n}");
        let event = event(&key, n);
        if matches!(kind, Kind::InProcess)
            || NatsBus::partition_of(&key, PARTITIONS) != bad_partition
        {
            elsewhere.insert(event.id);
        }
        harness.commit(event).await;
    }
    let dead_letters = DeadLetters::new(harness.db.clone());
    eventually(
        "the other keys are handled while the poison event is retried",
        || {
            let handled: HashSet<uuid::Uuid> = recorder.ids().into_iter().collect();
            elsewhere.is_subset(&handled)
        },
    )
    .await;
    assert!(
        dead_letters.list(false).await.expect("lists").is_empty(),
        "not parked yet: the other keys did not wait for it"
    );
    for _ in 0..400 {
        if !dead_letters.list(false).await.expect("lists").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let parked = dead_letters.list(false).await.expect("lists");
    assert_eq!(parked.len(), 1, "the poison event is parked: {parked:?}");
    assert_eq!(parked[0].event.id, poison.id);
    eventually("every other event is handled", || recorder.handled() == 49).await;
    // `bazaar dead-letters replay`, once the handler is mended.
    let mended = Arc::new(Recorder::default());
    let handlers: Vec<(String, Arc<dyn EventHandler>)> = vec![("patient".into(), mended.clone())];
    let report = dead_letters.replay(&handlers, None).await.expect("replays");
    assert_eq!(report.replayed, 1, "{report:?}");
    assert_eq!(mended.ids(), vec![poison.id]);
    relay.abort();
}

/// A handler that fails twice, then succeeds, applies the event once.
async fn a_handler_that_fails_twice_applies_once(kind: Kind) {
    let Some(harness) = Harness::new(kind).await else {
        return;
    };
    let bus = harness.bus().await;
    let recorder = Arc::new(Recorder {
        fail_first: 2,
        ..Recorder::default()
    });
    harness
        .subscribe(bus.as_ref(), "flaky", recorder.clone())
        .await;
    let relay = harness.relay().await;
    let only = event("flaky-key", 1);
    harness.commit(only.clone()).await;
    eventually("handled", || recorder.handled() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.ids(), vec![only.id], "applied once");
    assert_eq!(recorder.attempts.lock().expect("lock")[&only.id], 3);
    let dead_letters = DeadLetters::new(harness.db.clone());
    assert!(dead_letters.list(true).await.expect("lists").is_empty());
    relay.abort();
}

/// Runs a case against every bus.
macro_rules! on_every_bus {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$case(super::Kind::InProcess).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$case(super::Kind::Nats).await;
            }
        }
    )*};
}

on_every_bus!(
    every_event_reaches_each_consumer_once,
    events_of_a_key_arrive_in_order,
    instances_of_one_consumer_share_the_events,
    a_poison_event_is_parked_and_other_keys_go_on,
    a_handler_that_fails_twice_applies_once,
);

/// Applies each event through the consumer's inbox (an `items` row per event) and counts
/// what it was given; while `hold` is set, it keeps the first event it applied, as if its
/// process froze between the commit and the ack.
struct Applier {
    inbox: Inbox,
    applied: Mutex<Vec<uuid::Uuid>>,
    duplicates: AtomicUsize,
    hold: Option<tokio::sync::Notify>,
}

impl Applier {
    fn new(db: &Database, consumer: &str) -> Self {
        Self {
            inbox: Inbox::new(db.clone(), consumer),
            applied: Mutex::new(Vec::new()),
            duplicates: AtomicUsize::new(0),
            hold: None,
        }
    }

    fn applied(&self) -> Vec<uuid::Uuid> {
        self.applied.lock().expect("lock").clone()
    }
}

#[async_trait]
impl EventHandler for Applier {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        let id = event.id.to_string();
        let applied = self
            .inbox
            .apply(event, move |conn, _events| {
                diesel::insert_into(items::table)
                    .values((items::id.eq(&id), items::n.eq(1_i64)))
                    .execute(conn)?;
                Ok::<_, TestError>(())
            })
            .await
            .map_err(HandlerError::new)?;
        match applied {
            Applied::Handled => self.applied.lock().expect("lock").push(event.id),
            Applied::Duplicate => {
                self.duplicates.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Some(hold) = &self.hold {
            hold.notified().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_during_and_after_a_broker_restart_are_all_applied_once() {
    let Some(mut harness) = Harness::new(Kind::Nats).await else {
        return;
    };
    let consumer_test_db = TestDatabase::sqlite();
    let consumer_db = consumer_test_db.open(MIGRATIONS).await;
    // What was in flight when the broker died comes again after ack_wait.
    let settings = harness
        .nats_settings_with(Duration::from_secs(3))
        .expect("nats");
    let bus = NatsBus::connect(settings).await.expect("connects");
    let applier = Arc::new(Applier::new(&consumer_db, "survivor"));
    harness.subscribe(&bus, "survivor", applier.clone()).await;
    let relay = harness.relay().await;
    let mut sent = Vec::new();
    for n in 0..40 {
        let event = event(&format!("key-{}", n % 9), n);
        sent.push(event.id);
        harness.commit(event).await;
    }
    eventually("the consumer is at work", || applier.applied().len() >= 10).await;
    harness.nats.as_mut().expect("nats").kill();
    for n in 40..80 {
        let event = event(&format!("key-{}", n % 9), n);
        sent.push(event.id);
        harness.commit(event).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    harness.nats.as_mut().expect("nats").restart();
    for n in 80..120 {
        let event = event(&format!("key-{}", n % 9), n);
        sent.push(event.id);
        harness.commit(event).await;
    }
    eventually("all 120 applied", || applier.applied().len() == 120).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sorted(applier.applied()), sorted(sent), "every event, once");
    assert_eq!(count_items(&consumer_db).await, 120, "one effect per event");
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_consumer_died_before_the_ack_is_redelivered_and_applied_once() {
    let Some(harness) = Harness::new(Kind::Nats).await else {
        return;
    };
    let consumer_test_db = TestDatabase::sqlite();
    let consumer_db = consumer_test_db.open(MIGRATIONS).await;
    let ack_wait = Duration::from_secs(3);
    let settings = harness.nats_settings_with(ack_wait).expect("nats");
    let frozen = Arc::new(Applier {
        hold: Some(tokio::sync::Notify::new()),
        ..Applier::new(&consumer_db, "mortal")
    });
    let first_instance = NatsBus::connect(settings.clone()).await.expect("connects");
    harness
        .subscribe(&first_instance, "mortal", frozen.clone())
        .await;
    let relay = harness.relay().await;
    let only = event("mortal-key", 1);
    harness.commit(only.clone()).await;
    eventually("applied by the first instance", || {
        frozen.applied() == vec![only.id]
    })
    .await;
    // The first instance dies before its ack; a second one takes over.
    drop(first_instance);
    let survivor = Arc::new(Applier::new(&consumer_db, "mortal"));
    let second_instance = NatsBus::connect(settings).await.expect("connects");
    harness
        .subscribe(&second_instance, "mortal", survivor.clone())
        .await;
    eventually("redelivered to the second instance", || {
        survivor.duplicates.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        survivor.applied().is_empty(),
        "the inbox saw it was applied"
    );
    assert_eq!(count_items(&consumer_db).await, 1, "one effect");
    relay.abort();
}
