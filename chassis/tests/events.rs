//! The event backbone on SQLite and PostgreSQL: transactional outbox, relay, in-process
//! bus, consumer runtime (order per key, retries, dead letters) and inbox.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chassis::db::{Backend, Database};
use chassis::events::dead_letters::DeadLetters;
use chassis::events::outbox::{self as relay_outbox, OutboxRelay, RelaySettings};
use chassis::events::{
    Applied, Envelope, EventBus, EventHandler, HandlerError, InProcessBus, Inbox, RetryPolicy,
    Subscription,
};
use chassis::testing::{TestDatabase, racing_instances};
use common::{
    EVENT, MIGRATIONS, Recorder, TestError, count_items, event, eventually, hold_the_writer,
    insert_item, items, open_instances,
};
use diesel::prelude::*;

diesel::table! {
    outbox (seq) {
        seq -> BigInt,
        event_id -> Text,
        event_key -> Text,
        published_at -> Nullable<Timestamp>,
    }
}

/// Commits one item and its event together.
async fn commit_event(db: &Database, event: Envelope) {
    db.write_with_events(move |conn, events| {
        diesel::insert_into(items::table)
            .values((items::id.eq(event.id.to_string()), items::n.eq(1_i64)))
            .execute(conn)?;
        events.push(event.clone());
        Ok::<_, TestError>(())
    })
    .await
    .expect("commits");
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn quick_relay() -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_millis(100),
        ..RelaySettings::default()
    }
}

async fn subscribe(
    bus: &InProcessBus,
    db: &Database,
    consumer: &str,
    handler: Arc<dyn EventHandler>,
) {
    bus.subscribe(Subscription {
        consumer: consumer.into(),
        event_types: vec![EVENT.into()],
        handler,
        dead_letters: Arc::new(DeadLetters::new(db.clone())),
        retry: quick_retry(),
    })
    .await
    .expect("subscribes");
}

async fn pending(db: &Database) -> i64 {
    relay_outbox::stats(db).await.expect("stats").pending
}

async fn exactly_once_to_each_subscriber(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let bus = Arc::new(InProcessBus::new());
    let (first, second) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    subscribe(&bus, &db, "first", first.clone()).await;
    subscribe(&bus, &db, "second", second.clone()).await;
    let relay = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    let mut sent = Vec::new();
    for n in 0..60 {
        let event = event(&format!("key-{}", n % 7), n);
        sent.push(event.id);
        commit_event(&db, event).await;
    }
    eventually("both subscribers saw all 60", || {
        first.handled.load(Ordering::SeqCst) == 60 && second.handled.load(Ordering::SeqCst) == 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for recorder in [&first, &second] {
        let mut ids = recorder.ids();
        ids.sort();
        let mut expected = sent.clone();
        expected.sort();
        assert_eq!(ids, expected, "each event exactly once");
    }
    assert_eq!(pending(&db).await, 0, "every row marked sent");
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_each_subscriber_exactly_once_on_sqlite() {
    exactly_once_to_each_subscriber(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_each_subscriber_exactly_once_on_postgres() {
    exactly_once_to_each_subscriber(Backend::Postgres).await;
}

async fn nothing_lost_across_a_crash(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    // The process dies after committing, before any relay ran …
    let committed: Vec<Envelope> = (0..10).map(|n| event("k", n)).collect();
    for event in committed.clone() {
        commit_event(&db, event).await;
    }
    // … and another after claiming a batch, before publishing it.
    let bus: Arc<InProcessBus> = Arc::new(InProcessBus::new());
    let crashed = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay());
    assert_eq!(crashed.claim().await.expect("claims").len(), 10);
    drop(crashed);

    // After restart: a new bus, a new relay.
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    subscribe(&bus, &db, "after-restart", recorder.clone()).await;
    let relay = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    eventually("the events committed before the crash arrive", || {
        recorder.handled.load(Ordering::SeqCst) == 10
    })
    .await;
    assert_eq!(
        recorder.ids(),
        committed.iter().map(|e| e.id).collect::<Vec<_>>(),
        "all, in order"
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_loses_nothing_on_sqlite() {
    nothing_lost_across_a_crash(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_loses_nothing_on_postgres() {
    // On PostgreSQL the crashed relay's lease (1 s here) must run out first.
    nothing_lost_across_a_crash(Backend::Postgres).await;
}

async fn redelivery_applies_once(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let inbox = Inbox::new(db.clone(), "counter");
    let event = event("k", 1);
    for expected in [Applied::Handled, Applied::Duplicate, Applied::Duplicate] {
        let applied = inbox
            .apply(&event, |conn, _| {
                insert_item(conn, &uuid::Uuid::new_v4().to_string())?;
                Ok::<_, TestError>(())
            })
            .await
            .expect("applies");
        assert_eq!(applied, expected);
    }
    let effects = count_items(&db).await;
    assert_eq!(effects, 1, "one effect for three deliveries");

    // A failing effect records nothing: the event is still to be handled.
    let other = crate::event("k", 2);
    let failed = inbox
        .apply(&other, |_, _| Err::<(), _>(TestError::Refused))
        .await;
    assert!(matches!(failed, Err(TestError::Refused)));
    let applied = inbox
        .apply(&other, |_, _| Ok::<_, TestError>(()))
        .await
        .expect("applies");
    assert_eq!(applied, Applied::Handled);
}

#[tokio::test]
async fn the_same_event_delivered_twice_applies_its_effect_once_on_sqlite() {
    redelivery_applies_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_applies_its_effect_once_on_postgres() {
    redelivery_applies_once(Backend::Postgres).await;
}

/// Deliveries of one event that arrive together (a redelivery racing the first attempt)
/// meet at the inbox's one conditional insert: one applies the effect, the others find it
/// recorded and do nothing; none fails. On PostgreSQL the deliveries spread round-robin
/// over 4 handles on the one database, as 4 replicas of the consumer would get them.
async fn concurrent_deliveries_apply_once(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let instances = open_instances(&test_db, racing_instances(backend)).await;
    let db = instances[0].clone();
    let inboxes: Vec<Inbox> = instances
        .iter()
        .map(|db| Inbox::new(db.clone(), "counter"))
        .collect();
    let event = event("k", 1);
    let deliveries: Vec<_> = (0..8)
        .map(|i| {
            let (inbox, event) = (inboxes[i % inboxes.len()].clone(), event.clone());
            tokio::spawn(async move {
                inbox
                    .apply(&event, |conn, _| {
                        insert_item(conn, &uuid::Uuid::new_v4().to_string())?;
                        Ok::<_, TestError>(())
                    })
                    .await
            })
        })
        .collect();
    let mut applied = Vec::new();
    for delivery in deliveries {
        applied.push(delivery.await.expect("joins").expect("no delivery fails"));
    }
    let handled = applied.iter().filter(|a| **a == Applied::Handled).count();
    assert_eq!(handled, 1, "{applied:?}");
    let effects = count_items(&db).await;
    assert_eq!(effects, 1, "one effect for eight concurrent deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_event_apply_its_effect_once_on_sqlite() {
    concurrent_deliveries_apply_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_event_apply_its_effect_once_on_postgres() {
    concurrent_deliveries_apply_once(Backend::Postgres).await;
}

/// The inbox records of events applied together go in with their batch: on PostgreSQL
/// in one statement for the batch, not one each (SQLite inserts each through the one-row
/// statement it keeps prepared: it has no round trips to save). Six events are applied
/// while the writer is held by another write, so that they form one batch.
async fn records_of_events_applied_together_go_in_together(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let inbox = Inbox::new(db.clone(), "counter");
    let holder = hold_the_writer(&db).await;
    let before = db.work_counts();
    let events: Vec<Envelope> = (0..6).map(|n| event("k", n)).collect();
    let applied = futures::future::join_all(events.iter().map(|event| {
        inbox.apply(event, |conn, _| {
            insert_item(conn, &uuid::Uuid::new_v4().to_string())?;
            Ok::<_, TestError>(())
        })
    }))
    .await;
    holder.await.expect("joins").expect("the holder commits");
    assert!(
        applied.iter().all(|a| matches!(a, Ok(Applied::Handled))),
        "{applied:?}"
    );
    let after = db.work_counts();
    assert_eq!(after.transactions - before.transactions, 1, "one batch");
    // The holder's insert and commit (its `BEGIN` was counted before); then the six
    // effects' inserts, the records, and the batch's `BEGIN` — on PostgreSQL sent with the
    // holder's commit — and `COMMIT`.
    let (records, begin) = match backend {
        Backend::Postgres => (1, 0),
        Backend::Sqlite => (6, 1),
    };
    assert_eq!(
        after.statements - before.statements,
        2 + 6 + records + begin + 1
    );
    assert_eq!(
        count_items(&db).await,
        7,
        "the holder's item and six effects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_events_applied_together_go_in_together_on_sqlite() {
    records_of_events_applied_together_go_in_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_events_applied_together_go_in_together_on_postgres() {
    records_of_events_applied_together_go_in_together(Backend::Postgres).await;
}

async fn retries_then_dead_letters(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let bus = Arc::new(InProcessBus::new());
    let flaky = Arc::new(Recorder {
        fail_first: 2,
        ..Recorder::default()
    });
    let doomed = Arc::new(Recorder {
        poison: Some("bad".into()),
        ..Recorder::default()
    });
    subscribe(&bus, &db, "flaky", flaky.clone()).await;
    subscribe(&bus, &db, "doomed", doomed.clone()).await;
    let relay = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    let poisoned = event("bad", 0);
    commit_event(&db, poisoned.clone()).await;
    commit_event(&db, event("good", 1)).await;

    eventually("the flaky consumer applied both after retries", || {
        flaky.handled.load(Ordering::SeqCst) == 2
    })
    .await;
    let attempts = flaky.attempts.lock().expect("lock").clone();
    assert!(
        attempts.values().all(|count| *count == 3),
        "failed twice, then succeeded: {attempts:?}"
    );

    let letters = DeadLetters::new(db.clone());
    let mut parked = Vec::new();
    for _ in 0..200 {
        parked = letters.list(false).await.expect("lists");
        if !parked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        parked.len(),
        1,
        "only the poison event, only for its consumer"
    );
    assert_eq!(parked[0].consumer, "doomed");
    assert_eq!(parked[0].event, poisoned);
    assert_eq!(parked[0].attempts, 4);
    assert!(parked[0].error.contains("refused"));
    assert!(
        !doomed.ids().contains(&poisoned.id),
        "nothing applied for the poison key"
    );
    assert_eq!(
        doomed.handled.load(Ordering::SeqCst),
        1,
        "the good key went through for the doomed consumer"
    );

    // The operator fixes the cause, then replays.
    let fixed: Arc<dyn EventHandler> = Arc::new(Recorder::default());
    let report = letters
        .replay(&[("doomed".to_owned(), fixed.clone())], None)
        .await
        .expect("replays");
    assert_eq!(
        (report.replayed, report.failed_again, report.skipped),
        (1, 0, 0)
    );
    assert!(
        letters.list(false).await.expect("lists").is_empty(),
        "nothing left to replay"
    );
    assert_eq!(
        letters.list(true).await.expect("lists").len(),
        1,
        "kept, marked replayed"
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_and_poison_events_are_parked_and_replayed_on_sqlite() {
    retries_then_dead_letters(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_and_poison_events_are_parked_and_replayed_on_postgres() {
    retries_then_dead_letters(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_does_not_hold_up_other_keys() {
    let test_db = TestDatabase::sqlite();
    let db = test_db.open(MIGRATIONS).await;
    let bus = InProcessBus::new();
    let recorder = Arc::new(Recorder {
        poison: Some("bad".into()),
        ..Recorder::default()
    });
    bus.subscribe(Subscription {
        consumer: "patient".into(),
        event_types: vec![EVENT.into()],
        handler: recorder.clone(),
        dead_letters: Arc::new(DeadLetters::new(db.clone())),
        // Retries that last far longer than this test waits for the other keys.
        retry: RetryPolicy {
            max_attempts: 3,
            first_delay: Duration::from_secs(3),
            max_delay: Duration::from_secs(3),
        },
    })
    .await
    .expect("subscribes");
    let bus = Arc::new(bus);
    let publishing = {
        let bus = bus.clone();
        let mut events = vec![event("bad", 0)];
        events.extend((1..50).map(|n| event(&format!("good-{n}"), n)));
        tokio::spawn(async move { bus.publish(events).await })
    };
    eventually(
        "the 49 other keys are handled while the poison one is retried",
        || recorder.handled.load(Ordering::SeqCst) == 49,
    )
    .await;
    assert!(
        !publishing.is_finished(),
        "the batch settles only once the poison event is parked"
    );
    publishing.abort();
}

/// Takes its time over each event, and notes how many it held at once, in all and per key.
#[derive(Default)]
struct Unhurried {
    in_flight: std::sync::Mutex<Vec<String>>,
    most_at_once: std::sync::atomic::AtomicUsize,
    key_twice_at_once: std::sync::atomic::AtomicBool,
    seen: std::sync::Mutex<Vec<Envelope>>,
}

#[async_trait]
impl EventHandler for Unhurried {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        {
            let mut in_flight = self.in_flight.lock().expect("lock");
            if in_flight.contains(&event.key) {
                self.key_twice_at_once.store(true, Ordering::SeqCst);
            }
            in_flight.push(event.key.clone());
            self.most_at_once
                .fetch_max(in_flight.len(), Ordering::SeqCst);
        }
        // Long enough that every key's first event has begun before the first one ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.seen.lock().expect("lock").push(event.clone());
        let mut in_flight = self.in_flight.lock().expect("lock");
        if let Some(at) = in_flight.iter().position(|key| *key == event.key) {
            in_flight.remove(at);
        }
        Ok(())
    }
}

/// A handler that waits (for its database's commit, say) holds up its own key only: the
/// keys of one batch are handled at once, more of them than the consumer has lanes (four),
/// and each key's events one after the other, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_keys_are_handled_at_once_and_each_keys_events_in_order() {
    let test_db = TestDatabase::sqlite();
    let db = test_db.open(MIGRATIONS).await;
    let bus = InProcessBus::new();
    let handler = Arc::new(Unhurried::default());
    bus.subscribe(Subscription {
        consumer: "unhurried".into(),
        event_types: vec![EVENT.into()],
        handler: handler.clone(),
        dead_letters: Arc::new(DeadLetters::new(db.clone())),
        retry: quick_retry(),
    })
    .await
    .expect("subscribes");
    let keys = 16;
    let events: Vec<Envelope> = (0..4 * keys)
        .map(|n| event(&format!("key-{}", n % keys), n))
        .collect();
    let mut published: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for event in &events {
        published
            .entry(event.key.clone())
            .or_default()
            .push(event.id);
    }
    tokio::time::timeout(Duration::from_secs(10), bus.publish(events))
        .await
        .expect("the batch settles")
        .expect("publishes");
    let mut handled: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for event in handler.seen.lock().expect("lock").iter() {
        handled.entry(event.key.clone()).or_default().push(event.id);
    }
    assert_eq!(handled, published, "every event once, each key's in order");
    assert!(
        !handler.key_twice_at_once.load(Ordering::SeqCst),
        "a key's events one after the other"
    );
    let most = handler.most_at_once.load(Ordering::SeqCst);
    assert!(
        most > 4,
        "more events at once than the consumer has lanes: {most} of the {keys} keys"
    );
}

/// Panics on one event for its first `panics` attempts (`usize::MAX`: always), and records
/// the events it handles.
struct Panicky {
    target: uuid::Uuid,
    panics: usize,
    recorder: Recorder,
}

impl Panicky {
    fn new(target: uuid::Uuid, panics: usize) -> Self {
        Self {
            target,
            panics,
            recorder: Recorder::default(),
        }
    }

    fn attempts_at(&self, id: uuid::Uuid) -> usize {
        self.recorder
            .attempts
            .lock()
            .expect("lock")
            .get(&id)
            .copied()
            .unwrap_or_default()
    }
}

#[async_trait]
impl EventHandler for Panicky {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        if event.id == self.target && self.attempts_at(event.id) < self.panics {
            self.recorder
                .attempts
                .lock()
                .expect("lock")
                .entry(event.id)
                .and_modify(|count| *count += 1)
                .or_insert(1);
            panic!("handler bug on purpose");
        }
        self.recorder.handle(event).await
    }
}

/// Waits until the relay has marked every outbox row published.
async fn all_published(db: &Database) {
    for _ in 0..400 {
        if pending(db).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until every outbox row is published");
}

async fn panicking_handlers(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let bus = Arc::new(InProcessBus::new());
    let poison = event("boom", 0);
    let doomed = Arc::new(Panicky::new(poison.id, usize::MAX));
    let recovers = Arc::new(Panicky::new(poison.id, 2));
    subscribe(&bus, &db, "doomed", doomed.clone()).await;
    subscribe(&bus, &db, "recovers", recovers.clone()).await;
    let relay = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    let mut events = vec![poison.clone()];
    events.extend((1..20).map(|n| event(&format!("key-{}", n % 8), n)));
    events.push(event("boom", 20));
    for event in events.clone() {
        commit_event(&db, event).await;
    }

    eventually("every event but the poison one handled by both", || {
        doomed.recorder.handled.load(Ordering::SeqCst) == events.len() - 1
            && recovers.recorder.handled.load(Ordering::SeqCst) == events.len()
    })
    .await;
    all_published(&db).await;
    assert_eq!(
        recovers.attempts_at(poison.id),
        3,
        "two panics counted as failed attempts, then handled"
    );
    let boom_order = |recorder: &Recorder| {
        recorder
            .ids()
            .into_iter()
            .filter(|id| events.iter().any(|e| e.id == *id && e.key == "boom"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        boom_order(&recovers.recorder),
        vec![poison.id, events[events.len() - 1].id],
        "the later event of the panicking key waited for it"
    );
    assert_eq!(
        doomed.attempts_at(poison.id),
        4,
        "a panic on every attempt spends every attempt"
    );
    let letters = DeadLetters::new(db.clone());
    let parked = letters.list(false).await.expect("lists");
    assert_eq!(parked.len(), 1, "only the poison event, for its consumer");
    assert_eq!(parked[0].consumer, "doomed");
    assert_eq!(parked[0].event, poison);
    assert_eq!(parked[0].attempts, 4);
    assert!(
        parked[0].error.contains("panicked") && parked[0].error.contains("handler bug on purpose"),
        "{}",
        parked[0].error
    );

    // The lanes and the relay still work: later events of every key, the panicking one too.
    let later: Vec<Envelope> = (21..40)
        .map(|n| event(&format!("key-{}", n % 8), n))
        .chain([event("boom", 40)])
        .collect();
    for event in later.clone() {
        commit_event(&db, event).await;
    }
    let total = events.len() + later.len();
    eventually("later events handled by both", || {
        doomed.recorder.handled.load(Ordering::SeqCst) == total - 1
            && recovers.recorder.handled.load(Ordering::SeqCst) == total
    })
    .await;
    all_published(&db).await;

    // A replay that panics again counts as failing again; the letter stays open.
    let report = letters
        .replay(
            &[("doomed".to_owned(), doomed.clone() as Arc<dyn EventHandler>)],
            None,
        )
        .await
        .expect("replays");
    assert_eq!(
        (report.replayed, report.failed_again, report.skipped),
        (0, 1, 0)
    );
    let parked = letters.list(false).await.expect("lists");
    assert_eq!(parked.len(), 1, "still open");
    assert_eq!(parked[0].attempts, 5);
    assert!(parked[0].error.contains("panicked"), "{}", parked[0].error);
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_parked_without_stalling_on_sqlite() {
    panicking_handlers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_parked_without_stalling_on_postgres() {
    panicking_handlers(Backend::Postgres).await;
}

async fn rollback_publishes_nothing(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    subscribe(&bus, &db, "watcher", recorder.clone()).await;
    let relay = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    let refused = db
        .write_with_events(|conn, events| {
            diesel::insert_into(items::table)
                .values((items::id.eq("rolled-back"), items::n.eq(1_i64)))
                .execute(conn)?;
            events.push(event("k", 0));
            Err::<(), _>(TestError::Refused)
        })
        .await;
    assert!(matches!(refused, Err(TestError::Refused)));
    assert_eq!(pending(&db).await, 0, "no outbox row");
    let marker = event("k", 1);
    commit_event(&db, marker.clone()).await;
    eventually("a later event arrives", || {
        recorder.handled.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.ids(), vec![marker.id], "only the committed event");
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing_on_sqlite() {
    rollback_publishes_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing_on_postgres() {
    rollback_publishes_nothing(Backend::Postgres).await;
}

/// Event ids per key in commit order, from the outbox itself.
async fn committed_order(db: &Database) -> HashMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = db
        .read(|conn| {
            outbox::table
                .order(outbox::seq.asc())
                .select((outbox::event_key, outbox::event_id))
                .load(conn)
                .map_err(TestError::from)
        })
        .await
        .expect("reads");
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for (key, id) in rows {
        order.entry(key).or_default().push(id);
    }
    order
}

fn delivered_order(recorder: &Recorder) -> HashMap<String, Vec<String>> {
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for event in recorder.seen.lock().expect("lock").iter() {
        order
            .entry(event.key.clone())
            .or_default()
            .push(event.id.to_string());
    }
    order
}

/// `relays` relays publish what 4 publishers commit at once. On PostgreSQL the publishers,
/// and the relays, spread round-robin over 4 handles on the one database, as separate
/// processes would have; on SQLite they all use one.
async fn per_key_order(backend: Backend, relays: usize) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let instances = open_instances(&test_db, racing_instances(backend)).await;
    let db = instances[0].clone();
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    subscribe(&bus, &db, "ordered", recorder.clone()).await;
    let small_batches = RelaySettings {
        batch_size: 7,
        ..quick_relay()
    };
    let running: Vec<_> = (0..relays)
        .map(|relay| {
            let db = instances[relay % instances.len()].clone();
            OutboxRelay::new("test", db, bus.clone(), small_batches).spawn()
        })
        .collect();
    let publishers: Vec<_> = (0..4)
        .map(|publisher| {
            let db = instances[publisher % instances.len()].clone();
            tokio::spawn(async move {
                // Per key, the ids this publisher committed, one commit after the other.
                let mut committed: HashMap<String, Vec<String>> = HashMap::new();
                for n in 0..40 {
                    let key = format!("key-{}", (publisher + n) % 5);
                    let event = event(&key, n);
                    committed.entry(key).or_default().push(event.id.to_string());
                    commit_event(&db, event).await;
                }
                committed
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for publisher in publishers {
        sequences.push(publisher.await.expect("published"));
    }
    eventually("all 160 events delivered", || {
        recorder.handled.load(Ordering::SeqCst) >= 160
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorder.handled.load(Ordering::SeqCst),
        160,
        "each row published once between the relays"
    );
    // Order per key is the order of commits that followed one another. Two publishers'
    // commits of one key may overlap; on PostgreSQL the later `seq` can then commit first,
    // and either order is right, so each publisher's own sequence is what must hold.
    let delivered = delivered_order(&recorder);
    let committed = committed_order(&db).await;
    for (key, ids) in &committed {
        let mut sent = delivered.get(key).cloned().unwrap_or_default();
        sent.sort();
        let mut rows = ids.clone();
        rows.sort();
        assert_eq!(sent, rows, "{key}: every committed row delivered once");
    }
    for sequence in &sequences {
        for (key, ids) in sequence {
            let sent: Vec<&String> = delivered
                .get(key)
                .map(|sent| sent.iter().filter(|id| ids.contains(id)).collect())
                .unwrap_or_default();
            let expected: Vec<&String> = ids.iter().collect();
            assert_eq!(sent, expected, "{key}: order per key is commit order");
        }
    }
    for relay in running {
        relay.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_under_concurrent_publishers_on_sqlite() {
    per_key_order(Backend::Sqlite, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_under_concurrent_publishers_on_postgres() {
    per_key_order(Backend::Postgres, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_postgres_publish_every_row_once_in_order() {
    per_key_order(Backend::Postgres, 2).await;
}

/// One relay publishes a PostgreSQL outbox at a time: the one whose writer's session
/// holds the outbox's advisory lock. Another instance's relay publishes nothing while it is
/// held — not even rows the holder claimed and never published — and takes the outbox
/// over, rows in flight included, in order, as soon as the holder's session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_takes_the_outbox_over_as_soon_as_the_holders_session_ends() {
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let holder_db = test_db.open(MIGRATIONS).await;
    let db = test_db.open(MIGRATIONS).await;
    let events: Vec<Envelope> = (0..5).map(|n| event("k", n)).collect();
    for event in events.clone() {
        commit_event(&db, event).await;
    }
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    subscribe(&bus, &db, "survivor", recorder.clone()).await;
    // The holder claims every row, and would publish them; it stops before it does.
    let holder = OutboxRelay::new("test", holder_db.clone(), bus.clone(), quick_relay());
    assert_eq!(holder.claim().await.expect("claims").len(), 5);
    let live = OutboxRelay::new("test", db.clone(), bus.clone(), quick_relay()).spawn();
    // Several of the live relay's polls (every 100 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        recorder.handled.load(Ordering::SeqCst),
        0,
        "the holder's session keeps the outbox"
    );
    assert_eq!(pending(&db).await, 5);
    // The holder's process ends: its connections close with its last handle.
    drop(holder);
    drop(holder_db);
    eventually("the live relay took the outbox over", || {
        recorder.handled.load(Ordering::SeqCst) == 5
    })
    .await;
    assert_eq!(
        recorder.ids(),
        events.iter().map(|event| event.id).collect::<Vec<_>>(),
        "every row, in order"
    );
    all_published(&db).await;
    live.abort();
}

/// Rows of two ages: `old` of each table from 2020, each a second older than the next (so
/// that the purge's chunks, which end at a row's age, hold a thousand each), and ten from
/// 2999.
async fn seed_outbox_and_inbox(db: &Database, old: usize) {
    let rows = |prefix: &str, count: usize, year: u32| -> Vec<(String, String)> {
        (0..count)
            .map(|i| {
                let at = format!(
                    "{year}-01-01 {:02}:{:02}:{:02}",
                    i / 3600,
                    (i / 60) % 60,
                    i % 60
                );
                (format!("{prefix}-{i}"), at)
            })
            .collect()
    };
    let all: Vec<(String, String)> = rows("old", old, 2020)
        .into_iter()
        .chain(rows("new", 10, 2999))
        .collect();
    let outbox_values: Vec<String> = all
        .iter()
        .map(|(id, at)| format!("('{id}', 'test.seeded', 'k', '{at}', '{{}}', '{at}')"))
        .collect();
    let inbox_values: Vec<String> = all
        .iter()
        .map(|(id, at)| format!("('c', '{id}', '{at}')"))
        .collect();
    let seed = format!(
        "INSERT INTO outbox (event_id, event_type, event_key, occurred_at, envelope, published_at) \
         VALUES {}; INSERT INTO inbox (consumer, event_id, handled_at) VALUES {};",
        outbox_values.join(", "),
        inbox_values.join(", ")
    );
    db.write(move |conn| {
        use diesel::connection::SimpleConnection as _;
        conn.batch_execute(&seed).map_err(TestError::from)
    })
    .await
    .expect("seeds");
}

/// (outbox rows, inbox rows) from before 2021, and from after.
async fn rows_by_age(db: &Database) -> ((i64, i64), (i64, i64)) {
    #[derive(diesel::QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        outbox_old: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        outbox_new: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        inbox_old: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        inbox_new: i64,
    }
    let counts = db
        .read(|conn| {
            diesel::sql_query(
                "SELECT \
                 (SELECT COUNT(*) FROM outbox WHERE event_id LIKE 'old-%') AS outbox_old, \
                 (SELECT COUNT(*) FROM outbox WHERE event_id LIKE 'new-%') AS outbox_new, \
                 (SELECT COUNT(*) FROM inbox WHERE event_id LIKE 'old-%') AS inbox_old, \
                 (SELECT COUNT(*) FROM inbox WHERE event_id LIKE 'new-%') AS inbox_new",
            )
            .get_result::<Counts>(conn)
            .map_err(TestError::from)
        })
        .await
        .expect("counts");
    (
        (counts.outbox_old, counts.inbox_old),
        (counts.outbox_new, counts.inbox_new),
    )
}

/// A relay deletes the sent rows and the handled ids older than the retention — a
/// backlog of several of the purge's chunks (a write each, so that other writes go in
/// between) — and keeps everything younger.
async fn a_relay_purges_what_the_retention_no_longer_keeps(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    seed_outbox_and_inbox(&db, 2_500).await;
    assert_eq!(rows_by_age(&db).await, ((2_500, 2_500), (10, 10)));
    let bus = Arc::new(InProcessBus::new());
    let relay = OutboxRelay::new("test", db.clone(), bus, quick_relay()).spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while rows_by_age(&db).await.0 != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the old rows stay: {:?}",
            rows_by_age(&db).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rows_by_age(&db).await,
        ((0, 0), (10, 10)),
        "the young rows stay"
    );
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_purges_what_the_retention_no_longer_keeps_on_sqlite() {
    a_relay_purges_what_the_retention_no_longer_keeps(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_purges_what_the_retention_no_longer_keeps_on_postgres() {
    a_relay_purges_what_the_retention_no_longer_keeps(Backend::Postgres).await;
}
