//! Invariants under concurrency and faults, through the whole monolith: repeated requests
//! on one order, database connections cut mid-load, and a flood past the server's bounds.
//! Every answer is checked against what was stored.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chassis::config::DatabaseUrl;
use chassis::testing::TestDatabase;
use serde_json::{Value, json};

use crate::orders::{assert_invariants, create_product, order_body, payments_by_order};
use crate::support;

/// A config whose catalog, billing and orders each have a fresh PostgreSQL database
/// (held by the answer), or `None` when PostgreSQL is unreachable outside CI.
fn on_postgres(data_dir: &std::path::Path) -> Option<(bazaar::Config, Vec<TestDatabase>)> {
    let mut config = support::config(data_dir);
    let mut databases = Vec::new();
    for module in ["catalog", "billing", "orders"] {
        let db = TestDatabase::postgres()?;
        let url = DatabaseUrl::new(db.url().expose());
        match module {
            "catalog" => config.modules.catalog.database_url = Some(url),
            "billing" => config.modules.billing.database_url = Some(url),
            _ => config.modules.orders.database_url = Some(url),
        }
        databases.push(db);
    }
    Some((config, databases))
}

async fn product_stock(http: &reqwest::Client, base: &str, product: &str) -> Value {
    let product: Value = http
        .get(format!("{base}/catalog/products/{product}"))
        .send()
        .await
        .expect("reads")
        .json()
        .await
        .expect("json");
    product["stock"].clone()
}

/// Every order of `customer`, as stored.
async fn stored_orders(http: &reqwest::Client, base: &str, customer: &str) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut uri = format!("{base}/orders?customer_email={customer}&limit=200");
    loop {
        let page: Value = http
            .get(&uri)
            .send()
            .await
            .expect("lists")
            .json()
            .await
            .expect("json");
        orders.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                uri = format!("{base}/orders?customer_email={customer}&limit=200&cursor={cursor}")
            }
            None => return orders,
        }
    }
}

/// The stored orders of `customer` once no saga is running any more.
async fn orders_at_rest(http: &reqwest::Client, base: &str, customer: &str) -> Vec<Value> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let orders = stored_orders(http, base, customer).await;
        if orders.iter().all(|order| order["status"] != "pending") {
            return orders;
        }
        assert!(Instant::now() < give_up, "orders still pending after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The reported scenario: a confirmed order of 3 units of 10, then 8 cancels at once (a
/// double click, a retrying client). One refund, one restock: 10 on hand, not 13 or 19.
async fn concurrent_cancels(config: bazaar::Config) {
    let base = support::spawn(config).await;
    let http = support::http();
    let product = create_product(&http, &base, "CANCEL-RACE", 10, 500).await;
    let placed: Value = http
        .post(format!("{base}/orders"))
        .json(&order_body(&product, 3, "tok_visa"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(placed["status"], "confirmed");
    let id = placed["id"].as_str().expect("id").to_owned();
    let cancels = (0..8).map(|_| {
        let http = http.clone();
        let uri = format!("{base}/orders/{id}/cancel");
        tokio::spawn(async move {
            let response = http.post(uri).send().await.expect("answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        })
    });
    for answer in futures::future::join_all(cancels).await {
        let (status, body) = answer.expect("task ran");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "cancelled");
    }
    assert_eq!(
        product_stock(&http, &base, &product).await,
        json!({"on_hand": 10, "reserved": 0, "available": 10}),
        "restocked once"
    );
    let payments = payments_by_order(&http, &base).await;
    let mine = payments.get(&id).cloned().unwrap_or_default();
    assert_eq!(mine.len(), 1, "one payment");
    assert_eq!(mine[0]["status"], "refunded");
    assert_eq!(mine[0]["refunded_amount"], placed["total"], "refunded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_of_one_order_refund_and_restock_once_on_sqlite() {
    let data = tempfile::tempdir().expect("tempdir");
    concurrent_cancels(support::config(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_of_one_order_refund_and_restock_once_on_postgres() {
    let data = tempfile::tempdir().expect("tempdir");
    let Some((config, databases)) = on_postgres(data.path()) else {
        return;
    };
    concurrent_cancels(config).await;
    drop(databases);
}

/// Answers of `POST /orders`: 201 with the order, or 503 with `Retry-After`. Anything else
/// fails the test.
async fn place_checked(http: &reqwest::Client, base: &str, body: &Value) -> Result<Value, ()> {
    let response = http
        .post(format!("{base}/orders"))
        .json(body)
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.expect("json");
    match status {
        201 => Ok(body),
        503 => {
            assert!(retry_after, "a 503 says when to retry: {body}");
            assert_eq!(body["code"], "dependency_unavailable", "{body}");
            Err(())
        }
        other => panic!("POST /orders answered {other}: {body}"),
    }
}

/// Orders placed by 16 clients while every connection of the three databases is cut
/// twice (`pg_terminate_backend`): no answer is a 500, every 201 is an order that exists,
/// no 503 left an order behind, and at rest the saga's invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_terminated_mid_load_leave_every_answer_true_on_postgres() {
    let data = tempfile::tempdir().expect("tempdir");
    let Some((mut config, databases)) = on_postgres(data.path()) else {
        return;
    };
    // A saga whose run died with its connection is resumed once its lease lapses.
    config.orders.saga_lease = Duration::from_secs(2);
    config.orders.recovery_interval = Duration::from_millis(200);
    let base = support::spawn(config).await;
    let http = support::http();
    let product = create_product(&http, &base, "CUT-LOAD", 100_000, 300).await;
    let body = order_body(&product, 1, "tok_visa");
    let cutter = tokio::spawn(async move {
        let mut ended = 0;
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            for db in &databases {
                ended += db.terminate_connections();
            }
        }
        (ended, databases)
    });
    let (created, refused) = place_from(&http, &base, &body, 16, 25).await;
    let (ended, databases) = cutter.await.expect("cutter ran");
    assert!(ended > 0, "connections were cut under load");
    let stored = orders_at_rest(&http, &base, "load@example.com").await;
    let answered: HashSet<&str> = created.iter().filter_map(|o| o["id"].as_str()).collect();
    let in_store: HashSet<&str> = stored.iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(
        in_store,
        answered,
        "the orders stored are exactly those answered 201 ({} created, {refused} refused)",
        created.len()
    );
    assert!(
        stored.iter().all(|order| order["status"] == "confirmed"),
        "every order made it through"
    );
    assert_invariants(&http, &base, &base, &product, 100_000, &stored).await;
    drop(databases);
}

/// Resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reads /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `clients` clients at once, each placing `each` orders of `body` one after the other;
/// answers the orders created (201) and how many placements were refused (503).
async fn place_from(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
    clients: usize,
    each: usize,
) -> (Vec<Value>, usize) {
    let clients = (0..clients).map(|_| {
        let http = http.clone();
        let base = base.to_owned();
        let body = body.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..each {
                answers.push(place_checked(&http, &base, &body).await);
            }
            answers
        })
    });
    let mut created = Vec::new();
    let mut refused = 0;
    for client in futures::future::join_all(clients).await {
        for answer in client.expect("client ran") {
            match answer {
                Ok(order) => created.push(order),
                Err(()) => refused += 1,
            }
        }
    }
    (created, refused)
}

/// `bazaar serve` on `dir`, bounded at 16 sagas in flight, with `env` added; answers it,
/// its base URL and a client that opens a connection per request (a flood's worth).
fn bounded_server(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (crate::cli::Server, String, reqwest::Client) {
    let mut all = vec![
        ("BAZAAR__ORDERS__MAX_SAGAS_IN_FLIGHT", "16"),
        ("BAZAAR__SERVER__WORKERS", "2"),
    ];
    all.extend_from_slice(env);
    let server = crate::cli::start_with(dir, &all);
    let base = format!("http://127.0.0.1:{}", server.port);
    chassis::remote::install_tls_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    (server, base, http)
}

/// What a flood must leave: some refused, some accepted, no refused order stored, every
/// accepted one confirmed.
async fn assert_flood_outcome(
    http: &reqwest::Client,
    base: &str,
    created: &[Value],
    refused: usize,
) {
    assert!(refused > 0, "the flood went past the bound");
    assert!(
        !created.is_empty(),
        "the server kept accepting what it could hold"
    );
    let stored = orders_at_rest(http, base, "load@example.com").await;
    assert_eq!(stored.len(), created.len(), "a refused order is not stored");
    assert!(
        stored.iter().all(|order| order["status"] == "confirmed"),
        "every accepted order completes"
    );
}

/// Six floods of 600 orders from 300 clients at once against `bazaar serve` (its own
/// process, so that its memory is its own), bounded at 16 sagas in flight: the excess is
/// answered 503 with nothing created, every accepted order is confirmed, and the server's
/// memory after the last flood is where it was after the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_past_the_bounds_is_refused_with_nothing_created_and_memory_flat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, base, http) = bounded_server(dir.path(), &[]);
    let product = create_product(&http, &base, "FLOOD", 1_000_000, 100).await;
    let body = order_body(&product, 1, "tok_visa");
    let mut created = Vec::new();
    let mut refused = 0;
    let mut resident = Vec::new();
    for _ in 0..6 {
        let (more, refusals) = place_from(&http, &base, &body, 300, 2).await;
        created.extend(more);
        refused += refusals;
        resident.push(resident_kib(server.pid()));
    }
    assert_flood_outcome(&http, &base, &created, refused).await;
    // The first flood warms the allocator and the pools up; from the second on, memory
    // stays where it is (within a fifth) however many floods come.
    let (warm, last) = (resident[1], resident[5]);
    assert!(
        last <= warm + warm / 5,
        "memory stays flat flood after flood: {resident:?} KiB"
    );
}

/// The same flood against `bazaar serve` with the catalog, billing and orders on
/// PostgreSQL, where writers run at once and only the sagas' bound holds the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_past_the_bounds_is_refused_with_nothing_created_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(databases) = support::PostgresDatabases::new(&["CATALOG", "BILLING", "ORDERS"]) else {
        return;
    };
    let (server, base, http) = bounded_server(dir.path(), &databases.env());
    let product = create_product(&http, &base, "FLOOD-PG", 1_000_000, 100).await;
    let (created, refused) =
        place_from(&http, &base, &order_body(&product, 1, "tok_visa"), 300, 2).await;
    assert_flood_outcome(&http, &base, &created, refused).await;
    drop(server);
    drop(databases);
}

/// Two instances starting at once on fresh PostgreSQL databases both migrate them (they
/// take turns) and both serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_started_at_once_on_fresh_postgres_databases_both_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let Some((config, databases)) = on_postgres(data.path()) else {
        return;
    };
    let starts = (0..2).map(|i| {
        let mut config = config.clone();
        // Each instance has its own data directory (its notifications on SQLite).
        config.data_dir = data.path().join(format!("instance-{i}"));
        tokio::spawn(async move {
            let composition = bazaar::compose(&config).await?;
            composition.migrate().await
        })
    });
    for started in futures::future::join_all(starts).await {
        started.expect("task ran").expect("every instance migrates");
    }
    drop(databases);
}
