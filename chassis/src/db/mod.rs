//! The one database code path for SQLite (the embedded default) and PostgreSQL.
//!
//! A module's repository is written once against [`DbConnection`], diesel's
//! `MultiConnection` over both backends. Every write goes to the database's one writer
//! thread (`writer`), which runs the writes waiting together in one transaction, without
//! savepoints, and commits once: on SQLite because it allows one writer at a time, on
//! PostgreSQL because each statement is a round trip and a transaction per write cost
//! `BEGIN`, `COMMIT` and a WAL flush each. A write may therefore run more than once (a
//! batch one of its writes fails is run again without it): its closure is `FnMut`, and
//! acts only through its connection. A write may leave new rows nothing in its batch reads,
//! and changes whose outcome it need not see, to the batch, which writes each kind together
//! before it commits ([`DeferredRow`], `Events::insert_at_commit`; [`DeferredUpdate`],
//! `Events::update_at_commit`). Several instances of a module on one PostgreSQL
//! database write concurrently, each through its own writer; correctness between them
//! comes from the statements themselves (conditional updates, unique keys).
//!
//! Reads take a pooled connection: on PostgreSQL on tokio's blocking threads (a network
//! round trip must not hold an executor thread); on SQLite on the calling thread itself,
//! since it reads pages the process mostly has in memory and takes microseconds, less than
//! handing it to a blocking thread and back (which cost more CPU than the read, and 15-20 %
//! of the orders/s measured in BENCHMARKS.md). The reader pool has at least a connection
//! per core, and a read holds its connection only for its few statements, never across an
//! `.await`, so a read that finds them all taken waits microseconds. On SQLite readers run
//! in parallel with the writer thanks to WAL.
//!
//! What a statement costs on SQLite: the connection keeps a `SELECT` or `INSERT` prepared,
//! so it is parsed once; diesel never keeps its own `UPDATE`s, upserts or `IN` lists, so
//! those are parsed on every call. Hence: updates go through [`update`], which the cache
//! does keep; a single key is compared with `=`, not an `IN` list of one; and rows are
//! looked up by key with `.get_result()`, never `.first()`, whose `LIMIT ?` makes SQLite
//! plan the statement again whenever the value is bound (a test in
//! `tests/bazaar/architecture.rs` holds this). Statements run on the backend's own
//! connection through [`per_backend!`](crate::per_backend), which spares diesel's
//! `MultiConnection` rendering their SQL on every execution.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

mod deferred;
mod lookup;
mod update;
mod writer;

pub(crate) use deferred::DeferredWrites;
pub use deferred::{
    ColumnArray, DeferredRow, DeferredUpdate, InsertColumns, NewRowsPart, Riders, TransactionMemo,
    all_changed, insert_column,
};
pub use lookup::{LoadByKeys, SharedLookup};
pub use update::{KEPT_TOGETHER, Together, Update, UpdateReturning, update, update_all};

use writer::Writer;

use crate::config::DatabaseUrl;
use crate::events::Events;
use crate::problem::ProblemCode;

/// Runs statements on the backend's own connection, the body written once and compiled
/// for each backend: `per_backend!(conn, |conn| query.execute(conn))` (the body's `conn`
/// is the backend's connection, shadowing the `DbConnection`).
///
/// Diesel's `MultiConnection` runs the same statement through a wrapper that renders its
/// whole SQL on every pass over it: two or three times per execution (to check it may be
/// cached, to collect its binds and, for a statement cached by its SQL, to key the cache).
/// On the backend's own connection a statement cached by type is not rendered at all, so
/// the repositories' statements go through this. Transactions stay on the `DbConnection`:
/// its transaction manager is the backend connection's own.
#[macro_export]
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite($c) => $body,
            $crate::db::DbConnection::Postgres($c) => $body,
        }
    };
}

/// A connection to either backend; repositories take `&mut DbConnection`.
#[allow(missing_debug_implementations)] // diesel's connections are not `Debug`
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had: the server is down, or the pool stayed exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(diesel::result::Error),
    /// An update left to the batch (`DeferredUpdate`) found its row gone, or changed so
    /// that its condition no longer held: the answer of the write that left it, which its
    /// caller turns into what the update's own "no row" would have meant.
    #[error("a change left to the batch found its row gone or changed")]
    NotApplied,
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("cannot encode or decode a stored value: {0}")]
    Encoding(String),
    /// A SQLite file another process is serving.
    #[error(
        "{0} is in use by another process (a second `bazaar serve` on the same data directory?): \
         stop that one, or give this one its own data_dir or database_url"
    )]
    InUse(String),
}

impl From<diesel::result::Error> for DbError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            // The server went away under an open connection: the database is unavailable,
            // not broken, and the caller should try again later.
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => DbError::Unavailable(error.to_string()),
            Error::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().contains("database is locked")
                    || info.message().contains("terminating connection")
                    || info.message().contains("server closed the connection") =>
            {
                DbError::Unavailable(error.to_string())
            }
            _ => DbError::Query(error),
        }
    }
}

impl ProblemCode for DbError {
    fn status(&self) -> u16 {
        match self {
            DbError::Unavailable(_) => 503,
            DbError::Query(_)
            | DbError::NotApplied
            | DbError::Migration(_)
            | DbError::Task(_)
            | DbError::Encoding(_)
            | DbError::InUse(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            DbError::Unavailable(_) => crate::problem::codes::DEPENDENCY_UNAVAILABLE,
            DbError::Query(_)
            | DbError::NotApplied
            | DbError::Migration(_)
            | DbError::Task(_)
            | DbError::Encoding(_)
            | DbError::InUse(_) => crate::problem::codes::INTERNAL_ERROR,
        }
    }
}

/// A module's migrations, one embedded set per backend
/// (`migrations/<module>/{sqlite,postgres}`).
#[derive(Clone, Copy)]
pub struct Migrations {
    pub sqlite: &'static EmbeddedMigrations,
    pub postgres: &'static EmbeddedMigrations,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Migrations")
    }
}

/// Lends a `static` set of embedded migrations to diesel's harness, which wants an owned
/// source.
struct Embedded(&'static EmbeddedMigrations);

impl<DB: diesel::backend::Backend> diesel::migration::MigrationSource<DB> for Embedded {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<DB>>>> {
        <EmbeddedMigrations as diesel::migration::MigrationSource<DB>>::migrations(self.0)
    }
}

static CHASSIS_SQLITE: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("../migrations/chassis/sqlite");
static CHASSIS_POSTGRES: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("../migrations/chassis/postgres");

/// The event plumbing's tables (outbox, inbox, dead letters), in every module's database.
const CHASSIS_MIGRATIONS: Migrations = Migrations {
    sqlite: &CHASSIS_SQLITE,
    postgres: &CHASSIS_POSTGRES,
};

/// The PostgreSQL advisory lock key migrations run under, the same for every module and
/// process (an arbitrary constant: "bazaar" in ASCII).
const MIGRATION_LOCK: i64 = 0x0000_6261_7a61_6172;

/// Now, in UTC, at the microsecond precision both backends store.
pub fn utc_now() -> chrono::NaiveDateTime {
    use chrono::Timelike as _;
    let now = chrono::Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// How much work a database was given: the statements sent (each a round trip to a
/// PostgreSQL server; `BEGIN`, `COMMIT` and savepoints included), the transactions begun
/// (nested savepoints not counted) and the writes submitted to its writer. Statements and
/// transactions are counted by diesel's instrumentation on every connection the database
/// opens. `/metrics` reports them per module, tests pin how many an order takes
/// (BENCHMARKS.md: on PostgreSQL, round trips are what an order costs), and writes per
/// transaction is how many writes the writer's batches hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCounts {
    pub statements: u64,
    pub transactions: u64,
    pub writes: u64,
}

/// The counters behind [`WorkCounts`], shared by a database's connections.
#[derive(Debug, Default)]
struct Counters {
    statements: AtomicU64,
    transactions: AtomicU64,
    writes: AtomicU64,
}

/// Counts into [`Counters`]; installed on each connection as it is opened.
struct CountWork(Arc<Counters>);

impl diesel::connection::Instrumentation for CountWork {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::connection::InstrumentationEvent;
        match event {
            InstrumentationEvent::StartQuery { .. } => {
                self.0.statements.fetch_add(1, Ordering::Relaxed);
            }
            InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
                self.0.transactions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Pool tuning.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// The most connections the database opens: on PostgreSQL its writer's and the read
    /// pool's together (at least one each); on SQLite the read pool's (at least one per
    /// core), beside the writer's and the checkpointer's.
    pub max_size: u32,
    pub connection_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 8,
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// One module's database: a pool plus the rules for using it from async code.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: r2d2::Pool<PoolManager>,
    backend: Backend,
    counters: Arc<Counters>,
    url: DatabaseUrl,
    /// The one thread that writes, with group commit.
    writer: Writer,
    /// Writes submitted and not yet answered: whether the writer has work
    /// (`Database::read_in_batch`).
    writes_in_flight: AtomicUsize,
    /// Rung after a transaction that wrote outbox rows commits: wakes the relay.
    outbox_signal: Arc<tokio::sync::Notify>,
    /// SQLite only, once [`Database::serve_exclusively`] took it: the lock that keeps a
    /// second server off this file, held as long as the database is open.
    serving_lock: std::sync::Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.inner.backend)
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Database {
    /// Opens a pool. A SQLite file (and its folder) is created if missing; an unreachable
    /// PostgreSQL server is an error here, so start-up fails with a clear message.
    pub fn open(url: &DatabaseUrl, options: PoolOptions) -> Result<Self, DbError> {
        let backend = if url.is_postgres() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let folder = url
            .sqlite_path()
            .and_then(|path| std::path::Path::new(path).parent())
            .filter(|parent| !parent.as_os_str().is_empty());
        if let Some(folder) = folder {
            std::fs::create_dir_all(folder).map_err(|error| {
                DbError::Unavailable(format!("cannot create {}: {error}", folder.display()))
            })?;
        }
        let max_size = match backend {
            // An executor thread per core may be inside a SQLite read at once (module docs).
            Backend::Sqlite => std::thread::available_parallelism()
                .map_or(1, |threads| {
                    u32::try_from(threads.get()).unwrap_or(u32::MAX)
                })
                .max(options.max_size),
            // The writer's connection is one of the database's `max_size`: the process's
            // PostgreSQL connections stay within the budget its pools were sized to.
            Backend::Postgres => options.max_size.saturating_sub(1),
        };
        let counters = Arc::new(Counters::default());
        let manager = || Manager {
            url: url.clone(),
            counters: Arc::clone(&counters),
        };
        // The threads that open a database's connections in the background, shared by its
        // read pool and its writer's (r2d2 would start three for each pool otherwise).
        let upkeep = Arc::new(
            scheduled_thread_pool::ScheduledThreadPool::builder()
                .num_threads(2)
                .thread_name_pattern("db-upkeep-{}")
                .build(),
        );
        let pool = r2d2::Pool::builder()
            .thread_pool(Arc::clone(&upkeep))
            .max_size(max_size.max(1))
            .min_idle(Some(1))
            // No `SELECT 1` round trip before every checkout: a broken connection is
            // detected by `has_broken` and by the failing query itself, which the caller
            // sees as an error and may retry.
            .test_on_check_out(false)
            .connection_timeout(options.connection_timeout)
            .build(PoolManager(manager()))
            .map_err(|error| DbError::Unavailable(format!("{url}: {error}")))?;
        let outbox_signal = Arc::new(tokio::sync::Notify::new());
        let writer = Writer::start(
            manager(),
            backend,
            r2d2::Pool::builder()
                .thread_pool(upkeep)
                .connection_timeout(options.connection_timeout),
            Arc::clone(&outbox_signal),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                url: url.clone(),
                counters,
                writer,
                writes_in_flight: AtomicUsize::new(0),
                outbox_signal,
                serving_lock: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Claims a SQLite database for this process's server, or refuses: a SQLite file
    /// belongs to one serving process (its writer thread; its relay, which publishes the
    /// outbox), and a second `bazaar serve` on the same data directory would write beside
    /// the first. The claim is an exclusive `flock` on `<file>.lock`, which the kernel
    /// releases when the process ends, however it ends; it is held as long as this
    /// database is open. PostgreSQL serves any number of processes: nothing to claim.
    pub fn serve_exclusively(&self) -> Result<(), DbError> {
        let Some(path) = self.inner.url.sqlite_path() else {
            return Ok(());
        };
        let lock_path = format!("{path}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| DbError::Unavailable(format!("cannot open {lock_path}: {error}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DbError::InUse(path.to_owned()));
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(DbError::Unavailable(format!(
                    "cannot lock {lock_path}: {error}"
                )));
            }
        }
        if let Ok(mut held) = self.inner.serving_lock.lock() {
            *held = Some(file);
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.inner.url
    }

    /// The statements and transactions run on this database so far.
    pub fn work_counts(&self) -> WorkCounts {
        WorkCounts {
            statements: self.inner.counters.statements.load(Ordering::Relaxed),
            transactions: self.inner.counters.transactions.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `work` with a pooled connection: on the calling thread on SQLite, on a
    /// blocking thread on PostgreSQL (see the module docs). `work` is a few statements, not
    /// a long computation, and it may run twice: once more on a fresh connection when the
    /// first one turned out dead (`Inner::with_connection`).
    pub async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        if self.inner.backend == Backend::Sqlite {
            return self.inner.with_connection(work);
        }
        let inner = Arc::clone(&self.inner);
        spawn_blocking(move || inner.with_connection(work)).await
    }

    /// Runs `work`, which reads only, where the writes' transactions can share what it
    /// reads: on PostgreSQL, while the writer has writes to do, in its next batch, in that
    /// batch's transaction, with its [`TransactionMemo`] (what a write of the batch read,
    /// `work` need not read again, nor the writes after it: round trips saved under
    /// load); otherwise — an idle writer on PostgreSQL, where a batch of its own would cost
    /// a `BEGIN` and a `COMMIT` more, or SQLite, where a read costs no round trip — as
    /// [`Database::read`] does, with a memo of its own. Either way `work` sees what was
    /// committed before it was called, and may run more than once.
    pub async fn read_in_batch<T, E, F>(&self, mut work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection, &mut TransactionMemo) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        let writer_busy = self.inner.writes_in_flight.load(Ordering::Relaxed) > 0;
        if self.inner.backend == Backend::Postgres && writer_busy {
            return self
                .write_with_events(move |conn, events| work(conn, events.memo()))
                .await;
        }
        self.read(move |conn| work(conn, &mut TransactionMemo::default()))
            .await
    }

    /// Runs `work` as one transaction, committed if it returns `Ok`, rolled back if it
    /// returns `Err`, on the database's writer thread, which commits it together with the
    /// writes waiting beside it (module docs). `work` may run more than once: each run
    /// must act only through the connection, and start afresh.
    pub async fn write<T, E, F>(&self, mut work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        self.write_with_events(move |conn, _no_events| work(conn))
            .await
    }

    /// Like [`Database::write`], and the events `work` pushes go to this database's outbox
    /// in the same transaction: committed together with the change, or not at all (the
    /// writer inserts a whole batch's events in one statement). The outbox relay is woken
    /// once the transaction has committed.
    pub async fn write_with_events<T, E, F>(&self, mut work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection, &mut Events) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        // The caller's span, taken here: the work itself runs on another thread.
        let caller = tracing::Span::current();
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&self.inner.writes_in_flight);
        self.inner
            .writer
            .write(move |conn, events| {
                let value = work(conn, events)?;
                events.record_creation(&caller);
                Ok(value)
            })
            .await
    }

    /// Rung when outbox rows were committed; the relay waits on it.
    pub(crate) fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.inner.outbox_signal)
    }

    /// Applies the pending migrations of the chassis's event tables and then of one
    /// module; answers the versions applied.
    pub async fn migrate(&self, migrations: Migrations) -> Result<Vec<String>, DbError> {
        let apply_all = move |conn: &mut DbConnection| -> Result<Vec<String>, DbError> {
            let mut applied = Vec::new();
            for set in [CHASSIS_MIGRATIONS, migrations] {
                let versions = match conn {
                    DbConnection::Sqlite(conn) => conn.run_pending_migrations(Embedded(set.sqlite)),
                    DbConnection::Postgres(conn) => {
                        conn.run_pending_migrations(Embedded(set.postgres))
                    }
                }
                .map_err(|error| DbError::Migration(error.to_string()))?;
                applied.extend(versions.iter().map(ToString::to_string));
            }
            Ok(applied)
        };
        // Instances started at once would each find the same migrations pending and run
        // them together, and all but one fail ("relation already exists"). On PostgreSQL
        // they take turns under a session advisory lock, and each one after the first
        // finds nothing left to do. (A SQLite file belongs to one process.)
        let apply = move |conn: &mut DbConnection| -> Result<Vec<String>, DbError> {
            if matches!(conn, DbConnection::Sqlite(_)) {
                return apply_all(conn);
            }
            conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
            let applied = apply_all(conn);
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))?;
            applied
        };
        self.inner.writer.exclusive(apply).await
    }

    /// The migrations of the chassis's tables and of one module not applied to this
    /// database yet, for `/health/ready`: a process whose schema lags its code (a restore,
    /// a failed `bazaar migrate`) is not ready.
    pub async fn pending_migrations(&self, migrations: Migrations) -> Result<Vec<String>, DbError> {
        self.read(move |conn| {
            let mut pending = Vec::new();
            for set in [CHASSIS_MIGRATIONS, migrations] {
                let versions: Vec<String> = match conn {
                    DbConnection::Sqlite(conn) => {
                        conn.pending_migrations(Embedded(set.sqlite)).map(|found| {
                            found
                                .iter()
                                .map(|m| m.name().version().to_string())
                                .collect()
                        })
                    }
                    DbConnection::Postgres(conn) => conn
                        .pending_migrations(Embedded(set.postgres))
                        .map(|found| {
                            found
                                .iter()
                                .map(|m| m.name().version().to_string())
                                .collect()
                        }),
                }
                .map_err(|error| DbError::Migration(error.to_string()))?;
                pending.extend(versions);
            }
            Ok(pending)
        })
        .await
    }

    /// Whether the database answers, for `/health/ready`.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.read(|conn| conn.batch_execute("SELECT 1").map_err(DbError::from))
            .await
    }
}

/// One write in flight, counted from its submission until its caller has its answer (or
/// gave up waiting).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Runs `work` on a pooled connection. A connection whose server went away (the
    /// server restarted, or an operator terminated its backend) fails every statement
    /// from then on, and nothing else tells the pool: so after a failure the connection
    /// is pinged, and one that does not answer is dropped instead of going back. Such a
    /// server left every idle connection of the pool dead, not only this one, so `work`
    /// then runs again, once, on a connection that answers (the dead ones met on the way
    /// dropped, a fresh one opened if need be); if that fails for a lost connection too,
    /// the error is the database being unavailable (503, try again), not the statement's.
    /// A healthy connection costs nothing extra.
    fn with_connection<T, E>(
        &self,
        mut work: impl FnMut(&mut DbConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut pooled = self.pooled()?;
        for last_try in [false, true] {
            let result = work(&mut pooled.conn);
            if result.is_ok()
                || !matches!(pooled.conn, DbConnection::Postgres(_))
                || pooled.conn.ping().is_ok()
            {
                return result;
            }
            // Whatever the statement's error said, the cause is the lost connection.
            pooled.lost = true;
            if last_try {
                break;
            }
            drop(pooled);
            pooled = self.answering()?;
        }
        Err(E::from(lost(&self.url)))
    }

    fn pooled(&self) -> Result<r2d2::PooledConnection<PoolManager>, DbError> {
        check_out(&self.pool, &self.url)
    }

    /// A pooled connection that answers a ping: the dead ones met on the way are dropped
    /// (at most as many as the pool holds), and the pool opens a fresh one, waiting at most
    /// its connection timeout. `Unavailable` when none can be had.
    fn answering(&self) -> Result<r2d2::PooledConnection<PoolManager>, DbError> {
        for _ in 0..=self.pool.max_size() {
            let mut pooled = self.pooled()?;
            if pooled.conn.ping().is_ok() {
                return Ok(pooled);
            }
            pooled.lost = true;
        }
        Err(lost(&self.url))
    }
}

/// A connection of `pool` (of the database at `url`), or `Unavailable` once the pool's
/// connection timeout passed without one.
fn check_out(
    pool: &r2d2::Pool<PoolManager>,
    url: &DatabaseUrl,
) -> Result<r2d2::PooledConnection<PoolManager>, DbError> {
    pool.get()
        .map_err(|error| DbError::Unavailable(format!("{url}: {error}")))
}

/// What a statement on a connection the server ended answers: the database is
/// unavailable (503, try again), whatever the statement's own error said.
fn lost(url: &DatabaseUrl) -> DbError {
    DbError::Unavailable(format!("{url}: the connection to the server was lost"))
}

/// The error each of the callers a shared statement served gets for its failure: an
/// unavailable database as such (a 503: try again), anything else as `what` failed.
fn shared_failure(error: &DbError, what: &str) -> DbError {
    match error {
        DbError::Unavailable(reason) => DbError::Unavailable(reason.clone()),
        error => DbError::Task(format!("{what}: {error}")),
    }
}

async fn spawn_blocking<T, E, F>(work: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| E::from(DbError::Task(error.to_string())))?
}

/// Opens connections of the backend the URL names, never guessing: diesel's derived
/// `establish` would try each backend in turn and could open a SQLite file named after a
/// PostgreSQL URL that was merely unreachable.
#[derive(Debug)]
struct Manager {
    url: DatabaseUrl,
    counters: Arc<Counters>,
}

/// Every PostgreSQL connection the chassis opens goes through here.
///
/// libpq initialises the system OpenSSL on its first connection, and OpenSSL then frees
/// its locks in an `atexit` handler, while r2d2's threads may still be opening connections:
/// a segfault as the process exits (seen in one test run in three). Initialising OpenSSL
/// first, without that handler, rules it out.
pub(crate) fn establish_postgres(url: &str) -> diesel::ConnectionResult<diesel::PgConnection> {
    openssl_sys::init();
    let set = |var| std::env::var_os(var).is_some_and(|value| !value.is_empty());
    let environment = Decided {
        tls: set("PGSSLMODE") || set("PGSERVICE"),
        gss: set("PGGSSENCMODE") || set("PGSERVICE"),
    };
    diesel::PgConnection::establish(&plaintext_first_on_loopback(url, environment))
}

/// What the environment decides of a connection's encryption, so that the URL is left as
/// it is there (`PGSSLMODE`, `PGGSSENCMODE`, `PGSERVICE`).
#[derive(Debug, Clone, Copy, Default)]
struct Decided {
    tls: bool,
    gss: bool,
}

/// The URL libpq is given: on a loopback address with nothing saying how to use TLS, asks
/// for `sslmode=allow` — plaintext first, TLS if the server insists (a `hostssl`-only
/// `pg_hba.conf`).
///
/// libpq's default, `prefer`, negotiates TLS even with a server on the same host, where it
/// protects nothing: the traffic never leaves the machine, and `prefer` accepts plaintext
/// anyway, so it guarantees no more than `allow`. On PostgreSQL every statement is a round
/// trip, and TLS on each cost 8 – 30 % of the orders a second (BENCHMARKS.md, "Orders on
/// PostgreSQL"). An `sslmode` or a `service` in the URL, or `PGSSLMODE` or `PGSERVICE` in
/// the environment, is left to decide; so is every other host.
///
/// Likewise `gssencmode=disable`, unless a `gssencmode` or a `service` in the URL, or
/// `PGGSSENCMODE` or `PGSERVICE`, decides: libpq's default looks for Kerberos credentials
/// at every connect to offer GSSAPI encryption, which protects nothing on loopback either,
/// and that look, racing the Kerberos library's teardown at process exit, aborted a test
/// process here (`krb5int_getspecific: Assertion … failed`) after its test had passed.
fn plaintext_first_on_loopback(url: &str, environment: Decided) -> Cow<'_, str> {
    if environment.tls && environment.gss {
        return Cow::Borrowed(url);
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Cow::Borrowed(url);
    };
    // `postgres://` is not a scheme the URL standard knows, so its host comes as text.
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|address| address.is_loopback())
        }
        None => false,
    };
    let in_url = |wanted: &str| {
        parsed
            .query_pairs()
            .any(|(key, _)| key == wanted || key == "service")
    };
    let tls = environment.tls || in_url("sslmode");
    let gss = environment.gss || in_url("gssencmode");
    if !loopback || (tls && gss) {
        return Cow::Borrowed(url);
    }
    let mut query = parsed.query_pairs_mut();
    if !tls {
        query.append_pair("sslmode", "allow");
    }
    if !gss {
        query.append_pair("gssencmode", "disable");
    }
    drop(query);
    Cow::Owned(parsed.into())
}

/// `wal_autocheckpoint` is only a backstop: each database's checkpointer thread keeps the
/// WAL far smaller (`writer.rs`), off the writer's path.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 10000;";

/// A connection of the pool, and whether it was found dead after a failed statement.
struct Pooled {
    conn: DbConnection,
    lost: bool,
}

/// The pool's manager: [`Manager`]'s connections, dropped once found dead.
#[derive(Debug)]
struct PoolManager(Manager);

impl r2d2::ManageConnection for PoolManager {
    type Connection = Pooled;
    type Error = diesel::ConnectionError;

    fn connect(&self) -> Result<Pooled, diesel::ConnectionError> {
        r2d2::ManageConnection::connect(&self.0).map(|conn| Pooled { conn, lost: false })
    }

    fn is_valid(&self, pooled: &mut Pooled) -> Result<(), diesel::ConnectionError> {
        r2d2::ManageConnection::is_valid(&self.0, &mut pooled.conn)
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        pooled.lost || r2d2::ManageConnection::has_broken(&self.0, &mut pooled.conn)
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::ConnectionError;

    fn connect(&self) -> Result<DbConnection, diesel::ConnectionError> {
        let counting = CountWork(Arc::clone(&self.counters));
        match self.url.sqlite_path() {
            None => {
                let mut conn = establish_postgres(self.url.expose())?;
                conn.set_instrumentation(counting);
                Ok(DbConnection::Postgres(conn))
            }
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path)?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                conn.set_instrumentation(counting);
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), diesel::ConnectionError> {
        conn.ping()
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Whether a diesel error is a unique-key violation (a duplicate insert).
pub fn is_unique_violation(error: &diesel::result::Error) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

#[cfg(test)]
mod tests {
    use super::{Decided, plaintext_first_on_loopback as url_for_libpq};

    #[test]
    fn a_loopback_server_is_asked_for_plaintext_first() {
        for (given, expected) in [
            (
                "postgres://u@127.0.0.1:5432/db",
                "postgres://u@127.0.0.1:5432/db?sslmode=allow&gssencmode=disable",
            ),
            (
                "postgres://u@localhost/db?connect_timeout=5",
                "postgres://u@localhost/db?connect_timeout=5&sslmode=allow&gssencmode=disable",
            ),
            (
                "postgres://u@[::1]/db",
                "postgres://u@[::1]/db?sslmode=allow&gssencmode=disable",
            ),
            (
                "postgresql://u@127.0.0.2/db",
                "postgresql://u@127.0.0.2/db?sslmode=allow&gssencmode=disable",
            ),
            // Each is left to what says how to use it.
            (
                "postgres://u@127.0.0.1/db?sslmode=require",
                "postgres://u@127.0.0.1/db?sslmode=require&gssencmode=disable",
            ),
            (
                "postgres://u@127.0.0.1/db?gssencmode=require",
                "postgres://u@127.0.0.1/db?gssencmode=require&sslmode=allow",
            ),
        ] {
            assert_eq!(
                url_for_libpq(given, Decided::default()),
                expected,
                "{given}"
            );
        }
    }

    #[test]
    fn encryption_is_left_to_libpq_when_anything_says_how_to_use_it_or_the_server_is_elsewhere() {
        for given in [
            "postgres://u@127.0.0.1/db?sslmode=require&gssencmode=prefer",
            "postgres://u@127.0.0.1/db?service=bazaar",
            "postgres://u@db.internal:5432/db",
            "postgres://u@10.0.0.5/db",
            // A Unix socket: libpq never encrypts one.
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert_eq!(url_for_libpq(given, Decided::default()), given);
        }
        // `PGSERVICE`, or both `PGSSLMODE` and `PGGSSENCMODE`, in the environment.
        let loopback = "postgres://u@127.0.0.1/db";
        let both = Decided {
            tls: true,
            gss: true,
        };
        assert_eq!(url_for_libpq(loopback, both), loopback);
        let tls_only = Decided {
            tls: true,
            gss: false,
        };
        assert_eq!(
            url_for_libpq(loopback, tls_only),
            "postgres://u@127.0.0.1/db?gssencmode=disable"
        );
    }
}
