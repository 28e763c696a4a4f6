//! Event backbone benchmark: in-process bus throughput, and the outbox end to end
//! (commit → relay → bus → handler with inbox) on SQLite and PostgreSQL, with
//! commit-to-handled latency at a fixed offered rate.
//!
//!     cargo bench -p chassis --features testing,nats --bench events
//!
//! With the `nats` feature it also runs the outbox end to end through the NATS JetStream
//! bus, on a `nats-server` it starts itself (skipped, with a note, when there is none), with
//! `bus.partitions` at its default or `BAZAAR_BENCH_PARTITIONS`.
//!
//! PostgreSQL is `BAZAAR_TEST_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/test);
//! its part is skipped, with a note, when no server answers. Bounded: every part stops
//! after a fixed count of events or a fixed time. Figures go in BENCHMARKS.md.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chassis::db::{Backend, Database, DbError, Migrations};
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{
    Envelope, EventBus, EventHandler, HandlerError, InProcessBus, Inbox, OutboxRelay,
    RelaySettings, RetryPolicy, Subscription,
};
use chassis::testing::TestDatabase;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

static SQLITE: EmbeddedMigrations = embed_migrations!("tests/migrations/sqlite");
static POSTGRES: EmbeddedMigrations = embed_migrations!("tests/migrations/postgres");
const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

const EVENT: &str = "bench.happened";
const KEYS: usize = 256;

struct Counter {
    handled: AtomicUsize,
}

#[async_trait]
impl EventHandler for Counter {
    async fn handle(&self, _: &Envelope) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Records each event in an inbox (its own database) and how long after its commit
/// started it was handled.
struct InboxHandler {
    inbox: Inbox,
    base: Instant,
    handled: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

#[async_trait]
impl EventHandler for InboxHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.inbox
            .apply(event, |_, _| Ok::<_, DbError>(()))
            .await
            .map_err(HandlerError::new)?;
        let sent = event.payload["t"].as_u64().unwrap_or_default();
        let now = self.base.elapsed().as_micros() as u64;
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(now.saturating_sub(sent));
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn subscription(consumer: &str, handler: Arc<dyn EventHandler>, db: &Database) -> Subscription {
    Subscription {
        consumer: consumer.into(),
        event_types: vec![EVENT.into()],
        handler,
        dead_letters: Arc::new(DeadLetters::new(db.clone())),
        retry: RetryPolicy::default(),
    }
}

fn event(n: usize, t: u64) -> Envelope {
    Envelope::new(
        "bench",
        EVENT,
        format!("key-{}", n % KEYS),
        &serde_json::json!({ "n": n, "t": t }),
    )
    .unwrap_or_else(|error| panic!("cannot build an event: {error}"))
}

async fn wait_for(counter: &AtomicUsize, count: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

async fn bus_throughput() {
    const EVENTS: usize = 2_000_000;
    const BATCH: usize = 1_000;
    let scratch = TestDatabase::sqlite();
    let db = scratch.open(MIGRATIONS).await;
    let bus = InProcessBus::new();
    let counter = Arc::new(Counter {
        handled: AtomicUsize::new(0),
    });
    bus.subscribe(subscription("counter", counter.clone(), &db))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Vec<Vec<Envelope>> = (0..EVENTS / BATCH)
        .map(|b| (0..BATCH).map(|i| event(b * BATCH + i, 0)).collect())
        .collect();
    let started = Instant::now();
    for batch in batches {
        bus.publish(batch).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let elapsed = started.elapsed();
    assert_eq!(counter.handled.load(Ordering::Relaxed), EVENTS);
    report(
        "in-process bus: publish → handler",
        EVENTS,
        elapsed,
        1_000_000.0,
    );
}

/// How events go from the relay to the handler.
#[derive(Debug, Clone, Copy)]
enum Transport {
    InProcess,
    #[cfg(feature = "nats")]
    Nats,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::InProcess => "",
            #[cfg(feature = "nats")]
            Transport::Nats => " via NATS",
        }
    }
}

struct Pipeline {
    #[cfg(feature = "nats")]
    _nats: Option<chassis::testing::NatsServer>,
    _publisher_db: TestDatabase,
    _consumer_db: TestDatabase,
    /// The consumer's bus: dropping a NATS bus ends its pulls.
    _bus: Arc<dyn EventBus>,
    publisher: Database,
    handler: Arc<InboxHandler>,
    relay: tokio::task::JoinHandle<()>,
}

/// The buses of the consumer and of the relay: one in-process bus, or two NATS connections
/// to a `nats-server` of the bench's own, as two processes would have.
#[cfg(feature = "nats")]
type Buses = (
    Arc<dyn EventBus>,
    Arc<dyn EventBus>,
    Option<chassis::testing::NatsServer>,
);
#[cfg(not(feature = "nats"))]
type Buses = (Arc<dyn EventBus>, Arc<dyn EventBus>, Option<()>);

async fn buses(transport: Transport) -> Option<Buses> {
    match transport {
        Transport::InProcess => {
            let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new());
            Some((bus.clone(), bus, None))
        }
        #[cfg(feature = "nats")]
        Transport::Nats => {
            let server = chassis::testing::NatsServer::start()?;
            let settings = chassis::config::BusSettings {
                kind: chassis::config::BusKind::Nats,
                url: Some(chassis::secret::SecretUrl::new(server.url())),
                partitions: std::env::var("BAZAAR_BENCH_PARTITIONS")
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(chassis::config::BusSettings::default().partitions),
                ..chassis::config::BusSettings::default()
            }
            .nats()?;
            let connect = |settings| async move {
                let bus: Arc<dyn EventBus> = Arc::new(
                    chassis::events::NatsBus::connect(settings)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                bus
            };
            let consumer = connect(settings.clone()).await;
            let relay = connect(settings).await;
            Some((consumer, relay, Some(server)))
        }
    }
}

async fn pipeline(backend: Backend, transport: Transport) -> Option<Pipeline> {
    let publisher_db = TestDatabase::new(backend)?;
    let consumer_db = TestDatabase::new(backend)?;
    let publisher = publisher_db.open(MIGRATIONS).await;
    let consumer = consumer_db.open(MIGRATIONS).await;
    #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
    let (bus, relay_bus, nats) = buses(transport).await?;
    let handler = Arc::new(InboxHandler {
        inbox: Inbox::new(consumer.clone(), "bench"),
        base: Instant::now(),
        handled: AtomicUsize::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    bus.subscribe(subscription("bench", handler.clone(), &consumer))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let relay = OutboxRelay::new(
        "bench",
        publisher.clone(),
        relay_bus,
        RelaySettings::default(),
    )
    .spawn();
    Some(Pipeline {
        #[cfg(feature = "nats")]
        _nats: nats,
        _publisher_db: publisher_db,
        _consumer_db: consumer_db,
        _bus: bus,
        publisher,
        handler,
        relay,
    })
}

async fn commit(db: &Database, batch: Vec<Envelope>) {
    db.write_with_events(move |_, events| {
        for event in batch.iter().cloned() {
            events.push(event);
        }
        Ok::<_, DbError>(())
    })
    .await
    .unwrap_or_else(|e| panic!("commit failed: {e}"));
}

async fn outbox_throughput(backend: Backend, transport: Transport, per_transaction: usize) {
    const EVENTS: usize = 20_000;
    const PRODUCERS: usize = 4;
    let Some(pipeline) = pipeline(backend, transport).await else {
        return;
    };
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let db = pipeline.publisher.clone();
            let base = pipeline.handler.base;
            tokio::spawn(async move {
                let mine: Vec<usize> = (p..EVENTS).step_by(PRODUCERS).collect();
                for chunk in mine.chunks(per_transaction) {
                    let t = base.elapsed().as_micros() as u64;
                    commit(&db, chunk.iter().map(|n| event(*n, t)).collect()).await;
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let committed = started.elapsed();
    let done = wait_for(&pipeline.handler.handled, EVENTS, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    assert!(done, "not every event was handled in time");
    report(
        &format!(
            "outbox end to end on {}{}, {per_transaction}/tx",
            backend.as_str(),
            transport.label()
        ),
        EVENTS,
        elapsed,
        target_rate(transport),
    );
    println!(
        "    ({PRODUCERS} producers committed for {:.2} s of that: {:.0} transactions/s)",
        committed.as_secs_f64(),
        EVENTS.div_ceil(per_transaction) as f64 / committed.as_secs_f64()
    );
    pipeline.relay.abort();
}

/// The ceiling of the end-to-end figure: how fast one event per transaction commits with
/// no relay and no consumer running.
async fn commit_rate(backend: Backend) {
    const EVENTS: usize = 20_000;
    const PRODUCERS: usize = 4;
    let Some(scratch) = TestDatabase::new(backend) else {
        return;
    };
    let db = scratch.open(MIGRATIONS).await;
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in (p..EVENTS).step_by(PRODUCERS) {
                    commit(&db, vec![event(n, 0)]).await;
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let elapsed = started.elapsed();
    println!(
        "{:<44} {EVENTS:>8} commits in {:>6.2} s: {:>11.0} commits/s  (no relay running: the ceiling of 1/tx)",
        format!("commit of one event on {}", backend.as_str()),
        elapsed.as_secs_f64(),
        EVENTS as f64 / elapsed.as_secs_f64()
    );
}

async fn outbox_latency(backend: Backend, transport: Transport, rate: u64, seconds: u64) {
    let target_p99 = match transport {
        Transport::InProcess => 20.0,
        #[cfg(feature = "nats")]
        Transport::Nats => 50.0,
    };
    let Some(pipeline) = pipeline(backend, transport).await else {
        return;
    };
    let total = (rate * seconds) as usize;
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let base = pipeline.handler.base;
    let mut commits = Vec::with_capacity(total);
    for n in 0..total {
        ticks.tick().await;
        let db = pipeline.publisher.clone();
        // Each commit on its own task, as requests would: the offered rate does not wait
        // for the previous commit.
        commits.push(tokio::spawn(async move {
            commit(&db, vec![event(n, base.elapsed().as_micros() as u64)]).await
        }));
    }
    for commit in commits {
        commit.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let done = wait_for(&pipeline.handler.handled, total, Duration::from_secs(60)).await;
    assert!(done, "not every event was handled in time");
    let mut latencies = pipeline
        .handler
        .latencies_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{:<44} {:>6} events at {rate}/s: p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  (target p99 < {target_p99} ms: {})",
        format!(
            "outbox commit-to-handled on {}{}",
            backend.as_str(),
            transport.label()
        ),
        total,
        at(0.50),
        at(0.99),
        at(1.0),
        if at(0.99) < target_p99 {
            "met"
        } else {
            "MISSED"
        }
    );
    pipeline.relay.abort();
}

/// Events/s the outbox end to end must reach: 10,000 in process, 5,000 through NATS.
fn target_rate(transport: Transport) -> f64 {
    match transport {
        Transport::InProcess => 10_000.0,
        #[cfg(feature = "nats")]
        Transport::Nats => 5_000.0,
    }
}

fn report(what: &str, events: usize, elapsed: Duration, target: f64) {
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<44} {events:>8} events in {:>6.2} s: {rate:>11.0} events/s  ({:.2}× the target of {target:.0}/s)",
        elapsed.as_secs_f64(),
        rate / target
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("cannot start tokio: {error}"));
    // `cargo bench … -- commit` runs only the parts whose name contains "commit", etc.
    let only = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let wanted = |part: &str| only.as_deref().is_none_or(|only| part.contains(only));
    runtime.block_on(async {
        if wanted("bus") {
            bus_throughput().await;
        }
        for backend in [Backend::Sqlite, Backend::Postgres] {
            if !wanted(backend.as_str())
                && !wanted("commit")
                && !wanted("outbox")
                && !wanted("latency")
            {
                continue;
            }
            if wanted("commit") || wanted(backend.as_str()) {
                commit_rate(backend).await;
            }
            if wanted("outbox") || wanted(backend.as_str()) {
                outbox_throughput(backend, Transport::InProcess, 1).await;
                outbox_throughput(backend, Transport::InProcess, 10).await;
            }
            if wanted("latency") || wanted(backend.as_str()) {
                outbox_latency(backend, Transport::InProcess, 1_000, 5).await;
            }
        }
        // The NATS bus, side by side with the in-process figures above, on SQLite.
        #[cfg(feature = "nats")]
        if wanted("nats") {
            outbox_throughput(Backend::Sqlite, Transport::Nats, 1).await;
            outbox_throughput(Backend::Sqlite, Transport::Nats, 10).await;
            outbox_latency(Backend::Sqlite, Transport::Nats, 1_000, 5).await;
        }
    });
}
