//! The one database code path, on SQLite and PostgreSQL: migrations, transactions that
//! commit or roll back, honest errors for a database that cannot be reached, the thread a
//! read runs on, and SQLite's background checkpoint.

mod common;

use chassis::config::DatabaseUrl;
use chassis::db::{Backend, Database, DbConnection, DbError, PoolOptions};
use chassis::testing::TestDatabase;
use common::{MIGRATIONS, TestError, items};
use diesel::prelude::*;

fn insert(conn: &mut DbConnection, id: &str) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values((items::id.eq(id), items::n.eq(1_i64)))
        .execute(conn)
}

async fn count(db: &Database) -> i64 {
    db.read(|conn| {
        items::table
            .count()
            .get_result::<i64>(conn)
            .map_err(TestError::from)
    })
    .await
    .expect("counts")
}

async fn commit_and_rollback(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    assert_eq!(db.backend(), backend);
    db.write(|conn| insert(conn, "kept").map_err(TestError::from))
        .await
        .expect("commits");
    let refused = db
        .write(|conn| {
            insert(conn, "dropped")?;
            Err::<(), _>(TestError::Refused)
        })
        .await;
    assert!(matches!(refused, Err(TestError::Refused)));
    assert_eq!(count(&db).await, 1, "the refused transaction left nothing");
    let duplicate = db
        .write(|conn| insert(conn, "kept").map_err(TestError::from))
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
        db.write(move |conn| insert(conn, &format!("item-{n}")).map_err(TestError::from))
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
    assert_eq!(count(&db).await, 200);
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

async fn failed_writes_leave_concurrent_ones_committed(backend: Backend) {
    let Some(test_db) = TestDatabase::new(backend) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    // On SQLite these land in shared batches of the one writer: each must still be its own
    // transaction.
    let writes: Vec<_> = (0..40)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |conn| {
                    insert(conn, &format!("item-{n}"))?;
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
    assert_eq!(count(&db).await, 20, "the even writes only");
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
/// read that meets one is told the database is unavailable (a 503, never a 500), and the
/// pool drops the dead connections and opens fresh ones by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_unavailable_and_the_pool_recovers_on_postgres() {
    let Some(test_db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let db = test_db.open(MIGRATIONS).await;
    db.write(|conn| insert(conn, "before").map_err(TestError::from))
        .await
        .expect("writes");
    assert!(
        test_db.terminate_connections() >= 1,
        "the pool had connections"
    );
    let mut unavailable = 0;
    for _ in 0..20 {
        let read = db
            .read(|conn| {
                items::table
                    .count()
                    .get_result::<i64>(conn)
                    .map_err(TestError::from)
            })
            .await;
        match read {
            Ok(count) => {
                assert_eq!(count, 1);
                break;
            }
            Err(TestError::Db(DbError::Unavailable(_))) => unavailable += 1,
            Err(other) => panic!("a lost connection must be Unavailable, got {other:?}"),
        }
    }
    assert!(
        unavailable <= 16,
        "every dead connection is dropped once met"
    );
    assert_eq!(count(&db).await, 1, "the pool recovered");
    db.write(|conn| insert(conn, "after").map_err(TestError::from))
        .await
        .expect("writes again");
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
    assert_eq!(count(&instances[0]).await, 0);
}

/// A flood of writes past what the SQLite writer may hold queued: the excess is refused at
/// once as unavailable (a 503) and writes nothing; every write accepted is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_sqlite_writers_queue_are_refused_and_write_nothing() {
    let test_db = TestDatabase::sqlite();
    let db = test_db.open(MIGRATIONS).await;
    // Holds the writer, so that the flood queues behind it.
    let blocker = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|conn| {
                std::thread::sleep(std::time::Duration::from_millis(500));
                insert(conn, "blocker").map_err(TestError::from)
            })
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let flood: Vec<_> = (0..6000)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |conn| insert(conn, &format!("w{i}")).map_err(TestError::from))
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
        count(&db).await,
        written + 1,
        "exactly the accepted writes are stored"
    );
}
