//! Upgrades keep what was stored: orders placed before their lines moved into the order's
//! own row (`orders-0002_order_lines_inline`) keep their lines, in line order — on both
//! backends.

use std::sync::Arc;

use ::orders::{MIGRATIONS, OrdersService};
use billing_contract::MockBilling;
use catalog_contract::MockCatalog;
use chassis::db::Backend;
use chassis::page::PageRequest;
use chassis::testing::TestDatabase;
use orders_contract::{Money, OrderLine, OrderStatus};
use uuid::Uuid;

use crate::support::settings;

fn line(product_id: Uuid, sku: &str, quantity: u32, unit_price: i64) -> OrderLine {
    OrderLine {
        product_id,
        sku: sku.into(),
        name: format!("Name of {sku}"),
        quantity,
        unit_price: Money::new(unit_price, "EUR"),
        line_total: Money::new(unit_price * i64::from(quantity), "EUR"),
    }
}

async fn orders_keep_their_lines(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let (older, newer) = (Uuid::now_v7(), Uuid::now_v7());
    let at = "'2026-11-01 10:00:00'";
    let email = "ada@example.com";
    // The lines are inserted out of their order: their position decides it.
    let rows = format!(
        "INSERT INTO orders (id, status, customer_email, total_amount, currency, saga_step, \
             saga_deadline, created_at, updated_at) VALUES \
             ('{older}', 'confirmed', '{email}', 1100, 'EUR', NULL, {at}, {at}, {at}), \
             ('{newer}', 'confirmed', '{email}', 300, 'EUR', NULL, {at}, {at}, {at}); \
         INSERT INTO order_lines (order_id, position, product_id, sku, name, quantity, \
             unit_price, line_total) VALUES \
             ('{older}', 1, '{second}', 'B', 'Name of B', 1, 100, 100), \
             ('{older}', 0, '{first}', 'A', 'Name of A', 2, 500, 1000), \
             ('{newer}', 0, '{second}', 'B', 'Name of B', 3, 100, 300);"
    );
    db.store_at_version(MIGRATIONS, "orders0001", &rows);

    // Opening applies what is left: the chassis's tables and orders0002.
    let database = db.open(MIGRATIONS).await;
    let service = OrdersService::new(
        database,
        "EUR",
        settings(),
        Arc::new(MockCatalog::new()),
        Arc::new(MockBilling::new()),
    );

    let order = service.order(older).await.expect("reads the order");
    assert_eq!(order.status, OrderStatus::Confirmed);
    assert_eq!(
        order.lines,
        vec![line(first, "A", 2, 500), line(second, "B", 1, 100)],
        "the lines stored before the upgrade, in their order"
    );
    let page = service
        .list(
            email.into(),
            PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .expect("lists");
    let listed: Vec<(Uuid, Vec<OrderLine>)> = page
        .items
        .into_iter()
        .map(|order| (order.id, order.lines))
        .collect();
    assert_eq!(
        listed,
        vec![
            (newer, vec![line(second, "B", 3, 100)]),
            (older, order.lines.clone()),
        ],
        "newest first, each with its own lines"
    );
}

#[tokio::test]
async fn orders_placed_before_the_upgrade_keep_their_lines_on_sqlite() {
    orders_keep_their_lines(Backend::Sqlite).await;
}

#[tokio::test]
async fn orders_placed_before_the_upgrade_keep_their_lines_on_postgres() {
    orders_keep_their_lines(Backend::Postgres).await;
}
