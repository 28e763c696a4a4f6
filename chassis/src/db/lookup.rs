//! Reads by key that concurrent callers share: [`SharedLookup`].
//!
//! Why: on PostgreSQL every read is a round trip (and a hand-off to a blocking thread),
//! and a read every request makes — the products an order prices its lines with — cost
//! each order a round trip of its own, where every write of the order path goes with the
//! writer's batch (BENCHMARKS.md, "Orders on PostgreSQL"). A shared lookup has one read on
//! its way at a time: the keys asked for meanwhile wait for it to end, and then go
//! together in the next read, one statement for all of them. Nobody waits for company: a
//! lookup that finds none on its way reads at once, as a read alone would. Under load the
//! reads grow with the requests waiting, as the writer's batches do.
//!
//! What a caller sees is what a read of its own would have answered, made after it
//! asked: the read that answers it begins after its keys were handed over. On SQLite,
//! where a read is a call into the library on the caller's thread and no round trip, each
//! lookup reads alone.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::{Backend, Database, DbConnection, DbError, shared_failure};

/// Loads the rows of `keys` found, each with its key; a key with no row is left out.
pub type LoadByKeys<K, V> = fn(&mut DbConnection, &[K]) -> diesel::QueryResult<Vec<(K, V)>>;

/// Rows read by key, one read at a time for every caller (module docs). Cloning shares it.
pub struct SharedLookup<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for SharedLookup<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> std::fmt::Debug for SharedLookup<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLookup").finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    db: Database,
    load: LoadByKeys<K, V>,
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    /// The callers whose keys go in the next read.
    waiting: Vec<Waiter<K, V>>,
    /// Whether a read is on its way (and its task takes the waiting callers next).
    reading: bool,
}

struct Waiter<K, V> {
    keys: Vec<K>,
    reply: oneshot::Sender<Result<HashMap<K, V>, DbError>>,
}

impl<K, V> SharedLookup<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// A lookup of `db`'s rows through `load`, which must read only.
    pub fn new(db: Database, load: LoadByKeys<K, V>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                load,
                state: Mutex::new(State {
                    waiting: Vec::new(),
                    reading: false,
                }),
            }),
        }
    }

    /// The rows of `keys` found, by key; a key with no row is not in the answer.
    pub async fn get(&self, keys: &[K]) -> Result<HashMap<K, V>, DbError> {
        let keys = keys.to_vec();
        let inner = Arc::clone(&self.inner);
        if inner.db.backend() == Backend::Sqlite {
            let load = inner.load;
            return inner
                .db
                .read(move |conn| Ok::<_, DbError>(load(conn, &keys)?.into_iter().collect()))
                .await;
        }
        let (reply, answer) = oneshot::channel();
        let read_now = {
            let mut state = inner.state();
            state.waiting.push(Waiter { keys, reply });
            !std::mem::replace(&mut state.reading, true)
        };
        if read_now {
            tokio::spawn(inner.read_while_waited_for());
        }
        answer
            .await
            .map_err(|_| DbError::Task("a shared lookup stopped before answering".into()))?
    }
}

impl<K, V> Inner<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn state(&self) -> MutexGuard<'_, State<K, V>> {
        // Each change to the state is one call on it: consistent after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads for the callers waiting, and again for those who came meanwhile, until none
    /// waits.
    async fn read_while_waited_for(self: Arc<Self>) {
        // Should this task end otherwise than by finding nobody waiting (a panic), the
        // next caller starts a read again, for itself and whoever waits.
        let reading = Reading(&self);
        loop {
            let waiters = {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    // Under the lock a caller takes to join: none is left waiting unread.
                    state.reading = false;
                    std::mem::forget(reading);
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let keys: Vec<K> = waiters
                .iter()
                .flat_map(|waiter| waiter.keys.iter().cloned())
                .collect::<HashSet<K>>()
                .into_iter()
                .collect();
            let load = self.load;
            let read = self
                .db
                .read(move |conn| {
                    Ok::<_, DbError>(load(conn, &keys)?.into_iter().collect::<HashMap<K, V>>())
                })
                .await;
            for waiter in waiters {
                let answer = match &read {
                    Ok(rows) => Ok(waiter
                        .keys
                        .iter()
                        .filter_map(|key| Some((key.clone(), rows.get(key)?.clone())))
                        .collect()),
                    Err(error) => Err(shared_failure(error, "the shared read failed")),
                };
                let _caller_gone = waiter.reply.send(answer);
            }
        }
    }
}

/// Marks the shared lookup's read as over should its task end by a panic, so that the next
/// caller reads again, for itself and for those waiting.
struct Reading<'a, K, V>(&'a Inner<K, V>);

impl<K, V> Drop for Reading<'_, K, V> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reading = false;
    }
}
