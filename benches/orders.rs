//! Orders benchmark: drives `POST /orders` over HTTP on 127.0.0.1 against the monolith
//! (the real catalog, billing and orders modules) with concurrent clients for a bounded
//! time, and reports confirmed orders/s with p50/p99 latency, on SQLite and PostgreSQL.
//! Orders spread round-robin over 100 products.
//!
//!     cargo bench --bench orders                 # both backends, 32 clients, 10 s each
//!     cargo bench --bench orders -- sqlite 64    # one backend, 64 clients
//!
//! The load generator runs in this same process, on the same two cores as the server.
//! Figures go in BENCHMARKS.md.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chassis::config::DatabaseUrl;
use chassis::secret::Secret;
use chassis::testing::TestDatabase;
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

async fn run(label: &str, config: bazaar::Config, clients: usize) {
    let mail_folder = config.data_dir.join("outbox-mail");
    let base = serve(config);
    chassis::remote::install_tls_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..200 {
        if http.get(format!("{base}/health/live")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A shop sells many products: orders spread over them, as real traffic does, rather
    // than all queueing on one product's row lock.
    let mut bodies = Vec::with_capacity(PRODUCTS);
    for n in 0..PRODUCTS {
        let product: Value = http
            .post(format!("{base}/catalog/products"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"sku": format!("BENCH-{n}"), "name": "Bench item", "price": {"amount": 500, "currency": "EUR"}, "stock": 1_000_000_000_i64}))
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
    let bodies = Arc::new(bodies);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let (http, base, bodies, stop) = (
                http.clone(),
                base.clone(),
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
    // than the monolith can keep up, so say how far it got.
    let mails = std::fs::read_dir(&mail_folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".eml"))
                .count()
        })
        .unwrap_or(0);
    let confirmed = outcomes.iter().filter(|outcome| outcome.confirmed).count();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|outcome| outcome.latency).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len().max(1) - 1) as f64 * q) as usize].as_secs_f64() * 1000.0
    };
    let rate = confirmed as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<12} {clients:>3} clients, {:>4.1} s: {:>6} requests, {:>6} confirmed: {rate:>7.0} confirmed orders/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({:.2}× the 3,000/s target)",
        elapsed.as_secs_f64(),
        outcomes.len(),
        confirmed,
        at(0.5),
        at(0.99),
        rate / 3000.0,
    );
    println!(
        "{:<12} e-mails written by the end of the run: {mails} ({:.0} % of the confirmed orders)",
        "",
        mails as f64 * 100.0 / confirmed.max(1) as f64,
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
        if wanted("sqlite") {
            let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            run("sqlite", config(data.path()), clients).await;
        }
        if wanted("postgres") {
            let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let mut config = config(data.path());
            let mut databases = Vec::new();
            for module in ["catalog", "billing", "orders"] {
                let Some(db) = TestDatabase::postgres() else {
                    println!("postgres: skipped (no server)");
                    return;
                };
                let url = DatabaseUrl::new(db.url().expose());
                match module {
                    "catalog" => config.modules.catalog.database_url = Some(url),
                    "billing" => config.modules.billing.database_url = Some(url),
                    _ => config.modules.orders.database_url = Some(url),
                }
                databases.push(db);
            }
            run("postgres", config, clients).await;
            // The server thread still holds connections; dropping the databases forces them closed.
            drop(databases);
        }
    });
}
