//! Throw-away databases for tests: a SQLite file in a temporary folder, or a uniquely named
//! PostgreSQL database created on the local server and dropped afterwards.
//!
//! PostgreSQL is found at `BAZAAR_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached, a test run under
//! CI (`CI=true`) fails loudly; elsewhere the test prints why and skips.

use diesel::connection::SimpleConnection;

use crate::config::DatabaseUrl;
use crate::db::{Backend, Database, Migrations, PoolOptions, establish_postgres};

pub const POSTGRES_URL_VAR: &str = "BAZAAR_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How many instances of a module a race test spreads its concurrent calls over: on
/// PostgreSQL 4, as 4 replicas of the module would be, each with its own `Database` (one
/// handle's writes run one after the other on its writer, so only separate handles' writes
/// surely run at once); on SQLite one, as a database file belongs to one process.
pub fn racing_instances(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => 4,
    }
}

#[derive(diesel::QueryableByName)]
struct Ended {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ended: i64,
}

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    url: DatabaseUrl,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    /// Held so that the folder (and the SQLite file in it) lives as long as the test.
    Folder {
        _dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl TestDatabase {
    /// A database of the given backend, or `None` (after printing why) when PostgreSQL is
    /// unreachable outside CI.
    pub fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres(),
        }
    }

    pub fn sqlite() -> Self {
        let folder = match tempfile::tempdir() {
            Ok(folder) => folder,
            Err(error) => panic!("cannot create a temporary folder: {error}"),
        };
        let url = DatabaseUrl::sqlite(folder.path().join("test.db"));
        Self {
            url,
            cleanup: Cleanup::Folder { _dir: folder },
        }
    }

    pub fn postgres() -> Option<Self> {
        let admin_url =
            std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut admin = match establish_postgres(&admin_url) {
            Ok(conn) => conn,
            Err(error) => {
                let message = format!(
                    "PostgreSQL at {admin_url} is unreachable ({error}); set {POSTGRES_URL_VAR}"
                );
                if std::env::var("CI").is_ok_and(|value| value == "true" || value == "1") {
                    panic!("{message}: PostgreSQL tests must run in CI");
                }
                eprintln!("SKIPPED: {message}");
                return None;
            }
        };
        let name = format!("bazaar_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(error) = admin.batch_execute(&format!("CREATE DATABASE {name}")) {
            panic!("cannot create test database {name}: {error}");
        }
        let url = match url::Url::parse(&admin_url) {
            Ok(mut url) => {
                url.set_path(&name);
                url.to_string()
            }
            Err(error) => panic!("{POSTGRES_URL_VAR} is not a URL: {error}"),
        };
        Some(Self {
            url: DatabaseUrl::new(url),
            cleanup: Cleanup::Postgres { admin_url, name },
        })
    }

    /// PostgreSQL only: makes the database refuse new connections and ends open ones, as
    /// if its server went away.
    pub fn refuse_connections(&self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            panic!("refuse_connections needs a PostgreSQL test database");
        };
        let mut admin = match establish_postgres(admin_url) {
            Ok(conn) => conn,
            Err(error) => panic!("cannot reach PostgreSQL: {error}"),
        };
        let statements = format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        );
        if let Err(error) = admin.batch_execute(&statements) {
            panic!("cannot cut {name} off: {error}");
        }
    }

    /// PostgreSQL only: ends every open connection to the database (as an operator's
    /// `pg_terminate_backend`, or a server restart, would); new connections are welcome.
    /// Answers how many were ended.
    pub fn terminate_connections(&self) -> i64 {
        use diesel::RunQueryDsl as _;
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            panic!("terminate_connections needs a PostgreSQL test database");
        };
        let mut admin = match establish_postgres(admin_url) {
            Ok(conn) => conn,
            Err(error) => panic!("cannot reach PostgreSQL: {error}"),
        };
        let ended = diesel::sql_query(format!(
            "SELECT count(*) AS ended FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()) AS terminated"
        ))
        .get_result::<Ended>(&mut admin);
        match ended {
            Ok(ended) => ended.ended,
            Err(error) => panic!("cannot end the connections to {name}: {error}"),
        }
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Applies a module's own `migrations` up to and including `version` (the chassis's
    /// are not applied), then runs `rows`: data stored as that schema laid it out, for a
    /// test that the migrations after it keep it. [`open`](Self::open) applies the rest.
    pub fn store_at_version(&self, migrations: Migrations, version: &str, rows: &str) {
        use diesel::Connection as _;
        match &self.cleanup {
            Cleanup::Folder { .. } => {
                let path = self.url.sqlite_path().unwrap_or_default();
                let mut conn = match diesel::SqliteConnection::establish(path) {
                    Ok(conn) => conn,
                    Err(error) => panic!("cannot open {path}: {error}"),
                };
                store_at_version(&mut conn, migrations.sqlite, version, rows);
            }
            Cleanup::Postgres { .. } => {
                let mut conn = match establish_postgres(self.url.expose()) {
                    Ok(conn) => conn,
                    Err(error) => panic!("cannot reach {}: {error}", self.url),
                };
                store_at_version(&mut conn, migrations.postgres, version, rows);
            }
        }
    }

    /// Opens a pool on this database and applies `migrations`.
    pub async fn open(&self, migrations: Migrations) -> Database {
        let options = PoolOptions {
            max_size: 16,
            ..PoolOptions::default()
        };
        let db = match Database::open(&self.url, options) {
            Ok(db) => db,
            Err(error) => panic!("cannot open test database {}: {error}", self.url),
        };
        if let Err(error) = db.migrate(migrations).await {
            panic!("cannot migrate test database {}: {error}", self.url);
        }
        db
    }
}

fn store_at_version<DB, C>(
    conn: &mut C,
    migrations: &diesel_migrations::EmbeddedMigrations,
    version: &str,
    rows: &str,
) where
    DB: diesel::backend::Backend,
    C: diesel_migrations::MigrationHarness<DB> + SimpleConnection,
    diesel_migrations::EmbeddedMigrations: diesel::migration::MigrationSource<DB>,
{
    let all = match diesel::migration::MigrationSource::<DB>::migrations(migrations) {
        Ok(all) => all,
        Err(error) => panic!("cannot list the migrations: {error}"),
    };
    // Creates diesel's table of applied migrations, which `run_migration` expects.
    match conn.applied_migrations() {
        Ok(applied) if applied.is_empty() => {}
        Ok(applied) => panic!("the database is not fresh: {applied:?}"),
        Err(error) => panic!("cannot read the applied migrations: {error}"),
    }
    let mut reached = false;
    for migration in &all {
        if let Err(error) = conn.run_migration(migration.as_ref()) {
            panic!("cannot apply {}: {error}", migration.name());
        }
        if migration.name().version().to_string() == version {
            reached = true;
            break;
        }
    }
    assert!(reached, "no migration {version}");
    if let Err(error) = conn.batch_execute(rows) {
        panic!("cannot store the rows: {error}");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup
            && let Ok(mut admin) = establish_postgres(admin_url)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// The admin token of [`module_app`] and [`TestServer`].
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The service token of [`module_app`] and [`TestServer`].
pub const SERVICE_TOKEN: &str = "test-service-token";

/// The app the composition root builds around one module — problem documents, extractor
/// settings, the tokens above — for `actix_web::test::init_service`.
pub fn module_app<M: crate::module::LocalModule + 'static>(
    module: M,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    use crate::http::{Tokens, configure_extractors, problem_for_error_responses};
    use crate::secret::Secret;
    actix_web::App::new()
        .wrap(problem_for_error_responses())
        .app_data(actix_web::web::Data::new(Tokens::new(
            Some(Secret::new(ADMIN_TOKEN)),
            Some(Secret::new(SERVICE_TOKEN)),
        )))
        .configure(configure_extractors)
        .configure(move |cfg| module.configure(cfg))
}

/// One module served over HTTP on a free port of 127.0.0.1, for its remote client.
#[derive(Debug)]
pub struct TestServer {
    pub url: url::Url,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    pub async fn start<M: crate::module::LocalModule + Clone + 'static>(module: &M) -> Self {
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => listener,
            Err(error) => panic!("cannot bind a free port: {error}"),
        };
        let address = match listener.local_addr() {
            Ok(address) => address,
            Err(error) => panic!("no local address: {error}"),
        };
        let module = module.clone();
        let server = match actix_web::HttpServer::new(move || module_app(module.clone()))
            .workers(1)
            .disable_signals()
            // `stop` closes every connection at once, kept-alive ones included.
            .shutdown_timeout(0)
            .listen(listener)
        {
            Ok(server) => server.run(),
            Err(error) => panic!("cannot listen: {error}"),
        };
        let handle = server.handle();
        tokio::spawn(server);
        let url = match url::Url::parse(&format!("http://{address}/")) {
            Ok(url) => url,
            Err(error) => panic!("bad url: {error}"),
        };
        Self { url, handle }
    }

    /// Answers once the server is gone: its worker stopped, every connection closed. (A
    /// stop that does not wait for the worker leaves a kept-alive connection answering a
    /// request or two more, which made "unavailable once stopped" tests flaky.)
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Asserts that `response` is a problem document (RFC 9457, `application/problem+json`)
/// with this status and code, and answers its body.
pub async fn assert_problem(
    response: actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, crate::problem::PROBLEM_JSON);
    let body: serde_json::Value = actix_web::test::read_body_json(response).await;
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// The samples of the Prometheus metric `name` in a `/metrics` body, summed by the value of
/// their label `label` (samples without it are left out): what tests and benches read of a
/// running process.
pub fn metric_by_label(
    text: &str,
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let mut by_label = std::collections::BTreeMap::new();
    let label = format!("{label}=\"");
    for line in text.lines() {
        let Some(labels) = line
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('{'))
        else {
            continue;
        };
        let Some(key) = labels
            .split(label.as_str())
            .nth(1)
            .and_then(|tail| tail.split('"').next())
        else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        *by_label.entry(key.to_owned()).or_default() += value;
    }
    by_label
}

#[cfg(feature = "nats")]
/// A `nats-server -js` of a test's own, on a free port of 127.0.0.1 with its own store
/// folder, so that the test can kill and restart it; never the machine's shared one.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<std::process::Child>,
    port: u16,
    store: tempfile::TempDir,
}

#[cfg(feature = "nats")]
impl NatsServer {
    /// Starts one, or answers `None` (after printing why) when `nats-server` is not
    /// installed outside CI; in CI that fails the test.
    pub fn start() -> Option<Self> {
        let store = match tempfile::tempdir() {
            Ok(store) => store,
            Err(error) => panic!("cannot create a store folder: {error}"),
        };
        let port = match std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
        {
            Ok(address) => address.port(),
            Err(error) => panic!("cannot find a free port: {error}"),
        };
        let mut server = Self {
            child: None,
            port,
            store,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(error) => {
                let message = format!("nats-server does not start ({error}); install it");
                if std::env::var("CI").is_ok_and(|value| value == "true" || value == "1") {
                    panic!("{message}: NATS tests must run in CI");
                }
                eprintln!("SKIPPED: {message}");
                None
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Ends the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store: what it had stored is back.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.spawn() {
            panic!("nats-server does not start again: {error}");
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        self.kill();
        Err(std::io::Error::other("it did not listen within 5 s"))
    }
}

#[cfg(feature = "nats")]
impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
