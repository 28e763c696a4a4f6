//! The `Catalog` port's conformance suite: the sentences of the port's doc comments, run
//! against the local implementation and against `HttpCatalog` talking to a real server,
//! on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use catalog::CatalogModule;
use catalog_contract::{Catalog, CatalogError, HttpCatalog, ReservationStatus, StockLine};
use chassis::db::Backend;
use chassis::remote::RemoteSettings;
use chassis::secret::Secret;
use uuid::Uuid;

use crate::support::{self, RemoteServer, product, stock_of};

fn line(product: &catalog_contract::Product, quantity: u32) -> StockLine {
    StockLine {
        product_id: product.id,
        quantity,
    }
}

/// Runs every check against `port`; `module` seeds products and reads stock.
async fn suite(port: &dyn Catalog, module: &CatalogModule) {
    products_answer_in_the_order_asked(port, module).await;
    products_name_the_first_unknown_id(port, module).await;
    reserve_holds_stock(port, module).await;
    reserve_is_all_or_nothing(port, module).await;
    reserve_refuses_bad_lines(port, module).await;
    reserve_is_idempotent_per_order(port, module).await;
    release_gives_stock_back_and_closes_the_order(port, module).await;
    release_before_reserve_blocks_a_late_reserve(port).await;
    commit_sells_held_stock(port, module).await;
    restock_puts_sold_stock_back(port, module).await;
}

async fn products_answer_in_the_order_asked(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Alpha", 1).await;
    let b = product(module, "Beta", 2).await;
    let found = port.products(&[b.id, a.id]).await.expect("found");
    assert_eq!(
        found.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![b.id, a.id]
    );
    assert_eq!(found[0], b, "the product as stored");
    assert_eq!(port.products(&[]).await.expect("empty"), vec![]);
}

async fn products_name_the_first_unknown_id(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Known", 1).await;
    let unknown = Uuid::new_v4();
    assert_eq!(
        port.products(&[a.id, unknown]).await,
        Err(CatalogError::ProductNotFound(unknown))
    );
    let too_many: Vec<Uuid> = (0..201).map(|_| Uuid::new_v4()).collect();
    assert!(matches!(
        port.products(&too_many).await,
        Err(CatalogError::InvalidRequest(_))
    ));
}

async fn reserve_holds_stock(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Held", 5).await;
    let order = Uuid::new_v4();
    let reservation = port.reserve(order, &[line(&a, 3)]).await.expect("reserved");
    assert_eq!(reservation.order_id, order);
    assert_eq!(reservation.status, ReservationStatus::Reserved);
    assert_eq!(reservation.lines, vec![line(&a, 3)]);
    let stock = stock_of(module, &a).await;
    assert_eq!((stock.on_hand, stock.reserved, stock.available), (5, 3, 2));
}

async fn reserve_is_all_or_nothing(port: &dyn Catalog, module: &CatalogModule) {
    let plenty = product(module, "Plenty", 5).await;
    let scarce = product(module, "Scarce", 1).await;
    let order = Uuid::new_v4();
    let outcome = port
        .reserve(order, &[line(&plenty, 2), line(&scarce, 2)])
        .await;
    assert_eq!(
        outcome,
        Err(CatalogError::OutOfStock {
            product_id: scarce.id
        })
    );
    assert_eq!(stock_of(module, &plenty).await.reserved, 0, "nothing held");
    assert_eq!(stock_of(module, &scarce).await.reserved, 0, "nothing held");
    let unknown = Uuid::new_v4();
    let outcome = port
        .reserve(
            Uuid::new_v4(),
            &[
                line(&plenty, 1),
                StockLine {
                    product_id: unknown,
                    quantity: 1,
                },
            ],
        )
        .await;
    assert_eq!(outcome, Err(CatalogError::ProductNotFound(unknown)));
    assert_eq!(stock_of(module, &plenty).await.reserved, 0, "nothing held");
    // A failed reservation leaves nothing behind: the same order can reserve later.
    let retried = port
        .reserve(order, &[line(&plenty, 2)])
        .await
        .expect("reserved now");
    assert_eq!(retried.status, ReservationStatus::Reserved);
}

async fn reserve_refuses_bad_lines(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Lines", 5).await;
    for lines in [vec![], vec![line(&a, 0)], vec![line(&a, 1), line(&a, 1)]] {
        let outcome = port.reserve(Uuid::new_v4(), &lines).await;
        assert!(
            matches!(outcome, Err(CatalogError::InvalidRequest(_))),
            "{lines:?}: {outcome:?}"
        );
    }
    let too_many: Vec<StockLine> = (0..101)
        .map(|_| StockLine {
            product_id: Uuid::new_v4(),
            quantity: 1,
        })
        .collect();
    assert!(matches!(
        port.reserve(Uuid::new_v4(), &too_many).await,
        Err(CatalogError::InvalidRequest(_))
    ));
    assert_eq!(stock_of(module, &a).await.reserved, 0);
}

async fn reserve_is_idempotent_per_order(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Twice", 5).await;
    let b = product(module, "Other", 5).await;
    let order = Uuid::new_v4();
    let first = port
        .reserve(order, &[line(&a, 2), line(&b, 1)])
        .await
        .expect("reserved");
    // The same lines in another order are the same request.
    let again = port
        .reserve(order, &[line(&b, 1), line(&a, 2)])
        .await
        .expect("same answer");
    assert_eq!(first, again);
    assert_eq!(stock_of(module, &a).await.reserved, 2, "held once");
    let other = port.reserve(order, &[line(&a, 3)]).await;
    assert_eq!(
        other,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Reserved
        })
    );
    // A repeat when the stock left could not hold its lines again answers the
    // reservation, not the stock.
    let last = product(module, "Last one", 1).await;
    let sold_out = Uuid::new_v4();
    let held = port
        .reserve(sold_out, &[line(&last, 1)])
        .await
        .expect("reserved");
    assert_eq!(
        port.reserve(sold_out, &[line(&last, 1)]).await,
        Ok(held),
        "a repeat of the reservation that took the last unit"
    );
    assert_eq!(stock_of(module, &last).await.reserved, 1, "held once");
}

async fn release_gives_stock_back_and_closes_the_order(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Released", 4).await;
    let order = Uuid::new_v4();
    port.reserve(order, &[line(&a, 3)]).await.expect("reserved");
    let released = port.release(order).await.expect("released");
    assert_eq!(released.status, ReservationStatus::Released);
    assert_eq!(released.lines, vec![line(&a, 3)]);
    assert_eq!(stock_of(module, &a).await.reserved, 0);
    assert_eq!(port.release(order).await.expect("idempotent"), released);
    assert_eq!(stock_of(module, &a).await.reserved, 0, "given back once");
    assert_eq!(
        port.reserve(order, &[line(&a, 3)]).await,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Released
        })
    );
    assert_eq!(
        port.commit(order).await,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Released
        })
    );
}

async fn release_before_reserve_blocks_a_late_reserve(port: &dyn Catalog) {
    let order = Uuid::new_v4();
    let tombstone = port.release(order).await.expect("recorded");
    assert_eq!(tombstone.status, ReservationStatus::Released);
    assert!(tombstone.lines.is_empty());
    let late = port
        .reserve(
            order,
            &[StockLine {
                product_id: Uuid::new_v4(),
                quantity: 1,
            }],
        )
        .await;
    assert_eq!(
        late,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Released
        })
    );
}

async fn commit_sells_held_stock(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Sold", 6).await;
    let order = Uuid::new_v4();
    port.reserve(order, &[line(&a, 2)]).await.expect("reserved");
    let committed = port.commit(order).await.expect("committed");
    assert_eq!(committed.status, ReservationStatus::Committed);
    let stock = stock_of(module, &a).await;
    assert_eq!((stock.on_hand, stock.reserved, stock.available), (4, 0, 4));
    assert_eq!(port.commit(order).await.expect("idempotent"), committed);
    assert_eq!(stock_of(module, &a).await.on_hand, 4, "sold once");
    assert_eq!(
        port.release(order).await,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Committed
        })
    );
    let unknown = Uuid::new_v4();
    assert_eq!(
        port.commit(unknown).await,
        Err(CatalogError::ReservationNotFound(unknown))
    );
}

async fn restock_puts_sold_stock_back(port: &dyn Catalog, module: &CatalogModule) {
    let a = product(module, "Returned", 6).await;
    let order = Uuid::new_v4();
    port.reserve(order, &[line(&a, 2)]).await.expect("reserved");
    assert_eq!(
        port.restock(order).await,
        Err(CatalogError::ReservationConflict {
            order_id: order,
            status: ReservationStatus::Reserved
        })
    );
    port.commit(order).await.expect("committed");
    let restocked = port.restock(order).await.expect("restocked");
    assert_eq!(restocked.status, ReservationStatus::Restocked);
    assert_eq!(stock_of(module, &a).await.on_hand, 6);
    assert_eq!(port.restock(order).await.expect("idempotent"), restocked);
    assert_eq!(stock_of(module, &a).await.on_hand, 6, "put back once");
    let unknown = Uuid::new_v4();
    assert_eq!(
        port.restock(unknown).await,
        Err(CatalogError::ReservationNotFound(unknown))
    );
}

fn remote_settings() -> RemoteSettings {
    RemoteSettings {
        timeout: Duration::from_secs(2),
        retries: 1,
        retry_delay: Duration::from_millis(10),
        ..RemoteSettings::default()
    }
}

async fn run_local(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let port = catalog.module.port();
    suite(port.as_ref(), &catalog.module).await;
}

async fn run_remote(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let server = RemoteServer::start(&catalog.module).await;
    let client = HttpCatalog::new(
        server.url.clone(),
        Some(Secret::new(support::SERVICE_TOKEN)),
        remote_settings(),
    )
    .expect("client builds");
    suite(&client, &catalog.module).await;

    // When the process serving the catalog is gone, the port says Unavailable.
    server.stop().await;
    let outcome = client.products(&[Uuid::new_v4()]).await;
    assert!(
        matches!(outcome, Err(CatalogError::Unavailable(_))),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_catalog_conforms_on_sqlite() {
    run_local(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_catalog_conforms_on_postgres() {
    run_local(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_catalog_conforms_on_sqlite() {
    run_remote(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_catalog_conforms_on_postgres() {
    run_remote(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_catalog_with_a_wrong_service_token_is_refused() {
    let Some(catalog) = support::local(Backend::Sqlite).await else {
        return;
    };
    let server = RemoteServer::start(&catalog.module).await;
    let client = HttpCatalog::new(
        server.url.clone(),
        Some(Secret::new("wrong")),
        remote_settings(),
    )
    .expect("client builds");
    let outcome = client.products(&[]).await;
    assert!(
        matches!(&outcome, Err(CatalogError::Internal(message)) if message.contains("unauthorized")),
        "{outcome:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_catalog_reports_unavailable_when_postgres_refuses_connections() {
    let Some(db) = chassis::testing::TestDatabase::postgres() else {
        return;
    };
    let options = chassis::db::PoolOptions {
        max_size: 2,
        connection_timeout: Duration::from_millis(500),
    };
    let database = chassis::db::Database::open(db.url(), options).expect("opens");
    database
        .migrate(catalog::MIGRATIONS)
        .await
        .expect("migrates");
    let module = CatalogModule::new(
        database,
        "EUR",
        &catalog_contract::CatalogSettings::default(),
    );
    let port: Arc<dyn Catalog> = module.port();
    db.refuse_connections();
    let outcome = port.products(&[Uuid::new_v4()]).await;
    assert!(
        matches!(outcome, Err(CatalogError::Unavailable(_))),
        "{outcome:?}"
    );
}
