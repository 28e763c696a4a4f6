//! The one database code path, on SQLite and PostgreSQL: migrations, transactions that
//! commit or roll back, the writer's batches (one transaction for the writes waiting, a
//! failed write run again alone, a bounded queue), honest errors for a database that
//! cannot be reached, the thread a read runs on, and SQLite's background checkpoint.

mod common;

use chassis::config::DatabaseUrl;
use chassis::db::{Backend, Database, DbConnection, DbError, PoolOptions, Riders, SharedLookup};
use chassis::events::Events;
use chassis::testing::{TestDatabase, racing_instances};
use common::{
    MIGRATIONS, TestError, count_items, hold_the_writer, insert_item, open_instances,
    try_count_items,
};
use diesel::prelude::*;

/// The events in the outbox, not yet published (no relay runs in these tests).
async fn pending_events(db: &Database) -> i64 {
    chassis::events::outbox::stats(db)
        .await
        .expect("outbox stats")
        .pending
}

async fn commit_and_rollback(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    assert_eq!(db.backend(), backend);
    db.write(|conn| insert_item(conn, "kept").map_err(TestError::from))
        .await
        .expect("commits");
    let refused = db
        .write(|conn| {
            insert_item(conn, "dropped")?;
            Err::<(), _>(TestError::Refused)
        })
        .await;
    assert!(matches!(refused, Err(TestError::Refused)));
    assert_eq!(
        count_items(&db).await,
        1,
        "the refused transaction left nothing"
    );
    let duplicate = db
        .write(|conn| insert_item(conn, "kept").map_err(TestError::from))
        .await;
    match duplicate {
        Err(TestError::Db(DbError::Query(error))) => {
            assert!(chassis::db::is_unique_violation(&error))
        }
        other => panic!("expected a unique violation, got {other:?}"),
    }
    let again = db.migrate(MIGRATIONS).await.expect("migrates");
    assert!(again.is_empty(), "nothing left to apply: {again:?}");
}

#[tokio::test]
async fn transactions_commit_or_roll_back_on_sqlite() {
    commit_and_rollback(Backend::Sqlite).await;
}

#[tokio::test]
async fn transactions_commit_or_roll_back_on_postgres() {
    commit_and_rollback(Backend::Postgres).await;
}

#[tokio::test]
async fn sqlite_files_are_created_with_their_folder_in_wal_mode() {
    let folder = tempfile::tempdir().expect("tempdir");
    let path = folder.path().join("nested/data/module.db");
    let db = Database::open(&DatabaseUrl::sqlite(&path), PoolOptions::default()).expect("opens");
    let mode = db
        .read(|conn| {
            diesel::sql_query("PRAGMA journal_mode")
                .get_result::<JournalMode>(conn)
                .map_err(TestError::from)
        })
        .await
        .expect("reads");
    assert_eq!(mode.journal_mode, "wal");
    assert!(path.exists());
}

/// Committed pages reach the database file itself a moment later, with no further write
/// and far below the writer's own checkpoint threshold: the checkpointer thread copies the
/// WAL back.
#[tokio::test]
async fn committed_pages_are_checkpointed_into_the_database_file_in_the_background() {
    let folder = tempfile::tempdir().expect("tempdir");
    let path = folder.path().join("module.db");
    let db = Database::open(&DatabaseUrl::sqlite(&path), PoolOptions::default()).expect("opens");
    db.migrate(MIGRATIONS).await.expect("migrates");
    for n in 0..200 {
        db.write(move |conn| insert_item(conn, &format!("item-{n}")).map_err(TestError::from))
            .await
            .expect("writes");
    }
    // The 200 rows (and the tables) are committed to the WAL; until a checkpoint, the
    // database file holds at most its first page.
    let checkpointed = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 4 * 4096;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !checkpointed() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        checkpointed(),
        "the database file is still {} bytes",
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    );
    assert_eq!(count_items(&db).await, 200);
}

#[derive(QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    journal_mode: String,
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_and_never_becomes_a_sqlite_file() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let url = DatabaseUrl::new(format!("postgres://nobody@127.0.0.1:{port}/none"));
    let options = PoolOptions {
        max_size: 1,
        connection_timeout: std::time::Duration::from_millis(300),
    };
    let cwd = std::env::current_dir().expect("cwd");
    let outcome = Database::open(&url, options);
    assert!(
        matches!(outcome, Err(DbError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(
        !cwd.join("postgres:").exists(),
        "no SQLite file named after the URL"
    );
}

#[derive(QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

/// A PostgreSQL on this host is spoken to in plaintext when nothing asks for TLS (libpq's
/// default would negotiate it, at a price on every round trip): reads and writes alike.
#[tokio::test]
async fn a_postgres_on_a_loopback_address_is_reached_without_tls_unless_asked_for() {
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let url = url::Url::parse(test_db.url().expose()).expect("a URL");
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let decided = url.query_pairs().any(|(key, _)| key == "sslmode")
        || std::env::var_os("PGSSLMODE").is_some()
        || std::env::var_os("PGSERVICE").is_some();
    if !loopback || decided {
        let message = format!(
            "this test needs {} on a loopback address, without sslmode, PGSSLMODE or \
             PGSERVICE",
            chassis::testing::POSTGRES_URL_VAR
        );
        assert!(std::env::var("CI").is_err(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let db = test_db.open(MIGRATIONS).await;
    // Whether this connection is encrypted.
    fn encrypted(conn: &mut chassis::db::DbConnection) -> Result<bool, DbError> {
        let query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        chassis::per_backend!(conn, |conn| diesel::sql_query(query)
            .get_result::<Encrypted>(conn))
        .map(|row| row.ssl)
        .map_err(DbError::from)
    }
    let read = db.read(encrypted).await.expect("reads");
    let written = db.write(encrypted).await.expect("writes");
    assert!(!read && !written, "plaintext on loopback");
}

/// On PostgreSQL the writes spread round-robin over 4 handles on the one database, as 4
/// processes would make them; on SQLite they all go through one.
async fn failed_writes_leave_concurrent_ones_committed(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let instances = open_instances(&test_db, racing_instances(backend)).await;
    let db = instances[0].clone();
    // These may land in shared batches of a handle's writer (on SQLite the one writer):
    // each must still be its own transaction.
    let writes: Vec<_> = (0..40)
        .map(|n| {
            let db = instances[n % instances.len()].clone();
            tokio::spawn(async move {
                db.write(move |conn| {
                    insert_item(conn, &format!("item-{n}"))?;
                    if n % 2 == 1 {
                        return Err(TestError::Refused);
                    }
                    Ok(())
                })
                .await
            })
        })
        .collect();
    for (n, write) in writes.into_iter().enumerate() {
        let outcome = write.await.expect("task ran");
        assert_eq!(outcome.is_ok(), n % 2 == 0, "write {n}: {outcome:?}");
    }
    assert_eq!(count_items(&db).await, 20, "the even writes only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_writes_leave_concurrent_ones_committed_on_sqlite() {
    failed_writes_leave_concurrent_ones_committed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_writes_leave_concurrent_ones_committed_on_postgres() {
    failed_writes_leave_concurrent_ones_committed(Backend::Postgres).await;
}

/// Whether a read runs on the calling thread; `None` when the backend is not available
/// (outside CI only: `TestDatabase` fails the test under CI).
async fn a_read_runs_on_the_calling_thread(backend: Backend) -> Option<bool> {
    let test_db = TestDatabase::new(backend)?;
    let db = test_db.open(MIGRATIONS).await;
    let caller = std::thread::current().id();
    let reader = db
        .read(|_conn| Ok::<_, TestError>(std::thread::current().id()))
        .await
        .expect("reads");
    Some(reader == caller)
}

// On SQLite no hand-off to a blocking thread: the read is shorter than the hand-off.
#[tokio::test]
async fn a_sqlite_read_runs_on_the_calling_thread() {
    assert_eq!(
        a_read_runs_on_the_calling_thread(Backend::Sqlite).await,
        Some(true)
    );
}

// On PostgreSQL a round trip must not hold an executor thread.
#[tokio::test]
async fn a_postgres_read_runs_on_a_blocking_thread() {
    if let Some(on_caller) = a_read_runs_on_the_calling_thread(Backend::Postgres).await {
        assert!(!on_caller);
    }
}

/// Connections the server ended under the pool (`pg_terminate_backend`, a restart): the
/// read that meets a dead one runs again on a connection that answers — the pool drops the
/// dead ones met on the way and opens a fresh one — so no read fails for them. The
/// writer's connection was ended too: the next write finds it dead before its transaction
/// begins, and runs on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced_without_failing_a_read_or_a_write_on_postgres() {
    let Some(test_db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    db.write(|conn| insert_item(conn, "before").map_err(TestError::from))
        .await
        .expect("writes");
    // Several idle connections in the read pool, all of which the server then ends.
    let reads = (0..4).map(|_| count_items(&db));
    assert!(
        futures::future::join_all(reads)
            .await
            .iter()
            .all(|n| *n == 1)
    );
    assert!(
        test_db.terminate_connections() >= 2,
        "the pool and the writer had connections"
    );
    for _ in 0..4 {
        let read = try_count_items(&db).await;
        assert!(matches!(read, Ok(1)), "a read after the cut: {read:?}");
    }
    db.write(|conn| insert_item(conn, "after").map_err(TestError::from))
        .await
        .expect("writes again");
    assert_eq!(count_items(&db).await, 2);
}

/// PostgreSQL only: the connection dies under a transaction begun with the last commit
/// (the holder's, with six writes waiting) before its first write's statement: that
/// batch runs again on a fresh connection, as a batch whose `BEGIN` met a dead connection
/// would, and every write commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_with_a_commit_on_a_connection_that_then_died_runs_on_a_fresh_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRST_RUN: AtomicBool = AtomicBool::new(true);
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let test_db = std::sync::Arc::new(test_db);
    let db = test_db.open(MIGRATIONS).await;
    let cutter = {
        let test_db = std::sync::Arc::clone(&test_db);
        tokio::spawn(async move {
            // The holder commits at ~300 ms; the first of the six then sleeps until ~900 ms.
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            tokio::task::spawn_blocking(move || test_db.terminate_connections()).await
        })
    };
    let (answers, runs) = six_writes_in_one_batch_of(&db, |n, conn, _| {
        if n == 0 && FIRST_RUN.swap(false, Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(600));
        }
        insert_item(conn, &format!("item-{n}")).map_err(TestError::from)
    })
    .await;
    let ended = cutter.await.expect("joins").expect("cuts");
    assert!(ended >= 1, "the writer's connection was ended");
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(
        runs,
        [2, 1, 1, 1, 1, 1],
        "the first ran again, the others once"
    );
    assert_eq!(
        count_items(&db).await,
        7,
        "the holder's item and the six, once"
    );
}

/// Instances started at once on a fresh database all migrate it, in turns: none fails on
/// tables another one is creating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_migrating_one_fresh_database_at_once_all_succeed_on_postgres() {
    let Some(test_db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let instances: Vec<Database> = (0..4)
        .map(|_| Database::open(test_db.url(), PoolOptions::default()).expect("opens"))
        .collect();
    let migrations = instances
        .iter()
        .map(|db| {
            let db = db.clone();
            tokio::spawn(async move { db.migrate(MIGRATIONS).await })
        })
        .collect::<Vec<_>>();
    let mut applied_by = 0;
    for migration in futures::future::join_all(migrations).await {
        let applied = migration
            .expect("task ran")
            .expect("every instance migrates");
        if !applied.is_empty() {
            applied_by += 1;
        }
    }
    assert_eq!(
        applied_by, 1,
        "one instance applied the migrations, the others found none"
    );
    assert_eq!(count_items(&instances[0]).await, 0);
}

/// A flood of writes past what a database's writer may hold queued: the excess is refused
/// at once as unavailable (a 503) and writes nothing; every write accepted is committed.
async fn writes_past_the_writers_queue_are_refused_and_write_nothing(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    // Holds the writer, so that the flood queues behind it.
    let blocker = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|conn| {
                std::thread::sleep(std::time::Duration::from_millis(500));
                insert_item(conn, "blocker").map_err(TestError::from)
            })
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let flood: Vec<_> = (0..6000)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |conn| insert_item(conn, &format!("w{i}")).map_err(TestError::from))
                    .await
            })
        })
        .collect();
    let (mut written, mut refused) = (0_i64, 0);
    for write in futures::future::join_all(flood).await {
        match write.expect("task ran") {
            Ok(_) => written += 1,
            Err(TestError::Db(DbError::Unavailable(_))) => refused += 1,
            Err(other) => panic!("a refused write is Unavailable, got {other:?}"),
        }
    }
    blocker
        .await
        .expect("task ran")
        .expect("the blocker commits");
    assert!(refused > 0, "the queue is bounded");
    assert!(
        written >= 4096,
        "a full queue's worth is accepted: {written}"
    );
    assert_eq!(
        count_items(&db).await,
        written + 1,
        "exactly the accepted writes are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_writers_queue_are_refused_and_write_nothing_on_sqlite() {
    writes_past_the_writers_queue_are_refused_and_write_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_writers_queue_are_refused_and_write_nothing_on_postgres() {
    writes_past_the_writers_queue_are_refused_and_write_nothing(Backend::Postgres).await;
}

/// What each of six writes queued together answered, and how many times each ran: the
/// writer is held by a first write while the six queue behind it, so that they form one
/// batch; `work(n, …)` is the `n`-th write.
async fn six_writes_in_one_batch_of<T, F>(
    db: &Database,
    work: F,
) -> (Vec<Result<T, TestError>>, Vec<usize>)
where
    T: Send + 'static,
    F: Fn(usize, &mut DbConnection, &mut Events) -> Result<T, TestError> + Copy + Send + 'static,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let holder = hold_the_writer(db).await;
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..6).map(|_| AtomicUsize::new(0)).collect());
    // `join_all` polls them in order: they reach the writer's queue in this order.
    let writes = (0..6).map(|n| {
        let runs = Arc::clone(&runs);
        db.write_with_events(move |conn, events| {
            runs[n].fetch_add(1, Ordering::SeqCst);
            work(n, conn, events)
        })
    });
    let answers = futures::future::join_all(writes).await;
    holder.await.expect("task ran").expect("the holder commits");
    let runs = runs.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    (answers, runs)
}

/// The `BEGIN`s and `COMMIT`s of the holder's transaction and of the six writes' after it
/// ([`six_writes_in_one_batch_of`], none failing): four, but three on PostgreSQL, where
/// the holder's commit begins the six's transaction in the same round trip (`COMMIT;
/// BEGIN`), since they were waiting.
fn holder_and_batch_begin_and_commit(backend: Backend) -> u64 {
    match backend {
        Backend::Sqlite => 2 * 2,
        Backend::Postgres => 2 * 2 - 1,
    }
}

/// Six writes in one batch, each inserting its item and raising an event; `misbehave`
/// decides what write 3 does after its insert.
async fn six_writes_in_one_batch(
    db: &Database,
    misbehave: fn() -> Result<(), TestError>,
) -> (Vec<Result<(), TestError>>, Vec<usize>) {
    six_writes_in_one_batch_of(db, move |n, conn, events| {
        insert_item(conn, &format!("item-{n}"))?;
        events.push(common::event("batch", n));
        if n == 3 {
            misbehave()?;
        }
        Ok(())
    })
    .await
}

/// A write that fails in a batch rolls the batch back; the writes before it run again
/// without it, it runs again first in a transaction of its own (alone, its answer), and
/// the writes after it run then: every other write is committed exactly once.
async fn a_failed_write_is_run_again_alone_and_the_others_commit_once(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let (answers, runs) = six_writes_in_one_batch(&db, || Err(TestError::Refused)).await;
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.is_ok(), n != 3, "write {n}: {answer:?}");
    }
    assert!(matches!(answers[3], Err(TestError::Refused)));
    assert_eq!(runs, [2, 2, 2, 2, 1, 1], "runs of each write");
    assert_eq!(
        count_items(&db).await,
        6,
        "the holder and every write but the failed one, once"
    );
    assert_eq!(
        pending_events(&db).await,
        5,
        "the events of the writes committed, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_run_again_alone_and_the_others_commit_once_on_sqlite() {
    a_failed_write_is_run_again_alone_and_the_others_commit_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_run_again_alone_and_the_others_commit_once_on_postgres() {
    a_failed_write_is_run_again_alone_and_the_others_commit_once(Backend::Postgres).await;
}

/// A write that panics is answered as failed and writes nothing; the writes before it run
/// again (on a fresh connection) and the others commit, each once.
async fn a_panicking_write_fails_alone(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let (answers, runs) = six_writes_in_one_batch(&db, || panic!("a bug in a write")).await;
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.is_ok(), n != 3, "write {n}: {answer:?}");
    }
    assert!(
        matches!(&answers[3], Err(TestError::Db(DbError::Task(reason))) if reason.contains("panicked")),
        "{:?}",
        answers[3]
    );
    assert_eq!(runs, [2, 2, 2, 1, 1, 1], "runs of each write");
    assert_eq!(count_items(&db).await, 6);
    assert_eq!(pending_events(&db).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_write_fails_alone_on_sqlite() {
    a_panicking_write_fails_alone(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_write_fails_alone_on_postgres() {
    a_panicking_write_fails_alone(Backend::Postgres).await;
}

/// Writes are committed together: a batch of writes is one transaction on the database, and
/// the events they raised one insert into its outbox; on PostgreSQL a transaction that
/// follows another at once is begun with its commit.
async fn writes_waiting_together_commit_in_one_transaction(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let before = db.work_counts();
    let (answers, _) = six_writes_in_one_batch(&db, || Ok(())).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let after = db.work_counts();
    assert_eq!(
        after.transactions - before.transactions,
        2,
        "the holder's transaction, and one for the six writes"
    );
    assert_eq!(after.writes - before.writes, 7, "the holder and the six");
    // Each item's insert, one insert of the six events, and `BEGIN` and `COMMIT` of each
    // transaction: no savepoints.
    assert_eq!(
        after.statements - before.statements,
        7 + 1 + holder_and_batch_begin_and_commit(backend)
    );
    assert_eq!(pending_events(&db).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_together_commit_in_one_transaction_on_sqlite() {
    writes_waiting_together_commit_in_one_transaction(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_together_commit_in_one_transaction_on_postgres() {
    writes_waiting_together_commit_in_one_transaction(Backend::Postgres).await;
}

/// What a `SELECT count(*) AS count …` answers.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// PostgreSQL only: a transaction is begun ahead with a commit only for a write already
/// waiting, so a writer with nothing to do leaves no transaction open on its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_nothing_waiting_leaves_no_transaction_open_on_postgres() {
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    // The holder's commit begins the six's transaction (they were waiting); nothing waits
    // behind theirs.
    let (answers, _) = six_writes_in_one_batch(&db, || Ok(())).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let open = db
        .read(|conn| {
            let query = "SELECT count(*) AS count FROM pg_stat_activity \
                         WHERE datname = current_database() AND state LIKE 'idle in transaction%'";
            chassis::per_backend!(conn, |conn| diesel::sql_query(query)
                .get_result::<Count>(conn))
            .map_err(DbError::from)
        })
        .await
        .expect("reads");
    assert_eq!(open.count, 0, "connections idle in a transaction");
    assert_eq!(count_items(&db).await, 7, "the holder's item and the six");
}

/// An item a write leaves to its batch.
#[derive(Insertable)]
#[diesel(table_name = common::items)]
struct DeferredItem {
    id: String,
    n: i64,
}

use common::items;
chassis::deferred_row!(DeferredItem => items { id, n });

/// Six writes in one batch, the `n`-th leaving the item `ids[n]` to it: what each
/// answered (whether its item went in, or its key was taken: the write's answer) and how
/// many times each ran.
async fn six_deferring_writes_in_one_batch(
    db: &Database,
    ids: [&'static str; 6],
) -> (Vec<Result<bool, TestError>>, Vec<usize>) {
    let (answers, runs) = six_writes_in_one_batch_of(db, move |n, _conn, at_commit| {
        at_commit.insert_at_commit(DeferredItem {
            id: ids[n].to_owned(),
            n: 1,
        });
        Ok(())
    })
    .await;
    let answers = answers
        .into_iter()
        .map(|answer| match answer {
            Ok(()) => Ok(true),
            Err(TestError::Db(DbError::Query(error)))
                if chassis::db::is_unique_violation(&error) =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
        })
        .collect();
    (answers, runs)
}

/// Rows the writes of a batch leave to it go in together in the batch's transaction,
/// before its commit: on PostgreSQL in one multi-row `INSERT`.
async fn rows_left_to_a_batch_go_in_before_its_commit(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let before = db.work_counts();
    let (answers, runs) =
        six_deferring_writes_in_one_batch(&db, ["a", "b", "c", "d", "e", "f"]).await;
    assert!(
        answers.iter().all(|answer| matches!(answer, Ok(true))),
        "{answers:?}"
    );
    assert_eq!(runs, [1; 6], "each write ran once");
    let after = db.work_counts();
    assert_eq!(after.transactions - before.transactions, 2);
    // The holder's insert, `BEGIN` and `COMMIT` of each transaction, and the six items:
    // one multi-row insert on PostgreSQL (a round trip for them all), the one-row insert
    // the connection keeps prepared six times on SQLite (no round trip to save there).
    let item_inserts = match backend {
        Backend::Postgres => 1,
        Backend::Sqlite => 6,
    };
    assert_eq!(
        after.statements - before.statements,
        1 + holder_and_batch_begin_and_commit(backend) + item_inserts
    );
    assert_eq!(count_items(&db).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_to_a_batch_go_in_before_its_commit_on_sqlite() {
    rows_left_to_a_batch_go_in_before_its_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_to_a_batch_go_in_before_its_commit_on_postgres() {
    rows_left_to_a_batch_go_in_before_its_commit(Backend::Postgres).await;
}

/// A transaction's new rows of every kind and its events' outbox rows go in together: on
/// PostgreSQL as one statement; on SQLite kind by kind, each row through its prepared
/// one-row `INSERT`, the events in one.
async fn new_rows_of_every_kind_and_events_go_in_together(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let before = db.work_counts();
    db.write_with_events(|_conn, at_commit| {
        for id in ["a", "b"] {
            at_commit.insert_at_commit(DeferredItem {
                id: id.to_owned(),
                n: 1,
            });
        }
        at_commit.push(common::event("k", 1));
        at_commit.push(common::event("k", 2));
        Ok::<_, TestError>(())
    })
    .await
    .expect("commits");
    let after = db.work_counts();
    let (rows, begin_and_commit) = match backend {
        Backend::Postgres => (1, 2),
        Backend::Sqlite => (2 + 1, 2),
    };
    assert_eq!(
        after.statements - before.statements,
        rows + begin_and_commit
    );
    assert_eq!(count_items(&db).await, 2);
    let events: i64 = db
        .read(|conn| {
            chassis::per_backend!(conn, |conn| diesel::sql_query(
                "SELECT count(*) AS count FROM outbox"
            )
            .get_result::<Count>(conn))
            .map(|events| events.count)
            .map_err(TestError::from)
        })
        .await
        .expect("reads");
    assert_eq!(events, 2, "both events in the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_of_every_kind_and_events_go_in_together_on_sqlite() {
    new_rows_of_every_kind_and_events_go_in_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rows_of_every_kind_and_events_go_in_together_on_postgres() {
    new_rows_of_every_kind_and_events_go_in_together(Backend::Postgres).await;
}

/// On PostgreSQL a batch's new rows are one statement whose text does not depend on how
/// many rows there are (`chassis::db::InsertColumns`): batches of two, three and five
/// items, with one, two and three events, all run the one statement the connection keeps
/// prepared, and the outbox holds the events in the order they were raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_new_rows_run_one_statement_kept_prepared_whatever_their_number_on_postgres() {
    let Some(test_db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let mut raised = 0;
    for (batch, items) in [2, 3, 5].into_iter().enumerate() {
        let first_event = raised;
        raised += batch + 1;
        db.write_with_events(move |_conn, at_commit| {
            for item in 0..items {
                at_commit.insert_at_commit(DeferredItem {
                    id: format!("b{batch}-{item}"),
                    n: 1,
                });
            }
            for n in first_event..first_event + batch + 1 {
                at_commit.push(common::event("k", n));
            }
            Ok::<_, TestError>(())
        })
        .await
        .expect("commits");
    }
    let kept = kept_statements(&db, "WITH part0 AS (INSERT %").await;
    assert_eq!(
        kept,
        [Kept { parts: 2, runs: 3 }],
        "one statement (the items and the events) for the three batches"
    );
    assert_eq!(count_items(&db).await, 10);
    let payloads: Vec<String> = db
        .read(|conn| outbox_envelopes_in_order(conn).map_err(TestError::from))
        .await
        .expect("reads");
    let numbers: Vec<u64> = payloads
        .iter()
        .map(|envelope| {
            let envelope: serde_json::Value = serde_json::from_str(envelope).expect("JSON");
            envelope["payload"]["n"].as_u64().expect("a number")
        })
        .collect();
    assert_eq!(
        numbers,
        (0..raised as u64).collect::<Vec<_>>(),
        "in order raised"
    );
}

fn outbox_envelopes_in_order(conn: &mut DbConnection) -> QueryResult<Vec<String>> {
    #[derive(diesel::QueryableByName)]
    struct Envelope {
        #[diesel(sql_type = diesel::sql_types::Text)]
        envelope: String,
    }
    let query = diesel::sql_query("SELECT envelope FROM outbox ORDER BY seq");
    let rows: Vec<Envelope> = chassis::per_backend!(conn, |conn| query.load(conn))?;
    Ok(rows.into_iter().map(|row| row.envelope).collect())
}

/// Two writes of a batch leave rows with one key: the batch's insert fails, and every
/// write runs again alone, so that the second is answered that the key is taken — as it
/// would have been without the deferral — and the others commit once.
async fn a_row_left_to_a_batch_that_breaks_a_key_fails_only_its_write(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let (answers, runs) =
        six_deferring_writes_in_one_batch(&db, ["a", "b", "twice", "c", "twice", "d"]).await;
    let answers: Vec<bool> = answers
        .into_iter()
        .map(|answer| answer.expect("every write answers"))
        .collect();
    assert_eq!(answers, [true, true, true, true, false, true]);
    assert_eq!(runs, [2; 6], "the batch, then each write alone");
    assert_eq!(
        count_items(&db).await,
        6,
        "the holder and five distinct items"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_left_to_a_batch_that_breaks_a_key_fails_only_its_write_on_sqlite() {
    a_row_left_to_a_batch_that_breaks_a_key_fails_only_its_write(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_left_to_a_batch_that_breaks_a_key_fails_only_its_write_on_postgres() {
    a_row_left_to_a_batch_that_breaks_a_key_fails_only_its_write(Backend::Postgres).await;
}

/// An increment of an item's `n` a write leaves to its batch: the increments of one item
/// add up, and on PostgreSQL a batch's go in as one statement (`chassis::db::Together`).
#[derive(Clone, Copy)]
struct AddToItem {
    id: &'static str,
    by: i64,
}

impl chassis::db::DeferredUpdate for AddToItem {
    fn update_all(
        conn: &mut DbConnection,
        adds: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        use common::items;
        let mut by_item = std::collections::BTreeMap::new();
        for add in adds {
            *by_item.entry(add.id).or_insert(0_i64) += add.by;
        }
        let statements = by_item
            .iter()
            .map(|(id, by)| {
                chassis::db::update(items::table, items::id.eq(*id), items::n.eq(items::n + *by))
                    .returning(items::id)
            })
            .collect();
        let changed: Vec<String> = chassis::db::update_all(conn, statements, riders)?;
        chassis::db::all_changed(changed.len(), by_item.len())
    }
}

/// Six writes in one batch, the `n`-th adding `n + 1` to the item `ids[n]`, left to the
/// batch: what each answered (`false`: its item was not there, the write's answer) and
/// how many times each ran.
async fn six_updating_writes_in_one_batch(
    db: &Database,
    ids: [&'static str; 6],
) -> (Vec<Result<bool, TestError>>, Vec<usize>) {
    let (answers, runs) = six_writes_in_one_batch_of(db, move |n, _conn, at_commit| {
        at_commit.update_at_commit(AddToItem {
            id: ids[n],
            by: n as i64 + 1,
        });
        Ok(())
    })
    .await;
    let answers = answers
        .into_iter()
        .map(|answer| match answer {
            Ok(()) => Ok(true),
            Err(TestError::Db(DbError::NotApplied)) => Ok(false),
            Err(error) => Err(error),
        })
        .collect();
    (answers, runs)
}

async fn item_n(db: &Database, id: &'static str) -> i64 {
    db.read(move |conn| {
        common::items::table
            .find(id)
            .select(common::items::n)
            .get_result::<i64>(conn)
            .map_err(TestError::from)
    })
    .await
    .expect("reads")
}

/// Updates the writes of a batch leave to it are applied in the batch's transaction,
/// before its commit, one change per row however many writes changed it: on PostgreSQL in
/// one statement.
async fn updates_left_to_a_batch_are_applied_before_its_commit(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    for id in ["x", "y"] {
        db.write(move |conn| insert_item(conn, id).map_err(TestError::from))
            .await
            .expect("writes");
    }
    let before = db.work_counts();
    let (answers, runs) =
        six_updating_writes_in_one_batch(&db, ["x", "y", "x", "x", "y", "x"]).await;
    assert!(
        answers.iter().all(|answer| matches!(answer, Ok(true))),
        "{answers:?}"
    );
    assert_eq!(runs, [1; 6], "each write ran once");
    let after = db.work_counts();
    assert_eq!(after.transactions - before.transactions, 2);
    // The holder's insert, `BEGIN` and `COMMIT` of each transaction, and the updates: one
    // statement for both items on PostgreSQL, one prepared statement an item on SQLite.
    let item_updates = match backend {
        Backend::Postgres => 1,
        Backend::Sqlite => 2,
    };
    assert_eq!(
        after.statements - before.statements,
        1 + holder_and_batch_begin_and_commit(backend) + item_updates
    );
    assert_eq!(item_n(&db, "x").await, 1 + 1 + 3 + 4 + 6);
    assert_eq!(item_n(&db, "y").await, 1 + 2 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_left_to_a_batch_are_applied_before_its_commit_on_sqlite() {
    updates_left_to_a_batch_are_applied_before_its_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_left_to_a_batch_are_applied_before_its_commit_on_postgres() {
    updates_left_to_a_batch_are_applied_before_its_commit(Backend::Postgres).await;
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Kept {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    parts: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    runs: i64,
}

/// The statements the writer's session (the one that runs the batches) keeps prepared
/// whose text is `LIKE` `pattern`: each one's number of parts and how often it ran, by
/// parts.
async fn kept_statements(db: &Database, pattern: &'static str) -> Vec<Kept> {
    db.write(move |conn| {
        let query = diesel::sql_query(
            "SELECT ((length(statement) - length(replace(statement, ' AS (', ''))) / 5)::bigint \
             AS parts, generic_plans + custom_plans AS runs \
             FROM pg_prepared_statements WHERE statement LIKE $1 ORDER BY parts",
        )
        .bind::<diesel::sql_types::Text, _>(pattern);
        chassis::per_backend!(conn, |conn| query.clone().load(conn)).map_err(DbError::from)
    })
    .await
    .expect("reads")
}

/// A transaction that both updates and inserts: on PostgreSQL its new rows and events ride
/// with its last update (one statement for all three), on SQLite each goes its own way;
/// on both every change is made once.
async fn a_batchs_new_rows_ride_with_its_last_update(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    db.write(|conn| insert_item(conn, "old").map_err(TestError::from))
        .await
        .expect("inserts");
    let before = db.work_counts();
    db.write_with_events(|_conn, at_commit| {
        at_commit.update_at_commit(AddToItem { id: "old", by: 4 });
        at_commit.insert_at_commit(DeferredItem {
            id: "new".to_owned(),
            n: 1,
        });
        at_commit.push(common::event("k", 1));
        Ok::<_, TestError>(())
    })
    .await
    .expect("commits");
    let after = db.work_counts();
    let statements = match backend {
        Backend::Postgres => 1,
        // The update, the item, the event.
        Backend::Sqlite => 3,
    };
    assert_eq!(after.statements - before.statements, statements + 2);
    let items: Vec<(String, i64)> = db
        .read(|conn| {
            common::items::table
                .order(common::items::id)
                .select((common::items::id, common::items::n))
                .load(conn)
                .map_err(TestError::from)
        })
        .await
        .expect("reads");
    assert_eq!(items, [("new".to_owned(), 1), ("old".to_owned(), 5)]);
    let events = db
        .read(|conn| outbox_envelopes_in_order(conn).map_err(TestError::from))
        .await
        .expect("reads");
    assert_eq!(events.len(), 1, "the event in the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_new_rows_ride_with_its_last_update_on_sqlite() {
    a_batchs_new_rows_ride_with_its_last_update(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_new_rows_ride_with_its_last_update_on_postgres() {
    a_batchs_new_rows_ride_with_its_last_update(Backend::Postgres).await;
}

/// On PostgreSQL a batch's updates of a kind are one statement the connection keeps
/// prepared (one a number of parts): run again, it is neither parsed nor planned anew;
/// one of more parts than `KEPT_TOGETHER` is not kept (the cache stays bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_updates_of_a_kind_are_one_statement_kept_prepared_on_postgres() {
    let Some(test_db) = TestDatabase::postgres() else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    const IDS: [&str; 40] = [
        "i00", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11", "i12",
        "i13", "i14", "i15", "i16", "i17", "i18", "i19", "i20", "i21", "i22", "i23", "i24", "i25",
        "i26", "i27", "i28", "i29", "i30", "i31", "i32", "i33", "i34", "i35", "i36", "i37", "i38",
        "i39",
    ];
    db.write(|conn| {
        for id in IDS {
            insert_item(conn, id)?;
        }
        Ok::<_, TestError>(())
    })
    .await
    .expect("inserts");
    let too_many = chassis::db::KEPT_TOGETHER + 1;
    for items in [2, 2, 3, too_many] {
        db.write_with_events(move |_conn, at_commit| {
            for id in &IDS[..items] {
                at_commit.update_at_commit(AddToItem { id, by: 1 });
            }
            Ok::<_, TestError>(())
        })
        .await
        .expect("commits");
    }
    let kept = kept_statements(&db, "WITH part0 AS (%").await;
    assert_eq!(
        kept,
        [Kept { parts: 2, runs: 2 }, Kept { parts: 3, runs: 1 }],
        "one statement a number of parts, the second batch of two running the first's"
    );
    let n: Vec<i64> = db
        .read(|conn| {
            common::items::table
                .order(common::items::id)
                .select(common::items::n)
                .load(conn)
                .map_err(TestError::from)
        })
        .await
        .expect("reads");
    let expected: Vec<i64> = (0..IDS.len())
        .map(|at| {
            1 + [2, 2, 3, too_many]
                .iter()
                .filter(|items| at < **items)
                .count() as i64
        })
        .collect();
    assert_eq!(n, expected, "every update applied once");
}

/// A write of a batch leaves an update of a row that is not there: the batch's updates
/// fail, and every write runs again alone, so that that write is answered `NotFound` and
/// the others' updates commit once.
async fn an_update_left_to_a_batch_whose_row_is_gone_fails_only_its_write(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    db.write(|conn| insert_item(conn, "x").map_err(TestError::from))
        .await
        .expect("writes");
    let (answers, runs) =
        six_updating_writes_in_one_batch(&db, ["x", "x", "gone", "x", "x", "x"]).await;
    let answers: Vec<bool> = answers
        .into_iter()
        .map(|answer| answer.expect("every write answers"))
        .collect();
    assert_eq!(answers, [true, true, false, true, true, true]);
    assert_eq!(runs, [2; 6], "the batch, then each write alone");
    assert_eq!(item_n(&db, "x").await, 1 + 1 + 2 + 4 + 5 + 6, "once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_left_to_a_batch_whose_row_is_gone_fails_only_its_write_on_sqlite() {
    an_update_left_to_a_batch_whose_row_is_gone_fails_only_its_write(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_left_to_a_batch_whose_row_is_gone_fails_only_its_write_on_postgres() {
    an_update_left_to_a_batch_whose_row_is_gone_fails_only_its_write(Backend::Postgres).await;
}

/// How many writes of the transaction counted themselves.
#[derive(Default)]
struct Counted(usize);

/// The writes of one transaction share its memo, and a transaction rolled back takes its
/// memo with it: six writes of one batch count themselves in it; then, in a batch whose
/// fourth write fails, the three before it run again in a transaction of their own and
/// count from one again, and the two after it count in theirs.
async fn the_writes_of_a_transaction_share_its_memo(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let (answers, runs) = six_writes_in_one_batch_of(&db, |_, _conn, events| {
        let counted = events.transaction_memo::<Counted>();
        counted.0 += 1;
        Ok(counted.0)
    })
    .await;
    let answers: Vec<usize> = answers
        .into_iter()
        .map(|answer| answer.expect("counted"))
        .collect();
    assert_eq!(answers, [1, 2, 3, 4, 5, 6]);
    assert_eq!(runs, [1; 6]);

    // A database of its own: the writer's holder inserts its item again.
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let (answers, runs) = six_writes_in_one_batch_of(&db, |n, _conn, events| {
        let counted = events.transaction_memo::<Counted>();
        counted.0 += 1;
        if n == 3 {
            return Err(TestError::Refused);
        }
        Ok(counted.0)
    })
    .await;
    let answers: Vec<Option<usize>> = answers.into_iter().map(Result::ok).collect();
    assert_eq!(
        answers,
        [Some(1), Some(2), Some(3), None, Some(1), Some(2)],
        "each transaction counts from one"
    );
    assert_eq!(runs, [2, 2, 2, 2, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writes_of_a_transaction_share_its_memo_on_sqlite() {
    the_writes_of_a_transaction_share_its_memo(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writes_of_a_transaction_share_its_memo_on_postgres() {
    the_writes_of_a_transaction_share_its_memo(Backend::Postgres).await;
}

/// What a write left in its transaction's memo.
#[derive(Default, Clone, Debug, PartialEq)]
struct Left(Option<&'static str>);

/// The items there, and what the memo holds, read with [`Database::read_in_batch`].
async fn read_the_memo(db: &Database) -> Result<(i64, Left), TestError> {
    db.read_in_batch(|conn, memo| {
        let items: i64 = common::items::table
            .count()
            .get_result(conn)
            .map_err(TestError::from)?;
        Ok::<_, TestError>((items, memo.get_or_default::<Left>().clone()))
    })
    .await
}

/// A read that may go with the writer's batch: with the writer idle, it is a read of its
/// own (no transaction begun for it); on PostgreSQL, with writes waiting, it runs in their
/// batch and sees the memo the write before it left; on SQLite it never does (a read
/// there costs no round trip to save).
async fn a_read_in_batch_joins_a_busy_writers_batch_on_postgres_only(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    let before = db.work_counts();
    let (items, left) = read_the_memo(&db).await.expect("reads");
    assert_eq!((items, left), (0, Left(None)));
    let after = db.work_counts();
    assert_eq!(
        (
            after.writes - before.writes,
            after.transactions - before.transactions
        ),
        (0, 0),
        "an idle writer's: a read of its own"
    );

    let holder = hold_the_writer(&db).await;
    let write = db.write_with_events(|conn, events| {
        insert_item(conn, "written")?;
        events.transaction_memo::<Left>().0 = Some("by the write");
        Ok::<_, TestError>(())
    });
    let (written, read) = futures::join!(write, read_the_memo(&db));
    written.expect("writes");
    holder.await.expect("task ran").expect("the holder commits");
    let (items, left) = read.expect("reads");
    match backend {
        Backend::Postgres => {
            assert_eq!(
                left,
                Left(Some("by the write")),
                "in the write's transaction"
            );
            assert_eq!(
                items, 2,
                "the holder's item and the write's, in its transaction"
            );
        }
        Backend::Sqlite => {
            assert_eq!(left, Left(None), "a read of its own");
            assert_eq!(items, 0, "read at once, while the holder had not committed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_batch_joins_a_busy_writers_batch_on_postgres_only_on_sqlite() {
    a_read_in_batch_joins_a_busy_writers_batch_on_postgres_only(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_batch_joins_a_busy_writers_batch_on_postgres_only_on_postgres() {
    a_read_in_batch_joins_a_busy_writers_batch_on_postgres_only(Backend::Postgres).await;
}

/// A server that refuses connections (gone, or a database taken offline): a write, and a
/// read, are answered unavailable (a 503) within the connection timeout, never left
/// waiting on a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_postgres_refuses_connections_is_unavailable_within_the_timeout() {
    let Some(test_db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let options = PoolOptions {
        max_size: 2,
        connection_timeout: std::time::Duration::from_millis(500),
    };
    let db = Database::open(test_db.url(), options).expect("opens");
    db.migrate(MIGRATIONS).await.expect("migrates");
    db.write(|conn| insert_item(conn, "before").map_err(TestError::from))
        .await
        .expect("writes");
    test_db.refuse_connections();
    let started = std::time::Instant::now();
    let written = db
        .write(|conn| insert_item(conn, "during").map_err(TestError::from))
        .await;
    unavailable_within_the_timeout("a write", written, started);
    let started = std::time::Instant::now();
    unavailable_within_the_timeout("a read", try_count_items(&db).await, started);
}

/// `outcome` is `Unavailable`, answered within the connection timeout of the call started
/// at `started` (plus slack), not left waiting.
fn unavailable_within_the_timeout<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, TestError>,
    started: std::time::Instant,
) {
    assert!(
        matches!(outcome, Err(TestError::Db(DbError::Unavailable(_)))),
        "{what}: {outcome:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{what} answered within the timeout, not left waiting: {:?}",
        started.elapsed()
    );
}

/// The items of `ids` found, with their `n`; refuses any lookup that asks for "poison".
fn items_by_id(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<(String, i64)>> {
    if ids.iter().any(|id| id == "poison") {
        return Err(diesel::result::Error::NotFound);
    }
    common::items::table
        .filter(common::items::id.eq_any(ids))
        .select((common::items::id, common::items::n))
        .load(conn)
}

/// Twenty lookups asked for together are one statement on PostgreSQL (one each on SQLite,
/// where a read is no round trip), and each caller gets the rows of its own keys only,
/// none for a key with no row. A failed read answers its callers with the error, and the
/// next lookup reads again. A current-thread runtime: every lookup has asked before the
/// read's task runs, so what is shared does not depend on timing.
async fn concurrent_lookups_share_one_read(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    db.write(|conn| {
        for n in 0..20 {
            insert_item(conn, &format!("item-{n}"))?;
        }
        Ok::<_, TestError>(())
    })
    .await
    .expect("stored");
    let lookup = SharedLookup::new(db.clone(), items_by_id);
    let before = db.work_counts().statements;
    let answers = futures::future::join_all((0..20).map(|n| {
        let lookup = lookup.clone();
        async move {
            let keys = [format!("item-{n}"), format!("missing-{n}")];
            lookup.get(&keys).await.expect("looked up")
        }
    }))
    .await;
    let statements = db.work_counts().statements - before;
    for (n, answer) in answers.iter().enumerate() {
        let expected: std::collections::HashMap<String, i64> =
            [(format!("item-{n}"), 1)].into_iter().collect();
        assert_eq!(
            answer, &expected,
            "lookup {n}: its own row, none for the missing key"
        );
    }
    let expected = match backend {
        Backend::Postgres => 1,
        Backend::Sqlite => 20,
    };
    assert_eq!(statements, expected, "statements for twenty lookups");

    let poisoned = futures::future::join_all([
        lookup.get(&["item-1".to_owned()]),
        lookup.get(&["poison".to_owned()]),
    ])
    .await;
    let failed = poisoned.iter().filter(|answer| answer.is_err()).count();
    let expected_failures = match backend {
        // Read together: the failure is both callers'.
        Backend::Postgres => 2,
        Backend::Sqlite => 1,
    };
    assert_eq!(failed, expected_failures, "{poisoned:?}");
    let again = lookup
        .get(&["item-2".to_owned()])
        .await
        .expect("reads again");
    assert_eq!(again.get("item-2"), Some(&1));
}

#[tokio::test]
async fn concurrent_lookups_share_one_read_on_sqlite() {
    concurrent_lookups_share_one_read(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_lookups_share_one_read_on_postgres() {
    concurrent_lookups_share_one_read(Backend::Postgres).await;
}
