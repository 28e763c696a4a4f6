//! A database's one writer, with group commit: the same on SQLite and PostgreSQL.
//!
//! Every write of a [`Database`](super::Database) goes to one thread that owns one
//! connection. It takes all the writes waiting at that moment, runs them one after the other
//! in one transaction, commits once, and only then answers each caller. Callers see the
//! semantics of one transaction each, run one after the other, answered after commit.
//!
//! Why one writer: SQLite lets one connection write at a time, and there the price of a
//! small write transaction is mostly the thread hand-offs and the commit around it. On
//! PostgreSQL every statement is a network round trip, and a transaction of its own per
//! write cost two more (`BEGIN`, `COMMIT`) and a WAL flush each: most of an order's cost
//! (BENCHMARKS.md, "Orders on PostgreSQL"). Several *instances* of a module on one
//! PostgreSQL database still write concurrently, each with its writer; conditional writes
//! and unique keys keep them correct, as before.
//!
//! **No savepoints.** A savepoint per write would isolate a failed write for free on SQLite
//! but costs, on PostgreSQL, the very round trips `BEGIN` and `COMMIT` did. Instead, a write
//! that fails (answers `Err`, or panics) rolls the whole batch back: the writes before it
//! run again, in a transaction of their own, and the failed write then runs first in a
//! fresh transaction — alone, as far as its outcome goes — and that run's answer is its
//! answer. So a write may run more than once, and each run must act only through its
//! connection: whatever it did is rolled back with the batch. Failures are rare on the hot
//! path (a duplicate key, an order out of stock), and cost one batch's re-run.
//!
//! **Rows left to the batch.** A write may leave rows nothing in the batch reads to be
//! inserted, and changes whose outcome it need not see to be applied, just before the
//! commit, each kind together with the other writes' (on PostgreSQL in one statement:
//! `deferred`). If that breaks a key, or finds an updated row gone, the batch is rolled
//! back and every write runs again alone: the error is then the answer of the write that
//! left the row.
//!
//! **The next transaction begun with the commit.** On PostgreSQL, when a write is already
//! waiting as a transaction commits, the writer sends `COMMIT; BEGIN` as one message: the
//! next transaction's `BEGIN` costs no round trip of its own. It never begins one ahead
//! otherwise, so the connection is never left idle in a transaction. `BEGIN` takes no
//! snapshot and no lock (under `READ COMMITTED` each statement takes its own snapshot),
//! so a transaction begun a moment early sees and holds what one begun later would. If
//! that message fails, whether its `COMMIT` went through is unknown, as for any commit
//! whose answer was lost: the batch's writes are answered with the error.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use diesel::Connection;
use diesel::connection::{SimpleConnection, TransactionManager as _};
use diesel::r2d2::R2D2Connection;

use super::{
    Backend, Counters, DbConnection, DbError, DeferredWrites, Manager, PoolManager,
    TransactionMemo, check_out, lost,
};
use crate::config::DatabaseUrl;
use crate::events::Events;
use crate::events::outbox::{self, OutboxRow};

/// Most writes committed together.
const MAX_BATCH: usize = 512;

/// Most writes waiting for the writer. Past it a write is refused at once as
/// `Unavailable` (a 503 with `Retry-After`, nothing written) rather than queued: under a
/// flood the queue, and the memory it holds, stay bounded. Eight batches is seconds of
/// work on a slow disk, far more than callers that answer within `orders.sync_wait` wait.
const MAX_QUEUED: usize = 8 * MAX_BATCH;

/// How often the SQLite checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// What one run of a write came to.
enum Ran {
    Succeeded,
    Failed,
    Panicked,
}

/// A write waiting for the writer, with its caller's answer slot.
trait Write: Send {
    /// Runs the write (once more) inside the batch's open transaction, adding the events it
    /// raised and the rows it deferred to `left`, which the batch writes before it commits.
    fn run(&mut self, conn: &mut DbConnection, left: &mut LeftToBatch) -> Ran;
    /// Answers the caller with the last run's outcome. `ended` is how that run's
    /// transaction ended: committed, or not (and why) — a write that succeeded in a
    /// transaction that did not commit answers that error instead.
    fn answer(self: Box<Self>, ended: Result<(), DbError>);
}

struct Pending<T, E, F> {
    work: F,
    outcome: Option<Result<T, E>>,
    reply: tokio::sync::oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Write for Pending<T, E, F>
where
    F: FnMut(&mut DbConnection, &mut Events) -> Result<T, E> + Send,
    T: Send,
    E: From<DbError> + Send,
{
    fn run(&mut self, conn: &mut DbConnection, left: &mut LeftToBatch) -> Ran {
        // A failed write's transaction is rolled back, and its memo with it.
        let memo = std::mem::take(&mut left.memo);
        let run = || {
            let mut events = Events::sharing(memo);
            let value = (self.work)(conn, &mut events)?;
            let (raised, deferred, memo) = events.into_parts();
            Ok((
                value,
                outbox::encode(raised).map_err(E::from)?,
                deferred,
                memo,
            ))
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok((value, rows, deferred, memo))) => {
                left.raised.extend(rows);
                left.deferred.extend(deferred);
                left.memo = memo;
                self.outcome = Some(Ok(value));
                Ran::Succeeded
            }
            Ok(Err(error)) => {
                self.outcome = Some(Err(error));
                Ran::Failed
            }
            Err(_) => {
                self.outcome = None;
                Ran::Panicked
            }
        }
    }

    fn answer(self: Box<Self>, ended: Result<(), DbError>) {
        let answer = match (self.outcome, ended) {
            // A failed write answers its own error: its transaction was rolled back.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)), Err(error)) => Err(E::from(error)),
            (None, Ok(())) => Err(E::from(DbError::Task("the write panicked".into()))),
            // It never ran: its transaction could not begin.
            (None, Err(error)) => Err(E::from(error)),
        };
        let _caller_gone = self.reply.send(answer);
    }
}

/// Runs alone, outside any transaction, on the writer's connection (migrations); the
/// error if there is no connection to be had.
type Exclusive = Box<dyn FnOnce(Result<&mut DbConnection, DbError>) + Send>;

enum Job {
    Write(Box<dyn Write>),
    Exclusive(Exclusive),
}

pub(super) struct Writer {
    jobs: mpsc::SyncSender<Job>,
    /// SQLite only; dropped with the writer: the checkpointer's cue to stop.
    _checkpoints: Option<mpsc::Sender<()>>,
}

impl Writer {
    /// Starts the writer thread of the database `manager` opens connections to (and, on
    /// SQLite, its checkpointer). An unreachable database is an error here; later, a
    /// connection that cannot be had within `pool`'s connection timeout fails the batch
    /// waiting for it. `outbox_signal` is rung after each commit that wrote outbox rows.
    pub(super) fn start(
        manager: Manager,
        backend: Backend,
        pool: r2d2::Builder<PoolManager>,
        outbox_signal: Arc<tokio::sync::Notify>,
    ) -> Result<Self, DbError> {
        let checkpoints = match backend {
            Backend::Sqlite => {
                let mut checkpointer = connect(&manager)?;
                // Upkeep, not work: the database's statement counts leave its checkpoints out.
                checkpointer
                    .set_instrumentation(|_: diesel::connection::InstrumentationEvent<'_>| {});
                let (stop_checkpoints, checkpoints) = mpsc::channel();
                let url = manager.url.clone();
                std::thread::Builder::new()
                    .name("sqlite-checkpoint".into())
                    .spawn(move || checkpoint_until_stopped(&url, checkpointer, &checkpoints))
                    .map_err(|error| {
                        DbError::Task(format!("cannot start the SQLite checkpointer: {error}"))
                    })?;
                Some(stop_checkpoints)
            }
            Backend::Postgres => None,
        };
        let url = manager.url.clone();
        let counters = Arc::clone(&manager.counters);
        // A pool of one: r2d2 opens the connection again in the background after it was
        // lost, and a batch waits for it at most the pool's connection timeout — never on
        // a connect that hangs (a server gone from the network).
        let pool = pool
            .max_size(1)
            .test_on_check_out(false)
            .build(PoolManager(manager))
            .map_err(|error| DbError::Unavailable(format!("{url}: {error}")))?;
        let mut connection = WriterConnection {
            url,
            pool,
            conn: None,
            begun: false,
            counters,
        };
        connection.get()?;
        let (jobs, queue) = mpsc::sync_channel(MAX_QUEUED);
        std::thread::Builder::new()
            .name(format!("{}-writer", backend.as_str()))
            .spawn(move || run(connection, Queue::new(queue), &outbox_signal))
            .map_err(|error| DbError::Task(format!("cannot start the database writer: {error}")))?;
        Ok(Self {
            jobs,
            _checkpoints: checkpoints,
        })
    }

    /// Runs `work` in the next batch's transaction, the events it pushes written to the
    /// outbox in that transaction; answers its outcome once that transaction has committed
    /// (or `work`'s error, having written nothing). `work` may run more than once (module
    /// docs).
    pub(super) async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection, &mut Events) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Write(Box::new(Pending {
            work,
            outcome: None,
            reply,
        })))?;
        answer
            .await
            .map_err(|_| E::from(DbError::Task("the database writer dropped a write".into())))?
    }

    /// Runs `work` alone on the writer's connection, outside any transaction, between two
    /// batches.
    pub(super) async fn exclusive<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job::Exclusive(Box::new(move |conn| {
            let _caller_gone = reply.send(conn.and_then(work));
        })))?;
        answer
            .await
            .map_err(|_| DbError::Task("the database writer dropped its work".into()))?
    }

    fn submit(&self, job: Job) -> Result<(), DbError> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => {
                metrics::counter!("bazaar_db_writes_refused_total").increment(1);
                DbError::Unavailable(format!(
                    "the database writer has {MAX_QUEUED} writes waiting; try again shortly"
                ))
            }
            mpsc::TrySendError::Disconnected(_) => {
                DbError::Task("the database writer has stopped".into())
            }
        })
    }
}

fn connect(manager: &Manager) -> Result<DbConnection, DbError> {
    r2d2::ManageConnection::connect(manager)
        .map_err(|error| DbError::Unavailable(format!("{}: {error}", manager.url)))
}

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`], on a connection
/// of its own, until the writer is dropped. A `PASSIVE` checkpoint waits for no reader and
/// no writer, so the writer never stalls on one: left to SQLite, the writer itself runs a
/// checkpoint (and its two `fsync`s) whenever the WAL reaches 1,000 pages, and every write
/// queued behind it waits. The writer's own automatic checkpoint stays as a backstop, at
/// a size this thread keeps the WAL well below.
fn checkpoint_until_stopped(url: &DatabaseUrl, mut conn: DbConnection, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(error) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(%url, %error, "SQLite checkpoint failed; the next one retries");
        }
    }
}

/// The writer's connection, held from its pool of one. After it was lost, the next batch
/// takes a fresh one; a batch that finds none within the pool's timeout is answered
/// `Unavailable`, so callers never wait long on a server that is down.
struct WriterConnection {
    url: DatabaseUrl,
    pool: r2d2::Pool<PoolManager>,
    conn: Option<r2d2::PooledConnection<PoolManager>>,
    /// Whether the connection is in a transaction begun with the last commit (module
    /// docs), for the next batch.
    begun: bool,
    /// The database's counters: a transaction begun with a commit is counted here, as
    /// diesel's instrumentation counts the others.
    counters: Arc<Counters>,
}

/// The writer's connection, ready for a transaction.
struct Session<'a> {
    conn: &'a mut DbConnection,
    /// Whether a transaction is open on it already (begun with the last commit).
    begun: &'a mut bool,
    counters: &'a Counters,
}

impl WriterConnection {
    fn get(&mut self) -> Result<&mut DbConnection, DbError> {
        self.session().map(|session| session.conn)
    }

    fn session(&mut self) -> Result<Session<'_>, DbError> {
        let pooled = match self.conn.take() {
            Some(pooled) => pooled,
            None => {
                self.begun = false;
                check_out(&self.pool, &self.url)?
            }
        };
        Ok(Session {
            conn: &mut self.conn.insert(pooled).conn,
            begun: &mut self.begun,
            counters: &self.counters,
        })
    }

    /// Gives the connection up: the pool drops it and opens a fresh one.
    fn discard(&mut self) {
        self.begun = false;
        if let Some(mut pooled) = self.conn.take() {
            pooled.lost = true;
        }
    }

    /// After a failure: whether the connection is still sound. One that is not (its server
    /// went away, or its transaction state is unknown after a failed rollback) is
    /// discarded, and the next transaction takes a fresh one.
    fn survived(&mut self) -> bool {
        let sound = self
            .conn
            .as_mut()
            .is_some_and(|pooled| !pooled.conn.is_broken() && pooled.conn.ping().is_ok());
        if !sound {
            self.discard();
        }
        sound
    }
}

/// The writer's queue, able to tell whether a write waits without taking it.
struct Queue {
    receiver: mpsc::Receiver<Job>,
    /// A job taken off the channel to look at it, first in line.
    next: Option<Job>,
}

impl Queue {
    fn new(receiver: mpsc::Receiver<Job>) -> Self {
        Self {
            receiver,
            next: None,
        }
    }

    /// The next job, waiting for one; `None` once every `Database` handle is gone.
    fn recv(&mut self) -> Option<Job> {
        self.next.take().or_else(|| self.receiver.recv().ok())
    }

    /// The next job if one is waiting.
    fn try_recv(&mut self) -> Option<Job> {
        self.next.take().or_else(|| self.receiver.try_recv().ok())
    }

    /// Whether a write is waiting, first in line (it stays there).
    fn write_waits(&mut self) -> bool {
        if self.next.is_none() {
            self.next = self.receiver.try_recv().ok();
        }
        matches!(self.next, Some(Job::Write(_)))
    }
}

/// Ends when every `Database` handle is gone (the channel closes).
fn run(mut connection: WriterConnection, mut queue: Queue, outbox_signal: &tokio::sync::Notify) {
    while let Some(first) = queue.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Exclusive(work) => {
                    // It runs outside any transaction: none is begun ahead for it.
                    let batch = std::mem::take(&mut batch);
                    commit_batch(&mut connection, batch, &mut || false, outbox_signal);
                    let outcome = catch_unwind(AssertUnwindSafe(|| work(connection.get())));
                    if outcome.is_err() {
                        connection.discard();
                    }
                }
                Job::Write(write) => batch.push(write),
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv();
            }
        }
        commit_batch(
            &mut connection,
            batch,
            &mut || queue.write_waits(),
            outbox_signal,
        );
    }
}

/// How one transaction of a batch ended.
enum Ended {
    /// Committed, with this many outbox rows.
    Committed { raised: usize },
    /// The write at this position failed: the transaction was rolled back.
    Failed { at: usize, panicked: bool },
    /// Every write ran, and writing what they left to the batch failed (a key broken by
    /// one of their rows, an updated row gone): the transaction was rolled back.
    DeferredFailed(DbError),
    /// The transaction could not begin: no write ran.
    NotBegun(DbError),
    /// Every write ran, and the commit failed.
    NotCommitted(DbError),
}

/// Runs a batch of writes and answers each (module docs). `write_waits` tells, at a
/// commit, whether a write is waiting for the next batch.
fn commit_batch(
    connection: &mut WriterConnection,
    batch: Vec<Box<dyn Write>>,
    write_waits: &mut dyn FnMut() -> bool,
    outbox_signal: &tokio::sync::Notify,
) {
    let mut waiting: VecDeque<Box<dyn Write>> = batch.into();
    // The first `together` writes waiting run in one transaction.
    let mut together = waiting.len();
    // After what some writes deferred failed (a key broken, an updated row gone), every
    // write runs alone, so that the error reaches the one that left it (`deferred`'s
    // module docs).
    let mut one_at_a_time = false;
    // A connection found dead before anything of the batch could commit on it (the server
    // restarted while it was idle: at `BEGIN`, or at the first statements of a transaction
    // begun with the last commit) is replaced, and the batch tried on the new one, once.
    let mut may_reconnect = true;
    while !waiting.is_empty() {
        let session = match connection.session() {
            Ok(session) => session,
            Err(error) => {
                for write in waiting.drain(..) {
                    write.answer(Err(passed_on(&error)));
                }
                return;
            }
        };
        // A transaction begun with the last commit, on a connection that died since, meets
        // that at its first statement, not at its `BEGIN`: it is replaced as at `BEGIN`.
        let begun_with_last_commit = *session.begun;
        // Another transaction follows this one at once if writes of this batch are left
        // for it, or the next batch's first write is waiting.
        let more_of_this_batch = waiting.len() > together;
        let mut another_follows = || more_of_this_batch || write_waits();
        match run_together(session, waiting.range_mut(..together), &mut another_follows) {
            Ended::Committed { raised } => {
                if raised > 0 {
                    outbox_signal.notify_one();
                }
                for write in waiting.drain(..together) {
                    write.answer(Ok(()));
                }
            }
            Ended::NotBegun(_) if may_reconnect && !connection.survived() => {
                may_reconnect = false;
                continue;
            }
            Ended::Failed {
                panicked: false, ..
            } if begun_with_last_commit && may_reconnect && !connection.survived() => {
                // Nothing of it committed (its transaction died with the connection): the
                // same writes run again, on a fresh connection, once.
                may_reconnect = false;
                continue;
            }
            Ended::NotBegun(error) | Ended::NotCommitted(error) => {
                let error = if connection.survived() {
                    error
                } else {
                    lost(&connection.url)
                };
                for write in waiting.drain(..together) {
                    write.answer(Err(passed_on(&error)));
                }
            }
            Ended::Failed { at, panicked: true } => {
                // A bug, not a database outcome: that write is answered so, and the
                // writes before it run again on a fresh connection (the panic may have left
                // this one's state unknown).
                connection.discard();
                if let Some(write) = waiting.remove(at) {
                    write.answer(Ok(()));
                }
                if at > 0 {
                    together = at;
                    continue;
                }
            }
            Ended::Failed { at, .. } if !connection.survived() => {
                // Whatever the write's error said, the cause may be the lost connection:
                // every write that ran is answered so (a 503, try again), none committed.
                let error = lost(&connection.url);
                for write in waiting.drain(..=at) {
                    write.answer(Err(passed_on(&error)));
                }
            }
            Ended::Failed { at: 0, .. } => {
                // It ran first: its outcome is the one it has alone.
                if let Some(write) = waiting.pop_front() {
                    write.answer(Ok(()));
                }
            }
            Ended::Failed { at, .. } => {
                // The writes before it run again, without it; it runs first after them.
                together = at;
                continue;
            }
            Ended::DeferredFailed(_) if !connection.survived() => {
                let error = lost(&connection.url);
                for write in waiting.drain(..together) {
                    write.answer(Err(passed_on(&error)));
                }
            }
            Ended::DeferredFailed(error) if together == 1 => {
                // Alone: what its deferred rows met is its answer.
                if let Some(write) = waiting.pop_front() {
                    write.answer(Err(error));
                }
            }
            Ended::DeferredFailed(_) => {
                one_at_a_time = true;
                together = 1;
                continue;
            }
        }
        together = if one_at_a_time { 1 } else { waiting.len() };
    }
}

/// What the writes of one transaction leave to be written before it commits.
#[derive(Default)]
struct LeftToBatch {
    /// The events raised, for the outbox.
    raised: Vec<OutboxRow>,
    /// The rows and updates left to the batch (`deferred`).
    deferred: DeferredWrites,
    /// What the transaction's writes share (`Events::transaction_memo`).
    memo: TransactionMemo,
}

/// Runs `writes` in one transaction, then inserts the rows they left to it and the events
/// they raised, committed if every one succeeds. The rows go last in every transaction, a
/// write's alone too, so that the locks their keys take come after the rows the writes
/// updated, in every instance's transactions alike: never in the opposite order, which
/// could deadlock two instances' transactions. On PostgreSQL the commit begins the next
/// transaction too when `another_follows` (module docs).
fn run_together<'a>(
    session: Session<'_>,
    writes: impl Iterator<Item = &'a mut Box<dyn Write>>,
    another_follows: &mut dyn FnMut() -> bool,
) -> Ended {
    type Transactions = <DbConnection as Connection>::TransactionManager;
    let Session {
        conn,
        begun,
        counters,
    } = session;
    if !std::mem::take(begun)
        && let Err(error) = Transactions::begin_transaction(conn)
    {
        return Ended::NotBegun(error.into());
    }
    let mut left = LeftToBatch::default();
    let ran = run_writes(conn, writes, &mut left);
    if let Err(failed) = ran {
        // Its outcome is the write's answer; a connection the rollback left unsound is
        // found out before the next transaction (`survived`).
        let _rolled_back = Transactions::rollback_transaction(conn);
        return failed;
    }
    let committed = if matches!(conn, DbConnection::Postgres(_)) && another_follows() {
        match conn.batch_execute("COMMIT; BEGIN") {
            Ok(()) => {
                *begun = true;
                counters.transactions.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                // Diesel still counts the transaction open: close it (a `ROLLBACK` with
                // none open only warns).
                let _rolled_back = Transactions::rollback_transaction(conn);
                Err(error)
            }
        }
    } else {
        Transactions::commit_transaction(conn)
    };
    match committed {
        Ok(()) => Ended::Committed {
            raised: left.raised.len(),
        },
        Err(error) => Ended::NotCommitted(error.into()),
    }
}

/// Runs `writes` in the open transaction, then inserts what they left to it; the error is
/// how the transaction ended, to be rolled back.
fn run_writes<'a>(
    conn: &mut DbConnection,
    writes: impl Iterator<Item = &'a mut Box<dyn Write>>,
    left: &mut LeftToBatch,
) -> Result<(), Ended> {
    for (at, write) in writes.enumerate() {
        match write.run(conn, left) {
            Ran::Succeeded => {}
            Ran::Failed => {
                return Err(Ended::Failed {
                    at,
                    panicked: false,
                });
            }
            Ran::Panicked => return Err(Ended::Failed { at, panicked: true }),
        }
    }
    left.deferred
        .flush(conn, &left.raised)
        .map_err(Ended::DeferredFailed)
}

/// The error a batch's failure gives each write in it.
fn passed_on(error: &DbError) -> DbError {
    super::shared_failure(error, "the batch did not commit")
}
