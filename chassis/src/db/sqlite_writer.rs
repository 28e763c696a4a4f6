//! SQLite's one writer, with group commit.
//!
//! SQLite lets one connection write at a time, and on this kind of machine the price of a
//! small write transaction is mostly the thread hand-offs around it, not SQLite. So every
//! write of a SQLite database goes to one thread that owns one connection: it takes all
//! the writes waiting at that moment, runs each in its own savepoint inside one
//! transaction, commits once, and only then answers each caller. A write that fails rolls
//! back to its savepoint and leaves the others untouched; a failed commit fails them all.
//! Callers see exactly the semantics of one transaction each, answered after commit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;

use super::{DbConnection, DbError, Manager};
use crate::config::DatabaseUrl;

/// Most writes committed together.
const MAX_BATCH: usize = 512;

/// Most writes waiting for the writer. Past it a write is refused at once as
/// `Unavailable` (a 503 with `Retry-After`, nothing written) rather than queued: under a
/// flood the queue, and the memory it holds, stay bounded. Eight batches is seconds of
/// work on a slow disk, far more than callers that answer within `orders.sync_wait` wait.
const MAX_QUEUED: usize = 8 * MAX_BATCH;

/// What a write reports once the batch it ran in has committed or failed.
pub(super) type Finish = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// A write run inside a batch's transaction, in a savepoint of its own.
pub(super) type BatchedWrite = Box<dyn FnOnce(&mut DbConnection) -> Finish + Send>;

pub(super) enum Job {
    Batched(BatchedWrite),
    /// Runs alone, outside any transaction (migrations).
    Exclusive(Box<dyn FnOnce(&mut DbConnection) + Send>),
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

pub(super) struct SqliteWriter {
    jobs: mpsc::SyncSender<Job>,
    /// Dropped with the writer: the checkpointer's cue to stop.
    _checkpoints: mpsc::Sender<()>,
}

impl SqliteWriter {
    pub(super) fn start(manager: Manager) -> Result<Self, DbError> {
        let connect = |manager: &Manager| {
            r2d2::ManageConnection::connect(manager)
                .map_err(|error| DbError::Unavailable(format!("{}: {error}", manager.url)))
        };
        let conn = connect(&manager)?;
        let mut checkpointer = connect(&manager)?;
        // Upkeep, not work: the database's statement counts leave its checkpoints out.
        checkpointer.set_instrumentation(|_: diesel::connection::InstrumentationEvent<'_>| {});
        let (stop_checkpoints, checkpoints) = mpsc::channel();
        let url = manager.url.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(&url, checkpointer, &checkpoints))
            .map_err(|error| {
                DbError::Task(format!("cannot start the SQLite checkpointer: {error}"))
            })?;
        let (jobs, queue) = mpsc::sync_channel(MAX_QUEUED);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(manager, conn, queue))
            .map_err(|error| DbError::Task(format!("cannot start the SQLite writer: {error}")))?;
        Ok(Self {
            jobs,
            _checkpoints: stop_checkpoints,
        })
    }

    pub(super) fn submit(&self, job: Job) -> Result<(), DbError> {
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => {
                metrics::counter!("bazaar_db_writes_refused_total").increment(1);
                DbError::Unavailable(format!(
                    "the SQLite writer has {MAX_QUEUED} writes waiting; try again shortly"
                ))
            }
            mpsc::TrySendError::Disconnected(_) => {
                DbError::Task("the SQLite writer has stopped".into())
            }
        })
    }
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

/// Ends when every `Database` handle is gone (the channel closes).
fn run(manager: Manager, mut conn: DbConnection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Exclusive(work) => {
                    commit_batch(&mut conn, std::mem::take(&mut batch));
                    if catch_unwind(AssertUnwindSafe(|| work(&mut conn))).is_err() {
                        conn = reconnect(&manager, conn);
                    }
                }
                Job::Batched(work) => batch.push(work),
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !commit_batch(&mut conn, batch) {
            conn = reconnect(&manager, conn);
        }
    }
}

/// Runs and commits one batch; answers whether the connection is still sound.
fn commit_batch(conn: &mut DbConnection, batch: Vec<BatchedWrite>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let mut finishers = Vec::with_capacity(batch.len());
    let mut panicked = false;
    let outcome = conn.transaction(|conn| {
        for work in batch {
            match catch_unwind(AssertUnwindSafe(|| work(conn))) {
                Ok(finish) => finishers.push(finish),
                Err(_) => {
                    // The panicking write's savepoint may still be open: give the whole
                    // batch up rather than commit a half-known state.
                    panicked = true;
                    return Err(diesel::result::Error::RollbackTransaction);
                }
            }
        }
        Ok(())
    });
    let outcome = match (outcome, panicked) {
        (Ok(()), _) => Ok(()),
        (Err(_), true) => Err(DbError::Task(
            "a write in the same batch panicked; retry".into(),
        )),
        (Err(error), false) => Err(DbError::from(error)),
    };
    for finish in finishers {
        finish(match &outcome {
            Ok(()) => Ok(()),
            Err(DbError::Unavailable(reason)) => Err(DbError::Unavailable(reason.clone())),
            Err(error) => Err(DbError::Task(format!("the batch did not commit: {error}"))),
        });
    }
    !panicked
}

fn reconnect(manager: &Manager, old: DbConnection) -> DbConnection {
    drop(old);
    loop {
        match r2d2::ManageConnection::connect(manager) {
            Ok(conn) => return conn,
            Err(error) => {
                tracing::error!(url = %manager.url, %error, "cannot reopen the SQLite writer connection");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
