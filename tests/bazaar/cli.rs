//! The real binary, as a user runs it: `config`, `migrate`, `demo`, and `serve` stopping
//! gracefully on SIGTERM with a request in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl, SqliteConnection};

const BINARY: &str = env!("CARGO_BIN_EXE_bazaar");

fn bazaar(data: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(data)
        .env_remove("BAZAAR_CONFIG")
        .env("BAZAAR__LOG__LEVEL", "info")
        .env("BAZAAR__DATA_DIR", data.join("data"));
    command
}

#[test]
fn config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bazaar.toml");
    std::fs::write(
        &file,
        "[server]\nbind = \"127.0.0.1:9999\"\n[auth]\nadmin_token = \"from-file\"\n",
    )
    .expect("writes");
    let output = bazaar(dir.path())
        .args(["--config", file.to_str().expect("utf-8"), "config"])
        .env("BAZAAR__AUTH__SERVICE_TOKEN", "from-env")
        .env(
            "BAZAAR__MODULES__CATALOG__DATABASE_URL",
            "postgres://shop:pa55@db/catalog",
        )
        .env(
            "BAZAAR__MODULES__BILLING__DATABASE_URL",
            "postgres://db/billing?user=shop&password=qu3ry",
        )
        .env("BAZAAR__BUS__URL", "nats://bus:bu55@broker:4222")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("bind = \"127.0.0.1:9999\""),
        "the file applies: {printed}"
    );
    assert!(
        printed.contains("admin_token = \"[redacted]\""),
        "{printed}"
    );
    assert!(
        printed.contains("service_token = \"[redacted]\""),
        "{printed}"
    );
    assert!(
        !printed.contains("from-file")
            && !printed.contains("from-env")
            && !printed.contains("pa55")
            && !printed.contains("qu3ry")
            && !printed.contains("bu55"),
        "the passwords of database URLs (userinfo and query) and of bus.url: {printed}"
    );
    assert!(
        printed.contains("postgres://shop:%5Bredacted%5D@db/catalog"),
        "{printed}"
    );
}

#[test]
fn invalid_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value, named) in [
        ("BAZAAR__SERVER__BIND", "not-an-address", "server.bind"),
        (
            "BAZAAR__MODULES__CATALOG__MODE",
            "remote",
            "modules.catalog.url",
        ),
        ("BAZAAR__SHOP__CURRENCY", "euros", "shop.currency"),
        ("BAZAAR__REMOTE__TIMEOUT", "soon", "remote.timeout"),
        (
            "BAZAAR__MODULES__CATALOG__DATABASE_URL",
            "host=db.internal password=hunter2 dbname=catalog",
            "modules.catalog.database_url",
        ),
    ] {
        let output = bazaar(dir.path())
            .arg("serve")
            .env(key, value)
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2), "{key}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{key}={value}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "a refused value is not repeated: {stderr}"
        );
    }
    assert!(
        !dir.path()
            .join("host=db.internal password=hunter2 dbname=catalog")
            .exists()
            && std::fs::read_dir(dir.path())
                .expect("lists")
                .flatten()
                .all(|entry| !entry.file_name().to_string_lossy().contains("hunter2")),
        "no SQLite file named after the keyword string"
    );
    let missing = bazaar(dir.path())
        .args(["--config", "nope.toml", "config"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}

#[test]
fn migrate_creates_every_local_modules_tables_and_demo_fills_the_catalog_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let migrate = bazaar(dir.path()).arg("migrate").output().expect("runs");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let applied = String::from_utf8_lossy(&migrate.stdout).into_owned();
    assert!(
        applied.contains(
            "catalog: applied chassis0001, chassis0002, chassis0003, catalog0001, catalog0002"
        ),
        "{applied}"
    );
    let again = bazaar(dir.path()).arg("migrate").output().expect("runs");
    assert!(String::from_utf8_lossy(&again.stdout).contains("catalog: up to date"));

    let path = dir.path().join("data/catalog.db");
    let mut conn = SqliteConnection::establish(path.to_str().expect("utf-8")).expect("opens");
    for table in [
        "products",
        "reservations",
        "outbox",
        "inbox",
        "dead_letters",
    ] {
        let query = format!("SELECT COUNT(*) AS n FROM {table}");
        let counted = diesel::sql_query(query).execute(&mut conn);
        assert!(counted.is_ok(), "table {table} exists: {counted:?}");
    }

    let demo = bazaar(dir.path()).arg("demo").output().expect("runs");
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(String::from_utf8_lossy(&demo.stdout).contains("added 8 sample products"));
    let second = bazaar(dir.path()).arg("demo").output().expect("runs");
    assert!(String::from_utf8_lossy(&second.stdout).contains("already has products"));
}

pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
}

impl Server {
    /// The server process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the process at once, as a crash would: no shutdown, nothing flushed.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Server {
    start_with(dir, &[])
}

/// Starts `bazaar serve` on a free port with the data of `dir` and extra environment.
pub(crate) fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binds")
        .local_addr()
        .expect("address")
        .port();
    let mut child = bazaar(dir)
        .arg("serve")
        .env("BAZAAR__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("BAZAAR__AUTH__ADMIN_TOKEN", "cli-admin")
        .env("BAZAAR__SERVER__SHUTDOWN_TIMEOUT", "10s")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    // Keep draining the logs so that the server never blocks on a full pipe.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("bazaar is serving") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("bazaar came up");
    Server { child, port }
}

#[test]
fn serve_finishes_in_flight_requests_on_sigterm_then_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    let body =
        r#"{"sku": "SIGTERM-1", "name": "In flight", "price": {"amount": 1, "currency": "EUR"}}"#;
    let (head, tail) = body.split_at(20);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connects");
    write!(
        stream,
        "POST /catalog/products HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer cli-admin\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .expect("sends the first half");
    stream.flush().expect("flushes");
    std::thread::sleep(Duration::from_millis(300));

    let signalled = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    std::thread::sleep(Duration::from_millis(300));
    stream
        .write_all(tail.as_bytes())
        .expect("sends the rest after SIGTERM");
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .read_to_string(&mut answer)
        .expect("reads the answer");
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the in-flight request finished: {answer}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("waits") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bazaar did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "no longer listening"
    );
}

fn pending_in_outbox(dir: &std::path::Path) -> String {
    let output = bazaar(dir).arg("outbox").output().expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed
        .lines()
        .find(|line| line.starts_with("catalog"))
        .and_then(|line| line.split_whitespace().nth(1))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no catalog line in {printed}"))
}

#[test]
fn events_committed_by_a_process_that_stopped_are_published_by_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `demo` commits eight products and their catalog.product_created events, and exits
    // without publishing them: as a crash right after commit would.
    let demo = bazaar(dir.path()).arg("demo").output().expect("runs");
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert_eq!(pending_in_outbox(dir.path()), "8");

    let mut server = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_in_outbox(dir.path()) != "0" {
        assert!(
            Instant::now() < deadline,
            "the relay did not publish the backlog"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let signalled = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let _ = server.child.wait();

    let letters = bazaar(dir.path())
        .arg("dead-letters")
        .output()
        .expect("runs");
    assert!(letters.status.success());
    assert!(String::from_utf8_lossy(&letters.stdout).contains("no dead letters"));
}
