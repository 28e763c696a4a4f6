//! Upgrades keep what was stored: reservations recorded before their lines moved into the
//! reservation's own row (`catalog-0002_reservation_lines_inline`) keep their lines, and
//! committing one still moves exactly its stock — on both backends.

use catalog::{CatalogModule, MIGRATIONS};
use catalog_contract::{CatalogError, ReservationStatus, StockLine};
use chassis::db::Backend;
use chassis::testing::TestDatabase;
use uuid::Uuid;

async fn reservations_keep_their_lines(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (reserved, released) = (Uuid::new_v4(), Uuid::new_v4());
    let at = "'2026-11-01 10:00:00'";
    let rows = format!(
        "INSERT INTO products (id, sku, name, price_amount, currency, on_hand, reserved, \
             created_at, updated_at) VALUES \
             ('{a}', 'OLD-{a}', 'A', 100, 'EUR', 10, 3, {at}, {at}), \
             ('{b}', 'OLD-{b}', 'B', 100, 'EUR', 5, 1, {at}, {at}); \
         INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES \
             ('{reserved}', 'reserved', {at}, {at}), ('{released}', 'released', {at}, {at}); \
         INSERT INTO reservation_lines (order_id, product_id, quantity) VALUES \
             ('{reserved}', '{b}', 1), ('{reserved}', '{a}', 3);"
    );
    db.store_at_version(MIGRATIONS, "catalog0001", &rows);

    // Opening applies what is left: the chassis's tables and catalog0002.
    let database = db.open(MIGRATIONS).await;
    let module = CatalogModule::new(database, "EUR", &Default::default());
    let port = module.port();

    let mut lines = vec![
        StockLine {
            product_id: a,
            quantity: 3,
        },
        StockLine {
            product_id: b,
            quantity: 1,
        },
    ];
    lines.sort_by_key(|line| line.product_id);
    let committed = port.commit(reserved).await.expect("commits");
    assert_eq!(committed.status, ReservationStatus::Committed);
    assert_eq!(
        committed.lines, lines,
        "the lines stored before the upgrade"
    );
    let again = port.commit(reserved).await.expect("answers as is");
    assert_eq!(again.lines, lines, "read back from the row");
    for (product, on_hand) in [(a, 7), (b, 4)] {
        let stock = module
            .service()
            .product(product)
            .await
            .expect("reads")
            .stock;
        assert_eq!((stock.on_hand, stock.reserved), (on_hand, 0), "{product}");
    }

    // The release recorded before the upgrade still refuses a late reserve.
    let late = port.reserve(released, &lines).await;
    assert_eq!(
        late,
        Err(CatalogError::ReservationConflict {
            order_id: released,
            status: ReservationStatus::Released
        })
    );
}

#[tokio::test]
async fn reservations_stored_before_the_upgrade_keep_their_lines_on_sqlite() {
    reservations_keep_their_lines(Backend::Sqlite).await;
}

#[tokio::test]
async fn reservations_stored_before_the_upgrade_keep_their_lines_on_postgres() {
    reservations_keep_their_lines(Backend::Postgres).await;
}
