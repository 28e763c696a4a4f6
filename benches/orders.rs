//! Orders benchmark: drives `POST /orders` over HTTP on 127.0.0.1 against the monolith
//! (the real catalog, billing and orders modules) with concurrent clients for a bounded
//! time, and reports confirmed orders/s with p50/p99 latency, on SQLite and PostgreSQL.
//! Orders spread round-robin over 100 products.
//!
//!     cargo bench --bench orders                 # both backends, 32 clients, 10 s each
//!     cargo bench --bench orders -- sqlite 64    # one backend, 64 clients
//!     cargo bench --bench orders -- split        # the distributed tax (below)
//!     BAZAAR_BENCH_POOL_SIZE=4 cargo bench --bench orders -- postgres   # each pool at 4
//!
//! Besides throughput and latency, it prints what each module's database was sent per
//! confirmed order (statements and transactions, from `/metrics`): on PostgreSQL every
//! statement is a round trip, and round trips are what an order costs there.
//!
//! `split` runs the monolith (`bazaar serve`, every module on PostgreSQL, in-process bus)
//! and then the split deployment (`deploy/split/run`: four services built by
//! `deploy/split/build`, on the same PostgreSQL, events through NATS JetStream), each in
//! processes of its own, drives each the same way, straight to the process serving
//! `/orders` (and to the split's gateway too when nginx is installed), and reports the
//! ratios, with the orders service's remote call times: where the split's extra time goes.
//!
//! The load generator runs in this same process, on the same two cores as the server.
//! Figures go in BENCHMARKS.md.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chassis::config::DatabaseUrl;
use chassis::secret::Secret;
use chassis::testing::{TestDatabase, metric_by_label};
use serde_json::{Value, json};

// The allocator of the `bazaar` binary, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "bench-admin";
const RUN_FOR: Duration = Duration::from_secs(10);
const PRODUCTS: usize = 100;

struct Outcome {
    latency: Duration,
    confirmed: bool,
}

fn config(data_dir: &std::path::Path) -> bazaar::Config {
    let mut config = bazaar::Config {
        data_dir: data_dir.to_owned(),
        ..bazaar::Config::default()
    };
    config.auth.admin_token = Some(Secret::new(ADMIN_TOKEN));
    config.log.level = "warn".into();
    config
}

/// Runs the server on a thread of its own (actix's runtime), answering its base URL.
fn serve(config: bazaar::Config) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind: {e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = bazaar::start(config, listener)
                .await
                .unwrap_or_else(|e| panic!("cannot start: {e:#}"));
            let _ = server.await;
        });
    });
    base
}

/// What one run measured.
struct Report {
    confirmed: usize,
    rate: f64,
    p50: f64,
    p99: f64,
}

async fn run(label: &str, config: bazaar::Config, clients: usize) {
    let mail_folder = config.data_dir.join("outbox-mail");
    let base = serve(config);
    drive(label, &base, &base, &mail_folder, clients).await;
}

/// Creates the products at `catalog`, then drives `POST /orders` at `orders` for
/// [`RUN_FOR`] and prints what it measured.
async fn drive(
    label: &str,
    catalog: &str,
    orders: &str,
    mail_folder: &std::path::Path,
    clients: usize,
) -> Report {
    chassis::remote::install_tls_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    for base in [catalog, orders] {
        for _ in 0..400 {
            if http.get(format!("{base}/health/live")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // A shop sells many products: orders spread over them, as real traffic does, rather
    // than all queueing on one product's row lock.
    let mut bodies = Vec::with_capacity(PRODUCTS);
    for n in 0..PRODUCTS {
        let product: Value = http
            .post(format!("{catalog}/catalog/products"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"sku": format!("BENCH-{label}-{n}"), "name": "Bench item", "price": {"amount": 500, "currency": "EUR"}, "stock": 1_000_000_000_i64}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        bodies.push(json!({
            "customer_email": "bench@example.com",
            "lines": [{"product_id": product["id"], "quantity": 1}],
            "payment": {"token": "tok_visa"}
        }));
    }
    let mails_before = count_mails(mail_folder);
    let work_before = database_work(orders).await;
    let bodies = Arc::new(bodies);
    let stop = Arc::new(AtomicBool::new(false));
    eprintln!(
        "{label}: driving {clients} clients for {} s",
        RUN_FOR.as_secs()
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let (http, base, bodies, stop) = (
                http.clone(),
                orders.to_owned(),
                Arc::clone(&bodies),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut next = client;
                while !stop.load(Ordering::Relaxed) {
                    let body = &bodies[next % bodies.len()];
                    next += 1;
                    let sent = Instant::now();
                    let answer = http.post(format!("{base}/orders")).json(body).send().await;
                    let confirmed = match answer {
                        Ok(response) => response
                            .json::<Value>()
                            .await
                            .map(|order| order["status"] == "confirmed")
                            .unwrap_or(false),
                        Err(_) => false,
                    };
                    outcomes.push(Outcome {
                        latency: sent.elapsed(),
                        confirmed,
                    });
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    // Notifications works behind the answers: a run where it fell behind would look faster
    // than the deployment can keep up, so say how far it got.
    let mails = count_mails(mail_folder).saturating_sub(mails_before);
    let confirmed = outcomes.iter().filter(|outcome| outcome.confirmed).count();
    let work_after = database_work(orders).await;
    let mut latencies: Vec<Duration> = outcomes.iter().map(|outcome| outcome.latency).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len().max(1) - 1) as f64 * q) as usize].as_secs_f64() * 1000.0
    };
    let rate = confirmed as f64 / elapsed.as_secs_f64();
    // The targets of the monolith's runs (BENCHMARKS.md): SQLite 3,000/s, PostgreSQL 1,500/s.
    let target = match label {
        "sqlite" => format!("  ({:.2}× the 3,000/s target)", rate / 3000.0),
        "postgres" => format!("  ({:.2}× the 1,500/s target)", rate / 1500.0),
        _ => String::new(),
    };
    println!(
        "{label:<12} {clients:>3} clients, {:>4.1} s: {:>6} requests, {:>6} confirmed: {rate:>7.0} confirmed orders/s  p50 {:>6.2} ms  p99 {:>6.2} ms{target}",
        elapsed.as_secs_f64(),
        outcomes.len(),
        confirmed,
        at(0.5),
        at(0.99),
    );
    println!(
        "{:<12} e-mails written by the end of the run: {mails} ({:.0} % of the confirmed orders)",
        "",
        mails as f64 * 100.0 / confirmed.max(1) as f64,
    );
    // What each module's database was sent per order: on PostgreSQL every statement is a
    // round trip, and round trips are what an order costs there (BENCHMARKS.md). Writes
    // per transaction is the size of the writer's batches.
    let per_order: Vec<String> = work_after
        .iter()
        .map(|(module, (statements, transactions, writes))| {
            let (statements_before, transactions_before, writes_before) =
                work_before.get(module).copied().unwrap_or_default();
            let transactions = transactions - transactions_before;
            format!(
                "{module} {:.1} / {:.1} / {:.1}",
                (statements - statements_before) / confirmed.max(1) as f64,
                transactions / confirmed.max(1) as f64,
                (writes - writes_before) / transactions.max(1.0),
            )
        })
        .collect();
    if !per_order.is_empty() {
        println!(
            "{:<12} statements / transactions per confirmed order, writes per transaction, by database (background work included): {}",
            "",
            per_order.join(", ")
        );
    }
    Report {
        confirmed,
        rate,
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn count_mails(folder: &std::path::Path) -> usize {
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".eml"))
                .count()
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// The PostgreSQL server of `BAZAAR_TEST_POSTGRES_URL`, without its database.
fn postgres_server() -> String {
    let url = std::env::var("BAZAAR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match url.rsplit_once('/') {
        Some((server, _)) => server.to_owned(),
        None => url,
    }
}

/// The monolith in a process of its own, every module on PostgreSQL; answers the child and
/// the databases (dropped after the child).
fn spawn_monolith(
    data: &std::path::Path,
    port: u16,
) -> Option<(std::process::Child, Vec<TestDatabase>)> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bazaar"));
    command
        .arg("serve")
        .current_dir(data)
        .env("BAZAAR__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("BAZAAR__DATA_DIR", data)
        .env("BAZAAR__AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BAZAAR__LOG__LEVEL", "warn");
    let mut databases = Vec::new();
    for module in ["CATALOG", "ORDERS", "BILLING", "NOTIFICATIONS"] {
        let db = TestDatabase::postgres()?;
        command.env(
            format!("BAZAAR__MODULES__{module}__DATABASE_URL"),
            db.url().expose(),
        );
        databases.push(db);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the monolith: {e}"));
    Some((child, databases))
}

/// `deploy/split/run` with the bench's ports, databases and release binaries.
struct SplitRun {
    env: Vec<(String, String)>,
    ports: [u16; 6],
    dir: tempfile::TempDir,
}

impl SplitRun {
    fn run(&self, args: &[&str]) -> bool {
        std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/split/run"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for SplitRun {
    fn drop(&mut self) {
        let _ = self.run(&["clean"]);
    }
}

/// Processes whose CPU time a run accounts for, by group name.
type ProcessGroups = Vec<(&'static str, Vec<u32>)>;

/// The pids of the processes named `comm` (as `/proc/<pid>/comm` has it).
fn pids_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
        .collect()
}

/// User + system CPU seconds of `pids` so far (`/proc/<pid>/stat`, in USER_HZ = 100 ticks).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .sum()
}

/// Runs `drive` and prints the CPU milliseconds each group of processes spent per
/// confirmed order meanwhile: where the time goes.
async fn drive_accounted(
    label: &str,
    catalog: &str,
    orders: &str,
    mail_folder: &std::path::Path,
    clients: usize,
    groups: impl Fn() -> ProcessGroups,
) -> Report {
    let before: Vec<f64> = groups().iter().map(|(_, pids)| cpu_seconds(pids)).collect();
    let report = drive(label, catalog, orders, mail_folder, clients).await;
    let after = groups();
    let per_order: Vec<String> = after
        .iter()
        .zip(before)
        .map(|((name, pids), before)| {
            let ms = (cpu_seconds(pids) - before) * 1000.0 / report.confirmed.max(1) as f64;
            format!("{name} {ms:.2}")
        })
        .collect();
    println!(
        "{:<12} CPU ms per confirmed order (2 cores): {}",
        "",
        per_order.join(", ")
    );
    report
}

/// Statements, transactions and writes each module's database has run, from `/metrics`
/// of the process at `base` (its local modules only).
async fn database_work(base: &str) -> std::collections::BTreeMap<String, (f64, f64, f64)> {
    let text = metrics_text(base).await;
    let statements = metric_by_label(&text, "bazaar_db_statements_total", "module");
    let transactions = metric_by_label(&text, "bazaar_db_transactions_total", "module");
    let writes = metric_by_label(&text, "bazaar_db_writes_total", "module");
    statements
        .into_iter()
        .map(|(module, count)| {
            let begun = transactions.get(&module).copied().unwrap_or_default();
            let written = writes.get(&module).copied().unwrap_or_default();
            (module, (count, begun, written))
        })
        .collect()
}

/// The orders service's mean remote call time per peer, from its `/metrics`.
async fn remote_call_times(orders: &str) -> Vec<String> {
    let text = metrics_text(orders).await;
    let sums = metric_by_label(&text, "bazaar_port_call_duration_seconds_sum", "module");
    let counts = metric_by_label(&text, "bazaar_port_call_duration_seconds_count", "module");
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0.0)
        .map(|(module, count)| {
            let sum = sums.get(&module).copied().unwrap_or_default();
            format!(
                "{module}: {count:.0} calls, mean {:.2} ms",
                sum * 1000.0 / count
            )
        })
        .collect()
}

/// The `/metrics` body of the process at `base`, empty if it does not answer.
async fn metrics_text(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn split(clients: usize) {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/target/split/release");
    let fresh = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/split/build"))
        .arg("--check")
        .status()
        .is_ok_and(|status| status.success());
    if !fresh {
        println!("split: the services' release binaries are not built from these sources (above)");
        return;
    }

    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let Some((mut monolith, databases)) = spawn_monolith(data.path(), port) else {
        println!("split: skipped (no PostgreSQL)");
        return;
    };
    let base = format!("http://127.0.0.1:{port}");
    let monolith_pid = monolith.id();
    let reference = drive_accounted(
        "monolith-pg",
        &base,
        &base,
        &data.path().join("outbox-mail"),
        clients,
        || {
            vec![
                ("bazaar", vec![monolith_pid]),
                ("postgres", pids_named("postgres")),
                ("load generator", vec![std::process::id()]),
            ]
        },
    )
    .await;
    let _ = monolith.kill();
    let _ = monolith.wait();
    drop(databases);

    let ports = [
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    ];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = SplitRun {
        env: vec![
            ("BAZAAR_SPLIT_DIR".into(), dir.path().display().to_string()),
            ("BAZAAR_SPLIT_BIN".into(), bin.into()),
            ("BAZAAR_SPLIT_POSTGRES".into(), postgres_server()),
            (
                "BAZAAR_SPLIT_DB_PREFIX".into(),
                format!("bazaar_bench_{}_", std::process::id()),
            ),
            (
                "BAZAAR_SPLIT_PORTS".into(),
                ports.map(|p| p.to_string()).join(" "),
            ),
            ("BAZAAR__AUTH__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("BAZAAR__AUTH__SERVICE_TOKEN".into(), "bench-service".into()),
            ("BAZAAR__LOG__LEVEL".into(), "warn".into()),
        ],
        ports,
        dir,
    };
    if !run.run(&["start"]) {
        println!("split: deploy/split/run start failed; see its messages above");
        return;
    }
    let [gateway, catalog, orders, _, _, _] = run.ports.map(|p| format!("http://127.0.0.1:{p}"));
    let mails = run.dir.path().join("data/notifications/outbox-mail");
    let pid_of = |service: &str| -> Vec<u32> {
        std::fs::read_to_string(run.dir.path().join(format!("{service}.pid")))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .into_iter()
            .collect()
    };
    let groups = || {
        vec![
            ("orders", pid_of("orders")),
            ("catalog", pid_of("catalog")),
            ("billing", pid_of("billing")),
            ("notifications", pid_of("notifications")),
            ("nats", pid_of("nats")),
            ("nginx", pids_named("nginx")),
            ("postgres", pids_named("postgres")),
            ("load generator", vec![std::process::id()]),
        ]
    };
    let direct = drive_accounted("split", &catalog, &orders, &mails, clients, groups).await;
    let calls = remote_call_times(&orders).await;
    let via_gateway = if run.dir.path().join("gateway.pid").exists() {
        Some(drive_accounted("split+nginx", &gateway, &gateway, &mails, clients, groups).await)
    } else {
        println!("split+nginx: skipped (nginx is not installed)");
        None
    };
    println!(
        "split / monolith-pg: {:.2}× the throughput (target ≥ 0.5), p50 {:.2}×, p99 {:.2}× (target ≤ 2)",
        direct.rate / reference.rate,
        direct.p50 / reference.p50,
        direct.p99 / reference.p99,
    );
    if let Some(via) = via_gateway {
        println!(
            "split+nginx / monolith-pg: {:.2}× the throughput, p50 {:.2}×, p99 {:.2}×",
            via.rate / reference.rate,
            via.p50 / reference.p50,
            via.p99 / reference.p99,
        );
    }
    println!(
        "the orders service's calls to its peers (both split runs): {}",
        calls.join("; ")
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let only = args
        .iter()
        .find(|arg| arg.parse::<usize>().is_err())
        .cloned();
    let clients = args
        .iter()
        .find_map(|arg| arg.parse::<usize>().ok())
        .unwrap_or(32);
    let wanted = |backend: &str| only.as_deref().is_none_or(|only| backend.contains(only));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        // `split` runs only when asked for by name: it needs deploy/split/build first.
        if only.as_deref() == Some("split") {
            split(clients).await;
            return;
        }
        if wanted("sqlite") {
            let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            run("sqlite", config(data.path()), clients).await;
        }
        if wanted("postgres") {
            let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let mut config = config(data.path());
            // `BAZAAR_BENCH_POOL_SIZE=n`: every module's pool on PostgreSQL at n connections
            // (BENCHMARKS.md measures a few sizes); otherwise the default share.
            if let Some(size) = std::env::var("BAZAAR_BENCH_POOL_SIZE")
                .ok()
                .and_then(|size| size.parse::<u32>().ok())
            {
                config.modules.catalog.pool_size = Some(size);
                config.modules.billing.pool_size = Some(size);
                config.modules.orders.pool_size = Some(size);
                config.modules.notifications.pool_size = Some(size);
                config.database.max_connections = 4 * size;
            }
            let mut databases = Vec::new();
            // Every module on PostgreSQL, notifications too, as a production deployment has it.
            for module in ["catalog", "billing", "orders", "notifications"] {
                let Some(db) = TestDatabase::postgres() else {
                    println!("postgres: skipped (no server)");
                    return;
                };
                let url = DatabaseUrl::new(db.url().expose());
                match module {
                    "catalog" => config.modules.catalog.database_url = Some(url),
                    "billing" => config.modules.billing.database_url = Some(url),
                    "orders" => config.modules.orders.database_url = Some(url),
                    _ => config.modules.notifications.database_url = Some(url),
                }
                databases.push(db);
            }
            run("postgres", config, clients).await;
            // The server thread still holds connections; dropping the databases forces them closed.
            drop(databases);
        }
    });
}
