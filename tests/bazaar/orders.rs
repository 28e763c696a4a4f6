//! Orders through the whole monolith — the real catalog, billing and orders modules wired
//! by the composition root: concurrency on both backends, and the saga's invariants after a
//! SIGKILL mid-saga.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chassis::config::DatabaseUrl;
use chassis::testing::TestDatabase;
use serde_json::{Value, json};

use crate::support::{self, ADMIN_TOKEN};

pub(crate) async fn create_product(
    http: &reqwest::Client,
    base: &str,
    sku: &str,
    stock: i64,
    price: i64,
) -> String {
    let created: Value = http
        .post(format!("{base}/catalog/products"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"sku": sku, "name": sku, "price": {"amount": price, "currency": "EUR"}, "stock": stock}))
        .send()
        .await
        .expect("creates")
        .json()
        .await
        .expect("json");
    created["id"].as_str().expect("id").to_owned()
}

pub(crate) fn order_body(product_id: &str, quantity: u32, token: &str) -> Value {
    json!({"customer_email": "load@example.com", "lines": [{"product_id": product_id, "quantity": quantity}], "payment": {"token": token}})
}

/// Every payment billing holds, by order id.
pub(crate) async fn payments_by_order(
    http: &reqwest::Client,
    base: &str,
) -> HashMap<String, Vec<Value>> {
    let mut by_order: HashMap<String, Vec<Value>> = HashMap::new();
    let mut uri = format!("{base}/billing/payments?limit=200");
    loop {
        let page: Value = http
            .get(&uri)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("lists")
            .json()
            .await
            .expect("json");
        let items = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("a page of payments: {page}"));
        for payment in items {
            by_order
                .entry(payment["order_id"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(payment.clone());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("{base}/billing/payments?limit=200&cursor={cursor}"),
            None => return by_order,
        }
    }
}

/// The invariants of spec §4 at rest: no product oversold, every confirmed order has
/// exactly one captured payment equal to its total, no rejected order keeps a captured
/// payment, reserved stock is zero.
pub(crate) async fn assert_invariants(
    http: &reqwest::Client,
    catalog: &str,
    billing: &str,
    product_id: &str,
    initial_stock: i64,
    orders: &[Value],
) {
    let product: Value = http
        .get(format!("{catalog}/catalog/products/{product_id}"))
        .send()
        .await
        .expect("reads")
        .json()
        .await
        .expect("json");
    let payments = payments_by_order(http, billing).await;
    let mut sold = 0;
    for order in orders {
        let id = order["id"].as_str().expect("id");
        let captured: Vec<&Value> = payments
            .get(id)
            .map(|list| {
                list.iter()
                    .filter(|payment| payment["status"] == "captured")
                    .collect()
            })
            .unwrap_or_default();
        match order["status"].as_str() {
            Some("confirmed") => {
                assert_eq!(captured.len(), 1, "order {id}: one captured payment");
                assert_eq!(
                    captured[0]["amount"], order["total"],
                    "order {id}: the payment is the total"
                );
                let invoice_id = captured[0]["invoice_id"]
                    .as_str()
                    .expect("a captured payment has its invoice");
                let invoice: Value = http
                    .get(format!("{billing}/billing/invoices/{invoice_id}"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("reads")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(
                    invoice["amount"], order["total"],
                    "order {id}: invoiced for its total"
                );
                sold += order["lines"][0]["quantity"].as_i64().unwrap_or_default();
            }
            Some("rejected") => assert!(
                captured.is_empty(),
                "order {id}: rejected with a captured payment"
            ),
            other => panic!("order {id} is {other:?} at rest"),
        }
    }
    assert_eq!(product["stock"]["reserved"], 0, "no stock left reserved");
    assert_eq!(
        product["stock"]["on_hand"],
        initial_stock - sold,
        "on hand = initial - sold"
    );
    assert!(
        product["stock"]["on_hand"].as_i64().unwrap_or(-1) >= 0,
        "never oversold"
    );
}

async fn forty_orders_for_ten_units(config: bazaar::Config) {
    let base = support::spawn(config).await;
    let http = support::http();
    let product = create_product(&http, &base, "CONTENDED", 10, 700).await;
    let placing = (0..40).map(|_| {
        let http = http.clone();
        let base = base.clone();
        let body = order_body(&product, 1, "tok_visa");
        tokio::spawn(async move {
            let response = http
                .post(format!("{base}/orders"))
                .json(&body)
                .send()
                .await
                .expect("answers");
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.expect("json")
        })
    });
    let mut orders = Vec::new();
    for placed in futures::future::join_all(placing).await {
        orders.push(placed.expect("task ran"));
    }
    let count = |status: &str| {
        orders
            .iter()
            .filter(|order| order["status"] == status)
            .count()
    };
    assert_eq!(
        count("confirmed"),
        10,
        "exactly the stock is sold: {orders:?}"
    );
    assert_eq!(count("rejected"), 30);
    assert!(
        orders
            .iter()
            .filter(|order| order["status"] == "rejected")
            .all(|order| order["rejection_reason"] == "out_of_stock")
    );
    let payments = payments_by_order(&http, &base).await;
    let captured = payments
        .values()
        .flatten()
        .filter(|payment| payment["status"] == "captured")
        .count();
    assert_eq!(captured, 10, "ten captured payments");
    assert_invariants(&http, &base, &base, &product, 10, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_orders_for_ten_units_confirm_exactly_ten_on_sqlite() {
    let data = tempfile::tempdir().expect("tempdir");
    forty_orders_for_ten_units(support::config(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_orders_for_ten_units_confirm_exactly_ten_on_postgres() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(data.path());
    let mut databases = Vec::new();
    for module in ["catalog", "billing", "orders"] {
        let Some(db) = TestDatabase::postgres() else {
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
    forty_orders_for_ten_units(config).await;
    drop(databases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_whose_payment_keeps_failing_is_compensated_at_the_deadline() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(data.path());
    config.orders.sync_wait = Duration::from_millis(200);
    config.orders.saga_deadline = Duration::from_secs(2);
    config.orders.recovery_interval = Duration::from_millis(100);
    let base = support::spawn(config).await;
    let http = support::http();
    let product = create_product(&http, &base, "FLAKY-PAY", 3, 400).await;
    let placed: Value = http
        .post(format!("{base}/orders"))
        .json(&order_body(&product, 2, "tok_error"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        placed["status"], "pending",
        "the gateway keeps failing: retried by the saga"
    );
    let id = placed["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let order = loop {
        let order: Value = http
            .get(format!("{base}/orders/{id}"))
            .send()
            .await
            .expect("reads")
            .json()
            .await
            .expect("json");
        if order["status"] != "pending" {
            break order;
        }
        assert!(
            Instant::now() < deadline,
            "still pending long after the saga deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["status"], "rejected");
    assert_eq!(order["rejection_reason"], "dependency_unavailable");
    assert_invariants(&http, &base, &base, &product, 3, &[order]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_order_is_refunded_and_restocked() {
    let data = tempfile::tempdir().expect("tempdir");
    let base = support::spawn(support::config(data.path())).await;
    let http = support::http();
    let product = create_product(&http, &base, "RETURNED", 4, 650).await;
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
    let id = placed["id"].as_str().expect("id");
    let cancelled: Value = http
        .post(format!("{base}/orders/{id}/cancel"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    let product_now: Value = http
        .get(format!("{base}/catalog/products/{product}"))
        .send()
        .await
        .expect("reads")
        .json()
        .await
        .expect("json");
    assert_eq!(
        product_now["stock"],
        json!({"on_hand": 4, "reserved": 0, "available": 4}),
        "restocked"
    );
    let payments = payments_by_order(&http, &base).await;
    let mine = payments.get(id).cloned().unwrap_or_default();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["status"], "refunded");
    assert_eq!(
        mine[0]["refunded_amount"], placed["total"],
        "refunded in full"
    );
}

#[test]
fn orders_paid_slowly_survive_a_sigkill_mid_saga_with_the_invariants_intact() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("BAZAAR__ORDERS__SYNC_WAIT", "300ms"),
        ("BAZAAR__ORDERS__RECOVERY_INTERVAL", "200ms"),
        ("BAZAAR__BILLING__GATEWAY_TIMEOUT", "11s"),
    ];
    let mut server = crate::cli::start_with(dir.path(), &env);
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = support::http();
    let (product, placed) = runtime.block_on(async {
        let product = create_product(&http, &base, "SLOW-PAID", 5, 900).await;
        let mut placed = Vec::new();
        for (token, quantity) in [
            ("tok_slow", 1),
            ("tok_slow", 2),
            ("tok_visa", 1),
            ("tok_declined", 1),
        ] {
            let order: Value = http
                .post(format!("{base}/orders"))
                .json(&order_body(&product, quantity, token))
                .send()
                .await
                .expect("answers")
                .json()
                .await
                .expect("json");
            placed.push(order);
        }
        (product, placed)
    });
    assert_eq!(
        placed[0]["status"], "pending",
        "tok_slow is still being charged"
    );
    // Mid-saga: the slow charges are in flight at the payment gateway.
    std::thread::sleep(Duration::from_millis(500));
    server.kill();

    let server = crate::cli::start_with(dir.path(), &env);
    let base = format!("http://127.0.0.1:{}", server.port);
    let orders = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut orders = Vec::new();
            for order in &placed {
                let current: Value = http
                    .get(format!(
                        "{base}/orders/{}",
                        order["id"].as_str().expect("id")
                    ))
                    .send()
                    .await
                    .expect("reads")
                    .json()
                    .await
                    .expect("json");
                orders.push(current);
            }
            if orders.iter().all(|order| order["status"] != "pending") {
                return orders;
            }
            assert!(
                Instant::now() < deadline,
                "sagas still pending after restart: {orders:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    assert_eq!(
        orders[0]["status"], "confirmed",
        "the slow payment went through after the restart"
    );
    assert_eq!(orders[1]["status"], "confirmed");
    assert_eq!(orders[2]["status"], "confirmed");
    assert_eq!(orders[3]["status"], "rejected");
    runtime.block_on(assert_invariants(&http, &base, &base, &product, 5, &orders));
    drop(server);
}
