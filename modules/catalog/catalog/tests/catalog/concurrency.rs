//! Stock under contention: no interleaving of concurrent reservations oversells, and a
//! reservation repeated for the same order takes stock once — on both backends.

use catalog_contract::{CatalogError, StockLine};
use chassis::db::Backend;
use futures::future::join_all;
use uuid::Uuid;

use crate::support::{self, product, stock_of};

async fn fifty_orders_for_ten_units(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let item = product(&catalog.module, "Contended", 10).await;
    let port = catalog.module.port();
    let attempts = (0..50).map(|_| {
        let port = port.clone();
        let line = StockLine {
            product_id: item.id,
            quantity: 1,
        };
        tokio::spawn(async move { port.reserve(Uuid::new_v4(), &[line]).await })
    });
    let outcomes: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran"))
        .collect();
    let reserved = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(reserved, 10, "exactly the stock is reserved");
    for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
        assert_eq!(
            outcome,
            &Err(CatalogError::OutOfStock {
                product_id: item.id
            })
        );
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!(
        (stock.on_hand, stock.reserved, stock.available),
        (10, 10, 0)
    );
}

async fn one_order_reserved_concurrently_takes_stock_once(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let item = product(&catalog.module, "Repeated", 10).await;
    let port = catalog.module.port();
    let order = Uuid::new_v4();
    let attempts = (0..20).map(|_| {
        let port = port.clone();
        let line = StockLine {
            product_id: item.id,
            quantity: 3,
        };
        tokio::spawn(async move { port.reserve(order, &[line]).await })
    });
    for joined in join_all(attempts).await {
        let reservation = joined
            .expect("task ran")
            .expect("every repeat answers the reservation");
        assert_eq!(reservation.order_id, order);
    }
    assert_eq!(stock_of(&catalog.module, &item).await.reserved, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_of_stock_ten_reserve_exactly_ten_on_sqlite() {
    fifty_orders_for_ten_units(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_of_stock_ten_reserve_exactly_ten_on_postgres() {
    fifty_orders_for_ten_units(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeating_a_reservation_concurrently_takes_stock_once_on_sqlite() {
    one_order_reserved_concurrently_takes_stock_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeating_a_reservation_concurrently_takes_stock_once_on_postgres() {
    one_order_reserved_concurrently_takes_stock_once(Backend::Postgres).await;
}
