//! What the chassis's integration tests share: a tiny module schema (`items`) on both
//! backends, an error type for write closures, a writer held so that the writes behind it
//! form one batch, and for the event tests an event maker and a recording handler.
#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chassis::db::{Database, DbConnection, DbError, Migrations};
use chassis::events::{Envelope, EventHandler, HandlerError};
use chassis::testing::TestDatabase;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

static SQLITE: EmbeddedMigrations = embed_migrations!("tests/migrations/sqlite");
static POSTGRES: EmbeddedMigrations = embed_migrations!("tests/migrations/postgres");
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

diesel::table! {
    items (id) {
        id -> Text,
        n -> BigInt,
    }
}

/// `n` (at least one) handles on `test_db`, each with its own pool, migrated with
/// [`MIGRATIONS`] (which find nothing left to do after the first); the `i`-th of concurrent
/// calls takes `instances[i % instances.len()]`.
pub async fn open_instances(test_db: &TestDatabase, n: usize) -> Vec<Database> {
    let mut instances = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        instances.push(test_db.open(MIGRATIONS).await);
    }
    instances
}

/// Stores an item: the effect the tests count.
pub fn insert_item(conn: &mut DbConnection, id: &str) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values((items::id.eq(id), items::n.eq(1_i64)))
        .execute(conn)
}

/// How many items are stored.
pub async fn count_items(db: &Database) -> i64 {
    try_count_items(db).await.expect("counts")
}

/// How many items are stored, or why the read failed.
pub async fn try_count_items(db: &Database) -> Result<i64, TestError> {
    db.read(|conn| {
        items::table
            .count()
            .get_result::<i64>(conn)
            .map_err(TestError::from)
    })
    .await
}

/// Holds `db`'s writer with a write of its own (inserting the item "holder") for 300 ms,
/// from before this returns: writes submitted meanwhile queue behind it and form the next
/// batch. The handle answers the holder's outcome.
pub async fn hold_the_writer(db: &Database) -> tokio::task::JoinHandle<Result<usize, TestError>> {
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|conn| {
                std::thread::sleep(Duration::from_millis(300));
                insert_item(conn, "holder").map_err(TestError::from)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    holder
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("refused on purpose")]
    Refused,
}

impl From<diesel::result::Error> for TestError {
    fn from(error: diesel::result::Error) -> Self {
        TestError::Db(DbError::from(error))
    }
}

/// The event type of the event tests.
pub const EVENT: &str = "test.happened";

/// The `n`-th event about `key`.
pub fn event(key: &str, n: usize) -> Envelope {
    Envelope::new("test", EVENT, key, &serde_json::json!({ "n": n })).expect("serializes")
}

/// Waits up to 15 s for `check`; fails the test naming `what` after that.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Records what it handles; fails the first `fail_first` attempts of every event, and every
/// attempt of the events whose key is `poison`. Instances that share a `log` record there
/// too, in the order they handled.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Envelope>>,
    pub attempts: Mutex<HashMap<uuid::Uuid, usize>>,
    pub fail_first: usize,
    pub poison: Option<String>,
    pub handled: AtomicUsize,
    pub log: Option<Arc<Mutex<Vec<Envelope>>>>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        let attempt = {
            let mut attempts = self.attempts.lock().expect("lock");
            let count = attempts.entry(event.id).or_default();
            *count += 1;
            *count
        };
        if self.poison.as_deref() == Some(event.key.as_str()) || attempt <= self.fail_first {
            return Err(HandlerError::new(format!("attempt {attempt} refused")));
        }
        self.seen.lock().expect("lock").push(event.clone());
        if let Some(log) = &self.log {
            log.lock().expect("lock").push(event.clone());
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Recorder {
    pub fn ids(&self) -> Vec<uuid::Uuid> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|event| event.id)
            .collect()
    }

    pub fn handled(&self) -> usize {
        self.handled.load(Ordering::SeqCst)
    }
}
